"""Drafter checkpoints: a directory with `config.json` + `model.safetensors` (docs/design.md "Drafter checkpoint").

With ``max_shard_bytes`` the weights go into HF's sharded layout instead (`model-00001-of-00002.safetensors`,
... and `model.safetensors.index.json` naming each tensor's file), which loaders of HF checkpoints read too:
how a drafter trained on a remote GPU comes back through a channel that limits file sizes.

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place, so an
interrupt or a full disk leaves the previous checkpoint intact. Extra files (e.g. a trainer state) can
ride along in the same directory and appear atomically with it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sglang_dspark.speculative.dspark.config import DSparkConfig
from sglang_dspark.speculative.dspark.drafter import DSparkDrafter

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PACKAGED_DIR = Path(__file__).parent / "checkpoints"


def save_drafter(
    drafter: DSparkDrafter,
    path: str | Path,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write the drafter to `path` atomically; `extra_files` maps a file name to a writer(path);
    ``max_shard_bytes``: weights in files of at most that many bytes of tensor data each (sharded layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in drafter.state_dict().items()}
        _save_weights(state, tmp, max_shard_bytes)
        config = drafter.config.to_hf_dict()
        config["torch_dtype"] = str(dtype or drafter.dtype).removeprefix("torch.")
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
        _finalize_files(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _save_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int | None) -> None:
    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}
    if max_shard_bytes is None or sum(sizes.values()) <= max_shard_bytes:
        save_file(state, str(directory / WEIGHTS_NAME))
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, tensor in state.items():
        if sizes[name] > max_shard_bytes:
            raise ValueError(f"tensor {name} ({sizes[name]} bytes) is larger than a shard ({max_shard_bytes})")
        if shards[-1] and sum(sizes[k] for k in shards[-1]) + sizes[name] > max_shard_bytes:
            shards.append({})
        shards[-1][name] = tensor
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file))
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a drafter directory, from one file or from the shards its index names."""
    if (path / INDEX_NAME).is_file():
        files = set(json.loads((path / INDEX_NAME).read_text(encoding="utf-8"))["weight_map"].values())
        state = {}
        for file in sorted(files):
            state.update(load_file(str(path / file)))
        return state
    return load_file(str(path / WEIGHTS_NAME))


def _finalize_files(directory: Path) -> None:
    """fsync every file and give the directory the permissions a plain mkdir / open would (the umask's):
    mkdtemp and safetensors create them private."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~umask)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def read_config(path: str | Path) -> DSparkConfig:
    return DSparkConfig.from_hf_dict(json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8")))


def load_drafter(
    path: str | Path,
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> DSparkDrafter:
    """Load a drafter directory and bind it to the target's embedding and LM head (on their device)."""
    path = Path(path)
    drafter = DSparkDrafter(read_config(path), embed_weight, lm_head_weight)
    state = load_weights(path)
    missing, unexpected = drafter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"drafter checkpoint {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    target_dtype = dtype or next(iter(state.values())).dtype
    return drafter.to(device=embed_weight.device, dtype=target_dtype).eval()


def packaged_drafter(target_name: str) -> Path | None:
    """The drafter shipped in the package for a target (by its model directory name), if any."""
    key = target_name.lower()
    for cand in sorted(PACKAGED_DIR.glob("*/")) if PACKAGED_DIR.is_dir() else []:
        if (cand / CONFIG_NAME).is_file() and key.startswith(cand.name):
            return cand
    return None
