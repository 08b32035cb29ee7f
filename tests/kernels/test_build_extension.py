"""build_extension: a lock file left by a killed build must not block the next build forever."""

import threading
from pathlib import Path

from torch.utils.cpp_extension import _get_build_directory

from sglang_dspark.kernels.cpu_ops import build_extension

SOURCE = """#include <torch/extension.h>
int64_t one() { return 1; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("one", &one); }
"""


def test_a_lock_left_by_a_killed_build_is_cleared(tmp_path, monkeypatch):
    source = tmp_path / "one.cpp"
    source.write_text(SOURCE)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    (Path(_get_build_directory("stale_lock_probe", verbose=False)) / "lock").touch()
    built = {}
    # torch's own builder would wait on the stale lock forever: build on a thread so a hang fails the test.
    worker = threading.Thread(
        target=lambda: built.update(module=build_extension("stale_lock_probe", [source], ["-O0"])), daemon=True
    )
    worker.start()
    worker.join(timeout=900)
    assert "module" in built, "build_extension still waits on the stale lock"
    assert built["module"].one() == 1
