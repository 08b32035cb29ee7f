"""launch/gpu_check.sh --dry-run lists its steps and runs none of them (no GPU needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "launch" / "gpu_check.sh"


def test_dry_run_lists_the_steps(tmp_path):
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")},
    ).stdout
    steps = [line for line in out.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert len(steps) == 3 and "Triton kernels" in steps[1] and "pool attention speed" in steps[2]
    assert not (tmp_path / "out").exists()  # nothing ran
