// Reusable SVG charts for the workbench views: a line chart (several series, optional band), a stacked area
// and a histogram. Each draws into a container at the container's width (the caller redraws on resize) with
// axis titles, 1/2/5 x 10^k ticks, a legend, gaps where a value is null, and a hover readout (a vertical rule
// and the values at the nearest sample) that needs no kernel. Colours are CSS custom properties only:
// series name their colour as "--sglw-c1" ... (default: c1..c6 in order); styles live in app.css.

const CHART_HEIGHT = 180; // px of plot + axes (the title and legend sit above, in HTML)
const CHART_CHAR_PX = 6.6; // average width of an 11 px tick-label character, for margins
const CHART_POINTERS = new WeakMap(); // container -> the pointer over its chart, to keep the readout on redraws

/** `var(--name)` for a custom-property name; series i defaults to --sglw-c(i mod 6 + 1). */
function chartColor(color, i = 0) {
  const name = color || `--sglw-c${(i % 6) + 1}`;
  return name.startsWith("--") ? `var(${name})` : name;
}

/** A tick step of 1, 2 or 5 x 10^k giving about `count` intervals over `span`. */
function chartStep(span, count) {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/** The width to draw at: spec.width, else the container's content width (at least 160 px). */
function chartWidth(container, spec) {
  if (spec.width) return Math.max(160, Math.floor(spec.width));
  const style = getComputedStyle(container);
  const pad = (parseFloat(style.paddingLeft) || 0) + (parseFloat(style.paddingRight) || 0);
  return Math.max(160, Math.floor(container.clientWidth - pad));
}

/** A float with its binary noise removed (3 * 0.1 -> 0.3). */
function chartRound(v) {
  return Number(v.toPrecision(12));
}

/** An axis over [lo, hi] with about `count` ticks; `extend` widens the ends to whole steps (for y axes). */
function chartScale(lo, hi, count, extend = true) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) { lo = 0; hi = 1; }
  if (hi <= lo) hi = lo + (Math.abs(lo) || 1);
  const step = chartStep(hi - lo, count);
  if (extend) {
    lo = chartRound(Math.floor(lo / step + 1e-9) * step);
    hi = chartRound(Math.ceil(hi / step - 1e-9) * step);
  }
  const ticks = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9 && ticks.length < 60; k += 1) {
    ticks.push(chartRound(k * step));
  }
  return { lo, hi, step, ticks };
}

/** The smallest whole 1/2/5 step at or above `max` (the top of a y axis). */
function chartNiceMax(max, count = 5) {
  if (!(max > 0)) return 1;
  const step = chartStep(max, count);
  return chartRound(Math.ceil(max / step - 1e-9) * step);
}

/** The unit of an axis from its largest tick: [divisor, suffix] ("k" from 10,000, so 3 significant figures
 *  at most on 1/2/5 ticks); seconds in s, ms or µs. */
function chartUnit(ticks, kind) {
  const max = Math.max(0, ...ticks.map((v) => Math.abs(v)));
  if (kind === "seconds") {
    if (max >= 1) return [1, " s"];
    return max >= 1e-3 ? [1e-3, " ms"] : [1e-6, " µs"];
  }
  if (max >= 1e9) return [1e9, " G"];
  if (max >= 1e6) return [1e6, " M"];
  return max >= 1e4 ? [1e3, " k"] : [1, ""];
}

/** Tick labels in `kind` (num | int | seconds | pct), one unit per axis: "0", "5 k", "10 k"; "0", "0.5 s", "1 s". */
function chartFmtTicks(ticks, kind) {
  if (kind === "pct") return ticks.map((v) => (v === 0 ? "0" : sglFmtPct(v)));
  const [div, suffix] = chartUnit(ticks, kind);
  return ticks.map((v) => (v === 0 ? "0" : `${sglFmtNum(chartRound(v / div))}${suffix}`));
}

/** A data value in `kind` for the hover readout ("–" for null). */
function chartFmtValue(v, kind) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (kind === "seconds") return sglFmtSeconds(v);
  if (kind === "pct") return sglFmtPct(v);
  if (kind === "int") return sglFmtInt(v);
  return sglFmtNum(v);
}

function chartIsNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

/** The largest finite number in some arrays (-Infinity when none). */
function chartMax(...arrays) {
  let max = -Infinity;
  for (const values of arrays) for (const v of values || []) if (chartIsNum(v) && v > max) max = v;
  return max;
}

/** The smallest finite number in some arrays (Infinity when none). */
function chartMin(...arrays) {
  let min = Infinity;
  for (const values of arrays) for (const v of values || []) if (chartIsNum(v) && v < min) min = v;
  return min;
}

/** Index of the x nearest `x` in ascending `xs` (binary search). */
function chartNearest(xs, x) {
  let lo = 0;
  let hi = xs.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid; else hi = mid;
  }
  return Math.abs(xs[hi] - x) < Math.abs(xs[lo] - x) ? hi : lo;
}

/** Runs of consecutive indices where ok(i) holds: [[start, end], ...] (inclusive). */
function chartRuns(n, ok) {
  const runs = [];
  let start = -1;
  for (let i = 0; i <= n; i += 1) {
    if (i < n && ok(i)) { if (start < 0) start = i; } else if (start >= 0) { runs.push([start, i - 1]); start = -1; }
  }
  return runs;
}

/** The chart's HTML shell (title, note, legend, svg) in `container`, sized to its width, and the plot box. */
function chartFrame(container, spec, legend, x, y) {
  const width = chartWidth(container, spec);
  const height = spec.height ?? CHART_HEIGHT;
  const yFmt = spec.yFormat ?? "num";
  const xFmt = spec.xFormat ?? "num";
  const yLabels = chartFmtTicks(y.ticks, yFmt);
  const xLabels = chartFmtTicks(x.ticks, xFmt);
  const lastX = xLabels.length ? xLabels[xLabels.length - 1].length : 0;
  const box = {
    left: 10 + (spec.yLabel ? 16 : 0) + CHART_CHAR_PX * Math.max(1, ...yLabels.map((s) => s.length)),
    top: 8,
    right: Math.max(12, (CHART_CHAR_PX * lastX) / 2 + 4),
    bottom: 22 + (spec.xLabel === "" ? 0 : 16),
  };
  box.w = Math.max(40, width - box.left - box.right);
  box.h = Math.max(40, height - box.top - box.bottom);
  const px = (v) => box.left + ((v - x.lo) / (x.hi - x.lo || 1)) * box.w;
  const py = (v) => box.top + box.h - ((Math.min(Math.max(v, y.lo), y.hi) - y.lo) / (y.hi - y.lo || 1)) * box.h;

  const svg = sglSvg("svg", {
    class: "sglw-chart-svg", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": spec.title ?? "chart",
  });
  const grid = sglSvg("g", { class: "sglw-chart-grid" });
  const axis = sglSvg("g", { class: "sglw-chart-axis" });
  y.ticks.forEach((v, i) => {
    const yy = py(v).toFixed(1);
    grid.append(sglSvg("line", { x1: box.left, x2: box.left + box.w, y1: yy, y2: yy }));
    axis.append(sglSvg("text", { class: "sglw-chart-tick", x: box.left - 6, y: yy, dy: "0.32em",
                                 "text-anchor": "end" }, yLabels[i]));
  });
  const base = box.top + box.h;
  axis.append(sglSvg("line", { class: "sglw-chart-baseline", x1: box.left, x2: box.left + box.w, y1: base, y2: base }));
  x.ticks.forEach((v, i) => {
    const xx = px(v).toFixed(1);
    axis.append(sglSvg("line", { x1: xx, x2: xx, y1: base, y2: base + 4 }));
    axis.append(sglSvg("text", { class: "sglw-chart-tick", x: xx, y: base + 15, "text-anchor": "middle" }, xLabels[i]));
  });
  if (spec.xLabel !== "") {
    axis.append(sglSvg("text", { class: "sglw-chart-axis-title", x: box.left + box.w / 2, y: height - 4,
                                 "text-anchor": "middle" }, spec.xLabel ?? "time since first request (s)"));
  }
  if (spec.yLabel) {
    axis.append(sglSvg("text", { class: "sglw-chart-axis-title", transform: "rotate(-90)",
                                 x: -(box.top + box.h / 2), y: 12, "text-anchor": "middle" }, spec.yLabel));
  }
  const marks = sglSvg("g", { class: "sglw-chart-marks" });
  svg.append(grid, marks, axis);

  const head = sglEl("div", { class: "sglw-chart-head" }, [
    sglEl("span", { class: "sglw-chart-title" }, spec.title ?? ""),
    spec.note ? sglEl("span", { class: "sglw-chart-note" }, spec.note) : null,
  ]);
  const keys = legend.map((item) => sglEl("span", { class: "sglw-chart-key" }, [
    sglEl("span", { class: `sglw-chart-swatch${item.dash ? " sglw-chart-swatch-dash" : ""}${item.area ? " sglw-chart-swatch-area" : ""}`,
                    style: `--sglw-swatch: ${item.color}` }),
    item.name,
  ]));
  const wrap = sglEl("div", { class: "sglw-chart" }, [
    head, keys.length > 1 ? sglEl("div", { class: "sglw-chart-legend" }, keys) : null, svg,
  ]);
  sglClear(container).append(wrap);
  return { container, wrap, svg, marks, box, px, py, width, height };
}

/** Hover readout: a vertical rule, dots on the values and a box listing them, at the sample nearest the
 *  pointer. `xs` are the samples' x values (ascending); read(i) gives { label, items: [{ name, color, text,
 *  y }] } with y the value to mark (null: no dot). */
function chartHover(frame, xs, read) {
  const { wrap, svg, box, px, py } = frame;
  if (!xs.length) return;
  const rule = sglSvg("line", { class: "sglw-chart-rule", y1: box.top, y2: box.top + box.h, visibility: "hidden" });
  const dots = sglSvg("g", { class: "sglw-chart-dots" });
  const overlay = sglSvg("rect", { class: "sglw-chart-overlay", x: box.left, y: box.top, width: box.w, height: box.h });
  svg.append(rule, dots, overlay);
  const tip = sglEl("div", { class: "sglw-chart-tip", hidden: true });
  wrap.append(tip);
  let shown = -1;
  const hide = () => { shown = -1; tip.hidden = true; if (frame.onHide) frame.onHide(); rule.setAttribute("visibility", "hidden"); sglClear(dots); };
  const show = (event) => {
    const bounds = svg.getBoundingClientRect();
    const scale = bounds.width ? frame.width / bounds.width : 1;
    const xv = ((event.clientX - bounds.left) * scale - box.left) / (box.w || 1);
    const x0 = xs[0];
    const x1 = xs[xs.length - 1];
    const i = chartNearest(xs, frame.xAt ? frame.xAt(xv) : x0 + xv * (x1 - x0));
    if (i === shown) return;
    shown = i;
    const { label, items } = read(i);
    const xx = px(xs[i]);
    rule.setAttribute("x1", xx.toFixed(1));
    rule.setAttribute("x2", xx.toFixed(1));
    rule.setAttribute("visibility", "visible");
    sglClear(dots);
    for (const item of items) {
      if (!chartIsNum(item.y)) continue;
      dots.append(sglSvg("circle", { cx: xx.toFixed(1), cy: py(item.y).toFixed(1), r: 3.5, style: `fill: ${item.color}` }));
    }
    sglClear(tip).append(
      sglEl("div", { class: "sglw-chart-tip-label" }, label),
      ...items.map((item) => sglEl("div", { class: "sglw-chart-tip-row" }, [
        sglEl("span", { class: "sglw-chart-swatch", style: `--sglw-swatch: ${item.color}` }),
        sglEl("span", { class: "sglw-chart-tip-name" }, item.name),
        sglEl("span", { class: "sglw-chart-tip-value" }, item.text),
      ])),
    );
    tip.hidden = false;
    const tipWidth = tip.offsetWidth;
    const left = xx + 14 + tipWidth > frame.width ? Math.max(0, xx - 14 - tipWidth) : xx + 14;
    tip.style.left = `${left}px`;
    const svgTop = bounds.top - wrap.getBoundingClientRect().top;
    tip.style.top = `${svgTop + box.top + 14}px`; // below the marks' labels at the top
  };
  const track = (event) => { CHART_POINTERS.set(frame.container, { clientX: event.clientX }); show(event); };
  overlay.addEventListener("pointermove", track);
  overlay.addEventListener("pointerdown", track);
  overlay.addEventListener("pointerleave", () => { CHART_POINTERS.delete(frame.container); hide(); });
  const pointer = CHART_POINTERS.get(frame.container); // a live redraw under the pointer keeps its readout
  if (pointer) show(pointer);
}

/** The x axis of a time (or other ascending) series: the data's span, ticks inside it. */
function chartXScale(xs, width) {
  const lo = chartMin(xs);
  const hi = chartMax(xs);
  return chartScale(Number.isFinite(lo) ? lo : 0, Number.isFinite(hi) ? hi : 1, Math.max(2, width / 90), false);
}

/** An SVG path through (xs[i], ys[i]) that lifts the pen at nulls. */
function chartPath(xs, ys, px, py) {
  let d = "";
  let pen = false;
  for (let i = 0; i < xs.length; i += 1) {
    if (!chartIsNum(ys[i])) { pen = false; continue; }
    d += `${pen ? "L" : "M"}${px(xs[i]).toFixed(1)},${py(ys[i]).toFixed(1)}`;
    pen = true;
  }
  return d;
}

/** A line chart. spec: { title, note, x: [..], series: [{ name, values, color: "--sglw-c1", dash }],
 *  band: { lo: [..], hi: [..], color, name } | null, yFormat / xFormat: "num" | "int" | "seconds" | "pct",
 *  yLabel, xLabel (default the time axis; "" for none), yMin (default 0), yMax (default: data, rounded up),
 *  height, width (default the container's) }. Returns the chart's root element. */
function chartLine(container, spec) {
  const xs = spec.x || [];
  const series = (spec.series || []).map((s, i) => ({ ...s, css: chartColor(s.color, i), values: s.values || [] }));
  const band = spec.band ? { ...spec.band, css: chartColor(spec.band.color, 0) } : null;
  const width = chartWidth(container, spec);
  const data = series.map((s) => s.values).concat(band ? [band.lo, band.hi] : []);
  const dataMax = chartMax(...data);
  const dataMin = chartMin(...data);
  const lo = spec.yMin ?? Math.min(0, Number.isFinite(dataMin) ? dataMin : 0);
  const hi = spec.yMax ?? chartNiceMax(Number.isFinite(dataMax) ? dataMax : 1);
  const ycount = Math.max(3, ((spec.height ?? CHART_HEIGHT) - 50) / 26);
  const y = chartScale(lo, hi > lo ? hi : lo + 1, ycount, spec.yMax === undefined || spec.yMax === null);
  const x = chartXScale(xs, width);
  const legend = series.map((s) => ({ name: s.name, color: s.css, dash: s.dash }));
  const frame = chartFrame(container, { ...spec, width }, legend, x, y);
  const { marks, px, py } = frame;

  if (band) {
    for (const [a, b] of chartRuns(xs.length, (i) => chartIsNum(band.lo[i]) && chartIsNum(band.hi[i]))) {
      let d = "";
      for (let i = a; i <= b; i += 1) d += `${i === a ? "M" : "L"}${px(xs[i]).toFixed(1)},${py(band.hi[i]).toFixed(1)}`;
      for (let i = b; i >= a; i -= 1) d += `L${px(xs[i]).toFixed(1)},${py(band.lo[i]).toFixed(1)}`;
      marks.append(sglSvg("path", { class: "sglw-chart-band", d: `${d}Z`, style: `fill: ${band.css}` }));
    }
  }
  for (const s of series) {
    marks.append(sglSvg("path", { class: `sglw-chart-line${s.dash ? " sglw-chart-dash" : ""}`,
                                  d: chartPath(xs, s.values, px, py), style: `stroke: ${s.css}` }));
    for (let i = 0; i < xs.length; i += 1) { // a sample alone between gaps has no segment: draw it as a dot
      if (chartIsNum(s.values[i]) && !chartIsNum(s.values[i - 1]) && !chartIsNum(s.values[i + 1])) {
        marks.append(sglSvg("circle", { class: "sglw-chart-point", cx: px(xs[i]).toFixed(1),
                                        cy: py(s.values[i]).toFixed(1), r: 2, style: `fill: ${s.css}` }));
      }
    }
  }
  const yFmt = spec.yFormat ?? "num";
  const xFmt = spec.xFormat ?? "num";
  chartHover(frame, xs, (i) => ({
    label: chartXLabel(spec, xs[i], xFmt),
    items: series.map((s) => ({ name: s.name, color: s.css, text: chartFmtValue(s.values[i], yFmt), y: s.values[i] })),
  }));
  return frame.wrap;
}

/** The readout's first line: the sample's x ("t = 12.5 s" on the default time axis). */
function chartXLabel(spec, xv, xFmt) {
  if (spec.xLabel === undefined) return `t = ${sglFmtNum(xv)} s`;
  return `${spec.xLabel || "x"}: ${chartFmtValue(xv, xFmt)}`;
}

/** A stacked area chart (bottom layer first). spec: as chartLine, with layers: [{ name, values, color }]
 *  in place of series; yMax clips the stack (e.g. to the used part of a pool: the top layer fills the rest).
 *  A sample where every layer is null is a gap. Returns the chart's root element. */
function chartArea(container, spec) {
  const xs = spec.x || [];
  const layers = (spec.layers || []).map((l, i) => ({ ...l, css: chartColor(l.color, i), values: l.values || [] }));
  const width = chartWidth(container, spec);
  const tops = layers.map(() => new Array(xs.length).fill(0));
  const bottoms = layers.map(() => new Array(xs.length).fill(0));
  const present = (i) => layers.some((l) => chartIsNum(l.values[i]));
  let stackMax = 0;
  for (let i = 0; i < xs.length; i += 1) {
    let sum = 0;
    layers.forEach((l, k) => {
      bottoms[k][i] = sum;
      sum += chartIsNum(l.values[i]) ? Math.max(0, l.values[i]) : 0;
      tops[k][i] = sum;
    });
    stackMax = Math.max(stackMax, sum);
  }
  const hi = spec.yMax ?? chartNiceMax(stackMax || 1);
  const ycount = Math.max(3, ((spec.height ?? CHART_HEIGHT) - 50) / 26);
  const y = chartScale(0, hi > 0 ? hi : 1, ycount, spec.yMax === undefined || spec.yMax === null);
  const x = chartXScale(xs, width);
  const legend = layers.map((l) => ({ name: l.name, color: l.css, area: true }));
  const frame = chartFrame(container, { ...spec, width }, legend, x, y);
  const { marks, px, py } = frame;
  const runs = chartRuns(xs.length, present);
  layers.forEach((l, k) => {
    for (const [a, b] of runs) {
      let d = "";
      let edge = "";
      for (let i = a; i <= b; i += 1) {
        const step = `${px(xs[i]).toFixed(1)},${py(tops[k][i]).toFixed(1)}`;
        d += `${i === a ? "M" : "L"}${step}`;
        edge += `${i === a ? "M" : "L"}${step}`;
      }
      for (let i = b; i >= a; i -= 1) d += `L${px(xs[i]).toFixed(1)},${py(bottoms[k][i]).toFixed(1)}`;
      if (a === b) { // one sample alone: a thin bar so that it shows
        const xx = px(xs[a]);
        d = `M${(xx - 1.5).toFixed(1)},${py(tops[k][a]).toFixed(1)}H${(xx + 1.5).toFixed(1)}` +
            `V${py(bottoms[k][a]).toFixed(1)}H${(xx - 1.5).toFixed(1)}`;
      }
      marks.append(sglSvg("path", { class: "sglw-chart-area", d: `${d}Z`, style: `fill: ${l.css}` }));
      marks.append(sglSvg("path", { class: "sglw-chart-area-edge", d: edge, style: `stroke: ${l.css}` }));
    }
  });
  const yFmt = spec.yFormat ?? "num";
  chartHover(frame, xs, (i) => ({
    label: chartXLabel(spec, xs[i], spec.xFormat ?? "num"),
    items: layers.map((l, k) => ({ name: l.name, color: l.css, text: chartFmtValue(l.values[i], yFmt),
                                   y: present(i) ? tops[k][i] : null })).reverse(),
  }));
  return frame.wrap;
}

/** Bins of 1/2/5 x 10^k width (the one nearest span / bins) over values (nulls dropped); values above xMax
 *  fold into the last bin: { lo, step, counts, folded }. */
function chartBins(values, bins, xMin, xMax) {
  const finite = values.filter(chartIsNum);
  const min = finite.length ? Math.min(...finite) : 0;
  const dataMax = finite.length ? Math.max(...finite) : 1;
  const max = chartIsNum(xMax) ? Math.min(dataMax, xMax) : dataMax;
  const from = xMin ?? (min >= 0 ? 0 : min);
  const span = max - from > 0 ? max - from : Math.abs(max) || 1;
  const raw = span / Math.max(1, bins);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).reduce((a, b) => (Math.abs(Math.log(b / raw)) < Math.abs(Math.log(a / raw)) ? b : a));
  const lo = chartRound(Math.floor(from / step + 1e-9) * step);
  const n = Math.max(1, Math.floor((max - lo) / step + 1e-9) + 1);
  const counts = new Array(n).fill(0);
  for (const v of finite) counts[Math.min(n - 1, Math.max(0, Math.floor((v - lo) / step + 1e-9)))] += 1;
  return { lo, step, counts, folded: dataMax > max };
}

/** A histogram of raw values. spec: { title, note, values: [..], bins: about how many (default 20), xMin,
 *  xMax (values above it count in the last bin, shown as "≥ ..."; e.g. a p99 x 1.5 to keep a long tail from
 *  squashing the rest), xFormat, xLabel, yLabel (default "count"), color, marks: [{ x, name }] (dashed lines, e.g. percentiles),
 *  height, width }. Returns the chart's root element. */
function chartHistogram(container, spec) {
  const width = chartWidth(container, spec);
  const { lo, step, counts, folded } = chartBins(spec.values || [], spec.bins ?? 20, spec.xMin, spec.xMax);
  const hiEdge = chartRound(lo + step * counts.length);
  const x = chartScale(lo, hiEdge, Math.max(2, width / 90), false);
  const ycount = Math.max(3, ((spec.height ?? CHART_HEIGHT) - 50) / 26);
  const y = chartScale(0, chartNiceMax(Math.max(1, ...counts), ycount), ycount, true);
  const css = chartColor(spec.color, 0);
  const xFmt = spec.xFormat ?? "num";
  const frame = chartFrame(container, { ...spec, width, yFormat: "int", yLabel: spec.yLabel ?? "count",
                                        xLabel: spec.xLabel ?? "value" }, [], x, y);
  const { marks, px, py, box } = frame;
  const bars = counts.map((count, i) => {
    const x0 = px(lo + i * step);
    const x1 = px(lo + (i + 1) * step);
    const bar = sglSvg("rect", { class: "sglw-chart-bar", x: (x0 + 0.5).toFixed(1), y: py(count).toFixed(1),
                                 width: Math.max(1, x1 - x0 - 1).toFixed(1),
                                 height: Math.max(0, box.top + box.h - py(count)).toFixed(1), style: `fill: ${css}` });
    marks.append(bar);
    return bar;
  });
  for (const mark of spec.marks || []) {
    if (!chartIsNum(mark.x)) continue;
    const xx = px(Math.min(Math.max(mark.x, lo), hiEdge)).toFixed(1);
    marks.append(sglSvg("line", { class: "sglw-chart-mark", x1: xx, x2: xx, y1: box.top + 10, y2: box.top + box.h }));
    marks.append(sglSvg("text", { class: "sglw-chart-mark-label", x: xx, y: box.top + 7, "text-anchor": "middle" },
                        mark.name));
  }
  const centers = counts.map((_, i) => lo + (i + 0.5) * step);
  frame.xAt = (f) => lo + f * (hiEdge - lo);
  frame.onHide = () => bars.forEach((bar) => bar.classList.remove("sglw-chart-bar-hover"));
  chartHover(frame, centers, (i) => {
    bars.forEach((bar, k) => bar.classList.toggle("sglw-chart-bar-hover", k === i));
    return {
      label: folded && i === counts.length - 1 ? `≥ ${chartFmtValue(chartRound(lo + i * step), xFmt)}`
        : `${chartFmtValue(chartRound(lo + i * step), xFmt)} – ${chartFmtValue(chartRound(lo + (i + 1) * step), xFmt)}`,
      items: [{ name: spec.yLabel ?? "count", color: css, text: sglFmtInt(counts[i]), y: null }],
    };
  });
  return frame.wrap;
}
