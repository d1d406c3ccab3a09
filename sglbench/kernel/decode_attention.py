"""Split-KV ("flash-decoding") decode attention over the paged KV pool.

Same semantics as ``reference.decode_attention_ref``: one query token per request attends to its
whole context, whose K/V rows live in pool slots ``kv_indices[kv_indptr[b] : kv_indptr[b+1]]``.

Two stages:

    stage 1, grid (batch, kv_heads, num_kv_splits)
        request b's context is cut into splits of ``split_len`` tokens (a multiple of BLOCK_N):

            0 ........ split_len ........ 2*split_len ........ kv_len
            |- split 0 -|---- split 1 ----|---- split 2 ----|     (later splits may be empty)

        one program reads its split's K/V once, through kv_indices, for the whole query group of
        its kv head (GQA: heads kv_head*group .. kv_head*group + group - 1, padded to BLOCK_H rows so
        tl.dot sees M >= 16), and writes per head the normalised partial output and its log-sum-exp.
    stage 2, grid (batch, heads)
        merges the non-empty splits by their log-sum-exp.

Softmax runs in the log2 domain (exp2 with sm_scale * log2(e) folded into the scores).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _decode_stage1_kernel(
    Q,  # [batch, heads, head_dim]
    K_Buffer,  # [num_slots, kv_heads, head_dim]
    V_Buffer,  # [num_slots, kv_heads, head_dim]
    Kv_Indptr,  # [batch + 1] int64
    Kv_Indices,  # [total_kv] int64
    Att_Out,  # [batch, heads, num_splits, head_dim] fp32
    Att_Lse,  # [batch, heads, num_splits] fp32, log2 domain
    qk_scale,  # sm_scale * log2(e)
    stride_qb,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_ob,
    stride_oh,
    stride_os,
    stride_lb,
    stride_lh,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DMODEL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    cur_batch = tl.program_id(0)
    cur_kv_head = tl.program_id(1)
    split_id = tl.program_id(2)

    kv_start = tl.load(Kv_Indptr + cur_batch)
    kv_len = tl.load(Kv_Indptr + cur_batch + 1) - kv_start
    split_len = tl.cdiv(tl.cdiv(kv_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    split_start = split_id * split_len
    split_end = tl.minimum(split_start + split_len, kv_len)
    if split_end <= split_start:
        return  # empty split: stage 2 skips it by the same arithmetic

    offs_h = tl.arange(0, BLOCK_H)  # [BLOCK_H] row within the query group
    offs_d = tl.arange(0, BLOCK_DMODEL)  # [BLOCK_DMODEL]
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask_h = offs_h < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = cur_kv_head * GROUP + offs_h  # [BLOCK_H] query head ids

    q = tl.load(
        Q + cur_batch * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_h[:, None] & mask_d[None, :],
        other=0.0,
    )  # [BLOCK_H, BLOCK_DMODEL]

    e_max = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    e_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DMODEL], dtype=tl.float32)
    for start_n in range(split_start, split_end, BLOCK_N):
        pos = start_n + offs_n  # [BLOCK_N] kv positions of this block
        mask_n = pos < split_end
        slots = tl.load(Kv_Indices + kv_start + pos, mask=mask_n, other=0)  # [BLOCK_N] int64
        k = tl.load(
            K_Buffer + slots[None, :] * stride_ks + cur_kv_head * stride_kh + offs_d[:, None],
            mask=mask_n[None, :] & mask_d[:, None],
            other=0.0,
        )  # [BLOCK_DMODEL, BLOCK_N]
        qk = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_H, BLOCK_N]
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        n_e_max = tl.maximum(tl.max(qk, 1), e_max)  # [BLOCK_H]
        re_scale = tl.exp2(e_max - n_e_max)
        p = tl.exp2(qk - n_e_max[:, None])  # [BLOCK_H, BLOCK_N]
        v = tl.load(
            V_Buffer + slots[:, None] * stride_vs + cur_kv_head * stride_vh + offs_d[None, :],
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_DMODEL]
        acc = acc * re_scale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        e_sum = e_sum * re_scale + tl.sum(p, 1)
        e_max = n_e_max

    out_base = cur_batch * stride_ob + heads * stride_oh + split_id * stride_os  # [BLOCK_H]
    tl.store(
        Att_Out + out_base[:, None] + offs_d[None, :],
        acc / e_sum[:, None],
        mask=mask_h[:, None] & mask_d[None, :],
    )
    tl.store(
        Att_Lse + cur_batch * stride_lb + heads * stride_lh + split_id,
        e_max + tl.log2(e_sum),
        mask=mask_h,
    )


@triton.jit
def _decode_stage2_kernel(
    Att_Out,  # [batch, heads, num_splits, head_dim] fp32
    Att_Lse,  # [batch, heads, num_splits] fp32, log2 domain
    Kv_Indptr,  # [batch + 1] int64
    Out,  # [batch, heads, head_dim]
    stride_ab,
    stride_ah,
    stride_as,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DMODEL: tl.constexpr,
):
    cur_batch = tl.program_id(0)
    cur_head = tl.program_id(1)

    kv_len = tl.load(Kv_Indptr + cur_batch + 1) - tl.load(Kv_Indptr + cur_batch)
    split_len = tl.cdiv(tl.cdiv(kv_len, NUM_SPLITS), BLOCK_N) * BLOCK_N  # as in stage 1
    offs_s = tl.arange(0, BLOCK_S)  # [BLOCK_S]
    offs_d = tl.arange(0, BLOCK_DMODEL)  # [BLOCK_DMODEL]
    mask_s = (offs_s < NUM_SPLITS) & (offs_s * split_len < kv_len)  # non-empty splits only
    mask_d = offs_d < HEAD_DIM

    lse = tl.load(
        Att_Lse + cur_batch * stride_lb + cur_head * stride_lh + offs_s, mask=mask_s, other=float("-inf")
    )  # [BLOCK_S]
    part = tl.load(
        Att_Out
        + cur_batch * stride_ab
        + cur_head * stride_ah
        + offs_s[:, None] * stride_as
        + offs_d[None, :],
        mask=mask_s[:, None] & mask_d[None, :],
        other=0.0,
    )  # [BLOCK_S, BLOCK_DMODEL]
    weight = tl.exp2(lse - tl.max(lse, 0))  # [BLOCK_S], 0 for empty splits
    out = tl.sum(part * weight[:, None], 0) / tl.sum(weight, 0)  # [BLOCK_DMODEL]
    tl.store(
        Out + cur_batch * stride_ob + cur_head * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=mask_d
    )


def check_paged_attention_inputs(
    q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, **index_tensors: torch.Tensor
) -> None:
    """Validate the contract shared by the paged-attention launchers; raise TypeError/ValueError.

    Only metadata is inspected (no device synchronisation), so this is safe under CUDA-graph capture.
    """
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    if k_buffer.dtype != q.dtype or v_buffer.dtype != q.dtype:
        raise TypeError(
            f"k_buffer/v_buffer dtype must equal q's ({q.dtype}), got {k_buffer.dtype}/{v_buffer.dtype}"
        )
    if q.dim() != 3 or k_buffer.dim() != 3:
        raise ValueError(
            f"expected q [tokens, heads, head_dim] and k_buffer [num_slots, kv_heads, head_dim], "
            f"got q {tuple(q.shape)} and k_buffer {tuple(k_buffer.shape)}"
        )
    if v_buffer.shape != k_buffer.shape:
        raise ValueError(f"v_buffer shape {tuple(v_buffer.shape)} != k_buffer shape {tuple(k_buffer.shape)}")
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = k_buffer.shape[1]
    if k_buffer.shape[2] != head_dim:
        raise ValueError(f"head_dim mismatch: q has {head_dim}, k_buffer has {k_buffer.shape[2]}")
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"num_heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if not 1 <= head_dim <= 256:
        raise ValueError(f"head_dim must be in 1..256 (padded to a power of two in-kernel), got {head_dim}")
    for name, t in (("q", q), ("k_buffer", k_buffer), ("v_buffer", v_buffer)):
        if t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be contiguous in its last (head_dim) dimension, strides {t.stride()}"
            )
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    for name, t in index_tensors.items():
        if t.dtype != torch.int64:
            raise TypeError(f"{name} must be int64, got {t.dtype}")
        if t.dim() != 1 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous 1-D tensor, got shape {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_num_kv_splits(batch: int, kv_heads: int, device: torch.device) -> int:
    """About 8 stage-1 programs per SM (at most 32 splits); depends on shapes only, so it is stable under
    CUDA-graph capture. A heuristic, not tuned on hardware: measure with ``python -m
    sglbench.bench.kernels --num-kv-splits N``."""
    if device.type != "cuda":
        return 2
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(32, triton.cdiv(8 * sms, max(1, batch * kv_heads))))


def decode_attention(
    q: torch.Tensor,  # [batch, num_heads, head_dim]
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    kv_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indices: torch.Tensor,  # [total_kv] int64
    sm_scale: float,
    num_kv_splits: int | None = None,
) -> torch.Tensor:  # [batch, num_heads, head_dim]
    """Decode attention of one query token per request over its paged context (see module docstring).

    Every request must have kv_len >= 1 (its own new token is already in the pool). ``num_kv_splits``
    is the maximum number of splits per request (a request uses fewer when its context is short);
    None picks one from the batch shape and the GPU's SM count.
    """
    check_paged_attention_inputs(q, k_buffer, v_buffer, kv_indptr=kv_indptr, kv_indices=kv_indices)
    batch, num_heads, head_dim = q.shape
    kv_heads = k_buffer.shape[1]
    if kv_indptr.numel() != batch + 1:
        raise ValueError(f"kv_indptr must have batch + 1 = {batch + 1} entries, got {kv_indptr.numel()}")
    if num_kv_splits is None:
        num_kv_splits = default_num_kv_splits(batch, kv_heads, q.device)
    if not isinstance(num_kv_splits, int) or num_kv_splits < 1:
        raise ValueError(f"num_kv_splits must be a positive int, got {num_kv_splits!r}")

    o = torch.empty((batch, num_heads, head_dim), dtype=q.dtype, device=q.device)  # [batch, heads, dim]
    if batch == 0:
        return o
    group = num_heads // kv_heads
    block_dmodel = max(16, triton.next_power_of_2(head_dim))
    block_h = max(16, triton.next_power_of_2(group))  # tl.dot needs M >= 16
    if q.device.type != "cuda":
        block_n = 32  # interpreter: small blocks so tests cover several blocks per split
    elif q.dtype == torch.float32:  # exact fp32 dot runs on FMA units: keep tiles small
        block_n = 32 if block_dmodel <= 64 else 16
    else:  # sm_80 / sm_90: no register spills for head_dim <= 128 (checked with cuobjdump)
        block_n = 64
    att_out = torch.empty(
        (batch, num_heads, num_kv_splits, head_dim), dtype=torch.float32, device=q.device
    )  # [batch, heads, splits, dim]
    att_lse = torch.empty((batch, num_heads, num_kv_splits), dtype=torch.float32, device=q.device)

    _decode_stage1_kernel[(batch, kv_heads, num_kv_splits)](
        q, k_buffer, v_buffer, kv_indptr, kv_indices, att_out, att_lse,
        sm_scale * _LOG2E,
        q.stride(0), q.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        att_out.stride(0), att_out.stride(1), att_out.stride(2),
        att_lse.stride(0), att_lse.stride(1),
        HEAD_DIM=head_dim,
        GROUP=group,
        NUM_SPLITS=num_kv_splits,
        BLOCK_H=block_h,
        BLOCK_N=block_n,
        BLOCK_DMODEL=block_dmodel,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
        num_stages=2,
    )  # fmt: skip
    _decode_stage2_kernel[(batch, num_heads)](
        att_out, att_lse, kv_indptr, o,
        att_out.stride(0), att_out.stride(1), att_out.stride(2),
        att_lse.stride(0), att_lse.stride(1),
        o.stride(0), o.stride(1),
        HEAD_DIM=head_dim,
        NUM_SPLITS=num_kv_splits,
        BLOCK_S=max(2, triton.next_power_of_2(num_kv_splits)),
        BLOCK_N=block_n,
        BLOCK_DMODEL=block_dmodel,
        num_warps=4,
    )  # fmt: skip
    return o
