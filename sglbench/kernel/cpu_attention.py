"""Extend attention for the CPU path: the contract of ``reference.extend_attention_ref``, with fewer
passes over the score matrix.

The reference repeats K/V per query head, scales and masks the whole [heads, q_len, kv_len] score
matrix and so touches it four times besides the softmax. Here queries of one KV group share a single
matmul against the unrepeated K, the scale is folded into q before the matmul, and only the
[q_len, q_len] block of new tokens is masked (the cached prefix is visible to every new token).
Queries go in blocks so the score matrix stays bounded on long chunks.
"""

from __future__ import annotations

import torch

Q_BLOCK = 512  # query rows per matmul: bounds the score matrix to heads x 512 x kv_len floats


def _causal_bias(q_len: int, device: torch.device) -> torch.Tensor:
    """[q_len, q_len] additive mask: 0 on and below the diagonal, -inf above."""
    return torch.full((q_len, q_len), float("-inf"), device=device).triu_(1)


def extend_attention_cpu(
    q: torch.Tensor,  # [total_q, num_heads, head_dim]
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    qo_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indices: torch.Tensor,  # [total_kv] int64
    sm_scale: float,
) -> torch.Tensor:
    """Causal attention of new tokens over their cached prefix and each other; returns [total_q, heads, dim]."""
    _, num_heads, head_dim = q.shape
    kv_heads = k_buffer.shape[1]
    group = num_heads // kv_heads
    out = torch.empty_like(q)
    qo, kvp = qo_indptr.tolist(), kv_indptr.tolist()
    for b in range(len(qo) - 1):
        q_len, kv_len = qo[b + 1] - qo[b], kvp[b + 1] - kvp[b]
        if q_len == 0:
            continue
        slots = kv_indices[kvp[b] : kvp[b + 1]]
        k = k_buffer[slots].float().permute(1, 2, 0)  # [kv_heads, dim, kv_len]
        v = v_buffer[slots].float().transpose(0, 1)  # [kv_heads, kv_len, dim]
        bias = _causal_bias(q_len, q.device)
        for start in range(0, q_len, Q_BLOCK):
            stop = min(start + Q_BLOCK, q_len)
            rows = stop - start
            seen = kv_len - q_len + stop  # the block's last query sees this many kv positions
            qb = (q[qo[b] + start : qo[b] + stop].float() * sm_scale).view(rows, kv_heads, group, head_dim)
            qb = qb.permute(1, 2, 0, 3).reshape(kv_heads, group * rows, head_dim)
            scores = torch.bmm(qb, k[:, :, :seen]).view(kv_heads, group, rows, seen)
            new = seen - (kv_len - q_len)  # new-token columns this block can see
            scores[..., seen - new :].add_(bias[start:stop, :new])
            probs = torch.softmax(scores.view(kv_heads, group * rows, seen), dim=-1)
            block = torch.bmm(probs, v[:, :seen])  # [kv_heads, group * rows, dim]
            out[qo[b] + start : qo[b] + stop] = (
                block.view(kv_heads, group, rows, head_dim).permute(2, 0, 1, 3).reshape(rows, num_heads, head_dim)
            )
    return out
