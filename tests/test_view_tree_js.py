"""The radix tree view (sglbench/viz/js/tree.js) in headless chromium: speed at 1,000 and 5,000 nodes, layout
(root top-left, no label under an edge, positions kept across updates), search, click-to-inspect, zoom,
collapse and aggregate rows; screenshots in light and dark themes.

The unit page mounts `treeMount` directly from common.js + tree.js on a model whose `set` fires change
events; a second test draws the same data through the report path (`static_views_html`).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from sglbench.viz.esm import JS_DIR, static_views_html
from tests.browser_helpers import chromium_context, save_screenshot

pytestmark = pytest.mark.timeout(240)

SHOTS_ENV = "SGLBENCH_TREE_SHOTS"  # a folder to keep the screenshots in (else the test's tmp_path)
NEEDLE = "zebra-needle-7"
VOCABULARY = ("the sea is calm tonight judge the essay for clarity and evidence grade answer question you are a "
         "helpful assistant explain why step by step first second finally therefore because result json "
         "name age city summary translate into french tool call weather search user says")
WORDS = VOCABULARY.split()

# Light and dark values of the contract's custom properties (app.css defines the real ones).
THEME_CSS = """
body { margin: 16px; background: #fff; }
.sglw-root { --sglw-fg: rgba(0,0,0,.87); --sglw-fg-muted: rgba(0,0,0,.6); --sglw-bg: #fff; --sglw-bg-alt: #eee;
  --sglw-border: #bdbdbd; --sglw-accent: #1976d2; --sglw-font: system-ui, sans-serif;
  --sglw-mono: "DejaVu Sans Mono", monospace; --sglw-locked: #d6741f; --sglw-evictable: #508ee6;
  --sglw-evicted: #e8616d; }
body[data-jp-theme-light="false"] { background: #111; }
body[data-jp-theme-light="false"] .sglw-root { --sglw-fg: rgba(255,255,255,.87);
  --sglw-fg-muted: rgba(255,255,255,.6); --sglw-bg: #111; --sglw-bg-alt: #212121; --sglw-border: #616161;
  --sglw-accent: #42a5f5; --sglw-locked: #97541b; --sglw-evictable: #2263bf; --sglw-evicted: #c32230; }
"""
# JupyterLab's dark theme variables, for the report page (app.css maps them onto --sglw-*).
JP_DARK = ("--jp-layout-color0:#111;--jp-layout-color1:#212121;--jp-layout-color2:#424242;"
           "--jp-ui-font-color0:rgba(255,255,255,1);--jp-ui-font-color1:rgba(255,255,255,.87);"
           "--jp-border-color1:#616161;--jp-brand-color1:#42a5f5")

# A model like anywidget's for the parts the views use; `set` fires `change:NAME`.
MOUNT_JS = """
function testModel(state) {
  const handlers = {};
  return { get: (k) => state[k], on(e, cb) { (handlers[e] ||= []).push(cb); },
           off(e, cb) { handlers[e] = (handlers[e] || []).filter((h) => h !== cb); },
           set(k, v) { state[k] = v; for (const cb of handlers[`change:${k}`] || []) cb(); } };
}
window.treeTest = {
  async mount(tree, width) {
    const host = document.getElementById("host");
    host.style.width = width ? `${width}px` : "";
    if (window.treeTest.view) window.treeTest.view.destroy();
    const t0 = performance.now();
    window.treeTest.model = testModel({ tree });
    window.treeTest.view = treeMount(host, window.treeTest.model);
    await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    return performance.now() - t0;
  },
  update(tree) { window.treeTest.model.set("tree", tree); },
};
"""

# Bounding boxes of the labels and edges drawn, in page coordinates.
BOXES_JS = """() => {
  const box = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
  return { labels: [...document.querySelectorAll('.sglw-tree-label')].map(box),
           edges: [...document.querySelectorAll('.sglw-tree-edge')].map(box) };
}"""


def synthetic_tree(n: int, seed: int = 0) -> dict[str, Any]:
    """A radix cache snapshot of `n` nodes besides the root: branching prompts, a few locked paths and ghosts."""
    rng = random.Random(seed)
    nodes = [{"id": 0, "parent": None, "tokens": 0, "text": "", "hits": 0, "locks": 0, "last_access": 0,
              "state": "root", "depth_tokens": 0}]
    depth = {0: 0}
    for node_id in range(1, n + 1):
        add_node(nodes, depth, rng, node_id)
    return snapshot(nodes)


def add_node(nodes: list[dict[str, Any]], depth: dict[int, int], rng: random.Random, node_id: int,
             parent: int | None = None) -> None:
    """Append one node under `parent` (a random one, biased to the root and to recent nodes, when None);
    `depth` maps each node id to its depth_tokens."""
    if parent is None:
        parent = 0 if rng.random() < 0.15 else nodes[int(len(nodes) * rng.random() ** 0.7)]["id"]
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30)))
    text = f"[{node_id}] {words}" + ("\nnext line" if node_id % 7 == 0 else "")
    tokens = max(1, len(text) // 4)
    nodes.append({"id": node_id, "parent": parent, "tokens": tokens, "text": text, "hits": rng.randint(0, 9),
                  "locks": 0, "last_access": node_id, "state": "evictable",
                  "depth_tokens": depth[parent] + tokens})
    depth[node_id] = depth[parent] + tokens


def snapshot(nodes: list[dict[str, Any]], ghosts: int = 3) -> dict[str, Any]:
    """The `tree` trait for `nodes`: a few leaves locked (with their ancestors) and a few leaves shown as ghosts."""
    by_id = {node["id"]: node for node in nodes}
    parents = {node["parent"] for node in nodes}
    leaves = [node for node in nodes if node["id"] not in parents and node["id"]]
    for node in leaves[::40]:
        walk: dict[str, Any] | None = node
        while walk is not None and walk["parent"] is not None:
            walk["state"], walk["locks"] = "locked", walk["locks"] + 1
            walk = by_id[walk["parent"]]
    for node in leaves[len(leaves) - ghosts:]:
        node["state"] = "evicted"
    live = [node for node in nodes if node["state"] in ("locked", "evictable")]
    return {"version": len(nodes), "disabled": False, "node_count": len(live), "omitted": 0,
            "total_tokens": sum(node["tokens"] for node in live),
            "locked_tokens": sum(node["tokens"] for node in live if node["state"] == "locked"),
            "evictable_tokens": sum(node["tokens"] for node in live if node["state"] == "evictable"),
            "nodes": [dict(node) for node in nodes]}


def deepest(tree: dict[str, Any]) -> int:
    """Id of the deepest node (most levels below the root)."""
    level = {0: 0}
    for node in tree["nodes"][1:]:
        level[node["id"]] = level[node["parent"]] + 1
    return max(level, key=level.__getitem__)


def unit_page() -> str:
    """A page with common.js + tree.js + tree.css and a test mount helper (no app.js involved)."""
    js = "\n".join((JS_DIR / name).read_text(encoding="utf-8") for name in ("common.js", "tree.js"))
    css = (JS_DIR / "tree.css").read_text(encoding="utf-8")
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{THEME_CSS}{css}</style></head>"
            f"<body><div class='sglw-root'><div id='host'></div></div><script>{js}\n{MOUNT_JS}</script></body></html>")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(browser: Any) -> Any:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_content(unit_page())
    yield page
    page.close()
    assert not errors, f"errors in the page: {errors}"


def mount(page: Any, tree: dict[str, Any], width: int | None = None) -> float:
    """Mount the view on `tree`; milliseconds until two frames after the call (measured in the page)."""
    return page.evaluate("([tree, width]) => window.treeTest.mount(tree, width)", [tree, width])


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not drawn"
    return found


def scale(page: Any) -> float:
    """The zoom the view records on its viewport group."""
    return float(page.locator(".sglw-tree-viewport").get_attribute("data-scale"))


def drawn_rows(page: Any) -> list[str]:
    """Drawn rows top to bottom: node ids, and '+owner' for aggregate rows."""
    return page.locator("[data-node-id], .sglw-tree-agg").evaluate_all(
        "els => els.map(e => e.dataset.nodeId || '+' + e.dataset.aggFor)")


def centre(b: dict[str, float]) -> tuple[float, float]:
    """Centre of a bounding box (a mark's box widens when a selection ring is drawn; its centre does not)."""
    return b["x"] + b["width"] / 2, b["y"] + b["height"] / 2


def overlaps(a: list[float], b: list[float], slack: float = 0.5) -> bool:
    return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def test_thousand_nodes_fast_root_top_left_virtualised(page: Any) -> None:
    elapsed = mount(page, synthetic_tree(1000))
    assert elapsed < 1000, f"1,000 nodes took {elapsed:.0f} ms"
    canvas, root = box(page, ".sglw-tree-canvas"), box(page, '[data-node-id="0"] .sglw-tree-mark')
    assert root["x"] - canvas["x"] < 30 and root["y"] - canvas["y"] < 30, (root, canvas)
    assert canvas["height"] <= 562
    drawn = page.locator("[data-node-id]").count()
    assert 10 < drawn < 200, f"{drawn} rows drawn: not virtualised"
    assert page.locator(".sglw-tree-agg").count() > 0, "a 1,000-node tree should fold subtrees by default"
    header = page.locator(".sglw-tree-header").inner_text()
    assert "nodes shown" in header and "omitted" in header and "cached tokens" in header, header
    legend = page.locator(".sglw-tree-legend").inner_text()
    for state in ("root", "locked", "evictable", "evicted"):
        assert state in legend, legend
    elapsed = mount(page, synthetic_tree(5000, seed=1))
    assert elapsed < 1000, f"5,000 nodes took {elapsed:.0f} ms"


def test_labels_never_under_edges_and_are_readable(page: Any) -> None:
    tree = synthetic_tree(300, seed=2)
    mount(page, tree)
    boxes = page.evaluate(BOXES_JS)
    assert len(boxes["labels"]) > 10 and len(boxes["edges"]) > 10
    hits = [(label, edge) for label in boxes["labels"] for edge in boxes["edges"] if overlaps(label, edge)]
    assert not hits, f"{len(hits)} label/edge overlaps, e.g. {hits[:3]}"
    label = page.locator('[data-node-id="1"] .sglw-tree-label').text_content()
    text = tree["nodes"][1]["text"].replace("\n", "⏎")
    assert label.startswith(text[:30]), (label, text)


def test_search_reveals_a_hidden_node_and_enter_cycles(page: Any) -> None:
    tree = synthetic_tree(1000, seed=3)
    target = deepest(tree)
    tree["nodes"][target]["text"] += f" {NEEDLE} end"
    mount(page, tree)
    assert page.locator(f'[data-node-id="{target}"]').count() == 0, "the deepest node should start folded"
    page.fill(".sglw-tree-search", NEEDLE.upper())
    page.wait_for_function("() => document.querySelector('.sglw-tree-count').textContent.includes('1 match')")
    node, canvas = box(page, f'[data-node-id="{target}"] .sglw-tree-mark'), box(page, ".sglw-tree-canvas")
    assert canvas["y"] <= node["y"] <= canvas["y"] + canvas["height"] - node["height"], (node, canvas)
    assert canvas["x"] <= node["x"] <= canvas["x"] + canvas["width"], (node, canvas)
    assert NEEDLE in page.locator(".sglw-tree-details .sglw-tree-text").first.inner_text()
    # A query spanning two nodes matches on the text from the root; Enter moves to the next match.
    page.fill(".sglw-tree-search", "[1")
    page.wait_for_function("() => /\\d+ matches \\(1 of/.test(document.querySelector('.sglw-tree-count').textContent)")
    first = page.locator(".sglw-tree-current").get_attribute("data-node-id")
    page.press(".sglw-tree-search", "Enter")
    page.wait_for_function("() => / \\(2 of/.test(document.querySelector('.sglw-tree-count').textContent)")
    assert page.locator(".sglw-tree-current").get_attribute("data-node-id") != first


def test_click_shows_full_text_and_facts(page: Any) -> None:
    tree = synthetic_tree(200, seed=4)
    node = next(n for n in tree["nodes"] if len(n["text"]) > 80)
    mount(page, tree)
    page.click('[data-node-id="0"] > .sglw-tree-hit')
    assert "Root" in page.locator(".sglw-tree-details").inner_text()
    page.fill(".sglw-tree-search", node["text"][:12])  # make sure it is drawn, then click it
    page.wait_for_function("() => document.querySelector('.sglw-tree-count').textContent.includes('match')")
    page.click(f'[data-node-id="{node["id"]}"] > .sglw-tree-hit')
    details = page.locator(".sglw-tree-details")
    assert details.locator(".sglw-tree-text").first.inner_text() == node["text"]
    facts = details.inner_text()
    for word in ("tokens", "depth tokens", "hits", "locks", "last access", "state", str(node["depth_tokens"])):
        assert word in facts, (word, facts)
    assert details.locator(".sglw-tree-text").first.evaluate("e => getComputedStyle(e).whiteSpace") == "pre-wrap"


def test_zoom_buttons_wheel_and_drag(page: Any) -> None:
    mount(page, synthetic_tree(500, seed=5))
    assert scale(page) == 1
    page.click(".sglw-tree-zoom-in")
    assert scale(page) > 1
    page.click(".sglw-tree-zoom-out")
    page.click(".sglw-tree-zoom-out")
    assert scale(page) < 1
    page.click(".sglw-tree-fit")
    fitted = scale(page)
    canvas = box(page, ".sglw-tree-canvas")
    page.mouse.move(canvas["x"] + 200, canvas["y"] + 100)
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"() => +document.querySelector('.sglw-tree-viewport').dataset.scale > {fitted}")
    before = page.locator(".sglw-tree-viewport").get_attribute("transform")
    page.mouse.move(canvas["x"] + 300, canvas["y"] + 300)
    page.mouse.down()
    page.mouse.move(canvas["x"] + 250, canvas["y"] + 150, steps=5)
    page.mouse.up()
    assert page.locator(".sglw-tree-viewport").get_attribute("transform") != before


def test_collapse_expand_and_aggregate_rows(page: Any) -> None:
    tree = synthetic_tree(1000, seed=6)
    mount(page, tree)
    owner_id = page.locator('[data-node-id]:not([data-node-id="0"]):has([data-toggle])').first \
        .get_attribute("data-node-id")
    toggle = f'[data-node-id="{owner_id}"] [data-toggle]'
    before = drawn_rows(page)
    page.click(toggle)
    changed = drawn_rows(page)
    assert changed != before and owner_id in changed
    page.click(toggle)
    assert drawn_rows(page) == before
    agg = page.locator(".sglw-tree-agg").first
    owner = agg.get_attribute("data-agg-for")
    label = agg.locator(".sglw-tree-agg-label").text_content()
    assert label.startswith("+") and "node" in label and "tokens" in label, label
    shown_before = page.locator(".sglw-tree-header").inner_text()
    agg.click()
    assert page.locator(".sglw-tree-header").inner_text() != shown_before
    assert page.locator(f'.sglw-tree-agg[data-agg-for="{owner}"]').count() == 0 or \
        page.locator(f'.sglw-tree-agg[data-agg-for="{owner}"] .sglw-tree-agg-label').first.text_content() != label


def test_update_keeps_positions_zoom_and_selection(page: Any) -> None:
    rng = random.Random(7)
    tree = synthetic_tree(600, seed=7)
    mount(page, tree)
    page.click(".sglw-tree-zoom-in")
    canvas = box(page, ".sglw-tree-canvas")
    page.mouse.move(canvas["x"] + 300, canvas["y"] + 400)
    page.mouse.down()
    page.mouse.move(canvas["x"] + 300, canvas["y"] + 100, steps=5)
    page.mouse.up()
    ids = [int(i) for i in page.locator("[data-node-id]").evaluate_all("els => els.map(e => e.dataset.nodeId)")]
    marks = {i: box(page, f'[data-node-id="{i}"] .sglw-tree-mark') for i in ids}
    visible = [i for i in ids if canvas["y"] + 20 < marks[i]["y"] < canvas["y"] + 120]
    assert visible, "no node near the top of the view"
    anchor = visible[0]
    page.click(f'[data-node-id="{anchor}"] > .sglw-tree-hit')
    transform = page.locator(".sglw-tree-viewport").get_attribute("transform")
    # New nodes: under the root (after everything), and under nodes drawn above the view (rows shift).
    nodes = [dict(n) for n in tree["nodes"] if n["state"] != "evicted"]
    above = [i for i in ids if marks[i]["y"] < canvas["y"]]
    next_id = max(n["id"] for n in nodes) + 1
    depth = {n["id"]: n["depth_tokens"] for n in nodes}
    for parent in [0, 0, *above[:5]]:
        add_node(nodes, depth, rng, next_id, parent)
        next_id += 1
    page.evaluate("tree => window.treeTest.update(tree)", snapshot(nodes))
    after = box(page, f'[data-node-id="{anchor}"] .sglw-tree-mark')
    assert all(abs(a - b) < 0.5 for a, b in zip(centre(after), centre(marks[anchor]))), (marks[anchor], after)
    assert page.locator(".sglw-tree-viewport").get_attribute("data-scale") == "1.4"
    assert transform.split("scale")[1] == page.locator(".sglw-tree-viewport").get_attribute("transform").split("scale")[1]
    assert page.locator(".sglw-tree-selected").get_attribute("data-node-id") == str(anchor)
    assert f"Node {anchor}" in page.locator(".sglw-tree-details").inner_text()


def test_split_node_takes_the_old_nodes_place(page: Any) -> None:
    tree = synthetic_tree(40, seed=8)
    mount(page, tree)
    order = page.locator("[data-node-id]").evaluate_all("els => els.map(e => +e.dataset.nodeId)")
    victim = next(n for n in tree["nodes"][1:] if n["parent"] == 0 and n["state"] != "evicted")
    nodes = [dict(n) for n in tree["nodes"] if n["state"] != "evicted"]
    live = [i for i in order if i in {n["id"] for n in nodes}]
    upper = max(n["id"] for n in nodes) + 1
    index = next(i for i, n in enumerate(nodes) if n["id"] == victim["id"])
    nodes.insert(index, {**victim, "id": upper, "text": victim["text"][:5], "tokens": 1})
    nodes[index + 1] = {**victim, "parent": upper, "text": victim["text"][5:]}
    page.evaluate("tree => window.treeTest.update(tree)", snapshot(nodes, ghosts=0))
    after = page.locator("[data-node-id]").evaluate_all("els => els.map(e => +e.dataset.nodeId)")
    at = live.index(victim["id"])
    assert after == [*live[:at], upper, *live[at:]], "the split node should take the old node's row"


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_screenshots_light_and_dark(page: Any, tmp_path: Path) -> None:
    shots = shots_dir(tmp_path)
    tree = synthetic_tree(1000, seed=9)
    mount(page, tree, width=1100)
    page.click('[data-node-id="3"] > .sglw-tree-hit')
    page.fill(".sglw-tree-search", "weather")
    page.wait_for_function("() => document.querySelector('.sglw-tree-count').textContent.includes('match')")
    save_screenshot(page, shots / "tree-light.png", full_page=True)
    page.evaluate("() => { document.body.dataset.jpThemeLight = 'false'; }")
    save_screenshot(page, shots / "tree-dark.png", full_page=True)
    mount(page, synthetic_tree(1000, seed=9), width=560)
    save_screenshot(page, shots / "tree-narrow-dark.png", full_page=True)
    fg = page.evaluate("() => getComputedStyle(document.querySelector('.sglw-tree-label')).fill")
    assert fg.startswith("rgba(255, 255, 255"), f"dark labels are {fg}"


@pytest.mark.skipif(not (JS_DIR / "app.js").exists(), reason="app.js not written yet")
def test_report_page_draws_the_tree(browser: Any, tmp_path: Path) -> None:
    tree = synthetic_tree(1000, seed=10)
    target = deepest(tree)
    tree["nodes"][target]["text"] += f" {NEEDLE}"
    state = {"panels": ["tree"], "summary_line": False, "status": "static", "status_note": "", "tree": tree}
    html = ("<!doctype html><html><head><meta charset='utf-8'></head><body>"
            f"{static_views_html([('t', state)])}</body></html>")
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_content(html)
    page.wait_for_selector("#t .sglw-tree [data-node-id='0']")
    page.fill("#t .sglw-tree-search", NEEDLE)
    page.wait_for_selector(f"#t [data-node-id='{target}']")
    page.click(f"#t [data-node-id='{target}'] > .sglw-tree-hit")
    assert NEEDLE in page.locator("#t .sglw-tree-details .sglw-tree-text").first.inner_text()
    shots = shots_dir(tmp_path)
    save_screenshot(page, shots / "tree-report-light.png", full_page=True)
    page.evaluate(f"() => {{ document.body.dataset.jpThemeLight = 'false'; document.body.style.cssText = "
                  f"{json.dumps(JP_DARK + ';background:#111')}; }}")
    save_screenshot(page, shots / "tree-report-dark.png", full_page=True)
    page.close()
    assert not errors, errors


def chain(n: int) -> dict[str, Any]:
    """A multi-turn chat's shape: every node has one child, `n` deep."""
    nodes = [{"id": 0, "parent": None, "tokens": 0, "text": "", "hits": 0, "locks": 0, "last_access": 0,
              "state": "root", "depth_tokens": 0}]
    for i in range(1, n + 1):
        nodes.append({"id": i, "parent": i - 1, "tokens": 10, "text": f"turn {i}", "hits": 1, "locks": 0,
                      "last_access": i, "state": "evictable", "depth_tokens": 10 * i})
    return snapshot(nodes, ghosts=0)


def flat(n: int) -> dict[str, Any]:
    """`n` requests that share nothing: every node a child of the root."""
    nodes = [{"id": 0, "parent": None, "tokens": 0, "text": "", "hits": 0, "locks": 0, "last_access": 0,
              "state": "root", "depth_tokens": 0}]
    for i in range(1, n + 1):
        nodes.append({"id": i, "parent": 0, "tokens": 5, "text": f"request {i}", "hits": 0, "locks": 0,
                      "last_access": i, "state": "evictable", "depth_tokens": 5})
    return snapshot(nodes, ghosts=0)


def test_empty_disabled_chains_and_flat_trees(page: Any) -> None:
    header = page.locator(".sglw-tree-header")
    mount(page, None)
    assert "No radix cache snapshot" in header.inner_text()
    assert not page.locator(".sglw-tree-canvas").is_visible()
    page.evaluate("tree => window.treeTest.update(tree)", {**synthetic_tree(0), "disabled": True})
    assert "disabled" in header.inner_text()
    page.evaluate("tree => window.treeTest.update(tree)", synthetic_tree(0))  # the root alone
    assert page.locator("[data-node-id]").count() == 1 and page.locator(".sglw-tree-canvas").is_visible()
    page.evaluate("tree => window.treeTest.update(tree)", synthetic_tree(30))
    assert page.locator("[data-node-id]").count() == 31, "a small tree is drawn whole (ghosts included)"
    # A 200-turn chat is one chain: opened all the way down, however deep.
    mount(page, chain(200))
    assert header.inner_text().startswith("200 / 200 nodes shown"), header.inner_text()
    # 1,000 unrelated requests: the first 50 shown, the rest in one aggregate row that opens on click.
    mount(page, flat(1000))
    assert header.inner_text().startswith("50 / 1,000 nodes shown"), header.inner_text()
    page.fill(".sglw-tree-search", "request 999")
    page.wait_for_selector('[data-node-id="999"]')
    agg = page.locator('.sglw-tree-agg[data-agg-for="0"]')
    assert "+1 more node" in agg.locator(".sglw-tree-agg-label").text_content()
    agg.click()
    assert header.inner_text().startswith("1,000 / 1,000 nodes shown"), header.inner_text()
