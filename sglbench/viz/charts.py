"""Tiny SVG charts (lines, stacked areas, histograms) for cache stats and latencies: no plotting library needed.

Output size is bounded: long series are thinned to at most MAX_POINTS points per line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sglbench.viz.markup import esc, fmt, svg, text

MAX_POINTS = 400
_GRID = "#e9ecef"
_AXIS = "#868e96"


@dataclass(frozen=True)
class Series:
    """One named line (or stacked band); points are (x, y) with x non-decreasing."""

    name: str
    points: tuple[tuple[float, float], ...]
    color: str


@dataclass(frozen=True)
class _Frame:
    """Plot area in pixels and the data ranges it maps."""

    left: float
    top: float
    width: float
    height: float
    x_lo: float
    x_hi: float
    y_hi: float

    def px(self, x: float) -> float:
        return self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * self.width

    def py(self, y: float) -> float:
        return self.top + self.height - y / self.y_hi * self.height


def thin(points: Sequence[tuple[float, float]], limit: int = MAX_POINTS) -> tuple[tuple[float, float], ...]:
    """Every k-th point (and always the last) so that at most about `limit` remain."""
    if len(points) <= limit:
        return tuple(points)
    step = math.ceil(len(points) / limit)
    kept = list(points[::step])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return tuple(kept)


def _axes(frame: _Frame, y_fmt: Callable[[float], str], x_fmt: Callable[[float], str]) -> str:
    parts = []
    for frac in (0.0, 0.5, 1.0):
        y = frame.py(frac * frame.y_hi)
        parts.append(f'<line x1="{frame.left:.1f}" y1="{y:.1f}" x2="{frame.left + frame.width:.1f}" y2="{y:.1f}" '
                     f'stroke="{_GRID}"/>')
        parts.append(text(frame.left - 4, y + 4, y_fmt(frac * frame.y_hi), anchor="end", fill=_AXIS))
    bottom = frame.top + frame.height
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        x = frame.x_lo + frac * (frame.x_hi - frame.x_lo)
        parts.append(text(frame.px(x), bottom + 14, x_fmt(x), anchor=anchor, fill=_AXIS))
    parts.append(f'<line x1="{frame.left:.1f}" y1="{bottom:.1f}" x2="{frame.left + frame.width:.1f}" '
                 f'y2="{bottom:.1f}" stroke="{_AXIS}"/>')
    return "".join(parts)


def _header(title: str, series: Sequence[Series], width: float) -> str:
    parts = [text(8, 15, title, weight="bold", size=12)]
    x = 8.0
    for s in series:
        parts.append(f'<rect x="{x:.1f}" y="22" width="10" height="10" fill="{esc(s.color)}"/>')
        parts.append(text(x + 14, 31, s.name))
        x += 24 + 6.5 * len(s.name)
        if x > width - 60:
            break
    return "".join(parts)


def _seconds(x: float) -> str:
    return f"{fmt(x)} s"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    width: int = 560,
    height: int = 190,
    y_max: float | None = None,
    y_fmt: Callable[[float], str] = fmt,
    x_fmt: Callable[[float], str] = _seconds,
    stacked: bool = False,
    cls: str = "sgl-chart",
) -> str:
    """Lines (or, with stacked=True, bands summed bottom-up over shared x values) with a last-value marker."""
    series = [Series(s.name, thin(s.points), s.color) for s in series]
    if stacked:
        series = _stack(series)
    points = [p for s in series for p in s.points]
    body = _header(title, series, width)
    if not points:
        body += text(width / 2, height / 2 + 10, "no samples yet", anchor="middle", fill=_AXIS)
        return svg(width, height, body, cls=cls, label=title)
    x_lo = min(x for x, _ in points)
    x_hi = max(x for x, _ in points)
    y_hi = y_max if y_max is not None else max(y for _, y in points)
    frame = _Frame(left=54, top=40, width=width - 70, height=height - 62, x_lo=x_lo,
                   x_hi=x_hi if x_hi > x_lo else x_lo + 1.0, y_hi=y_hi if y_hi > 0 else 1.0)
    body += _axes(frame, y_fmt, x_fmt)
    below: tuple[tuple[float, float], ...] = ()
    for s in series:
        if not s.points:
            continue
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in s.points)
        if stacked:
            base = below or tuple((x, 0.0) for x, _ in s.points)
            back = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in reversed(base))
            body += f'<polygon points="{coords} {back}" fill="{esc(s.color)}" fill-opacity="0.75"/>'
            below = s.points
        else:
            body += f'<polyline points="{coords}" fill="none" stroke="{esc(s.color)}" stroke-width="1.8"/>'
        x, y = s.points[-1]
        body += (f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2.5" fill="{esc(s.color)}">'
                 f"<title>{esc(s.name)}: {esc(y_fmt(y))}</title></circle>")
    return svg(width, height, body, cls=cls, label=title)


def _stack(series: Sequence[Series]) -> list[Series]:
    """Cumulative sums bottom-up; every series must share the first one's x values."""
    totals = [0.0] * len(series[0].points) if series else []
    out = []
    for s in series:
        if len(s.points) != len(totals):
            raise ValueError(f"stacked series {s.name!r} has {len(s.points)} points, expected {len(totals)}")
        totals = [t + y for t, (_, y) in zip(totals, s.points)]
        out.append(Series(s.name, tuple((x, t) for (x, _), t in zip(s.points, totals)), s.color))
    return out


def histogram(
    values: Sequence[float],
    *,
    title: str,
    bins: int = 20,
    width: int = 560,
    height: int = 190,
    color: str = "#4263eb",
    x_fmt: Callable[[float], str] = _seconds,
    cls: str = "sgl-histogram",
) -> str:
    """Counts of `values` in `bins` equal-width bins between their minimum and maximum."""
    body = text(8, 15, title, weight="bold", size=12) + text(8, 31, f"n = {len(values):,}", fill=_AXIS)
    if not values:
        body += text(width / 2, height / 2 + 10, "no finished requests yet", anchor="middle", fill=_AXIS)
        return svg(width, height, body, cls=cls, label=title)
    lo, hi = min(values), max(values)
    if hi <= lo:
        hi = lo + max(abs(lo) * 0.1, 1e-6)
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    frame = _Frame(left=54, top=40, width=width - 70, height=height - 62, x_lo=lo, x_hi=hi, y_hi=max(counts))
    body += _axes(frame, lambda y: fmt(round(y)) if y == round(y) else fmt(y), x_fmt)
    bar_w = frame.width / bins
    for i, count in enumerate(counts):
        if count:
            top = frame.py(count)
            left, right = lo + i * (hi - lo) / bins, lo + (i + 1) * (hi - lo) / bins
            body += (f'<rect x="{frame.left + i * bar_w + 0.5:.1f}" y="{top:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                     f'height="{frame.top + frame.height - top:.1f}" fill="{esc(color)}">'
                     f"<title>{esc(x_fmt(left))} – {esc(x_fmt(right))}: {count}</title></rect>")
    return svg(width, height, body, cls=cls, label=title)
