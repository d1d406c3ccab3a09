// Latency tab, drawn from the `calls` trait: a summary (percentiles, tokens), an e2e histogram, and a table of
// calls named by program function and call that fits its panel, sorts, filters and groups by program. Only the
// visible rows are in the DOM (virtual scrolling), so 2,000 calls stay fast; UI state survives every update.

const LATENCY_ROW_H = 26; // px of every body row; latency.css gives rows the same height
const LATENCY_OVERSCAN = 10; // rows drawn above and below the visible window
const LATENCY_RAW = "(request)"; // the program name shown for raw requests (program null)

/** Nearest-rank percentile of numbers (q in [0, 100]), as sglbench.viz.latency.percentile; null for none. */
function latencyPercentile(values, q) {
  const xs = values.filter((v) => typeof v === "number" && Number.isFinite(v)).sort((a, b) => a - b);
  if (!xs.length) return null;
  return xs[Math.min(xs.length - 1, Math.max(0, Math.ceil((q / 100) * xs.length) - 1))];
}

/** A 1-2-5 step near span/target (for ticks and bins). */
function latencyNiceStep(span, target) {
  const raw = span / Math.max(target, 1);
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

// Columns: key, header, tooltip, numeric?, sort value, cell text, width weight, minimum px, and `drop`: at
// narrow widths the column with the highest drop is hidden first (0: always shown).
const LATENCY_COLUMNS = [
  { key: "program", head: "program", tip: "program function", num: false, weight: 30, min: 110, drop: 0,
    value: (c) => c.program ?? null, text: (c) => c.program ?? LATENCY_RAW },
  { key: "call", head: "call", tip: "the program's call (gen/select and its variable)", num: false, weight: 34,
    min: 120, drop: 0, value: (c) => c.call ?? null, text: (c) => c.call ?? "–" },
  { key: "branch", head: "branch", tip: "fork branch, as the trace numbers it (– : the main state)", num: true,
    weight: 2, min: 52, drop: 7, value: (c) => c.branch ?? null, text: (c) => c.branch ?? "–" },
  { key: "prompt", head: "prompt", tip: "prompt tokens", num: true, weight: 3, min: 62, drop: 3,
    value: (c) => c.prompt_tokens ?? null, text: (c) => sglFmtInt(c.prompt_tokens) },
  { key: "cached", head: "cached", tip: "prompt tokens served from the radix cache", num: true, weight: 3,
    min: 62, drop: 6, value: (c) => c.cached_tokens ?? null, text: (c) => sglFmtInt(c.cached_tokens) },
  { key: "out", head: "out", tip: "completion tokens", num: true, weight: 2, min: 48, drop: 2,
    value: (c) => c.completion_tokens ?? null, text: (c) => sglFmtInt(c.completion_tokens) },
  { key: "queue", head: "queue", tip: "waiting before the first schedule", num: true, weight: 4, min: 66,
    drop: 8, value: (c) => c.queue_s ?? null, text: (c) => sglFmtSeconds(c.queue_s) },
  { key: "ttft", head: "ttft", tip: "time to first token", num: true, weight: 4, min: 66, drop: 1,
    value: (c) => c.ttft_s ?? null, text: (c) => sglFmtSeconds(c.ttft_s) },
  { key: "tpot", head: "tpot", tip: "time per output token", num: true, weight: 4, min: 66, drop: 5,
    value: (c) => c.tpot_s ?? null, text: (c) => sglFmtSeconds(c.tpot_s) },
  { key: "e2e", head: "e2e", tip: "end-to-end latency", num: true, weight: 4, min: 66, drop: 0,
    value: (c) => c.e2e_s ?? null, text: (c) => sglFmtSeconds(c.e2e_s) },
  { key: "tps", head: "tok/s", tip: "decode rate, tokens per second", num: true, weight: 3, min: 56, drop: 4,
    value: (c) => c.tokens_per_s ?? null, text: (c) => sglFmtNum(c.tokens_per_s) },
];

/** The columns that fit `width` px: lowest-priority ones dropped until the minimum widths fit. */
function latencyVisibleColumns(width) {
  const shown = [...LATENCY_COLUMNS];
  const need = () => shown.reduce((sum, col) => sum + col.min, 0);
  while (need() > width) {
    const victim = shown.reduce((best, col) => (col.drop > (best?.drop ?? 0) ? col : best), null);
    if (!victim) break;
    shown.splice(shown.indexOf(victim), 1);
  }
  return shown;
}

/** Order rows {c, i} by a column (missing values last in both directions), ties newest first. */
function latencySortRows(rows, sort) {
  const col = sort && LATENCY_COLUMNS.find((k) => k.key === sort.key);
  if (!col) return rows.sort((a, b) => b.i - a.i); // default: newest first
  return rows.sort((a, b) => {
    const x = col.value(a.c), y = col.value(b.c);
    const xm = x === null || x === undefined, ym = y === null || y === undefined;
    if (xm || ym) return xm && ym ? b.i - a.i : xm ? 1 : -1;
    const d = col.num ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
    return d ? d * sort.dir : b.i - a.i;
  });
}

/** Summary: call count, tokens, and p50/p90/p99 of ttft, tpot and e2e. */
function latencySummary(calls) {
  const sum = (key) => calls.reduce((s, c) => s + (c[key] || 0), 0);
  const prompt = sum("prompt_tokens"), cached = sum("cached_tokens"), out = sum("completion_tokens");
  const line = sglEl("div", { class: "sglw-latency-counts" }, [
    sglEl("strong", {}, sglFmtInt(calls.length)), ` call${calls.length === 1 ? "" : "s"} · `,
    sglEl("strong", {}, sglFmtInt(prompt + out)), " tokens: ",
    `${sglFmtInt(prompt)} prompt (${sglFmtPct(prompt ? cached / prompt : null)} cached), ${sglFmtInt(out)} out`,
  ]);
  const qs = [50, 90, 99];
  const metrics = [["ttft", "ttft_s", "time to first token"], ["tpot", "tpot_s", "time per output token"],
    ["e2e", "e2e_s", "end-to-end latency"]];
  const table = sglEl("table", { class: "sglw-latency-pct" }, [
    sglEl("thead", {}, sglEl("tr", {}, [sglEl("th", {}, ""), ...qs.map((q) => sglEl("th", {}, `p${q}`))])),
    sglEl("tbody", {}, metrics.map(([name, key, tip]) => {
      const values = calls.map((c) => c[key]);
      return sglEl("tr", {}, [sglEl("th", { title: tip, scope: "row" }, name),
        ...qs.map((q) => sglEl("td", {}, sglFmtSeconds(latencyPercentile(values, q))))]);
    })),
  ]);
  return [line, table];
}

/** SVG histogram of e2e latency, `width` px wide: nice bins from zero, ticks, axis titles, p50/p99 marks. */
function latencyHistogram(seconds, width) {
  const values = seconds.filter((v) => typeof v === "number" && Number.isFinite(v) && v >= 0);
  if (!values.length) return sglEl("p", { class: "sglw-latency-empty" }, "No latencies yet.");
  const max = Math.max(...values);
  const [scale, unit] = max < 1 ? [1e3, "ms"] : [1, "s"];
  const W = Math.max(width, 200), H = 180, L = 50, R = 14, T = 16, B = 40;
  const pw = W - L - R, ph = H - T - B;
  const top = max * scale || 1;
  const binW = latencyNiceStep(top, Math.min(40, Math.max(8, Math.floor(pw / 16))));
  const nBins = Math.max(1, Math.floor(top / binW) + 1);
  const counts = new Array(nBins).fill(0);
  for (const v of values) counts[Math.min(nBins - 1, Math.floor((v * scale) / binW))] += 1;
  const xMax = nBins * binW, yMax = Math.max(...counts);
  const yStep = Math.max(1, latencyNiceStep(yMax, 4));
  const yTop = Math.ceil(yMax / yStep) * yStep;
  const x = (v) => L + (v / xMax) * pw, y = (n) => T + ph - (n / yTop) * ph;
  const round = (v) => Number(v.toPrecision(12));
  const parts = [];
  for (let n = 0; n <= yTop + 1e-9; n += yStep) {
    parts.push(sglSvg("line", { class: "sglw-latency-grid", x1: L, x2: L + pw, y1: y(n), y2: y(n) }),
      sglSvg("text", { class: "sglw-latency-tick", x: L - 6, y: y(n) + 4, "text-anchor": "end" }, sglFmtInt(n)));
  }
  const xStep = latencyNiceStep(xMax, Math.max(2, Math.floor(pw / 70)));
  for (let v = 0; v <= xMax + 1e-9 * xMax; v += xStep) {
    parts.push(sglSvg("line", { class: "sglw-latency-axis", x1: x(v), x2: x(v), y1: T + ph, y2: T + ph + 4 }),
      sglSvg("text", { class: "sglw-latency-tick", x: x(v), y: T + ph + 16, "text-anchor": "middle" },
        sglFmtNum(round(v))));
  }
  counts.forEach((n, k) => {
    if (!n) return;
    const a = round(k * binW), b = round((k + 1) * binW);
    parts.push(sglSvg("rect", { class: "sglw-latency-bar", x: x(a) + 0.5, width: Math.max(1, x(b) - x(a) - 1),
      y: y(n), height: T + ph - y(n) }, sglSvg("title", {},
      `${sglFmtNum(a)}–${sglFmtNum(b)} ${unit}: ${sglFmtInt(n)} call${n === 1 ? "" : "s"}`)));
  });
  parts.push(sglSvg("line", { class: "sglw-latency-axis", x1: L, x2: L + pw, y1: T + ph, y2: T + ph }));
  let lastMark = -Infinity;
  for (const q of [50, 99]) {
    const v = latencyPercentile(values, q) * scale, px = x(v);
    parts.push(sglSvg("line", { class: "sglw-latency-mark", x1: px, x2: px, y1: T, y2: T + ph }));
    if (px - lastMark > 40) {
      parts.push(sglSvg("text", { class: "sglw-latency-marktext", x: Math.min(px + 3, L + pw - 2), y: T - 4,
        "text-anchor": px + 40 > L + pw ? "end" : "start" }, `p${q} ${sglFmtSeconds(v / scale)}`));
      lastMark = px;
    }
  }
  parts.push(sglSvg("text", { class: "sglw-latency-title", x: L + pw / 2, y: H - 6, "text-anchor": "middle" },
    `end-to-end latency (${unit})`));
  parts.push(sglSvg("text", { class: "sglw-latency-title", "text-anchor": "middle",
    transform: `translate(13 ${T + ph / 2}) rotate(-90)` }, "calls"));
  return sglSvg("svg", { class: "sglw-latency-hist", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `histogram of end-to-end latency over ${values.length} calls` }, parts);
}

/** Mount the latency view in `container`; it redraws on `calls` changes and keeps sort, filter and grouping. */
function latencyMount(container, model) {
  const ui = { sort: null, filter: "", group: false, open: new Set(), width: 0, items: [], columns: [] };
  const summary = sglEl("div", { class: "sglw-latency-summary" });
  const hist = sglEl("div", { class: "sglw-latency-histbox" });
  const filter = sglEl("input", { class: "sglw-latency-filter", type: "search", placeholder: "filter program, call, rid",
    "aria-label": "filter calls by program, call or rid",
    oninput: () => { ui.filter = filter.value; scroller.scrollTop = 0; drawTable(); } });
  const group = sglEl("button", { class: "sglw-latency-group", type: "button", "aria-pressed": "false",
    title: "group calls under their program", onclick: () => {
      ui.group = !ui.group; group.setAttribute("aria-pressed", String(ui.group)); scroller.scrollTop = 0; drawTable();
    } }, "group by program");
  const count = sglEl("span", { class: "sglw-latency-count" });
  const colgroup = sglEl("colgroup"), thead = sglEl("thead"), tbody = sglEl("tbody");
  const table = sglEl("table", { class: "sglw-latency-table" }, [colgroup, thead, tbody]);
  const scroller = sglEl("div", { class: "sglw-latency-scroll" }, table);
  const root = sglEl("div", { class: "sglw-latency" }, [
    sglEl("div", { class: "sglw-latency-top" }, [summary, hist]),
    sglEl("div", { class: "sglw-latency-controls" }, [filter, group, count]),
    scroller,
  ]);
  container.append(root);

  let frame = 0;
  const onScroll = () => { cancelAnimationFrame(frame); frame = requestAnimationFrame(drawRows); };
  scroller.addEventListener("scroll", onScroll);

  function calls() { return model.get("calls") || []; }

  function drawTop() {
    const list = calls();
    const width = hist.clientWidth || 360; // measured before anything changes (replacing never empties the page)
    summary.replaceChildren(...latencySummary(list));
    const e2e = list.map((c) => c.e2e_s).filter((v) => typeof v === "number" && Number.isFinite(v));
    if (typeof chartHistogram === "function" && e2e.length) { // the shared chart look of charts.js, when bundled
      const p50 = latencyPercentile(e2e, 50), p99 = latencyPercentile(e2e, 99), max = Math.max(...e2e);
      chartHistogram(hist, { title: "End-to-end latency per call", values: e2e, bins: 24, xMin: 0, width,
        xFormat: "seconds", xLabel: "end-to-end latency", yLabel: "calls",
        marks: [{ x: p50, name: `p50 ${sglFmtSeconds(p50)}` },
          { x: p99, name: (p99 - p50) / (max || 1) > 0.2 ? `p99 ${sglFmtSeconds(p99)}` : "" }] });
    } else {
      hist.replaceChildren(latencyHistogram(e2e, width));
    }
  }

  /** Each column gets its minimum width plus a share of the slack by weight, so no time is cut at any width. */
  function drawHead(width) {
    const weight = ui.columns.reduce((s, col) => s + col.weight, 0);
    const need = ui.columns.reduce((s, col) => s + col.min, 0);
    const slack = Math.max(0, width - need), shrink = Math.min(1, width / need); // shrink: a very narrow panel
    colgroup.replaceChildren(...ui.columns.map((col) =>
      sglEl("col", { style: `width:${Math.floor(col.min * shrink + (slack * col.weight) / weight)}px` })));
    thead.replaceChildren(sglEl("tr", {}, ui.columns.map((col) => {
      const active = ui.sort?.key === col.key;
      const order = active ? (ui.sort.dir > 0 ? "ascending" : "descending") : "none";
      const toggle = () => {
        ui.sort = active && ui.sort.dir > 0 ? { key: col.key, dir: -1 } : { key: col.key, dir: 1 };
        scroller.scrollTop = 0;
        drawTable();
      };
      return sglEl("th", { "data-col": col.key, class: col.num ? "sglw-latency-num" : null, tabindex: 0,
        "aria-sort": order, title: `${col.tip} (click to sort)`, onclick: toggle,
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } } },
      [col.head, active ? (ui.sort.dir > 0 ? " ▲" : " ▼") : ""]);
    })));
  }

  /** Filter, sort and (when grouping) interleave group headers: the flat list the virtual scroller pages. */
  function buildItems() {
    const list = calls();
    const query = ui.filter.trim().toLowerCase();
    let rows = list.map((c, i) => ({ c, i }));
    if (query) {
      rows = rows.filter(({ c }) =>
        `${c.program ?? LATENCY_RAW}\u0000${c.call ?? ""}\u0000${c.rid ?? ""}`.toLowerCase().includes(query));
    }
    latencySortRows(rows, ui.sort);
    count.textContent = query ? `${sglFmtInt(rows.length)} of ${sglFmtInt(list.length)} calls`
      : `${sglFmtInt(list.length)} calls`;
    if (!ui.group) return rows.map((r) => ({ row: r }));
    const groups = new Map();
    for (const r of rows) {
      const name = r.c.program ?? LATENCY_RAW;
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name).push(r);
    }
    const names = [...groups.keys()].sort((a, b) =>
      (a === LATENCY_RAW) - (b === LATENCY_RAW) || a.localeCompare(b, undefined, { numeric: true }));
    const items = [];
    for (const name of names) {
      const members = groups.get(name);
      const open = ui.open.has(name);
      items.push({ group: name, size: members.length, open, p50: latencyPercentile(members.map((r) => r.c.e2e_s), 50) });
      if (open) items.push(...members.map((r) => ({ row: r })));
    }
    return items;
  }

  function rowElement(item) {
    const n = ui.columns.length;
    if (item.group !== undefined) {
      const flip = () => {
        if (ui.open.has(item.group)) ui.open.delete(item.group); else ui.open.add(item.group);
        drawTable();
      };
      return sglEl("tr", { class: "sglw-latency-grouphead", "data-program": item.group }, sglEl("td", { colspan: n },
        sglEl("button", { type: "button", class: "sglw-latency-groupbtn", "aria-expanded": String(item.open),
          onclick: flip }, [
          sglEl("span", { class: "sglw-latency-caret", "aria-hidden": "true" }, item.open ? "▾" : "▸"),
          sglEl("strong", {}, item.group),
          sglEl("span", { class: "sglw-latency-muted" },
            ` · ${sglFmtInt(item.size)} call${item.size === 1 ? "" : "s"} · p50 e2e ${sglFmtSeconds(item.p50)}`),
        ])));
    }
    const c = item.row.c;
    const branchHidden = !ui.columns.some((col) => col.key === "branch");
    const tip = [`${c.program ?? LATENCY_RAW} · ${c.call ?? "–"}${c.branch === null || c.branch === undefined ? ""
      : ` · branch ${c.branch}`}`, c.run ? `run ${c.run}` : null, `rid ${c.rid}`,
    c.finish_reason ? `finish: ${c.finish_reason}` : null].filter(Boolean).join("\n");
    return sglEl("tr", { class: "sglw-latency-row", "data-rid": c.rid, title: tip }, ui.columns.map((col) => {
      let text = String(col.text(c));
      if (col.key === "call" && branchHidden && c.branch !== null && c.branch !== undefined) text += ` · b${c.branch}`;
      return sglEl("td", { class: col.num ? "sglw-latency-num" : null }, text);
    }));
  }

  function spacer(px) {
    return sglEl("tr", { class: "sglw-latency-spacer", "aria-hidden": "true" },
      sglEl("td", { colspan: ui.columns.length, style: `height:${px}px` }));
  }

  /** Only the rows in (and near) the visible window, with spacers standing in for the rest. */
  function drawRows() {
    const items = ui.items;
    if (!items.length) {
      tbody.replaceChildren(sglEl("tr", {}, sglEl("td", { colspan: ui.columns.length, class: "sglw-latency-empty" },
        calls().length ? "No call matches the filter." : "No finished calls yet.")));
      return;
    }
    // Measure first: the scroller may still be growing, so the viewport bounds how many rows can show.
    const view = Math.max(scroller.clientHeight, window.innerHeight || 0);
    const first = Math.max(0, Math.floor((scroller.scrollTop - thead.offsetHeight) / LATENCY_ROW_H) - LATENCY_OVERSCAN);
    const last = Math.min(items.length, first + Math.ceil(view / LATENCY_ROW_H) + 2 * LATENCY_OVERSCAN);
    const rows = [];
    if (first > 0) rows.push(spacer(first * LATENCY_ROW_H));
    for (let k = first; k < last; k++) rows.push(rowElement(items[k]));
    if (last < items.length) rows.push(spacer((items.length - last) * LATENCY_ROW_H));
    tbody.replaceChildren(...rows); // one swap: the scroll height never collapses, so scrollTop is kept
  }

  function drawTable() {
    const width = (scroller.clientWidth || container.clientWidth || 800) - 1;
    ui.columns = latencyVisibleColumns(width);
    drawHead(width);
    ui.items = buildItems();
    drawRows();
  }

  function draw() { drawTop(); drawTable(); }

  const stopResize = sglOnResize(root, (width) => {
    if (Math.abs(width - ui.width) < 1) return;
    ui.width = width;
    draw();
  });
  const unwatch = sglWatch(model, ["calls"], draw);
  draw();
  return {
    destroy() {
      unwatch();
      stopResize();
      cancelAnimationFrame(frame);
      scroller.removeEventListener("scroll", onScroll);
      root.remove();
    },
  };
}
