"""DSparkDrafter: backbone + Markov head + confidence head, sharing the target's embedding and LM head.

Two entry points:
- `teacher_forced(feats, ids, anchors, vocab)`: training / offline evaluation. Every anchor block sees the
  context features of the positions before its anchor and, in the Markov head, the true previous token;
  the logits cover the whole vocabulary or the K ids of `vocab`.
- `append_context(states, feats, positions)` + `draft(states, anchor_tokens, anchor_positions, ...)`:
  the runtime. Context K/V are cached per request; a draft runs the gamma-token block once, then the
  Markov head samples left to right (greedy or with a temperature), optionally masking every step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sglang_dspark.kernels.cpu_ops import LinearFn
from sglang_dspark.kernels.fused_decoder import FusedLayerWeights
from sglang_dspark.kernels.fused_drafter import FusedDrafter, FusedDrafterWeights
from sglang_dspark.kernels.quant_formats import Q8_0_BLOCK, QuantizedWeight, concat_rows, interleave, quantize_q8_0
from sglang_dspark.kernels.quant_linear import quant_linear
from sglang_dspark.layers.linear import ReplicatedLinear
from sglang_dspark.speculative.dspark.backbone import DraftBackbone
from sglang_dspark.speculative.dspark.config import DSparkConfig
from sglang_dspark.speculative.dspark.heads import ConfidenceHead, MarkovHead
from sglang_dspark.speculative.dspark.state import DrafterState

# (step k, tokens drafted so far [R, k]) -> allowed tokens [R, V] bool, or None for "no constraint"
MaskFn = Callable[[int, torch.Tensor], torch.Tensor | None]
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per draft layer (keys, values)


@dataclass
class TeacherForced:
    logits: torch.Tensor  # [A, G, V] (or [A, G, K] over a vocab subset) float32, draft logits (Markov bias included)
    confidence_logits: torch.Tensor | None  # [A, G] float32, pre-sigmoid
    labels: torch.Tensor  # [A, G] int64, the true tokens anchor + 1 .. anchor + G
    valid: torch.Tensor  # [A, G] bool, label inside the sequence


@dataclass
class DraftOutput:
    tokens: torch.Tensor  # [R, G] int64
    # [R, G, V] float32, the distribution each token was drawn from (one-hot for greedy rows); None when
    # every row is greedy
    probs: torch.Tensor | None
    confidence_logits: torch.Tensor | None  # [R, G] float32, pre-sigmoid (None without a confidence head)

    @property
    def confidences(self) -> torch.Tensor | None:
        """[R, G] uncalibrated c_k; apply STS to `confidence_logits` for calibrated ones."""
        return None if self.confidence_logits is None else torch.sigmoid(self.confidence_logits)


class DSparkDrafter(DraftBackbone):
    def __init__(self, cfg: DSparkConfig, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor) -> None:
        super().__init__(cfg)
        self.config = cfg
        self.markov_head = MarkovHead(cfg) if cfg.has_markov else None
        self.confidence_head = None
        if cfg.enable_confidence_head:
            with_markov = cfg.confidence_head_with_markov
            self.confidence_head = ConfidenceHead(cfg.hidden_size + (cfg.markov_rank if with_markov else 0))
        self.linear_fn: LinearFn = F.linear  # the LM head's matmul; model_runner.use_cpu_ops may swap it
        self.bind_target(embed_weight, lm_head_weight)
        self.draft_vocab: torch.Tensor | None = None  # [K] ids `draft` may propose; None = all
        self._draft_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # LM head, Markov W2 rows
        self.fused: FusedDrafter | None = None  # the native drafter (``quantize``)

    def bind_target(self, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor) -> None:
        """Share the target's (frozen) embedding [V, d] and LM head [V, d]; they are not drafter parameters."""
        v, d = self.config.vocab_size, self.config.hidden_size
        for name, w in (("embed_tokens", embed_weight), ("lm_head", lm_head_weight)):
            if tuple(w.shape) != (v, d):
                raise ValueError(f"target {name} has shape {tuple(w.shape)}, drafter expects {(v, d)}")
        self.embed_weight = embed_weight.detach()
        self.lm_head_weight = lm_head_weight.detach()

    def restrict_vocab(self, token_ids: torch.Tensor | None) -> None:
        """Let `draft` propose only token_ids [K] (ascending; draft_vocab.py), None = the whole vocabulary.
        Copies those rows of the LM head and the Markov W2: for inference (call again after changing them)."""
        self.fused = None  # built from the rows below by ``quantize``
        if token_ids is None:
            self.draft_vocab, self._draft_rows = None, None
            return
        ids = token_ids.to(device=self.lm_head_weight.device, dtype=torch.int64)
        if ids.dim() != 1 or not len(ids) or bool((ids[1:] <= ids[:-1]).any()):
            raise ValueError("a draft vocabulary must be non-empty, ascending and without repeats")
        if int(ids[0]) < 0 or int(ids[-1]) >= self.config.vocab_size:
            raise ValueError(f"draft vocabulary ids must lie in [0, {self.config.vocab_size})")
        w2 = None if self.markov_head is None else self.markov_head.markov_w2.weight.detach()[ids].contiguous()
        self.draft_vocab, self._draft_rows = ids, (self.lm_head_weight[ids].contiguous(), w2)

    def quantize(self) -> None:
        """Multiply in Q8_0 blocks with the quantized target's int8 kernel (kernels/quant_linear.py) for inference:
        the backbone's linear layers and the draft vocabulary's LM head rows (call after ``restrict_vocab``).
        Drafting reads half the bytes of bf16 in one kernel call per matmul; every draft stays verified. Where
        FusedDrafter can run the result (``_fusable``), ``draft`` and ``append_context`` call it instead of the
        modules (kernels/fused_drafter.py)."""
        for module in self.modules():
            if (
                isinstance(module, ReplicatedLinear)
                and module.in_features % Q8_0_BLOCK == 0
                and module is not getattr(self.markov_head, "markov_w2", None)  # multiplied by its draft rows
            ):
                module.quantize()
        if self._draft_rows is not None and self.config.hidden_size % Q8_0_BLOCK == 0:
            self._draft_rows = (interleave(quantize_q8_0(self._draft_rows[0])), self._draft_rows[1])
        self.fused = FusedDrafter(self._fused_weights()) if self._fusable() else None

    def _fusable(self) -> bool:
        """Whether FusedDrafter runs this drafter: every backbone matmul and the draft vocabulary's LM head rows
        quantized (``quantize``), and a Markov head, if any, that FusedDrafter walks (vanilla)."""
        linears = [m for m in self.modules() if isinstance(m, ReplicatedLinear)]
        if self.markov_head is not None:
            linears = [m for m in linears if m is not self.markov_head.markov_w2]
        return (
            all(m.qweight is not None for m in linears)
            and self._draft_rows is not None
            and isinstance(self._draft_rows[0], QuantizedWeight)
            and (self.markov_head is None or self.markov_head.kind == "vanilla")
        )

    def _fused_weights(self) -> FusedDrafterWeights:
        cfg = self.config
        layers = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            layers.append(
                FusedLayerWeights(
                    input_norm=layer.input_layernorm.weight,
                    post_norm=layer.post_attention_layernorm.weight,
                    qkv=concat_rows([attn.q_proj.qweight, attn.k_proj.qweight, attn.v_proj.qweight]),
                    qkv_bias=None,
                    o=attn.o_proj.qweight,
                    gate_up=concat_rows([mlp.gate_proj.qweight, mlp.up_proj.qweight]),
                    down=mlp.down_proj.qweight,
                    q_norm=attn.q_norm.weight,
                    k_norm=attn.k_norm.weight,
                    num_heads=cfg.num_attention_heads,
                    num_kv_heads=cfg.num_key_value_heads,
                    head_dim=cfg.head_dim,
                    eps=cfg.rms_norm_eps,
                    scale=cfg.head_dim**-0.5,
                    native_rotary=True,
                )
            )
        markov, conf = self.markov_head, self.confidence_head
        return FusedDrafterWeights(
            fc=self.fc.qweight,
            hidden_norm=self.hidden_norm.weight,
            layers=layers,
            context_kv=[concat_rows([la.self_attn.k_proj.qweight, la.self_attn.v_proj.qweight]) for la in self.layers],
            norm=self.norm.weight,
            rope_cos=self.rope_cos.to(self.dtype),
            rope_sin=self.rope_sin.to(self.dtype),
            lm_head=self._draft_rows[0],
            vocab=self.draft_vocab,
            markov_w1=None if markov is None else markov.markov_w1.weight.detach(),
            markov_w2=None if markov is None else self._draft_rows[1],
            conf_weight=None if conf is None else conf.proj.weight.detach()[0].contiguous(),
            conf_bias=None if conf is None else conf.proj.bias.detach(),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden_norm.weight.dtype

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed_weight).to(self.dtype)

    def _lm_logits(self, hidden: torch.Tensor, weight: torch.Tensor | QuantizedWeight | None = None) -> torch.Tensor:
        """hidden [..., d] -> logits [..., V] float32 (or [..., K] with the rows `weight` [K, d] of the LM head)."""
        weight = self.lm_head_weight if weight is None else weight
        flat = hidden.reshape(-1, hidden.shape[-1])
        if isinstance(weight, QuantizedWeight):
            return quant_linear(flat, weight, None, float_out=True).view(*hidden.shape[:-1], -1)
        return self.linear_fn(flat.to(weight.dtype), weight, None).view(*hidden.shape[:-1], -1).float()

    def _confidence(self, hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor | None:
        """hidden [..., d], prev_ids [...] -> logits [...] | None."""
        if self.confidence_head is None:
            return None
        if self.config.confidence_head_with_markov:
            hidden = torch.cat([hidden, self.markov_head.prev_embedding(prev_ids).to(hidden.dtype)], dim=-1)
        return self.confidence_head(hidden)

    def _block_input(self, anchor_tokens: torch.Tensor) -> torch.Tensor:
        """anchor_tokens [R] -> block embeddings [R, G, d]: the anchor, then G - 1 mask tokens."""
        block = anchor_tokens.new_full((anchor_tokens.shape[0], self.config.block_size), self.config.mask_token_id)
        block[:, 0] = anchor_tokens
        return self._embed(block)

    def teacher_forced(
        self, feats: torch.Tensor, ids: torch.Tensor, anchors: torch.Tensor, vocab: torch.Tensor | None = None
    ) -> TeacherForced:
        """feats [S, m*d] target features of the whole sequence, ids [S], anchors [A] (positions < S - 1),
        vocab [K] ids the logits cover (None: all V)."""
        seq_len, g = ids.shape[0], self.config.block_size
        a, dev = anchors.shape[0], ids.device
        offsets = torch.arange(g, device=dev)
        positions = anchors[:, None] + offsets  # [A, G]
        ctx_kv = self.context_kv(feats[None], torch.arange(seq_len, device=dev)[None])
        # query (j, t) sees context positions < anchor_j and every slot of its own block j
        block_id = torch.arange(a, device=dev).repeat_interleave(g)  # [A*G]
        ctx_mask = torch.arange(seq_len, device=dev)[None, :] < anchors[block_id][:, None]  # [A*G, S]
        mask = torch.cat([ctx_mask, block_id[:, None] == block_id[None, :]], dim=1)[None, None]
        hidden = self(self._block_input(ids[anchors])[None].flatten(1, 2), positions.view(1, -1), ctx_kv, mask)
        hidden = hidden.view(a, g, -1)
        label_pos = positions + 1
        valid = label_pos < seq_len
        labels = ids[label_pos.clamp(max=seq_len - 1)]
        prev = torch.cat([ids[anchors][:, None], labels[:, :-1]], dim=1)  # [A, G]
        logits = self._lm_logits(hidden, None if vocab is None else self.lm_head_weight[vocab])
        if self.markov_head is not None:
            logits = self.markov_head.block_logits(logits, hidden, prev, vocab)
        return TeacherForced(logits, self._confidence(hidden, prev), labels, valid)

    @torch.no_grad()
    def append_context(
        self, states: list[DrafterState], feats: list[torch.Tensor], positions: list[torch.Tensor]
    ) -> None:
        """Add context positions to each request: feats[i] [n_i, m*d] target features, positions[i] [n_i]."""
        counts = [f.shape[0] for f in feats]
        feats, positions = torch.cat(feats), torch.cat(positions)
        kv = self.context_kv(feats, positions) if self.fused is None else self.fused.context(feats, positions)
        for i, state in enumerate(states):
            lo = sum(counts[:i])
            state.append([(k[lo : lo + counts[i]], v[lo : lo + counts[i]]) for k, v in kv])

    def _padded_context(self, states: list[DrafterState]) -> tuple[LayerKV, torch.Tensor | None]:
        """-> per layer (k, v) [R, S, Hkv, D] padded with zeros, valid [R, S] bool (None: all valid).

        A single request's context is its buffers' valid rows as they are (no copy, no mask)."""
        if len(states) == 1:
            st = states[0]
            kv = [(k[None, : st.length], v[None, : st.length]) for k, v in zip(st.keys, st.values, strict=True)]
            return kv, None
        s = max(st.length for st in states)
        dev = states[0].keys[0].device
        valid = torch.arange(s, device=dev)[None, :] < torch.tensor([st.length for st in states], device=dev)[:, None]
        kv = []
        for layer in range(len(self.layers)):
            pair = []
            for bufs in ("keys", "values"):
                first = getattr(states[0], bufs)[layer]
                out = first.new_zeros((len(states), s, *first.shape[1:]))
                for r, st in enumerate(states):
                    out[r, : st.length] = getattr(st, bufs)[layer][: st.length]
                pair.append(out)
            kv.append((pair[0], pair[1]))
        return kv, valid

    def _block(
        self, states: list[DrafterState], embeds: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone over each request's block, then the LM head: embeds [R, G, d], positions [R, G] ->
        (hidden [R, G, d], base logits [R, G, K] fp32; K = V without a draft vocabulary)."""
        r, g = positions.shape
        if self.fused is not None:
            for st in states:
                st.reserve(st.length + g)
            keys, values = [st.keys for st in states], [st.values for st in states]
            lengths = [st.length for st in states]
            hidden, base = self.fused.block(embeds.flatten(0, 1), positions.flatten(), keys, values, lengths)
            return hidden.view(r, g, -1), base.view(r, g, -1)
        ctx_kv, ctx_valid = self._padded_context(states)
        mask = None  # every query sees its request's whole context and block
        if ctx_valid is not None:
            mask = torch.cat([ctx_valid[:, None, :].expand(r, g, -1), ctx_valid.new_ones(r, g, g)], dim=2)[:, None]
        hidden = self(embeds, positions, ctx_kv, mask)
        return hidden, self._lm_logits(hidden, None if self._draft_rows is None else self._draft_rows[0])

    @torch.no_grad()
    def draft(
        self,
        states: list[DrafterState],
        anchor_tokens: torch.Tensor,
        anchor_positions: torch.Tensor,
        temperatures: torch.Tensor | None = None,
        mask_fn: MaskFn | None = None,
        generator: torch.Generator | None = None,
    ) -> DraftOutput:
        """Draft G tokens for R requests. anchor_tokens/positions [R]; temperatures [R] (0 = greedy, default
        all greedy); mask_fn gives the allowed tokens of each step (disallowed ones get -inf before softmax).

        With a draft vocabulary (`restrict_vocab`) the logits cover its K tokens only. A step whose mask
        allows none of them drafts the first allowed token (the one a single-token mask forces) with
        confidence 0, unless it is forced: the caller knows (DraftGrammarWalk.forced)."""
        r, g = anchor_tokens.shape[0], self.config.block_size
        if any(st.length == 0 for st in states):
            raise ValueError("draft() needs at least one context position per request (call append_context)")
        dev = anchor_tokens.device
        positions = anchor_positions[:, None] + torch.arange(g, device=dev)  # [R, G]
        hidden, base = self._block(states, self._block_input(anchor_tokens), positions)  # [R, G, d], [R, G, K]
        vocab = self.draft_vocab  # [K] or None
        w2_rows = None if self._draft_rows is None else self._draft_rows[1]
        temps = torch.zeros(r, device=dev) if temperatures is None else temperatures.float()
        greedy = temps <= 0
        all_greedy = bool(greedy.all())  # an all-greedy batch draws no random numbers and keeps no distributions
        if self.fused is not None and all_greedy and mask_fn is None:
            tokens, conf = self.fused.greedy_walk(hidden, base, anchor_tokens)
            return DraftOutput(tokens, None, conf)
        no_outside = torch.zeros(r, dtype=torch.bool, device=dev)
        tokens, probs, outsides = [], [], []
        prev, markov_state = anchor_tokens, None
        for k in range(g):
            logits = base[:, k]  # [R, K]
            if self.markov_head is not None:
                e, markov_state = self.markov_head.transition(hidden[:, k], prev, markov_state)
                w2 = self.markov_head.markov_w2.weight if w2_rows is None else w2_rows
                logits = logits + self.linear_fn(e.to(w2.dtype), w2, None).float()
            outside = no_outside  # [R] rows whose mask allows no draftable token
            if mask_fn is not None:
                allowed = mask_fn(k, torch.stack(tokens, dim=1) if tokens else anchor_tokens.new_empty(r, 0))
                if allowed is not None:  # [R, V], the grammar's mask from the host
                    allowed = allowed.to(dev)
                    draftable = allowed if vocab is None else allowed[:, vocab]  # [R, K]
                    outside = ~draftable.any(dim=1)
                    logits = logits.masked_fill(~draftable & ~outside[:, None], float("-inf"))
            local = logits.argmax(dim=-1)  # [R] index into the draft vocabulary
            if not all_greedy:
                p_local = torch.softmax(logits / torch.where(greedy, 1.0, temps)[:, None], dim=-1)  # [R, K]
                sampled = torch.multinomial(p_local, 1, generator=generator).squeeze(1)
                local = torch.where(greedy, local, sampled)
            tok = local if vocab is None else vocab[local]  # [R] token ids
            if outside is not no_outside and outside.any():
                first_allowed = allowed.to(torch.uint8).argmax(dim=1)  # [R]
                tok = torch.where(outside, first_allowed, tok)
            if not all_greedy:  # the distributions sampled rows drew from, over the whole vocabulary
                p_full = p_local if vocab is None else p_local.new_zeros(r, self.config.vocab_size)
                if vocab is not None:
                    p_full[:, vocab] = p_local
                one_hot = F.one_hot(tok, self.config.vocab_size).float()  # [R, V]
                probs.append(torch.where((greedy | outside)[:, None], one_hot, p_full))
            outsides.append(outside)
            tokens.append(tok)
            prev = tok
        drafted = torch.stack(tokens, dim=1)  # [R, G]
        conf = self._confidence(hidden, torch.cat([anchor_tokens[:, None], drafted[:, :-1]], dim=1))  # [R, G]
        if conf is not None:
            conf = conf.masked_fill(torch.stack(outsides, dim=1), float("-inf"))
        return DraftOutput(drafted, torch.stack(probs, dim=1) if probs else None, conf)
