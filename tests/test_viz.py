"""Viz layer: SVG views are well-formed, bounded and escaped; widgets sync state without a browser;
the poller is throttled; reports are self-contained; latency rows match a real tiny-model run."""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from sglbench.runtime.events import Event, EventLog
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.records import CacheCounters, CacheSnapshot, EngineMetrics, NodeSnapshot
from sglbench.runtime.runtime import Runtime
from sglbench.viz import widgets
from sglbench.viz.charts import Series, line_chart
from sglbench.viz.graph import GraphNode, ProgramGraph, layers, topological_order
from sglbench.viz.latency import COLUMNS, call_latencies, latency_table, render_latency
from sglbench.viz.poller import Poller
from sglbench.viz.recorder import MetricsRecorder
from sglbench.viz.report import write_report
from sglbench.viz.stats import hit_rate_series, render_stats
from sglbench.viz.tree import recently_evicted, render_tree

EVIL = "<script>alert('x')</script> & \x00 co"
SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(markup)


def node_marks(svg: str, kind: str = "") -> list[ET.Element]:
    return [g for g in parse(svg).iter(f"{SVG}g") if g.get("class", "").startswith(f"node {kind}".rstrip())]


def snapshot(nodes: list[NodeSnapshot], version: int = 1) -> CacheSnapshot:
    locked = sum(n.num_tokens for n in nodes if n.lock_ref)
    total = sum(n.num_tokens for n in nodes)
    return CacheSnapshot(version, False, tuple(nodes), total - locked, locked, total, CacheCounters(100, 40, total, 0))


def random_tree(count: int, seed: int = 0) -> CacheSnapshot:
    """`count` nodes: chains (deep) mixed with branching (wide), every tenth with EVIL text."""
    rng = random.Random(seed)
    nodes = [NodeSnapshot(0, None, 0, (), 0, 0, 0, None)]
    for i in range(1, count):
        parent = i - 1 if rng.random() < 0.5 else rng.randrange(i)
        nodes.append(NodeSnapshot(i, parent, rng.randint(1, 64), (3, 4), int(i % 211 == 0), i, i % 3,
                                  EVIL if i % 10 == 0 else f"run {i}"))
    return snapshot(nodes)


def metrics(t: float, query: int, hit: int, free: int = 50, evictable: int = 30, locked: int = 10) -> EngineMetrics:
    return EngineMetrics(time=t, num_waiting=0, num_running=1, pool_slots=100, pool_free=free,
                         cache_evictable=evictable, cache_protected=locked, cache=CacheCounters(query, hit, 40, 0),
                         prefill_tokens=query, decode_tokens=0, num_steps=int(t), num_finished=0, num_retractions=0)


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("viz_llama"), family="llama", seed=1)
    with Runtime(str(path), device="cpu", max_total_tokens=1024) as runtime:
        yield runtime


@pytest.fixture(autouse=True)
def _static_reset():
    yield
    widgets.set_static(None)


# ---------------------------------------------------------------------------------------------- tree


def test_tree_is_well_formed_and_escapes_text():
    svg = render_tree(random_tree(60))
    parse(svg)
    assert "<script>" not in svg and "\x00" not in svg
    assert "&lt;script&gt;" in svg and "&amp;" in svg
    titles = [t.text for t in parse(svg).iter(f"{SVG}title")]
    assert any(t and t.startswith(EVIL.replace("\x00", "\ufffd")) for t in titles)  # hover shows the run's text


def test_tree_with_thousands_of_nodes_stays_bounded():
    snap = random_tree(5000)
    svg = render_tree(snap, max_nodes=150, max_depth=10)
    root = parse(svg)
    drawn = node_marks(svg)
    summaries = [g for g in root.iter(f"{SVG}g") if g.get("class") == "summary"]
    assert 0 < len(drawn) <= 150 and summaries
    assert len(summaries) <= len(drawn)
    assert len(svg) < 150_000
    folded = sum(int(re.match(r"(\d+) nodes", g.find(f"{SVG}title").text).group(1)) for g in summaries)
    assert folded + len(drawn) == 5000  # every node is drawn or counted in a summary
    assert "5,000 nodes" in svg


def test_tree_keeps_locked_and_recent_nodes_when_folding():
    nodes = [NodeSnapshot(0, None, 0, (), 0, 0, 0, None)]
    nodes += [NodeSnapshot(i, 0, 5, (i,), 0, i, 0, f"cold {i}") for i in range(1, 300)]
    nodes[7] = NodeSnapshot(7, 0, 5, (7,), 2, 0, 0, "old but locked")
    svg = render_tree(snapshot(nodes), max_nodes=4)
    labels = " ".join(t.text or "" for t in parse(svg).iter(f"{SVG}text"))
    assert "old but locked" in labels and "cold 299" in labels and "cold 298" in labels
    assert len(node_marks(svg, "locked")) == 1


def test_tree_draws_just_evicted_nodes_from_the_previous_snapshot():
    before = random_tree(30)
    gone = {n.id for n in before.nodes if n.id and not any(c.parent_id == n.id for c in before.nodes)}
    victim = min(gone)
    after = snapshot([n for n in before.nodes if n.id != victim], version=2)
    log = EventLog()
    log.emit("cache.evict", node_id=victim, num_tokens=3)
    log.emit("cache.insert", node_id=99, num_tokens=3)
    evicted = recently_evicted(log.since(0))
    assert evicted == {victim}
    svg = render_tree(after, evicted=evicted, previous=before)
    assert len(node_marks(svg, "evicted")) == 1
    assert len(node_marks(render_tree(after), "evicted")) == 0


def test_tree_decodes_only_drawn_nodes_without_text():
    nodes = [NodeSnapshot(0, None, 0, (), 0, 0, 0, None)]
    nodes += [NodeSnapshot(i, 0, 2, (i, i + 1), 0, i, 0, None) for i in range(1, 500)]
    decoded: list[list[int]] = []
    svg = render_tree(snapshot(nodes), max_nodes=20, decode=lambda ids: decoded.append(ids) or f"ids {ids[0]}<")
    assert len(decoded) == 19 and "ids 499&lt;" in svg
    assert "499 500" in render_tree(snapshot(nodes), max_nodes=20)  # no decoder: token ids shown


# ---------------------------------------------------------------------------------------------- charts


def test_stats_charts_and_windowed_hit_rate():
    samples = [metrics(10.0, 0, 0), metrics(11.0, 100, 50), metrics(12.0, 100, 50), metrics(13.0, 300, 200)]
    cumulative, window = hit_rate_series(samples)
    assert cumulative[-1] == (3.0, 200 / 300)
    assert window == ((1.0, 0.5), (3.0, 0.75))  # the interval with no queries has no rate
    html = render_stats(samples)
    root = parse(html)
    classes = [s.get("class") for s in root.iter(f"{SVG}svg")]
    assert classes == ["sgl-chart sgl-hit-rate", "sgl-chart sgl-cache-tokens", "sgl-chart sgl-pool"]
    for few in ([], samples[:1]):
        parse(render_stats(few))


def test_long_series_are_thinned():
    points = tuple((float(i), float(i % 7)) for i in range(10_000))
    svg = line_chart([Series("x", points, "#000")], title="t")
    polyline = next(parse(svg).iter(f"{SVG}polyline"))
    assert len(polyline.get("points").split()) <= 401


# ---------------------------------------------------------------------------------------------- graph


def judge_graph(state: str = "done") -> ProgramGraph:
    nodes = [GraphNode("sys", "system: " + EVIL, "text", "done", 0.01), GraphNode("fork", "fork 3", "fork", "done")]
    nodes += [GraphNode(f"j{i}", f"judge {i}", "gen", state, 0.25 if state == "done" else None) for i in range(3)]
    nodes += [GraphNode("join", "join", "join", "waiting"), GraphNode("grade", 'grade "A-F"', "gen", "waiting")]
    edges = [("sys", "fork"), *[("fork", f"j{i}") for i in range(3)], *[(f"j{i}", "join") for i in range(3)],
             ("join", "grade")]
    return ProgramGraph(tuple(nodes), tuple(edges), name="judge")


def test_program_graph_layout_svg_and_dot():
    g = judge_graph()
    order = topological_order(g)
    assert [len(row) for row in layers(g, order)] == [1, 1, 3, 1, 1]
    svg = g.to_svg()
    steps = [e for e in parse(svg).iter(f"{SVG}g") if e.get("class", "").startswith("step")]
    assert len(steps) == 7 and "<script>" not in svg
    dot = g.to_dot()
    assert '"fork" -> "j2";' in dot and 'grade \\"A-F\\"' in dot
    assert repr(g) == "ProgramGraph('judge', nodes=7, edges=8, done=5)"
    bundle = g._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "image/svg+xml"}
    with pytest.raises(ValueError, match="acyclic"):
        ProgramGraph((GraphNode("a", "a", "gen"), GraphNode("b", "b", "gen")), (("a", "b"), ("b", "a")))
    with pytest.raises(ValueError, match="unknown"):
        ProgramGraph((GraphNode("a", "a", "gen"),), (("a", "zz"),))
    with pytest.raises(ValueError, match="state"):
        GraphNode("a", "a", "gen", state="lost")


# ---------------------------------------------------------------------------------------------- latency


def test_latency_rows_from_synthetic_events():
    def ev(seq, t, kind, **data):
        return Event(seq, t, kind, data)

    events = [
        ev(0, 100.0, "request.arrived", rid="a", prompt_tokens=10, program_id="p1"),
        ev(1, 100.5, "request.scheduled", rid="a", cached_tokens=4, program_id="p1"),
        ev(2, 101.0, "request.first_token", rid="a", program_id="p1"),
        ev(3, 101.2, "request.scheduled", rid="a", cached_tokens=4, program_id="p1"),  # after a retraction
        ev(4, 102.0, "request.finished", rid="a", program_id="p1", finish_reason="length", prompt_tokens=10,
           completion_tokens=5, cached_tokens=4),
        ev(5, 102.5, "request.arrived", rid="never-finished", prompt_tokens=3, program_id=None),
    ]
    (call,) = call_latencies(events)
    assert (call.program, call.queue_s, call.ttft_s, call.decode_s, call.e2e_s) == ("p1", 0.5, 1.0, 1.0, 2.0)
    assert call.tokens_per_s == 4.0 and call.cached_tokens == 4
    html = render_latency([call])
    parse(html)
    assert "p1" in html


def test_latency_frame_from_a_real_run(rt):
    start = rt.events.next_seq
    prefix = "Structured generation programs fork, join and select. " * 2
    prompts = [prefix + f"Q{i}: {EVIL}?" for i in range(4)]
    rt.generate(prompts[:1], max_new_tokens=4, temperature=0)
    results = rt.generate(prompts[1:], max_new_tokens=6, temperature=0)
    frame = latency_table(rt.events.since(start))
    assert tuple(frame.columns) == COLUMNS and len(frame) == 4
    rows = frame.set_index("rid")
    for r in results:
        row = rows.loc[r["meta_info"]["id"]]
        assert row.prompt_tokens == r["meta_info"]["prompt_tokens"]
        assert row.cached_tokens == r["meta_info"]["cached_tokens"] > 0  # the shared prefix was cached
        assert row.completion_tokens == 6
        assert 0 <= row.queue_s <= row.ttft_s <= row.e2e_s
        assert row.decode_s == pytest.approx(row.e2e_s - row.ttft_s)
        assert row.tokens_per_s > 0
    assert frame.start_s.is_monotonic_increasing and frame.start_s.iloc[0] == 0.0


# ---------------------------------------------------------------------------------------------- widgets


def test_static_views_sync_state_without_a_browser(rt):
    rt.generate(["Q: What is 2 + 2? A:" + EVIL], max_new_tokens=3, temperature=0)
    widgets.set_static(True)
    before = {t.name for t in threading.enumerate()}
    views = [widgets.RadixTreeView(rt), widgets.CacheStatsView(rt), widgets.LatencyView(rt),
             widgets.ProgramGraphView(judge_graph())]
    assert {t.name for t in threading.enumerate()} == before  # static: no thread
    for view, panel in zip(views, ("tree", "stats", "latency", "programs")):
        assert view.static and not view.live
        assert isinstance(view.widget, widgets.WorkbenchWidget) and view.widget.panels == [panel]
        assert view.status == ("static", widgets.STATIC_NOTE)
        parse(view.html)
        assert "<script>" not in view.html
        assert repr(view) == f"{type(view).__name__}(mode='static')"
        bundle = view._repr_mimebundle_()
        assert set(bundle) == {"text/plain", "text/html"} and "0x" not in bundle["text/plain"]
        json.dumps(view.widget.state())  # every trait is JSON
    tree, series, calls, graphs = (views[0].widget.tree, views[1].widget.series, views[2].widget.calls,
                                   views[3].widget.graphs)
    assert tree["node_count"] == len(tree["nodes"]) - 1 > 0 and any(EVIL[:8] in n["text"] for n in tree["nodes"])
    assert series["totals"]["requests"] >= 1 and len(series["t"]) >= 1
    assert calls[-1]["call"] == "request" and calls[-1]["completion_tokens"] == 3
    assert [g["name"] for g in graphs] == ["judge"] and len(graphs[0]["nodes"]) == 7
    assert "sgl-radix-tree" in views[0].html and "sgl-hit-rate" in views[1].html
    assert "sgl-calls" in views[2].html and "sgl-program-graph" in views[3].html
    assert views[0].pushes == 1 and not views[0].poll()  # nothing changed: nothing pushed


def test_live_view_updates_then_stops(rt):
    view = widgets.LatencyView(rt, static=False)
    try:
        assert view.live and view.status == ("live", "")
        calls_before = len(view.timeline.calls)
        rt.generate(["live one", "live two"], max_new_tokens=2, temperature=0)
        deadline = time.monotonic() + 5
        while len(view.widget.calls) < calls_before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(view.timeline.calls) == calls_before + 2 == len(view.widget.calls)
        assert f"{calls_before + 2:,} calls" in view.html
        bundle = view._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle and "text/html" in bundle
        assert repr(view) == "LatencyView(mode='live')"
    finally:
        view.stop()
    assert not view.live
    status, note = view.status
    assert status == "stopped" and re.fullmatch(r"stopped at \d\d:\d\d:\d\d: stop\(\) was called", note)
    view.start()
    assert view.live and view.status == ("live", "")
    view.stop("testing")
    assert view.status[1].endswith(": testing")


class ChangingRuntime:
    """A stand-in runtime whose metrics and cache change on every read: the worst case for throttling."""

    def __init__(self):
        self.events = EventLog()
        self.reads = 0
        self.broken = False

    def metrics(self) -> EngineMetrics:
        if self.broken:
            raise RuntimeError("the runtime shut down")
        self.reads += 1
        return metrics(time.time(), self.reads, self.reads // 2)

    def cache_snapshot(self, with_text: bool = True) -> CacheSnapshot:
        nodes = [NodeSnapshot(0, None, 0, (), 0, 0, 0, None), NodeSnapshot(1, 0, 3, (1,), 0, self.reads, 0, "x")]
        return snapshot(nodes, version=self.reads)


def test_poller_pushes_at_most_ten_updates_per_second():
    assert Poller(lambda: None, interval=0.001).interval == 0.1
    fake = ChangingRuntime()
    view = widgets.RadixTreeView(fake, static=False)
    pushes: list[float] = []
    view.widget.observe(lambda change: pushes.append(time.monotonic()), names="tree")
    time.sleep(1.05)
    view._poller.stop()
    assert 3 <= len(pushes) <= 11
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(pushes))


def test_a_view_whose_poller_failed_says_so():
    fake = ChangingRuntime()
    view = widgets.RadixTreeView(fake, static=False)
    fake.broken = True
    deadline = time.monotonic() + 5
    while view.live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not view.live and view._poller.error
    status, note = view.status
    assert status == "stopped" and "updates failed (RuntimeError: the runtime shut down)" in note


def test_only_changed_traits_are_sent_in_one_message_per_poll():
    fake = ChangingRuntime()
    dash = widgets.Dashboard(fake, static=True)
    sent: list[dict] = []
    dash.widget.comm.send = lambda data=None, buffers=None, **kw: sent.append(data)
    before = dash.widget.state()
    assert dash.poll()
    after = dash.widget.state()
    assert len(sent) == 1 and sent[0]["method"] == "update"  # one message for every view's changes
    changed = {k for k in after if after[k] != before[k]}
    assert set(sent[0]["state"]) == changed and "tree" in changed and "panels" not in changed
    assert not dash.widget.push(panels=list(dash.widget.panels)) and len(sent) == 1  # unchanged: nothing sent


def test_static_switch_follows_set_static_then_environment(monkeypatch):
    monkeypatch.setenv("SGLBENCH_STATIC", "1")
    assert widgets.is_static()
    widgets.set_static(False)
    assert not widgets.is_static()
    widgets.set_static(None)
    monkeypatch.setenv("SGLBENCH_STATIC", "0")
    assert not widgets.is_static()


def assert_self_contained(doc: str) -> None:
    """No resource the page would fetch: no src/href/url()/import naming a scheme or another file."""
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", doc)
    assert "url(http" not in doc and "@import" not in doc and not re.search(r"\bimport\s*\(|^import ", doc, re.M)
    assert doc.count("<script") == 1 and '<meta name="color-scheme" content="light dark">' in doc


def fallback_svgs(doc: str) -> list[str]:
    """The server-rendered SVG blocks of the page (before its one script)."""
    return re.findall(r"<svg.*?</svg>", doc[: doc.index("<script")], flags=re.S)


def test_dashboard_static_snapshot_and_report(rt, tmp_path):
    rt.generate(["Report " + EVIL + " one", "Report " + EVIL + " two"], max_new_tokens=3, temperature=0)
    dash = widgets.Dashboard(rt, graphs=lambda: [judge_graph("running")], static=True)
    assert repr(dash) == "Dashboard(mode='static', tabs=['Radix tree', 'Serving', 'Latency', 'Programs'])"
    w = dash.widget
    assert w.panels == ["tree", "stats", "latency", "programs"] and w.summary_line
    assert w.status == "static" and w.summary["finished"] == rt.metrics().num_finished
    assert w.graphs[0]["status"] == "running" and w.tree["nodes"] and w.calls and w.series["t"]
    assert "hit rate" in dash.summary.html
    finished = w.summary["finished"]
    rt.generate(["one more " + EVIL], max_new_tokens=2, temperature=0)
    time.sleep(0.3)
    assert w.summary["finished"] == finished and not dash.live  # static: nothing pushed on a thread
    bundle = dash._repr_mimebundle_()
    assert w.summary["finished"] == finished + 1  # displaying refreshes it
    assert set(bundle) == {"text/plain", "text/html"}
    parse(bundle["text/html"])
    path = dash.report(tmp_path / "run.html")
    doc = path.read_text(encoding="utf-8")
    assert_self_contained(doc)
    for marker in ('class="sgl-radix-tree"', "sgl-hit-rate", 'class="sgl-table sgl-calls"', "sgl-program-graph",
                   "Engine config", 'id="sglw-tree-end"', 'id="sglw-serving"', 'id="sglw-latency"',
                   'id="sglw-programs"', 'class="sglw-fallback"'):
        assert marker in doc
    assert "export default" not in doc  # the module's export is dropped: the page calls render() itself
    for block in fallback_svgs(doc):
        parse(block)
    states = report_states(doc)
    assert set(states) == {"sglw-tree-end", "sglw-serving", "sglw-latency", "sglw-programs"}
    assert states["sglw-tree-end"]["panels"] == ["tree"] and states["sglw-tree-end"]["status"] == "static"
    assert states["sglw-latency"]["calls"][-1]["rid"] == dash.latency.timeline.calls[-1].rid
    assert states["sglw-programs"]["graphs"][0]["name"] == "judge"


def report_states(doc: str) -> dict[str, dict]:
    """Element id -> widget state of each view a report draws (from its one script)."""
    script = doc[doc.index("<script"):]
    start = script.index("for (const [id, state] of ") + len("for (const [id, state] of ")
    decoder = json.JSONDecoder()
    mounts, _ = decoder.raw_decode(script[start:])
    return {element_id: state for element_id, state in mounts}


def test_recorder_keeps_history_and_the_largest_tree(rt, tmp_path):
    with MetricsRecorder(rt) as rec:
        rt.generate([[7 + i] * 40 for i in range(6)], max_new_tokens=2, temperature=0)
        rt.wait_idle()
    assert len(rec.samples) >= 2 and rec.largest is not None
    peak = rec.largest.total_size
    assert rt.flush_cache()
    path = write_report(rt, tmp_path / "r.html", metrics_history=rec)
    doc = path.read_text(encoding="utf-8")
    assert f"At its largest ({peak:,} tokens)" in doc
    assert_self_contained(doc)
    states = report_states(doc)
    assert sum(n["tokens"] for n in states["sglw-tree-largest"]["tree"]["nodes"]) == peak
    assert states["sglw-tree-end"]["tree"]["total_tokens"] == 0  # flushed


def test_importing_viz_does_not_load_torch():
    code = ("import sys, sglbench.viz, sglbench.viz.widgets, sglbench.viz.report; "
            "assert 'torch' not in sys.modules; print(sglbench.viz.Dashboard.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Dashboard"


def test_views_read_only_snapshots_metrics_and_events():
    """A runtime exposing only the three read methods is enough for every view (nothing else is called)."""
    fake = ChangingRuntime()
    ro = SimpleNamespace(metrics=fake.metrics, cache_snapshot=fake.cache_snapshot, events=fake.events)
    dash = widgets.Dashboard(ro, static=True)
    assert dash.poll()  # the fake changes on every read
    assert "sgl-radix-tree" in dash.html and "sgl-pool" in dash.html
    parse(dash.html)


def test_join_node_follows_calls_made_just_after_it_in_time_order():
    """A join rounded to the next millisecond must still precede a call made 0.1 ms after it."""
    from types import SimpleNamespace

    from sglbench.viz.adapters import graph_from_telemetry
    from sglbench.viz.graph import topological_order

    call = lambda state, t, name: SimpleNamespace(state_id=state, kind="gen", name=name, queued=t, finished=t + 0.01,  # noqa: E731
                                                  completion_tokens=1, cached_tokens=0)
    run = SimpleNamespace(
        name="p", started=0.0, finished=2.0, states=("root", "a", "b"),
        calls=(call("a", 0.5, "x"), call("b", 0.5, "y"), call("root", 1.0008, "grade")),
        forks=(SimpleNamespace(parent="root", child="a", time=0.1), SimpleNamespace(parent="root", child="b", time=0.1)),
        joins=(SimpleNamespace(parent="root", child="a", time=1.0006), SimpleNamespace(parent="root", child="b", time=1.0006)),
    )
    graph = graph_from_telemetry(run)
    order = topological_order(graph)
    grade = next(n.id for n in graph.nodes if "grade" in n.label)
    assert order.index("join:0") < order.index(grade)
    assert ("join:0", grade) in graph.edges
