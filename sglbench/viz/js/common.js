// Helpers every workbench view shares. sglbench/viz/esm.py concatenates this file first, then the views,
// then app.js (which ends with `export default sglWorkbench;`) into one ES module: names here are global to
// the bundle, so every top-level name of every file carries its file's prefix (sgl*, tree*, stats*, ...).

const SGL_SVG_NS = "http://www.w3.org/2000/svg";

/** An HTML element: attrs are attributes ("class", "style", data-*), on* functions become listeners. */
function sglEl(tag, attrs = {}, children = []) {
  return sglFill(document.createElement(tag), attrs, children);
}

/** An SVG element, same conventions as sglEl. */
function sglSvg(tag, attrs = {}, children = []) {
  return sglFill(document.createElementNS(SGL_SVG_NS, tag), attrs, children);
}

function sglFill(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of [].concat(children)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Remove every child of a node. */
function sglClear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** "1,234" for integers; "–" for null/undefined/NaN. */
function sglFmtInt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Math.round(n).toLocaleString("en-US");
}

/** About `digits` significant figures without trailing zeros: 29.5 -> "29.5", 1234.5 -> "1,235", 0.01234 -> "0.0123". */
function sglFmtNum(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (!Number.isFinite(x)) return x > 0 ? "∞" : "-∞";
  const ax = Math.abs(x);
  if (ax >= 10 ** digits || Number.isInteger(x)) return sglFmtInt(x);
  const decimals = Math.max(0, digits - 1 - Math.floor(Math.log10(ax || 1)));
  return String(Number(x.toFixed(Math.min(decimals, 6))));
}

/** A duration in seconds as "850 µs", "12.3 ms", "1.25 s", "3 min 05 s"; "–" for null. */
function sglFmtSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  const a = Math.abs(s);
  if (a < 1e-3) return `${sglFmtNum(s * 1e6)} µs`;
  if (a < 1) return `${sglFmtNum(s * 1e3)} ms`;
  if (a < 60) return `${sglFmtNum(s)} s`;
  const m = Math.floor(a / 60);
  return `${s < 0 ? "-" : ""}${m} min ${String(Math.round(a - 60 * m)).padStart(2, "0")} s`;
}

/** A fraction as "42.1 %"; "–" for null. */
function sglFmtPct(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return `${sglFmtNum(100 * x)} %`;
}

/** Text cut to `limit` characters with an ellipsis, newlines shown as ⏎ (for one-line labels). */
function sglClip(text, limit) {
  const one = String(text ?? "").replace(/\r/g, "").replace(/\n/g, "⏎");
  return one.length <= limit ? one : one.slice(0, Math.max(limit - 1, 0)) + "…";
}

/** Call cb(width, height) when the element's content box changes size (once per animation frame at most);
 *  returns the function that stops watching. */
function sglOnResize(node, cb) {
  let frame = 0;
  const observer = new ResizeObserver((entries) => {
    const box = entries[entries.length - 1].contentRect;
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(() => cb(box.width, box.height));
  });
  observer.observe(node);
  return () => { cancelAnimationFrame(frame); observer.disconnect(); };
}

/** Call cb() whenever any of the model's traits `names` changes; returns the function that unsubscribes.
 *  The model is an anywidget model, or the static stand-in of an exported report (whose `on` does nothing). */
function sglWatch(model, names, cb) {
  const handler = () => cb();
  for (const name of names) model.on(`change:${name}`, handler);
  return () => { for (const name of names) model.off(`change:${name}`, handler); };
}

/** The value of a CSS custom property as the page resolves it for `node` (e.g. "--sglw-fg"). */
function sglCssVar(node, name, fallback = "") {
  const value = getComputedStyle(node).getPropertyValue(name).trim();
  return value || fallback;
}
