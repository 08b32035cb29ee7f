"""Sequential (Markov) heads and the confidence head of the DSpark drafter.

A Markov head adds a low-rank transition bias to the parallel backbone's base logits:
p_k(v | x_<k) = softmax(U_k + B_k(v)), computed left to right, one step per draft position:

- vanilla: B_k = W2 W1[x_{k-1}]
- gated:   B_k = W2 (g_k * W1[x_{k-1}]), g_k = sigmoid(W_g [h_k ; W1[x_{k-1}]])
- rnn:     B_k = W2 s_k, s_k = GRU(W1[x_{k-1}], s_{k-1}), s_0 = 0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang_dspark.layers.linear import ReplicatedLinear
from sglang_dspark.speculative.dspark.config import DSparkConfig


class MarkovHead(nn.Module):
    def __init__(self, cfg: DSparkConfig) -> None:
        super().__init__()
        self.kind = cfg.markov_head_type
        r = cfg.markov_rank
        self.markov_w1 = nn.Embedding(cfg.vocab_size, r)
        self.markov_w2 = ReplicatedLinear(r, cfg.vocab_size, bias=False)
        nn.init.normal_(self.markov_w1.weight, std=0.02)
        nn.init.zeros_(self.markov_w2.weight)  # starts as the plain parallel drafter
        if self.kind == "gated":
            self.markov_gate = ReplicatedLinear(cfg.hidden_size + r, r)
        elif self.kind == "rnn":
            self.markov_rnn = nn.GRUCell(r, r)

    def prev_embedding(self, prev_ids: torch.Tensor) -> torch.Tensor:
        """prev_ids [...] -> W1[x_{k-1}] [..., r]."""
        return self.markov_w1(prev_ids)

    def transition(
        self, hidden: torch.Tensor, prev_ids: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden [N, d], prev_ids [N], state [N, r] | None -> (the rank-r input of W2 [N, r], new state)."""
        e = self.prev_embedding(prev_ids).to(hidden.dtype)  # [N, r]
        if self.kind == "gated":
            e = torch.sigmoid(self.markov_gate(torch.cat([hidden, e], dim=-1))) * e
        elif self.kind == "rnn":
            state = self.markov_rnn(e, state)
            e = state
        return e, state

    def step(
        self, hidden: torch.Tensor, prev_ids: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden [N, d], prev_ids [N], state [N, r] | None -> (logit bias [N, V], new state)."""
        e, state = self.transition(hidden, prev_ids, state)
        return self.markov_w2(e), state

    def block_logits(
        self, base: torch.Tensor, hidden: torch.Tensor, prev_ids: torch.Tensor, vocab: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced: base [A, G, V], hidden [A, G, d], prev_ids [A, G] -> logits [A, G, V]; with vocab
        [K] ids, base and logits cover those K tokens only.

        Only the rank-r inputs of W2 are computed position by position (the rnn state chains them); the
        vocabulary-wide projection and the sum are one batched op (slicing [A, G, V] per position would cost
        a zero-filled [A, G, V] gradient per slice)."""
        if self.kind == "rnn":
            state, inputs = None, []
            for k in range(base.shape[1]):
                e, state = self.transition(hidden[:, k], prev_ids[:, k], state)
                inputs.append(e)
            e = torch.stack(inputs, dim=1)  # [A, G, r]
        else:  # no state: every position at once
            e, _ = self.transition(hidden.flatten(0, 1), prev_ids.flatten(), None)
            e = e.view(*prev_ids.shape, -1)
        bias = self.markov_w2(e) if vocab is None else F.linear(e, self.markov_w2.weight[vocab])
        return base + bias.to(base.dtype)


class ConfidenceHead(nn.Module):
    """c_k = sigmoid(w . [h_k ; W1[x_{k-1}]]); returns the logit (pre-sigmoid) so STS can rescale it."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., input_dim] -> logits [...] float32."""
        return self.proj(features).squeeze(-1).float()
