"""Build the flat paged-KV index list of a decode batch on the device (same semantics as
``reference.build_kv_indices``), so a captured decode step needs no host round trip per request.

Grid (batch,): program b copies row ``rows[b]`` of the request-to-token table, its first
``kv_indptr[b+1] - kv_indptr[b]`` entries, to ``kv_indices[kv_indptr[b]:]``, BLOCK slots at a time.
Lengths are read on the device, so the launch depends on the batch size only (CUDA-graph safe).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _build_kv_indices_kernel(
    Req_To_Token,  # [rows, max_context] int64
    stride_row,
    Rows,  # [batch] int64
    Kv_Indptr,  # [batch + 1] int64
    Kv_Indices,  # [>= total] int64
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    row = tl.load(Rows + b)
    start = tl.load(Kv_Indptr + b)
    length = tl.load(Kv_Indptr + b + 1) - start
    offs = tl.arange(0, BLOCK)  # [BLOCK]
    for block_start in range(0, length, BLOCK):
        pos = block_start + offs
        mask = pos < length
        slots = tl.load(Req_To_Token + row * stride_row + pos, mask=mask)
        tl.store(Kv_Indices + start + pos, slots, mask=mask)


def build_kv_indices(
    req_to_token: torch.Tensor,  # [rows, max_context] int64
    rows: torch.Tensor,  # [batch] int64
    kv_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indices: torch.Tensor,  # [>= kv_indptr[-1]] int64, written in place
) -> None:
    """kv_indices[kv_indptr[b] + p] = req_to_token[rows[b], p] for each request's context positions p."""
    for name, t in (("req_to_token", req_to_token), ("rows", rows), ("kv_indptr", kv_indptr),
                    ("kv_indices", kv_indices)):
        if t.dtype != torch.int64:
            raise TypeError(f"{name} must be int64, got {t.dtype}")
        if t.device != req_to_token.device:
            raise ValueError(f"{name} is on {t.device}, req_to_token on {req_to_token.device}")
    if req_to_token.dim() != 2 or req_to_token.stride(1) != 1:
        raise ValueError(f"req_to_token must be 2-D with contiguous rows, got shape {tuple(req_to_token.shape)}")
    if kv_indptr.numel() != rows.numel() + 1:
        raise ValueError(f"kv_indptr must have len(rows) + 1 = {rows.numel() + 1} entries, got {kv_indptr.numel()}")
    if rows.numel() == 0:
        return
    _build_kv_indices_kernel[(rows.numel(),)](
        req_to_token, req_to_token.stride(0), rows, kv_indptr, kv_indices, BLOCK=512,
    )
