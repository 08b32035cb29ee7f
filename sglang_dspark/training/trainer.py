"""Online drafter training: the frozen target computes context features and target distributions on the
fly for every sequence; one or more drafter variants (DSpark, the DFlash ablation) learn from the same
target forward, the same anchors and the same optimisation budget.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sglang_dspark.model_executor.sequence_forward import forward_sequences
from sglang_dspark.speculative.dspark import DSparkConfig, DSparkDrafter, save_drafter
from sglang_dspark.speculative.dspark.checkpoint import load_drafter
from sglang_dspark.speculative.dspark.draft_vocab import FREQUENCIES_NAME, TokenFrequencies
from sglang_dspark.training.config import TrainConfig
from sglang_dspark.training.init import grow_from, init_from_target
from sglang_dspark.training.losses import DFLASH_WEIGHTS, DSPARK_WEIGHTS, LossWeights, TargetBlock, dspark_loss
from sglang_dspark.training.regenerate import Sequence, load_sequences

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"  # latest resumable state (weights + optimizer), replaced atomically
EXPORT_DIR = "drafter"  # final weights in save_dtype: what the runtime loads
TRAINER_STATE = "trainer_state.pt"
TRAIN_VOCAB = "train_vocab.json"  # the ids every variant drafts among in training, fixed for the whole run
MASK_TOKEN_CANDIDATES = ("<|mask|>", "<mask>", "<empty_output>", "<|fim_pad|>")
LOG_METRICS = ("loss", "ce", "l1", "conf_bce", "tau_t1", "tau_greedy")


def default_target_layers(num_layers: int, count: int = 3) -> list[int]:
    """`count` layers spread from layer 1 to layer L - 3 (DeepSpec's choice for Qwen3: 1, 9, ..., 33)."""
    if num_layers <= count:
        return list(range(num_layers))
    hi = max(num_layers - 3, count)
    return sorted({round(1 + i * (hi - 1) / (count - 1)) for i in range(count)})


def default_mask_token(tokenizer) -> int:
    vocab = tokenizer.get_vocab()
    for name in MASK_TOKEN_CANDIDATES:
        if name in vocab:
            return vocab[name]
    return tokenizer.pad_token_id or 0


def drafter_config(cfg: TrainConfig, variant: str, target_cfg, tokenizer) -> DSparkConfig:
    dflash = variant == "dflash"
    return DSparkConfig(
        hidden_size=target_cfg.hidden_size,
        intermediate_size=target_cfg.intermediate_size,
        num_hidden_layers=cfg.num_draft_layers,
        num_attention_heads=target_cfg.num_heads,
        num_key_value_heads=target_cfg.num_kv_heads,
        head_dim=target_cfg.head_dim,
        vocab_size=target_cfg.vocab_size,
        rms_norm_eps=target_cfg.rms_norm_eps,
        rope_theta=target_cfg.rope_theta,
        max_position_embeddings=target_cfg.max_position_embeddings,
        block_size=cfg.block_size,
        target_layer_ids=tuple(cfg.target_layer_ids or default_target_layers(target_cfg.num_layers)),
        num_target_layers=target_cfg.num_layers,
        mask_token_id=cfg.mask_token_id if cfg.mask_token_id is not None else default_mask_token(tokenizer),
        markov_rank=0 if dflash else cfg.markov_rank,
        markov_head_type=cfg.markov_head_type,
        enable_confidence_head=not dflash,
        confidence_head_with_markov=not dflash,
        num_anchors=cfg.num_anchors,
        architectures=("DFlashDraftModel",) if dflash else ("Qwen3DSparkModel",),
    )


def sample_anchors(prompt_len: int, seq_len: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """Up to `count` distinct anchor positions in [prompt_len, seq_len - 2], sorted -> [A]."""
    candidates = torch.arange(prompt_len, seq_len - 1)
    pick = torch.randperm(candidates.numel(), generator=gen)[:count]
    return candidates[pick].sort().values


@dataclass
class TargetView:
    """What the frozen target provides for one sequence."""

    ids: torch.Tensor  # [S]
    feats: torch.Tensor  # [S, m*d] concatenated hidden states of target_layer_ids
    logits: torch.Tensor  # [S - 1 - P, V] target logits at positions P .. S - 2
    prompt_len: int

    def aligned_rows(self, anchors: torch.Tensor, block_size: int) -> torch.Tensor:
        """anchors [A] -> [A, G] rows of `logits` predicting tokens anchor + 1 .. anchor + G."""
        rows = anchors[:, None] + torch.arange(block_size, device=anchors.device) - self.prompt_len
        return rows.clamp(max=self.logits.shape[0] - 1)

    def aligned_logits(self, anchors: torch.Tensor, block_size: int) -> torch.Tensor:
        """anchors [A] -> target logits [A, G, V] predicting tokens anchor + 1 .. anchor + G."""
        return self.logits[self.aligned_rows(anchors, block_size)]

    @torch.no_grad()
    def target_block(self, anchors: torch.Tensor, labels: torch.Tensor, vocab: torch.Tensor | None) -> TargetBlock:
        """anchors [A], labels [A, G] true token ids, vocab [K] ids the drafter drafts among (None: all V).
        One softmax per response position, shared by every block that covers it."""
        probs = self.logits.float().softmax(-1)  # [R, V]
        greedy = self.logits.argmax(-1)  # [R]
        if vocab is not None:
            local = torch.full((probs.shape[-1],), -1, dtype=torch.int64, device=vocab.device)
            local[vocab] = torch.arange(vocab.numel(), device=vocab.device)
            probs, greedy, labels = probs[:, vocab], local[greedy], local[labels]
        rows = self.aligned_rows(anchors, labels.shape[1])
        return TargetBlock(probs[rows], greedy[rows], labels)


def target_view(target, seq: Sequence, layer_ids: tuple[int, ...]) -> TargetView:
    ids = seq.ids
    p = len(seq.prompt_ids)
    (out,) = forward_sequences(target, [ids], layer_ids, [list(range(p, len(ids) - 1))])
    feats = torch.cat(out.hidden_states, dim=-1).float()
    return TargetView(torch.tensor(ids, device=feats.device), feats, out.logits, p)


class Trainer:
    def __init__(self, cfg: TrainConfig, target, tokenizer) -> None:
        self.cfg = cfg
        self.target = target.requires_grad_(False)
        self.out = Path(cfg.output_dir)
        self.autocast = cfg.dtype == "bfloat16"
        embed, head = target.embed_tokens.weight, target.lm_head_weight
        self.device = embed.device  # the target's: the drafters train where it runs
        self.drafters: dict[str, DSparkDrafter] = {}
        for v in cfg.variants:
            ckpt = self.out / v / CHECKPOINT_DIR
            if ckpt.is_dir():
                self.drafters[v] = load_drafter(ckpt, embed, head, torch.float32).train()
            else:
                torch.manual_seed(cfg.seed)
                self.drafters[v] = DSparkDrafter(drafter_config(cfg, v, target.config, tokenizer), embed, head)
                self.drafters[v].to(self.device)
                if cfg.init_from_target:
                    init_from_target(self.drafters[v], target)
                if cfg.grow_from:
                    smaller = load_drafter(Path(cfg.grow_from) / v / EXPORT_DIR, embed, head, torch.float32)
                    grow_from(self.drafters[v], smaller)
        self.layer_ids = next(iter(self.drafters.values())).config.target_layer_ids
        if any(d.config.target_layer_ids != self.layer_ids for d in self.drafters.values()):
            raise ValueError("all variants trained together must read the same target_layer_ids")
        self.optimizers = {
            v: torch.optim.AdamW(
                [p for p in d.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
            )
            for v, d in self.drafters.items()
        }
        self.weights: dict[str, LossWeights] = {
            v: DFLASH_WEIGHTS if v == "dflash" else DSPARK_WEIGHTS for v in cfg.variants
        }
        self.step = 0
        self.vocab: torch.Tensor | None = None  # [K] ids the drafters draft among (training_vocab); None: all
        self.resume()

    def resume(self) -> None:
        steps = set()
        for v in self.drafters:
            state_path = self.out / v / CHECKPOINT_DIR / TRAINER_STATE
            if state_path.is_file():
                state = torch.load(state_path, weights_only=False, map_location=self.device)
                self.optimizers[v].load_state_dict(state["optimizer"])
                steps.add(state["step"])
            else:
                steps.add(0)
        if len(steps) > 1:
            raise ValueError(f"variants were checkpointed at different steps {sorted(steps)}; retrain one of them")
        self.step = steps.pop()
        if self.step:
            logger.info("resuming from step %d (%s)", self.step, self.out)

    def training_vocab(self, sequences: list[Sequence]) -> torch.Tensor | None:
        """The cfg.draft_vocab_size most frequent response tokens [K] (None: the whole vocabulary), counted at
        the run's first start and kept in <output_dir>/train_vocab.json, so that a resumed run trains on the
        same ids while the data file grows."""
        k, path = self.cfg.draft_vocab_size, self.out / TRAIN_VOCAB
        if path.is_file():
            ids = json.loads(path.read_text(encoding="utf-8"))["token_ids"]
            if len(ids) != k:
                raise ValueError(
                    f"{path} holds the {len(ids)} ids this run trains on, but draft_vocab_size is {k}: "
                    "keep the run's size or train in a new output_dir"
                )
            return torch.tensor(ids, dtype=torch.int64, device=self.device)
        if k is None:
            return None
        vocab_size = next(iter(self.drafters.values())).config.vocab_size
        vocab = response_token_frequencies(sequences).draft_vocab(min(k, vocab_size), vocab_size)
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"token_ids": vocab.tolist()}) + "\n", encoding="utf-8")
        return vocab.to(self.device)

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up, then cosine decay to 10% of the peak."""
        warm = max(1, int(self.cfg.warmup_ratio * total))
        if step < warm:
            return self.cfg.lr * (step + 1) / warm
        frac = (step - warm) / max(1, total - warm)
        return self.cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    def save(self) -> None:
        for v, d in self.drafters.items():
            state = {"optimizer": self.optimizers[v].state_dict(), "step": self.step}
            try:
                writer = {TRAINER_STATE: lambda p, s=state: torch.save(s, p)}
                save_drafter(d, self.out / v / CHECKPOINT_DIR, extra_files=writer)
            except OSError as e:  # e.g. disk full: the previous checkpoint is untouched, keep training
                logger.error("checkpoint of %s at step %d failed (%s); the previous one is intact", v, self.step, e)

    def export(self, sequences: list[Sequence]) -> None:
        """The final drafters in save_dtype, each with the token frequencies of the training responses."""
        dtype = getattr(torch, self.cfg.save_dtype)
        freqs = response_token_frequencies(sequences)
        shard = None if self.cfg.export_shard_mib is None else int(self.cfg.export_shard_mib * 2**20)
        for v, d in self.drafters.items():
            extra = {FREQUENCIES_NAME: freqs.save}
            save_drafter(d, self.out / v / EXPORT_DIR, dtype=dtype, extra_files=extra, max_shard_bytes=shard)

    def micro_step(self, seq: Sequence, gen: torch.Generator) -> dict[str, dict[str, float]]:
        view = target_view(self.target, seq, self.layer_ids)
        anchors = sample_anchors(view.prompt_len, len(view.ids), self.cfg.num_anchors, gen).to(self.device)
        target = None  # the same for every variant: same anchors, same labels
        metrics = {}
        for v, d in self.drafters.items():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                tf = d.teacher_forced(view.feats, view.ids, anchors, self.vocab)
            if target is None:
                target = view.target_block(anchors, tf.labels, self.vocab)
            loss, m = dspark_loss(tf.logits.float(), target, tf.valid, tf.confidence_logits, self.weights[v])
            (loss / self.cfg.grad_accum).backward()
            metrics[v] = m
        return metrics

    def total_steps(self, num_sequences: int) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        return max(1, math.ceil(self.cfg.epochs * num_sequences / self.cfg.grad_accum))

    def train(self, data_path: Path) -> None:
        """Train until total_steps (or max_minutes); the data file is re-read every epoch (it may still be growing).
        Ends with a checkpoint and the exported drafters."""
        log_path = self.out / "train_log.csv"
        self.out.mkdir(parents=True, exist_ok=True)
        new_log = not log_path.exists()
        log_file = open(log_path, "a", newline="", encoding="utf-8")
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(["step", "variant", "lr", *LOG_METRICS, "elapsed_s"])
        tb = _tensorboard(self.out / "tb")
        sequences = _usable(load_sequences(data_path, min_response=2))
        self.vocab = self.training_vocab(sequences)
        total = self.total_steps(len(sequences))
        start = time.perf_counter()
        bar = tqdm(total=total, initial=self.step, desc="train")
        try:
            deadline = None if self.cfg.max_minutes is None else start + 60 * self.cfg.max_minutes
            while self.step < total and (deadline is None or time.perf_counter() < deadline):
                epoch, offset = divmod(self.step * self.cfg.grad_accum, max(1, len(sequences)))
                order = list(range(len(sequences)))
                random.Random(self.cfg.seed + epoch).shuffle(order)
                batch = [sequences[order[(offset + i) % len(order)]] for i in range(self.cfg.grad_accum)]
                gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
                lr = self.lr_at(self.step, total)
                sums: dict[str, dict[str, float]] = {}
                for seq in batch:
                    for v, m in self.micro_step(seq, gen).items():
                        for k, x in m.items():
                            sums.setdefault(v, {}).setdefault(k, 0.0)
                            sums[v][k] += x / len(batch)
                for v, d in self.drafters.items():
                    torch.nn.utils.clip_grad_norm_(d.parameters(), self.cfg.max_grad_norm)
                    for group in self.optimizers[v].param_groups:
                        group["lr"] = lr
                    self.optimizers[v].step()
                    self.optimizers[v].zero_grad(set_to_none=True)
                self.step += 1
                elapsed = time.perf_counter() - start
                for v, m in sums.items():
                    values = [f"{m.get(k, float('nan')):.4f}" for k in LOG_METRICS]
                    writer.writerow([self.step, v, f"{lr:.3g}", *values, f"{elapsed:.0f}"])
                    if tb is not None:
                        for k, x in m.items():
                            tb.add_scalar(f"{v}/{k}", x, self.step)
                log_file.flush()
                bar.update(1)
                bar.set_postfix({v: f"loss {m['loss']:.3f} tau1 {m['tau_t1']:.2f}" for v, m in sums.items()})
                if self.step % self.cfg.save_every == 0:
                    self.save()
                if offset + self.cfg.grad_accum >= len(sequences):  # epoch boundary: pick up new data
                    sequences = _usable(load_sequences(data_path, min_response=2))
            self.save()
            self.export(sequences)
        finally:
            bar.close()
            log_file.close()


def response_token_frequencies(sequences: list[Sequence]) -> TokenFrequencies:
    """How often the target produced each token in the data (the draft vocabulary's ranking)."""
    return TokenFrequencies.count(s.response_ids for s in sequences)


def _usable(sequences: list[Sequence]) -> list[Sequence]:
    if not sequences:
        raise ValueError("no training sequences (regenerate the data first)")
    return sequences


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))
