"""Lossless verification: which drafts the target accepts, given the logits of its verify forward.

Greedy requests accept while draft == argmax of the processed target logits; sampling requests use exact
rejection sampling against the processed distribution plain decoding would sample from (penalties see the
drafts before each position, as if they had been committed), with the distributions the drafts were drawn
from (one-hot for deterministic drafts). Grammar-forced drafts are accepted as given once the drafts before
them are, as plain decoding appends them without sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.kernels import spec_verify
from sglang_dspark.kernels.spec_verify import draw_verify_noise
from sglang_dspark.layers.sampler import SamplingBatchInfo, greedy_ids, probs_from_logits, process_logits
from sglang_dspark.speculative.draft import Draft, SpecRequest


@dataclass
class Verdict:
    accepted: list[int]  # [B] drafts accepted per request
    next_tokens: list[int]  # [B] the bonus (all accepted) or corrected token after them

    def committed(self, drafts: list[list[int]]) -> list[list[int]]:
        """The tokens each request commits: its accepted drafts plus the next token."""
        return [d[:a] + [n] for d, a, n in zip(drafts, self.accepted, self.next_tokens)]


def verify_drafts(
    reqs: list[SpecRequest],
    drafts: list[list[int]],
    logits: torch.Tensor,
    forced: list[list[int]],
    proposals: list[Draft | None],
    vocab_size: int,
) -> Verdict:
    """logits [sum(len(d) + 1), V]: rows of each request's anchor + drafts, in order. forced[i]: indices of
    request i's drafts that its grammar forces. proposals[i]: the proposal drafts[i] was cut from (its
    ``probs`` are the draft distributions of sampled drafts), None for none."""
    if all(_raw_greedy(r) for r in reqs):
        return _greedy_verdict(drafts, forced, greedy_ids(logits).tolist())
    rows_params, rows_prompt, rows_output = [], [], []
    for req, d in zip(reqs, drafts):
        for k in range(len(d) + 1):
            rows_params.append(req.sampling_params)
            rows_prompt.append(req.origin_input_ids)
            rows_output.append(req.output_ids + d[:k])
    dev = logits.device
    info = SamplingBatchInfo.from_params(rows_params, vocab_size, dev)
    processed = process_logits(logits, info, rows_prompt, rows_output)  # [T, V]
    _force_rows_(processed, drafts, forced)

    B, K = len(reqs), max(len(d) for d in drafts)
    draft_tokens = torch.zeros(B, K, dtype=torch.int64)  # [B, K], padded with 0
    row_index = torch.zeros(B, K + 1, dtype=torch.int64)  # [B, K + 1] -> row of processed
    start = 0
    for b, d in enumerate(drafts):
        draft_tokens[b, : len(d)] = torch.tensor(d, dtype=torch.int64)
        row_index[b] = start + torch.arange(K + 1).clamp(max=len(d))
        start += len(d) + 1
    draft_tokens, row_index = draft_tokens.to(dev), row_index.to(dev)
    draft_lens = torch.tensor([len(d) for d in drafts], dtype=torch.int64, device=dev)  # [B]

    greedy_rows = [b for b, r in enumerate(reqs) if r.sampling_params.is_greedy]
    sampled_rows = [b for b, r in enumerate(reqs) if not r.sampling_params.is_greedy]
    greedy_accept, rejection = verify_kernels(dev)
    accept = torch.zeros(B, dtype=torch.int64, device=dev)
    nxt = torch.zeros(B, dtype=torch.int64, device=dev)
    if greedy_rows:
        g = torch.tensor(greedy_rows, device=dev)
        argmax = greedy_ids(processed)[row_index[g]]  # [Bg, K + 1]
        accept[g], nxt[g] = greedy_accept(draft_tokens[g], draft_lens[g], argmax)
    if sampled_rows:
        s = torch.tensor(sampled_rows, device=dev)
        probs = probs_from_logits(processed, info)[row_index[s]]  # [Bs, K + 1, V]
        gens = [reqs[i].generator for i in sampled_rows]
        uniforms, expo = draw_verify_noise(draft_lens[s], K, vocab_size, gens)
        q = _draft_probs([proposals[i] for i in sampled_rows], draft_tokens[s], draft_lens[s], vocab_size)
        accept[s], nxt[s] = rejection(draft_tokens[s], draft_lens[s], q, probs, uniforms, expo)
    return Verdict(accept.tolist(), nxt.tolist())


def _raw_greedy(req: SpecRequest) -> bool:
    """A greedy request without penalties or logit bias: its processed logits are its raw logits."""
    p = req.sampling_params
    neutral = p.frequency_penalty == p.presence_penalty == 0 and p.repetition_penalty == 1
    return p.is_greedy and neutral and not p.logit_bias


def _greedy_verdict(drafts: list[list[int]], forced: list[list[int]], argmax: list[int]) -> Verdict:
    """Greedy acceptance on the host from each verify row's argmax [sum(len(d) + 1)] (what the greedy kernel
    computes, without building its padded tensors): drafts are accepted while they equal the argmax of the row
    before them, a forced one as given; the next token is the argmax at the first mismatch (or the bonus row)."""
    accepted, next_tokens, start = [], [], 0
    for d, f in zip(drafts, forced, strict=True):
        a = 0
        while a < len(d) and (a in f or d[a] == argmax[start + a]):
            a += 1
        accepted.append(a)
        next_tokens.append(argmax[start + a])
        start += len(d) + 1
    return Verdict(accepted, next_tokens)


def verify_kernels(device: torch.device):
    """(greedy_accept_lengths, rejection_sample): the Triton kernels on a GPU, the torch references on the CPU
    (kernels/spec_verify.py; same contracts, same results given the same noise)."""
    if device.type == "cuda":
        from sglang_dspark.kernels import spec_verify_triton

        return spec_verify_triton.greedy_accept_lengths_triton, spec_verify_triton.rejection_sample_triton
    return spec_verify.greedy_accept_lengths, spec_verify.rejection_sample


def _draft_probs(
    proposals: list[Draft | None], tokens: torch.Tensor, lens: torch.Tensor, vocab_size: int
) -> torch.Tensor | None:
    """tokens [B, K], lens [B] -> draft distributions [B, K, V] (one-hot for deterministic drafts), or None
    when every draft is deterministic. Drafts cut after proposal keep the probabilities of their prefix."""
    if all(p is None or p.probs is None for p in proposals):
        return None
    q = torch.nn.functional.one_hot(tokens, vocab_size).float()  # [B, K, V]
    for b, p in enumerate(proposals):
        if p is not None and p.probs is not None:
            n = int(lens[b])
            q[b, :n] = p.probs[:n]
    return q


def _force_rows_(processed: torch.Tensor, drafts: list[list[int]], forced: list[list[int]]) -> None:
    """In place: processed [sum(len(d) + 1), V] logits; the row that verifies a forced draft becomes a point
    mass on it (-inf elsewhere), so greedy and rejection sampling accept it as plain decoding appends it."""
    rows, tokens, start = [], [], 0
    for d, f in zip(drafts, forced, strict=True):
        rows += [start + i for i in f]
        tokens += [d[i] for i in f]
        start += len(d) + 1
    if rows:
        with torch.inference_mode():  # processed is an inference tensor
            processed[rows] = -torch.inf
            processed[rows, tokens] = 0.0
