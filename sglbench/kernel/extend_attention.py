"""Extend (prefill / chunked-prefill) attention over the paged KV pool, flash-attention style.

Same semantics as ``reference.extend_attention_ref``. Grid (batch, heads, q blocks); a program owns
BLOCK_M new tokens of one request and one query head, and streams that head's kv head (GQA:
kv_head = head // group) from the pool through kv_indices with an online softmax:

    kv positions:  0 ........................ prefix_len ..................... kv_len
                   |------- cached prefix -------|--------- new tokens ---------|
    q block rows m (among the new tokens) sit at kv positions prefix_len + m.

    [0, full_end)           every row of the block sees it: no mask at all
                            (full_end = prefix_len + block_start rounded down to BLOCK_N)
    [full_end, causal_end)  bounds and causal mask  kv_pos <= prefix_len + m
                            (causal_end = prefix_len + min(block_end, q_len))

Softmax runs in the log2 domain (exp2 with sm_scale * log2(e) folded into the scores).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglbench.kernel.decode_attention import check_paged_attention_inputs

_LOG2E = 1.4426950408889634


@triton.jit
def _attend_kv_range(
    acc,  # [BLOCK_M, BLOCK_DMODEL] fp32
    m_i,  # [BLOCK_M] fp32 running max (log2 domain)
    l_i,  # [BLOCK_M] fp32 running sum
    q,  # [BLOCK_M, BLOCK_DMODEL]
    q_pos,  # [BLOCK_M] kv position of each query row
    K_Buffer,
    V_Buffer,
    Kv_Indices,  # pointer already offset to this request's first slot
    kv_head_off_k,
    kv_head_off_v,
    stride_ks,
    stride_vs,
    qk_scale,
    start,
    end,
    offs_d,  # [BLOCK_DMODEL]
    mask_d,  # [BLOCK_DMODEL]
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    for start_n in range(start, end, BLOCK_N):
        pos = start_n + offs_n  # [BLOCK_N] kv positions
        if MASKED:
            mask_n = pos < end
            slots = tl.load(Kv_Indices + pos, mask=mask_n, other=0)  # [BLOCK_N] int64
            k = tl.load(
                K_Buffer + slots[None, :] * stride_ks + kv_head_off_k + offs_d[:, None],
                mask=mask_n[None, :] & mask_d[:, None],
                other=0.0,
            )  # [BLOCK_DMODEL, BLOCK_N]
            v = tl.load(
                V_Buffer + slots[:, None] * stride_vs + kv_head_off_v + offs_d[None, :],
                mask=mask_n[:, None] & mask_d[None, :],
                other=0.0,
            )  # [BLOCK_N, BLOCK_DMODEL]
        else:
            slots = tl.load(Kv_Indices + pos)  # [BLOCK_N] int64
            k = tl.load(
                K_Buffer + slots[None, :] * stride_ks + kv_head_off_k + offs_d[:, None],
                mask=mask_d[:, None],
                other=0.0,
            )  # [BLOCK_DMODEL, BLOCK_N]
            v = tl.load(
                V_Buffer + slots[:, None] * stride_vs + kv_head_off_v + offs_d[None, :],
                mask=mask_d[None, :],
                other=0.0,
            )  # [BLOCK_N, BLOCK_DMODEL]
        qk = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        if MASKED:
            visible = (pos[None, :] < end) & (pos[None, :] <= q_pos[:, None])  # [BLOCK_M, BLOCK_N]
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # [BLOCK_M]
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])  # [BLOCK_M, BLOCK_N]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _extend_attention_kernel(
    Q,  # [total_q, heads, head_dim]
    K_Buffer,  # [num_slots, kv_heads, head_dim]
    V_Buffer,  # [num_slots, kv_heads, head_dim]
    Out,  # [total_q, heads, head_dim]
    Qo_Indptr,  # [batch + 1] int64
    Kv_Indptr,  # [batch + 1] int64
    Kv_Indices,  # [total_kv] int64
    qk_scale,  # sm_scale * log2(e)
    stride_qt,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DMODEL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    cur_batch = tl.program_id(0)
    cur_head = tl.program_id(1)
    block_start = tl.program_id(2) * BLOCK_M
    cur_kv_head = cur_head // GROUP

    q_start = tl.load(Qo_Indptr + cur_batch)
    q_len = tl.load(Qo_Indptr + cur_batch + 1) - q_start
    if block_start >= q_len:
        return  # this request has fewer q blocks than the longest one (or q_len == 0)
    kv_start = tl.load(Kv_Indptr + cur_batch)
    kv_len = tl.load(Kv_Indptr + cur_batch + 1) - kv_start
    prefix_len = kv_len - q_len

    offs_m = block_start + tl.arange(0, BLOCK_M)  # [BLOCK_M] rows among the new tokens
    offs_d = tl.arange(0, BLOCK_DMODEL)  # [BLOCK_DMODEL]
    mask_m = offs_m < q_len
    mask_d = offs_d < HEAD_DIM
    q = tl.load(
        Q + (q_start + offs_m[:, None]) * stride_qt + cur_head * stride_qh + offs_d[None, :],
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_DMODEL]
    q_pos = prefix_len + offs_m  # [BLOCK_M]

    acc = tl.zeros([BLOCK_M, BLOCK_DMODEL], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    full_end = (prefix_len + block_start) // BLOCK_N * BLOCK_N
    causal_end = prefix_len + tl.minimum(block_start + BLOCK_M, q_len)
    indices = Kv_Indices + kv_start
    acc, m_i, l_i = _attend_kv_range(
        acc, m_i, l_i, q, q_pos, K_Buffer, V_Buffer, indices,
        cur_kv_head * stride_kh, cur_kv_head * stride_vh, stride_ks, stride_vs, qk_scale,
        0, full_end, offs_d, mask_d,
        BLOCK_N=BLOCK_N, MASKED=False, DOT_PRECISION=DOT_PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _attend_kv_range(
        acc, m_i, l_i, q, q_pos, K_Buffer, V_Buffer, indices,
        cur_kv_head * stride_kh, cur_kv_head * stride_vh, stride_ks, stride_vs, qk_scale,
        full_end, causal_end, offs_d, mask_d,
        BLOCK_N=BLOCK_N, MASKED=True, DOT_PRECISION=DOT_PRECISION,
    )  # fmt: skip

    out = acc / l_i[:, None]  # [BLOCK_M, BLOCK_DMODEL]
    tl.store(
        Out + (q_start + offs_m[:, None]) * stride_ot + cur_head * stride_oh + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )


def _launch_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Block sizes and warps. Small blocks on CPU so interpreter tests cover multi-block paths cheaply.

    The fp16/bf16 CUDA configs compile for sm_90 without register spills (checked ahead of time with
    cuobjdump -res-usage; sm_80 spills 72 bytes at head_dim 128); they are not tuned on hardware.
    """
    if device.type != "cuda":
        return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
    if dtype == torch.float32:  # exact fp32 dot (no tf32) runs on FMA units: small tiles, a fallback
        if head_dim <= 64:
            return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 8, "num_stages": 1}
        return {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}
    return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3 if head_dim <= 128 else 2}


def extend_attention(
    q: torch.Tensor,  # [total_q, num_heads, head_dim]
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    qo_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indices: torch.Tensor,  # [total_kv] int64
    sm_scale: float,
    *,
    max_q_len: int | None = None,
) -> torch.Tensor:  # [total_q, num_heads, head_dim]
    """Causal attention of each request's new tokens over its cached prefix and each other.

    Requires kv_len >= q_len per request (q_len == 0 is allowed and writes nothing). ``max_q_len``
    (the longest request's q_len) sizes the grid; when None it is read from qo_indptr, which
    synchronises with the device once.
    """
    check_paged_attention_inputs(
        q, k_buffer, v_buffer, qo_indptr=qo_indptr, kv_indptr=kv_indptr, kv_indices=kv_indices
    )
    if qo_indptr.numel() != kv_indptr.numel() or qo_indptr.numel() < 1:
        raise ValueError(
            f"qo_indptr and kv_indptr must both have batch + 1 entries, got {qo_indptr.numel()} and "
            f"{kv_indptr.numel()}"
        )
    total_q, num_heads, head_dim = q.shape
    kv_heads = k_buffer.shape[1]
    batch = qo_indptr.numel() - 1
    o = torch.empty((total_q, num_heads, head_dim), dtype=q.dtype, device=q.device)  # [total_q, heads, dim]
    if batch == 0 or total_q == 0:
        return o
    if max_q_len is None:
        max_q_len = int((qo_indptr[1:] - qo_indptr[:-1]).max())
    if max_q_len <= 0:
        return o
    cfg = _launch_config(head_dim, q.dtype, q.device)
    grid = (batch, num_heads, triton.cdiv(max_q_len, cfg["BLOCK_M"]))
    _extend_attention_kernel[grid](
        q, k_buffer, v_buffer, o, qo_indptr, kv_indptr, kv_indices,
        sm_scale * _LOG2E,
        q.stride(0), q.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        o.stride(0), o.stride(1),
        HEAD_DIM=head_dim,
        GROUP=num_heads // kv_heads,
        BLOCK_DMODEL=max(16, triton.next_power_of_2(head_dim)),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **cfg,
    )  # fmt: skip
    return o
