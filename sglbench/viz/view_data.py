"""Pure functions from engine and program records to the workbench's synced traits (JSON-ready values).

The shapes are the front-end contract's (`tree`, `series`, `calls`, `graphs`, `summary`): JavaScript draws
them in a notebook and in the HTML report, so everything a view shows is here, bounded in size: at most
`MAX_TREE_NODES` tree nodes (the least recently used beyond it are counted, not sent), `MAX_WINDOWS`
time windows, `MAX_CALLS` calls and `MAX_GRAPHS` program graphs.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import PurePath
from typing import Any

from sglbench.runtime.records import CacheSnapshot, EngineMetrics, NodeSnapshot
from sglbench.viz.adapters import (
    Step,
    as_program_graph,
    is_run,
    is_trace,
    run_steps,
    state_branches,
    trace_steps,
)
from sglbench.viz.graph import ProgramGraph
from sglbench.viz.latency import CallLatency, percentile
from sglbench.viz.markup import clip

MAX_TREE_NODES = 5000
TEXT_TOKENS = 600  # tokens decoded per node at most (its text is cut to TEXT_CHARS anyway)
TEXT_CHARS = 2000
WINDOW_S = 0.5
MAX_WINDOWS = 600
MAX_CALLS = 2000
MAX_GRAPHS = 24
INPUT_CHARS = 200
TITLE_CHARS = 80

PANELS = ("tree", "stats", "latency", "programs")
"""Every panel, in tab order."""

STATE_DEFAULTS: dict[str, Any] = {
    "panels": [], "summary_line": False, "status": "live", "status_note": "", "summary": None, "tree": None,
    "series": None, "calls": [], "graphs": [], "progress": None,
}
"""Each synced trait's value before anything was pushed (null: not computed yet)."""

SERIES_KEYS = ("t", "prefill_tps", "decode_tps", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90",
               "tpot_p99", "waiting", "running", "hit_rate", "kv_running", "kv_locked", "kv_evictable", "kv_free")

Decode = Callable[[Sequence[int]], str]


def _num(x: float | None, digits: int = 6) -> float | None:
    """A float rounded to `digits` significant figures (stable across polls, small in JSON); NaN -> None."""
    if x is None or math.isnan(x) or math.isinf(x):
        return None
    return float(f"{x:.{digits}g}")


# ------------------------------------------------------------------------------------------------ tree


def evicted_nodes(previous: CacheSnapshot | None, evicted: Iterable[int], current: CacheSnapshot,
                  limit: int = 256) -> tuple[NodeSnapshot, ...]:
    """Nodes of `previous` that events say were evicted and `current` no longer has, in `previous`'s order
    (parents first), at most `limit`: the ghosts the next tree update draws."""
    if previous is None:
        return ()
    gone = set(evicted) - {n.id for n in current.nodes}
    return tuple(n for n in previous.nodes if n.id in gone)[:limit]


def cached_decode(decode: Decode, size: int = 50_000) -> Decode:
    """`decode` remembering its answers (a node's text is decoded once, not on every update); the memory is
    dropped whole when it holds `size` texts."""
    texts: dict[tuple[int, ...], str] = {}

    def cached(ids: Sequence[int]) -> str:
        key = tuple(ids)
        text = texts.get(key)
        if text is None:
            if len(texts) >= size:
                texts.clear()
            text = texts[key] = decode(list(key))
        return text

    return cached


def _kept(nodes: Sequence[NodeSnapshot], by_id: dict[int, NodeSnapshot], max_nodes: int) -> set[int]:
    """Ids of at most `max_nodes` nodes, ancestor-closed: locked ones, then the most recently used."""
    if len(nodes) <= max_nodes:
        return {n.id for n in nodes}
    keep = {n.id for n in nodes if n.parent_id is None}
    for n in sorted(nodes, key=lambda n: (n.lock_ref > 0, n.last_access, n.id), reverse=True):
        if len(keep) >= max_nodes:
            break
        chain, cur = [], n
        while cur is not None and cur.id not in keep:
            chain.append(cur.id)
            cur = by_id.get(cur.parent_id) if cur.parent_id is not None else None
        if len(keep) + len(chain) <= max_nodes:
            keep.update(chain)
    return keep


def _text(node: NodeSnapshot, decode: Decode | None) -> str:
    """The node's edge text: its tokens decoded (up to TEXT_TOKENS; token ids if no decoder, the preview where a
    snapshot carries no full ids), an ellipsis when cut."""
    if node.parent_id is None:
        return ""
    ids = node.token_ids[:TEXT_TOKENS] if node.token_ids else node.token_ids_preview
    if decode is not None:
        text = decode(list(ids))
    elif node.text_preview is not None:
        text, ids = node.text_preview, node.token_ids_preview
    else:
        text = " ".join(str(t) for t in ids)
    if node.num_tokens > len(ids):
        text += "…"
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def _state(node: NodeSnapshot) -> str:
    return "root" if node.parent_id is None else "locked" if node.lock_ref > 0 else "evictable"


def tree_data(snapshot: CacheSnapshot, decode: Decode | None, evicted_previous: Sequence[NodeSnapshot] = (),
              max_nodes: int = MAX_TREE_NODES) -> dict[str, Any]:
    """The `tree` trait: at most `max_nodes` nodes (locked, then most recently used; ancestors always),
    parents first, only those decoded; `evicted_previous` (see `evicted_nodes`) become "evicted" ghosts
    under their nearest sent ancestor."""
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    by_id = {n.id: n for n in snapshot.nodes}
    keep = _kept(snapshot.nodes, by_id, max_nodes)
    depth: dict[int, int] = {}
    out: list[dict[str, Any]] = []

    def emit(node: NodeSnapshot, parent: int | None, state: str) -> None:
        depth[node.id] = depth.get(parent, 0) + node.num_tokens if parent is not None else 0
        out.append({"id": node.id, "parent": parent, "tokens": node.num_tokens, "text": _text(node, decode),
                    "hits": node.hit_count, "locks": node.lock_ref, "last_access": node.last_access,
                    "state": state, "depth_tokens": depth[node.id]})

    for node in snapshot.nodes:  # depth-first, root first: parents come before children
        if node.id in keep and (node.parent_id is None or node.parent_id in depth):
            emit(node, node.parent_id, _state(node))
    root = next((n["id"] for n in out if n["parent"] is None), None)
    ghosts = {n.id: n for n in evicted_previous if n.id not in by_id}
    for node in evicted_previous:
        if node.id not in ghosts or root is None:
            continue
        anchor = node.parent_id
        while anchor is not None and anchor not in depth:
            below = ghosts.get(anchor) or by_id.get(anchor)  # a ghost parent, or a cached node not sent
            anchor = below.parent_id if below is not None else None
        emit(node, root if anchor is None else anchor, "evicted")
    sent = sum(n["state"] != "evicted" for n in out)
    return {"version": snapshot.version, "disabled": snapshot.disabled, "total_tokens": snapshot.total_size,
            "evictable_tokens": snapshot.evictable_size, "locked_tokens": snapshot.protected_size,
            "node_count": len(snapshot.nodes) - 1,  # cached nodes: the root holds no tokens
            "omitted": len(snapshot.nodes) - sent, "nodes": out}


# ------------------------------------------------------------------------------------------------ series


def window_width(span: float, window: float = WINDOW_S, max_windows: int = MAX_WINDOWS) -> float:
    """`window` doubled until `span` seconds fit in `max_windows` windows (doubling keeps bin edges put)."""
    width = window
    while span / width >= max_windows:
        width *= 2
    return width


def _tpot(c: CallLatency) -> float | None:
    """Seconds per output token after the first (None for one token or no decode time)."""
    return c.decode_s / (c.completion_tokens - 1) if c.decode_s is not None and c.completion_tokens > 1 else None


def _percentiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    return tuple(_num(percentile(values, q)) for q in (50, 90, 99))  # type: ignore[return-value]


def _kv_running(m: EngineMetrics) -> int:
    """Slots held by running requests beyond the cache: the pool invariant's remainder."""
    return m.pool_slots - m.pool_free - m.cache_evictable - m.cache_protected


def _totals(calls: Sequence[CallLatency]) -> dict[str, Any]:
    prompt = sum(c.prompt_tokens for c in calls)
    cached = sum(c.cached_tokens for c in calls)
    return {"requests": len(calls), "prompt_tokens": prompt, "cached_tokens": cached,
            "completion_tokens": sum(c.completion_tokens for c in calls),
            "hit_rate": _num(cached / prompt if prompt else 0.0)}


def series_data(samples: Sequence[EngineMetrics], calls: Sequence[CallLatency], t0: float | None,
                window: float = WINDOW_S, max_windows: int = MAX_WINDOWS) -> dict[str, Any]:
    """The `series` trait: engine samples and finished calls binned into windows from `t0`.

    t0: the time (the events' clock, like samples' `time`) of the first request seen; the calls' `start_s`
    count from it. None (no request yet): empty series. Samples before t0 serve as the first baseline.
    Rates are counter differences between the last sample before a window and the last one in it; gauges
    (queue, KV split) are the last sample in the window; null where no sample tells.
    """
    series: dict[str, Any] = {k: [] for k in SERIES_KEYS}
    series["pool_slots"] = samples[-1].pool_slots if samples else 0
    series["totals"] = _totals(calls)
    if t0 is None:
        return series
    times = [m.time for m in samples]
    first_tokens = [(c.start_s + c.ttft_s, c.ttft_s) for c in calls if c.ttft_s is not None]
    finishes = [(c.start_s + c.e2e_s, tpot) for c in calls if (tpot := _tpot(c)) is not None]
    end = max([0.0, times[-1] - t0 if times else 0.0, *(t for t, _ in first_tokens), *(t for t, _ in finishes)])
    width = window_width(end, window, max_windows)
    count = int(end // width) + 1
    ttft: list[list[float]] = [[] for _ in range(count)]
    tpot: list[list[float]] = [[] for _ in range(count)]
    for t, value in first_tokens:
        ttft[min(max(int(t // width), 0), count - 1)].append(value)
    for t, value in finishes:
        tpot[min(max(int(t // width), 0), count - 1)].append(value)
    for k in range(count):
        lo, hi = t0 + k * width, t0 + (k + 1) * width
        a, b = bisect.bisect_left(times, lo) - 1, bisect.bisect_left(times, hi) - 1
        cur = samples[b] if b >= 0 else None  # the last sample in or before the window
        base = samples[a] if a >= 0 else None  # the last one before it: no new sample means an idle window
        seconds = max(min(hi, t0 + end) - lo, width / 2)  # a last, partial window counts at least half
        measured = cur is not None and base is not None
        delta = cur.cache - base.cache if measured else None
        series["t"].append(_num(k * width))
        series["prefill_tps"].append(_num((cur.prefill_tokens - base.prefill_tokens) / seconds) if measured else None)
        series["decode_tps"].append(_num((cur.decode_tokens - base.decode_tokens) / seconds) if measured else None)
        series["hit_rate"].append(_num(delta.hit_rate) if delta is not None and delta.query_tokens > 0 else None)
        for name, values in (("ttft", ttft[k]), ("tpot", tpot[k])):
            for q, value in zip((50, 90, 99), _percentiles(values)):
                series[f"{name}_p{q}"].append(value)
        series["waiting"].append(None if cur is None else cur.num_waiting)
        series["running"].append(None if cur is None else cur.num_running)
        series["kv_running"].append(None if cur is None else _kv_running(cur))
        series["kv_locked"].append(None if cur is None else cur.cache_protected)
        series["kv_evictable"].append(None if cur is None else cur.cache_evictable)
        series["kv_free"].append(None if cur is None else cur.pool_free)
    return series


def recent_decode_tps(samples: Sequence[EngineMetrics], span: float = 2.0) -> float | None:
    """Decode tokens per second over the last `span` seconds of samples; 0 when nothing runs; None before two
    samples."""
    if len(samples) < 2:
        return None
    last = samples[-1]
    if last.num_running == 0:
        return 0.0
    times = [m.time for m in samples]
    first = samples[max(bisect.bisect_right(times, last.time - span) - 1, 0)]
    seconds = last.time - first.time
    return _num((last.decode_tokens - first.decode_tokens) / seconds) if seconds > 0 else None


# ------------------------------------------------------------------------------------------------ calls


def _call_index(runs: Iterable[Any]) -> dict[str, tuple[Any, Any, int | None]]:
    """rid -> (run, call record, fork branch of the call's state) over the runs' calls."""
    index = {}
    for run in runs:
        branches = state_branches(run)
        for call in run.calls:
            for rid in call.rids:
                index[rid] = (run, call, branches.get(call.state_id))
    return index


def calls_data(calls: Sequence[CallLatency], runs: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """The `calls` trait: the latest `MAX_CALLS` finished requests, each named by its program function and
    gen/select call (found through the runs' telemetry; raw requests have program null, call "request")."""
    index = _call_index(runs)
    out = []
    for c in list(calls)[-MAX_CALLS:]:
        run, record, branch = index.get(c.rid, (None, None, None))
        call = "request" if record is None else f"{record.kind} {record.name or ''}".strip()
        out.append({
            "program": None if run is None else run.name,
            "run": run.program_id if run is not None else c.program, "call": call, "branch": branch,
            "rid": c.rid, "prompt_tokens": c.prompt_tokens, "cached_tokens": c.cached_tokens,
            "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
            "start_s": _num(c.start_s), "queue_s": _num(c.queue_s), "ttft_s": _num(c.ttft_s),
            "decode_s": _num(c.decode_s), "e2e_s": _num(c.e2e_s), "tpot_s": _num(_tpot(c)),
            "tokens_per_s": _num(c.tokens_per_s),
        })
    return out


# ------------------------------------------------------------------------------------------------ graphs


def _inputs(run: Any) -> dict[str, str] | None:
    """Argument name -> repr (capped) of a run, None when its telemetry does not record arguments."""
    inputs = getattr(run, "inputs", None)
    if not isinstance(inputs, dict):
        return None
    return {str(k): clip(v if isinstance(v, str) else repr(v), INPUT_CHARS) for k, v in inputs.items()}


def _title(name: str, inputs: dict[str, str] | None) -> str:
    """`name(arg=value, ...)`, each value and the whole title short; the bare name without inputs."""
    if inputs is None:
        return name
    return clip(f"{name}(" + ", ".join(f"{k}={clip(v, 24)}" for k, v in inputs.items()) + ")", TITLE_CHARS)


def _node(step: Any) -> dict[str, Any]:
    n = step.node
    return {"id": n.id, "kind": n.kind, "label": step.name, "state": n.state, "branch": step.branch,
            "latency_s": _num(n.latency_s), "tokens": step.tokens}


def _status_of(graph: ProgramGraph) -> str:
    states = {n.state for n in graph.nodes}
    return "waiting" if states <= {"waiting"} else "done" if states == {"done"} else "running"


def graph_data(item: Any) -> dict[str, Any]:
    """One `graphs` entry from a program run's telemetry (rich: inputs, status, latency, branches), a
    trace (branches, every step waiting) or a plain `ProgramGraph`."""
    if is_run(item):
        steps, edges = run_steps(item)
        inputs = _inputs(item)
        status = ("running" if item.finished is None else "failed" if getattr(item, "error", None) else "done")
        return {"id": str(item.program_id), "name": item.name, "title": _title(item.name, inputs),
                "inputs": inputs or {}, "status": status,
                "latency_s": None if item.finished is None else _num(item.finished - item.started),
                "nodes": [_node(s) for s in steps], "edges": [list(e) for e in edges]}
    if is_trace(item) and not isinstance(item, ProgramGraph):
        steps, edges = trace_steps(item)
        graph = as_program_graph(item)
    else:
        graph = as_program_graph(item)
        steps = tuple(Step(n, None, None, n.label) for n in graph.nodes)
        edges = graph.edges
    digest = hashlib.sha1(repr((graph.name, graph.nodes, graph.edges)).encode()).hexdigest()[:16]
    return {"id": f"graph-{digest}", "name": graph.name, "title": graph.name, "inputs": {},
            "status": _status_of(graph), "latency_s": None, "nodes": [_node(s) for s in steps],
            "edges": [list(e) for e in edges]}


def graphs_data(items: Iterable[Any]) -> list[dict[str, Any]]:
    """The `graphs` trait: the latest `MAX_GRAPHS` of runs, traces or graphs, newest last."""
    return [graph_data(item) for item in list(items)[-MAX_GRAPHS:]]


# ------------------------------------------------------------------------------------------------ summary


def model_name(model_path: str | None) -> str:
    """A model's short name: the last part of its path."""
    return PurePath(model_path).name if model_path else ""


def summary_data(metrics: EngineMetrics, decode_tps: float | None, model: str = "") -> dict[str, Any]:
    """The `summary` trait: the engine line above the tabs."""
    m = metrics
    return {"running": m.num_running, "waiting": m.num_waiting, "finished": m.num_finished, "steps": m.num_steps,
            "pool_free": m.pool_free, "pool_slots": m.pool_slots, "cached": m.cache_evictable + m.cache_protected,
            "locked": m.cache_protected, "hit_rate": _num(m.hit_rate), "retractions": m.num_retractions,
            "decode_tps": _num(decode_tps), "model": model}
