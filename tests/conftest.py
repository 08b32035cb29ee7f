import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton runs on CPU only in its interpreter. The flag is read when triton is first imported, and other
    # tests import it indirectly (the sglang frontend does), so it is set here, before any test module loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def sps_path(tmp_path_factory) -> str:
    """An SPS table file for runtime tests, flat to 8 tokens, then slower (the planner verifies several drafts
    per round): the shape measured on a CPU (docs/design.md "CPU cost model") scaled to a 37-second target
    step. The planner only reads ratios, so no drafting time can outweigh a step and the drafting-cost backoff
    (which reads the wall clock) never changes what the tests see; a fixed table also skips start-up profiling,
    which runs single-process forwards (tensor parallelism needs one)."""
    path = tmp_path_factory.mktemp("sps") / "sps.json"
    table = {"sample_batch_tokens": [1, 8, 16, 64], "sample_steps_per_sec": [0.027, 0.0238, 0.0204, 0.010]}
    path.write_text(json.dumps({**table, "max_batch_tokens": 64}))
    return str(path)


@pytest.fixture(scope="session")
def triton_device() -> str:
    """Where Triton kernel tests put their tensors: the GPU when there is one, else the CPU (the interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
