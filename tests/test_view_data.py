"""The workbench's synced traits (sglbench.viz.view_data): tree, series, calls, graphs and summary, from
synthetic records (exact numbers) and from small real runs on the default model (names, branches, texts)."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

import sglbench as sgl
from sglbench.lang.global_config import global_config
from sglbench.runtime.records import CacheCounters, CacheSnapshot, EngineMetrics, NodeSnapshot
from sglbench.viz.adapters import graph_from_telemetry, run_steps
from sglbench.viz.latency import CallLatency, RequestTimeline
from sglbench.viz.view_data import (
    MAX_CALLS,
    MAX_WINDOWS,
    SERIES_KEYS,
    TEXT_CHARS,
    calls_data,
    evicted_nodes,
    graph_data,
    graphs_data,
    recent_decode_tps,
    series_data,
    summary_data,
    tree_data,
    window_width,
)

# ---------------------------------------------------------------------------------------------- helpers


def node(nid: int, parent: int | None, tokens: int = 4, *, last: int = 0, locks: int = 0, hits: int = 0,
         text: str | None = None, preview: tuple[int, ...] | None = None) -> NodeSnapshot:
    preview = preview if preview is not None else tuple(range(nid, nid + min(tokens, 32)))
    return NodeSnapshot(nid, parent, tokens if parent is not None else 0, preview if parent is not None else (),
                        locks, last, hits, text)


def snap(nodes: list[NodeSnapshot], version: int = 1) -> CacheSnapshot:
    locked = sum(n.num_tokens for n in nodes if n.lock_ref)
    total = sum(n.num_tokens for n in nodes)
    return CacheSnapshot(version, False, tuple(nodes), total - locked, locked, total, CacheCounters(10, 5, total, 0))


def metrics(t: float, *, prefill: int = 0, decode: int = 0, query: int = 0, hit: int = 0, waiting: int = 0,
            running: int = 0, free: int = 60, evictable: int = 20, locked: int = 10) -> EngineMetrics:
    return EngineMetrics(time=t, num_waiting=waiting, num_running=running, pool_slots=100, pool_free=free,
                         cache_evictable=evictable, cache_protected=locked, cache=CacheCounters(query, hit, 0, 0),
                         prefill_tokens=prefill, decode_tokens=decode, num_steps=0, num_finished=0,
                         num_retractions=0)


def call(start: float, ttft: float | None, e2e: float, completion: int = 5, rid: str = "r", prompt: int = 10,
         cached: int = 4) -> CallLatency:
    decode = None if ttft is None else e2e - ttft
    return CallLatency(None, rid, prompt, cached, completion, "length", start, 0.0, ttft, decode, e2e,
                       (completion - 1) / decode if decode else None)


# ---------------------------------------------------------------------------------------------- tree


def test_tree_sends_every_node_parents_first_with_depth_and_states():
    nodes = [node(0, None), node(1, 0, 5, last=3, hits=2, text="ab"), node(2, 1, 7, last=4, locks=1, text="cd"),
             node(3, 0, 40, last=1, text="long")]
    data = tree_data(snap(nodes), decode=None)
    assert (data["node_count"], data["omitted"], data["total_tokens"], data["locked_tokens"]) == (3, 0, 52, 7)  # cached nodes, the root not counted
    by_id = {n["id"]: n for n in data["nodes"]}
    assert [n["id"] for n in data["nodes"]] == [0, 1, 2, 3]
    assert by_id[0] == {"id": 0, "parent": None, "tokens": 0, "text": "", "hits": 0, "locks": 0, "last_access": 0,
                        "state": "root", "depth_tokens": 0}
    assert (by_id[2]["state"], by_id[2]["depth_tokens"], by_id[2]["parent"]) == ("locked", 12, 1)
    assert (by_id[1]["state"], by_id[1]["hits"]) == ("evictable", 2)
    assert by_id[3]["text"] == "long…"  # 40 tokens, a 32-token preview: marked as cut
    json.dumps(data)


def test_tree_caps_at_the_most_recently_used_keeping_ancestors_and_locked_nodes():
    rng = random.Random(3)
    parents = [None, 0, *(rng.randrange(max(1, i - 20), i) for i in range(2, 3000))]
    last = [rng.randrange(10_000) for _ in range(3000)]
    for i in range(2999, 0, -1):  # a prefix match touches the whole path: a parent is as recent as its children
        last[parents[i]] = max(last[parents[i]], last[i])
    nodes = [node(i, parents[i], 3, last=last[i]) for i in range(3000)]
    old = min(range(1, 3000), key=lambda i: last[i])
    nodes[old] = node(old, parents[old], 3, last=last[old], locks=1)  # the least recent, but locked
    decoded: list[tuple[int, ...]] = []
    data = tree_data(snap(nodes), decode=lambda ids: decoded.append(tuple(ids)) or "t", max_nodes=500)
    sent = {n["id"]: n for n in data["nodes"]}
    assert len(sent) == 500 and data["omitted"] == 2500 and data["node_count"] == 2999
    assert len(decoded) == 499  # only the sent nodes (not the root) were decoded
    assert sent[old]["state"] == "locked"
    seen: set[int] = set()
    for n in data["nodes"]:  # ancestor-closed, parents before children
        assert n["parent"] is None or n["parent"] in seen
        seen.add(n["id"])
    chain = set()
    cur = old
    while cur is not None:
        chain.add(cur)
        cur = parents[cur]
    recent = [last[i] for i in sent if i not in chain]
    assert min(recent) >= max(last[i] for i in range(3000) if i not in sent)  # the omitted are the least recent


def test_tree_text_is_capped_and_ghosts_hang_under_their_nearest_sent_ancestor():
    before = snap([node(0, None), node(1, 0, 4, text="x" * 5000), node(2, 1, 3, text="gone"),
                   node(3, 2, 2, text="gone too")], version=1)
    after = snap([node(0, None), node(1, 0, 4, text="x" * 5000)], version=2)
    ghosts = evicted_nodes(before, {2, 3, 99}, after)
    assert [g.id for g in ghosts] == [2, 3]
    data = tree_data(after, None, ghosts)
    by_id = {n["id"]: n for n in data["nodes"]}
    assert len(by_id[1]["text"]) == TEXT_CHARS and by_id[1]["text"].endswith("…")
    assert (by_id[2]["state"], by_id[2]["parent"], by_id[3]["parent"]) == ("evicted", 1, 2)
    assert by_id[3]["depth_tokens"] == 4 + 3 + 2
    assert data["omitted"] == 0 and data["node_count"] == 1
    assert evicted_nodes(None, {2}, after) == ()


# ---------------------------------------------------------------------------------------------- series


def test_series_bins_rates_latencies_and_gauges_from_the_first_request():
    t0 = 100.0
    samples = [metrics(99.0),  # before the first request: only a baseline
               metrics(100.2, prefill=50, query=40, hit=10, running=2, waiting=1, free=50),
               metrics(100.4, prefill=100, decode=10, query=80, hit=50, running=2, free=40),
               metrics(101.3, prefill=100, decode=30, query=80, hit=50, running=1, free=45)]
    calls = [call(0.0, 0.1, 0.3, completion=3, rid="a"), call(0.1, 0.2, 1.2, completion=11, rid="b")]
    s = series_data(samples, calls, t0)
    assert s["t"] == [0.0, 0.5, 1.0] and all(len(s[k]) == 3 for k in SERIES_KEYS)
    assert s["prefill_tps"] == [200.0, 0.0, 0.0]  # 100 tokens between 99.0 and 100.4, in a 0.5 s window
    assert s["decode_tps"][:2] == [20.0, 0.0]
    assert s["decode_tps"][2] == pytest.approx(20 / 0.3, rel=1e-5)  # the last window is partial: 0.3 s of it
    assert s["hit_rate"] == [50 / 80, None, None]  # no queries: no rate
    assert s["ttft_p50"] == [0.1, None, None] and s["ttft_p99"] == [0.2, None, None]
    assert s["tpot_p50"] == [0.1, None, 0.1]  # a: 0.2 s / 2 tokens at 0.3 s; b: 1.0 s / 10 at 1.3 s
    assert s["running"] == [2, 2, 1] and s["waiting"] == [0, 0, 0]
    assert s["kv_free"] == [40, 40, 45] and s["kv_locked"] == [10, 10, 10] and s["kv_evictable"] == [20, 20, 20]
    assert s["kv_running"] == [30, 30, 25]  # 100 - free - cached
    assert s["pool_slots"] == 100
    assert s["totals"] == {"requests": 2, "prompt_tokens": 20, "cached_tokens": 8, "completion_tokens": 14,
                           "hit_rate": 0.4}


def test_series_without_samples_before_a_window_has_nulls_and_long_runs_stay_bounded():
    s = series_data([metrics(102.2, prefill=10)], [call(0.0, 0.1, 0.2)], 100.0)
    assert s["t"][:2] == [0.0, 0.5] and s["running"][:4] == [None] * 4 and s["running"][4] == 0
    assert s["prefill_tps"][4] is None  # no earlier sample: no rate
    empty = series_data([metrics(1.0)], [], None)
    assert empty["t"] == [] and empty["totals"]["requests"] == 0 and empty["pool_slots"] == 100
    long = series_data([metrics(0.0), metrics(3600.0, decode=7200)], [], 0.0)
    assert len(long["t"]) <= MAX_WINDOWS and long["t"][1] == window_width(3600.0) >= 6.0
    assert window_width(10.0) == 0.5 and window_width(299.9) == 0.5 and window_width(300.0) == 1.0


def test_recent_decode_rate():
    samples = [metrics(0.0), metrics(1.0, decode=10, running=1), metrics(2.0, decode=30, running=1),
               metrics(3.0, decode=70, running=1)]
    assert recent_decode_tps(samples) == 30.0  # the last two seconds: 60 tokens
    assert recent_decode_tps(samples[:1]) is None
    assert recent_decode_tps([*samples, metrics(4.0, decode=70)]) == 0.0  # nothing running now


def test_summary_data():
    m = metrics(5.0, query=200, hit=150, running=3, waiting=2)
    s = summary_data(m, 12.34567891, "tiny-llama")
    assert s == {"running": 3, "waiting": 2, "finished": 0, "steps": 0, "pool_free": 60, "pool_slots": 100,
                 "cached": 30, "locked": 10, "hit_rate": 0.75, "retractions": 0, "decode_tps": 12.3457,
                 "model": "tiny-llama"}


# ---------------------------------------------------------------------------------------------- calls and graphs (synthetic)


def fake_run(program_id: str = "p1", name: str = "judge", *, reverse_forks: bool = False, **extra):
    rec = lambda state, kind, name, rids, t: SimpleNamespace(  # noqa: E731
        program_id=program_id, state_id=state, kind=kind, name=name, rids=rids, queued=t, finished=t + 0.1,
        scheduled=None, first_token=None, prompt_tokens=5, cached_tokens=0, completion_tokens=4)
    forks = [SimpleNamespace(parent="s0", child=f"s{i + 1}", index=i, time=0.1) for i in range(3)]
    return SimpleNamespace(
        program_id=program_id, name=name, started=0.0, finished=1.0, error=None, states=("s0", "s1", "s2", "s3"),
        calls=(rec("s3", "gen", "j", ("r3",), 0.2), rec("s1", "gen", "j", ("r1",), 0.25),
               rec("s2", "gen", "j", ("r2",), 0.2), rec("s0", "select", "grade", ("r4", "r5"), 0.6)),
        forks=tuple(reversed(forks)) if reverse_forks else tuple(forks),
        joins=tuple(SimpleNamespace(parent="s0", child=f"s{i + 1}", time=0.5) for i in range(3)), **extra)


def test_calls_are_named_by_program_call_and_branch():
    run = fake_run()
    calls = [call(0.0, 0.1, 0.2, rid=r) for r in ("r1", "r2", "r3", "r5", "raw")]
    rows = calls_data(calls, [run])
    assert [(r["program"], r["call"], r["branch"]) for r in rows] == [
        ("judge", "gen j", 0), ("judge", "gen j", 1), ("judge", "gen j", 2), ("judge", "select grade", None),
        (None, "request", None)]
    assert rows[0]["run"] == "p1" and rows[-1]["run"] is None
    assert rows[0]["tpot_s"] == pytest.approx(0.1 / 4)
    assert len(calls_data([call(0.0, 0.1, 0.2, rid=str(i)) for i in range(MAX_CALLS + 10)])) == MAX_CALLS


def test_graph_branches_follow_the_trace_numbering_whatever_order_forks_started():
    for reverse in (False, True):
        steps, edges = run_steps(fake_run(reverse_forks=reverse))
        labels = [s.node.label for s in steps if s.node.kind == "state"]
        assert labels == ["program", "branch 0", "branch 1", "branch 2"]
        fork_edges = [dst for src, dst in edges if dst.startswith("state:") and src != dst]
        assert fork_edges == ["state:1", "state:2", "state:3"]  # branch order, not start order
    g = graph_data(fake_run())
    assert (g["id"], g["name"], g["title"], g["inputs"], g["status"], g["latency_s"]) == (
        "p1", "judge", "judge", {}, "done", 1.0)  # no arguments recorded: the bare name
    by_label = {(n["label"], n["branch"]) for n in g["nodes"]}
    assert {("gen j", 0), ("gen j", 1), ("gen j", 2), ("select grade", None), ("join", None)} <= by_label
    ids = {n["id"] for n in g["nodes"]}
    assert all(a in ids and b in ids for a, b in g["edges"])
    assert graph_from_telemetry(fake_run()).nodes[1].label == "branch 0"


def test_graph_title_carries_the_inputs_when_telemetry_records_them():
    run = fake_run(inputs={"essay": "The sea is " + "very " * 60 + "blue", "n": 3})
    g = graph_data(run)
    assert g["inputs"]["n"] == "3" and len(g["inputs"]["essay"]) == 200
    assert g["title"].startswith("judge(essay=The sea is very") and "n=3)" in g["title"]
    running = graph_data(SimpleNamespace(**{**vars(fake_run()), "finished": None}))
    assert running["status"] == "running" and running["latency_s"] is None
    failed = graph_data(SimpleNamespace(**{**vars(fake_run()), "error": "ValueError('x')"}))
    assert failed["status"] == "failed"
    assert [g["id"] for g in graphs_data([fake_run(str(i)) for i in range(30)])] == [str(i) for i in range(6, 30)]


# ---------------------------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def rt():
    runtime = sgl.Runtime(device="cpu", max_total_tokens=4096)  # the embedded default model
    previous = global_config.default_backend
    sgl.set_default_backend(runtime)
    yield runtime
    global_config.default_backend = previous
    runtime.shutdown()


@sgl.function
def judge(s, essay):
    s += "Essay: " + essay + "\n"
    forks = s.fork(3)
    for f, dim in zip(forks, ["clarity", "evidence", "style"]):
        f += "Judge the " + dim + ": " + sgl.gen("verdict", max_tokens=4)
    forks.join()
    s += "Grade: " + sgl.gen("grade", max_tokens=2)


def test_real_run_calls_graph_and_tree(rt):
    start = rt.events.next_seq
    state = judge.run(essay="The sea is blue.", temperature=0)
    rt.wait_idle()
    timeline = RequestTimeline()
    events = list(rt.events.since(start))
    timeline.feed(events)
    run = state.telemetry
    rows = [r for r in calls_data(timeline.calls, [run]) if r["program"] == "judge"]
    verdicts = sorted(r["branch"] for r in rows if r["call"] == "gen verdict")
    assert verdicts == [0, 1, 2] and [r["branch"] for r in rows if r["call"] == "gen grade"] == [None]
    assert all(r["run"] == run.program_id and r["e2e_s"] >= r["ttft_s"] > 0 for r in rows)
    g = graph_data(run)
    assert g["name"] == "judge" and g["status"] == "done" and g["latency_s"] > 0
    assert sorted(n["branch"] for n in g["nodes"] if n["kind"] == "gen" and n["label"] == "gen verdict") == [0, 1, 2]
    assert sorted(n["label"] for n in g["nodes"] if n["kind"] == "state") == ["branch 0", "branch 1", "branch 2",
                                                                              "program"]
    tree = tree_data(rt.cache_snapshot(with_text=False), rt.tokenizer.decode)
    texts = [n["text"] for n in tree["nodes"]]
    assert any("Essay: The sea is blue." in t for t in texts)
    assert any("clarity" in t for t in texts)
    assert tree["total_tokens"] == sum(n["tokens"] for n in tree["nodes"])
    t0 = next(e.time for e in events if e.kind == "request.arrived")
    series = series_data([rt.metrics()], timeline.calls, t0)
    assert series["totals"]["requests"] == len(timeline.calls) and series["t"][0] == 0.0
    json.dumps([tree, series, g, rows])
