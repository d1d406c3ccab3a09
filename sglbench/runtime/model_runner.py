"""The model runner: loads the model, builds `ForwardBatch`es from scheduled requests, runs them.

Prepare -> run: `prepare_extend` / `prepare_decode` turn requests and their table rows into flat
tensors (and say which logits rows belong to whom); `run` is one forward over the attention backend.
Nothing here changes a request: the engine commits a step's results after the forward succeeded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from sglbench.kernel import cpu_features, cpu_native
from sglbench.kernel.cpu_linear import Linear
from sglbench.runtime import cpu_memory
from sglbench.runtime.attention import make_attention_backend
from sglbench.runtime.forward_batch import ForwardBatch, ForwardMode
from sglbench.runtime.graph_runner import DecodeGraphRunner
from sglbench.runtime.kv_pool import KVPool, ReqToTokenTable
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.models.loader import load_model
from sglbench.runtime.request import Request


@dataclass(frozen=True)
class ExtendLayout:
    """Where each planned request's logits sit in an extend batch's output.

    plan: (request, new tokens) in batch order: the extend requests, then `riders`, decoding requests
    that ride along with one token each; sample_rows: plan index -> logits row to sample the next token
    from; prompt_rows: plan index -> [(logits row, prompt position it scores)]."""

    plan: tuple[tuple[Request, int], ...]
    sample_rows: dict[int, int]
    prompt_rows: dict[int, list[tuple[int, int]]]
    num_tokens: int
    riders: int = 0

    @property
    def num_extend(self) -> int:
        """Plan entries that are extend requests (the riders follow them)."""
        return len(self.plan) - self.riders


class ModelRunner:
    """Owns the model and its attention backend over the KV pool; dtype comes resolved (it sizes the pool)."""

    def __init__(self, model_path: str, model_config: ModelConfig, device: str, dtype: torch.dtype, pool: KVPool,
                 attention_backend: str = "auto", huge_pages: bool = True):
        self.device = device
        self.dtype = dtype
        self.model = load_model(model_path, device, dtype, model_config)
        self.cpu_memory = self._place_weights(huge_pages, pool) if device == "cpu" else ""
        self.packed_linears = sum(1 for m in self.model.modules() if isinstance(m, Linear) and m.packed)
        self.cpu_features = cpu_features.detect().describe() if device == "cpu" else ""
        self.cpu_kernels = self._describe_cpu_kernels() if device == "cpu" else ""
        if attention_backend == "auto":
            attention_backend = "triton" if device.startswith("cuda") else "torch"
        self.attention = make_attention_backend(attention_backend, pool, model_config.head_dim**-0.5)
        self.graphs: DecodeGraphRunner | None = None  # decode steps replayed from CUDA graphs (`use_graphs`)

    def _place_weights(self, huge_pages: bool, pool: KVPool) -> str:
        """Move the dense weights onto transparent huge pages where asked and the kernel has them
        (cpu_memory.move_to_huge_pages); says what sits there (the KV pool too, which puts itself there), or why
        nothing does."""
        if not huge_pages:
            return "off: huge_pages=False"
        mode = cpu_memory.transparent_huge_pages()
        if mode not in cpu_memory.THP_ON:
            return f"off: transparent huge pages are {mode or 'missing'} on this kernel"
        moved = cpu_memory.move_to_huge_pages(self.model.parameters())
        self.model.model.on_packed = cpu_memory.move_to_huge_pages  # the C decode's packed copies, when made
        kv = f" and the {pool.huge_page_bytes / 2**20:,.0f} MiB KV pool" if pool.huge_page_bytes else ""
        return (f"on: {moved / 2**20:,.0f} MiB of dense weights (and the C decode's packed copies){kv} on "
                f"transparent huge pages (THP {mode})")

    def _describe_cpu_kernels(self) -> str:
        """cpu_native.describe for this model: whether its Linears reach the C GEMV (fp32 weights stay dense; bf16
        ones only where the dense copy was kept beside the packed one) and which decode batches run each layer as
        one call."""
        gemv = self.dtype == torch.float32 or any(
            m.packed_weight is not None for m in self.model.modules() if isinstance(m, Linear))
        fused = self.model.model.fused_decode_weights()
        widest = None if not fused else fused[0].max_batch
        fused_for = ("" if not fused else f"every decode batch and extend steps of up to {cpu_native.FUSED_EXTEND_MAX_ROWS:,}"
                     " new tokens" if widest is None else f"decode batches up to {widest}")
        return cpu_native.describe(self.dtype, gemv, fused_for)

    def use_graphs(self, table: ReqToTokenTable, sizes: tuple[int, ...], capture: bool = True) -> None:
        """Run decode batches of up to sizes[-1] requests through a DecodeGraphRunner (captured now when
        `capture`); larger ones, and every extend batch, run eagerly as before."""
        self.graphs = DecodeGraphRunner(self.model, self.attention, table, sizes, capture)

    # ------------------------------------------------------------------ prepare
    def prepare_extend(self, plan: list[tuple[Request, int]], table: ReqToTokenTable) -> tuple[ForwardBatch, ExtendLayout]:
        """A prefill batch: each request's next n tokens over its cached and computed context."""
        if self.attention.wants_prefix_order:
            plan = sorted(plan, key=lambda entry: entry[0].fill_ids)
        ids, positions, out_loc, kv_indices = [], [], [], []
        qo, kv = [0], [0]
        logits_rows: list[int] = []
        sample_rows: dict[int, int] = {}
        prompt_rows: dict[int, list[tuple[int, int]]] = {}
        offset = 0
        for i, (req, n) in enumerate(plan):
            start, end = req.kv_len, req.kv_len + n
            ids.extend(req.fill_ids[start:end])
            positions.extend(range(start, end))
            out_loc.append(table.slots(req.row, start, end))
            kv_indices.append(table.slots(req.row, 0, end))
            qo.append(qo[-1] + n)
            kv.append(kv[-1] + end)
            if req.wants_prompt_logprobs:
                first = max(req.params.logprob_start_len - 1, start)
                rows = []
                for p in range(first, min(end, len(req.input_ids) - 1)):
                    rows.append((len(logits_rows), p + 1))
                    logits_rows.append(offset + p - start)
                prompt_rows[i] = rows
            if end == len(req.fill_ids):  # the request's last token: its next one is sampled here
                sample_rows[i] = len(logits_rows)
                logits_rows.append(offset + n - 1)
            offset += n
        batch = self._make_batch(ForwardMode.EXTEND, ids, positions, out_loc, qo, kv, kv_indices, logits_rows)
        return batch, ExtendLayout(tuple(plan), sample_rows, prompt_rows, offset)

    def prepare_mixed(self, plan: list[tuple[Request, int]], riders: list[Request],
                      table: ReqToTokenTable) -> tuple[ForwardBatch, ExtendLayout]:
        """An extend batch of plan's chunks with decoding requests riding along (one token each, last): one
        forward instead of a prefill step and a decode step. Either list may be empty. The batch is a plain
        extend batch whose `parts` let a backend run each part its own way."""
        if not riders:
            return self.prepare_extend(plan, table)
        tail = self.prepare_decode(riders, table)
        entries = tuple((r, 1) for r in riders)
        if not plan:
            layout = ExtendLayout(entries, {i: i for i in range(len(riders))}, {}, len(riders), len(riders))
            return tail, layout
        head, head_layout = self.prepare_extend(plan, table)
        split, rows = head.num_tokens, head.logits_rows.numel()
        batch = ForwardBatch(
            mode=ForwardMode.EXTEND,
            input_ids=torch.cat([head.input_ids, tail.input_ids]),
            positions=torch.cat([head.positions, tail.positions]),
            out_cache_loc=torch.cat([head.out_cache_loc, tail.out_cache_loc]),
            qo_indptr=torch.cat([head.qo_indptr, tail.qo_indptr[1:] + split]),
            kv_indptr=torch.cat([head.kv_indptr, tail.kv_indptr[1:] + head.kv_indptr[-1]]),
            kv_indices=torch.cat([head.kv_indices, tail.kv_indices]),
            logits_rows=torch.cat([head.logits_rows, tail.logits_rows + split]),
            max_q_len=head.max_q_len,
            parts=(head, tail),
        )
        sample_rows = {**head_layout.sample_rows,
                       **{len(head_layout.plan) + i: rows + i for i in range(len(riders))}}
        layout = ExtendLayout(head_layout.plan + entries, sample_rows, head_layout.prompt_rows,
                              head_layout.num_tokens + len(riders), len(riders))
        return batch, layout

    def prepare_decode(self, reqs: list[Request], table: ReqToTokenTable) -> ForwardBatch:
        """A decode batch: each request's last token over its whole context. The contexts' slots come from
        the table in one gather of the requests' rows ([batch, longest context], also handed to the
        backend as padded_kv_indices), not one slice and concatenation per request."""
        dev, batch = self.device, len(reqs)
        if table.array is not None and torch.device(dev).type == "cpu":
            return _decode_batch_cpu(reqs, table.array)
        lens = [r.kv_len + 1 for r in reqs]
        kv = list(itertools.accumulate(lens, initial=0))
        positions = torch.tensor([r.kv_len for r in reqs], dtype=torch.int64, device=dev)
        rows = torch.tensor([r.row for r in reqs], dtype=torch.int64, device=dev)
        padded = table.table[:, : max(lens)].index_select(0, rows)  # past a row's length: stale slots
        if min(lens) == max(lens):  # one request, or equal lengths: the block is the flat list
            kv_indices = padded.reshape(-1)
        else:
            valid = torch.arange(padded.shape[1], device=dev)[None, :] <= positions[:, None]
            kv_indices = torch.masked_select(padded, valid)  # 2-3x faster than boolean indexing
        return ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=torch.tensor([r.output_ids[-1] for r in reqs], dtype=torch.int64, device=dev),
            positions=positions,
            out_cache_loc=padded.gather(1, positions[:, None]).squeeze(1),
            qo_indptr=torch.arange(batch + 1, dtype=torch.int64, device=dev),
            kv_indptr=torch.tensor(kv, dtype=torch.int64, device=dev),
            kv_indices=kv_indices,
            logits_rows=torch.arange(batch, dtype=torch.int64, device=dev),
            max_q_len=1,
            padded_kv_indices=padded,
        )

    def _make_batch(self, mode, ids, positions, out_loc, qo, kv, kv_indices, logits_rows) -> ForwardBatch:
        dev = self.device
        return ForwardBatch(
            max_q_len=max(b - a for a, b in itertools.pairwise(qo)),
            mode=mode,
            input_ids=torch.tensor(ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            out_cache_loc=torch.cat(out_loc),
            qo_indptr=torch.tensor(qo, dtype=torch.int64, device=dev),
            kv_indptr=torch.tensor(kv, dtype=torch.int64, device=dev),
            kv_indices=torch.cat(kv_indices),
            logits_rows=torch.tensor(logits_rows, dtype=torch.int64, device=dev),
        )

    # ------------------------------------------------------------------ run
    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """One forward; the logits of the batch's logits rows. [rows, vocab]"""
        return self.model(batch, self.attention)

    def run_decode(self, reqs: list[Request], table: ReqToTokenTable) -> torch.Tensor:
        """The decode step of reqs: a graph replay when one fits, else an eager forward. [len(reqs), vocab]"""
        if self.graphs is not None and self.graphs.fits(len(reqs)):
            return self.graphs.run(reqs)
        return self.run(self.prepare_decode(reqs, table))


def _decode_batch_cpu(reqs: list[Request], table: np.ndarray) -> ForwardBatch:
    """`ModelRunner.prepare_decode` on the CPU, its index work in numpy over the request-to-token table (the same
    memory): a dozen torch calls took about 80 us of a 16-request step of the default model, this about 20."""
    batch = len(reqs)
    meta = np.array([[r.kv_len for r in reqs], [r.row for r in reqs], [r.output_ids[-1] for r in reqs]],
                    dtype=np.int64)  # [3, batch]: positions, table rows, last tokens
    positions = meta[0]
    width = int(positions.max()) + 1
    padded = table[meta[1], :width]  # [batch, longest context], a copy; past a row's length: stale slots
    lens = positions + 1
    kv_indptr = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(lens, out=kv_indptr[1:])
    kv_indices = padded.reshape(-1) if positions.min() == width - 1 else padded[np.arange(width) < lens[:, None]]
    steps = torch.arange(batch + 1, dtype=torch.int64)
    return ForwardBatch(
        mode=ForwardMode.DECODE,
        input_ids=torch.from_numpy(meta[2].copy()),
        positions=torch.from_numpy(positions.copy()),
        out_cache_loc=torch.from_numpy(padded[np.arange(batch), positions]),
        qo_indptr=steps,
        kv_indptr=torch.from_numpy(kv_indptr),
        kv_indices=torch.from_numpy(kv_indices),
        logits_rows=steps[:-1],
        max_q_len=1,
        padded_kv_indices=torch.from_numpy(padded),
    )
