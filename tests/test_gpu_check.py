"""launch/gpu_check.sh and launch/gpu_train.sh --dry-run list their steps and run none of them (no GPU needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def dry_run(script: str, out: Path) -> list[str]:
    text = subprocess.run(
        ["bash", str(LAUNCH / script), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "OUT": str(out)},
    ).stdout
    return [line.strip() for line in text.splitlines() if line.strip()[:1].isdigit()]


@pytest.mark.parametrize(
    "script,expected",
    [
        ("gpu_check.sh", ["environment", "install", "Triton kernels", "runtime tests", "pool attention", "bench_spec"]),
        ("gpu_train.sh", ["install", "held-out", "train", "evaluate"]),
    ],
)
def test_dry_run_lists_the_steps(tmp_path, script, expected):
    steps = dry_run(script, tmp_path / "out")
    assert len(steps) == len(expected)
    for i, (step, word) in enumerate(zip(steps, expected, strict=True)):
        assert step.startswith(f"{i + 1}. ") and word in step
    assert not (tmp_path / "out").exists()  # nothing ran
