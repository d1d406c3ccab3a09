"""Write new K and V rows into their paged-pool slots (same semantics as ``reference.store_kv``).

Grid (tokens,): program t copies k[t] and v[t], each [kv_heads, head_dim], to pool slot slots[t],
casting to the pool's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    K_Buffer,  # [num_slots, kv_heads, head_dim]
    V_Buffer,  # [num_slots, kv_heads, head_dim]
    Slots,  # [tokens] int64
    K,  # [tokens, kv_heads, head_dim]
    V,  # [tokens, kv_heads, head_dim]
    stride_kbs,
    stride_kbh,
    stride_vbs,
    stride_vbh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(Slots + token)  # int64
    offs_h = tl.arange(0, BLOCK_H)  # [BLOCK_H]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask = (offs_h[:, None] < KV_HEADS) & (offs_d[None, :] < HEAD_DIM)  # [BLOCK_H, BLOCK_D]
    k = tl.load(K + token * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(V + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(
        K_Buffer + slot * stride_kbs + offs_h[:, None] * stride_kbh + offs_d[None, :],
        k.to(K_Buffer.dtype.element_ty),
        mask=mask,
    )
    tl.store(
        V_Buffer + slot * stride_vbs + offs_h[:, None] * stride_vbh + offs_d[None, :],
        v.to(V_Buffer.dtype.element_ty),
        mask=mask,
    )


def store_kv(
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    slots: torch.Tensor,  # [tokens] int64
    k: torch.Tensor,  # [tokens, kv_heads, head_dim]
    v: torch.Tensor,  # [tokens, kv_heads, head_dim]
) -> None:
    """Write k[t], v[t] into pool slot slots[t] for every token t (in place)."""
    if slots.dtype != torch.int64:
        raise TypeError(f"slots must be int64, got {slots.dtype}")
    if slots.dim() != 1 or not slots.is_contiguous():
        raise ValueError(f"slots must be a contiguous 1-D tensor, got shape {tuple(slots.shape)}")
    if k_buffer.dim() != 3 or v_buffer.shape != k_buffer.shape:
        raise ValueError(
            f"k_buffer/v_buffer must both be [num_slots, kv_heads, head_dim], got "
            f"{tuple(k_buffer.shape)} and {tuple(v_buffer.shape)}"
        )
    expected = (slots.numel(), *k_buffer.shape[1:])
    if tuple(k.shape) != expected or tuple(v.shape) != expected:
        raise ValueError(
            f"k and v must be {expected} (tokens, kv_heads, head_dim), got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    for name, t in (("k_buffer", k_buffer), ("v_buffer", v_buffer), ("k", k), ("v", v)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be contiguous in its last (head_dim) dimension, strides {t.stride()}"
            )
        if t.device != slots.device:
            raise ValueError(f"{name} is on {t.device}, slots on {slots.device}")
    if slots.numel() == 0:
        return
    kv_heads, head_dim = k_buffer.shape[1], k_buffer.shape[2]
    _store_kv_kernel[(slots.numel(),)](
        k_buffer, v_buffer, slots, k, v,
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        k.stride(0), k.stride(1),
        v.stride(0), v.stride(1),
        KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )  # fmt: skip
