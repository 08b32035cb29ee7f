"""Build the speculative worker the server flags ask for (or None without --speculative-algorithm)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from sglang_dspark.mem_cache.radix_cache import RadixCache
from sglang_dspark.model_executor.model_runner import ModelRunner, use_cpu_ops
from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.server_args import ServerArgs
from sglang_dspark.speculative.combined_proposer import BestOfProposer
from sglang_dspark.speculative.draft import Proposer
from sglang_dspark.speculative.dspark import DSparkConfig, load_drafter
from sglang_dspark.speculative.dspark.checkpoint import CONFIG_NAME, packaged_drafter, read_config
from sglang_dspark.speculative.dspark.draft_vocab import DEFAULT_DRAFT_VOCAB_SIZE, FREQUENCIES_NAME, TokenFrequencies
from sglang_dspark.speculative.dspark_proposer import ConfidenceCalibration, DSparkProposer
from sglang_dspark.speculative.ngram import NGramProposer
from sglang_dspark.speculative.online_calibration import CalibratedProposer, OnlineCalibration
from sglang_dspark.speculative.pacing import ProposerGate
from sglang_dspark.speculative.planner import SPSTable
from sglang_dspark.speculative.self_draft_proposer import DEFAULT_SELF_DRAFT_TOKENS, SelfDraftProposer
from sglang_dspark.speculative.spec_config import DEFAULT_NUM_DRAFT_TOKENS, SpecConfig
from sglang_dspark.speculative.spec_worker import SpecWorker
from sglang_dspark.speculative.sps_profile import profile_runner_sps
from sglang_dspark.speculative.standalone_proposer import StandaloneProposer
from sglang_dspark.speculative.sts import STSCalibration
from sglang_dspark.speculative.verify_policy import LOAD_ADAPTIVE_MODES, make_verify_policy

logger = logging.getLogger(__name__)

AVAILABLE_ALGORITHMS = ("DSPARK", "NGRAM", "STANDALONE", "SELF")
DEFAULT_STANDALONE_DRAFT_TOKENS = 4  # one draft-model step per token


def build_spec_worker(
    args: ServerArgs, runner: ModelRunner, model_dir: Path, radix: RadixCache | None = None
) -> SpecWorker | None:
    """radix: the scheduler's prefix cache, whose cached continuations the n-gram proposer also searches."""
    algo = args.speculative_algorithm
    if algo is None:
        return None
    if algo not in AVAILABLE_ALGORITHMS:
        raise ValueError(f"--speculative-algorithm {algo} is not available yet; use one of {AVAILABLE_ALGORITHMS}")
    cfg = SpecConfig.from_server_args(args)
    calibration = None
    if cfg.online_calibration:
        calibration = OnlineCalibration(
            cfg.calibration_bins, cfg.calibration_max_position, cfg.calibration_prior_weight, cfg.calibration_memory
        )

    def calibrated(p: Proposer) -> Proposer:
        return p if calibration is None else CalibratedProposer(p, calibration)

    def ngram() -> NGramProposer:
        return NGramProposer(cfg.ngram_min_n, cfg.ngram_max_n, radix, cfg.radix_confidence)

    gate = None  # the drafter's ProposerGate (DSPARK or SELF with the n-gram proposer)
    if algo in ("DSPARK", "SELF"):
        if algo == "DSPARK":
            drafter = build_dspark_proposer(args, runner, model_dir, cfg.sts)
            cap = drafter.drafter.config.block_size
        else:
            cap = cfg.num_draft_tokens or DEFAULT_SELF_DRAFT_TOKENS
            drafter = build_self_draft_proposer(args, runner, cap)
        # the drafter drafts at most `cap`; the n-gram proposer combined with it as much as NGRAM alone
        # (its long matches of repeated JSON keys and code lines are where speculation gains most)
        num_draft_tokens = cfg.num_draft_tokens or max(cap, DEFAULT_NUM_DRAFT_TOKENS)
        # per request, the n-gram / radix draft or the drafter's, whichever expects more accepted tokens;
        # the drafter only runs for requests whose n-gram draft expects fewer than ngram_enough, and for the
        # kinds of requests (grammar or not) where its drafts have lately added more than they cost (ProposerGate)
        if args.speculative_dspark_disable_ngram:
            num_draft_tokens = min(num_draft_tokens, cap)
            proposer = calibrated(drafter)
        else:
            if cfg.gate:
                gate = ProposerGate(cfg.gate_min_gain, cfg.gate_explore_every, cfg.gate_weight)
            proposer = BestOfProposer((calibrated(ngram()), calibrated(drafter)), cfg.ngram_enough, gate)
    elif algo == "STANDALONE":
        proposer = calibrated(build_standalone_proposer(args, runner))
        num_draft_tokens = cfg.num_draft_tokens or DEFAULT_STANDALONE_DRAFT_TOKENS
    else:
        proposer = calibrated(ngram())
        num_draft_tokens = cfg.num_draft_tokens or DEFAULT_NUM_DRAFT_TOKENS
    mode = cfg.verify_mode
    sps = None
    if args.speculative_dspark_sps_table_path:
        sps = SPSTable.load(args.speculative_dspark_sps_table_path)
    elif mode in LOAD_ADAPTIVE_MODES:  # they need SPS(B) of this machine
        sps = profile_runner_sps(runner, num_draft_tokens + 1)
        logger.info("profiled SPS(B): %s", dict(zip(sps.batch_tokens, (round(v, 1) for v in sps.steps_per_sec))))
    policy = make_verify_policy(mode, sps, cfg.verify_threshold)
    # the baselines (fixed, threshold) verify what they verify, without the drafting-cost backoff
    adaptive_sps = sps if mode in LOAD_ADAPTIVE_MODES else None
    return SpecWorker(proposer, num_draft_tokens, runner.vocab_size, policy, calibration, adaptive_sps, gate, cfg)


def build_standalone_proposer(args: ServerArgs, runner: ModelRunner) -> StandaloneProposer:
    """The draft model of --speculative-draft-model-path in its own ModelRunner (same dtype, kernels and
    KV capacity as the target); its vocabulary must be the target's."""
    if not args.speculative_draft_model_path:
        raise ValueError(
            "--speculative-algorithm STANDALONE needs --speculative-draft-model-path (a small model "
            "with the target's tokenizer)"
        )
    draft_dir = resolve_model_path(args.speculative_draft_model_path)
    draft_args = dataclasses.replace(
        args,
        model_path=str(draft_dir),
        speculative_algorithm=None,
        max_total_tokens=runner.max_total_tokens,
        context_length=runner.context_len,
    )
    draft = ModelRunner(draft_args, draft_dir)
    if draft.vocab_size != runner.vocab_size:
        raise ValueError(
            f"draft model {draft_dir} has vocab_size {draft.vocab_size}, the target {runner.vocab_size}: "
            "STANDALONE needs the target's tokenizer"
        )
    return StandaloneProposer(draft, args.random_seed)


def build_self_draft_proposer(args: ServerArgs, runner: ModelRunner, max_tokens: int) -> SelfDraftProposer:
    """The target's first --speculative-self-draft-layers layers (default: nine tenths of them, at least one
    fewer than all: the default model's layers agree with its output only near the top,
    benchmarks/results/self_drafting.md)."""
    total = runner.config.num_layers
    layers = args.speculative_self_draft_layers or max(1, min(total - 1, round(0.9 * total)))
    logger.info("self-drafting with %d of the target's %d layers", layers, total)
    return SelfDraftProposer(runner, layers, max_tokens, args.random_seed)


def build_dspark_proposer(args: ServerArgs, runner: ModelRunner, model_dir: Path, sts: bool = True) -> DSparkProposer:
    """Load the drafter (--speculative-draft-model-path, else the one shipped for the target) and, with
    ``sts``, its STS calibration (raw sigmoid confidences without)."""
    if args.speculative_draft_model_path:
        path = Path(args.speculative_draft_model_path)
    else:
        path = packaged_drafter(model_dir.name)
        if path is None:
            raise ValueError(
                f"no DSpark drafter ships for {model_dir.name}; pass --speculative-draft-model-path "
                "(train one with python -m sglang_dspark.train)"
            )
    if not (path / CONFIG_NAME).is_file():
        raise ValueError(f"drafter checkpoint {path} has no {CONFIG_NAME}")
    cfg = read_config(path)
    check_drafter_matches_target(cfg, runner.config, path)
    if args.speculative_dspark_block_size not in (None, cfg.block_size):
        raise ValueError(
            f"--speculative-dspark-block-size {args.speculative_dspark_block_size} differs from the block size "
            f"{cfg.block_size} the drafter {path} was trained with"
        )
    target = runner.model
    drafter = load_drafter(path, target.embed_tokens.weight, target.lm_head_weight, dtype=runner.dtype)
    if runner.cpu_ops is not None:
        use_cpu_ops(drafter, runner.cpu_ops)
    drafter.restrict_vocab(load_draft_vocab(args.speculative_dspark_draft_vocab_size, path, cfg.vocab_size))
    if runner.quantization != "none":  # the target's int8 kernel loaded: the drafter multiplies with it too
        drafter.quantize()
    calibration = ConfidenceCalibration()
    if sts:
        calibration = load_calibration(args.speculative_dspark_confidence_sts_path, path, cfg.block_size)
    logger.info(
        "DSpark drafter %s (block %d, target layers %s, drafting among %d tokens)",
        path,
        cfg.block_size,
        cfg.target_layer_ids,
        cfg.vocab_size if drafter.draft_vocab is None else len(drafter.draft_vocab),
    )
    num_slots = runner.max_total_tokens + 1  # KV slots are 1..max_total_tokens; slot 0 is padding
    return DSparkProposer(drafter, runner.req_to_token_pool.req_to_token, num_slots, calibration, args.random_seed)


def check_drafter_matches_target(cfg: DSparkConfig, target: DecoderConfig, path: Path) -> None:
    """Raise a ValueError naming every drafter/target size that differs."""
    pairs = {
        "vocab_size": (cfg.vocab_size, target.vocab_size),
        "hidden_size": (cfg.hidden_size, target.hidden_size),
        "num_target_layers": (cfg.num_target_layers, target.num_layers),
    }
    wrong = [f"{name} {mine} (target {theirs})" for name, (mine, theirs) in pairs.items() if mine != theirs]
    if wrong:
        raise ValueError(f"drafter checkpoint {path} does not fit the target model: " + ", ".join(wrong))


def load_draft_vocab(size: int | None, drafter_dir: Path, vocab_size: int) -> torch.Tensor | None:
    """--speculative-dspark-draft-vocab-size: the ids the drafter may propose [K], None for all of them."""
    path = drafter_dir / FREQUENCIES_NAME
    if size == 0 or (size is None and not path.is_file()):
        return None
    if not path.is_file():
        raise ValueError(
            f"--speculative-dspark-draft-vocab-size {size} needs {path} (python -m sglang_dspark.train "
            "--write-token-frequencies writes it)"
        )
    k = min(size or DEFAULT_DRAFT_VOCAB_SIZE, vocab_size)
    return TokenFrequencies.load(path).draft_vocab(k, vocab_size)


def load_calibration(sts_path: str | None, drafter_dir: Path, block_size: int) -> ConfidenceCalibration:
    """--speculative-dspark-confidence-sts-path for every draft, else the drafter directory's
    sts_greedy.json / sts_t1.json for greedy / sampled drafts where present (raw confidences otherwise)."""

    def load(path: Path) -> STSCalibration | None:
        if not path.is_file():
            return None
        sts = STSCalibration.load(path)
        if len(sts.temperatures) < block_size:
            raise ValueError(
                f"STS file {path} has {len(sts.temperatures)} temperatures, the drafter drafts {block_size}"
            )
        return sts

    if sts_path:
        sts = load(Path(sts_path))
        if sts is None:
            raise ValueError(f"--speculative-dspark-confidence-sts-path {sts_path} does not exist")
        return ConfidenceCalibration(sts, sts)
    return ConfidenceCalibration(load(drafter_dir / "sts_greedy.json"), load(drafter_dir / "sts_t1.json"))
