"""Shared test utilities: reference greedy decoding with transformers, pool-leak checks, paged attention
batches, an app served on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sglbench.server.background import BackgroundServer


def hf_greedy(model, input_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation by full recomputation with a transformers model (no KV cache: the reference)."""
    ids = list(input_ids)
    out = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            ids.append(token)
    return out


def assert_pool_full(rt) -> None:
    """No request holds KV and, after a flush, every slot is free again."""
    rt.wait_idle()
    rt.check_integrity()
    assert rt.flush_cache(), "flush refused: requests still running"
    m = rt.metrics()
    assert m.pool_free == m.pool_slots, f"leaked {m.pool_slots - m.pool_free} KV slots"


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_batch(q_lens, prefix_lens, heads, kv_heads, head_dim, dtype=torch.float32, seed=0, spare_slots=37):
    """A paged pool with each request's context scattered over random slots, and its new-token queries.

    Returns q [total_q, heads, dim], k_buffer, v_buffer [num_slots, kv_heads, dim], qo_indptr,
    kv_indptr, kv_indices (int64).
    """
    g = torch.Generator().manual_seed(seed)
    kv_lens = [p + n for p, n in zip(prefix_lens, q_lens, strict=True)]
    num_slots = sum(kv_lens) + spare_slots
    k_buffer = torch.randn(num_slots, kv_heads, head_dim, generator=g).to(
        DEVICE, dtype
    )  # [slots, kv_heads, dim]
    v_buffer = torch.randn(num_slots, kv_heads, head_dim, generator=g).to(
        DEVICE, dtype
    )  # [slots, kv_heads, dim]
    kv_indices = torch.randperm(num_slots, generator=g)[: sum(kv_lens)].to(DEVICE)  # [total_kv]
    kv_indptr = torch.tensor([0, *kv_lens], device=DEVICE).cumsum(0)  # [batch + 1]
    qo_indptr = torch.tensor([0, *q_lens], device=DEVICE).cumsum(0)  # [batch + 1]
    q = torch.randn(sum(q_lens), heads, head_dim, generator=g).to(DEVICE, dtype)  # [total_q, heads, dim]
    return q, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices


# (q_lens, prefix_lens): ragged batches with q_len 0, kv_len 1, no prefix, and a prefix of a few hundred
EXTEND_CASES = {
    "ragged": ([5, 0, 40, 1], [0, 3, 70, 0]),
    "long_prefix": ([33, 2], [300, 1]),
    "no_prefix_multiblock": ([70], [0]),
}
GQA = {1: 2, 4: 2, 8: 1}  # group -> kv_heads (keeps the interpreter's program count small)


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """app on a loopback port in a thread; yields its base URL, stops it afterwards."""
    with BackgroundServer(app) as server:
        yield server.url
