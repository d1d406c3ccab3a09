// The Serving panel: the `series` trait (one sample per ~0.5 s window, time since the first request) as a
// row of headline totals over a grid of time charts, 1 to 3 columns by the panel's width: throughput, TTFT
// and TPOT percentiles, queue, hit rate per window, and the KV pool split with its y axis scaled to the use.

const STATS_SECONDS = { yFormat: "seconds" };

/** The line charts: title, y-axis title, series [label, series key, colour], extra chart options. */
const STATS_LINES = [
  { key: "throughput", title: "Throughput", yLabel: "tokens/s",
    series: [["prefill", "prefill_tps", "--sglw-c1"], ["decode", "decode_tps", "--sglw-c2"]] },
  { key: "ttft", title: "Time to first token", yLabel: "TTFT", band: ["ttft_p50", "ttft_p99"], ...STATS_SECONDS,
    series: [["p50", "ttft_p50", "--sglw-c1"], ["p90", "ttft_p90", "--sglw-c2"], ["p99", "ttft_p99", "--sglw-c4", true]] },
  { key: "tpot", title: "Time per output token", yLabel: "TPOT", band: ["tpot_p50", "tpot_p99"], ...STATS_SECONDS,
    series: [["p50", "tpot_p50", "--sglw-c1"], ["p90", "tpot_p90", "--sglw-c2"], ["p99", "tpot_p99", "--sglw-c4", true]] },
  { key: "queue", title: "Requests", yLabel: "requests",
    series: [["running", "running", "--sglw-running"], ["waiting", "waiting", "--sglw-waiting"]] },
  { key: "hit", title: "Cache hit rate per window", yLabel: "hit rate", yFormat: "pct", yMax: 1,
    series: [["hit rate", "hit_rate", "--sglw-c3"]] },
];

/** The KV pool split, bottom layer first: [label, series key, colour]. */
const STATS_KV = [
  ["running", "kv_running", "--sglw-running"],
  ["cached, locked", "kv_locked", "--sglw-locked"],
  ["cached, evictable", "kv_evictable", "--sglw-evictable"],
  ["free", "kv_free", "--sglw-free"],
];

/** Columns for a panel `width` px wide: 1 below 640 px, 2 below 1,080 px, else 3. */
function statsColumns(width) {
  return width >= 1080 ? 3 : width >= 640 ? 2 : 1;
}

/** The headline tiles from `series.totals`: [label, value text]. */
function statsTotals(totals) {
  if (!totals) return [];
  const prompt = totals.prompt_tokens;
  const cached = totals.cached_tokens;
  return [
    ["requests", sglFmtInt(totals.requests)],
    ["prompt tokens", sglFmtInt(prompt)],
    ["cached tokens", sglFmtInt(cached)],
    ["completion tokens", sglFmtInt(totals.completion_tokens)],
    ["hit rate", sglFmtPct(totals.hit_rate)],
  ];
}

/** The top of the KV chart's y axis: 1.2 x the most slots ever used, rounded up to a nice value, at most
 *  the pool (so a lightly used pool is not a sliver at the bottom). */
function statsKvTop(series) {
  const n = (series.t || []).length;
  let used = 0;
  for (let i = 0; i < n; i += 1) {
    const sum = STATS_KV.slice(0, 3).reduce((acc, [, key]) => acc + (Number(series[key]?.[i]) || 0), 0);
    used = Math.max(used, sum);
  }
  const pool = series.pool_slots;
  const top = chartNiceMax(Math.max(used * 1.2, 1));
  return { used, top: pool > 0 ? Math.min(pool, top) : top, pool };
}

/** Draw every chart of `series` into its cell, each at the cell's width. */
function statsDrawCharts(cells, series) {
  const x = series.t || [];
  for (const spec of STATS_LINES) {
    const band = spec.band ? { lo: series[spec.band[0]] || [], hi: series[spec.band[1]] || [], color: "--sglw-c1" } : null;
    chartLine(cells[spec.key], {
      title: spec.title, yLabel: spec.yLabel, yFormat: spec.yFormat, yMax: spec.yMax, x, band,
      series: spec.series.map(([name, key, color, dash]) => ({ name, values: series[key] || [], color, dash })),
    });
  }
  const kv = statsKvTop(series);
  const whole = kv.pool > 0 && kv.top >= kv.pool;
  chartArea(cells.kv, {
    title: kv.pool > 0 ? `KV pool: ${sglFmtInt(kv.pool)} slots` : "KV pool",
    note: whole || !(kv.pool > 0) ? "" : `axis up to ${sglFmtInt(kv.top)} (peak use ${sglFmtInt(kv.used)})`,
    yLabel: "KV slots", yFormat: "int", yMax: kv.top, x,
    layers: STATS_KV.map(([name, key, color]) => ({ name, values: series[key] || [], color })),
  });
}

/** Mount the Serving panel in `container`; it redraws on `series` changes and on resize. */
function statsMount(container, model) {
  const totals = sglEl("div", { class: "sglw-stats-totals" });
  const empty = sglEl("div", { class: "sglw-empty", hidden: true },
                      "No requests yet: the charts start at the first request.");
  const keys = STATS_LINES.map((s) => s.key).concat(["kv"]);
  const cells = Object.fromEntries(keys.map((key) => [key, sglEl("div", { class: "sglw-stats-cell", "data-chart": key })]));
  const grid = sglEl("div", { class: "sglw-stats-grid" }, keys.map((key) => cells[key]));
  const root = sglEl("div", { class: "sglw-stats" }, [totals, empty, grid]);
  container.append(root);
  let width = 0;

  const draw = () => {
    const series = model.get("series") || {};
    sglClear(totals).append(...statsTotals(series.totals).map(([label, value]) => sglEl(
      "div", { class: "sglw-stats-total" },
      [sglEl("span", { class: "sglw-stats-total-value" }, value), sglEl("span", { class: "sglw-stats-total-label" }, label)],
    )));
    const hasData = (series.t || []).length > 0;
    empty.hidden = hasData;
    grid.hidden = !hasData;
    width = root.clientWidth;
    if (!hasData || width <= 0) return; // hidden (a background tab): drawn when it gets a size
    const columns = statsColumns(width);
    grid.style.gridTemplateColumns = `repeat(${columns}, minmax(0, 1fr))`;
    grid.dataset.columns = String(columns);
    statsDrawCharts(cells, series);
  };
  const stopResize = sglOnResize(root, (w) => { if (w > 0 && Math.abs(w - width) >= 1) draw(); });
  const unwatch = sglWatch(model, ["series"], draw);
  draw();
  return { destroy() { stopResize(); unwatch(); root.remove(); } };
}
