"""FlashInfer's paged prefill kernel over the token-level KV pool (page size 1): the GPU's default attention.

One ``BatchPrefillWithPagedKVCacheWrapper`` serves every query of a forward, decode, verify chains and prefill
chunks alike: request b's queries are rows ``qo_indptr[b]:qo_indptr[b + 1]`` and its pages (= KV slots) are
``kv_indices[kv_indptr[b]:kv_indptr[b + 1]]``, its slots in req_to_token order. FlashInfer's causal mask is
aligned to the end of the keys, so query j of an extend of e tokens over s keys sees keys 0 .. s - e + j, our
contract; a sliding window is its ``window_left`` (the keys before the query's own that it sees). The wrapper
is planned once per forward and layer kind and run by every layer of that kind.

Untested on a GPU so far: ``launch/gpu_check.sh`` checks it against ``torch_native`` on real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.model_executor.forward_batch import ForwardBatch

WORKSPACE_BYTES = 128 * 2**20  # FlashInfer's scratch space for split-KV partial results


@dataclass
class FlashInferGroup:
    """Every query of one forward, planned for one layer kind (full or sliding-window attention)."""

    wrapper: object  # a planned flashinfer.BatchPrefillWithPagedKVCacheWrapper

    def attend(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor) -> torch.Tensor:
        """q [N, Hq, D], k_buf/v_buf [T, Hkv, D] -> [N, Hq, D]; a slot is a page of one token (NHD layout)."""
        return self.wrapper.run(q.contiguous(), (k_buf[:, None], v_buf[:, None]))


class FlashInferPlanner:
    """The wrappers of one model (one per layer kind) and how a ForwardBatch plans them."""

    def __init__(
        self,
        device: str,
        dtype: torch.dtype,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        sliding_window: int | None,
    ) -> None:
        import flashinfer  # an optional dependency: the backend is chosen only where it imports

        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.wrappers = {None: flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")}
        if sliding_window is not None:
            self.wrappers[sliding_window] = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        self.shape = (num_heads, num_kv_heads, head_dim)
        self.dtype = dtype
        self.scale = scale

    def plan(self, fb: ForwardBatch) -> dict[int | None, FlashInferGroup]:
        """Plans every layer kind's wrapper for this batch: window (None = full attention) -> its group."""
        # offsets and page lengths on the host (FlashInfer plans from host copies: no device read), the page
        # indices on the device; the same for every layer kind
        qo_indptr = _indptr(fb.extend_lens)  # [B + 1] int32
        kv_indptr = _indptr(fb.seq_lens)  # [B + 1] int32
        table, rows = fb.req_to_token, fb.req_pool_indices
        kv_indices = torch.cat([table[rows[b], :s] for b, s in enumerate(fb.seq_lens)]).to(torch.int32)  # [sum]
        last_page_len = torch.ones(len(fb.seq_lens), dtype=torch.int32)  # [B] every page holds one token
        num_heads, num_kv_heads, head_dim = self.shape
        groups = {}
        for window, wrapper in self.wrappers.items():
            wrapper.plan(
                qo_indptr,
                kv_indptr,
                kv_indices,
                last_page_len,
                num_heads,
                num_kv_heads,
                head_dim,
                1,  # page size
                causal=True,
                sm_scale=self.scale,
                window_left=-1 if window is None else window - 1,
                q_data_type=self.dtype,
                kv_data_type=self.dtype,
            )
            groups[window] = FlashInferGroup(wrapper)
        return groups


def _indptr(lengths: list[int]) -> torch.Tensor:
    """lengths [B] -> [B + 1] int32 offsets (0, l0, l0 + l1, ...), on the host."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)
