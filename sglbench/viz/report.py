"""One self-contained HTML report of a run: summary and engine config, serving charts over time, the radix
tree (at the end and at its largest), per-call latency, program graphs.

The sections are the notebook's views: the same JavaScript (`sglbench.viz.esm`, inlined once) draws each from
its widget state, and each keeps the server-rendered HTML (inline SVG) as its fallback, shown without
JavaScript. No external URL, every user string escaped, so the file opens offline and can be attached anywhere.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from sglbench.runtime.records import CacheSnapshot, EngineMetrics
from sglbench.viz.adapters import as_program_graph
from sglbench.viz.esm import static_views_script, view_host
from sglbench.viz.latency import CallLatency, RequestTimeline, render_latency
from sglbench.viz.markup import TABLE_CSS, esc, fmt, inline, pct, table
from sglbench.viz.recorder import MetricsRecorder
from sglbench.viz.stats import render_stats
from sglbench.viz.tree import Decode, render_tree
from sglbench.viz.view_data import (
    STATE_DEFAULTS,
    cached_decode,
    calls_data,
    graphs_data,
    series_data,
    tree_data,
)

_CSS = """
:root { color-scheme: light dark; --fg: #212529; --muted: #5c636a; --bg: #ffffff; --line: #dee2e6;
        --link: #1864ab; --code: #f1f3f5; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e9ecef; --muted: #adb5bd; --bg: #1b1d1f; --line: #495057; --link: #74c0fc; --code: #2c2f33; }
}
body { font-family: ui-sans-serif, system-ui, sans-serif; color: var(--fg); background: var(--bg);
       margin: 24px auto; max-width: 1280px; padding: 0 16px; line-height: 1.4; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; } .meta { color: var(--muted); font-size: 13px; }
nav a { margin-right: 12px; color: var(--link); text-decoration: none; }
.scroll { overflow: auto; max-height: 900px; border: 1px solid var(--line); }
.sgl-stats { display: flex; flex-wrap: wrap; gap: 12px; }
pre { background: var(--code); padding: 8px; font-size: 11px; overflow: auto; }
.sglw-fallback { background: #ffffff; color: #212529; color-scheme: light; }
"""
_TABLE_THEME = (".sgl-table th,.sgl-table td{border-color:var(--line)}.sgl-table th{background:var(--code)}"
                ".sglw-fallback .sgl-table th{background:#f8f9fa}")
"""The summary tables follow the page's light or dark colours (after TABLE_CSS, which is light only)."""


def summary_rows(final: EngineMetrics, samples: Sequence[EngineMetrics]) -> list[tuple[str, object]]:
    """Headline numbers of a run (the final metrics, plus the span the samples cover)."""
    c = final.cache
    span = samples[-1].time - samples[0].time if len(samples) > 1 else 0.0
    return [
        ("requests finished", final.num_finished), ("engine steps", final.num_steps),
        ("prefill tokens", final.prefill_tokens), ("decode tokens", final.decode_tokens),
        ("cache hit rate", pct(c.hit_rate)), ("prompt tokens queried", c.query_tokens),
        ("prompt tokens from cache", c.hit_tokens), ("tokens inserted", c.inserted_tokens),
        ("tokens evicted", c.evicted_tokens), ("retractions", final.num_retractions),
        ("jump-forward tokens", final.jump_forward_tokens), ("KV pool slots", final.pool_slots),
        ("cached tokens now", final.cache_evictable + final.cache_protected),
        ("metrics samples", len(samples)), ("sampled span (s)", span),
    ]


def config_rows(config: Any) -> list[tuple[str, object]]:
    """(field, value) of a dataclass config; values that are not plain numbers or strings shown as text."""
    rows = []
    for f in fields(config):
        value = getattr(config, f.name)
        rows.append((f.name, value if isinstance(value, (int, float, str)) or value is None else str(value)))
    return rows


def _view(element_id: str, state: Mapping[str, Any], fallback: str) -> tuple[str, tuple[str, dict[str, Any]]]:
    """A section's view: its host element (holding the fallback) and its (element id, full widget state)."""
    return view_host(element_id, fallback), (element_id, {**STATE_DEFAULTS, **state})


def render_report(
    *,
    title: str,
    runtime: str,
    config: Sequence[tuple[str, object]],
    final: EngineMetrics,
    samples: Sequence[EngineMetrics],
    tree_end: CacheSnapshot,
    tree_largest: CacheSnapshot | None,
    calls: Sequence[CallLatency],
    graphs: Sequence[Any],
    generated: str,
    decode: Decode | None = None,
    max_rows: int = 500,
    max_nodes: int = 400,
    extra_sections: Sequence[tuple[str, str, str]] = (),
    runs: Iterable[Any] = (),
    t0: float | None = None,
) -> str:
    """The report document as a string (pure: everything it shows is passed in).

    graphs: program graphs, program runs' telemetry or traces. runs: program runs that name the calls (by
    function and gen/select). t0: when the first request arrived (the calls' `start_s` origin), the serving
    charts' time origin. extra_sections: (anchor, title, trusted HTML) appended after the built-in sections,
    e.g. benchmark results."""
    decode = cached_decode(decode) if decode is not None else None
    static = {"status": "static", "status_note": f"report generated {generated}"}
    views: list[tuple[str, dict[str, Any]]] = []

    def view(element_id: str, state: Mapping[str, Any], fallback: str) -> str:
        host, mount = _view(element_id, {**static, **state}, fallback)
        views.append(mount)
        return host

    shown = [as_program_graph(g) for g in graphs]
    tree_end_html = view("sglw-tree-end", {"panels": ["tree"], "tree": tree_data(tree_end, decode)},
                         f'<div class="scroll">{render_tree(tree_end, max_nodes=max_nodes, decode=decode)}</div>')
    if tree_largest is not None and tree_largest.total_size > tree_end.total_size:
        largest = (f"<h3>At its largest ({fmt(tree_largest.total_size)} tokens)</h3>"
                   + view("sglw-tree-largest", {"panels": ["tree"], "tree": tree_data(tree_largest, decode)},
                          f'<div class="scroll">{render_tree(tree_largest, max_nodes=max_nodes, decode=decode)}</div>'))
    else:
        largest = "<p class=\"meta\">The tree was never larger than at the end.</p>"
    programs = "".join(
        f"<h3>{esc(g.name)}</h3><div class=\"scroll\">{g.to_svg()}</div>"
        f"<details><summary>DOT</summary><pre>{esc(g.to_dot())}</pre></details>"
        for g in shown
    ) or '<p class="meta">No program graphs were given.</p>'
    sections = [
        ("summary", "Run summary",
         table(("metric", "value"), summary_rows(final, samples)) + "<h3>Engine config</h3>"
         + table(("field", "value"), config)),
        ("timeline", "Serving over time",
         view("sglw-serving", {"panels": ["stats"], "series": series_data(samples, calls, t0)}, render_stats(samples))),
        ("tree", "Radix tree", f"<h3>At the end</h3>{tree_end_html}{largest}"),
        ("latency", "Per-call latency",
         view("sglw-latency", {"panels": ["latency"], "calls": calls_data(calls, runs)},
              render_latency(calls, max_rows=max_rows))),
        ("programs", "Program graphs",
         view("sglw-programs", {"panels": ["programs"], "graphs": graphs_data(graphs)}, programs)),
        *extra_sections,
    ]
    nav = "".join(f'<a href="#{key}">{esc(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{esc(name)}</h2>{content}</section>' for key, name, content in sections)
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f'<meta name="color-scheme" content="light dark"><title>{esc(title)}</title>'
           f"<style>{_CSS}{TABLE_CSS}{_TABLE_THEME}</style></head><body><h1>{esc(title)}</h1>"
           f'<p class="meta">{esc(runtime)} · generated {esc(generated)}</p><nav>{nav}</nav>{body}'
           f"{static_views_script(views)}</body></html>\n")
    return inline(doc)


def write_report(
    rt: Any,
    path: str | Path,
    graphs: Sequence[Any] | None = None,
    metrics_history: MetricsRecorder | Sequence[EngineMetrics] | None = None,
    largest: CacheSnapshot | None = None,
    title: str = "sglbench report",
    extra_sections: Sequence[tuple[str, str, str]] = (),
    runs: Iterable[Any] | None = None,
) -> Path:
    """Write the report for runtime `rt` to `path` and return the path.

    graphs: program graphs, program runs' telemetry or traces. metrics_history: a `MetricsRecorder` (its
    samples and largest tree are used) or metrics samples; without one the timeline has only the current
    sample. largest: a tree snapshot to show as the largest. runs: program runs naming the calls (by default
    the recent runs). Trees are snapshotted without text and only the nodes shown are decoded, here, off the
    engine thread.
    """
    if isinstance(metrics_history, MetricsRecorder):
        largest = largest if largest is not None else metrics_history.largest
        samples = list(metrics_history.samples)
    else:
        samples = list(metrics_history or ())
    final = rt.metrics()
    if not samples or samples[-1] is not final:
        samples.append(final)
    if runs is None:
        from sglbench.lang.telemetry import recent_runs

        runs = recent_runs()
    timeline = RequestTimeline()
    events = [e for e in rt.events.since(0) if e.kind.startswith("request.")]
    timeline.feed(events)
    t0 = next((e.time for e in events if e.kind == "request.arrived"), None)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = render_report(
        title=title, runtime=repr(rt), config=config_rows(rt.config), final=final, samples=samples,
        tree_end=rt.cache_snapshot(with_text=False), tree_largest=largest, calls=timeline.calls,
        graphs=list(graphs or ()), generated=generated, decode=rt.tokenizer.decode, extra_sections=extra_sections,
        runs=list(runs), t0=t0,
    )
    out = Path(path)
    out.write_text(doc, encoding="utf-8")
    return out
