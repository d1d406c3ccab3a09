"""Decode steps replayed from captured CUDA graphs (what SGLang's CudaGraphRunner does, for this engine).

On a GPU, batch-1 decode is bound by host work: building the step's index tensors and launching about
ten kernels per layer. The runner captures one decode forward per batch size of a ladder, over static
buffers. A step copies three numbers per request into them (last token, position, table row), replays
the smallest graph that fits, with the unused places pointing at the table's padding row (slot 0), and
returns the real rows' logits. Each request's context slots are gathered from the request-to-token
table on the device (kernel/kv_indices.py), so nothing per request makes a host round trip.

On the CPU there are no CUDA graphs: `capture=False` runs the same function eagerly over the same
static buffers. The tests use it to check padding and index building against the plain decode path.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from sglbench.runtime.attention import AttentionBackend
from sglbench.runtime.forward_batch import ForwardBatch, ForwardMode
from sglbench.runtime.kv_pool import ReqToTokenTable
from sglbench.runtime.request import Request

CAPTURABLE_BACKENDS = ("triton",)  # the torch backend plans decode on the host (kernel/cpu_attention.py)


def capture_sizes(max_bs: int, sizes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The batch sizes to capture, ascending: the given ones up to max_bs, or SGLang's ladder
    1, 2, 4, 8, 12, then every 8 (max_bs itself always included, so every batch up to it fits)."""
    if max_bs < 1:
        raise ValueError(f"cuda_graph_max_bs must be >= 1, got {max_bs}")
    if sizes is not None:
        chosen = sorted({int(s) for s in sizes if 1 <= int(s) <= max_bs})
        if not chosen:
            raise ValueError(f"cuda_graph_bs {list(sizes)} has no batch size in 1..{max_bs}")
        return tuple(chosen)
    ladder = [1, 2, 4, 8, 12, *range(16, max_bs + 1, 8)]
    return tuple(sorted({s for s in ladder if s <= max_bs} | {max_bs}))


class DecodeGraphRunner:
    """Decode forwards over static buffers for every size in `sizes`, captured as CUDA graphs when
    `capture`; batches larger than the largest size are not this runner's (see `fits`)."""

    def __init__(self, model: torch.nn.Module, attention: AttentionBackend, table: ReqToTokenTable,
                 sizes: Sequence[int], capture: bool):
        if attention.name not in CAPTURABLE_BACKENDS:
            raise ValueError(f"decode graphs need an attention backend in {CAPTURABLE_BACKENDS}, not {attention.name!r}")
        if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(f"sizes must be distinct positive batch sizes in ascending order, got {list(sizes)}")
        self.model, self.attention, self.table = model, attention, table
        self.sizes = tuple(sizes)
        self.captured = capture
        dev, max_bs = table.table.device, self.sizes[-1]
        self.inputs = torch.zeros((3, max_bs), dtype=torch.int64, device=dev)  # last token, position, table row
        self.kv_indptr = torch.zeros(max_bs + 1, dtype=torch.int64, device=dev)
        self.kv_indices = torch.zeros(max_bs * table.table.shape[1], dtype=torch.int64, device=dev)
        self.arange = torch.arange(max_bs + 1, dtype=torch.int64, device=dev)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        if capture:
            self._capture_all()

    def fits(self, batch_size: int) -> bool:
        return 1 <= batch_size <= self.sizes[-1]

    def padded_size(self, batch_size: int) -> int:
        """The captured size a batch of batch_size requests runs at."""
        if not self.fits(batch_size):
            raise ValueError(f"batch of {batch_size} is outside the captured sizes 1..{self.sizes[-1]}")
        return self.sizes[bisect.bisect_left(self.sizes, batch_size)]

    def run(self, reqs: list[Request]) -> torch.Tensor:
        """The decode step of reqs (their new slots already in the table): logits [len(reqs), vocab], fp32."""
        n = len(reqs)
        bs = self.padded_size(n)
        pad = bs - n
        host = torch.tensor([
            [r.output_ids[-1] for r in reqs] + [0] * pad,
            [r.kv_len for r in reqs] + [0] * pad,
            [r.row for r in reqs] + [self.table.padding_row] * pad,
        ], dtype=torch.int64)  # [3, bs]
        self.inputs[:, :bs].copy_(host, non_blocking=True)
        if not self.captured:
            return self._forward(bs)[:n]
        self._graphs[bs].replay()
        return self._outputs[bs][:n].clone()  # the next replay overwrites the static output

    def _forward(self, bs: int) -> torch.Tensor:
        """One decode forward of the first bs places, everything derived on the device from `inputs`."""
        ids, positions, rows = self.inputs[0, :bs], self.inputs[1, :bs], self.inputs[2, :bs]
        table = self.table.table
        kv_indptr = self.kv_indptr[: bs + 1]
        torch.cumsum(positions + 1, 0, out=kv_indptr[1:])
        from sglbench.kernel.kv_indices import build_kv_indices  # Triton: imported where it is used

        build_kv_indices(table, rows, kv_indptr, self.kv_indices)
        batch = ForwardBatch(
            mode=ForwardMode.DECODE, input_ids=ids, positions=positions, out_cache_loc=table[rows, positions],
            qo_indptr=self.arange[: bs + 1], kv_indptr=kv_indptr, kv_indices=self.kv_indices,
            logits_rows=self.arange[:bs], max_q_len=1,
        )
        return self.model(batch, self.attention)

    def _capture_all(self) -> None:
        """Capture the largest size first, all graphs sharing one memory pool (as torch recommends)."""
        stream = torch.cuda.Stream()
        pool = None
        for bs in reversed(self.sizes):
            self.inputs[:, :bs] = torch.tensor([[0], [0], [self.table.padding_row]], device=self.inputs.device)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up off the capture: Triton compiles, the allocator settles
                for _ in range(2):
                    self._forward(bs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA work another thread of the process does meanwhile (a notebook's own) does not
            # invalidate the capture; only this thread's unsafe calls would.
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                self._outputs[bs] = self._forward(bs)
            pool = graph.pool()
            self._graphs[bs] = graph
        torch.cuda.synchronize()
