"""Real-browser checks (issue 7): the HTML report offline, and the dashboard as a live widget in JupyterLab.

Both run headless Debian chromium through playwright (no browser download) and skip, naming what is
missing, without it. Screenshots land in tmp_path, and in $SGLBENCH_ARTIFACTS when that is set.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

import sglbench as sgl
from sglbench.lang.global_config import global_config
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.viz.latency import call_latencies
from tests.browser_helpers import chromium_context, jupyter_lab, kernel_pids, require_browser, save_screenshot

pytestmark = pytest.mark.timeout(180)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SMOKE = "browser_smoke.ipynb"  # written by the test into the copied notebooks/ folder
# An output holding the drawn dashboard widget: the text/html fallback snapshot has none.
WIDGET = ".jp-OutputArea-output:has(.sglw-tabs)"
SUMMARY = f"{WIDGET} .sglw-summary"  # the dashboard's engine line above its tabs
# JupyterLab's status bar names the notebook's kernel and its state: "Python 3 (ipykernel) | Idle".
KERNEL_IDLE_JS = r"""() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(e => /\| Idle$/.test(e.textContent.trim()))"""
# Every code cell numbered, or a traceback shown (Run All stops at a raising cell).
ALL_RAN_JS = r"""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
    .every(p => /\[\d+\]/.test(p.textContent))
  || document.querySelector('.jp-Notebook').textContent.includes('Traceback (most recent call last)')"""
# The engine summary at `sel` shows more than `n` finished requests.
FINISHED_ABOVE_JS = r"""([sel, n]) => {
    const m = document.querySelector(sel)?.textContent.match(/finished ([\d,]+)/);
    return m && +m[1].replace(/,/g, '') > n;
}"""


@sgl.function
def judge(s, essay):
    s += "Essay: " + essay + "\n"
    forks = s.fork(2)
    for f, dim in zip(forks, ["clarity", "evidence"]):
        f += "Judge the " + dim + ": " + sgl.gen("j", max_tokens=6)
    forks.join()
    s += "Grade: " + sgl.gen("grade", max_tokens=3)


@pytest.fixture(scope="module", autouse=True)
def browser() -> None:
    """Skip the module, before any model is built, when chromium or playwright is missing."""
    require_browser()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random llama checkpoint shared by both tests."""
    return make_random_checkpoint(tmp_path_factory.mktemp("browser-model"), family="llama", seed=7)


def assert_visible(page: Any, selector: str) -> None:
    """The first match of `selector` becomes visible, with a non-empty box."""
    locator = page.locator(selector).first
    locator.wait_for(state="visible", timeout=5_000)
    box = locator.bounding_box()
    assert box and box["width"] > 0 and box["height"] > 0, f"{selector} has an empty box: {box}"


def test_report_renders_offline(checkpoint, tmp_path):
    rt = sgl.Runtime(str(checkpoint), device="cpu", max_total_tokens=2048)
    previous = global_config.default_backend
    sgl.set_default_backend(rt)
    try:
        dash = rt.dashboard()  # its recorder gives the report a hit-rate timeline
        for essays in (["cats purr"], ["cats purr", "dogs bark", "owls hoot"]):
            judge.run_batch([{"essay": e} for e in essays], temperature=0)
            dash.recorder.sample()
        calls = len(call_latencies(rt.events.since(0)))
        report = Path(rt.report(str(tmp_path / "report.html")))
    finally:
        global_config.default_backend = previous
        rt.shutdown()

    url = report.as_uri()
    with chromium_context(tmp_path / "chromium-profile") as context:
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url, wait_until="load")
        # The notebook's views, drawn by the same JavaScript from the state embedded in the file.
        for selector in ("section#timeline .sglw-root svg", "section#tree .sglw-tree [data-node-id]",
                         "section#latency .sglw-latency-table", "section#programs .sglw-program-card"):
            assert_visible(page, selector)
        assert page.locator("section#tree .sglw-tree").first.locator("[data-node-id]").count() >= 3
        assert page.locator(".sglw-fallback").count() == 0, "a view kept its server-rendered fallback"
        counts = page.locator("section#latency .sglw-latency-counts").first.inner_text()
        assert re.match(rf"{calls} calls\b", counts), counts
        assert page.locator("section#programs .sglw-program-node").count() >= 3
        save_screenshot(page, tmp_path / "report.png", full_page=True)
    assert set(requests) == {url}, f"the report requested more than its own file: {requests}"


def clear_outputs(path: Path) -> None:
    """Drop stored outputs and execution counts, so every prompt the browser numbers comes from this run."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)


def write_smoke_notebook(path: Path, model: Path) -> None:
    """A notebook of the quick start's shape: a Runtime on `model`, `judge` run once, the dashboard."""
    cells = [
        f'import sglbench as sgl\n\nrt = sgl.Runtime({str(model)!r}, device="cpu", max_total_tokens=2048)\n'
        "sgl.set_default_backend(rt)",
        inspect.getsource(judge) + '\nstate = judge.run(essay="cats purr", temperature=0)',
        "rt.dashboard()",
    ]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec})
    nb.cells = [nbformat.v4.new_code_cell(cell) for cell in cells]
    nbformat.write(nb, path)


def wait_kernel_idle(page: Any, timeout_ms: int) -> None:
    """Wait until JupyterLab's status bar shows the notebook's kernel connected and idle."""
    page.wait_for_function(KERNEL_IDLE_JS, timeout=timeout_ms)


def run_all_cells(page: Any, timeout_ms: int) -> None:
    """Run > Run All Cells from the menu bar; wait until every code cell ran (or one raised), kernel idle."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(ALL_RAN_JS, timeout=timeout_ms)
    wait_kernel_idle(page, timeout_ms)
    errors = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "Traceback" in t]
    assert not errors, "a cell raised:\n" + "\n".join(errors)


def finished_requests(page: Any) -> int:
    """The 'finished N' count of the dashboard's engine summary, as the browser shows it now."""
    summary = page.locator(SUMMARY).first.inner_text()
    match = re.search(r"finished ([\d,]+)", summary)
    assert match, f"no finished count in the engine summary: {summary!r}"
    return int(match.group(1).replace(",", ""))


def add_and_run_cell(page: Any, code: str) -> None:
    """Through the UI: a new cell below the last one, `code` typed in, run with Shift+Enter."""
    page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").last.click()
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")


@pytest.mark.parametrize("notebook", [SMOKE, "01_quickstart.ipynb"])
def test_dashboard_is_live_in_jupyterlab(notebook, checkpoint, tmp_path):
    root = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.html"))
    if notebook == SMOKE:
        write_smoke_notebook(root / SMOKE, checkpoint)
    clear_outputs(root / notebook)
    env = {k: v for k, v in os.environ.items() if k != "SGLBENCH_STATIC"}  # live widgets, not snapshots
    with jupyter_lab(root, tmp_path / "jupyter", env=env) as lab, \
            chromium_context(tmp_path / "chromium-profile") as context:
        page = context.new_page()
        requests: list[str] = []
        page_errors: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.goto(lab.lab_url(notebook))
        wait_kernel_idle(page, 60_000)
        run_all_cells(page, 120_000)
        kernels = kernel_pids(lab.runtime_dir)
        assert [argv[0] for argv in kernels.values()] == [sys.executable], f"not this Python: {kernels}"

        tabs = page.locator(f"{WIDGET} .sglw-tab")
        assert tabs.all_inner_texts() == ["Radix tree", "Serving", "Latency", "Programs"]
        assert_visible(page, f"{WIDGET} .sglw-tree [data-node-id]")
        assert page.locator(f"{WIDGET} .sglw-tree [data-node-id]").count() >= 2

        before = finished_requests(page)
        add_and_run_cell(page, 'rt.generate("The quick brown fox", max_new_tokens=4, temperature=0)["text"]')
        # Pushed by the dashboard's poller: the dashboard cell is not run again.
        page.wait_for_function(FINISHED_ABOVE_JS, arg=[SUMMARY, before], timeout=30_000)
        wait_kernel_idle(page, 30_000)
        page.locator(WIDGET).first.scroll_into_view_if_needed()
        save_screenshot(page, tmp_path / f"jupyterlab-{Path(notebook).stem}.png")
    assert not page_errors, f"JupyterLab raised in the page: {page_errors}"
    # anywidget imports each widget's module from a blob: URL of the page's own origin: local, not the network.
    outside = [url for url in requests if not url.startswith((lab.url, f"blob:{lab.url}"))]
    assert not outside, f"JupyterLab requested beyond its server: {outside}"
