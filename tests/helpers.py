"""Shared test utilities: reference greedy decoding with transformers, pool-leak checks."""

from __future__ import annotations

import torch


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
