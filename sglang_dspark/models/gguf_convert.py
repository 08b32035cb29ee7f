"""Convert a (quantized) GGUF checkpoint into an HF-style directory whose safetensors keep the quantization.

The output directory holds::

    config.json              transformers config (architectures, vocab size, rope, eos/bos ids, ...)
    generation_config.json   bos/eos/pad ids from the GGUF tokenizer metadata (eos extended with the
                             end-of-generation tokens llama.cpp also stops on, e.g. <|endoftext|>)
    model.safetensors        every weight in HF layout (llama/qwen2 q/k un-permuted): block-quantized tensors
                             as their GGUF blocks (uint8 [rows, row bytes], their types in the metadata key
                             weights.QUANT_TYPES_KEY), float ones as float32
    tokenizer.json, tokenizer_config.json (with the GGUF ``tokenizer.chat_template``), chat_template.jinja
    sglang_dspark_conversion.json   provenance: source file, size, mtime, conversion time, format version

Config, tokenizer, tensor renaming and the q/k un-permutation of llama-family GGUFs are transformers'
own GGUF support (``transformers.modeling_gguf_pytorch_utils``), i.e. the code ``from_pretrained(...,
gguf_file=...)`` runs; it is called directly so that no ``accelerate`` is needed and no real model has to be
instantiated.  The model skeleton used for name mapping lives on the ``meta`` device.  Whether a quantized
tensor is used as is or dequantized is the model runner's choice (``--quantization``).

Everything is written into a temporary directory next to ``out_dir`` and renamed into place at the
end, so an interrupted conversion never leaves a half-written cache entry under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sglang_dspark.models.model_source import CONVERSION_FORMAT, GGUF_MAGIC, PROVENANCE_NAME, ModelLoadError
from sglang_dspark.models.weights import QUANT_TYPES_KEY

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"

# --------------------------------------------------------------------------------------------------
# A small, fast GGUF header walker.  It validates the file (magic, version, tensor table, that the
# data section is fully present) and returns the scalar metadata, long before the slow pure-python
# readers used by transformers get to touch it.
# --------------------------------------------------------------------------------------------------

_SCALAR_FORMATS = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_STRING, _ARRAY = 8, 9
_MAX_STRING = 1 << 30


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]  # scalars and strings; arrays are kept only when short (<= 64 entries)
    array_lengths: dict[str, int]
    tensors: list[tuple[str, tuple[int, ...], int, int]] = field(default_factory=list)  # name, dims, type, offset
    data_start: int = 0
    required_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Cursor:
    def __init__(self, f, size: int, path: Path):
        self.f, self.size, self.path = f, size, path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelLoadError(
                f"GGUF file {self.path} is truncated: the file ({self.size} bytes) ends inside its metadata "
                f"header (incomplete download or copy?)"
            )
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > _MAX_STRING:
            raise ModelLoadError(f"GGUF file {self.path} is corrupt: string of {n} bytes in its header")
        return self.read(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        if n > _MAX_STRING:
            raise ModelLoadError(f"GGUF file {self.path} is corrupt: string of {n} bytes in its header")
        self.f.seek(n, os.SEEK_CUR)


def _read_value(cur: _Cursor, vtype: int, key: str, lengths: dict[str, int], keep_arrays: frozenset[str]):
    if vtype in _SCALAR_FORMATS:
        return cur.unpack(_SCALAR_FORMATS[vtype])
    if vtype == _STRING:
        return cur.string()
    if vtype == _ARRAY:
        etype = cur.unpack("<I")
        count = cur.unpack("<Q")
        lengths[key] = count
        keep = count <= 64 or key in keep_arrays
        if etype in _SCALAR_FORMATS:
            fmt = _SCALAR_FORMATS[etype]
            width = struct.calcsize(fmt)
            if keep:
                return [struct.unpack(fmt, cur.read(width))[0] for _ in range(count)]
            cur.f.seek(count * width, os.SEEK_CUR)
            return None
        if etype == _STRING:
            if keep:
                return [cur.string() for _ in range(count)]
            for _ in range(count):
                cur.skip_string()
            return None
        raise ModelLoadError(f"GGUF file {cur.path} is corrupt: metadata {key!r} has array element type {etype}")
    raise ModelLoadError(f"GGUF file {cur.path} is corrupt: metadata {key!r} has value type {vtype}")


def read_gguf_header(path: Path, keep_arrays: tuple[str, ...] = ()) -> GGUFHeader:
    """Parse and validate a GGUF header; ModelLoadError naming ``path`` if it is not a complete GGUF.

    Metadata arrays longer than 64 entries (vocabulary, merges, ...) are skipped unless their key is
    listed in ``keep_arrays``; ``array_lengths`` records every array's length.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise ModelLoadError(f"cannot open GGUF file {path}: {e}") from e
    with f:
        cur = _Cursor(f, size, path)
        if f.read(4) != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (missing the 'GGUF' magic bytes)")
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise ModelLoadError(f"GGUF file {path} has unsupported version {version} (expected 2 or 3)")
        n_tensors = cur.unpack("<Q")
        n_kv = cur.unpack("<Q")
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ModelLoadError(f"GGUF file {path} is corrupt: {n_tensors} tensors / {n_kv} metadata keys")
        metadata: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        keep = frozenset(keep_arrays)
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.unpack("<I")
            value = _read_value(cur, vtype, key, lengths, keep)
            if value is not None:
                metadata[key] = value
        header = GGUFHeader(path, version, metadata, lengths)
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            if n_dims > 8:
                raise ModelLoadError(f"GGUF file {path} is corrupt: tensor {name!r} has {n_dims} dimensions")
            dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
            ggml_type = cur.unpack("<I")
            offset = cur.unpack("<Q")
            header.tensors.append((name, dims, ggml_type, offset))
        alignment = int(metadata.get("general.alignment", 32))
        header.data_start = (f.tell() + alignment - 1) // alignment * alignment

    end = header.data_start
    for name, dims, ggml_type, offset in header.tensors:
        try:
            block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError) as e:
            raise ModelLoadError(f"GGUF file {path}: tensor {name!r} has unknown ggml type {ggml_type}") from e
        n_elements = 1
        for d in dims:
            n_elements *= d
        end = max(end, header.data_start + offset + n_elements // block_size * type_size)
    header.required_size = end
    if size < end:
        raise ModelLoadError(
            f"GGUF file {path} is truncated: its tensors need {end} bytes but the file has {size} "
            f"(incomplete download or copy?)"
        )
    if "general.architecture" not in metadata:
        raise ModelLoadError(f"GGUF file {path} has no general.architecture metadata")
    return header


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------


# Token texts llama.cpp treats as end-of-generation in addition to the declared eos/eot/eom ids
# (llama-vocab.cpp, ``special_eog_ids``).  Qwen2.5 GGUFs, for instance, only declare <|im_end|> as eos
# while the original generation_config.json stops on both <|im_end|> and <|endoftext|>.
_EOG_TOKEN_TEXTS = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",  # DeepSeek
)
_TOKENS_KEY = "tokenizer.ggml.tokens"


def special_token_ids(header: GGUFHeader) -> dict[str, Any]:
    """bos/eos/pad ids for generation_config.json, following llama.cpp's end-of-generation rules.

    ``eos_token_id`` is the GGUF eos id first, then eot/eom ids, then any token whose text is a known
    end-of-turn marker; it is a plain int when there is only one.
    """
    md = header.metadata

    def get(key: str) -> int | None:
        v = md.get(f"tokenizer.ggml.{key}")
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    eos_ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        v = get(key)
        if v is not None and v not in eos_ids:
            eos_ids.append(v)
    tokens = md.get(_TOKENS_KEY)
    if isinstance(tokens, list):
        index = {t: i for i, t in enumerate(tokens) if t in _EOG_TOKEN_TEXTS}
        for i in sorted(index.values()):
            if i not in eos_ids:
                eos_ids.append(i)
    out: dict[str, Any] = {}
    if (bos := get("bos_token_id")) is not None:
        out["bos_token_id"] = bos
    if eos_ids:
        out["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if (pad := get("padding_token_id")) is not None:
        out["pad_token_id"] = pad
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _shared_gguf_reader(gguf_path: Path):
    """Parse ``gguf_path`` with ``gguf.GGUFReader`` once for the whole conversion.

    transformers' config, weight and tokenizer loaders each build their own ``GGUFReader`` (which is
    pure python and takes ~3 s for SmolLM2's 49k-token vocabulary, ~17 s for Qwen2.5's 152k).  They
    import the class from the ``gguf`` module at call time, so for the duration of the conversion the
    module attribute is swapped for a memoizing factory.  If a future transformers binds the class
    elsewhere this silently degrades to the unshared (slower) behaviour.
    """
    import gguf

    original = gguf.GGUFReader
    target = os.path.realpath(gguf_path)
    readers: dict[str, Any] = {}

    def shared_reader(path, *args, **kwargs):
        if args or kwargs or os.path.realpath(path) != target:
            return original(path, *args, **kwargs)
        if target not in readers:
            readers[target] = original(path)
        return readers[target]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_into(gguf_path: Path, header: GGUFHeader, tmp: Path, bar: tqdm) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[name] = round(now - t0, 2)
        t0 = now
        bar.update(1)

    # 1. config (transformers maps the GGUF metadata keys) and a weightless model skeleton whose
    #    parameter names drive the GGUF -> HF tensor-name mapping.
    bar.set_postfix_str("reading metadata")
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)
    config = AutoConfig.for_model(**parsed["config"])
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    config = skeleton.config
    arch_name = type(skeleton).__name__
    step("metadata")

    # 2. every tensor renamed to its HF name (llama-style q/k un-permuted): block-quantized ones as their raw
    #    GGUF blocks, float ones as float32.
    bar.set_postfix_str("reading weights")
    tensors, quant_types = _read_gguf_tensors(gguf_path, header, parsed["config"], skeleton)
    expected = set(skeleton.state_dict().keys())
    tied: set[str] = set()
    if getattr(config, "tie_word_embeddings", False):
        tied_keys = getattr(skeleton, "_tied_weights_keys", None) or {}
        tied = set(tied_keys.keys() if isinstance(tied_keys, dict) else tied_keys)
    missing = sorted(expected - tensors.keys() - tied)
    if missing:
        raise ModelLoadError(
            f"GGUF file {gguf_path}: {len(missing)} weight(s) of {arch_name} are not in the file (e.g. {missing[:3]})"
        )
    del skeleton
    step("read_weights")

    # 3. weights + config + generation config.
    bar.set_postfix_str("writing safetensors")
    n_params = sum(quant_types[k][1] * t.shape[0] if k in quant_types else t.numel() for k, t in tensors.items())
    weights_file = tmp / WEIGHTS_NAME
    metadata = {"format": "pt", "source": gguf_path.name, QUANT_TYPES_KEY: json.dumps(quant_types)}
    save_file(tensors, str(weights_file), metadata=metadata)
    os.chmod(weights_file, 0o644)
    del tensors
    config.architectures = [arch_name]
    config.dtype = torch.float32
    config.save_pretrained(tmp)
    specials = special_token_ids(header)
    GenerationConfig(**specials).save_pretrained(tmp)
    step("write_weights")

    # 4. tokenizer (tokenizer.json + tokenizer_config.json with the chat template).
    bar.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    chat_template = header.metadata.get("tokenizer.chat_template") or getattr(tokenizer, "chat_template", None)
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(tmp)
    # transformers writes the template to chat_template.jinja; keep it in tokenizer_config.json too, for
    # loaders (and our own tokenizer wrapper) that only read that file.  Drop load-time-only kwargs.
    tok_cfg_path = tmp / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "gguf_file", "name_or_path"):
        tok_cfg.pop(key, None)
    if chat_template:
        tok_cfg["chat_template"] = chat_template
    context = header.metadata.get(f"{header.architecture}.context_length")
    if isinstance(context, int) and context > 0:
        tok_cfg["model_max_length"] = context
    _write_json(tok_cfg_path, tok_cfg)
    step("tokenizer")

    return {"architecture": arch_name, "num_parameters": n_params, **specials, "step_seconds": timings}


def _read_gguf_tensors(
    gguf_path: Path, header: GGUFHeader, gguf_config: dict[str, Any], skeleton: Any
) -> tuple[dict[str, Any], dict[str, list]]:
    """GGUF tensors under the HF names of ``skeleton``'s parameters, and the block types of the quantized ones.

    Block-quantized tensors stay as their GGUF bytes, uint8 [rows, row bytes], listed in the second result as
    ``name -> [ggml type name, columns]``; float ones become float32. transformers' tensor processor maps the
    names and un-permutes llama's q/k rows (a row permutation, so it applies to rows of blocks unchanged).
    """
    import gguf
    import numpy as np
    import torch
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    processor = TENSOR_PROCESSORS.get(header.architecture, TensorProcessor)(config=gguf_config)
    names = get_gguf_hf_weights_map(skeleton, processor)
    float_types = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
    tensors: dict[str, torch.Tensor] = {}
    quant_types: dict[str, list] = {}
    for t in gguf.GGUFReader(str(gguf_path)).tensors:
        quantized = t.tensor_type not in float_types
        data = t.data if quantized else gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        result = processor.process(weights=data, name=t.name, tensor_key_mapping=names, parsed_parameters={})
        if result.name not in names:
            logger.debug("dropping GGUF tensor %s with no HF parameter", t.name)
            continue
        hf_name = names[result.name]
        tensors[hf_name] = torch.from_numpy(np.array(result.weights, order="C"))
        if quantized:
            quant_types[hf_name] = [t.tensor_type.name, int(t.shape[0])]
    return tensors, quant_types


def dense_copy(model_dir: Path) -> Path:
    """``model_dir`` itself if it holds no GGUF blocks, else (made once) a sibling ``<name>.dense`` directory with
    every weight dequantized to float32: what HF transformers' ``from_pretrained`` can load."""
    import torch
    from safetensors.torch import save_file

    from sglang_dspark.models.quantization import prepare_weights
    from sglang_dspark.models.weights import checkpoint_quant_types, load_safetensors_state

    model_dir = Path(model_dir)
    if not checkpoint_quant_types(model_dir):
        return model_dir
    out_dir = model_dir.with_name(model_dir.name + ".dense")
    if (out_dir / WEIGHTS_NAME).is_file():
        return out_dir
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    for path in model_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy2(path, tmp / path.name)
    tensors = dict(prepare_weights(load_safetensors_state(model_dir), keep_blocks=False))
    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME))
    try:
        os.rename(tmp, out_dir)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _looks_complete(out_dir: Path) -> bool:
    return all((out_dir / n).is_file() for n in ("config.json", WEIGHTS_NAME, "tokenizer_config.json"))


def convert_gguf_to_hf_dir(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize ``gguf_path`` into an HF-style directory at ``out_dir`` (replaced if it exists).

    Raises ModelLoadError naming the file when it is missing, truncated, corrupt or of an architecture
    transformers cannot read.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file {gguf_path} does not exist")
    header = read_gguf_header(gguf_path, keep_arrays=(_TOKENS_KEY,))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    os.chmod(tmp, 0o755)
    start = time.perf_counter()
    msg = f"converting {gguf_path.name} (first load only)..."
    logger.info("%s -> %s", msg, out_dir)
    try:
        with tqdm(total=4, desc=msg, unit="step", leave=False) as bar, _shared_gguf_reader(gguf_path):
            try:
                info = _convert_into(gguf_path, header, tmp, bar)
            except ModelLoadError:
                raise
            except Exception as e:  # transformers / gguf raise a zoo of exception types
                raise ModelLoadError(
                    f"failed to convert GGUF file {gguf_path} ({header.architecture} architecture): "
                    f"{type(e).__name__}: {e}"
                ) from e
        elapsed = time.perf_counter() - start
        st = gguf_path.stat()
        _write_json(
            tmp / PROVENANCE_NAME,
            {
                "format": CONVERSION_FORMAT,
                "source": str(gguf_path.resolve()),
                "source_size": st.st_size,
                "source_mtime_ns": st.st_mtime_ns,
                "gguf_architecture": header.architecture,
                "conversion_seconds": round(elapsed, 2),
                **info,
            },
        )
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not _looks_complete(out_dir):
                raise
            # another process finished the same conversion first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s in %.1fs -> %s", gguf_path.name, elapsed, out_dir)
    return out_dir
