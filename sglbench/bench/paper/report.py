"""The paper-workload results as files (CSV, JSON), inline SVG bar charts and an HTML fragment (no plotting library)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sglbench.bench.paper.goals import goals
from sglbench.bench.paper.measure import COLUMNS
from sglbench.bench.paper.runner import SuiteResult, summary
from sglbench.viz.markup import TABLE_CSS, esc, fmt, inline, pct, svg, table, text

COLORS = {
    "sglbench (lpm)": "#4263eb",
    "sglbench (fcfs)": "#74c0fc",
    "sglbench (no frontend hints)": "#20c997",
    "sglbench (radix cache off)": "#fab005",
    "transformers (stage-batched)": "#fa5252",
    "Outlines": "#be4bdb",
    "Guidance": "#fd7e14",
    "LMQL": "#82c91e",
    "optimal": "#adb5bd",
}
_OTHER = "#868e96"
_LEFT, _RIGHT, _BAR, _GAP = 150, 70, 9, 12


@dataclass(frozen=True)
class Bars:
    """One series: a bar per group (None: no bar), its length in [0, 1] and the text shown beside it."""

    name: str
    lengths: tuple[float | None, ...]
    labels: tuple[str, ...]


def grouped_bars(groups: Sequence[str], series: Sequence[Bars], *, title: str, width: int = 720) -> str:
    """Horizontal bars, one block per group and one bar per series in it, with a legend on top."""
    legend, x, y = [], 8.0, 34.0
    for s in series:
        if x + 24 + 6.5 * len(s.name) > width:
            x, y = 8.0, y + 16
        legend.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{COLORS.get(s.name, _OTHER)}"/>')
        legend.append(text(x + 14, y, s.name))
        x += 24 + 6.5 * len(s.name)
    top = y + 14
    block = len(series) * (_BAR + 2) + _GAP
    height = top + block * len(groups) + 8
    span = width - _LEFT - _RIGHT
    body = [text(8, 15, title, weight="bold", size=12), *legend]
    for g, group in enumerate(groups):
        y0 = top + g * block
        body.append(text(_LEFT - 6, y0 + block / 2, group, anchor="end"))
        for k, s in enumerate(series):
            length = s.lengths[g]
            if length is None or math.isnan(length):
                continue
            yb = y0 + k * (_BAR + 2)
            w = max(span * min(max(length, 0.0), 1.0), 0.5)
            body.append(f'<rect x="{_LEFT}" y="{yb:.1f}" width="{w:.1f}" height="{_BAR}" '
                        f'fill="{COLORS.get(s.name, _OTHER)}"><title>{esc(s.name)}: {esc(s.labels[g])}</title></rect>')
            body.append(text(_LEFT + w + 4, yb + _BAR - 1, s.labels[g], size=9, fill="#495057"))
    return svg(width, height, "".join(body), cls="sgl-bench-chart", label=title)


def _pivot(frame: pd.DataFrame, column: str) -> tuple[list[str], list[str], pd.DataFrame]:
    workloads = list(dict.fromkeys(frame["workload"]))
    systems = list(dict.fromkeys(frame["system"]))
    table_ = frame.pivot(index="workload", columns="system", values=column).reindex(index=workloads, columns=systems)
    return workloads, systems, table_


def throughput_svg(frame: pd.DataFrame) -> str:
    """programs/s of every system, relative to the fastest system of each workload (labels: absolute)."""
    workloads, systems, values = _pivot(frame, "programs_s")
    best = values.max(axis=1)
    series = [Bars(s, tuple(float(values.loc[w, s] / best[w]) for w in workloads),
                   tuple(f"{fmt(float(values.loc[w, s]))}/s" for w in workloads)) for s in systems]
    return grouped_bars(workloads, series, title="Throughput (programs/s, bar length relative to the fastest)")


def hit_rate_svg(frame: pd.DataFrame) -> str:
    """Cache hit rate of the systems with a cache, and the optimum of sglbench (lpm)'s requests."""
    cached = frame[frame["system"].str.startswith("sglbench") & (frame["system"] != "sglbench (radix cache off)")]
    workloads, systems, values = _pivot(cached, "hit_rate")
    optimal = cached[cached["system"] == "sglbench (lpm)"].set_index("workload")["optimal_hit_rate"]
    series = [Bars(s, tuple(float(values.loc[w, s]) for w in workloads),
                   tuple(pct(float(values.loc[w, s])) for w in workloads)) for s in systems]
    series.append(Bars("optimal", tuple(float(optimal.get(w, math.nan)) for w in workloads),
                       tuple(pct(float(optimal.get(w, math.nan))) for w in workloads)))
    return grouped_bars(workloads, series, title="Radix cache hit rate (optimal: perfect infinite cache)")


def results_html(result: SuiteResult) -> str:
    """An HTML fragment for reports: what was measured, both charts and the full table."""
    meta = result.meta
    facts = (f"model: {meta.get('model')}; device: {meta.get('device')}; size: {meta.get('size')}; "
             f"torch threads: {meta.get('torch_threads')}"
             + ("; fixed output lengths (timing only)" if meta.get("timing_only") else ""))
    versions = {k: v for k, v in (meta.get("peer_versions") or {}).items() if v}
    if versions:
        facts += "; peers: " + ", ".join(f"{k} {v}" for k, v in versions.items())
    frame = result.frame
    speedups = summary(frame)
    checked = "".join(f"<li>{esc(g.line())}</li>" for g in goals(frame))
    return (
        f'<div class="sgl-bench"><style>{TABLE_CSS}</style><h3>SGLang paper workloads</h3><p>{esc(facts)}</p>'
        f"{inline(throughput_svg(frame))}{inline(hit_rate_svg(frame))}"
        f"<h4>sglbench (lpm) against the other systems</h4>"
        f"{table(list(speedups.columns), _cells(speedups))}<h4>Goals</h4><ul>{checked}</ul>"
        f"<h4>All measurements</h4>{table(list(frame.columns), _cells(frame))}</div>"
    )


def _cells(frame: pd.DataFrame) -> list[list]:
    """Rows of plain Python values (numpy scalars would be formatted as text)."""
    return frame.to_dict(orient="split")["data"]


def results_page(result: SuiteResult) -> str:
    """A self-contained HTML page around `results_html`."""
    return ('<!doctype html><html><head><meta charset="utf-8"><title>sglbench: paper workloads</title></head>'
            f'<body style="font-family: ui-sans-serif, system-ui, sans-serif">{results_html(result)}</body></html>\n')


def save(result: SuiteResult, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write stem.csv, stem.json (meta and rows), stem.svg (throughput chart) and stem.html (a page)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{stem}.{kind}" for kind in ("csv", "json", "svg", "html")}
    result.frame.to_csv(paths["csv"], index=False)
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in result.frame.to_dict(orient="records")]
    paths["json"].write_text(json.dumps({"meta": dict(result.meta), "rows": rows}, indent=2) + "\n")
    paths["svg"].write_text(throughput_svg(result.frame))
    paths["html"].write_text(results_page(result))
    return paths


def load(path: str | Path) -> SuiteResult:
    """A result saved by `save` (its .json file), e.g. to show it in a notebook without running again."""
    saved = json.loads(Path(path).read_text())
    return SuiteResult(pd.DataFrame(saved["rows"], columns=list(COLUMNS)), saved["meta"])
