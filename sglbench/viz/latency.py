"""Per-call latency from request events: a record per finished request, a DataFrame, an e2e histogram.

Times are event times (wall clock): queue = scheduled - arrived, ttft = first token - arrived,
decode = finished - first token, e2e = finished - arrived. A retracted request keeps its first
scheduled time. tokens_per_s is the decode rate, (completion_tokens - 1) / decode_s.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields

import pandas as pd

from sglbench.runtime.events import Event
from sglbench.viz.charts import histogram
from sglbench.viz.markup import TABLE_CSS, esc, fmt, table


@dataclass(frozen=True)
class CallLatency:
    """One finished request's sizes and timings (seconds; None where the milestone never happened)."""

    program: str | None
    rid: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: str | None
    start_s: float  # arrival, relative to the first arrival the timeline saw
    queue_s: float | None
    ttft_s: float | None
    decode_s: float | None
    e2e_s: float
    tokens_per_s: float | None


COLUMNS = tuple(f.name for f in fields(CallLatency))


class RequestTimeline:
    """Folds request events into one `CallLatency` per finished request; feed it incrementally."""

    def __init__(self, max_calls: int = 100_000):
        self._open: dict[str, dict[str, float]] = {}
        self._calls: deque[CallLatency] = deque(maxlen=max_calls)
        self._t0: float | None = None

    def feed(self, events: Iterable[Event]) -> int:
        """Consume events (any kinds, in sequence order); returns how many requests finished among them."""
        finished = 0
        for e in events:
            rid = e.data.get("rid")
            if e.kind == "request.arrived":
                self._open[rid] = {"arrived": e.time}
                if self._t0 is None:
                    self._t0 = e.time
            elif e.kind in ("request.scheduled", "request.first_token") and rid in self._open:
                self._open[rid].setdefault(e.kind.removeprefix("request."), e.time)
            elif e.kind == "request.finished" and rid in self._open:
                self._calls.append(self._record(e, self._open.pop(rid)))
                finished += 1
        return finished

    def _record(self, e: Event, marks: dict[str, float]) -> CallLatency:
        arrived, end = marks["arrived"], e.time
        scheduled, first = marks.get("scheduled"), marks.get("first_token")
        completion = int(e.data.get("completion_tokens", 0))
        decode = None if first is None else end - first
        return CallLatency(
            program=e.data.get("program_id"),
            rid=str(e.data["rid"]),
            prompt_tokens=int(e.data.get("prompt_tokens", 0)),
            cached_tokens=int(e.data.get("cached_tokens", 0)),
            completion_tokens=completion,
            finish_reason=e.data.get("finish_reason"),
            start_s=arrived - (self._t0 or arrived),
            queue_s=None if scheduled is None else scheduled - arrived,
            ttft_s=None if first is None else first - arrived,
            decode_s=decode,
            e2e_s=end - arrived,
            tokens_per_s=(completion - 1) / decode if decode and completion > 1 else None,
        )

    @property
    def calls(self) -> tuple[CallLatency, ...]:
        """Finished requests in finishing order (the most recent `max_calls`)."""
        return tuple(self._calls)


def call_latencies(events: Iterable[Event]) -> tuple[CallLatency, ...]:
    """One record per request whose arrival and finish are both among `events`."""
    timeline = RequestTimeline()
    timeline.feed(events)
    return timeline.calls


def calls_frame(calls: Sequence[CallLatency]) -> pd.DataFrame:
    """A DataFrame with one row per call, columns `COLUMNS`, ordered by arrival."""
    frame = pd.DataFrame([astuple(c) for c in calls], columns=list(COLUMNS))
    return frame.sort_values("start_s", kind="stable").reset_index(drop=True)


def latency_table(events: Iterable[Event]) -> pd.DataFrame:
    """Per-call latency DataFrame built from request events (e.g. `rt.events.since(0)`)."""
    return calls_frame(call_latencies(events))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def latency_histogram(calls: Sequence[CallLatency], bins: int = 20, width: int = 560) -> str:
    """SVG histogram of end-to-end latency."""
    return histogram([c.e2e_s for c in calls], title="End-to-end latency per call", bins=bins, width=width)


def render_latency(calls: Sequence[CallLatency], max_rows: int = 50, width: int = 560) -> str:
    """Summary line, e2e histogram and a table of the most recent `max_rows` calls, as one HTML fragment."""
    e2e = [c.e2e_s for c in calls]
    ttft = [c.ttft_s for c in calls if c.ttft_s is not None]
    rates = [c.tokens_per_s for c in calls if c.tokens_per_s is not None]
    summary = (f"{len(calls):,} calls · e2e p50 {fmt(percentile(e2e, 50))} s, p90 {fmt(percentile(e2e, 90))} s, "
               f"p99 {fmt(percentile(e2e, 99))} s · ttft p50 {fmt(percentile(ttft, 50))} s · "
               f"decode {fmt(sum(rates) / len(rates) if rates else None)} tok/s mean")
    shown = list(calls)[-max_rows:]
    note = f" (latest {len(shown)} of {len(calls):,})" if len(shown) < len(calls) else ""
    rows = [astuple(c) for c in shown]
    return (f'<div class="sgl-latency"><style>{TABLE_CSS}</style><p class="sgl-summary">{esc(summary)}</p>'
            f"<div>{latency_histogram(calls, width=width)}</div>"
            f'<p class="sgl-caption">Per call{esc(note)}</p><div style="overflow-x:auto">{table(COLUMNS, rows, cls="sgl-table sgl-calls")}</div></div>')
