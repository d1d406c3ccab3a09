"""One self-contained HTML report of a run: summary and engine config, hit-rate timeline, the radix tree
(at the end and at its largest), per-call latency, program graphs.

Inline CSS and SVG only: no script, no external URL, every user string escaped, so the file opens
offline and can be attached anywhere.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from sglbench.runtime.records import CacheSnapshot, EngineMetrics
from sglbench.viz.graph import ProgramGraph
from sglbench.viz.latency import CallLatency, call_latencies, render_latency
from sglbench.viz.markup import TABLE_CSS, esc, fmt, inline, pct, table
from sglbench.viz.recorder import MetricsRecorder
from sglbench.viz.stats import render_stats
from sglbench.viz.tree import Decode, render_tree

_CSS = """
body { font-family: ui-sans-serif, system-ui, sans-serif; color: #212529; margin: 24px auto; max-width: 1280px;
       padding: 0 16px; line-height: 1.4; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #dee2e6; }
h3 { font-size: 15px; } .meta { color: #868e96; font-size: 13px; }
nav a { margin-right: 12px; color: #1c7ed6; text-decoration: none; }
.scroll { overflow: auto; max-height: 900px; border: 1px solid #f1f3f5; }
.sgl-stats { display: flex; flex-wrap: wrap; gap: 12px; }
pre { background: #f8f9fa; padding: 8px; font-size: 11px; overflow: auto; }
"""


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
    graphs: Sequence[ProgramGraph],
    generated: str,
    decode: Decode | None = None,
    max_rows: int = 500,
    max_nodes: int = 400,
    extra_sections: Sequence[tuple[str, str, str]] = (),
) -> str:
    """The report document as a string (pure: everything it shows is passed in). extra_sections:
    (anchor, title, trusted HTML) appended after the built-in sections, e.g. benchmark results."""
    largest = (
        f"<h3>At its largest ({fmt(tree_largest.total_size)} tokens)</h3>"
        f'<div class="scroll">{render_tree(tree_largest, max_nodes=max_nodes, decode=decode)}</div>'
        if tree_largest is not None and tree_largest.total_size > tree_end.total_size
        else "<p class=\"meta\">The tree was never larger than at the end.</p>"
    )
    programs = "".join(
        f"<h3>{esc(g.name)}</h3><div class=\"scroll\">{g.to_svg()}</div>"
        f"<details><summary>DOT</summary><pre>{esc(g.to_dot())}</pre></details>"
        for g in graphs
    ) or '<p class="meta">No program graphs were given.</p>'
    sections = [
        ("summary", "Run summary",
         table(("metric", "value"), summary_rows(final, samples)) + "<h3>Engine config</h3>"
         + table(("field", "value"), config)),
        ("timeline", "Cache timeline", render_stats(samples)),
        ("tree", "Radix tree",
         '<h3>At the end</h3><div class="scroll">'
         f"{render_tree(tree_end, max_nodes=max_nodes, decode=decode)}</div>{largest}"),
        ("latency", "Per-call latency", render_latency(calls, max_rows=max_rows)),
        ("programs", "Program graphs", programs),
        *extra_sections,
    ]
    nav = "".join(f'<a href="#{key}">{esc(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{esc(name)}</h2>{content}</section>' for key, name, content in sections)
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
           f"<style>{_CSS}{TABLE_CSS}</style></head><body><h1>{esc(title)}</h1>"
           f'<p class="meta">{esc(runtime)} · generated {esc(generated)}</p><nav>{nav}</nav>{body}</body></html>\n')
    return inline(doc)


def write_report(
    rt: Any,
    path: str | Path,
    graphs: Sequence[ProgramGraph] | None = None,
    metrics_history: MetricsRecorder | Sequence[EngineMetrics] | None = None,
    largest: CacheSnapshot | None = None,
    title: str = "sglbench report",
    extra_sections: Sequence[tuple[str, str, str]] = (),
) -> Path:
    """Write the report for runtime `rt` to `path` and return the path.

    metrics_history: a `MetricsRecorder` (its samples and largest tree are used) or metrics samples;
    without one the timeline has only the current sample. largest: a tree snapshot to show as the
    largest. Trees are snapshotted without text and only drawn nodes are decoded, here, off the engine thread.
    """
    if isinstance(metrics_history, MetricsRecorder):
        largest = largest if largest is not None else metrics_history.largest
        samples = list(metrics_history.samples)
    else:
        samples = list(metrics_history or ())
    final = rt.metrics()
    if not samples or samples[-1] is not final:
        samples.append(final)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = render_report(
        title=title, runtime=repr(rt), config=config_rows(rt.config), final=final, samples=samples,
        tree_end=rt.cache_snapshot(with_text=False), tree_largest=largest, calls=call_latencies(rt.events.since(0)),
        graphs=list(graphs or ()), generated=generated, decode=rt.tokenizer.decode, extra_sections=extra_sections,
    )
    out = Path(path)
    out.write_text(doc, encoding="utf-8")
    return out
