import pytest

from sglang_dspark.server_args import ServerArgs
from sglang_dspark.speculative.spec_config import SpecConfig


def test_flags_then_json_overrides():
    args = ServerArgs(
        speculative_num_draft_tokens=5,
        speculative_dspark_verify_mode="threshold",
        speculative_dspark_disable_online_calibration=True,
        speculative_config='{"gate": false, "backoff_max_skip": 4}',
    )
    cfg = SpecConfig.from_server_args(args)
    assert (cfg.num_draft_tokens, cfg.verify_mode, cfg.online_calibration) == (5, "threshold", False)
    assert (cfg.gate, cfg.backoff_max_skip, cfg.backoff) == (False, 4, True)


@pytest.mark.parametrize("overrides", ['{"no_such_knob": 1}', "[1]"])
def test_unknown_overrides_are_refused(overrides):
    with pytest.raises(ValueError, match="--speculative-config"):
        SpecConfig.from_server_args(ServerArgs(speculative_config=overrides))
