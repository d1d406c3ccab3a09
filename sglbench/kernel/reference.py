"""Plain-torch references for the paged-attention kernels.

These are the CPU path of the runtime and the ground truth the Triton kernels are
tested against. One contract serves prefill, chunked prefill and decode:

    request b owns kv slots  kv_indices[kv_indptr[b] : kv_indptr[b+1]]   (its whole context,
                                                                         cached prefix + new tokens)
    and query rows           q[qo_indptr[b] : qo_indptr[b+1]]            (its new tokens)

    kv positions:  0 ............ kv_len - q_len ............ kv_len - 1
                   |-- cached prefix --|------ new tokens ------|
    query j (0-based among the new tokens) sees kv positions <= kv_len - q_len + j.

Decode is the case q_len == 1 for every request. New K/V must already be stored in
the pool (see ``store_kv``) before attention runs.
"""

from __future__ import annotations

import torch


def store_kv(
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    slots: torch.Tensor,  # [tokens] int64
    k: torch.Tensor,  # [tokens, kv_heads, head_dim]
    v: torch.Tensor,  # [tokens, kv_heads, head_dim]
) -> None:
    """Write new keys and values into their pool slots (index_copy_: a row copy, 1.4-2x faster on the CPU
    than the advanced-index assignment's index_put_)."""
    k_buffer.index_copy_(0, slots, k.to(k_buffer.dtype))
    v_buffer.index_copy_(0, slots, v.to(v_buffer.dtype))


def _expand_kv_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[len, kv_heads, dim] -> [num_heads, len, dim], repeating each kv head for its query group."""
    group = num_heads // x.shape[1]
    return x.transpose(0, 1).repeat_interleave(group, dim=0)


def extend_attention_ref(
    q: torch.Tensor,  # [total_q, num_heads, head_dim]
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    qo_indptr: torch.Tensor,  # [batch + 1] int64, offsets into q
    kv_indptr: torch.Tensor,  # [batch + 1] int64, offsets into kv_indices
    kv_indices: torch.Tensor,  # [total_kv] int64, pool slots
    sm_scale: float,
) -> torch.Tensor:
    """Causal attention of new tokens over their cached prefix and each other; returns [total_q, heads, dim]."""
    num_heads = q.shape[1]
    out = torch.empty_like(q)
    qo = qo_indptr.tolist()
    kvp = kv_indptr.tolist()
    for b in range(len(qo) - 1):
        q_len, kv_len = qo[b + 1] - qo[b], kvp[b + 1] - kvp[b]
        if q_len == 0:
            continue
        slots = kv_indices[kvp[b] : kvp[b + 1]]
        k = _expand_kv_heads(k_buffer[slots].to(q.dtype), num_heads)  # [heads, kv_len, dim]
        v = _expand_kv_heads(v_buffer[slots].to(q.dtype), num_heads)  # [heads, kv_len, dim]
        qb = q[qo[b] : qo[b + 1]].transpose(0, 1)  # [heads, q_len, dim]
        scores = torch.matmul(qb.float(), k.float().transpose(1, 2)) * sm_scale  # [heads, q_len, kv_len]
        q_pos = torch.arange(kv_len - q_len, kv_len, device=q.device)[:, None]
        kv_pos = torch.arange(kv_len, device=q.device)[None, :]
        scores.masked_fill_(kv_pos > q_pos, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[qo[b] : qo[b + 1]] = torch.matmul(probs, v.float()).transpose(0, 1).to(q.dtype)
    return out


def decode_attention_ref(
    q: torch.Tensor,  # [batch, num_heads, head_dim]
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    kv_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indices: torch.Tensor,  # [total_kv] int64
    sm_scale: float,
) -> torch.Tensor:
    """One query token per request over its whole context; batched with padding. Returns [batch, heads, dim]."""
    batch, num_heads, head_dim = q.shape
    kv_heads = k_buffer.shape[1]
    group = num_heads // kv_heads
    lens = kv_indptr[1:] - kv_indptr[:-1]  # [batch]
    max_len = int(lens.max()) if batch else 0
    offsets = torch.arange(max_len, device=q.device)  # [max_len]
    valid = offsets[None, :] < lens[:, None]  # [batch, max_len]
    gather = (kv_indptr[:-1, None] + offsets[None, :]).clamp(max=max(kv_indices.numel() - 1, 0))
    slots = torch.where(valid, kv_indices[gather], torch.zeros_like(gather))  # [batch, max_len]
    k = k_buffer[slots].float()  # [batch, max_len, kv_heads, dim]
    v = v_buffer[slots].float()  # [batch, max_len, kv_heads, dim]
    qg = q.float().view(batch, kv_heads, group, head_dim)  # [batch, kv_heads, group, dim]
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k) * sm_scale  # [batch, kv_heads, group, max_len]
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhgl,blhd->bhgd", probs, v)  # [batch, kv_heads, group, dim]
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 and cast back, as Llama does."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def build_kv_indices(
    req_to_token: torch.Tensor,  # [rows, max_context] int64: req_to_token[row, pos] = pool slot
    rows: torch.Tensor,  # [batch] int64
    kv_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indices: torch.Tensor,  # [>= kv_indptr[-1]] int64, written in place
) -> None:
    """Flatten each request's context slots: kv_indices[kv_indptr[b] + p] = req_to_token[rows[b], p] for
    p < kv_indptr[b+1] - kv_indptr[b]; entries past kv_indptr[-1] are left as they are."""
    bounds = kv_indptr.tolist()
    for b, row in enumerate(rows.tolist()):
        start, end = bounds[b], bounds[b + 1]
        kv_indices[start:end] = req_to_token[row, : end - start]
