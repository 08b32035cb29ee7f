"""Layers point down: no module of the package imports one of a higher layer.

From the top: the command-line modules (`launch_server`, `train`, `eval`, `calibrate`, `profile_sps`), the
offline tools they drive (`training`, `evaluation`), then the runtime: `entrypoints` -> `managers` ->
`speculative` -> `model_executor` -> `models` -> `layers` -> the foundations (`grammar`, `mem_cache`,
`kernels`, `sampling`, `server_args`, `distributed`). `model_executor.forward_batch` (the batch description every layer
reads, as in SGLang) sits just above the foundations. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sglang_dspark"

COMMANDS = ("launch_server", "train", "eval", "calibrate", "profile_sps", "check_load")
# longest matching prefix wins; a higher rank may import a lower or equal one
RANKS = {
    **{name: 9 for name in COMMANDS},
    "training": 8,
    "evaluation": 8,
    "entrypoints": 7,
    "managers": 6,
    "speculative": 5,
    "model_executor": 4,
    "models": 3,
    "layers": 2,
    "model_executor.forward_batch": 1,
    **{name: 0 for name in ("grammar", "mem_cache", "kernels", "sampling", "server_args", "distributed")},
}


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int | None:
    """None for the package root (`__version__`, the lazy `Engine`), which no rule covers by itself."""
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return RANKS[".".join(parts[:n])]
    if parts:
        raise AssertionError(f"{module} belongs to no layer: add its top-level name to RANKS")
    return None


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every absolute import of the package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "sglang_dspark"]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            if node.module and node.module.split(".")[0] == "sglang_dspark":
                found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def upward_imports(package: Path) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        importer = module_name(path, package)
        for line, target, names in imports(path):
            if rank(target) is None:  # the package root: only its version string
                if names != ["__version__"] and rank(importer) is not None:
                    bad.append(f"{importer}:{line} imports {names or target} from the package root")
            elif rank(importer) is not None and rank(target) > rank(importer):
                bad.append(f"{importer}:{line} imports {target}")
    return bad


def test_layers_point_down():
    assert upward_imports(PACKAGE) == []


def test_every_top_level_name_has_a_layer():
    for path in PACKAGE.iterdir():
        if path.name != "__init__.py" and (path.suffix == ".py" or (path / "__init__.py").exists()):
            assert rank(f"sglang_dspark.{path.stem}") is not None, path


@pytest.mark.parametrize(
    ("importer", "source", "ok"),
    [
        ("speculative/setup.py", "from sglang_dspark.profile_sps import verify_forward_fn", False),
        ("models/llama.py", "from sglang_dspark.managers.scheduler import Scheduler", False),
        ("speculative/spec_worker.py", "import sglang_dspark.entrypoints.engine", False),
        ("layers/sampler.py", "def f():\n    from sglang_dspark.speculative import sts", False),
        ("grammar/base.py", "from sglang_dspark import Engine", False),
        ("entrypoints/engine.py", "from sglang_dspark.managers.scheduler import Scheduler", True),
        ("layers/attention.py", "from sglang_dspark.model_executor.forward_batch import ForwardBatch", True),
        ("entrypoints/http_server.py", "from sglang_dspark import __version__", True),
    ],
)
def test_the_check_catches_an_upward_import(tmp_path, importer, source, ok):
    """The walk itself, on a throwaway package holding one import."""
    path = tmp_path / "sglang_dspark" / importer
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n", encoding="utf-8")
    assert (upward_imports(tmp_path / "sglang_dspark") == []) == ok
