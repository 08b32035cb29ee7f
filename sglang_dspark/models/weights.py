"""Reading an HF-style model directory: ``config.json`` and ``*.safetensors`` weights.

Every failure is a :class:`ModelLoadError` whose message names the offending file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sglang_dspark.models.model_source import ModelLoadError


def safetensors_files(model_dir: Path | str) -> list[Path]:
    """The directory's ``*.safetensors`` files in a stable (sorted) order; ModelLoadError if none."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"model directory {model_dir} has no *.safetensors weight files")
    return files


# safetensors metadata key of a converted GGUF: JSON {tensor name: [ggml type name, columns]} of the tensors
# stored as raw GGUF blocks (uint8 [rows, row bytes])
QUANT_TYPES_KEY = "sglang_dspark.quant_types"


@dataclass(frozen=True)
class GGUFBlocks:
    """A [rows, cols] tensor stored as GGUF blocks of ``ggml_type`` (any GGML type): data [rows, bytes] uint8."""

    ggml_type: str
    data: torch.Tensor
    cols: int


def load_safetensors_state(model_dir: Path | str) -> Iterator[tuple[str, torch.Tensor | GGUFBlocks]]:
    """Yield ``(name, tensor)`` for every tensor of every ``*.safetensors`` file in ``model_dir``.

    Tensors are read lazily, one at a time, on the CPU; those a GGUF conversion kept quantized come as
    GGUFBlocks.  A truncated or corrupt file raises ModelLoadError naming it (checked when the file is opened,
    before any of its tensors is yielded).
    """
    for path in safetensors_files(model_dir):
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            quant_types = json.loads((handle.metadata() or {}).get(QUANT_TYPES_KEY, "{}"))
        except Exception as e:  # SafetensorError, OSError, JSONDecodeError, ...
            raise ModelLoadError(f"cannot read safetensors file {path} (corrupt or truncated?): {e}") from e
        with handle:
            for name in handle.keys():
                try:
                    tensor = handle.get_tensor(name)
                except Exception as e:
                    raise ModelLoadError(f"cannot read tensor {name!r} from safetensors file {path}: {e}") from e
                if name in quant_types:
                    ggml_type, cols = quant_types[name]
                    yield name, GGUFBlocks(ggml_type, tensor, int(cols))
                else:
                    yield name, tensor


def checkpoint_quant_types(model_dir: Path | str) -> set[str]:
    """The GGML types of the tensors ``model_dir``'s safetensors keep as GGUF blocks (empty for a dense one)."""
    types: set[str] = set()
    for path in safetensors_files(model_dir):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                entries = json.loads((handle.metadata() or {}).get(QUANT_TYPES_KEY, "{}"))
        except Exception as e:
            raise ModelLoadError(f"cannot read safetensors file {path} (corrupt or truncated?): {e}") from e
        types.update(ggml_type for ggml_type, _ in entries.values())
    return types


def load_hf_config(model_dir: Path | str) -> dict[str, Any]:
    """``config.json`` of ``model_dir`` as a dict; ModelLoadError naming the file if missing or invalid."""
    model_dir = Path(model_dir)
    path = model_dir if model_dir.name == "config.json" and model_dir.is_file() else model_dir / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ModelLoadError(f"model config {path} not found (expected an HF-style model directory)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"cannot read model config {path}: {e}") from e
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"model config {path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"model config {path} must be a JSON object, got {type(config).__name__}")
    return config
