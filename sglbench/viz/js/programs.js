// Programs tab, drawn from the `graphs` trait: a responsive grid of cards (newest first), one per program run,
// titled by the call with its inputs, each with its fork/join graph laid out in layers top to bottom and fork
// branches left to right in the trace's branch order. Cards are keyed by graph id: expanded and open-inputs
// state, and a card's scroll position, survive every update.

const PROGRAMS_NODE_H = 40; // px height of a step box
const PROGRAMS_GAP_X = 14; // px between boxes of one layer
const PROGRAMS_GAP_Y = 30; // px between layers
const PROGRAMS_PAD = 10; // px around the drawing
const PROGRAMS_STATES = ["waiting", "running", "done"];

/** Layers of a graph's nodes (longest path from the sources) and an x centre per node in slot units.
 *  Within a layer nodes follow their parents' mean position, then branch index, then node order, so the
 *  children of a fork stand left to right as branch 0, 1, 2; each node then sits under its parents. */
function programsLayout(graph) {
  const nodes = graph.nodes || [];
  const index = new Map(nodes.map((n, i) => [n.id, i]));
  const parents = new Map(nodes.map((n) => [n.id, []]));
  const children = new Map(nodes.map((n) => [n.id, []]));
  for (const [src, dst] of graph.edges || []) {
    if (!index.has(src) || !index.has(dst) || src === dst) continue;
    parents.get(dst).push(src);
    children.get(src).push(dst);
  }
  // Kahn's order, ties in node order; nodes left over (a cycle) are appended in node order.
  const indegree = new Map(nodes.map((n) => [n.id, parents.get(n.id).length]));
  const ready = nodes.filter((n) => indegree.get(n.id) === 0).map((n) => n.id);
  const order = [];
  while (ready.length) {
    const id = ready.shift();
    order.push(id);
    for (const dst of children.get(id)) {
      indegree.set(dst, indegree.get(dst) - 1);
      if (indegree.get(dst) === 0) ready.push(dst);
    }
  }
  const placed = new Set(order);
  for (const n of nodes) if (!placed.has(n.id)) order.push(n.id);
  const depth = new Map();
  for (const id of order) {
    const known = parents.get(id).filter((p) => depth.has(p));
    depth.set(id, known.length ? 1 + Math.max(...known.map((p) => depth.get(p))) : 0);
  }
  const layers = [];
  for (const id of order) (layers[depth.get(id)] ||= []).push(id);
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const x = new Map();
  for (const layer of layers) {
    const ideal = new Map(layer.map((id, i) => {
      const ps = parents.get(id).filter((p) => x.has(p));
      return [id, ps.length ? ps.reduce((s, p) => s + x.get(p), 0) / ps.length : i];
    }));
    const branch = (id) => byId.get(id).branch ?? -1;
    layer.sort((a, b) => ideal.get(a) - ideal.get(b) || branch(a) - branch(b) || index.get(a) - index.get(b));
    // Place at the ideal position, at least one slot apart, then shift the layer so it centres on its ideals.
    let prev = -Infinity;
    const pos = layer.map((id) => (prev = Math.max(ideal.get(id), prev + 1)));
    const shift = layer.reduce((s, id, i) => s + ideal.get(id) - pos[i], 0) / layer.length;
    layer.forEach((id, i) => x.set(id, pos[i] + shift));
  }
  const xs = [...x.values()];
  const minX = xs.length ? Math.min(...xs) : 0;
  for (const [id, v] of x) x.set(id, v - minX);
  const slots = xs.length ? Math.max(...xs) - minX + 1 : 1;
  return { layers, x, slots, parents };
}

/** The label a node shows: a fork branch's own state node is "branch N" exactly as the trace numbers it. */
function programsNodeLabel(node) {
  if (node.kind === "state" && node.branch !== null && node.branch !== undefined) return `branch ${node.branch}`;
  return String(node.label ?? node.id);
}

/** The second line of a node: branch, kind, latency and tokens, whichever are known. */
function programsNodeDetail(node) {
  const bits = [];
  if (node.branch !== null && node.branch !== undefined && node.kind !== "state") bits.push(`b${node.branch}`);
  bits.push(node.kind || "step");
  if (node.latency_s !== null && node.latency_s !== undefined) bits.push(sglFmtSeconds(node.latency_s));
  if (node.tokens !== null && node.tokens !== undefined) bits.push(`${sglFmtInt(node.tokens)} tok`);
  return bits.join(" · ");
}

/** SVG of a program graph sized for `width` px: boxes as wide as fit (clipped labels, full text in tooltips). */
function programsGraphSvg(graph, width) {
  const nodes = graph.nodes || [];
  if (!nodes.length) return sglEl("p", { class: "sglw-programs-empty" }, "No steps traced yet.");
  const { layers, x, slots } = programsLayout(graph);
  const avail = Math.max(width - 2 * PROGRAMS_PAD, 100);
  const boxW = Math.max(96, Math.min(240, Math.floor((avail + PROGRAMS_GAP_X) / slots - PROGRAMS_GAP_X)));
  const pitch = boxW + PROGRAMS_GAP_X;
  const drawingW = slots * pitch - PROGRAMS_GAP_X;
  const W = Math.max(drawingW + 2 * PROGRAMS_PAD, width);
  const H = 2 * PROGRAMS_PAD + layers.length * (PROGRAMS_NODE_H + PROGRAMS_GAP_Y) - PROGRAMS_GAP_Y;
  const left = (W - drawingW) / 2;
  const at = new Map();
  layers.forEach((layer, d) => layer.forEach((id) =>
    at.set(id, [left + x.get(id) * pitch, PROGRAMS_PAD + d * (PROGRAMS_NODE_H + PROGRAMS_GAP_Y)])));
  const depth = new Map();
  layers.forEach((layer, d) => layer.forEach((id) => depth.set(id, d)));
  const edges = [];
  for (const [src, dst] of graph.edges || []) {
    if (!at.has(src) || !at.has(dst) || src === dst) continue;
    const [sx, sy] = at.get(src), [dx, dy] = at.get(dst);
    const x1 = sx + boxW / 2, y1 = sy + PROGRAMS_NODE_H, x2 = dx + boxW / 2, y2 = dy - 5;
    let d = `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}`;
    if (depth.get(dst) - depth.get(src) > 1) { // a long edge runs down a free gap, never behind other boxes
      const blocked = (rx) => layers.slice(depth.get(src) + 1, depth.get(dst)).some((layer) =>
        layer.some((id) => rx > at.get(id)[0] - 4 && rx < at.get(id)[0] + boxW + 4));
      const lane = [0, 1, -1, 2, -2, 3, -3].map((k) => x1 + (k * pitch) / 2).find((rx) => !blocked(rx)) ?? x1;
      const a = y1 + 0.8 * PROGRAMS_GAP_Y, b = dy - 0.8 * PROGRAMS_GAP_Y, m = (y1 + a) / 2, n = (b + y2) / 2;
      d = `M${x1},${y1} C${x1},${m} ${lane},${m} ${lane},${a} L${lane},${b} C${lane},${n} ${x2},${n} ${x2},${y2}`;
    }
    edges.push(sglSvg("path", { class: "sglw-program-edge", d }),
      sglSvg("path", { class: "sglw-program-arrow", d: `M${x2 - 4},${y2} L${x2 + 4},${y2} L${x2},${y2 + 5} Z` }));
  }
  const chars = Math.max(6, Math.floor((boxW - 14) / 6.4));
  const boxes = nodes.filter((n) => at.has(n.id)).map((n) => {
    const [bx, by] = at.get(n.id);
    const state = PROGRAMS_STATES.includes(n.state) ? n.state : "waiting";
    const label = programsNodeLabel(n);
    const tip = [label, n.label && n.label !== label ? n.label : null,
      `${n.kind || "step"} · ${state}${n.branch === null || n.branch === undefined ? "" : ` · branch ${n.branch}`}`,
      n.latency_s === null || n.latency_s === undefined ? null : `latency ${sglFmtSeconds(n.latency_s)}`,
      n.tokens === null || n.tokens === undefined ? null : `${sglFmtInt(n.tokens)} tokens`, `id ${n.id}`]
      .filter(Boolean).join("\n");
    const round = n.kind === "join" || n.kind === "fork" || n.kind === "state" ? 14 : 4;
    return sglSvg("g", { class: `sglw-program-node sglw-program-node--${state}`, "data-node-id": n.id,
      "data-branch": n.branch ?? null, "data-kind": n.kind ?? null, transform: `translate(${bx} ${by})` }, [
      sglSvg("title", {}, tip),
      sglSvg("rect", { class: "sglw-program-box", width: boxW, height: PROGRAMS_NODE_H, rx: round }),
      sglSvg("rect", { class: "sglw-program-tint", width: boxW, height: PROGRAMS_NODE_H, rx: round }),
      sglSvg("rect", { class: "sglw-program-stripe", x: 0, y: 6, width: 3, height: PROGRAMS_NODE_H - 12, rx: 1.5 }),
      sglSvg("text", { class: "sglw-program-node-label", x: boxW / 2, y: 17, "text-anchor": "middle" },
        sglClip(label, chars)),
      sglSvg("text", { class: "sglw-program-node-detail", x: boxW / 2, y: 31, "text-anchor": "middle" },
        sglClip(programsNodeDetail(n), chars + 2)),
    ]);
  });
  return sglSvg("svg", { class: "sglw-program-graph", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `program graph of ${graph.title || graph.name}: ${nodes.length} steps` }, [...edges, ...boxes]);
}

/** The status chip of a card: a state-coloured dot and the status word. */
function programsChip(status) {
  const known = ["waiting", "running", "done", "failed"].includes(status) ? status : "waiting";
  return sglEl("span", { class: `sglw-program-chip sglw-program-chip--${known}` }, [
    sglEl("span", { class: "sglw-program-dot", "aria-hidden": "true" }), known]);
}

/** Mount the programs view in `container`; it redraws on `graphs` changes, keeping expanded cards by graph id. */
function programsMount(container, model) {
  const ui = { filter: "", expanded: new Set(), inputsOpen: new Set(), cards: new Map() };
  const filter = sglEl("input", { class: "sglw-programs-filter", type: "search", placeholder: "filter by program",
    "aria-label": "filter program runs by name", oninput: () => { ui.filter = filter.value; draw(); } });
  const count = sglEl("span", { class: "sglw-programs-count" });
  const legend = sglEl("span", { class: "sglw-programs-legend" }, PROGRAMS_STATES.map((s) =>
    sglEl("span", { class: `sglw-programs-key sglw-program-node--${s}` }, [
      sglEl("span", { class: "sglw-programs-swatch", "aria-hidden": "true" }), s])));
  const grid = sglEl("div", { class: "sglw-programs-grid" });
  const empty = sglEl("p", { class: "sglw-programs-empty" });
  const root = sglEl("div", { class: "sglw-programs" }, [
    sglEl("div", { class: "sglw-programs-controls" }, [filter, count, legend]), empty, grid]);
  container.append(root);

  /** A card's DOM, built once per graph id; `update` refreshes it when the graph or its width changed. */
  function makeCard(id) {
    const title = sglEl("div", { class: "sglw-program-title" });
    const chipBox = sglEl("span", { class: "sglw-program-chipbox" });
    const meta = sglEl("span", { class: "sglw-program-meta" });
    const expand = sglEl("button", { type: "button", class: "sglw-program-expand", onclick: () => {
      if (ui.expanded.has(id)) ui.expanded.delete(id); else ui.expanded.add(id);
      draw();
    } });
    const inputs = sglEl("details", { class: "sglw-program-inputs", ontoggle: () => {
      if (inputs.open) ui.inputsOpen.add(id); else ui.inputsOpen.delete(id);
    } });
    const body = sglEl("div", { class: "sglw-program-body" });
    const card = sglEl("article", { class: "sglw-program-card", "data-graph-id": id }, [
      sglEl("header", { class: "sglw-program-head" }, [title, expand]),
      sglEl("div", { class: "sglw-program-status" }, [chipBox, meta]), inputs, body]);
    let drawn = "";
    function update(graph) {
      const big = ui.expanded.has(id);
      card.classList.toggle("sglw-program-card--expanded", big);
      expand.textContent = big ? "collapse" : "expand";
      expand.setAttribute("aria-expanded", String(big));
      expand.title = big ? "back to the grid" : "show this graph full width";
      const width = Math.floor(body.clientWidth || card.clientWidth || 320);
      const key = `${JSON.stringify(graph)}|${width}`;
      if (key === drawn) return;
      drawn = key;
      const label = graph.title || graph.name || id;
      title.textContent = label;
      title.title = label;
      chipBox.replaceChildren(programsChip(graph.status));
      const nodes = graph.nodes || [];
      const branches = new Set(nodes.map((n) => n.branch).filter((b) => b !== null && b !== undefined)).size;
      meta.textContent = [graph.name, `${nodes.length} step${nodes.length === 1 ? "" : "s"}`,
        branches ? `${branches} branch${branches === 1 ? "" : "es"}` : null,
        graph.latency_s === null || graph.latency_s === undefined ? null : sglFmtSeconds(graph.latency_s)]
        .filter(Boolean).join(" · ");
      const args = Object.entries(graph.inputs || {});
      inputs.open = ui.inputsOpen.has(id);
      const argTable = sglEl("table", { class: "sglw-program-args" }, sglEl("tbody", {}, args.map(([k, v]) =>
        sglEl("tr", {}, [sglEl("th", { scope: "row" }, k), sglEl("td", {}, String(v))]))));
      inputs.replaceChildren(sglEl("summary", {}, args.length ? `inputs (${args.length})` : "call"),
        sglEl("div", { class: "sglw-program-fulltitle" }, label), ...(args.length ? [argTable] : []));
      body.replaceChildren(programsGraphSvg(graph, width)); // one swap keeps the card's scroll position
    }
    return { card, update };
  }

  function draw() {
    const graphs = (model.get("graphs") || []).slice().reverse(); // newest first
    const query = ui.filter.trim().toLowerCase();
    const shown = query ? graphs.filter((g) => `${g.name ?? ""}\u0000${g.title ?? ""}`.toLowerCase().includes(query))
      : graphs;
    count.textContent = query ? `${shown.length} of ${graphs.length} runs` : `${graphs.length} run${graphs.length === 1 ? "" : "s"}`;
    empty.textContent = graphs.length ? (shown.length ? "" : "No program matches the filter.") : "No program runs yet.";
    empty.hidden = !!shown.length;
    const live = new Set(graphs.map((g) => String(g.id)));
    for (const id of [...ui.cards.keys()]) if (!live.has(id)) { ui.cards.get(id).card.remove(); ui.cards.delete(id); }
    for (const id of [...ui.expanded]) if (!live.has(id)) ui.expanded.delete(id);
    const wanted = new Set(shown.map((g) => String(g.id)));
    for (const [id, entry] of ui.cards) if (!wanted.has(id)) entry.card.remove();
    let before = grid.firstChild;
    for (const graph of shown) {
      const id = String(graph.id);
      if (!ui.cards.has(id)) ui.cards.set(id, makeCard(id));
      const entry = ui.cards.get(id);
      if (entry.card !== before) grid.insertBefore(entry.card, before);
      else before = before.nextSibling;
      entry.update(graph);
    }
  }

  let lastWidth = 0;
  const stopResize = sglOnResize(root, (width) => {
    if (Math.abs(width - lastWidth) < 1) return;
    lastWidth = width;
    draw();
  });
  const unwatch = sglWatch(model, ["graphs"], draw);
  draw();
  return {
    destroy() {
      unwatch();
      stopResize();
      root.remove();
    },
  };
}
