"""The workbench front end in a real browser (issue 20, items 4, 8, 9): summary line, status badge, progress,
tabs, the Serving charts (widths that follow the panel, nice ticks, hover readout) and WCAG AA text contrast in
the light and dark themes, on a static page built by `static_views_html` from synthetic widget state.

Headless Debian chromium through playwright; skips without it. Screenshots land in tmp_path (and in
$SGLBENCH_ARTIFACTS when set).
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import pytest

from sglbench.viz.esm import EXPORT, bundle_css, bundle_js, static_views_html
from tests.browser_helpers import chromium_context, require_browser, save_screenshot

pytestmark = pytest.mark.timeout(120)

POOL = 65_536
JP_DARK = {
    "--jp-layout-color0": "#111111", "--jp-layout-color1": "#212121", "--jp-layout-color2": "#424242",
    "--jp-ui-font-color0": "rgba(255,255,255,1)", "--jp-ui-font-color1": "rgba(255,255,255,.87)",
    "--jp-ui-font-color2": "rgba(255,255,255,.54)", "--jp-border-color1": "#616161",
}

# Contrast of every visible text element of `root` against the first opaque background up its ancestors
# (layers with alpha blended), text colour (SVG: fill) blended on it. Returns [ratio, tag, class, text].
CONTRAST_JS = r"""(sel) => {
  const parse = (s) => {
    let m = s.match(/^rgba?\(([^)]+)\)/);
    if (m) { const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; }
    m = s.match(/^color\(srgb ([^)]+)\)/);
    if (m) { const p = m[1].split(/[\s\/]+/).filter(Boolean).map(Number); return [255 * p[0], 255 * p[1], 255 * p[2], p.length > 3 ? p[3] : 1]; }
    return null;
  };
  const over = (top, bottom) => [0, 1, 2].map((k) => top[3] * top[k] + (1 - top[3]) * bottom[k]).concat([1]);
  const lum = (c) => {
    const lin = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  };
  const background = (el) => {
    const layers = [];
    for (let n = el; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    return layers.reverse().reduce((bg, layer) => over(layer, bg), [255, 255, 255, 1]);
  };
  const out = [];
  for (const root of document.querySelectorAll(sel)) {
    for (const el of [root, ...root.querySelectorAll("*")]) {
      const text = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
      if (!text || !el.getClientRects().length) continue;
      const style = getComputedStyle(el);
      if (style.visibility === "hidden" || style.display === "none") continue;
      const fg = parse(el instanceof SVGElement ? style.fill : style.color);
      const bg = background(el);
      const ink = over(fg, bg);
      const [a, b] = [lum(ink), lum(bg)].sort((x, y) => y - x);
      out.push([(a + 0.05) / (b + 0.05), el.tagName, String(el.getAttribute("class")), text.slice(0, 40)]);
    }
  }
  return out;
}"""


def synthetic_series(n: int = 300) -> dict[str, Any]:
    """`n` half-second windows of a plausible serving run, with gaps (null) where a window had no event."""
    t = [round(0.5 * i, 2) for i in range(n)]
    wave = [0.5 + 0.5 * math.sin(i / 17.0) for i in range(n)]
    gap = [i % 23 in (5, 6) for i in range(n)]
    running = [int(2 + 30 * w) for w in wave]
    kv_running = [int(400 * r) for r in running]
    kv_locked = [int(1500 + 2500 * w) for w in wave]
    kv_evictable = [int(min(6000, 20 * i)) for i in range(n)]
    ttft = [None if g else 0.05 + 0.4 * w for g, w in zip(gap, wave)]
    tpot = [None if g else 0.012 + 0.02 * w for g, w in zip(gap, wave)]
    return {
        "t": t,
        "prefill_tps": [round(18_000 * w + 500, 1) for w in wave],
        "decode_tps": [round(2_400 * (1 - w) + 300, 1) for w in wave],
        "ttft_p50": ttft, "ttft_p90": [None if v is None else 1.6 * v for v in ttft],
        "ttft_p99": [None if v is None else 2.9 * v for v in ttft],
        "tpot_p50": tpot, "tpot_p90": [None if v is None else 1.4 * v for v in tpot],
        "tpot_p99": [None if v is None else 2.1 * v for v in tpot],
        "waiting": [int(12 * w * w) for w in wave], "running": running,
        "hit_rate": [None if g else round(0.2 + 0.7 * (i / n), 3) for i, g in enumerate(gap)],
        "kv_running": kv_running, "kv_locked": kv_locked, "kv_evictable": kv_evictable,
        "kv_free": [POOL - a - b - c for a, b, c in zip(kv_running, kv_locked, kv_evictable)],
        "pool_slots": POOL,
        "totals": {"requests": 1234, "prompt_tokens": 456_789, "cached_tokens": 123_456,
                   "completion_tokens": 98_765, "hit_rate": 0.27},
    }


def widget_state(**overrides: Any) -> dict[str, Any]:
    """Every trait of the workbench widget, the other views' data minimal."""
    state = {
        "panels": ["tree", "stats", "latency", "programs"], "summary_line": True,
        "status": "static", "status_note": "snapshot saved 12:03:04",
        "summary": {"running": 2, "waiting": 0, "finished": 5, "steps": 120, "pool_free": 60_000,
                    "pool_slots": POOL, "cached": 3_000, "locked": 120, "hit_rate": 0.412, "retractions": 0,
                    "decode_tps": 35.0, "model": "tiny-llama"},
        "tree": {"version": 1, "disabled": False, "total_tokens": 0, "evictable_tokens": 0, "locked_tokens": 0,
                 "node_count": 1, "omitted": 0,
                 "nodes": [{"id": 0, "parent": None, "tokens": 0, "text": "", "hits": 0, "locks": 0,
                            "last_access": 0, "state": "root", "depth_tokens": 0}]},
        "series": synthetic_series(), "calls": [], "graphs": [],
        "progress": {"done": 12, "total": 200, "failed": 1, "cancelled": 0, "elapsed_s": 3.5, "rate": 3.43,
                     "eta_s": 54.8},
    }
    state.update(overrides)
    return state


def write_page(path: Path, *views: tuple[str, dict[str, Any]]) -> str:
    """A static page of `views` at `path`; its file:// URL."""
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body style='margin:8px'>"
                    f"{static_views_html(list(views))}</body></html>", encoding="utf-8")
    return path.as_uri()


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Any:
    require_browser()
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as ctx:
        yield ctx


@pytest.fixture()
def page(context, tmp_path) -> Any:
    """The full workbench (four panels as tabs) on a static page, Serving tab shown."""
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(write_page(tmp_path / "workbench.html", ("v1", widget_state())))
    page.wait_for_selector("#v1 .sglw-root")
    page.click("#v1 .sglw-tab[data-panel=stats]")
    page.wait_for_selector("#v1 .sglw-panel[data-panel=stats] .sglw-chart-svg")
    yield page
    page.close()
    assert not errors, errors


def set_host_width(page: Any, width: int) -> None:
    """Resize the host element and wait until the charts have been redrawn for it."""
    page.evaluate("(w) => { document.getElementById('v1').style.width = w + 'px'; }", width)
    page.wait_for_function("""(w) => {
        const svg = document.querySelector('#v1 .sglw-stats-cell .sglw-chart-svg');
        const cell = svg && svg.closest('.sglw-stats-cell');
        return cell && document.getElementById('v1').getBoundingClientRect().width === w
            && Math.abs(+svg.getAttribute('width') - cell.clientWidth) <= 1; }""", arg=width)


def chart_widths(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => {
        const cells = [...document.querySelectorAll('#v1 .sglw-stats-cell')];
        return { columns: +document.querySelector('#v1 .sglw-stats-grid').dataset.columns,
                 host: document.getElementById('v1').clientWidth,
                 svgs: cells.map((c) => +c.querySelector('.sglw-chart-svg').getAttribute('width')),
                 boxes: cells.map((c) => c.querySelector('.sglw-chart-svg').getBoundingClientRect().width),
                 cells: cells.map((c) => c.clientWidth) }; }""")


def test_header_summary_status_and_progress(page):
    summary = page.inner_text("#v1 .sglw-summary")
    assert "running 2 · waiting 0 · finished 5 · steps 120" in summary
    assert "KV pool 60,000 / 65,536 free" in summary and "cached 3,000 (locked 120)" in summary
    assert "hit rate 41.2 %" in summary and "decode 35 tok/s" in summary and "tiny-llama" in summary
    badge = page.locator("#v1 .sglw-status")
    assert badge.get_attribute("data-status") == "static"
    assert badge.inner_text().strip() == "snapshot saved 12:03:04" and badge.is_visible()
    progress = page.inner_text("#v1 .sglw-progress")
    assert "12 / 200 programs" in progress and "1 failed" in progress and "3.43 programs/s" in progress
    assert "ETA 54.8 s" in progress and "cancelled" not in progress
    fill = page.evaluate("""() => { const f = document.querySelector('#v1 .sglw-progress-fill');
        return f.getBoundingClientRect().width / f.parentElement.clientWidth; }""")
    assert fill == pytest.approx(12 / 200, abs=0.01)


def test_tabs_switch_and_views_stay_mounted(page):
    tabs = page.locator("#v1 .sglw-tabs .sglw-tab")
    assert tabs.all_inner_texts() == ["Radix tree", "Serving", "Latency", "Programs"]
    visible = "() => [...document.querySelectorAll('#v1 .sglw-panel')].filter(p => !p.hidden).map(p => p.dataset.panel)"
    assert page.evaluate(visible) == ["stats"]
    assert page.get_attribute("#v1 .sglw-tab[data-panel=stats]", "aria-selected") == "true"
    page.evaluate("() => { document.querySelector('#v1 .sglw-stats').dataset.marker = 'kept'; }")
    page.click("#v1 .sglw-tab[data-panel=latency]")
    assert page.evaluate(visible) == ["latency"]
    assert page.get_attribute("#v1 .sglw-tab[data-panel=stats]", "aria-selected") == "false"
    assert page.locator("#v1 .sglw-panel[data-panel=latency] > *").count() > 0  # mounted on first show
    page.click("#v1 .sglw-tab[data-panel=stats]")
    assert page.evaluate(visible) == ["stats"]
    assert page.get_attribute("#v1 .sglw-stats", "data-marker") == "kept"  # not remounted
    assert page.locator("#v1 .sglw-stats").count() == 1
    page.focus("#v1 .sglw-tab[data-panel=stats]")
    page.keyboard.press("ArrowRight")
    assert page.evaluate(visible) == ["latency"]


def test_single_panel_has_no_tabs_and_live_badge(context, tmp_path):
    page = context.new_page()
    state = widget_state(panels=["stats"], status="stopped", status_note="the runtime shut down",
                         summary_line=False, progress=None)
    page.goto(write_page(tmp_path / "single.html", ("v1", state)))
    page.wait_for_selector("#v1 .sglw-stats .sglw-chart-svg")
    assert page.locator("#v1 .sglw-tabs").count() == 0
    assert page.locator("#v1 .sglw-summary").is_hidden() and page.locator("#v1 .sglw-progress").is_hidden()
    assert page.locator("#v1 .sglw-status").inner_text().strip() == "stopped: the runtime shut down"
    assert page.locator("#v1 .sglw-stats-cell .sglw-chart-svg").count() == 6
    page.close()


def test_empty_series_and_live_badge(context, tmp_path):
    page = context.new_page()
    state = widget_state(panels=["stats"], status="live", status_note="", series={}, progress=None)
    page.goto(write_page(tmp_path / "empty.html", ("v1", state)))
    page.wait_for_selector("#v1 .sglw-stats")
    assert page.locator("#v1 .sglw-status").inner_text().strip() == "live"
    assert page.get_attribute("#v1 .sglw-status", "data-status") == "live"
    assert "No requests yet" in page.inner_text("#v1 .sglw-stats .sglw-empty")
    assert page.locator("#v1 .sglw-chart-svg").count() == 0
    assert page.locator("#v1 .sglw-summary").is_visible()
    page.close()


def test_charts_follow_the_panel_width(page):
    set_host_width(page, 500)
    narrow = chart_widths(page)
    assert narrow["columns"] == 1
    assert all(abs(s - c) <= 1 for s, c in zip(narrow["svgs"], narrow["cells"])), narrow
    assert all(b <= narrow["host"] for b in narrow["boxes"]) and min(narrow["svgs"]) > 400, narrow
    set_host_width(page, 1200)
    wide = chart_widths(page)
    assert wide["columns"] == 3
    assert all(abs(s - c) <= 1 for s, c in zip(wide["svgs"], wide["cells"])), wide
    assert min(wide["svgs"]) > 330 and 3 * max(wide["svgs"]) < 1200, wide
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1400


def significant_figures(label: str) -> int:
    """Significant digits of a tick label such as "1,500", "25 k", "250 ms", "42.5 %" ("0" counts 1)."""
    digits = re.sub(r"[^0-9.]", "", label)
    mantissa = digits.replace(".", "").lstrip("0")
    if "." not in digits:
        mantissa = mantissa.rstrip("0")
    return max(1, len(mantissa))


def test_ticks_are_nice_and_axes_titled(page):
    set_host_width(page, 1200)
    labels = page.eval_on_selector_all("#v1 .sglw-stats .sglw-chart-tick", "els => els.map(e => e.textContent)")
    assert len(labels) > 40
    bad = [s for s in labels if significant_figures(s) > 3 or re.search(r"\.\d*0(\D|$)", s)]
    assert not bad, bad
    assert "100 %" in labels and any(s.endswith(" ms") for s in labels) and any(s.endswith(" k") for s in labels)
    titles = page.eval_on_selector_all("#v1 .sglw-stats .sglw-chart-axis-title", "els => els.map(e => e.textContent)")
    assert titles.count("time since first request (s)") == 6 and "tokens/s" in titles and "KV slots" in titles
    kv_title = page.inner_text("#v1 .sglw-stats-cell[data-chart=kv] .sglw-chart-head")
    assert "65,536 slots" in kv_title
    # The KV axis is scaled to the use (peak 15,800 slots), not the whole pool.
    kv_ticks = page.eval_on_selector_all("#v1 .sglw-stats-cell[data-chart=kv] .sglw-chart-tick",
                                         "els => els.map(e => e.textContent)")
    assert "20 k" in kv_ticks and "60 k" not in kv_ticks, kv_ticks


def test_lines_break_at_null_and_hover_reads_values(page):
    path = page.get_attribute("#v1 .sglw-stats-cell[data-chart=ttft] .sglw-chart-line", "d")
    assert path.count("M") > 5  # a new subpath after each gap
    box = page.locator("#v1 .sglw-stats-cell[data-chart=throughput] .sglw-chart-overlay").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tip = page.locator("#v1 .sglw-stats-cell[data-chart=throughput] .sglw-chart-tip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert text.startswith("t = ") and "prefill" in text and "decode" in text
    tip_box = tip.bounding_box()
    assert box["y"] <= tip_box["y"] < box["y"] + box["height"], (tip_box, box)  # beside the rule, in the plot
    assert page.locator("#v1 .sglw-stats-cell[data-chart=throughput] .sglw-chart-dots circle").count() == 2
    page.mouse.move(1, 1)
    tip.wait_for(state="hidden")


def assert_contrast(page: Any, where: str) -> int:
    rows = page.evaluate(CONTRAST_JS, "#v1 .sglw-root")
    low = [r for r in rows if r[0] < 4.5]
    assert not low, f"{where}: text below 4.5:1: {low[:10]}"
    return len(rows)


def hover_middle(page: Any, chart: str) -> None:
    box = page.locator(f"#v1 .sglw-stats-cell[data-chart={chart}] .sglw-chart-overlay").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    page.locator(f"#v1 .sglw-stats-cell[data-chart={chart}] .sglw-chart-tip").wait_for(state="visible")


def test_light_and_dark_theme_text_contrast(page, tmp_path):
    set_host_width(page, 1200)
    hover_middle(page, "kv")
    assert assert_contrast(page, "light") > 80
    save_screenshot(page, tmp_path / "workbench_serving_light.png", full_page=True)
    page.evaluate("""(vars) => { document.body.dataset.jpThemeLight = 'false';
        for (const [k, v] of Object.entries(vars)) document.body.style.setProperty(k, v); }""", JP_DARK)
    bg = page.evaluate("() => getComputedStyle(document.querySelector('#v1 .sglw-root')).backgroundColor")
    assert bg == "rgb(17, 17, 17)"
    hover_middle(page, "throughput")
    assert assert_contrast(page, "dark") > 80
    save_screenshot(page, tmp_path / "workbench_serving_dark.png", full_page=True)


def test_report_follows_dark_system_preference(context, tmp_path):
    page = context.new_page()
    page.emulate_media(color_scheme="dark")
    page.goto(write_page(tmp_path / "report.html", ("v1", widget_state(panels=["stats"]))))
    page.wait_for_selector("#v1 .sglw-stats .sglw-chart-svg")
    root_bg = "() => getComputedStyle(document.querySelector('#v1 .sglw-root')).backgroundColor"
    assert page.evaluate(root_bg) == "rgb(17, 17, 17)"
    assert_contrast(page, "report, dark preference")
    page.evaluate("() => { document.body.dataset.jpThemeLight = 'true'; }")  # JupyterLab light wins
    assert page.evaluate(root_bg) == "rgb(255, 255, 255)"
    page.close()


@pytest.fixture()
def charts_page(context, tmp_path) -> Any:
    """A page running the bundle with its chart functions exposed as window.charts, and a 600 px box."""
    code = bundle_js().replace(EXPORT, "")
    names = "chartScale, chartFmtTicks, chartBins, chartLine, chartArea, chartHistogram"
    (tmp_path / "charts.html").write_text(
        f"<!doctype html><html><body><div class='sglw-root'><div id='box' style='width:600px'></div></div>"
        f"<style>{bundle_css()}</style><script type='module'>{code}\nwindow.charts = {{ {names} }};</script>"
        "</body></html>", encoding="utf-8")
    page = context.new_page()
    page.goto((tmp_path / "charts.html").as_uri())
    page.wait_for_function("() => window.charts")
    yield page
    page.close()


@pytest.mark.parametrize("lo, hi, kind", [
    (0, 29.5, "num"), (0, 0.0123, "num"), (0, 65_536, "int"), (0, 1.5e6, "num"), (100.5, 130, "num"),
    (0, 0.085, "seconds"), (0, 2.9, "seconds"), (0, 95, "seconds"), (0, 1, "pct"), (-3.3, 7.1, "num"),
])
def test_tick_steps_and_labels(charts_page, lo, hi, kind):
    for count in (3, 5, 8):
        scale = charts_page.evaluate("([lo, hi, n]) => window.charts.chartScale(lo, hi, n, true)", [lo, hi, count])
        ticks, step = scale["ticks"], scale["step"]
        mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
        assert round(mantissa, 6) in (1, 2, 5), step
        assert scale["lo"] <= lo and scale["hi"] >= hi and ticks[0] == scale["lo"] and ticks[-1] == scale["hi"]
        assert all(b - a == pytest.approx(step) for a, b in itertools.pairwise(ticks))
        labels = charts_page.evaluate("([t, k]) => window.charts.chartFmtTicks(t, k)", [ticks, kind])
        assert len(set(labels)) == len(labels), labels
        bad = [s for s in labels if significant_figures(s) > 3 or re.search(r"\.\d*0(\D|$)", s)]
        assert not bad, (ticks, labels)


def test_histogram_bins_fold_the_tail(charts_page):
    values = [0.01 * i for i in range(1, 200)] + [9.0, None]
    bins = charts_page.evaluate("(v) => window.charts.chartBins(v, 20, 0, 2.5)", values)
    assert sum(bins["counts"]) == 200 and bins["folded"] and bins["lo"] == 0
    assert round(bins["step"], 6) == 0.1 and len(bins["counts"]) == 26
    charts_page.evaluate("""(v) => window.charts.chartHistogram(document.getElementById('box'),
        { title: 'e2e', values: v, xMax: 2.5, xFormat: 'seconds', xLabel: 'latency', marks: [{ x: 1, name: 'p50' }] })""",
                         values)
    assert charts_page.locator("#box .sglw-chart-bar").count() == 26
    assert charts_page.get_attribute("#box .sglw-chart-svg", "width") == "600"
    overlay = charts_page.locator("#box .sglw-chart-overlay").bounding_box()
    charts_page.mouse.move(overlay["x"] + overlay["width"] - 2, overlay["y"] + 20)
    assert charts_page.inner_text("#box .sglw-chart-tip-label") == "≥ 2.5 s"
    assert charts_page.locator("#box .sglw-chart-bar-hover").count() == 1


def test_line_gaps_isolated_points_and_clipped_area(charts_page):
    charts_page.evaluate("""() => window.charts.chartLine(document.getElementById('box'), { title: 'gaps',
        x: [0, 1, 2, 3, 4, 5, 6], series: [{ name: 'a', values: [1, 2, null, 3, null, 4, 5] }] })""")
    assert charts_page.get_attribute("#box .sglw-chart-line", "d").count("M") == 3  # pen lifted at each null
    assert charts_page.locator("#box .sglw-chart-point").count() == 1  # the 3 alone between gaps
    overlay = charts_page.locator("#box .sglw-chart-overlay").bounding_box()
    charts_page.mouse.move(overlay["x"] + overlay["width"] / 2, overlay["y"] + 10)
    assert charts_page.inner_text("#box .sglw-chart-tip") == "t = 3 s\na\n3"
    charts_page.evaluate("""() => window.charts.chartLine(document.getElementById('box'), { title: 'gaps',
        x: [0, 1, 2, 3, 4, 5, 6], series: [{ name: 'a', values: [1, 2, null, 7, null, 4, 5] }] })""")
    assert charts_page.inner_text("#box .sglw-chart-tip") == "t = 3 s\na\n7"  # a live redraw keeps the readout
    charts_page.evaluate("""() => window.charts.chartArea(document.getElementById('box'), { title: 'pool',
        x: [0, 1, 2], yMax: 100, yFormat: 'int',
        layers: [{ name: 'used', values: [10, 50, 80] }, { name: 'free', values: [990, 950, 920] }] })""")
    ys = charts_page.evaluate("""() => [...document.querySelectorAll('#box .sglw-chart-area')]
        .flatMap((p) => [...p.getAttribute('d').matchAll(/,(-?[\\d.]+)/g)].map((m) => +m[1]))""")
    top = charts_page.evaluate("() => +document.querySelector('#box .sglw-chart-grid line:last-child').getAttribute('y1')")
    assert min(ys) == pytest.approx(top, abs=0.1)  # the free layer is clipped at yMax, the top gridline
    ticks = charts_page.eval_on_selector_all("#box .sglw-chart-tick", "els => els.map(e => e.textContent)")
    assert "100" in ticks and "1,000" not in ticks
