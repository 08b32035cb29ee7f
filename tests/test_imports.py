"""Imports from any working directory: no folder of the checkout shadows a third-party package.

transformers imports the PyPI package `kernels` (transformers.activations -> integrations.hub_kernels);
a top-level `kernels/` folder in the checkout would win that import whenever Python runs from the root.
Each check runs in a fresh interpreter, as `python -c` / `python -m` from that directory would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, importlib.util
import transformers.activations, transformers.integrations.hub_kernels
import sglang_dspark.grammar, sglang_dspark.kernels, sglang_dspark.kernels.cpu_ops
from sglang_dspark.entrypoints.engine import Engine
third_party = {name: getattr(importlib.util.find_spec(name), "origin", None) for name in ("kernels", "grammar")}
print(json.dumps({"third_party": third_party, "sglang_dspark": sglang_dspark.kernels.__file__}))
"""


@pytest.mark.parametrize("cwd", ["root", "tests", "elsewhere"])
def test_imports_from_any_working_directory(cwd, tmp_path):
    where = {"root": REPO, "tests": REPO / "tests", "elsewhere": tmp_path}[cwd]
    # `python -c` puts the working directory first on sys.path, as `python -m sglang_dspark...` does.
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=where, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    for name, origin in found["third_party"].items():
        # A third-party `kernels` (transformers needs it) or `grammar` comes from site-packages, not the checkout.
        assert origin is None or "site-packages" in Path(origin).parts, (name, origin)
    assert found["third_party"]["kernels"] is not None, "transformers' dependency `kernels` is not installed"
    assert Path(found["sglang_dspark"]).is_relative_to(REPO / "sglang_dspark")


def test_no_top_level_folder_is_an_importable_package():
    """Only `sglang_dspark` may be a regular package at the root (it is the one we mean to import)."""
    packages = sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").exists())
    assert packages == ["sglang_dspark"], packages
