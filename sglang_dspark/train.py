"""`python -m sglang_dspark.train`: regenerate responses with the target, then train drafters online.

Example (the shipped SmolLM2 drafters, see README "Training drafters"):
    python -m sglang_dspark.train --config examples/train_smollm2.json --variants dspark dflash
The draft vocabulary of an existing drafter (token_frequencies.json, counted on the training responses):
    python -m sglang_dspark.train --config examples/train_smollm2.json --write-token-frequencies DRAFTER_DIR
Held-out data for calibrate / eval (greedy responses of the eval split):
    python -m sglang_dspark.train --config examples/train_smollm2.json --split eval --regenerate-only \
        --gen-temperature 0 --data-file runs/data/eval_t0.jsonl
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import torch

from sglang_dspark.speculative.dspark.draft_vocab import DEFAULT_DRAFT_VOCAB_SIZE, FREQUENCIES_NAME
from sglang_dspark.training.config import build_parser, config_from_args
from sglang_dspark.training.data import SplitSpec, load_prompt_sources, select
from sglang_dspark.training.regenerate import load_sequences, regenerate
from sglang_dspark.training.trainer import Trainer, response_token_frequencies


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    from sglang_dspark.entrypoints.engine import Engine

    engine = Engine(
        cfg.model_path,
        dtype=cfg.target_dtype,
        quantization=cfg.target_quantization,
        device=cfg.device,
        num_threads=cfg.num_threads,
        max_total_tokens=cfg.gen_batch_size * (cfg.max_prompt_tokens + cfg.max_new_tokens),
        random_seed=cfg.seed,
        log_level="warning",
    )
    if cfg.prompt_files or cfg.json_schema_file:
        sources = load_prompt_sources(cfg.prompt_files, cfg.json_schema_file, cfg.max_schema_chars)
        prompts = select(sources, cfg.split, cfg.per_source, SplitSpec(cfg.n_eval, cfg.n_calib))
        regenerate(engine, prompts, cfg.data_path, cfg.generation_spec)
    if cfg.write_token_frequencies:
        path = Path(cfg.write_token_frequencies) / FREQUENCIES_NAME
        sequences = load_sequences(cfg.data_path)
        if not sequences:
            raise SystemExit(f"no regenerated responses in {cfg.data_path} to count (configure prompt files)")
        freqs = response_token_frequencies(sequences)
        freqs.save(path)
        logging.getLogger(__name__).info(
            "%s: %d distinct tokens of %d; the %d most frequent cover %.1f%%",
            path,
            len(freqs.token_ids),
            freqs.counted_tokens,
            DEFAULT_DRAFT_VOCAB_SIZE,
            100 * freqs.coverage(DEFAULT_DRAFT_VOCAB_SIZE),
        )
    if cfg.regenerate_only or cfg.write_token_frequencies:
        return 0
    trainer = Trainer(cfg, engine.scheduler.runner.model, engine.tokenizer)
    try:
        trainer.train(cfg.data_path)
    except KeyboardInterrupt:
        logging.getLogger(__name__).warning("interrupted at step %d; resume from the last checkpoint", trainer.step)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
