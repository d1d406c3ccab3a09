"""Triton attention backend: the GPU path through the same seam as the torch reference."""

from __future__ import annotations

import torch

from sglbench.kernel.decode_attention import decode_attention
from sglbench.kernel.extend_attention import extend_attention
from sglbench.kernel.store_kv import store_kv
from sglbench.runtime.attention import AttentionBackend
from sglbench.runtime.forward_batch import ForwardBatch


class TritonAttentionBackend(AttentionBackend):
    """Paged decode (split-KV) and extend attention kernels reading K/V through slot indices."""

    name = "triton"

    def store_kv(self, k_buf, v_buf, slots, k, v) -> None:
        store_kv(k_buf, v_buf, slots, k, v)

    def decode(self, q, k_buf, v_buf, batch: ForwardBatch) -> torch.Tensor:
        return decode_attention(q, k_buf, v_buf, batch.kv_indptr, batch.kv_indices, self.sm_scale)

    def extend(self, q, k_buf, v_buf, batch: ForwardBatch) -> torch.Tensor:
        return extend_attention(
            q, k_buf, v_buf, batch.qo_indptr, batch.kv_indptr, batch.kv_indices, self.sm_scale,
            max_q_len=batch.max_q_len or None,
        )
