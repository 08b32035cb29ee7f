"""CudaGraphRunner: decode forwards replayed from CUDA graphs, one per batch-size bucket (SGLang's name).

A decode step of a small model on a GPU is a few hundred tiny kernel launches, and launching them from Python
takes longer than running them. A graph captured once replays them all in one call. Graphs read their inputs
from static buffers: a decode batch of B requests is copied into the first B rows of the smallest bucket
>= B, the other rows are padding (token 0 at position 0, writing and reading only the KV pool's padding slot
0), and the first B rows of the outputs are the batch's.

Only forwards a pool-attention kernel serves whole (``--attention-backend triton``) are captured: the
attention metadata is then three tensors (slot rows, key counts, query rows) that the static buffers hold
at their largest size. A graph is captured the first time its (bucket, captured layers, decoder layers) is
needed. ``use_graphs=False`` runs the same static-buffer forwards eagerly: how the CPU tests check the
padding and copying.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.kernels.cpu_ops import PoolAttentionFn
from sglang_dspark.layers.attention import AttentionMetadata, PoolShortGroup
from sglang_dspark.mem_cache.memory_pool import KVPool
from sglang_dspark.model_executor.forward_batch import ForwardBatch

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)


@dataclass
class StaticSlots:
    """One attention group's static metadata: request b's query sees the first kv_lens[b] slots of row b."""

    kv_slots: torch.Tensor  # [max_bs, max_context] int64
    kv_lens: torch.Tensor  # [max_bs] int64

    def fill(self, group: PoolShortGroup, b: int) -> None:
        """Rows [0, b) from a decode group's metadata, the rest padding."""
        self.kv_slots[:b, : group.kv_slots.shape[1]].copy_(group.kv_slots)
        self.kv_lens[:b].copy_(group.kv_lens)
        self.pad(b)

    def pad(self, b: int) -> None:
        """Rows from b on: one key, the padding slot."""
        self.kv_slots[b:, 0] = 0
        self.kv_lens[b:] = 1


class CudaGraphRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        kv_pool: KVPool,
        attend: PoolAttentionFn,
        max_bs: int,
        max_context: int,
        sliding_window: int | None,
        device: str,
        use_graphs: bool = True,
    ) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.attend = attend
        self.buckets = [b for b in BUCKETS if b < max_bs] + [max_bs]
        self.max_bs = max_bs
        self.use_graphs = use_graphs
        i64 = {"dtype": torch.int64, "device": device}
        self.input_ids = torch.zeros(max_bs, **i64)
        self.positions = torch.zeros(max_bs, **i64)
        self.out_cache_loc = torch.zeros(max_bs, **i64)
        self.rows = torch.arange(max_bs, **i64)  # query b reads slot row b; also the logits rows
        self.full = StaticSlots(torch.zeros(max_bs, max_context, **i64), torch.ones(max_bs, **i64))
        self.windowed = None
        if sliding_window is not None:
            self.windowed = StaticSlots(torch.zeros(max_bs, max_context, **i64), torch.ones(max_bs, **i64))
        self.sliding_window = sliding_window
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph | None, object]] = {}  # key -> (graph, outputs)
        self.graph_pool = None  # the memory pool every graph shares

    def can_run(self, fb: ForwardBatch) -> bool:
        """Whether ``fb`` is a decode batch a pool kernel attends whole, within the largest bucket."""
        if fb.batch_size > self.max_bs or any(e != 1 for e in fb.extend_lens):
            return False
        metas = [fb.attn_metadata] + ([fb.attn_metadata.windowed] if self.windowed is not None else [])
        return all(
            isinstance(m, AttentionMetadata) and isinstance(m.short, PoolShortGroup) and m.short.q_index is None
            for m in metas
        )

    def replay(self, fb: ForwardBatch):
        """The model's output for ``fb`` (which ``can_run``), from the graph of its bucket."""
        b = fb.batch_size
        bs = next(size for size in self.buckets if size >= b)
        self._fill(fb, b)
        key = (bs, fb.capture_layers, fb.num_layers)
        if key not in self.graphs:
            self.graphs[key] = self._capture(bs, fb.capture_layers, fb.num_layers)
            self._fill(fb, b)  # capturing ran on padding
        graph, out = self.graphs[key]
        if graph is None:  # eager: run the static batch now
            out = self.model(self._static_batch(bs, fb.capture_layers, fb.num_layers))
        else:
            graph.replay()
        # copies: the next replay overwrites the static outputs
        return type(out)(out.logits[fb.logits_indices].clone(), [h[:b].clone() for h in out.hidden_states])

    def _fill(self, fb: ForwardBatch, b: int) -> None:
        for static, value in ((self.input_ids, fb.input_ids), (self.positions, fb.positions)):
            static[:b].copy_(value)
            static[b:] = 0
        self.out_cache_loc[:b].copy_(fb.out_cache_loc)
        self.out_cache_loc[b:] = 0  # padding rows write the padding slot
        self.full.fill(fb.attn_metadata.short, b)
        if self.windowed is not None:
            self.windowed.fill(fb.attn_metadata.windowed.short, b)

    def _static_batch(self, bs: int, capture_layers: tuple[int, ...], num_layers: int | None) -> ForwardBatch:
        """A ForwardBatch over the first bs rows of the static buffers."""
        fb = ForwardBatch(
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            out_cache_loc=self.out_cache_loc[:bs],
            req_pool_indices=self.rows[:bs],
            seq_lens=[1] * bs,  # unused: the metadata below is what attention reads
            extend_lens=[1] * bs,
            logits_indices=self.rows[:bs],
            kv_pool=self.kv_pool,
            req_to_token=self.full.kv_slots,
            capture_layers=capture_layers,
            num_layers=num_layers,
        )
        fb.attn_metadata = AttentionMetadata(self._group(self.full, bs), [])
        if self.windowed is not None:
            window = self.sliding_window
            fb.attn_metadata.windowed = AttentionMetadata(self._group(self.windowed, bs), [], window)
        return fb

    def _group(self, static: StaticSlots, bs: int) -> PoolShortGroup:
        return PoolShortGroup(None, self.rows[:bs], static.kv_lens[:bs], static.kv_slots[:bs], self.attend)

    def _capture(self, bs: int, capture_layers: tuple[int, ...], num_layers: int | None):
        """(graph, its static outputs), or (None, None) when not using graphs."""
        if not self.use_graphs:
            return None, None
        self._fill_padding()
        fb = self._static_batch(bs, capture_layers, num_layers)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: Triton compiles, the allocator settles
            for _ in range(2):
                self.model(fb)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.graph_pool):
            out = self.model(fb)
        self.graph_pool = graph.pool()
        return graph, out

    def _fill_padding(self) -> None:
        """Every row padding, so that capturing writes and reads only the padding slot."""
        for t in (self.input_ids, self.positions, self.out_cache_loc):
            t.zero_()
        for static in (self.full, self.windowed):
            if static is not None:
                static.pad(0)
