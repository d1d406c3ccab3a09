"""Widgets and reports over a Runtime: they read snapshots and events, never mutate the engine.

Modules load on first use (anywidget, ipywidgets, pandas), so `import sglbench.viz` stays light and needs no torch.

    from sglbench.viz import Dashboard, write_report
    dash = Dashboard(rt)                 # live radix tree, serving charts, latency, program graphs
    write_report(rt, "run.html", metrics_history=dash.recorder)

Views are anywidgets (`WorkbenchWidget`) whose traits are data (`sglbench.viz.view_data`) drawn by the bundled
JavaScript (`sglbench.viz.esm`); the same code draws the report.
"""

from __future__ import annotations

from sglbench.lazy import lazy_attributes

_LAZY = {
    "render_tree": "sglbench.viz.tree",
    "recently_evicted": "sglbench.viz.tree",
    "render_stats": "sglbench.viz.stats",
    "hit_rate_series": "sglbench.viz.stats",
    "CallLatency": "sglbench.viz.latency",
    "RequestTimeline": "sglbench.viz.latency",
    "call_latencies": "sglbench.viz.latency",
    "calls_frame": "sglbench.viz.latency",
    "latency_table": "sglbench.viz.latency",
    "latency_histogram": "sglbench.viz.latency",
    "render_latency": "sglbench.viz.latency",
    "GraphNode": "sglbench.viz.graph",
    "ProgramGraph": "sglbench.viz.graph",
    "render_graph": "sglbench.viz.graph",
    "MetricsRecorder": "sglbench.viz.recorder",
    "Poller": "sglbench.viz.poller",
    "set_static": "sglbench.viz.widgets",
    "is_static": "sglbench.viz.widgets",
    "RadixTreeView": "sglbench.viz.widgets",
    "CacheStatsView": "sglbench.viz.widgets",
    "LatencyView": "sglbench.viz.widgets",
    "ProgramGraphView": "sglbench.viz.widgets",
    "Dashboard": "sglbench.viz.widgets",
    "WorkbenchWidget": "sglbench.viz.widgets",
    "tree_data": "sglbench.viz.view_data",
    "series_data": "sglbench.viz.view_data",
    "calls_data": "sglbench.viz.view_data",
    "graphs_data": "sglbench.viz.view_data",
    "summary_data": "sglbench.viz.view_data",
    "static_views_html": "sglbench.viz.esm",
    "write_report": "sglbench.viz.report",
    "graph_from_trace": "sglbench.viz.adapters",
    "graph_from_telemetry": "sglbench.viz.adapters",
    "recent_program_graphs": "sglbench.viz.adapters",
    "recent_program_runs": "sglbench.viz.adapters",
    "render_report": "sglbench.viz.report",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes("sglbench.viz", _LAZY, globals())
