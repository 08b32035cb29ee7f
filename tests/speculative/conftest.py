import pytest

from sglang_dspark.speculative.planner import SPSTable


@pytest.fixture
def appendix_a_sps() -> SPSTable:
    """The SPS table of the paper's Appendix A example."""
    return SPSTable((1, 2, 3), (1.0, 0.5, 0.45))


@pytest.fixture
def cpu_sps() -> SPSTable:
    """A CPU, SmolLM2-135M (docs/design.md "CPU cost model"): appending 1 / 8 / 16 tokens costs 37 / 42 / 49 ms."""
    return SPSTable((1, 8, 16), (1000 / 37, 1000 / 42, 1000 / 49))
