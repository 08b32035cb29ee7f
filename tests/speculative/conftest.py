import json
import shutil

import pytest
import torch
from tiny_drafter import make_drafter
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.gemma3 import Gemma3ForCausalLM as OurGemma3
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.speculative.dspark import save_drafter
from sglang_dspark.speculative.planner import SPSTable


@pytest.fixture
def appendix_a_sps() -> SPSTable:
    """The SPS table of the paper's Appendix A example."""
    return SPSTable((1, 2, 3), (1.0, 0.5, 0.45))


@pytest.fixture
def cpu_sps() -> SPSTable:
    """A CPU, SmolLM2-135M (docs/design.md "CPU cost model"): appending 1 / 8 / 16 tokens costs 37 / 42 / 49 ms."""
    return SPSTable((1, 8, 16), (1000 / 37, 1000 / 42, 1000 / 49))


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    """A 4-layer random Gemma 3 (sliding, sliding, global, sliding; window 8) in HF format with the default
    model's tokenizer, and an untrained DSpark drafter for it: (model dir, drafter dir)."""
    out = tmp_path_factory.mktemp("tiny_gemma3")
    tokenizer_dir = resolve_model_path(None)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=1024,
        architectures=["Gemma3ForCausalLM"],
    )
    hf = Gemma3ForCausalLM(cfg)
    hf.save_pretrained(out / "model", safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(out / name, out / "model" / name)
    ours = OurGemma3(DecoderConfig.from_hf(cfg.to_dict()))
    ours.load_weights(hf.state_dict().items())
    drafter = save_drafter(make_drafter(ours), out / "drafter")
    return str(out / "model"), str(drafter)
