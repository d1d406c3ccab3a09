"""Cache hit rates of a set of requests: the measured one and what a perfect, infinite cache would serve.

The measured rate counts each request's first lookup only. The engine's own counters also count the
lookups of a request that went back to the queue (retracted, or retokenized by jump-forward), which
find the request's own earlier tokens; that inflates them beyond any cache's reach.

Each request asks the cache for its first `query_len` tokens (the engine asks for a prompt's tokens but
the last, or up to where prompt logprobs start) and leaves the KV of all its `tokens` behind (prompt and
generated text). A perfect cache computes every distinct prefix once:

    A  [s] The capital of France is            queries 5 tokens, generates " Paris." and holds 7
    B  [s] The capital of Spain is             queries 5: 4 hits ([s] The capital of)
    C  [s] The capital of France is Paris and  queries 7: 7 hits (A's tokens, generated " Paris" too)

A queried token (a prefix p of some query) is a miss only if p is new: no request queried it before and
no request produced it beyond its own query (generated, or a prompt's last token). In the best order
(a request that produces p beyond its query runs before those that query p) each queried prefix misses
at most once, and only if no request produces it, so the optimal hit rate is

    1 - (distinct queried prefixes that no request produces beyond its query) / (queried tokens).

For prompts alone this is the fraction of prompt tokens covered by the longest common prefix with an
earlier prompt, whatever the order. Generated text counts because the engine caches it too: a chat's
next turn finds the previous answer in the cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_QUERIED = 1  # the prefix ends inside some request's query
_PRODUCED = 2  # the prefix ends after some request's query: its KV exists without a cache lookup


@dataclass(frozen=True)
class RequestRecord:
    """One request as the cache sees it: every token it holds KV for, how many it looked up first,
    and how many of those the cache served at that first lookup."""

    tokens: tuple[int, ...]
    query_len: int
    cached: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.query_len <= len(self.tokens):
            raise ValueError(f"query_len {self.query_len} outside 0..{len(self.tokens)}")
        if self.cached < 0:
            raise ValueError(f"cached must be >= 0, got {self.cached}")


def hit_rate(records: Iterable[RequestRecord]) -> float:
    """Served over queried tokens at each request's first lookup (0.0 if none queried)."""
    records = list(records)
    queried = sum(r.query_len for r in records)
    return sum(min(r.cached, r.query_len) for r in records) / queried if queried else 0.0


def optimal_hit_rate(records: Iterable[RequestRecord]) -> float:
    """Hits a perfect infinite cache would get over the queried tokens of records (0.0 if none)."""
    children: dict[tuple[int, int], int] = {}  # (node, token) -> child node; node 0 is the empty prefix
    flags = bytearray(1)
    queried = 0
    for record in records:
        queried += record.query_len
        node = 0
        for depth, token in enumerate(record.tokens, start=1):
            child = children.get((node, token))
            if child is None:
                child = children[(node, token)] = len(flags)
                flags.append(0)
            node = child
            flags[node] |= _QUERIED if depth <= record.query_len else _PRODUCED
    misses = sum(1 for f in flags if f == _QUERIED)
    return 1.0 - misses / queried if queried else 0.0
