"""Radix tree view: a pure function from a `CacheSnapshot` to an SVG string.

Root on the left, depth to the right. Circle area follows a node's token count; colour says whether
running requests lock it, it is evictable, or it was just evicted (a dashed ghost, drawn from the
previous snapshot). Large trees stay bounded: nodes are chosen best-first (locked, then recently
used, then big subtrees) up to `max_nodes` and `max_depth`; every child left out is folded into one
summary node per parent that counts what it hides.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from sglbench.runtime.events import Event
from sglbench.runtime.records import CacheSnapshot, NodeSnapshot
from sglbench.viz.markup import clip, esc, fmt, pct, svg, text

COLORS = {
    "root": "#495057",
    "locked": "#f76707",
    "evictable": "#1c7ed6",
    "evicted": "#fa5252",
    "summary": "#ced4da",
}
_ROW = 20
_COL = 200
_TOP = 44
_LEFT = 16
_MAX_GHOSTS = 24


@dataclass(frozen=True)
class _Subtree:
    """Totals over a node and everything below it."""

    nodes: int
    tokens: int
    hits: int
    locked_tokens: int
    recency: int  # largest last_access below


@dataclass(frozen=True)
class _Item:
    """One drawn mark: a cache node, a summary of hidden children, or an evicted ghost."""

    key: str
    parent: str | None
    kind: str  # root | locked | evictable | summary | evicted
    tokens: int
    hits: int
    label: str
    title: str


def recently_evicted(events: Iterable[Event]) -> frozenset[int]:
    """Ids of the nodes that `cache.evict` events among `events` dropped."""
    return frozenset(int(e.data["node_id"]) for e in events if e.kind == "cache.evict")


Decode = Callable[[Sequence[int]], str]
"""Token ids to text (e.g. `rt.tokenizer.decode`): labels drawn nodes of a snapshot taken without text."""


def _node_text(node: NodeSnapshot, decode: Decode | None) -> str:
    if node.text_preview is not None:
        return node.text_preview
    if decode is not None:
        return decode(list(node.token_ids_preview))
    return " ".join(str(t) for t in node.token_ids_preview)


def _node_item(node: NodeSnapshot, parent: str | None, decode: Decode | None) -> _Item:
    if node.parent_id is None:
        return _Item(f"n{node.id}", None, "root", 0, node.hit_count, "root", f"root (node {node.id})")
    kind = "locked" if node.lock_ref > 0 else "evictable"
    more = "…" if node.num_tokens > len(node.token_ids_preview) else ""
    hits = f" · {node.hit_count} hit{'s' if node.hit_count != 1 else ''}" if node.hit_count else ""
    preview = _node_text(node, decode)
    title = (f"{preview}{more}\n— node {node.id}: {node.num_tokens} tokens, lock_ref {node.lock_ref}, "
             f"{node.hit_count} hits, last access {node.last_access}")
    return _Item(f"n{node.id}", parent, kind, node.num_tokens, node.hit_count,
                 f"{clip(preview, 16)} · {node.num_tokens} tok{hits}", title)


def _subtrees(root: int, children: dict[int, list[int]], by_id: dict[int, NodeSnapshot]) -> tuple[
        list[int], dict[int, int], dict[int, _Subtree]]:
    """Preorder from the root, each node's depth, and each node's subtree totals."""
    order, depth = [], {root: 0}
    stack = [root]
    while stack:
        nid = stack.pop()
        order.append(nid)
        for child in reversed(children.get(nid, ())):
            depth[child] = depth[nid] + 1
            stack.append(child)
    totals: dict[int, _Subtree] = {}
    for nid in reversed(order):
        n = by_id[nid]
        below = [totals[c] for c in children.get(nid, ())]
        totals[nid] = _Subtree(
            nodes=1 + sum(b.nodes for b in below),
            tokens=n.num_tokens + sum(b.tokens for b in below),
            hits=n.hit_count + sum(b.hits for b in below),
            locked_tokens=(n.num_tokens if n.lock_ref > 0 else 0) + sum(b.locked_tokens for b in below),
            recency=max([n.last_access, *(b.recency for b in below)]),
        )
    return order, depth, totals


def _choose(root: int, children: dict[int, list[int]], depth: dict[int, int], totals: dict[int, _Subtree],
            rank: dict[int, int], max_nodes: int, max_depth: int) -> set[int]:
    """Best-first from the root: locked subtrees, then recently used, then large ones; ancestor-closed."""
    chosen: set[int] = set()
    heap = [(0, 0, 0, rank[root], root)]
    while heap and len(chosen) < max_nodes:
        *_, nid = heapq.heappop(heap)
        chosen.add(nid)
        if depth[nid] >= max_depth:
            continue
        for c in children.get(nid, ()):
            t = totals[c]
            heapq.heappush(heap, (-(t.locked_tokens > 0), -t.recency, -t.tokens, rank[c], c))
    return chosen


def _summary(parent: int, hidden: list[int], totals: dict[int, _Subtree]) -> _Item:
    t = [totals[h] for h in hidden]
    nodes, tokens = sum(x.nodes for x in t), sum(x.tokens for x in t)
    hits, locked = sum(x.hits for x in t), sum(x.locked_tokens for x in t)
    title = (f"{nodes} nodes in {len(hidden)} subtrees folded: {tokens} tokens "
             f"({locked} locked), {hits} hits")
    return _Item(f"s{parent}", f"n{parent}", "summary", tokens, hits, f"+{nodes} nodes · {fmt(tokens)} tok", title)


def _ghosts(previous: CacheSnapshot | None, evicted: Collection[int], present: dict[int, NodeSnapshot],
            chosen: set[int], decode: Decode | None) -> list[_Item]:
    """Evicted nodes of the previous snapshot, hung under their nearest drawn ancestor (or ghost)."""
    if previous is None or not evicted:
        return []
    prev = {n.id: n for n in previous.nodes}
    drawn: set[int] = set()
    items = []
    for node in previous.nodes:  # preorder: a ghost's evicted parent comes first
        if node.id not in evicted or node.id in present or len(items) >= _MAX_GHOSTS:
            continue
        anchor = node.parent_id
        while anchor is not None and anchor not in drawn and anchor not in chosen:
            anchor = prev[anchor].parent_id if anchor in prev else None
        if anchor is None:
            continue
        drawn.add(node.id)
        base = _node_item(node, None, decode)
        items.append(_Item(f"e{node.id}", f"e{anchor}" if anchor in drawn else f"n{anchor}", "evicted",
                           node.num_tokens, node.hit_count, base.label, "evicted: " + base.title))
    return items


def _layout(items: list[_Item]) -> dict[str, tuple[float, float]]:
    """(x, y) per item: leaves on successive rows in preorder, parents centred on their children."""
    kids: dict[str | None, list[str]] = {}
    for it in items:
        kids.setdefault(it.parent, []).append(it.key)
    pos: dict[str, tuple[float, float]] = {}
    row = 0
    root = kids[None][0]
    stack: list[tuple[str, int, bool]] = [(root, 0, False)]
    while stack:
        key, d, expanded = stack.pop()
        children = kids.get(key, [])
        if not children:
            pos[key] = (_LEFT + d * _COL, _TOP + row * _ROW)
            row += 1
        elif expanded:
            ys = [pos[c][1] for c in children]
            pos[key] = (_LEFT + d * _COL, (ys[0] + ys[-1]) / 2)
        else:
            stack.append((key, d, True))
            stack.extend((c, d + 1, False) for c in reversed(children))
    return pos


def _radius(it: _Item, max_tokens: int) -> float:
    if it.kind == "root":
        return 5.0
    return 3.0 + 9.0 * math.sqrt(it.tokens / max_tokens) if max_tokens else 3.0


def _mark(it: _Item, x: float, y: float, r: float) -> str:
    tip = f"<title>{esc(it.title)}</title>"
    if it.kind == "summary":
        return (f'<g class="summary"><rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" rx="3" '
                f'fill="{COLORS["summary"]}" stroke="#868e96" stroke-dasharray="2 2"/>{tip}'
                f"{text(x + 10, y + 4, it.label, fill='#868e96', size=10)}</g>")
    if it.kind == "evicted":
        shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="white" stroke="{COLORS["evicted"]}" '
                 f'stroke-dasharray="3 2" stroke-width="1.5"/>')
        fill = COLORS["evicted"]
    else:
        ring = min(1.0 + math.log2(1 + it.hits), 4.0)  # hits thicken the outline
        shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{COLORS[it.kind]}" '
                 f'stroke="#212529" stroke-width="{ring:.1f}" stroke-opacity="{0.25 if it.hits else 0.0}"/>')
        fill = "#212529"
    return f'<g class="node {it.kind}">{shape}{tip}{text(x + r + 4, y + 4, it.label, fill=fill, size=10)}</g>'


def _legend(snapshot: CacheSnapshot, shown: int, total: int, ghosts: int, evicted: int) -> str:
    c = snapshot.counters
    head = (f"radix cache v{snapshot.version}{' (disabled)' if snapshot.disabled else ''} · "
            f"{fmt(total)} nodes · {fmt(snapshot.total_size)} tokens (locked {fmt(snapshot.protected_size)}, "
            f"evictable {fmt(snapshot.evictable_size)}) · hit rate {pct(c.hit_rate)} · showing {fmt(shown)}"
            + (f" · evicted {evicted} (drawn {ghosts})" if evicted else ""))
    parts = [text(8, 15, head, weight="bold")]
    x = 8.0
    for kind, name in (("locked", "locked"), ("evictable", "evictable"), ("evicted", "just evicted"),
                       ("summary", "folded")):
        parts.append(f'<rect x="{x:.1f}" y="22" width="10" height="10" rx="2" fill="{COLORS[kind]}"/>')
        parts.append(text(x + 14, 31, name))
        x += 30 + 6.5 * len(name)
    parts.append(text(x, 31, "circle area ∝ tokens, dark ring = hits, hover for text", fill="#868e96"))
    return "".join(parts)


def render_tree(
    snapshot: CacheSnapshot,
    *,
    evicted: Collection[int] = frozenset(),
    previous: CacheSnapshot | None = None,
    max_nodes: int = 200,
    max_depth: int = 12,
    decode: Decode | None = None,
) -> str:
    """SVG of the radix tree, at most `max_nodes` nodes (plus fold summaries and up to 24 evicted ghosts).

    `evicted`: node ids dropped since `previous` (see `recently_evicted`); they are drawn as ghosts
    from `previous`, since the current snapshot no longer has them. decode: labels drawn nodes that
    have no text preview, so callers can take cheap text-less snapshots and decode only what is drawn.
    """
    if max_nodes < 1 or max_depth < 1:
        raise ValueError(f"max_nodes and max_depth must be >= 1, got {max_nodes} and {max_depth}")
    by_id = {n.id: n for n in snapshot.nodes}
    roots = [n for n in snapshot.nodes if n.parent_id is None]
    if not roots:
        body = _legend(snapshot, 0, 0, 0, len(evicted)) + text(_LEFT, _TOP + 10, "empty snapshot")
        return svg(640, _TOP + 30, body, cls="sgl-radix-tree", label="radix tree")
    root = roots[0].id
    children: dict[int, list[int]] = {}
    for n in snapshot.nodes:
        if n.parent_id is not None and n.parent_id in by_id:
            children.setdefault(n.parent_id, []).append(n.id)
    order, depth, totals = _subtrees(root, children, by_id)
    rank = {nid: i for i, nid in enumerate(order)}
    chosen = _choose(root, children, depth, totals, rank, max_nodes, max_depth)
    items: list[_Item] = []
    for nid in order:
        if nid not in chosen:
            continue
        node = by_id[nid]
        items.append(_node_item(node, None if nid == root else f"n{node.parent_id}", decode))
        hidden = [c for c in children.get(nid, ()) if c not in chosen]
        if hidden:
            items.append(_summary(nid, hidden, totals))
    ghosts = _ghosts(previous, evicted, by_id, chosen, decode)
    items += ghosts
    pos = _layout(items)
    max_tokens = max((it.tokens for it in items if it.kind in ("locked", "evictable", "evicted")), default=0)
    edges, marks = [], []
    for it in items:
        x, y = pos[it.key]
        r = _radius(it, max_tokens) if it.kind != "summary" else 6.0
        if it.parent is not None:
            px, py = pos[it.parent]
            mid = (px + x) / 2
            dash = ' stroke-dasharray="3 2"' if it.kind in ("summary", "evicted") else ""
            edges.append(f'<path d="M{px:.1f},{py:.1f} C{mid:.1f},{py:.1f} {mid:.1f},{y:.1f} {x:.1f},{y:.1f}" '
                         f'fill="none" stroke="#adb5bd"{dash}/>')
        marks.append(_mark(it, x, y, r))
    width = max(x for x, _ in pos.values()) + _COL + 40
    height = max(y for _, y in pos.values()) + _ROW
    legend = _legend(snapshot, len(chosen), len(order), len(ghosts), len(evicted))
    body = legend + f'<g class="edges">{"".join(edges)}</g><g class="marks">{"".join(marks)}</g>'
    return svg(max(width, 760), height, body, cls="sgl-radix-tree", label="radix tree")
