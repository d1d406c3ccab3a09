"""The Latency and Programs views (latency.js, programs.js; issue 20 items 6 and 7) in a real browser.

Pages carry synthetic `calls` (2,000 rows, several programs, fork branches) and `graphs` (8 runs, one a
3-branch fork/join whose nodes come in shuffled order) and are drawn by the bundle's JavaScript: through
`static_views_html` once app.js exists, and always directly (common.js + the two views + a small model that
can fire changes) for the checks that need an update. Headless Debian chromium via playwright; skips without.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sglbench.viz import esm
from tests.browser_helpers import chromium_context, require_browser, save_screenshot

pytestmark = pytest.mark.timeout(180)

SHOTS = Path("/tmp/h/shots")
PROGRAMS = ("judge", "plan_trip", "summarize", "answer_question")
HEX = re.compile(r"^[0-9a-f]{12,}$")
# Light fallbacks for the --sglw-* properties when app.css (another file's job) is not there yet; app.css,
# loaded after, overrides them. Dark values follow JupyterLab's dark theme variables set on <body>.
FALLBACK_CSS = """
.sglw-root { --sglw-fg: var(--jp-ui-font-color1, #1f2328); --sglw-fg-muted: var(--jp-ui-font-color2, #57606a);
  --sglw-bg: var(--jp-layout-color0, #ffffff); --sglw-bg-alt: var(--jp-layout-color1, #f6f8fa);
  --sglw-border: var(--jp-border-color2, #d0d7de); --sglw-accent: var(--jp-brand-color1, #0969da);
  --sglw-font: var(--jp-ui-font-family, system-ui, sans-serif); --sglw-mono: var(--jp-code-font-family, monospace);
  --sglw-c1: #4c78a8; --sglw-c2: #f58518; --sglw-c3: #54a24b; --sglw-c4: #e45756; --sglw-c5: #72b7b2;
  --sglw-c6: #b279a2; --sglw-waiting: #8c959f; --sglw-running: #d29922; --sglw-done: #2da44e;
  background: var(--sglw-bg); color: var(--sglw-fg); }
"""
DARK_BODY = ("--jp-ui-font-color1: rgba(255,255,255,0.87); --jp-ui-font-color2: rgba(255,255,255,0.64); "
             "--jp-layout-color0: #111111; --jp-layout-color1: #212121; --jp-border-color2: #424242; "
             "--jp-brand-color1: #64b5f6; background: #111111;")


def synthetic_calls(n: int = 2_000, seed: int = 3) -> list[dict[str, Any]]:
    """`n` calls newest last: four programs (judge forks into branches 0-2) and some raw requests."""
    rng = random.Random(seed)
    calls, t = [], 0.0
    for _ in range(n):
        program = rng.choice((*PROGRAMS, None))
        branch = rng.randrange(3) if program == "judge" and rng.random() < 0.7 else None
        call = {"judge": "gen judgment" if branch is not None else "select grade", "plan_trip": "gen plan",
                "summarize": "gen summary", "answer_question": "gen answer"}.get(program)
        prompt = rng.randrange(20, 900)
        out = rng.randrange(1, 200)
        queue, ttft = rng.random() * 0.05, rng.lognormvariate(-3, 0.6)
        tpot = rng.lognormvariate(-4.5, 0.3)
        decode = tpot * max(out - 1, 0)
        t += rng.random() * 0.02
        calls.append({
            "program": program, "run": f"{rng.getrandbits(80):020x}" if program else None, "call": call,
            "branch": branch, "rid": f"{rng.getrandbits(128):032x}", "prompt_tokens": prompt,
            "cached_tokens": rng.randrange(0, prompt), "completion_tokens": out, "finish_reason": "length",
            "start_s": t, "queue_s": queue, "ttft_s": ttft, "decode_s": decode, "e2e_s": ttft + decode,
            "tpot_s": tpot if out > 1 else None, "tokens_per_s": (out - 1) / decode if decode else None,
        })
    return calls


def fork_graph(gid: str) -> dict[str, Any]:
    """judge(essay=...): intro, fork into 3 branches (numbered 0-2 as the trace does), join, grade.
    Nodes are listed out of order and the branch states carry old 1-based labels the view must not show."""
    nodes = [
        {"id": "state:0", "kind": "state", "label": "program", "state": "done", "branch": None},
        {"id": "call:0.0", "kind": "gen", "label": "gen intro (12 tok)", "state": "done", "branch": None,
         "latency_s": 0.12, "tokens": 12},
    ]
    for b in (2, 0, 1):
        nodes.append({"id": f"state:{b + 1}", "kind": "state", "label": f"branch {b + 1}", "state": "done",
                      "branch": b, "latency_s": None, "tokens": None})
        nodes.append({"id": f"call:{b + 1}.0", "kind": "gen", "label": f"gen judgment_{b} on dimension {b} (6 tok)",
                      "state": "running" if b == 1 else "done", "branch": b, "latency_s": 0.05 * (b + 1),
                      "tokens": 6})
    nodes += [{"id": "join:0", "kind": "join", "label": "join", "state": "waiting", "branch": None},
              {"id": "call:0.1", "kind": "select", "label": "select grade (1 tok)", "state": "waiting",
               "branch": None}]
    edges = [["state:0", "call:0.0"], ["call:0.0", "join:0"], ["join:0", "call:0.1"]]
    for b in (1, 2, 0):
        edges += [["call:0.0", f"state:{b + 1}"], [f"state:{b + 1}", f"call:{b + 1}.0"], [f"call:{b + 1}.0", "join:0"]]
    return {"id": gid, "name": "judge", "title": "judge(essay='The sea is calm tonight, the tide is full…')",
            "inputs": {"essay": "'The sea is calm tonight, the tide is full, the moon lies fair upon the straits'"},
            "status": "running", "latency_s": None, "nodes": nodes, "edges": edges}


def chain_graph(gid: str, name: str, steps: int, status: str) -> dict[str, Any]:
    nodes = [{"id": "state:0", "kind": "state", "label": "program", "state": "done", "branch": None}]
    nodes += [{"id": f"call:0.{k}", "kind": "gen", "label": f"gen step_{k} (8 tok)", "state": "done",
               "branch": None, "latency_s": 0.02 * (k + 1), "tokens": 8} for k in range(steps)]
    edges = [[a["id"], b["id"]] for a, b in itertools.pairwise(nodes)]
    return {"id": gid, "name": name, "title": f"{name}(query='question number {gid}')",
            "inputs": {"query": f"'question number {gid}'"}, "status": status, "latency_s": 0.1 * steps,
            "nodes": nodes, "edges": edges}


def synthetic_graphs() -> list[dict[str, Any]]:
    """8 runs newest last; the fork/join one is the newest."""
    graphs = [chain_graph(f"{k:020x}", PROGRAMS[1 + k % 3], 2 + k, "done" if k % 4 else "failed") for k in range(7)]
    return [*graphs, fork_graph("f" * 20)]


def state(panel: str, calls: list[dict[str, Any]], graphs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every trait of the contract, with only `panel` shown."""
    return {"panels": [panel], "summary_line": False, "status": "static", "status_note": "test snapshot",
            "summary": None, "tree": None, "series": None, "progress": None, "calls": calls, "graphs": graphs}


def direct_page(calls: list[dict[str, Any]], graphs: list[dict[str, Any]]) -> str:
    """common.js and the two views mounted on a model whose `window.setTrait(name, value)` fires changes."""
    code = "\n".join(esm._read(name) for name in ("common.js", "latency.js", "programs.js"))
    model = """
const traits = JSON.parse(document.getElementById('traits').textContent), handlers = {};
const model = { get: (k) => traits[k], on: (e, cb) => (handlers[e] ||= new Set()).add(cb),
  off: (e, cb) => handlers[e]?.delete(cb), set() {}, save_changes() {}, send() {} };
window.setTrait = (k, v) => { traits[k] = v; for (const cb of handlers[`change:${k}`] || []) cb(); };
window.views = [latencyMount(document.getElementById('lat'), model),
                programsMount(document.getElementById('prog'), model)];"""
    traits = esm._script_json({"calls": calls, "graphs": graphs})
    body = ('<div class="sglw-root"><div id="lat" class="panel"></div></div>'
            '<div class="sglw-root"><div id="prog" class="panel"></div></div>')
    return page_html(body + f'<script type="application/json" id="traits">{traits}</script>'
                     f'<script type="module">{code}\n{model}</script>')


def static_page(calls: list[dict[str, Any]], graphs: list[dict[str, Any]]) -> str:
    """The exported-report path: app.js draws each panel alone from a static model."""
    views = esm.static_views_html([("lat", state("latency", calls, graphs)), ("prog", state("programs", calls, graphs))])
    return page_html(views.replace('class="sglw-host"', 'class="sglw-host panel"'))


def page_html(body: str) -> str:
    css = "\n".join(esm._read(name) for name in esm.CSS_FILES)
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{FALLBACK_CSS}\n{css}\n"
            "body { margin: 12px; } .panel { width: 1200px; margin-bottom: 24px; }</style></head>"
            f"<body>{body}</body></html>")


@pytest.fixture(scope="module")
def data() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return synthetic_calls(), synthetic_graphs()


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Iterator[Any]:
    require_browser()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as ctx:
        yield ctx


def open_page(context: Any, html: str, tmp_path: Path, name: str) -> Any:
    path = tmp_path / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    try:
        page.wait_for_selector(".sglw-latency-table tbody tr.sglw-latency-row", timeout=10_000)
        page.wait_for_selector(".sglw-program-card", timeout=10_000)
    except Exception:
        raise AssertionError(f"views did not draw; page errors: {errors}") from None
    assert not errors, errors
    return page


@pytest.fixture(params=["direct", "static"])
def page(request, context, data, tmp_path) -> Iterator[Any]:
    calls, graphs = data
    if request.param == "static" and not (esm.JS_DIR / "app.js").exists():
        pytest.skip("app.js not written yet: the exported-report path is checked once it exists")
    html = direct_page(calls, graphs) if request.param == "direct" else static_page(calls, graphs)
    pg = open_page(context, html, tmp_path, request.param)
    yield pg
    pg.close()


def set_width(page: Any, px: int) -> None:
    page.evaluate("(px) => document.querySelectorAll('.panel').forEach((p) => { p.style.width = px + 'px'; })", px)
    page.wait_for_timeout(150)  # ResizeObserver -> animation frame -> redraw


def visible_rids(page: Any) -> list[str]:
    return page.eval_on_selector_all(".sglw-latency-table tr.sglw-latency-row", "rs => rs.map(r => r.dataset.rid)")


def dark(page: Any) -> None:
    page.evaluate("(s) => { document.body.dataset.jpThemeLight = 'false'; document.body.style.cssText = s; }", DARK_BODY)
    page.wait_for_timeout(100)


def test_latency_table_fits_the_panel(page, data):
    for px in (600, 1200):
        set_width(page, px)
        sizes = page.evaluate("""() => { const root = document.querySelector('.sglw-latency');
            const panel = root.parentElement.closest('.panel') || root.parentElement;
            const table = root.querySelector('.sglw-latency-table'), scroll = table.parentElement;
            return { panel: panel.getBoundingClientRect().width, root: root.getBoundingClientRect().width,
                     table: table.getBoundingClientRect().width, scrollW: scroll.scrollWidth, clientW: scroll.clientWidth,
                     heads: [...table.querySelectorAll('th[data-col]')].map(th => th.dataset.col) }; }""")
        assert sizes["table"] <= sizes["panel"] + 0.5 and sizes["root"] <= sizes["panel"] + 0.5, (px, sizes)
        assert sizes["scrollW"] <= sizes["clientW"], f"horizontal overflow at {px} px: {sizes}"
        assert {"program", "call", "e2e"} <= set(sizes["heads"]), sizes
        if px == 1200:
            assert sizes["heads"] == ["program", "call", "branch", "prompt", "cached", "out", "queue", "ttft",
                                      "tpot", "e2e", "tps"]
        save_screenshot(page, SHOTS / f"latency-{px}.png", full_page=False)
    # The e2e histogram has axis titles and nice tick labels (no "29.50").
    texts = page.eval_on_selector_all(".sglw-latency-histbox svg text", "ts => ts.map(t => t.textContent)")
    assert any(t.startswith("end-to-end latency") for t in texts) and "calls" in texts, texts
    assert len(page.query_selector_all(".sglw-latency-histbox svg rect")) > 5
    assert not [t for t in texts if re.search(r"\.\d*0(\D|$)", t)], texts
    # Virtual scrolling: 2,000 calls, far fewer rows in the DOM; the bottom of the scroll reaches the oldest call.
    assert len(visible_rids(page)) < 120
    page.eval_on_selector(".sglw-latency-scroll", "s => { s.scrollTop = s.scrollHeight; }")
    page.wait_for_timeout(150)
    assert visible_rids(page)[-1] == data[0][0]["rid"]  # default order: newest first


def test_latency_names_sort_filter_group(page, data):
    calls = data[0]
    by_rid = {c["rid"]: c for c in calls}
    set_width(page, 1200)
    names = page.eval_on_selector_all(".sglw-latency-row td:first-child", "ts => ts.map(t => t.textContent)")
    assert names and set(names) <= {*PROGRAMS, "(request)"}, names[:10]
    cells = page.eval_on_selector_all(".sglw-latency-row td", "ts => ts.map(t => t.textContent)")
    assert not [c for c in cells if HEX.match(c)], "hex ids shown as names"
    tip = page.get_attribute(".sglw-latency-row", "title")
    assert re.search(r"rid [0-9a-f]{32}", tip), tip

    e2e = page.locator("th[data-col=e2e]")
    e2e.click()
    up = [by_rid[r]["e2e_s"] for r in visible_rids(page)]
    assert up == sorted(up) and up[0] == min(c["e2e_s"] for c in calls)
    e2e.click()
    down = [by_rid[r]["e2e_s"] for r in visible_rids(page)]
    assert down == sorted(down, reverse=True) and down[0] == max(c["e2e_s"] for c in calls)
    assert e2e.get_attribute("aria-sort") == "descending"

    page.fill(".sglw-latency-filter", "plan")
    rows = visible_rids(page)
    assert rows and {by_rid[r]["program"] for r in rows} == {"plan_trip"}
    wanted = sum(c["program"] == "plan_trip" for c in calls)
    assert f"{wanted:,} of 2,000" in page.inner_text(".sglw-latency-count")
    rid = calls[17]["rid"]
    page.fill(".sglw-latency-filter", rid[:14])
    assert visible_rids(page) == [rid]
    page.fill(".sglw-latency-filter", "")

    page.click(".sglw-latency-group")
    heads = page.eval_on_selector_all(".sglw-latency-grouphead", "hs => hs.map(h => h.dataset.program)")
    assert sorted(heads) == sorted([*PROGRAMS, "(request)"]) and len(set(heads)) == len(heads)
    judge = page.locator(".sglw-latency-grouphead[data-program=judge]")
    count = sum(c["program"] == "judge" for c in calls)
    assert f"{count:,} calls" in judge.inner_text() and "p50 e2e" in judge.inner_text()
    judge.locator("button").click()
    rows = visible_rids(page)
    assert rows and {by_rid[r]["program"] for r in rows} == {"judge"}
    judged = [by_rid[r]["e2e_s"] for r in rows]
    assert judged == sorted(judged, reverse=True)  # the sort applies inside a group
    save_screenshot(page, SHOTS / "latency-grouped.png")
    judge.locator("button").click()
    assert not visible_rids(page)


def test_latency_keeps_its_state_across_updates(context, data, tmp_path):
    calls, graphs = data
    page = open_page(context, direct_page(calls[:1_500], graphs), tmp_path, "update")
    page.click("th[data-col=ttft]")
    page.fill(".sglw-latency-filter", "summ")
    page.click(".sglw-latency-group")
    page.locator(".sglw-latency-grouphead[data-program=summarize] button").click()
    page.evaluate("(calls) => window.setTrait('calls', calls)", calls)
    assert page.input_value(".sglw-latency-filter") == "summ"
    assert page.get_attribute("th[data-col=ttft]", "aria-sort") == "ascending"
    assert page.get_attribute(".sglw-latency-group", "aria-pressed") == "true"
    want = sum(c["program"] == "summarize" for c in calls)
    assert f"{want:,} calls" in page.inner_text(".sglw-latency-grouphead[data-program=summarize]")
    by_rid = {c["rid"]: c for c in calls}
    ttft = [by_rid[r]["ttft_s"] for r in visible_rids(page)]
    assert ttft and ttft == sorted(ttft)
    assert "2,000 calls" in page.inner_text(".sglw-latency-counts")
    page.close()


def node_boxes(page: Any, gid: str, kind: str | None = None) -> list[dict[str, Any]]:
    sel = f".sglw-program-card[data-graph-id='{gid}'] .sglw-program-node[data-branch]"
    if kind:
        sel += f"[data-kind={kind}]"
    return page.eval_on_selector_all(sel, """ns => ns.map(n => { const b = n.getBoundingClientRect();
        return { branch: +n.dataset.branch, x: b.x, y: b.y,
                 label: n.querySelector('.sglw-program-node-label').textContent,
                 tip: n.querySelector('title').textContent }; })""")


def test_programs_grid_branches_and_inputs(page, data):
    graphs = data[1]
    set_width(page, 1200)
    cards = page.eval_on_selector_all(".sglw-program-card", """cs => cs.map(c => ({ id: c.dataset.graphId,
        x: Math.round(c.getBoundingClientRect().x), h: Math.round(c.getBoundingClientRect().height) }))""")
    assert [c["id"] for c in cards] == [g["id"] for g in reversed(graphs)]  # newest first
    assert len({c["x"] for c in cards}) > 1, "one column at 1,200 px"
    assert len({c["h"] for c in cards}) == 1, "cards of unequal height"

    fork = graphs[-1]["id"]
    states = sorted(node_boxes(page, fork, "state"), key=lambda n: n["x"])
    assert [n["branch"] for n in states] == [0, 1, 2] and [n["label"] for n in states] == ["branch 0", "branch 1",
                                                                                           "branch 2"]
    assert len({round(n["y"]) for n in states}) == 1
    gens = sorted(node_boxes(page, fork, "gen"), key=lambda n: n["x"])
    assert [n["branch"] for n in gens] == [0, 1, 2]
    assert all(abs(g["x"] - s["x"]) < 1 for g, s in zip(gens, states)), "a branch's steps are not in one column"
    assert "gen judgment_1 on dimension 1 (6 tok)" in gens[1]["tip"]  # clipped label, full text in the tooltip

    card = page.locator(f".sglw-program-card[data-graph-id='{fork}']")
    assert "The sea is calm" in card.locator(".sglw-program-title").inner_text()
    card.locator(".sglw-program-inputs summary").click()
    assert "the moon lies fair" in card.locator(".sglw-program-args").inner_text()
    save_screenshot(page, SHOTS / "programs-1200.png", full_page=True)

    card.locator(".sglw-program-expand").click()
    widths = page.evaluate(f"""() => [document.querySelector(".sglw-program-card[data-graph-id='{fork}']"),
        document.querySelector('.sglw-programs-grid')].map(e => e.getBoundingClientRect().width)""")
    assert widths[0] == pytest.approx(widths[1], abs=1)

    page.fill(".sglw-programs-filter", "plan")
    names = {g["id"]: g["name"] for g in graphs}
    shown = page.eval_on_selector_all(".sglw-program-card", "cs => cs.map(c => c.dataset.graphId)")
    assert shown and {names[i] for i in shown} == {"plan_trip"}
    page.fill(".sglw-programs-filter", "")
    set_width(page, 600)
    xs = page.eval_on_selector_all(".sglw-program-card", "cs => cs.map(c => Math.round(c.getBoundingClientRect().x))")
    assert len(set(xs)) == 1  # one column in a narrow panel
    save_screenshot(page, SHOTS / "programs-600.png", full_page=True)


def test_programs_keep_expanded_cards_across_updates(context, data, tmp_path):
    calls, graphs = data
    page = open_page(context, direct_page(calls[:50], graphs[:-1]), tmp_path, "programs-update")
    first = graphs[0]["id"]
    page.locator(f".sglw-program-card[data-graph-id='{first}'] .sglw-program-expand").click()
    page.evaluate("(graphs) => window.setTrait('graphs', graphs)", graphs)
    ids = page.eval_on_selector_all(".sglw-program-card", "cs => cs.map(c => c.dataset.graphId)")
    assert ids[0] == graphs[-1]["id"] and len(ids) == len(graphs)
    expanded = page.eval_on_selector_all(".sglw-program-card--expanded", "cs => cs.map(c => c.dataset.graphId)")
    assert expanded == [first]
    page.close()


# WCAG contrast of a selector's first match (text colour, or fill for SVG text) on the `.sglw-root` background.
CONTRAST_JS = r"""(sel) => {
  const rgb = (c) => c.match(/[\d.]+/g).map(Number);
  const lum = (c) => { const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const el = document.querySelector(sel), style = getComputedStyle(el);
  const bg = getComputedStyle(el.closest('.sglw-root')).backgroundColor;
  const fg = el instanceof SVGElement ? style.fill : style.color;
  const mix = (f, b) => { const p = rgb(f), q = rgb(b), a = p.length > 3 ? p[3] : 1;
    return `rgb(${[0, 1, 2].map((i) => p[i] * a + q[i] * (1 - a)).join(',')})`; };
  const [x, y] = [lum(mix(fg, bg)), lum(bg)].sort((a, b) => b - a);
  return (x + 0.05) / (y + 0.05);
}"""
READABLE = (".sglw-latency-row td", ".sglw-latency-counts", ".sglw-latency-tick", ".sglw-latency-title",
            ".sglw-latency-count", ".sglw-program-title", ".sglw-program-node-label", ".sglw-program-node-detail",
            ".sglw-program-meta")


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_both_themes_read(context, data, tmp_path, theme):
    """Text keeps WCAG AA contrast in the light and the JupyterLab dark theme; screenshots for a person to view."""
    calls, graphs = data
    page = open_page(context, direct_page(calls, graphs), tmp_path, f"shots-{theme}")
    if theme == "dark":
        dark(page)
    for px in (600, 1200):
        set_width(page, px)
        page.locator("#lat").screenshot(path=str(SHOTS / f"{theme}-latency-{px}.png"))
        page.locator("#prog").screenshot(path=str(SHOTS / f"{theme}-programs-{px}.png"))
    ratios = {sel: page.evaluate(CONTRAST_JS, sel) for sel in READABLE}
    assert all(r >= 4.5 for r in ratios.values()), ratios
    page.close()
