// Radix cache view: the `tree` trait drawn as an indented tree (root at top-left, one row per visible node,
// x by depth, siblings oldest first so a node keeps its place), with zoom/pan, collapse/expand, search and a
// details panel. Only the rows inside the viewport are drawn, so thousands of nodes stay fast.

const TREE_ROW = 22;            // px per row at scale 1
const TREE_INDENT = 20;         // px per depth level
const TREE_PAD = 14;            // px between the canvas edge and the content at the home position
const TREE_TOGGLE_DX = 14;      // toggle centre, right of the mark's centre
const TREE_LABEL_DX = 24;       // label start, right of the mark's centre
const TREE_LABEL_CHARS = 40;
const TREE_DEPTH_LIMIT = 10;    // levels opened by default
const TREE_ROW_BUDGET = 300;    // rows opened by default before subtrees fold into aggregate rows
const TREE_CHILD_PAGE = 50;     // children shown under one node before an aggregate row takes the rest
const TREE_MIN_H = 160;
const TREE_MAX_H = 560;
const TREE_MIN_K = 0.04;
const TREE_MAX_K = 4;
const TREE_LOD_K = 0.45;        // below this scale rows are drawn as bars (an overview), not labels
const TREE_STATES = ["root", "locked", "evictable", "evicted"];

/** Mark radius for a token count: log scale, absolute (3 px at 1 token, 8 px from 2,048) so it is stable. */
function treeRadius(tokens) {
  return 3 + 5 * Math.min(1, Math.log1p(Math.max(0, tokens || 0)) / Math.log1p(2048));
}

/** Parent/child index of the trait's node list: kids sorted oldest-first (by the smallest id in their subtree,
 *  which is the node's own id unless the cache split it, so a split node stays where its lower half was). */
function treeIndex(tree) {
  const list = tree && Array.isArray(tree.nodes) ? tree.nodes : [];
  const byId = new Map();
  const infos = [];
  let root = null;
  for (const n of list) {
    const own = n.state === "evicted" ? 0 : (n.tokens || 0);  // a ghost's tokens are no longer cached
    const info = { n, kids: [], parent: null, level: 0, oldest: n.id, own, subNodes: 1, subTokens: own,
                   lower: null };
    if (n.parent === null || n.parent === undefined) {
      if (root) { info.parent = root; info.level = 1; root.kids.push(info); } else root = info;
    } else {
      const parent = byId.get(n.parent) || root;  // a parent Python did not send: hang the node under the root
      if (!parent) continue;
      info.parent = parent; info.level = parent.level + 1; parent.kids.push(info);
    }
    byId.set(n.id, info); infos.push(info);
  }
  if (!root) return null;
  const counts = { root: 1, locked: 0, evictable: 0, evicted: 0 };
  let newest = root.n.last_access || 0;
  for (let i = infos.length - 1; i > 0; i--) {
    const info = infos[i], p = info.parent;
    p.subNodes += info.subNodes; p.subTokens += info.subTokens; p.oldest = Math.min(p.oldest, info.oldest);
    if (info.n.state in counts && info.n.state !== "root") counts[info.n.state] += 1;
    newest = Math.max(newest, info.n.last_access || 0);
  }
  const byAge = (a, b) => a.oldest - b.oldest || a.n.id - b.n.id;
  for (const info of infos) if (info.kids.length > 1) info.kids.sort(byAge);
  const order = [];  // preorder over every node, for search
  const stack = [root];
  while (stack.length) {
    const info = stack.pop();
    order.push(info);
    for (let i = info.kids.length - 1; i >= 0; i--) stack.push(info.kids[i]);
  }
  return { root, byId, order, counts, newest };
}

/** The rows to draw, given which nodes are open (`st.open`) and how many children each shows (`st.limit`).
 *  Nodes seen for the first time get a default that is then kept: open when they hold an already seen node
 *  (a split) or a single node, or within the row budget (breadth first) and the depth limit (single-child
 *  links, such as the turns of a chat, do not count against it). Below a node the user opened, depth and
 *  budget start afresh. */
function treeLayout(index, st) {
  const root = index.root;
  const shownOf = (info) => Math.min(info.kids.length, st.limit.get(info.n.id) ?? TREE_CHILD_PAGE);
  let committed = 1;
  const queue = [[root, 0, 0]];  // node, branching depth below the last user-opened node, rows when it opened
  for (let head = 0; head < queue.length; head++) {
    const [info, depth, start] = queue[head];
    if (!info.kids.length) continue;
    const shown = shownOf(info);
    const extra = shown < info.kids.length ? 1 : 0;
    let open = st.open.get(info.n.id);
    if (open === undefined) {
      const fits = committed - start + shown + extra <= TREE_ROW_BUDGET;
      open = info === root || info.subNodes === 2  // one node below: its fold would take a row too
        || info.kids.some((k) => st.seen.has(k.n.id))
        || (fits && (depth < TREE_DEPTH_LIMIT || info.kids.length === 1));
      st.open.set(info.n.id, open);
    }
    if (!open) { committed += 1; continue; }
    const fresh = st.userOpen.has(info.n.id);
    const below = fresh ? 0 : depth + (info.kids.length > 1 ? 1 : 0);
    const from = fresh ? committed : start;
    committed += shown + extra;
    for (let i = 0; i < shown; i++) queue.push([info.kids[i], below, from]);
  }
  const rows = [];
  const lastChild = [];
  const stack = [{ info: root, parentRow: -1, level: 0 }];
  while (stack.length) {
    const item = stack.pop();
    const r = rows.length;
    const p = item.parentRow;
    const prev = p < 0 ? -1 : (lastChild[p] ?? p);
    const row = { info: item.info || null, level: item.level, parentRow: p, prevRow: prev, nextSib: -1,
                  agg: item.agg || null };
    if (prev >= 0 && prev !== p) rows[prev].nextSib = r;
    if (p >= 0) lastChild[p] = r;
    rows.push(row);
    const info = item.info;
    if (!info || !info.kids.length) continue;
    if (!st.open.get(info.n.id)) {
      const agg = { owner: info.n.id, nodes: info.subNodes - 1, tokens: info.subTokens - info.own, more: false };
      stack.push({ parentRow: r, level: item.level + 1, agg });
      continue;
    }
    const shown = shownOf(info);
    if (shown < info.kids.length) {
      let nodes = 0, tokens = 0;
      for (const kid of info.kids.slice(shown)) { nodes += kid.subNodes; tokens += kid.subTokens; }
      stack.push({ parentRow: r, level: item.level + 1, agg: { owner: info.n.id, nodes, tokens, more: true } });
    }
    for (let i = shown - 1; i >= 0; i--) stack.push({ info: info.kids[i], parentRow: r, level: item.level + 1 });
  }
  return rows;
}

/** Nodes where `query` (lower case) occurs in the text from the root to them, the occurrence ending inside the
 *  node's own text (so a match is not repeated by every descendant); in preorder. */
function treeSearch(index, query) {
  const found = [];
  const tails = new Map();
  const keep = query.length - 1;
  for (const info of index.order) {
    if (info.lower === null) info.lower = String(info.n.text ?? "").toLowerCase();
    const combined = (info.parent ? tails.get(info.parent) : "") + info.lower;
    if (combined.includes(query)) found.push(info);
    tails.set(info, keep > 0 ? combined.slice(-keep) : "");
  }
  return found;
}

/** A node's one-line label: [clipped text, muted suffix]. */
function treeLabel(index, info) {
  if (info === index.root) {
    const live = index.counts.locked + index.counts.evictable;
    return ["root", ` ${sglFmtInt(live)} node${live === 1 ? "" : "s"}, ${sglFmtInt(info.subTokens)} tok`];
  }
  const text = info.n.text ? sglClip(String(info.n.text).replace(/\t/g, "⇥"), TREE_LABEL_CHARS) : "(no text)";
  return [text, ` ${sglFmtInt(info.n.tokens)} tok`];
}

function treeClamp(x, lo, hi) {
  return Math.min(hi, Math.max(lo, x));
}

/** The radix cache view of `model`'s `tree` trait in `container`; redrawn on `change:tree`. */
function treeMount(container, model) {
  // Kept across updates: which nodes are open (and by whom), children shown per node, the view transform.
  const st = { open: new Map(), limit: new Map(), seen: new Set(), userOpen: new Set(), k: 1, tx: TREE_PAD,
               ty: TREE_PAD, W: 0, H: TREE_MIN_H, selected: null, query: "", matches: [], matchSet: new Set(),
               matchAt: -1 };
  let index = null, rows = [], rowOf = new Map(), contentW = 0, drawn = null, detailsKey = null, searchTimer = 0;
  let charW = 7.2, drag = null;

  const header = sglEl("div", { class: "sglw-tree-header" });
  const search = sglEl("input", { class: "sglw-tree-search", type: "search", placeholder: "Search text…",
                                  "aria-label": "Search the cached text", spellcheck: "false" });
  const count = sglEl("span", { class: "sglw-tree-count", "aria-live": "polite" });
  const legend = sglEl("div", { class: "sglw-tree-legend" });
  const button = (cls, label, title, fn) => sglEl("button", { class: `sglw-tree-btn ${cls}`, type: "button", title,
                                                              "aria-label": title, onclick: fn }, label);
  const zoom = sglEl("div", { class: "sglw-tree-zoom" }, [
    button("sglw-tree-zoom-out", "−", "Zoom out", () => zoomAt(TREE_PAD, TREE_PAD, 1 / 1.4)),
    button("sglw-tree-zoom-in", "+", "Zoom in", () => zoomAt(TREE_PAD, TREE_PAD, 1.4)),
    button("sglw-tree-fit", "Fit", "Fit the whole tree", fit),
  ]);
  const bar = sglEl("div", { class: "sglw-tree-bar" }, [search, count, legend, zoom]);
  const edgesG = sglSvg("g", { class: "sglw-tree-edges" });
  const rowsG = sglSvg("g", { class: "sglw-tree-rows" });
  const viewport = sglSvg("g", { class: "sglw-tree-viewport" }, [edgesG, rowsG]);
  const thumb = sglSvg("rect", { class: "sglw-tree-thumb", x: 0, y: 0, width: 6, height: 0, rx: 3 });
  const svg = sglSvg("svg", { class: "sglw-tree-svg", "aria-label": "Radix cache tree: drag to pan, "
                              + "wheel to zoom (shift+wheel scrolls), click a node for its text" }, [viewport, thumb]);
  const canvas = sglEl("div", { class: "sglw-tree-canvas" }, [svg]);
  const details = sglEl("div", { class: "sglw-tree-details" });
  const body = sglEl("div", { class: "sglw-tree-body" }, [canvas, details]);
  const rootEl = sglEl("div", { class: "sglw-tree" }, [header, bar, body]);
  container.append(rootEl);

  const rowX = (row) => row.level * TREE_INDENT + TREE_INDENT / 2;
  const rowY = (r) => r * TREE_ROW + TREE_ROW / 2;
  const radiusOf = (info) => (info === index.root ? 5 : treeRadius(info.n.tokens));

  function measureChar() {
    const ctx = document.createElement("canvas").getContext("2d");
    if (!ctx) return 7.2;
    ctx.font = `12px ${sglCssVar(rootEl, "--sglw-mono", "monospace")}`;
    return ctx.measureText("0123456789").width / 10 || 7.2;
  }

  function relayout() {
    rows = index ? treeLayout(index, st) : [];
    rowOf = new Map();
    let width = 0;
    rows.forEach((row, r) => {
      const chars = row.info ? treeLabel(index, row.info).join("").length : 32;
      width = Math.max(width, rowX(row) + TREE_LABEL_DX + chars * charW);
      if (!row.info) return;
      rowOf.set(row.info.n.id, r);
      st.seen.add(row.info.n.id);
    });
    contentW = width + TREE_PAD;
    st.H = treeClamp(rows.length * TREE_ROW + 2 * TREE_PAD, TREE_MIN_H, TREE_MAX_H);
    canvas.style.height = `${st.H}px`;
    drawn = null;
  }

  function clampView() {
    const cw = contentW * st.k, ch = rows.length * TREE_ROW * st.k;
    st.tx = treeClamp(st.tx, Math.min(TREE_PAD, st.W / 2 - cw), Math.max(TREE_PAD, st.W / 2));
    st.ty = treeClamp(st.ty, Math.min(TREE_PAD, st.H / 2 - ch), Math.max(TREE_PAD, st.H / 2));
  }

  function render(force = false) {
    if (!index) return;
    clampView();
    const { k, tx, ty } = st;
    viewport.setAttribute("transform", `translate(${tx.toFixed(2)} ${ty.toFixed(2)}) scale(${k})`);
    viewport.setAttribute("data-scale", String(Math.round(k * 1000) / 1000));
    const first = treeClamp(Math.floor(-ty / k / TREE_ROW), 0, rows.length - 1);
    const last = treeClamp(Math.floor((st.H - ty) / k / TREE_ROW), 0, rows.length - 1);
    const lod = k >= TREE_LOD_K;
    if (force || !drawn || first < drawn.first || last > drawn.last || drawn.lod !== lod) {
      const over = Math.max(16, (last - first + 1) >> 1);
      draw(Math.max(0, first - over), Math.min(rows.length - 1, last + over), lod);
    }
    placeThumb();
  }

  function draw(a, b, lod) {
    const edges = document.createDocumentFragment(), marks = document.createDocumentFragment();
    const current = st.matchAt >= 0 ? st.matches[st.matchAt].n.id : null;
    for (let r = a; r <= b; r++) {
      if (rows[r].parentRow >= 0) edges.append(edgePath(r));
      if (rows[r].nextSib > b) edges.append(edgePath(rows[r].nextSib));  // runs down through the drawn rows
      marks.append(rows[r].info ? nodeRow(r, lod, current) : aggRow(r, lod));
    }
    for (let r = rows[a].parentRow; r >= 0; r = rows[r].parentRow) {  // ancestors above: their lines cross too
      if (rows[r].nextSib > b) edges.append(edgePath(rows[r].nextSib));
    }
    sglClear(edgesG).append(edges);
    sglClear(rowsG).append(marks);
    drawn = { first: a, last: b, lod };
  }

  /** Elbow from the parent's column down to row r, entering its mark from the left (never under a label). */
  function edgePath(r) {
    const row = rows[r], parent = rows[row.parentRow];
    const px = rowX(parent), cx = rowX(row), cy = rowY(r);
    const first = row.prevRow === row.parentRow;
    const top = first ? rowY(row.parentRow) + radiusOf(parent.info) + 1 : rowY(row.prevRow);
    const end = cx - (row.info ? radiusOf(row.info) : 6) - 1;
    const ghost = row.info && row.info.n.state === "evicted";
    return sglSvg("path", { class: ghost ? "sglw-tree-edge sglw-tree-edge-ghost" : "sglw-tree-edge",
                            d: `M${px},${top}V${cy - 4}Q${px},${cy} ${px + 4},${cy}H${end}`,
                            "data-edge-to": row.info ? row.info.n.id : `+${row.agg.owner}` });
  }

  function nodeRow(r, lod, current) {
    const info = rows[r].info, n = info.n, id = n.id;
    const state = info === index.root ? "root" : (TREE_STATES.includes(n.state) ? n.state : "evictable");
    const match = st.matchSet.has(info);
    const cls = ["sglw-tree-node", `sglw-tree-${state}`];
    if (id === st.selected) cls.push("sglw-tree-selected");
    if (match) cls.push("sglw-tree-match");
    if (id === current) cls.push("sglw-tree-current");
    const [text, suffix] = treeLabel(index, info);
    const w = (text.length + suffix.length) * charW;
    const at = `translate(${rowX(rows[r])} ${rowY(r)})`;
    if (!lod) {  // overview: one bar per row, as long as its label, coloured by state
      return sglSvg("g", { class: cls.join(" "), "data-node-id": id, transform: at }, sglSvg("rect", {
        class: `sglw-tree-ink sglw-tree-${state}`, x: -4, y: -TREE_ROW * 0.3, width: TREE_LABEL_DX + 4 + w,
        height: TREE_ROW * 0.6, rx: 2 }));
    }
    const parts = [sglSvg("rect", { class: "sglw-tree-hit", x: -TREE_INDENT / 2, y: -TREE_ROW / 2,
                                    width: TREE_LABEL_DX + w + TREE_INDENT / 2 + 6, height: TREE_ROW })];
    if (id === st.selected) {
      parts.push(sglSvg("rect", { class: "sglw-tree-sel", x: TREE_LABEL_DX - 4, y: -9, width: w + 8, height: 18,
                                  rx: 3 }));
    }
    if (match) {
      parts.push(sglSvg("rect", { class: id === current ? "sglw-tree-hl sglw-tree-hl-current" : "sglw-tree-hl",
                                  x: TREE_LABEL_DX - 4, y: -9, width: w + 8, height: 18, rx: 3 }));
    }
    parts.push(sglSvg("circle", { class: `sglw-tree-mark sglw-tree-${state}`, r: radiusOf(info).toFixed(2) }));
    if (info.kids.length) {
      const open = st.open.get(id);
      const shift = `translate(${TREE_TOGGLE_DX} 0)`;
      parts.push(sglSvg("g", { class: "sglw-tree-toggle", "data-toggle": id, transform: shift }, [
        sglSvg("title", {}, open ? "Collapse" : "Expand"),
        sglSvg("rect", { class: "sglw-tree-hit", x: -6, y: -TREE_ROW / 2, width: 12, height: TREE_ROW }),
        sglSvg("path", { d: open ? "M-4,-2L4,-2L0,3Z" : "M-2,-4L3,0L-2,4Z" }),
      ]));
    }
    parts.push(sglSvg("text", { class: "sglw-tree-label", x: TREE_LABEL_DX, y: 4 }, [
      text, sglSvg("tspan", { class: "sglw-tree-suffix" }, suffix)]));
    return sglSvg("g", { class: cls.join(" "), "data-node-id": id, transform: at }, parts);
  }

  function aggRow(r, lod) {
    const { owner, nodes, tokens, more } = rows[r].agg;
    const what = `${more ? "more " : ""}node${nodes === 1 ? "" : "s"}`;
    const label = `+${sglFmtInt(nodes)} ${what}, ${sglFmtInt(tokens)} tokens`;
    const at = `translate(${rowX(rows[r])} ${rowY(r)})`;
    if (!lod) {
      return sglSvg("g", { class: "sglw-tree-agg", "data-agg-for": owner, transform: at }, sglSvg("rect", {
        class: "sglw-tree-ink sglw-tree-agg-ink", x: -6, y: -TREE_ROW * 0.3, width: 18 + label.length * charW,
        height: TREE_ROW * 0.6, rx: 2 }));
    }
    return sglSvg("g", { class: "sglw-tree-agg", "data-agg-for": owner, transform: at }, [
      sglSvg("title", {}, "Click to expand"),
      sglSvg("rect", { class: "sglw-tree-hit", x: -TREE_INDENT / 2, y: -TREE_ROW / 2,
                       width: TREE_INDENT / 2 + 16 + label.length * charW, height: TREE_ROW }),
      sglSvg("rect", { class: "sglw-tree-agg-mark", x: -6, y: -6, width: 12, height: 12, rx: 3 }),
      sglSvg("path", { class: "sglw-tree-agg-plus", d: "M-3,0H3M0,-3V3" }),
      sglSvg("text", { class: "sglw-tree-agg-label", x: 12, y: 4 }, label),
    ]);
  }

  function placeThumb() {
    const total = rows.length * TREE_ROW * st.k + 2 * TREE_PAD;
    if (total <= st.H + 1 || !st.W) { thumb.setAttribute("height", 0); return; }
    const h = Math.max(24, (st.H * st.H) / total);
    const s = treeClamp((TREE_PAD - st.ty) / (total - st.H), 0, 1);
    thumb.setAttribute("x", st.W - 9);
    thumb.setAttribute("y", (s * (st.H - h)).toFixed(1));
    thumb.setAttribute("height", h.toFixed(1));
  }

  function zoomAt(px, py, factor) {
    const k = treeClamp(st.k * factor, TREE_MIN_K, TREE_MAX_K), s = k / st.k;
    st.tx = px - (px - st.tx) * s;
    st.ty = py - (py - st.ty) * s;
    st.k = k;
    render();
  }

  /** The whole tree when it stays readable; else its width (at least the smallest readable scale), top first. */
  function fit() {
    const kw = (st.W - 2 * TREE_PAD) / contentW;
    const k = Math.min(kw, (st.H - 2 * TREE_PAD) / (rows.length * TREE_ROW), 1);
    st.k = k >= TREE_LOD_K ? k : treeClamp(kw, TREE_LOD_K, 1);
    st.tx = TREE_PAD; st.ty = TREE_PAD;
    render();
  }

  /** Rows on screen (the selected one first) with their screen y, to keep one in place across an update. */
  function anchors() {
    const out = [];
    if (!index || !rows.length) return out;
    const top = -st.ty / st.k, bottom = (st.H - st.ty) / st.k;
    const sel = st.selected === null ? undefined : rowOf.get(st.selected);
    const screenY = (r) => st.ty + rowY(r) * st.k;
    if (sel !== undefined && rowY(sel) >= top && rowY(sel) <= bottom) out.push([st.selected, screenY(sel)]);
    for (let r = Math.max(0, Math.floor(top / TREE_ROW)); r < rows.length && rowY(r) <= bottom; r++) {
      if (rows[r].info) out.push([rows[r].info.n.id, screenY(r)]);
      if (out.length >= 64) break;
    }
    return out;
  }

  function update() {
    const started = performance.now();
    const tree = model.get("tree");
    const keep = anchors();
    index = tree && !tree.disabled ? treeIndex(tree) : null;
    if (index) {
      for (const map of [st.open, st.limit]) for (const id of map.keys()) if (!index.byId.has(id)) map.delete(id);
      for (const set of [st.seen, st.userOpen]) for (const id of set) if (!index.byId.has(id)) set.delete(id);
    }
    relayout();
    for (const [id, y] of keep) {
      const r = rowOf.get(id);
      if (r === undefined) continue;
      const shift = y - rowY(r) * st.k - st.ty;
      st.ty += shift;
      if (drag) drag.ty += shift;  // a drag under way continues from where the row now is
      break;
    }
    if (st.query) findMatches();
    bar.hidden = body.hidden = !index;
    drawHeader(tree);
    drawLegend();
    showDetails();
    render(true);
    rootEl.dataset.renderMs = (performance.now() - started).toFixed(1);  // how long this update took to draw
  }

  function drawHeader(tree) {
    if (!tree) { header.textContent = "No radix cache snapshot yet."; return; }
    if (tree.disabled) { header.textContent = "The radix cache is disabled: requests share no prefix."; return; }
    if (!index) { header.textContent = "The radix cache is empty."; return; }
    let shown = 0;
    for (const row of rows) if (row.info && row.info !== index.root && row.info.n.state !== "evicted") shown += 1;
    const total = tree.node_count ?? index.counts.locked + index.counts.evictable;
    header.textContent = `${sglFmtInt(shown)} / ${sglFmtInt(total)} nodes shown · ${sglFmtInt(tree.total_tokens)} `
      + `cached tokens · ${sglFmtInt(tree.locked_tokens)} locked · ${sglFmtInt(tree.evictable_tokens)} evictable · `
      + `${sglFmtInt(tree.omitted ?? 0)} omitted`;
    header.title = "omitted: least recently used nodes the kernel did not send";
  }

  function drawLegend() {
    if (!index) return;
    const item = (state, label, mark) => sglEl("span", { class: "sglw-tree-legend-item", "data-state": state }, [
      sglSvg("svg", { width: 14, height: 14, viewBox: "-7 -7 14 14", "aria-hidden": "true" }, mark), label]);
    const c = index.counts;
    sglClear(legend).append(
      item("root", "root", sglSvg("circle", { class: "sglw-tree-mark sglw-tree-root", r: 5 })),
      item("locked", `locked ${sglFmtInt(c.locked)}`,
           sglSvg("circle", { class: "sglw-tree-mark sglw-tree-locked", r: 5 })),
      item("evictable", `evictable ${sglFmtInt(c.evictable)}`,
           sglSvg("circle", { class: "sglw-tree-mark sglw-tree-evictable", r: 5 })),
      item("evicted", `evicted ${sglFmtInt(c.evicted)}`,
           sglSvg("circle", { class: "sglw-tree-mark sglw-tree-evicted", r: 4.5 })),
      item("folded", "folded", [
        sglSvg("rect", { class: "sglw-tree-agg-mark", x: -5, y: -5, width: 10, height: 10, rx: 2 }),
        sglSvg("path", { class: "sglw-tree-agg-plus", d: "M-2.5,0H2.5M0,-2.5V2.5" })]),
    );
  }

  function showDetails() {
    const info = index && st.selected !== null ? index.byId.get(st.selected) : undefined;
    const key = info ? `${JSON.stringify(info.n)}|${info.subNodes}|${info.subTokens}` : `-${st.selected}`;
    if (key === detailsKey) return;
    detailsKey = key;
    sglClear(details);
    if (!info) {
      details.append(sglEl("p", { class: "sglw-tree-hint" }, st.selected === null
        ? "Click a node to see its full text, token count, hits, locks and last access."
        : `Node ${st.selected} is no longer in the cache.`));
      return;
    }
    const n = info.n, state = info === index.root ? "root" : n.state;
    const facts = [
      ["state", state], ["tokens", sglFmtInt(n.tokens)], ["depth tokens", sglFmtInt(n.depth_tokens)],
      ["hits", sglFmtInt(n.hits)], ["locks", sglFmtInt(n.locks)],
      ["last access", `${sglFmtInt(n.last_access)} (cache clock, newest ${sglFmtInt(index.newest)})`],
      ["subtree", `${sglFmtInt(info.subNodes - 1)} nodes, ${sglFmtInt(info.subTokens - info.own)} tokens below`],
    ];
    const pathPre = sglEl("pre", { class: "sglw-tree-text" });
    const path = sglEl("details", { class: "sglw-tree-path" }, [sglEl("summary", {}, "Text from the root"), pathPre]);
    path.addEventListener("toggle", () => {
      if (!path.open || pathPre.textContent) return;
      const parts = [];
      for (let a = info; a; a = a.parent) parts.push(String(a.n.text ?? ""));
      pathPre.textContent = parts.reverse().join("") || "(empty)";
    });
    const text = String(n.text ?? "");
    const parts = [
      sglEl("div", { class: "sglw-tree-details-title" }, [
        sglSvg("svg", { width: 14, height: 14, viewBox: "-7 -7 14 14", "aria-hidden": "true" },
               sglSvg("circle", { class: `sglw-tree-mark sglw-tree-${state}`, r: 5 })),
        info === index.root ? "Root" : `Node ${n.id}`]),
      sglEl("div", { class: "sglw-tree-facts", role: "list" }, facts.flatMap(([k, v]) => [
        sglEl("span", { class: "sglw-tree-fact-key" }, k), sglEl("span", { class: "sglw-tree-fact-value" }, v)])),
      sglEl("pre", { class: "sglw-tree-text" }, text || "(empty)"),
      text.length >= 2000 ? sglEl("p", { class: "sglw-tree-hint" }, "The kernel sends the first 2,000 characters.")
        : null,
      info === index.root ? null : path,
    ];
    details.append(...parts.filter(Boolean));
  }

  function select(id) {
    st.selected = id;
    showDetails();
    render(true);
  }

  function toggle(id) {
    st.open.set(id, !st.open.get(id));
    st.userOpen.add(id);
    relayout(); drawHeader(model.get("tree")); render(true);
  }

  function expandAgg(owner) {
    if (!st.open.get(owner)) st.open.set(owner, true);
    else st.limit.set(owner, Infinity);
    st.userOpen.add(owner);
    relayout(); drawHeader(model.get("tree")); render(true);
  }

  function findMatches() {
    const before = st.matchAt >= 0 ? st.matches[st.matchAt].n.id : null;
    st.matches = index ? treeSearch(index, st.query) : [];
    st.matchSet = new Set(st.matches);
    const at = st.matches.findIndex((info) => info.n.id === before);
    st.matchAt = at >= 0 ? at : (st.matches.length ? 0 : -1);
    showCount();
  }

  function showCount() {
    const n = st.matches.length;
    count.textContent = !st.query ? "" : n === 0 ? "no matches"
      : `${sglFmtInt(n)} match${n === 1 ? "" : "es"}${n > 1 ? ` (${st.matchAt + 1} of ${sglFmtInt(n)})` : ""}`;
  }

  function runSearch() {
    st.query = search.value.trim() ? search.value.toLowerCase() : "";
    st.matchAt = -1;
    findMatches();
    if (st.matches.length) reveal(0); else render(true);
  }

  /** Open the ancestors of match i, scroll it into view and select it. */
  function reveal(i) {
    st.matchAt = i;
    showCount();
    const info = st.matches[i];
    for (let child = info, a = info.parent; a; child = a, a = a.parent) {
      st.open.set(a.n.id, true);  // only the path: the rest stays folded
      const at = a.kids.indexOf(child);
      if (at >= (st.limit.get(a.n.id) ?? TREE_CHILD_PAGE)) st.limit.set(a.n.id, at + 1);
    }
    relayout();
    const r = rowOf.get(info.n.id);
    const sy = st.ty + rowY(r) * st.k, sx = st.tx + rowX(rows[r]) * st.k;
    if (sy < TREE_ROW || sy > st.H - 2 * TREE_ROW) st.ty = Math.min(TREE_PAD, st.H / 3 - rowY(r) * st.k);
    if (sx < TREE_PAD || sx > st.W * 0.6) st.tx = Math.min(TREE_PAD, st.W * 0.25 - rowX(rows[r]) * st.k);
    st.selected = info.n.id;
    drawHeader(model.get("tree"));
    showDetails();
    render(true);
  }

  search.addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(runSearch, 150); });
  search.addEventListener("keydown", (e) => {
    e.stopPropagation();  // keep notebook shortcuts out of the search box
    if (e.key === "Enter") {
      e.preventDefault();
      clearTimeout(searchTimer);
      const query = search.value.trim() ? search.value.toLowerCase() : "";
      const n = st.matches.length;
      if (query !== st.query) runSearch();
      else if (n) reveal((st.matchAt + (e.shiftKey ? n - 1 : 1)) % n);
    } else if (e.key === "Escape") {
      search.value = "";
      runSearch();
    }
  });

  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? st.H : 1;
    if (e.shiftKey) {
      st.ty -= (e.deltaY || e.deltaX) * unit;
      render();
      return;
    }
    const box = svg.getBoundingClientRect();
    zoomAt(e.clientX - box.left, e.clientY - box.top, Math.exp(-e.deltaY * unit * 0.002));
  }, { passive: false });
  svg.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    drag = { x: e.clientX, y: e.clientY, tx: st.tx, ty: st.ty, id: e.pointerId, target: e.target, moved: false };
  });
  svg.addEventListener("pointermove", (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 4) return;
    if (!drag.moved) {
      drag.moved = true;
      svg.setPointerCapture(e.pointerId);
      svg.classList.add("sglw-tree-dragging");
    }
    if (drag.target === thumb) {  // the scroll thumb moves the content the other way, scaled
      const total = rows.length * TREE_ROW * st.k + 2 * TREE_PAD, h = Math.max(24, (st.H * st.H) / total);
      st.ty = drag.ty - (dy * (total - st.H)) / Math.max(1, st.H - h);
    } else {
      st.tx = drag.tx + dx;
      st.ty = drag.ty + dy;
    }
    render();
  });
  const endDrag = (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const done = drag;
    drag = null;
    svg.classList.remove("sglw-tree-dragging");
    if (e.type !== "pointerup" || done.moved || !(done.target instanceof Element)) return;
    const agg = done.target.closest(".sglw-tree-agg");
    const tog = done.target.closest("[data-toggle]");
    const node = done.target.closest("[data-node-id]");
    if (agg) expandAgg(Number(agg.getAttribute("data-agg-for")));
    else if (tog) toggle(Number(tog.getAttribute("data-toggle")));
    else if (node) select(Number(node.getAttribute("data-node-id")));
  };
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);

  charW = measureChar();
  st.W = canvas.clientWidth;
  update();
  const unwatch = sglWatch(model, ["tree"], update);
  const unresize = sglOnResize(canvas, (w) => { st.W = w; render(); });
  return {
    destroy() {
      unwatch();
      unresize();
      clearTimeout(searchTimer);
      rootEl.remove();
    },
  };
}
