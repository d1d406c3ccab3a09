"""Views for programs run on remote backends (`RuntimeEndpoint`, `OpenAI`), which have no engine event log:
the backend's client-side prompt tree drawn as a radix tree, and per-call latency from program telemetry.

    PromptTreeView(backend)          # live: the prompts sent, shared prefixes, in-flight paths locked
    RemoteLatencyView()              # live: latency of the recent runs' gen/select calls
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sglbench.viz.latency import CallLatency, render_latency
from sglbench.viz.poller import MIN_INTERVAL
from sglbench.viz.tree import render_tree
from sglbench.viz.view_data import calls_data, tree_data
from sglbench.viz.widgets import HtmlSource, _View


def latencies_from_runs(runs: Iterable[Any]) -> tuple[CallLatency, ...]:
    """One `CallLatency` per gen/select call of the runs (`ProgramTelemetry`, e.g. `recent_runs()`), in
    start order; a call's requests count as one (queued = its first request sent, finished = its last)."""
    calls = sorted((c for run in runs for c in run.calls), key=lambda c: c.queued)
    t0 = calls[0].queued if calls else 0.0
    out = []
    for c in calls:
        decode = None if c.first_token is None else c.finished - c.first_token
        out.append(CallLatency(
            program=c.program_id, rid=c.rids[0] if c.rids else "", prompt_tokens=c.prompt_tokens,
            cached_tokens=c.cached_tokens, completion_tokens=c.completion_tokens, finish_reason=None,
            start_s=c.queued - t0, queue_s=None if c.scheduled is None else c.scheduled - c.queued,
            ttft_s=None if c.first_token is None else c.first_token - c.queued, decode_s=decode,
            e2e_s=c.finished - c.queued,
            tokens_per_s=(c.completion_tokens - 1) / decode if decode and c.completion_tokens > 1 else None,
        ))
    return tuple(out)


class PromptTreeView(_View):
    """A remote backend's `PromptTree` as an SVG radix tree (sizes in characters; hit rate is the server's)."""

    def __init__(self, backend: Any, *, max_nodes: int = 200, max_depth: int = 12, static: bool | None = None,
                 interval: float = MIN_INTERVAL, autostart: bool = True):
        self.tree = backend.prompt_tree
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        super().__init__(static=static, interval=interval, autostart=autostart)

    def _probe(self) -> object:
        return self.tree.version

    PANELS = ("tree",)

    def _frame(self, key: Any) -> tuple[HtmlSource, dict[str, Any]]:
        snapshot = self.tree.snapshot()

        def html() -> str:
            svg = render_tree(snapshot, max_nodes=self.max_nodes, max_depth=self.max_depth)
            return f'<div class="sgl-tree" style="max-height:640px;overflow:auto">{svg}</div>'

        return html, {"tree": tree_data(snapshot, None)}


class RemoteLatencyView(_View):
    """Per-call latency of recent program runs, from their telemetry (client-side timings where the server
    reports none)."""

    def __init__(self, runs: Callable[[], Iterable[Any]] | None = None, *, max_rows: int = 50, width: int = 560,
                 static: bool | None = None, interval: float = MIN_INTERVAL, autostart: bool = True):
        if runs is None:
            from sglbench.lang.telemetry import recent_runs as runs
        self.runs = runs
        self.max_rows = max_rows
        self.width = width
        super().__init__(static=static, interval=interval, autostart=autostart)

    def _probe(self) -> object:
        return tuple((run.program_id, len(run.calls)) for run in self.runs())

    PANELS = ("latency",)

    def _frame(self, key: Any) -> tuple[HtmlSource, dict[str, Any]]:
        runs = list(self.runs())
        calls = latencies_from_runs(runs)
        return (lambda: render_latency(calls, self.max_rows, self.width)), {"calls": calls_data(calls, runs)}
