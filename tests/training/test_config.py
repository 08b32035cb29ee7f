"""The shipped training configs load as `python -m sglang_dspark.train --config` loads them."""

from pathlib import Path

import pytest

from sglang_dspark.training.config import build_parser, config_from_args

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.json"))


def load(path: Path, *flags: str):
    return config_from_args(build_parser("test").parse_args(["--config", str(path), *flags]))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_loads(path):
    cfg = load(path)
    assert cfg.variants and cfg.max_steps


def test_flags_override_the_config_and_unknown_keys_fail(tmp_path):
    assert load(EXAMPLES[0], "--max-steps", "7").max_steps == 7
    bad = tmp_path / "bad.json"
    bad.write_text('{"max_step": 7}')
    with pytest.raises(ValueError, match="max_step"):
        load(bad)
