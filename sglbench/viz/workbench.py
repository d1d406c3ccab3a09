"""What `Runtime.dashboard()` and `Runtime.report()` run. `sglbench/__init__.py` registers these two functions
by name (`sglbench.runtime.extensions`), so the runtime reaches the workbench without importing it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sglbench.viz.adapters import recent_program_runs
from sglbench.viz.report import write_report
from sglbench.viz.widgets import Dashboard, GraphSource

DASHBOARD = "sglbench.viz.dashboard"
"""The key of a runtime's dashboard in `rt.attachments` (kept on the runtime, so it dies with it)."""


def dashboard(rt: Any, graphs: GraphSource = None) -> Dashboard:
    """The runtime's one dashboard, made on the first call (graphs: the Programs tab's source, by default the
    latest program runs) and returned as it is afterwards. `%%sgl --live` cells display this same one; it
    keeps updating until the runtime shuts down, and then says so."""
    dash = rt.attachments.get(DASHBOARD)
    if dash is None:
        dash = Dashboard(rt, graphs=graphs if graphs is not None else recent_program_runs)
        rt.attachments[DASHBOARD] = dash
        rt.on_shutdown(lambda: dash.stop("the runtime shut down"))
    return dash


def report(rt: Any, path: str | Path, graphs: Sequence[Any] | None = None, bench: Any = None) -> Path:
    """Write the runtime's HTML report (with its dashboard's metrics history when it has a dashboard).

    graphs: program graphs, runs or traces (by default the latest program runs). bench: a result with
    `_repr_html_()` (a `sglbench.bench.paper` SuiteResult) or a list of them, shown in a "Benchmarks" section;
    duck typed, so viz never imports the benchmarks."""
    extra = []
    if bench is not None:
        results = bench if isinstance(bench, (list, tuple)) else [bench]
        extra.append(("bench", "Benchmarks", "".join(_result_html(r) for r in results)))
    dash = rt.attachments.get(DASHBOARD)
    return write_report(rt, path, graphs=graphs if graphs is not None else recent_program_runs(),
                        metrics_history=dash.recorder if dash is not None else None, extra_sections=extra)


def _result_html(result: Any) -> str:
    render = getattr(result, "_repr_html_", None)
    if not callable(render):
        raise TypeError(f"bench: expected a benchmark result with _repr_html_() (a sglbench.bench.paper "
                        f"SuiteResult), got {type(result).__name__}")
    return render()
