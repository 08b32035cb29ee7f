"""Training configuration: one dataclass, filled from an optional JSON file and then from CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from sglang_dspark.server_args import DEVICES
from sglang_dspark.training.data import SPLITS
from sglang_dspark.training.regenerate import GenerationSpec

VARIANTS = ("dspark", "dflash")


@dataclass
class TrainConfig:
    output_dir: str = "runs/drafter"
    model_path: str | None = None  # target; None = the bundled default (SmolLM2-135M-Instruct)
    # data
    prompt_files: list[str] = field(default_factory=list)
    json_schema_file: str | None = None
    max_schema_chars: int = 1200
    per_source: int | None = None  # training prompts per source (None = all of the train split)
    n_eval: int = 50  # the first n_eval prompts of every source are held out for evaluation ...
    n_calib: int = 20  # ... and the next n_calib for calibration
    data_file: str | None = None  # regenerated responses; default <output_dir>/train_data.jsonl
    max_new_tokens: int = 128
    gen_temperature: float = 0.8
    gen_batch_size: int = 48
    max_prompt_tokens: int = 384
    constrain_json: bool = False  # JSON-schema tasks answer under their schema (the grammar), as served
    samples_per_prompt: int = 1  # responses per training prompt (needs gen_temperature > 0 when > 1)
    regenerate_only: bool = False
    # count the data's response tokens into DIR/token_frequencies.json (the draft vocabulary of an existing
    # drafter) and stop; training writes the file into every exported drafter by itself
    write_token_frequencies: str | None = None
    # which prompts to regenerate: train, or the held-out eval / calib split (those need regenerate_only)
    split: str = "train"
    # drafter
    variants: list[str] = field(default_factory=lambda: ["dspark"])  # dflash = the ablation
    num_draft_layers: int = 1
    block_size: int = 7
    target_layer_ids: list[int] | None = None  # None: 3 layers spread over the target
    mask_token_id: int | None = None  # None: a special token the chat template does not use
    markov_rank: int = 64
    markov_head_type: str = "vanilla"
    num_anchors: int = 32
    # draft among the K most frequent response tokens only, as the runtime does (draft_vocab.py; serve with
    # --speculative-dspark-draft-vocab-size <= K): the losses' work over the vocabulary shrinks by V / K.
    # None: the whole vocabulary
    draft_vocab_size: int | None = None
    init_from_target: bool = True  # draft layers start as copies of the target's last layers
    # a run directory whose exported drafters (<dir>/<variant>/drafter) the new ones grow from (init.grow_from):
    # their layers come first, the extra num_draft_layers start adding nothing
    grow_from: str | None = None
    # optimisation
    epochs: float = 2.0
    max_steps: int | None = None
    lr: float = 6e-4
    warmup_ratio: float = 0.04
    weight_decay: float = 0.0
    grad_accum: int = 4  # sequences per optimizer step
    max_grad_norm: float = 1.0
    dtype: str = "float32"  # drafter compute: float32 or bfloat16 (CPU autocast)
    target_dtype: str = "float32"
    # the target's weights (the server's --quantization): "auto" = the model's own (a GGUF's block formats);
    # "none" = dense in target_dtype, much faster over whole sequences where bf16 matmuls are (AMX)
    target_quantization: str = "auto"
    save_dtype: str = "bfloat16"
    num_threads: int | None = None
    device: str = "cpu"  # where the target and the drafters run: cpu, cuda, or auto (cuda when there is one)
    max_minutes: float | None = None  # stop (checkpoint and export) after this much training time
    export_shard_mib: float | None = None  # exported weights in files of at most this many MiB (None = one file)
    seed: int = 0
    log_every: int = 1
    save_every: int = 10  # optimizer steps between checkpoints

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variants {bad}; choose from {VARIANTS}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.draft_vocab_size is not None and self.draft_vocab_size <= 0:
            raise ValueError(f"draft_vocab_size must be positive (or None for all tokens), got {self.draft_vocab_size}")
        self.generation_spec  # noqa: B018 - validates the generation fields
        if self.split != "train" and not self.regenerate_only:
            raise ValueError(
                f"--split {self.split} regenerates held-out data: add --regenerate-only (never train on it)"
            )

    @property
    def generation_spec(self) -> GenerationSpec:
        return GenerationSpec(
            self.max_new_tokens,
            self.gen_temperature,
            self.gen_batch_size,
            self.max_prompt_tokens,
            self.constrain_json,
            self.samples_per_prompt,
        )

    @property
    def data_path(self) -> Path:
        return Path(self.data_file) if self.data_file else Path(self.output_dir) / "train_data.jsonl"


def _arg_type(tp) -> tuple[type, bool]:
    """(element type, is_list) of a field annotation."""
    hint = typing.get_type_hints(TrainConfig)[tp]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint
    if typing.get_origin(base) is list:
        return typing.get_args(base)[0], True
    return base, False


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="JSON file with TrainConfig fields (flags override it)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        tp, is_list = _arg_type(f.name)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=tp, nargs="+" if is_list else None, default=None)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown keys in {args.config}: {sorted(unknown)}")
    values.update({n: getattr(args, n) for n in names if getattr(args, n) is not None})
    return TrainConfig(**values)
