"""Cache statistics over time from a series of `EngineMetrics` samples, as inline SVG charts.

Counters in the samples are cumulative, so any window's hit rate is a difference of two samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from sglbench.runtime.records import EngineMetrics
from sglbench.viz.charts import Series, line_chart
from sglbench.viz.markup import pct

Point = tuple[float, float]


def hit_rate_series(samples: Sequence[EngineMetrics]) -> tuple[tuple[Point, ...], tuple[Point, ...]]:
    """(cumulative hit rate, per-interval hit rate) against seconds since the first sample.

    An interval without queried tokens has no rate and is left out of the second series.
    """
    if not samples:
        return (), ()
    t0 = samples[0].time
    cumulative = tuple((m.time - t0, m.cache.hit_rate) for m in samples)
    window = []
    for prev, cur in pairwise(samples):
        delta = cur.cache - prev.cache
        if delta.query_tokens > 0:
            window.append((cur.time - t0, delta.hit_rate))
    return cumulative, tuple(window)


def hit_rate_chart(samples: Sequence[EngineMetrics], width: int = 560) -> str:
    """Hit rate over time: cumulative and per sampling interval."""
    cumulative, window = hit_rate_series(samples)
    return line_chart(
        [Series("cumulative", cumulative, "#1c7ed6"), Series("per interval", window, "#f59f00")],
        title="Cache hit rate", y_max=1.0, y_fmt=pct, width=width, cls="sgl-chart sgl-hit-rate",
    )


def token_chart(samples: Sequence[EngineMetrics], width: int = 560) -> str:
    """Cumulative prompt tokens queried against the cache, served from it, inserted and evicted."""
    t0 = samples[0].time if samples else 0.0

    def line(name: str, color: str, field: str) -> Series:
        return Series(name, tuple((m.time - t0, float(getattr(m.cache, field))) for m in samples), color)

    return line_chart(
        [line("query", "#495057", "query_tokens"), line("hit", "#2f9e44", "hit_tokens"),
         line("inserted", "#1c7ed6", "inserted_tokens"), line("evicted", "#e03131", "evicted_tokens")],
        title="Cache tokens (cumulative)", width=width, cls="sgl-chart sgl-cache-tokens",
    )


def pool_chart(samples: Sequence[EngineMetrics], width: int = 560) -> str:
    """KV pool occupancy stacked: cached and locked, cached and evictable, held by running requests, free."""
    t0 = samples[0].time if samples else 0.0

    def band(name: str, color: str, value) -> Series:
        return Series(name, tuple((m.time - t0, float(value(m))) for m in samples), color)

    return line_chart(
        [band("cached, locked", "#f76707", lambda m: m.cache_protected),
         band("cached, evictable", "#1c7ed6", lambda m: m.cache_evictable),
         band("running requests", "#ae3ec9", _running_slots),
         band("free", "#dee2e6", lambda m: m.pool_free)],
        title="KV pool slots", stacked=True, width=width, cls="sgl-chart sgl-pool",
    )


def _running_slots(m: EngineMetrics) -> int:
    """Slots held by running requests beyond the cache: the pool invariant's remainder."""
    return m.pool_slots - m.pool_free - m.cache_evictable - m.cache_protected


def render_stats(samples: Sequence[EngineMetrics], width: int = 560) -> str:
    """The three cache charts in one `<div>` (a well-formed fragment)."""
    charts = (hit_rate_chart(samples, width), token_chart(samples, width), pool_chart(samples, width))
    return '<div class="sgl-stats">' + "".join(f"<div>{c}</div>" for c in charts) + "</div>"
