"""Program graph view: a neutral fork/join graph record, a layered SVG layout of our own, and DOT text.

The language layer's trace and telemetry are adapted to `ProgramGraph`; nothing here needs the
`dot` binary, so a graph always renders (DOT text is there for users who have Graphviz).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from sglbench.viz.markup import clip, esc, fmt, svg, text

STATES = ("waiting", "running", "done")
_FILL = {"waiting": "#f1f3f5", "running": "#fff3bf", "done": "#d3f9d8"}
_STROKE = {"waiting": "#adb5bd", "running": "#f59f00", "done": "#2f9e44"}
_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _TOP = 156, 38, 18, 34, 40


@dataclass(frozen=True)
class GraphNode:
    """One step of a program: a gen/select call, a fork or join, a block of text."""

    id: str
    label: str
    kind: str
    state: str = "waiting"  # waiting | running | done
    latency_s: float | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")


@dataclass(frozen=True)
class ProgramGraph:
    """A directed acyclic graph of program steps; edges are (src id, dst id) pairs."""

    nodes: tuple[GraphNode, ...]
    edges: tuple[tuple[str, str], ...]
    name: str = "program"

    def __post_init__(self) -> None:
        ids = [n.id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ValueError("node ids must be unique")
        known = set(ids)
        for src, dst in self.edges:
            if src not in known or dst not in known:
                raise ValueError(f"edge ({src!r}, {dst!r}) names an unknown node")
        if len(topological_order(self)) != len(ids):
            raise ValueError("a program graph must be acyclic")

    def to_dot(self) -> str:
        """Graphviz DOT text (labels quoted and escaped), for users who have the `dot` binary."""
        lines = [f"digraph {_dot_quote(self.name)} {{", "  rankdir=TB;",
                 '  node [shape=box, style="rounded,filled", fontname="sans-serif", fontsize=10];']
        for n in self.nodes:
            lines.append(f"  {_dot_quote(n.id)} [label={_dot_quote(n.label + chr(10) + _detail(n))}, "
                         f'fillcolor="{_FILL[n.state]}", color="{_STROKE[n.state]}"];')
        lines += [f"  {_dot_quote(src)} -> {_dot_quote(dst)};" for src, dst in self.edges]
        return "\n".join([*lines, "}"]) + "\n"

    def to_svg(self, max_nodes: int = 300) -> str:
        """Layered SVG (see `render_graph`)."""
        return render_graph(self, max_nodes=max_nodes)

    def __repr__(self) -> str:
        done = sum(n.state == "done" for n in self.nodes)
        return f"ProgramGraph({self.name!r}, nodes={len(self.nodes)}, edges={len(self.edges)}, done={done})"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": repr(self), "image/svg+xml": self.to_svg()}


def _dot_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "") + '"'


def _detail(n: GraphNode) -> str:
    return n.kind + ("" if n.latency_s is None else f" · {fmt(n.latency_s)} s")


def topological_order(graph: ProgramGraph) -> list[str]:
    """Node ids sources first (Kahn's algorithm, ties in node order); shorter than the graph if it has a cycle."""
    indegree = {n.id: 0 for n in graph.nodes}
    out: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for src, dst in graph.edges:
        if src in out and dst in indegree:
            out[src].append(dst)
            indegree[dst] += 1
    ready = deque(n.id for n in graph.nodes if indegree[n.id] == 0)
    order = []
    while ready:
        nid = ready.popleft()
        order.append(nid)
        for dst in out[nid]:
            indegree[dst] -= 1
            if indegree[dst] == 0:
                ready.append(dst)
    return order


def layers(graph: ProgramGraph, node_ids: Sequence[str]) -> list[list[str]]:
    """Longest-path layering of `node_ids` (topologically ordered), each layer sorted by its parents' positions."""
    keep = set(node_ids)
    parents: dict[str, list[str]] = {nid: [] for nid in node_ids}
    for src, dst in graph.edges:
        if src in keep and dst in keep:
            parents[dst].append(src)
    depth: dict[str, int] = {}
    for nid in node_ids:
        depth[nid] = 1 + max((depth[p] for p in parents[nid]), default=-1)
    rows: list[list[str]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for nid in node_ids:
        rows[depth[nid]].append(nid)
    position: dict[str, float] = {}
    for row in rows:  # one downward barycentre sweep keeps forks under their parent
        order = {nid: i for i, nid in enumerate(row)}
        row.sort(key=lambda nid: (sum(position[p] for p in parents[nid]) / len(parents[nid])
                                  if parents[nid] else order[nid], order[nid]))
        position.update({nid: i - (len(row) - 1) / 2 for i, nid in enumerate(row)})
    return rows


def render_graph(graph: ProgramGraph, max_nodes: int = 300) -> str:
    """SVG of the graph, sources on top, boxes coloured by state; only the first `max_nodes` in topological order."""
    order = topological_order(graph)
    shown = order[:max_nodes]
    rows = layers(graph, shown)
    by_id = {n.id: n for n in graph.nodes}
    widest = max((len(r) for r in rows), default=1)
    width = max(widest * (_BOX_W + _GAP_X) + _GAP_X, 320)
    height = _TOP + len(rows) * (_BOX_H + _GAP_Y) + 10
    pos: dict[str, tuple[float, float]] = {}
    for depth, row in enumerate(rows):
        span = len(row) * (_BOX_W + _GAP_X) - _GAP_X
        for i, nid in enumerate(row):
            pos[nid] = ((width - span) / 2 + i * (_BOX_W + _GAP_X), _TOP + depth * (_BOX_H + _GAP_Y))
    counts = {s: sum(n.state == s for n in graph.nodes) for s in STATES}
    head = (f"{graph.name} · {len(graph.nodes)} steps · " + ", ".join(f"{counts[s]} {s}" for s in STATES)
            + (f" · showing first {len(shown)}" if len(shown) < len(graph.nodes) else ""))
    arrow = ('<defs><marker id="sgl-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#868e96"/></marker></defs>')
    body = [text(8, 16, head, weight="bold"), arrow]
    for src, dst in graph.edges:
        if src in pos and dst in pos:
            (x1, y1), (x2, y2) = pos[src], pos[dst]
            x1, y1, x2 = x1 + _BOX_W / 2, y1 + _BOX_H, x2 + _BOX_W / 2
            mid = (y1 + y2) / 2
            body.append(f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}" '
                        f'fill="none" stroke="#868e96" marker-end="url(#sgl-arrow)"/>')
    for nid in shown:
        n, (x, y) = by_id[nid], pos[nid]
        rx = 16 if n.kind in ("fork", "join") else 5
        tip = f"{n.label}\n— {n.id}: {n.kind}, {n.state}"
        tip += "" if n.latency_s is None else f", {fmt(n.latency_s)} s"
        body.append(
            f'<g class="step {esc(n.state)}"><rect x="{x:.1f}" y="{y:.1f}" width="{_BOX_W}" height="{_BOX_H}" '
            f'rx="{rx}" fill="{_FILL[n.state]}" stroke="{_STROKE[n.state]}" stroke-width="1.5"/>'
            f"<title>{esc(tip)}</title>{text(x + _BOX_W / 2, y + 16, clip(n.label, 24), anchor='middle')}"
            f"{text(x + _BOX_W / 2, y + 30, _detail(n), anchor='middle', fill='#868e96', size=10)}</g>")
    return svg(width, height, "".join(body), cls="sgl-program-graph", label=f"program graph {graph.name}")
