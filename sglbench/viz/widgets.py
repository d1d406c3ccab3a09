"""Notebook views over a `Runtime`: radix tree, cache stats, per-call latency, program graphs, a dashboard.

Each view is an `ipywidgets.HTML` holding a rendered snapshot. A live view's poller reads only
`rt.metrics()`, `rt.cache_snapshot()` and `rt.events.since()`, at most 10 times per second, and pushes
(inside `hold_sync()`) only when what it shows changed. Static mode (`static=True`, `set_static(True)`
or the environment variable SGLBENCH_STATIC=1) starts no thread and renders when displayed: what nbval
runs. Every view's `_repr_mimebundle_` carries a text/html snapshot, so exported notebooks show
something without the widget manager (which nbconvert would fetch from the internet).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets
import pandas as pd

from sglbench.viz.graph import ProgramGraph
from sglbench.viz.latency import RequestTimeline, calls_frame, render_latency
from sglbench.viz.markup import esc, fmt, pct
from sglbench.viz.poller import MIN_INTERVAL, Poller
from sglbench.viz.recorder import MetricsRecorder
from sglbench.viz.report import write_report
from sglbench.viz.stats import render_stats
from sglbench.viz.tree import recently_evicted, render_tree

GraphSource = ProgramGraph | Sequence[ProgramGraph] | Callable[[], ProgramGraph | Sequence[ProgramGraph]] | None

_static_override: bool | None = None
_UNSEEN = object()  # a probe key no real key equals: the first poll always renders


def set_static(flag: bool | None = True) -> None:
    """Make views created afterwards static (True) or live (False); None defers to SGLBENCH_STATIC again."""
    global _static_override
    _static_override = flag


def is_static() -> bool:
    """Whether new views default to static mode (set_static, else the SGLBENCH_STATIC environment variable)."""
    if _static_override is not None:
        return _static_override
    return os.environ.get("SGLBENCH_STATIC", "").strip().lower() in ("1", "true", "yes", "on")


class _Live(ABC):
    """Lifecycle shared by views and the dashboard: static or live mode, a poller driving `poll()`, reprs."""

    widget: ipywidgets.DOMWidget
    static: bool
    _poller: Poller

    @abstractmethod
    def poll(self) -> bool:
        """Bring the widget up to date; returns whether anything was pushed."""

    @property
    @abstractmethod
    def html(self) -> str:
        """The current state as a static HTML snapshot."""

    def _init_live(self, static: bool | None, interval: float) -> None:
        self.static = is_static() if static is None else bool(static)
        self._poller = Poller(self.poll, interval, name=f"sglbench-{type(self).__name__}")

    @property
    def mode(self) -> str:
        """'static' (renders when displayed, no thread) or 'live' (a poller pushes updates)."""
        return "static" if self.static else "live"

    @property
    def live(self) -> bool:
        """Whether the background poller is running now."""
        return self._poller.running

    def start(self):
        """Begin live updates; in static mode only refresh once."""
        if self.static:
            self.poll()
        else:
            self._poller.start()
        return self

    def stop(self):
        """End live updates, leaving the final state shown."""
        self._poller.stop()
        self.poll()
        return self

    def close(self) -> None:
        """Stop and close the widget (its front-end views disappear)."""
        self._poller.stop()
        self.widget.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        self.poll()
        bundle = {} if self.static else dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = repr(self)
        bundle["text/html"] = self.html
        return bundle


class _View(_Live):
    """One `ipywidgets.HTML`; subclasses say how to fingerprint their sources and how to render them."""

    def __init__(self, *, static: bool | None, interval: float, autostart: bool):
        self.widget = ipywidgets.HTML()
        self.pushes = 0
        self._key: object = _UNSEEN
        self._lock = threading.Lock()
        self._init_live(static, interval)
        self.poll()
        if autostart and not self.static:
            self.start()

    @abstractmethod
    def _probe(self) -> object:
        """A cheap fingerprint of the sources: equal fingerprints mean nothing to redraw."""

    @abstractmethod
    def _render(self, key: Any) -> str | None:
        """New HTML for the sources behind `key`, or None when nothing visible changed."""

    def poll(self) -> bool:
        """Read the sources; re-render and push only if they changed. Returns whether it pushed."""
        with self._lock:
            key = self._probe()
            if key == self._key:
                return False
            self._key = key
            html = self._render(key)
            if html is None or html == self.widget.value:
                return False
            with self.widget.hold_sync():
                self.widget.value = html
            self.pushes += 1
            return True

    @property
    def html(self) -> str:
        """The HTML currently shown (a static snapshot)."""
        return self.widget.value


class RadixTreeView(_View):
    """The radix cache as an SVG tree; nodes evicted since the previous frame are drawn as dashed ghosts.

    Snapshots are taken without text and only the drawn nodes are decoded (with `rt.tokenizer`, on the
    poller thread), so a tree of thousands of nodes costs the engine thread no decoding.
    """

    def __init__(self, rt: Any, *, max_nodes: int = 200, max_depth: int = 12, static: bool | None = None,
                 interval: float = MIN_INTERVAL, autostart: bool = True):
        self.rt = rt
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.snapshot = None
        self._decode = getattr(getattr(rt, "tokenizer", None), "decode", None)
        self._seq = rt.events.next_seq
        super().__init__(static=static, interval=interval, autostart=autostart)

    def _probe(self) -> object:
        m = self.rt.metrics()
        return m.cache, m.cache_evictable, m.cache_protected

    def _render(self, key: Any) -> str | None:
        snap = self.rt.cache_snapshot(with_text=self._decode is None)
        if self.snapshot is not None and snap.version == self.snapshot.version:
            return None
        upto = self.rt.events.next_seq
        evicted = recently_evicted(e for e in self.rt.events.since(self._seq, kinds=("cache.evict",)) if e.seq < upto)
        self._seq = upto
        previous, self.snapshot = self.snapshot, snap
        svg = render_tree(snap, evicted=evicted, previous=previous, max_nodes=self.max_nodes,
                          max_depth=self.max_depth, decode=self._decode)
        return f'<div class="sgl-tree" style="max-height:640px;overflow:auto">{svg}</div>'


class CacheStatsView(_View):
    """Hit rate, cache token counters and KV pool occupancy over time, from a `MetricsRecorder`."""

    def __init__(self, rt: Any, *, recorder: MetricsRecorder | None = None, width: int = 560,
                 static: bool | None = None, interval: float = MIN_INTERVAL, autostart: bool = True):
        self.rt = rt
        self.width = width
        self.recorder = recorder if recorder is not None else MetricsRecorder(rt, track_largest=False)
        super().__init__(static=static, interval=interval, autostart=autostart)

    def _probe(self) -> object:
        self.recorder.sample()
        samples = self.recorder.samples
        return len(samples), samples[-1].time if samples else None

    def _render(self, key: Any) -> str:
        return render_stats(self.recorder.samples, self.width)


class LatencyView(_View):
    """Per-call latency from request events: summary, e2e histogram, the latest calls in a table."""

    def __init__(self, rt: Any, *, max_rows: int = 50, width: int = 560, static: bool | None = None,
                 interval: float = MIN_INTERVAL, autostart: bool = True):
        self.rt = rt
        self.max_rows = max_rows
        self.width = width
        self.timeline = RequestTimeline()
        self._seq = 0
        super().__init__(static=static, interval=interval, autostart=autostart)

    def _probe(self) -> object:
        return self.rt.events.next_seq

    def _render(self, key: Any) -> str | None:
        events = [e for e in self.rt.events.since(self._seq, kinds=("request.",)) if e.seq < key]
        self._seq = key
        if not self.timeline.feed(events) and self.widget.value:
            return None
        return render_latency(self.timeline.calls, self.max_rows, self.width)

    def frame(self) -> pd.DataFrame:
        """Every call seen so far as a DataFrame (see `latency.COLUMNS`)."""
        self.poll()
        return calls_frame(self.timeline.calls)


class ProgramGraphView(_View):
    """Program graphs as layered SVG; `graphs` may be a graph, a list, or a callable polled for fresh ones."""

    def __init__(self, graphs: GraphSource = None, *, max_graphs: int = 8, static: bool | None = None,
                 interval: float = MIN_INTERVAL, autostart: bool = True):
        self.source = graphs
        self.max_graphs = max_graphs
        super().__init__(static=static, interval=interval, autostart=autostart and callable(graphs))

    @property
    def graphs(self) -> tuple[ProgramGraph, ...]:
        """The graphs shown (the latest `max_graphs`)."""
        value = self.source() if callable(self.source) else self.source
        if value is None:
            return ()
        return ((value,) if isinstance(value, ProgramGraph) else tuple(value))[-self.max_graphs:]

    def _probe(self) -> object:
        return self.graphs

    def _render(self, key: Any) -> str:
        if not key:
            return '<p class="sgl-empty">No program graphs yet.</p>'
        return '<div class="sgl-graphs">' + "".join(f"<div>{g.to_svg()}</div>" for g in key) + "</div>"


class _EngineSummary(_View):
    """One line of engine state: queue, pool, cache, hit rate."""

    def __init__(self, rt: Any, *, static: bool | None, interval: float):
        self.rt = rt
        super().__init__(static=static, interval=interval, autostart=False)

    def _probe(self) -> object:
        return self.rt.metrics()

    def _render(self, key: Any) -> str:
        m = key
        line = (f"running {m.num_running} · waiting {m.num_waiting} · finished {fmt(m.num_finished)} · "
                f"steps {fmt(m.num_steps)} · KV pool {fmt(m.pool_free)} / {fmt(m.pool_slots)} free · "
                f"cached {fmt(m.cache_evictable + m.cache_protected)} (locked {fmt(m.cache_protected)}) · "
                f"hit rate {pct(m.hit_rate)} · retractions {fmt(m.num_retractions)}")
        return f'<div class="sgl-engine-summary"><b>engine</b> · {esc(line)}</div>'


class Dashboard(_Live):
    """Engine summary above tabs (radix tree, cache stats, latency, programs), all driven by one poller."""

    TABS = ("Radix tree", "Cache stats", "Latency", "Programs")

    def __init__(self, rt: Any, graphs: GraphSource = None, *, max_nodes: int = 200,
                 static: bool | None = None, interval: float = MIN_INTERVAL, autostart: bool = True):
        self.rt = rt
        self._init_live(static, interval)
        self.recorder = MetricsRecorder(rt)
        managed = dict(static=self.static, interval=interval, autostart=False)
        self.summary = _EngineSummary(rt, static=self.static, interval=interval)
        self.tree = RadixTreeView(rt, max_nodes=max_nodes, **managed)
        self.stats = CacheStatsView(rt, recorder=self.recorder, **managed)
        self.latency = LatencyView(rt, **managed)
        self.programs = ProgramGraphView(graphs, **managed)
        self.views: tuple[_View, ...] = (self.summary, self.tree, self.stats, self.latency, self.programs)
        tabs = ipywidgets.Tab(children=[v.widget for v in self.views[1:]])
        tabs.titles = self.TABS
        self.widget = ipywidgets.VBox([self.summary.widget, tabs])
        if autostart and not self.static:
            self.start()

    def poll(self) -> bool:
        """Poll every view; returns whether any pushed."""
        return any([v.poll() for v in self.views])

    @property
    def html(self) -> str:
        """All sections one after another (tabs need the widget manager; a static snapshot does not)."""
        sections = "".join(f"<h4>{esc(title)}</h4>{view.html}" for title, view in zip(self.TABS, self.views[1:]))
        return f'<div class="sgl-dashboard">{self.summary.html}{sections}</div>'

    def close(self) -> None:
        """Stop and close the dashboard and every view's widget."""
        super().close()
        for view in self.views:
            view.widget.close()

    def report(self, path: str | Path, title: str = "sglbench report") -> Path:
        """Write a self-contained HTML report with this dashboard's metrics history and program graphs."""
        return write_report(self.rt, path, graphs=list(self.programs.graphs), metrics_history=self.recorder,
                            title=title)

    def __repr__(self) -> str:
        return f"Dashboard(mode={self.mode!r}, tabs={list(self.TABS)})"
