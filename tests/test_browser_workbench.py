"""The workbench as people use it in JupyterLab (issue 20), checked in a real browser.

Headless Debian chromium through playwright drives a throwaway JupyterLab on the embedded default model:
a `%%sgl --live` cell leaves the shared dashboard live; Kernel > Interrupt cancels a running batch; the
radix tree answers zoom, search and click; dark-theme text passes WCAG AA; a saved notebook reopens without a
kernel showing the dashboard's last state; a 1,000-node cache draws within a second. Skips without chromium.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.browser_helpers import (
    chromium_context,
    jupyter_lab,
    require_browser,
    save_screenshot,
)

pytestmark = pytest.mark.timeout(300)

ROOT = ".jp-OutputArea-output .sglw-root"
# Shift+Enter on the last cell adds an empty one below it: the cell that ran is the last with outputs.
LAST_RUN_CELL = ".jp-Notebook .jp-CodeCell:has(.jp-OutputArea-output)"
KERNEL_IDLE_JS = r"""() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(e => /\| Idle$/.test(e.textContent.trim()))"""
KERNEL_BUSY_JS = r"""() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(e => /\| Busy$/.test(e.textContent.trim()))"""
# The dashboard's engine line (the n-th on the page) shows more than `n` finished requests.
FINISHED_ABOVE_JS = r"""([index, n]) => {
    const line = document.querySelectorAll('.jp-OutputArea-output .sglw-summary')[index];
    const m = line?.textContent.match(/finished ([\d,]+)/);
    return !!m && +m[1].replace(/,/g, '') > n;
}"""
# WCAG 2 contrast of every visible text node inside `.sglw-root`s against the first opaque background behind
# it (walking up through transparent ancestors; SVG text included). Returns the failures.
CONTRAST_JS = r"""() => {
  const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const over = (top, bottom) => { const a = top[3]; return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat(1); };
  const background = (el) => { const layers = [];
    for (let n = el; n && n.nodeType === 1; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor); if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    let bg = parse(getComputedStyle(document.body).backgroundColor) || [255, 255, 255, 1];
    if (bg[3] < 1) bg = [255, 255, 255, 1];
    for (const c of layers.reverse()) bg = over(c, bg);
    return bg; };
  const failures = []; let checked = 0;
  for (const root of document.querySelectorAll('.jp-OutputArea-output .sglw-root')) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let t = walker.nextNode(); t; t = walker.nextNode()) {
      const el = t.parentElement; if (!t.textContent.trim() || !el) continue;
      const box = el.getBoundingClientRect(); if (!box.width || !box.height) continue;
      const style = getComputedStyle(el); if (style.visibility === 'hidden' || style.display === 'none') continue;
      const colour = parse(el instanceof SVGElement ? (style.fill && style.fill !== 'none' ? style.fill : style.color) : style.color);
      if (!colour) continue;
      const bg = background(el), fg = over([colour[0], colour[1], colour[2], colour[3] * +style.opacity], bg);
      const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x), ratio = (a + 0.05) / (b + 0.05);
      checked += 1;
      if (ratio < 4.5) failures.push(`${ratio.toFixed(2)} ${style.color} on rgb(${bg.slice(0, 3).map(Math.round)}): ${t.textContent.trim().slice(0, 40)}`);
    }
  }
  return {checked, failures: failures.slice(0, 20), failed: failures.length};
}"""

SETUP = """%load_ext sglbench
import time
import sglbench as sgl

rt = sgl.Runtime(device="cpu")
sgl.set_default_backend(rt)

@sgl.function
def ask(s, question):
    s += "Q: " + question + "\\nA:" + sgl.gen("answer", max_tokens=8, temperature=0)

@sgl.function
def essay(s, topic):
    s += "Write about " + topic + ".\\n" + sgl.gen("text", max_tokens=400, ignore_eos=True, temperature=0)"""


@pytest.fixture(scope="module", autouse=True)
def browser() -> None:
    require_browser()


def write_notebook(path: Path, cells: list[str]) -> None:
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec})
    nb.cells = [nbformat.v4.new_code_cell(cell) for cell in cells]
    nbformat.write(nb, path)


def live_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SGLBENCH_STATIC"}  # live widgets, not snapshots


def wait_idle(page: Any, timeout_ms: int = 120_000) -> None:
    page.wait_for_function(KERNEL_IDLE_JS, timeout=timeout_ms)


def run_all(page: Any, timeout_ms: int = 180_000) -> None:
    """Run > Run All Cells; wait until every code cell has a number and the kernel is idle, and no cell raised."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(r"""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
        .every(p => /\[\d+\]/.test(p.textContent))""", timeout=timeout_ms)
    wait_idle(page, timeout_ms)
    assert_no_traceback(page)


def assert_no_traceback(page: Any) -> None:
    errors = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "Traceback" in t]
    assert not errors, "a cell raised:\n" + "\n".join(errors)


def add_cell(page: Any, code: str, run: bool = True) -> None:
    """A new cell below the last one with `code`, run with Shift+Enter."""
    page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").last.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.insert_text(code)
    if run:
        page.keyboard.press("Shift+Enter")


def last_output_text(page: Any) -> str:
    return page.locator(LAST_RUN_CELL).last.locator(".jp-OutputArea-output").all_inner_texts()[-1]


def run_cell_for_text(page: Any, code: str, timeout_ms: int = 60_000) -> str:
    """Run `code` in a new cell; return the text of its last output once the kernel is idle again."""
    add_cell(page, code)
    page.wait_for_timeout(200)
    wait_idle(page, timeout_ms)
    return last_output_text(page)


def finished_count(page: Any, index: int) -> int:
    text = page.locator(".jp-OutputArea-output .sglw-summary").nth(index).inner_text()
    match = re.search(r"finished ([\d,]+)", text)
    assert match, f"no finished count in {text!r}"
    return int(match.group(1).replace(",", ""))


def test_live_cell_interrupt_tree_and_dark_theme(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    write_notebook(root / "workbench.ipynb", [
        SETUP,
        "dash = rt.dashboard()\ndash",
        '%%sgl ask(question) --run question="What is 2 + 3?" --live\n'
        's += "Q: " + question + "\\nA:" + sgl.gen("answer", max_tokens=6, temperature=0)',
    ])
    with jupyter_lab(root, tmp_path / "jupyter", env=live_env()) as lab, \
            chromium_context(tmp_path / "chromium-profile") as context:
        page = context.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.goto(lab.lab_url("workbench.ipynb"))
        wait_idle(page)
        run_all(page)

        # 1. After the --live cell ended, both displays of the shared dashboard keep updating.
        assert page.locator(ROOT).count() >= 2
        statuses = page.locator(".jp-OutputArea-output .sglw-status").evaluate_all(
            "els => els.map(e => e.dataset.status)")
        assert set(statuses) == {"live"}, statuses
        before = [finished_count(page, 0), finished_count(page, 1)]
        add_cell(page, 'ask.run_batch([{"question": f"What is {i} + 1?"} for i in range(3)])')
        for index, count in enumerate(before):
            page.wait_for_function(FINISHED_ABOVE_JS, arg=[index, count + 2], timeout=30_000)
        wait_idle(page)

        # 2. Kernel > Interrupt cancels a running batch: the engine is idle within a second, the pool is full.
        add_cell(page, 'essays = essay.run_batch([{"topic": f"topic {i}"} for i in range(200)])')
        page.wait_for_function(KERNEL_BUSY_JS, timeout=30_000)
        page.wait_for_function(r"""() => { const m = document.querySelector('.jp-OutputArea-output .sglw-summary')
            ?.textContent.match(/running ([\d,]+)/); return !!m && +m[1] > 0; }""", timeout=30_000)
        clicked = time.time()
        page.get_by_role("menuitem", name="Kernel", exact=True).click()
        page.locator('.lm-Menu-item[data-command="kernelmenu:interrupt"]').click()
        wait_idle(page, 30_000)
        page.wait_for_function(r"""() => /KeyboardInterrupt/.test(
            [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].at(-2).textContent)""", timeout=10_000)
        cell_text = page.locator(LAST_RUN_CELL).last.locator(".jp-OutputArea-output").all_inner_texts()
        assert any("KeyboardInterrupt" in t for t in cell_text), cell_text
        assert any(re.search(r"cancelled \d+ programs", t) for t in cell_text), cell_text
        probe = run_cell_for_text(page, (
            "m = rt.metrics()\n"
            "ends = [e.time for e in rt.events.since(0) if e.kind == 'request.finished']\n"
            "import json; json.dumps({'running': m.num_running, 'waiting': m.num_waiting,"
            " 'full': m.pool_free + m.cache_evictable + m.cache_protected == m.pool_slots,"
            " 'locked': m.cache_protected, 'last_end': max(ends)})"))
        state = json.loads(probe.strip().strip("'"))
        assert state["running"] == 0 and state["waiting"] == 0 and state["full"] and state["locked"] == 0, state
        print(f"Interrupt: the engine's last request ended {state['last_end'] - clicked:.2f} s after the click")
        assert state["last_end"] - clicked < 1.0, f"the engine finished its last request {state['last_end'] - clicked:.2f}s after Interrupt"
        assert_no_traceback_except_interrupt(page)

        # 3. The radix tree answers zoom, search and click with the node's full text.
        page.locator(".jp-OutputArea-output .sglw-tab[data-panel=tree]").first.click()
        tree = page.locator(".jp-OutputArea-output .sglw-tree").first
        tree.locator("[data-node-id]").first.wait_for(state="visible", timeout=10_000)
        scale = float(tree.locator(".sglw-tree-viewport").get_attribute("data-scale"))
        tree.locator(".sglw-tree-zoom-in").click()
        page.wait_for_timeout(300)
        assert float(tree.locator(".sglw-tree-viewport").get_attribute("data-scale")) > scale
        tree.locator(".sglw-tree-fit").click()
        tree.locator(".sglw-tree-search").fill("topic 7")
        page.wait_for_timeout(300)
        match = tree.locator("[data-node-id].sglw-tree-match").first
        match.wait_for(state="visible", timeout=5_000)
        match.click()
        details = tree.locator(".sglw-tree-details")
        details.wait_for(state="visible", timeout=5_000)
        details.locator(".sglw-tree-path summary").click()  # the node's text is the end of the match
        # The text is filled by the <details> toggle event, which the browser fires as a later task.
        details.locator(".sglw-tree-path pre").filter(has_text="topic 7").wait_for(state="visible", timeout=5_000)
        save_screenshot(page.locator(ROOT).first, tmp_path / "dashboard-light.png")  # the README's picture

        # 4. Dark theme: every text of the views keeps WCAG AA contrast.
        page.get_by_role("menuitem", name="Settings", exact=True).click()
        page.locator('.lm-Menu-item[data-type="submenu"]:has-text("Theme")').first.hover()
        page.get_by_role("menuitem", name="JupyterLab Dark", exact=True).click()
        page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=10_000)
        page.wait_for_timeout(500)
        for panel in ("tree", "stats", "latency", "programs"):
            page.locator(f".jp-OutputArea-output .sglw-tab[data-panel={panel}]").first.click()
            page.wait_for_timeout(300)
            result = page.evaluate(CONTRAST_JS)
            assert result["checked"] > 5 and not result["failures"], (panel, result)
        page.locator(".jp-OutputArea-output .sglw-tab[data-panel=stats]").first.click()
        save_screenshot(page.locator(ROOT).first, tmp_path / "dashboard-dark.png")
    assert not page_errors, f"JupyterLab raised in the page: {page_errors}"


def assert_no_traceback_except_interrupt(page: Any) -> None:
    errors = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts()
              if "Traceback" in t and "KeyboardInterrupt" not in t]
    assert not errors, "a cell raised:\n" + "\n".join(errors)


def test_saved_notebook_reopens_with_last_state_and_big_tree_is_fast(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    write_notebook(root / "saved.ipynb", [
        SETUP,
        # 1,000+ nodes: shared stems, distinct tails.
        "prompts = [f'Record {i // 40}: item {i % 40} of group {i // 40} says {i}' for i in range(1200)]\n"
        "_ = rt.generate(prompts, max_new_tokens=1, temperature=0)\n"
        "len(rt.cache_snapshot(with_text=False).nodes)",
        "from sglbench.viz import RadixTreeView\ntree = RadixTreeView(rt)\ntree",
        "dash = rt.dashboard()\ndash",
    ])
    with jupyter_lab(root, tmp_path / "jupyter", env=live_env()) as lab, \
            chromium_context(tmp_path / "chromium-profile") as context:
        page = context.new_page()
        page.goto(lab.lab_url("saved.ipynb"))
        wait_idle(page)
        run_all(page)
        nodes = int(page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea-output").inner_text())
        assert nodes >= 1000
        tree = page.locator(".jp-OutputArea-output .sglw-tree").first
        tree.locator("[data-node-id]").first.wait_for(state="visible", timeout=10_000)
        render_ms = float(tree.get_attribute("data-render-ms"))
        assert render_ms < 1000, f"a {nodes}-node tree took {render_ms:.0f} ms to draw"
        print(f"a {nodes}-node cache: the tree view drew in {render_ms:.0f} ms")
        summary = page.locator(".jp-OutputArea-output .sglw-summary").first.inner_text()
        page.keyboard.press("Control+s")
        page.wait_for_timeout(1500)
        saved = nbformat.read(root / "saved.ipynb", as_version=4)
        assert saved.metadata.get("widgets"), "the notebook was saved without widget state"

    # Reopen on a new server (the same Jupyter folders: the notebook stays trusted). No kernel holds the widget
    # models any more: the views draw the state saved in the notebook and say they are not connected.
    with jupyter_lab(root, tmp_path / "jupyter", env=live_env(), auto_start_kernel=False) as lab, \
            chromium_context(tmp_path / "chromium-profile-2") as context:
        page = context.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.goto(lab.lab_url("saved.ipynb"))
        with contextlib.suppress(Exception):  # a kernel dialog, if JupyterLab asks: start none
            page.get_by_role("button", name="No Kernel").click(timeout=5_000)
        page.locator(ROOT).first.wait_for(state="visible", timeout=30_000)
        text = page.locator(".jp-Notebook").inner_text()
        assert "Error displaying widget" not in text
        assert page.locator(".jp-OutputArea-output .sglw-summary").first.inner_text() == summary
        assert page.locator(".jp-OutputArea-output .sglw-tree [data-node-id]").count() > 10
        page.wait_for_function("""() => [...document.querySelectorAll('.jp-OutputArea-output .sglw-status')]
            .every(b => b.dataset.status === 'disconnected')""", timeout=15_000)
        assert "not connected" in page.locator(".jp-OutputArea-output .sglw-status").first.inner_text()
        save_screenshot(page, tmp_path / "reopened.png")
    assert not page_errors, page_errors
