"""Notebook views over a `Runtime`: radix tree, serving charts, per-call latency, program graphs, a dashboard.

Each view holds one `WorkbenchWidget` (an anywidget) whose synced traits are data (`sglbench.viz.view_data`),
drawn by the bundled JavaScript (`sglbench.viz.esm`, no CDN); `panels` says which views it draws. A live
view's poller reads only `rt.metrics()`, `rt.cache_snapshot()` and `rt.events.since()`, at most 10 times per
second, and pushes (inside `hold_sync()`) only the traits that changed. Static mode (`static=True`,
`set_static(True)` or SGLBENCH_STATIC=1) starts no thread and refreshes when displayed: what nbval runs.
Every view's `_repr_mimebundle_` carries the server-rendered HTML as text/html (`.html`), so exported
notebooks and nbval see a deterministic snapshot without the widget manager.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets
import pandas as pd
import traitlets

from sglbench.viz import esm
from sglbench.viz.adapters import as_program_graph, is_run
from sglbench.viz.graph import ProgramGraph
from sglbench.viz.latency import CallLatency, RequestTimeline, calls_frame, render_latency
from sglbench.viz.markup import esc, fmt, pct
from sglbench.viz.poller import MIN_INTERVAL, Poller
from sglbench.viz.recorder import MetricsRecorder
from sglbench.viz.report import write_report
from sglbench.viz.stats import render_stats
from sglbench.viz.tree import recently_evicted, render_tree
from sglbench.viz.view_data import (
    MAX_GRAPHS,
    PANELS,
    STATE_DEFAULTS,
    cached_decode,
    calls_data,
    evicted_nodes,
    graphs_data,
    model_name,
    recent_decode_tps,
    series_data,
    summary_data,
    tree_data,
)

GraphSource = Any
"""A program graph, a program run's telemetry or a trace; a sequence of them; or a callable returning either."""

_static_override: bool | None = None
HEARTBEAT_S = 2.0  # seconds between heartbeats of a live view (see WorkbenchWidget.heartbeat)
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


STATIC_NOTE = "static snapshot: refreshed when displayed"
_background = threading.local()  # .active: this poll runs on a poller thread (not for a display or stop())


def _clock() -> str:
    return time.strftime("%H:%M:%S")


class WorkbenchWidget(anywidget.AnyWidget):
    """The one widget class of the workbench: the front-end contract's traits, drawn by the bundled views.

    Everything a view shows is in its traits, so JupyterLab redraws a saved notebook's widget from the state
    it saved (no kernel needed). `push()` is the one writer: it sends only changed traits, in one message.
    """

    _esm = esm.bundle_js()
    _css = esm.bundle_css()
    panels = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)
    summary_line = traitlets.Bool(False).tag(sync=True)
    status = traitlets.Unicode("live").tag(sync=True)
    status_note = traitlets.Unicode("").tag(sync=True)
    summary = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)
    tree = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)
    series = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)
    calls = traitlets.List(default_value=[]).tag(sync=True)
    graphs = traitlets.List(default_value=[]).tag(sync=True)
    progress = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)
    # Wall-clock seconds of the latest poll of a live view, sent every HEARTBEAT_S: the page tells a view whose
    # kernel is gone (a saved notebook reopened, a dead kernel) from one that has nothing new to show.
    heartbeat = traitlets.Float(0.0).tag(sync=True)

    def __init__(self, **kwargs: Any):
        self.lock = threading.RLock()  # one writer at a time: pollers, stop() and displays may race
        super().__init__(**kwargs)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the lock and the sync: every push inside goes out as one message when the block ends."""
        with self.lock, self.hold_sync():
            yield

    def push(self, **traits: Any) -> bool:
        """Set the traits whose value changed; returns whether any did."""
        with self.lock:
            changed = {k: v for k, v in traits.items() if getattr(self, k) != v}
            if changed:
                with self.hold_sync():
                    for key, value in changed.items():
                        setattr(self, key, value)
            return bool(changed)

    def state(self) -> dict[str, Any]:
        """The data traits as one JSON-ready dict (what `esm.static_views_html` draws)."""
        with self.lock:
            return {name: getattr(self, name) for name in STATE_DEFAULTS}

    def __repr__(self) -> str:
        return f"WorkbenchWidget(panels={list(self.panels)!r}, status={self.status!r})"


def _widget_bundle(widget: ipywidgets.DOMWidget) -> dict[str, Any]:
    """A widget's own mime bundle (anywidget returns a (data, metadata) pair, ipywidgets a dict)."""
    bundle = widget._repr_mimebundle_()
    if isinstance(bundle, tuple):
        bundle = bundle[0]
    return dict(bundle or {})


class _Live(ABC):
    """Lifecycle shared by views and the dashboard: static or live mode, a poller driving `poll()`, a status
    the widget shows ("live", "stopped" with a note saying why and when, "static"), reprs."""

    widget: WorkbenchWidget
    static: bool
    _poller: Poller
    _owns_status: bool = True

    @abstractmethod
    def poll(self) -> bool:
        """Bring the widget up to date; returns whether anything was pushed."""

    @property
    @abstractmethod
    def html(self) -> str:
        """The current state as a static HTML snapshot."""

    def _init_live(self, static: bool | None, interval: float) -> None:
        self.static = is_static() if static is None else bool(static)
        self._poller = Poller(self._tick, interval, name=f"sglbench-{type(self).__name__}")

    def _tick(self) -> None:
        """One poll on the poller thread; a failure ends the thread and says so on the widget."""
        try:
            _background.active = True
            self.poll()
            self._beat()
        except Exception as exc:
            self._set_status("stopped", f"stopped at {_clock()}: updates failed ({type(exc).__name__}: {exc})")
            raise
        finally:
            _background.active = False

    def _beat(self) -> None:
        """Send the heartbeat when HEARTBEAT_S have passed since the last one (live views only)."""
        widget = self.widget
        now = time.time()
        if self._owns_status and now - widget.heartbeat >= HEARTBEAT_S:
            widget.push(heartbeat=now)

    def _set_status(self, status: str, note: str = "") -> None:
        if self._owns_status:
            self.widget.push(status=status, status_note=note)

    @property
    def mode(self) -> str:
        """'static' (renders when displayed, no thread) or 'live' (a poller pushes updates)."""
        return "static" if self.static else "live"

    @property
    def live(self) -> bool:
        """Whether the background poller is running now."""
        return self._poller.running

    @property
    def status(self) -> tuple[str, str]:
        """(status, note) as the widget shows them."""
        return self.widget.status, self.widget.status_note

    def start(self):
        """Begin live updates (status "live"); in static mode only refresh once."""
        if self.static:
            self.poll()
            self._set_status("static", STATIC_NOTE)
        else:
            self._poller.start()
            self._set_status("live")
        return self

    def stop(self, reason: str = "stop() was called"):
        """End live updates, leaving the final state shown with status "stopped" and a note saying why."""
        self._poller.stop()
        with contextlib.suppress(Exception):  # e.g. the runtime is gone: the last state stays shown
            self.poll()
        if not self.static:
            self._set_status("stopped", f"stopped at {_clock()}: {reason}")
        return self

    def close(self) -> None:
        """Stop and close the widget (its front-end views disappear)."""
        self._poller.stop()
        self.widget.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        with contextlib.suppress(Exception):  # a view of a runtime that shut down shows its last state
            self.poll()
        bundle = {} if self.static else _widget_bundle(self.widget)
        bundle["text/plain"] = repr(self)
        bundle["text/html"] = self.html
        return bundle


HtmlSource = str | Callable[[], str] | None
"""A view's new HTML snapshot: the markup, a function rendering it when first asked for, or None (unchanged)."""


class _View(_Live):
    """One view: subclasses fingerprint their sources (`_probe`) and turn them into traits and HTML (`_frame`).

    `PANELS` names the workbench panels its own widget draws. Given `widget`, a view pushes into that shared
    widget (a dashboard's) and leaves its status to the owner.
    """

    PANELS: tuple[str, ...] = ()

    def __init__(self, *, static: bool | None, interval: float, autostart: bool,
                 widget: WorkbenchWidget | None = None):
        self._owns_status = widget is None
        self.widget = widget if widget is not None else WorkbenchWidget(panels=list(self.PANELS))
        self.pushes = 0
        self._key: object = _UNSEEN
        self._html_source: HtmlSource = ""
        self._html: str | None = ""
        self._lock = self.widget.lock
        self._init_live(static, interval)
        self.poll()
        if self.static or autostart:
            self.start()
        else:
            self._set_status(*self._idle_status())

    def _idle_status(self) -> tuple[str, str]:
        """The status of a live-mode view that was not started."""
        return "stopped", "not started: call start() for live updates"

    @abstractmethod
    def _probe(self) -> object:
        """A cheap fingerprint of the sources: equal fingerprints mean nothing to redraw."""

    @abstractmethod
    def _frame(self, key: Any) -> tuple[HtmlSource, dict[str, Any]]:
        """The new HTML snapshot (None: unchanged) and the traits for the sources behind `key`."""

    def poll(self) -> bool:
        """Read the sources; push the traits that changed. Returns whether it pushed."""
        with self._lock:
            key = self._probe()
            if key == self._key:
                return False
            self._key = key
            html, traits = self._frame(key)
            if html is not None:
                self._html_source, self._html = html, None
            pushed = self.widget.push(**traits)
            self.pushes += pushed
            return pushed

    @property
    def html(self) -> str:
        """The server-rendered HTML of the current state (a static snapshot; rendered when first asked for)."""
        with self._lock:
            if self._html is None:
                source = self._html_source
                self._html = source() if callable(source) else str(source)
            return self._html


TREE_NODES_PER_S = 2500
"""A live tree of n nodes is sent at most every n / TREE_NODES_PER_S seconds (2,500 nodes: once a second)."""


class RadixTreeView(_View):
    """The radix cache: every node (up to `max_tree_nodes`, the most recently used) with its decoded text,
    drawn zoomable by the front end; nodes evicted since the previous update come as ghosts. The HTML
    snapshot draws `max_nodes` of them as SVG.

    Snapshots are taken without text and only the nodes sent are decoded (with `rt.tokenizer`, on the
    poller thread, each once), so a tree of thousands of nodes costs the engine thread no decoding.
    """

    PANELS = ("tree",)

    def __init__(self, rt: Any, *, max_nodes: int = 200, max_depth: int = 12, max_tree_nodes: int = 5000,
                 static: bool | None = None, interval: float = MIN_INTERVAL, autostart: bool = True,
                 widget: WorkbenchWidget | None = None):
        self.rt = rt
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.max_tree_nodes = max_tree_nodes
        self.snapshot = None
        self._next_frame = 0.0
        decode = getattr(getattr(rt, "tokenizer", None), "decode", None)
        self._decode = None if decode is None else cached_decode(decode)
        self._seq = rt.events.next_seq
        super().__init__(static=static, interval=interval, autostart=autostart, widget=widget)

    def _probe(self) -> object:
        if getattr(_background, "active", False) and time.monotonic() < self._next_frame:
            return self._key  # a big tree is sent less often by the poller (never late for a display)
        m = self.rt.metrics()
        return m.cache, m.cache_evictable, m.cache_protected

    def _frame(self, key: Any) -> tuple[HtmlSource, dict[str, Any]]:
        snap = self.rt.cache_snapshot(with_text=self._decode is None)
        if self.snapshot is not None and snap.version == self.snapshot.version:
            return None, {}
        upto = self.rt.events.next_seq
        evicted = recently_evicted(e for e in self.rt.events.since(self._seq, kinds=("cache.evict",)) if e.seq < upto)
        self._seq = upto
        previous, self.snapshot = self.snapshot, snap
        tree = tree_data(snap, self._decode, evicted_nodes(previous, evicted, snap), max_nodes=self.max_tree_nodes)
        self._next_frame = time.monotonic() + min(len(tree["nodes"]) / TREE_NODES_PER_S, 2.0)

        def html() -> str:
            svg = render_tree(snap, evicted=evicted, previous=previous, max_nodes=self.max_nodes,
                              max_depth=self.max_depth, decode=self._decode)
            return f'<div class="sgl-tree" style="max-height:640px;overflow:auto">{svg}</div>'

        return html, {"tree": tree}


class RequestFeed:
    """Finished requests from a runtime's event log, read incrementally; the views of a dashboard share one.

    `t0` is the arrival time of the first request seen: the serving charts' time origin.
    """

    def __init__(self, events: Any, start_seq: int = 0):
        self.events = events
        self.timeline = RequestTimeline()
        self.t0: float | None = None
        self.finished = 0
        self._seq = start_seq
        self._lock = threading.Lock()

    def update(self) -> int:
        """Read the events logged since the last update; returns how many requests finished so far."""
        with self._lock:
            upto = self.events.next_seq
            if upto != self._seq:
                events = [e for e in self.events.since(self._seq, kinds=("request.",)) if e.seq < upto]
                self._seq = upto
                if self.t0 is None:
                    self.t0 = next((e.time for e in events if e.kind == "request.arrived"), None)
                self.finished += self.timeline.feed(events)
            return self.finished

    @property
    def calls(self) -> tuple[CallLatency, ...]:
        return self.timeline.calls


def _recent_runs(limit: int | None = MAX_GRAPHS) -> list[Any]:
    from sglbench.lang.telemetry import recent_runs

    return recent_runs(limit)


def _runs_key(runs: Iterable[Any]) -> tuple:
    """What of the runs the latency names depend on: which runs, and how many calls each recorded."""
    return tuple((run.program_id, len(run.calls)) for run in runs)


class CacheStatsView(_View):
    """Serving over time: throughput, TTFT/TPOT percentiles, queue, hit rate per window, KV pool split, from a
    `MetricsRecorder` and the request events. The HTML snapshot keeps the hit-rate, cache-token and pool charts."""

    PANELS = ("stats",)

    def __init__(self, rt: Any, *, recorder: MetricsRecorder | None = None, requests: RequestFeed | None = None,
                 width: int = 560, static: bool | None = None, interval: float = MIN_INTERVAL,
                 autostart: bool = True, widget: WorkbenchWidget | None = None):
        self.rt = rt
        self.width = width
        self.recorder = recorder if recorder is not None else MetricsRecorder(rt, track_largest=False)
        self.requests = requests if requests is not None else RequestFeed(rt.events)
        super().__init__(static=static, interval=interval, autostart=autostart, widget=widget)

    def _probe(self) -> object:
        self.recorder.sample()
        finished = self.requests.update()
        samples = self.recorder.samples
        return len(samples), samples[-1].time if samples else None, finished, self.requests.t0

    def _frame(self, key: Any) -> tuple[HtmlSource, dict[str, Any]]:
        samples = self.recorder.samples
        series = series_data(samples, self.requests.calls, self.requests.t0)
        return (lambda: render_stats(samples, self.width)), {"series": series}


class LatencyView(_View):
    """Per-call latency from request events, each call named by its program and gen/select call (from the
    programs' telemetry). The HTML snapshot: summary, e2e histogram, the latest `max_rows` calls."""

    PANELS = ("latency",)

    def __init__(self, rt: Any, *, max_rows: int = 50, width: int = 560, requests: RequestFeed | None = None,
                 runs: Callable[[], Iterable[Any]] | None = None, static: bool | None = None,
                 interval: float = MIN_INTERVAL, autostart: bool = True, widget: WorkbenchWidget | None = None):
        self.rt = rt
        self.max_rows = max_rows
        self.width = width
        self.requests = requests if requests is not None else RequestFeed(rt.events)
        self.runs = runs if runs is not None else (lambda: _recent_runs(None))
        super().__init__(static=static, interval=interval, autostart=autostart, widget=widget)

    @property
    def timeline(self) -> RequestTimeline:
        """The request timeline the calls come from."""
        return self.requests.timeline

    def _probe(self) -> object:
        runs = list(self.runs())
        return self.requests.update(), _runs_key(runs), runs

    def _frame(self, key: Any) -> tuple[HtmlSource, dict[str, Any]]:
        calls = self.requests.calls
        data = calls_data(calls, key[2])
        return (lambda: render_latency(calls, self.max_rows, self.width)), {"calls": data}

    def frame(self) -> pd.DataFrame:
        """Every call seen so far as a DataFrame (see `latency.COLUMNS`)."""
        self.poll()
        return calls_frame(self.requests.calls)


def _item_key(item: Any) -> object:
    """A cheap fingerprint of a graph source item: a run changes as it records states, calls, forks, joins."""
    if is_run(item):
        return (item.program_id, len(item.states), len(item.calls), len(item.forks), len(item.joins),
                item.finished, getattr(item, "error", None))
    return item


class ProgramGraphView(_View):
    """Program graphs: `graphs` may be a graph, a program run's telemetry or a trace, a list of them, or a
    callable polled for fresh ones. The front end gets the latest 24 (with each run's inputs, status and
    branches); the HTML snapshot draws the latest `max_graphs` as layered SVG."""

    PANELS = ("programs",)

    def __init__(self, graphs: GraphSource = None, *, max_graphs: int = 8, static: bool | None = None,
                 interval: float = MIN_INTERVAL, autostart: bool = True, widget: WorkbenchWidget | None = None):
        self.source = graphs
        self.max_graphs = max_graphs
        super().__init__(static=static, interval=interval, autostart=autostart and callable(graphs), widget=widget)

    def _idle_status(self) -> tuple[str, str]:
        return ("static", "a fixed graph") if not callable(self.source) else super()._idle_status()

    @property
    def items(self) -> tuple[Any, ...]:
        """What the source gives now (the latest 24): graphs, runs or traces."""
        value = self.source() if callable(self.source) else self.source
        if value is None:
            return ()
        single = isinstance(value, ProgramGraph) or is_run(value) or not isinstance(value, Iterable)
        return ((value,) if single else tuple(value))[-MAX_GRAPHS:]

    @property
    def graphs(self) -> tuple[ProgramGraph, ...]:
        """The graphs the HTML snapshot shows (the latest `max_graphs`)."""
        return tuple(as_program_graph(item) for item in self.items[-self.max_graphs:])

    def _probe(self) -> object:
        items = self.items
        return tuple(_item_key(i) for i in items), items

    def _frame(self, key: Any) -> tuple[HtmlSource, dict[str, Any]]:
        items = key[1]
        shown = tuple(as_program_graph(item) for item in items[-self.max_graphs:])

        def html() -> str:
            if not shown:
                return '<p class="sgl-empty">No program graphs yet.</p>'
            return '<div class="sgl-graphs">' + "".join(f"<div>{g.to_svg()}</div>" for g in shown) + "</div>"

        return html, {"graphs": graphs_data(items)}


class _EngineSummary(_View):
    """One line of engine state: queue, pool, cache, hit rate (and, for the front end, recent decode rate)."""

    def __init__(self, rt: Any, *, recorder: MetricsRecorder, static: bool | None, interval: float,
                 widget: WorkbenchWidget | None = None):
        self.rt = rt
        self.recorder = recorder
        info = getattr(rt, "model_info", None)
        self.model = model_name(info().model_path) if callable(info) else ""
        super().__init__(static=static, interval=interval, autostart=False, widget=widget)

    def _probe(self) -> object:
        samples = self.recorder.samples
        return self.rt.metrics(), len(samples), samples[-1].time if samples else None

    def _frame(self, key: Any) -> tuple[HtmlSource, dict[str, Any]]:
        m = key[0]
        line = (f"running {m.num_running} · waiting {m.num_waiting} · finished {fmt(m.num_finished)} · "
                f"steps {fmt(m.num_steps)} · KV pool {fmt(m.pool_free)} / {fmt(m.pool_slots)} free · "
                f"cached {fmt(m.cache_evictable + m.cache_protected)} (locked {fmt(m.cache_protected)}) · "
                f"hit rate {pct(m.hit_rate)} · retractions {fmt(m.num_retractions)}")
        html = f'<div class="sgl-engine-summary"><b>engine</b> · {esc(line)}</div>'
        return html, {"summary": summary_data(m, recent_decode_tps(self.recorder.samples), self.model)}


def _batch_progress() -> dict[str, Any] | None:
    """The latest `run_batch`'s progress as the `progress` trait (None before any batch)."""
    from sglbench.lang.progress import current_batch_progress

    p = current_batch_progress()
    if p is None:
        return None
    return {"name": p.name, "done": p.done, "total": p.total, "failed": p.failed, "cancelled": p.cancelled,
            "elapsed_s": round(p.elapsed_s, 1), "rate": None if p.rate is None else float(f"{p.rate:.3g}"),
            "eta_s": None if p.eta_s is None else round(p.eta_s, 1)}


class Dashboard(_Live):
    """Engine summary above tabs (radix tree, serving, latency, programs) in one widget, driven by one poller.

    One per runtime (`rt.dashboard()`): `%%sgl --live` cells display it without stopping it; it stops when
    the runtime shuts down, and says so.
    """

    TABS = ("Radix tree", "Serving", "Latency", "Programs")
    """Section titles of the HTML snapshot (the front end titles its tabs itself)."""

    def __init__(self, rt: Any, graphs: GraphSource = None, *, max_nodes: int = 200,
                 static: bool | None = None, interval: float = MIN_INTERVAL, autostart: bool = True):
        self.rt = rt
        self._init_live(static, interval)
        self.widget = WorkbenchWidget(panels=list(PANELS), summary_line=True)
        self.recorder = MetricsRecorder(rt)
        self.requests = RequestFeed(rt.events)
        managed = dict(static=self.static, interval=interval, widget=self.widget)
        self.summary = _EngineSummary(rt, recorder=self.recorder, **managed)
        self.tree = RadixTreeView(rt, max_nodes=max_nodes, autostart=False, **managed)
        self.stats = CacheStatsView(rt, recorder=self.recorder, requests=self.requests, autostart=False, **managed)
        self.latency = LatencyView(rt, requests=self.requests, autostart=False, **managed)
        self.programs = ProgramGraphView(graphs, autostart=False, **managed)
        self.views: tuple[_View, ...] = (self.summary, self.tree, self.stats, self.latency, self.programs)
        self.poll()
        if self.static or autostart:
            self.start()
        else:
            self._set_status("stopped", "not started: call start() for live updates")

    def poll(self) -> bool:
        """Poll every view (one message for all their changes); returns whether any pushed."""
        with self.widget.batch():
            self.recorder.sample()
            pushed = [v.poll() for v in self.views]
            pushed.append(self.widget.push(progress=_batch_progress()))
            return any(pushed)

    @property
    def html(self) -> str:
        """All sections one after another (tabs need the widget manager; a static snapshot does not)."""
        sections = "".join(f"<h4>{esc(title)}</h4>{view.html}" for title, view in zip(self.TABS, self.views[1:]))
        return f'<div class="sgl-dashboard">{self.summary.html}{sections}</div>'

    def report(self, path: str | Path, title: str = "sglbench report") -> Path:
        """Write a self-contained HTML report with this dashboard's metrics history and program graphs."""
        return write_report(self.rt, path, graphs=list(self.programs.items), metrics_history=self.recorder,
                            title=title)

    def __repr__(self) -> str:
        return f"Dashboard(mode={self.mode!r}, tabs={list(self.TABS)})"
