"""ForwardBatch: everything one model forward needs, as a plain dataclass.

It sits below the models and the attention layer, which read it without importing the runner.
One forward runs over a flat, ragged token batch: request i contributes `extend_lens[i]` new
tokens on top of `seq_lens[i] - extend_lens[i]` tokens whose K/V are already in the pool. Decode
is the special case extend_lens == 1; speculative verification is "extend k tokens on a prefix".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sglang_dspark.mem_cache.memory_pool import KVPool


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [N] int64, the new tokens of all requests, concatenated
    positions: torch.Tensor  # [N] int64
    out_cache_loc: torch.Tensor  # [N] int64, KV slot written for each new token
    req_pool_indices: torch.Tensor  # [B] int64, rows of req_to_token
    seq_lens: list[int]  # [B] KV length of each request after this forward
    extend_lens: list[int]  # [B] new tokens of each request (sum == N)
    logits_indices: torch.Tensor  # [M] int64, rows of the flat batch whose logits are returned
    kv_pool: KVPool
    req_to_token: torch.Tensor  # [rows, max_context_len] int64, slot of every (request, position)
    capture_layers: tuple[int, ...] = ()  # hidden states to return; -1 = embedding output
    # run only decoder layers [0, num_layers), then the final norm and LM head (self-drafting); None = all
    num_layers: int | None = None
    attn_metadata: object | None = field(default=None, repr=False)  # filled by the attention backend

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())
