"""The attention-backend seam: the model hands q/k/v of a layer here; the backend stores K/V in the
paged pool and attends over each request's context. The torch backend is the CPU path; the Triton
backend serves CUDA through the same interface."""

from __future__ import annotations

import abc

import torch

from sglbench.kernel import cpu_attention, cpu_native, reference
from sglbench.runtime.forward_batch import ForwardBatch, ForwardMode
from sglbench.runtime.kv_pool import KVPool


class AttentionBackend(abc.ABC):
    """Stores new K/V and computes attention for one layer of a ForwardBatch."""

    name = "base"
    # Extend batches in token order put requests that share a cached prefix side by side; a backend that
    # reads such a prefix once for all of them (over contiguous query rows) asks the engine for that order.
    wants_prefix_order = False

    def __init__(self, pool: KVPool, sm_scale: float):
        self.pool = pool
        self.sm_scale = sm_scale

    def forward(
        self,
        q: torch.Tensor,  # [tokens, heads, dim]
        k: torch.Tensor,  # [tokens, kv_heads, dim]
        v: torch.Tensor,  # [tokens, kv_heads, dim]
        layer_id: int,
        batch: ForwardBatch,
    ) -> torch.Tensor:  # [tokens, heads, dim]
        k_buf, v_buf = self.pool.k_buffers[layer_id], self.pool.v_buffers[layer_id]
        self.store_kv(k_buf, v_buf, batch.out_cache_loc, k, v)
        if batch.mode is ForwardMode.DECODE:
            return self.decode(q, k_buf, v_buf, batch)
        return self.extend(q, k_buf, v_buf, batch)

    def store_kv(self, k_buf, v_buf, slots, k, v) -> None:
        reference.store_kv(k_buf, v_buf, slots, k, v)

    def in_place_decode_plan(self, batch: ForwardBatch):
        """A decode batch's plan (cpu_attention.DecodePlan, with slots and lens) when its contexts are read in
        place by the C kernels, for a model that runs whole layers in C (cpu_native.decode_layers); None where
        this backend does not do that."""
        return None

    def in_place_extend_plan(self, batch: ForwardBatch):
        """The same for an extend batch: each request's context (new tokens included) as a padded row of slots
        with its length, for decode_layers' extend form; None where this backend does not do that."""
        return None

    @abc.abstractmethod
    def decode(self, q, k_buf, v_buf, batch: ForwardBatch) -> torch.Tensor:
        """One query token per request over its context: [batch, heads, dim]."""

    @abc.abstractmethod
    def extend(self, q, k_buf, v_buf, batch: ForwardBatch) -> torch.Tensor:
        """New tokens over their cached prefix and causally over each other: [tokens, heads, dim]."""


class TorchAttentionBackend(AttentionBackend):
    """Plain-torch path (CPU, or any device without Triton): decode and extend through torch's fused SDPA
    (kernel/cpu_attention.py)."""

    name = "torch"
    wants_prefix_order = True

    def __init__(self, pool: KVPool, sm_scale: float):
        super().__init__(pool, sm_scale)
        self._planned: tuple[ForwardBatch, object] | None = None  # the latest batch's plan, used by every layer

    def _plan(self, batch: ForwardBatch, make):
        if self._planned is None or self._planned[0] is not batch:
            self._planned = (batch, make())
        return self._planned[1]

    def _plan_extend(self, batch: ForwardBatch, q: torch.Tensor, k_buf: torch.Tensor):
        return cpu_attention.choose_extend(q, k_buf, batch.qo_indptr, batch.kv_indptr, batch.kv_indices)

    def _plan_decode(self, batch: ForwardBatch, q: torch.Tensor, k_buf: torch.Tensor):
        # The C kernel reads every context in place as fast as the shared-prefix plan's two calls and merge
        # (fork-join and few-shot workloads: level or up to 1.1x), so it gets the plain plan.
        native = cpu_native.attention_fits(q, k_buf)
        return cpu_attention.plan_decode(batch.kv_indptr, batch.kv_indices, q.dtype, batch.padded_kv_indices,
                                         share_prefixes=False if native else None)

    def in_place_decode_plan(self, batch: ForwardBatch):
        k_buf = self.pool.k_buffers[0]
        if batch.mode is not ForwardMode.DECODE or not cpu_native.attention_fits(k_buf, k_buf):
            return None
        if batch.padded_kv_indices is not None and batch.kv_indptr.numel() > 1:
            return cpu_attention.plan_in_place(batch.kv_indptr, batch.kv_indices, batch.padded_kv_indices)
        plan = self._plan(batch, lambda: self._plan_decode(batch, k_buf, k_buf))
        return plan if plan.shared is None and plan.lens is not None and plan.max_len > 0 else None

    def in_place_extend_plan(self, batch: ForwardBatch):
        k_buf = self.pool.k_buffers[0]
        if batch.mode is not ForwardMode.EXTEND or not cpu_native.attention_fits(k_buf, k_buf):
            return None
        # not through _plan: should the model decline, the layer-by-layer extend plans its own way
        plan = cpu_attention.plan_in_place(batch.kv_indptr, batch.kv_indices)
        return plan if plan.max_len > 0 else None

    def decode(self, q, k_buf, v_buf, batch: ForwardBatch) -> torch.Tensor:
        plan = self._plan(batch, lambda: self._plan_decode(batch, q, k_buf))
        return cpu_attention.decode_attention_cpu(q, k_buf, v_buf, plan, self.sm_scale)

    def _plan_mixed(self, batch: ForwardBatch, q: torch.Tensor, k_buf: torch.Tensor):
        """A mixed batch's plan: where the extend requests go to the C kernel, that kernel for the whole batch (it
        takes the riders as one-token requests: one call, no second pass over the riders, no concatenation of the
        outputs); else the extend part's plan and the riders' decode plan."""
        head, tail = batch.parts
        head_plan = self._plan_extend(head, q, k_buf)
        if isinstance(head_plan, cpu_attention.NativeExtendPlan):
            return head_plan
        return head_plan, self._plan_decode(tail, q, k_buf)

    def extend(self, q, k_buf, v_buf, batch: ForwardBatch) -> torch.Tensor:
        if batch.parts is None:
            plan = self._plan(batch, lambda: self._plan_extend(batch, q, k_buf))
        else:  # extend requests, then decode requests riding along
            plan = self._plan(batch, lambda: self._plan_mixed(batch, q, k_buf))
            if isinstance(plan, tuple):  # each part its own way
                head, (head_plan, tail_plan) = batch.parts[0], plan
                split = head.num_tokens
                return torch.cat([
                    cpu_attention.extend_attention_cpu(q[:split], k_buf, v_buf, head.qo_indptr, head.kv_indptr,
                                                       head.kv_indices, self.sm_scale, head_plan),
                    cpu_attention.decode_attention_cpu(q[split:], k_buf, v_buf, tail_plan, self.sm_scale),
                ])
        return cpu_attention.extend_attention_cpu(
            q, k_buf, v_buf, batch.qo_indptr, batch.kv_indptr, batch.kv_indices, self.sm_scale, plan
        )


def make_attention_backend(name: str, pool: KVPool, sm_scale: float) -> AttentionBackend:
    """Pick a backend by name: 'torch' or 'triton'."""
    if name == "torch":
        return TorchAttentionBackend(pool, sm_scale)
    if name == "triton":
        from sglbench.runtime.triton_attention import TritonAttentionBackend

        return TritonAttentionBackend(pool, sm_scale)
    raise ValueError(f"attention_backend must be 'torch' or 'triton', got {name!r}")
