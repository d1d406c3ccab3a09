"""Markup primitives every view shares: escaping, number formatting, an SVG wrapper and an HTML table.

Everything here returns well-formed XML fragments, so tests can parse any view with ElementTree.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence

SVG_NS = "http://www.w3.org/2000/svg"
FONT = "ui-sans-serif, system-ui, sans-serif"

TABLE_CSS = (
    ".sgl-table{border-collapse:collapse;font-size:12px;margin:8px 0}"
    ".sgl-table th,.sgl-table td{border:1px solid #dee2e6;padding:2px 8px}"
    ".sgl-table th{background:#f8f9fa;text-align:left}.sgl-table td.num{text-align:right}"
)
"""Styles for `table()` output: views embed them, since widget HTML gets no notebook table styling."""

# Characters XML 1.0 forbids (or that break a file's encoding): shown as U+FFFD instead.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def esc(value: object) -> str:
    """`value` as text safe inside HTML/SVG elements and quoted attributes: user strings never reach markup raw."""
    return html.escape(_NOT_XML.sub("\ufffd", str(value)), quote=True)


def clip(text: str, limit: int) -> str:
    """One-line label: newlines shown as ⏎, cut to `limit` characters with an ellipsis."""
    text = text.replace("\r", "").replace("\n", "⏎")
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def fmt(value: object) -> str:
    """Compact, deterministic number text: ints with thousands separators, floats to about 3 significant figures."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def pct(value: float) -> str:
    """A fraction as a percentage with one decimal."""
    return f"{100 * value:.1f}%"


def svg(width: float, height: float, body: str, *, cls: str, label: str) -> str:
    """A standalone SVG document (namespaced, so it is valid image/svg+xml and parses as XML)."""
    return (
        f'<svg xmlns="{SVG_NS}" class="{esc(cls)}" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}" '
        f'font-family="{FONT}" font-size="11">{body}</svg>'
    )


def text(x: float, y: float, content: str, *, anchor: str = "start", size: int | None = None,
         fill: str = "#343a40", weight: str | None = None) -> str:
    """An escaped SVG text element."""
    extra = (f' font-size="{size}"' if size else "") + (f' font-weight="{weight}"' if weight else "")
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}"{extra}>{esc(content)}</text>'


def inline(markup: str) -> str:
    """Markup with SVG namespace declarations dropped: inline SVG in HTML5 needs none, and reports name no URL."""
    return markup.replace(f' xmlns="{SVG_NS}"', "")


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, cls: str = "sgl-table") -> str:
    """An HTML table; numbers go through `fmt`, every cell is escaped."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if _is_number(c) else "txt"}">{esc(fmt(c))}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
