"""The workbench's front end as one ES module and one stylesheet, for anywidget and for exported HTML.

The JavaScript lives in `sglbench/viz/js/` as plain files concatenated in `JS_FILES` order (no build step, no
CDN: it works offline). `app.js` comes last and ends with `export default sglWorkbench;`, the anywidget
module. An exported page (the HTML report) runs the same code on a static stand-in for the widget model, so a
notebook and a report draw the same views from the same state.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"
JS_FILES = ("common.js", "charts.js", "tree.js", "stats.js", "latency.js", "programs.js", "app.js")
CSS_FILES = ("app.css", "tree.css", "stats.css", "latency.css", "programs.css")
EXPORT = "export default sglWorkbench;"

# The static stand-in for an anywidget model: traits read from the embedded state, changes never come.
_STATIC_MODEL = ("function sglStaticModel(state) { return { get: (k) => state[k], set() {}, save_changes() {}, "
                 "on() {}, off() {}, send() {} }; }")


def _read(name: str) -> str:
    path = JS_DIR / name
    return path.read_text(encoding="utf-8") if path.exists() else ""


@cache
def bundle_js() -> str:
    """All view code as one ES module whose default export is the anywidget `{render}` object."""
    parts = [f"// ---- {name}\n{_read(name)}" for name in JS_FILES]
    return "\n".join(parts)


@cache
def bundle_css() -> str:
    """Every view's stylesheet, in `CSS_FILES` order."""
    return "\n".join(f"/* ---- {name} */\n{_read(name)}" for name in CSS_FILES)


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no `</script>` or `<!--` can end or confuse it)."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")


def view_host(element_id: str, fallback_html: str = "") -> str:
    """The element a view is drawn into, holding `fallback_html` (server-rendered) until the view is drawn: a
    page without JavaScript, or whose script failed, still shows it."""
    fallback = f'<div class="sglw-fallback">{fallback_html}</div>' if fallback_html else ""
    return f'<div class="sglw-host" id="{html.escape(element_id, quote=True)}">{fallback}</div>'


def static_views_script(views: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The stylesheet and one module script drawing each (element id, widget state) into its host with the live
    views' code, removing the host's fallback once drawn. A page includes it once, after its hosts."""
    mounts = _script_json([[element_id, dict(state)] for element_id, state in views])
    code = bundle_js().replace(EXPORT, "")
    script = (f"{code}\n{_STATIC_MODEL}\n"
              f"for (const [id, state] of {mounts}) {{ const host = document.getElementById(id); if (!host) continue; "
              f"const fallback = host.querySelector(':scope > .sglw-fallback'); const box = document.createElement('div'); "
              f"host.append(box); try {{ sglWorkbench.render({{ model: sglStaticModel(state), el: box }}); "
              f"if (fallback) fallback.remove(); }} catch (error) {{ box.remove(); "
              f"console.error('sglbench: drawing', id, 'failed', error); }} }}")
    return f"<style>{bundle_css()}</style><script type=\"module\">{script}</script>"


def static_views_html(views: Sequence[tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], str]]) -> str:
    """Host elements and one module script that draws each (element id, widget state[, fallback HTML]) with the
    live views' code.

    Used by exported pages; the page must not also load `bundle_js()` elsewhere."""
    hosts = "".join(view_host(view[0], view[2] if len(view) > 2 else "") for view in views)
    return hosts + static_views_script([(view[0], view[1]) for view in views])
