"""Run a model over whole sequences on a private KV pool (no scheduler, no shared cache).

Used by training (online target features), offline evaluation and tests: one ragged forward over all
sequences, returning the captured hidden states and the logits of selected positions per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.kernels.cpu_ops import PoolAttentionFn
from sglang_dspark.layers.attention import build_attention_metadata
from sglang_dspark.mem_cache.memory_pool import KVPool
from sglang_dspark.model_executor.forward_batch import ForwardBatch


@dataclass
class SequenceOutput:
    hidden_states: list[torch.Tensor]  # one [S, d] per capture layer
    logits: torch.Tensor  # [M, V] float32 for the requested positions, in order


class SequenceRunner:
    """Extends sequences chunk by chunk on a private KV pool; row i of every call is sequence i."""

    def __init__(
        self,
        model,
        rows: int,
        max_tokens: int,
        max_len: int | None = None,
        pool_attention: PoolAttentionFn | None = None,  # the native kernel, as the ModelRunner uses it
        all_in_pool: bool = False,  # every query through pool_attention (ModelRunner.batch_invariant)
    ) -> None:
        cfg = model.config
        self.model = model
        self.pool_attention = pool_attention
        self.all_in_pool = all_in_pool
        weight = next(model.parameters())
        self.device = weight.device
        self.pool = KVPool(max_tokens, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, weight.dtype, self.device)
        self.req_to_token = torch.zeros(rows, max_len or max_tokens, dtype=torch.int64, device=self.device)
        self.next_slot = 1
        self.lens = [0] * rows

    def extend(
        self,
        chunks: dict[int, list[int]],
        capture: tuple[int, ...] = (),
        logits_positions: dict[int, list[int]] | None = None,
        num_layers: int | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """chunks: row -> new tokens; logits_positions: row -> offsets within its chunk (default: all);
        num_layers: run only the first decoder layers (ForwardBatch.num_layers).
        Returns (logits [M, V] in row order, hidden states [N, d] per capture layer)."""
        ids, pos, locs, rows, seq, ext, keep = [], [], [], [], [], [], []
        for row, toks in chunks.items():
            start, n = self.lens[row], len(toks)
            if self.next_slot + n > self.pool.size + 1:
                raise ValueError(f"KV pool of {self.pool.size} tokens is full")
            slots = torch.arange(self.next_slot, self.next_slot + n, device=self.device)
            self.next_slot += n
            self.req_to_token[row, start : start + n] = slots
            wanted = range(n) if logits_positions is None else logits_positions.get(row, [])
            keep += [len(ids) + j for j in wanted]
            ids += toks
            pos += range(start, start + n)
            locs.append(slots)
            rows.append(row)
            self.lens[row] += n
            seq.append(self.lens[row])
            ext.append(n)
        dev = {"dtype": torch.int64, "device": self.device}
        fb = ForwardBatch(
            input_ids=torch.tensor(ids, **dev),
            positions=torch.tensor(pos, **dev),
            out_cache_loc=torch.cat(locs),
            req_pool_indices=torch.tensor(rows, **dev),
            seq_lens=seq,
            extend_lens=ext,
            logits_indices=torch.tensor(keep, **dev),
            kv_pool=self.pool,
            req_to_token=self.req_to_token,
            capture_layers=tuple(capture),
            num_layers=num_layers,
        )
        fb.attn_metadata = build_attention_metadata(
            fb, self.pool_attention, self.all_in_pool, sliding_window=self.model.config.sliding_window
        )
        out = self.model(fb)
        return out.logits, out.hidden_states


def forward_sequences(
    model,
    sequences: list[list[int]],
    capture_layers: tuple[int, ...] = (),
    logits_positions: list[list[int]] | None = None,
    pool_attention: PoolAttentionFn | None = None,
) -> list[SequenceOutput]:
    """One forward over whole sequences. logits_positions[i]: positions of sequence i whose logits are
    returned (default: every position). Hidden states are cloned out of inference mode (usable by autograd).
    ``pool_attention``: attend with that kernel alone, batch-invariant like a quantized model's ModelRunner."""
    total = sum(len(s) for s in sequences)
    runner = SequenceRunner(
        model, len(sequences), total, max(len(s) for s in sequences), pool_attention, pool_attention is not None
    )
    wanted = logits_positions or [list(range(len(s))) for s in sequences]
    logits, hidden = runner.extend(dict(enumerate(sequences)), capture_layers, dict(enumerate(wanted)))
    out, tok, row = [], 0, 0
    for seq, pos in zip(sequences, wanted, strict=True):
        out.append(
            SequenceOutput([h[tok : tok + len(seq)].clone() for h in hidden], logits[row : row + len(pos)].clone())
        )
        tok += len(seq)
        row += len(pos)
    return out


@dataclass
class NextTokenScores:
    argmax: torch.Tensor  # [n] the model's greedy choice at each scored position
    logprob: torch.Tensor  # [n] float32 log-probability of the token that actually follows


def score_next_tokens(model, sequences: list[list[int]], starts: list[int]) -> list[NextTokenScores]:
    """Teacher-forced scores of sequence i's tokens from position starts[i] + 1 on (each predicted from the ones
    before it): what greedy agreement and perplexity between two models are computed from."""
    positions = [list(range(start, len(seq) - 1)) for seq, start in zip(sequences, starts, strict=True)]
    outs = forward_sequences(model, sequences, logits_positions=positions)
    scores = []
    for seq, pos, out in zip(sequences, positions, outs, strict=True):
        following = torch.tensor(seq, device=out.logits.device)[torch.tensor(pos, device=out.logits.device) + 1]
        logprob = torch.log_softmax(out.logits.float(), dim=-1).gather(1, following[:, None])[:, 0]
        scores.append(NextTokenScores(out.logits.argmax(dim=-1), logprob))
    return scores
