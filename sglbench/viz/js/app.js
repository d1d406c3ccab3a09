// The workbench widget: engine summary line, status badge, batch progress, and the panels (one alone, several
// as tabs), each drawn by its view's mount function. The anywidget module's default export; an exported
// report calls the same render() on a static stand-in model.

const APP_PANELS = ["tree", "stats", "latency", "programs"];
const APP_TITLES = { tree: "Radix tree", stats: "Serving", latency: "Latency", programs: "Programs" };
const APP_STATUS_WORDS = { live: "live", stopped: "stopped", static: "snapshot", disconnected: "not connected" };
const APP_HEARTBEAT_GRACE_MS = 7000;  // a live view sends a heartbeat every 2 s: this long without one, no kernel

/** The mount function of a panel's view, or null where its file is not in the bundle. */
function appMounter(panel) {
  if (panel === "tree" && typeof treeMount === "function") return treeMount;
  if (panel === "stats" && typeof statsMount === "function") return statsMount;
  if (panel === "latency" && typeof latencyMount === "function") return latencyMount;
  if (panel === "programs" && typeof programsMount === "function") return programsMount;
  return null;
}

/** The engine summary as one line: "running 2 · waiting 0 · finished 5 · ... · decode 35 tok/s". */
function appSummaryText(s) {
  const parts = [
    `running ${sglFmtInt(s.running)}`, `waiting ${sglFmtInt(s.waiting)}`, `finished ${sglFmtInt(s.finished)}`,
    `steps ${sglFmtInt(s.steps)}`, `KV pool ${sglFmtInt(s.pool_free)} / ${sglFmtInt(s.pool_slots)} free`,
    `cached ${sglFmtInt(s.cached)} (locked ${sglFmtInt(s.locked)})`, `hit rate ${sglFmtPct(s.hit_rate)}`,
  ];
  if (s.retractions) parts.push(`retracted ${sglFmtInt(s.retractions)}`);
  if (s.decode_tps !== null && s.decode_tps !== undefined) parts.push(`decode ${sglFmtNum(s.decode_tps)} tok/s`);
  return parts.join(" · ");
}

/** The badge text: the status word, and the note when there is one ("stopped: the runtime shut down"). */
function appStatusText(status, note) {
  const word = APP_STATUS_WORDS[status] ?? String(status ?? "");
  if (!note) return word;
  return note.toLowerCase().startsWith(word) ? note : `${word}: ${note}`;
}

/** The progress line: "12 / 200 programs · 1 failed · 3.4 programs/s · elapsed 3.5 s · ETA 55 s". */
function appProgressText(p) {
  const parts = [`${sglFmtInt(p.done)} / ${sglFmtInt(p.total)} programs`];
  if (p.failed) parts.push(`${sglFmtInt(p.failed)} failed`);
  if (p.cancelled) parts.push(`${sglFmtInt(p.cancelled)} cancelled`);
  if (p.rate !== null && p.rate !== undefined) parts.push(`${sglFmtNum(p.rate)} programs/s`);
  if (p.elapsed_s !== null && p.elapsed_s !== undefined) parts.push(`elapsed ${sglFmtSeconds(p.elapsed_s)}`);
  const finished = p.total > 0 && p.done >= p.total;
  if (!finished && p.eta_s !== null && p.eta_s !== undefined) parts.push(`ETA ${sglFmtSeconds(p.eta_s)}`);
  return parts.join(" · ");
}

/** The header: status badge and summary line; redrawn on their traits' changes. */
function appHeader(model) {
  const badge = sglEl("span", { class: "sglw-status", role: "status" });
  const summary = sglEl("div", { class: "sglw-summary" });
  const header = sglEl("div", { class: "sglw-header" }, [badge, summary]);
  // A "live" view whose heartbeat stopped (a saved notebook reopened, a dead kernel) says it shows saved state.
  let lastBeat = performance.now(), stale = false;
  const draw = () => {
    let status = model.get("status") || "live";
    let note = model.get("status_note") || "";
    if (status === "live" && stale) {
      const beat = model.get("heartbeat");
      status = "disconnected";
      note = beat ? `state saved ${new Date(beat * 1000).toLocaleTimeString()}` : "saved state";
    }
    badge.dataset.status = status;
    badge.title = note || status;
    sglClear(badge).append(sglEl("span", { class: "sglw-status-dot" }), appStatusText(status, note));
    const s = model.get("summary");
    const show = Boolean(model.get("summary_line")) && s && typeof s === "object";
    summary.hidden = !show;
    sglClear(summary);
    if (show) {
      if (s.model) summary.append(sglEl("span", { class: "sglw-summary-model" }, s.model));
      summary.append(sglEl("span", { class: "sglw-summary-text" }, appSummaryText(s)));
    }
  };
  draw();
  const unwatch = sglWatch(model, ["status", "status_note", "summary", "summary_line"], draw);
  const unbeat = sglWatch(model, ["heartbeat"], () => { lastBeat = performance.now(); if (stale) { stale = false; draw(); } });
  const timer = setInterval(() => {
    const now = !stale && model.get("status") === "live" && performance.now() - lastBeat > APP_HEARTBEAT_GRACE_MS;
    if (now) { stale = true; draw(); }
  }, 1000);
  return { node: header, destroy: () => { unwatch(); unbeat(); clearInterval(timer); } };
}

/** The batch progress bar, shown while `progress` is a dict. */
function appProgress(model) {
  const fill = sglEl("div", { class: "sglw-progress-fill" });
  const track = sglEl("div", { class: "sglw-progress-track" }, fill);
  const text = sglEl("div", { class: "sglw-progress-text" });
  const node = sglEl("div", { class: "sglw-progress", role: "progressbar", "aria-valuemin": 0 }, [track, text]);
  const draw = () => {
    const p = model.get("progress");
    node.hidden = !p || typeof p !== "object";
    if (node.hidden) return;
    const fraction = p.total > 0 ? Math.min(1, Math.max(0, (p.done || 0) / p.total)) : 0;
    fill.style.width = `${(100 * fraction).toFixed(2)}%`;
    node.setAttribute("aria-valuemax", String(p.total ?? 0));
    node.setAttribute("aria-valuenow", String(p.done ?? 0));
    node.dataset.finished = String(p.total > 0 && p.done >= p.total);
    text.textContent = appProgressText(p);
  };
  draw();
  return { node, destroy: sglWatch(model, ["progress"], draw) };
}

/** The panels: one drawn alone, several as tabs. A tab's view mounts on first show and stays mounted (so it
 *  keeps updating); `panels` changes rebuild everything. */
function appPanels(model) {
  const node = sglEl("div", { class: "sglw-body" });
  let mounted = new Map(); // panel -> { destroy }
  let active = null;
  let buttons = new Map();
  let bodies = new Map();

  const mount = (panel) => {
    if (mounted.has(panel)) return;
    const body = bodies.get(panel);
    const fn = appMounter(panel);
    if (!fn) {
      body.append(sglEl("div", { class: "sglw-empty" }, `${APP_TITLES[panel] ?? panel}: view not available`));
      mounted.set(panel, { destroy() {} });
      return;
    }
    try {
      mounted.set(panel, fn(body, model) || { destroy() {} });
    } catch (error) {
      console.error(`sglbench: the ${panel} view failed`, error);
      body.append(sglEl("div", { class: "sglw-empty" }, `${APP_TITLES[panel] ?? panel}: view failed (${error})`));
      mounted.set(panel, { destroy() {} });
    }
  };
  const show = (panel) => {
    active = panel;
    for (const [name, button] of buttons) {
      button.setAttribute("aria-selected", String(name === panel));
      button.tabIndex = name === panel ? 0 : -1;
    }
    for (const [name, body] of bodies) body.hidden = name !== panel;
    mount(panel);
  };
  const teardown = () => {
    for (const view of mounted.values()) {
      try { view.destroy(); } catch (error) { console.error("sglbench: destroy failed", error); }
    }
    mounted = new Map();
    buttons = new Map();
    bodies = new Map();
    sglClear(node);
  };
  const build = () => {
    teardown();
    const wanted = model.get("panels") || [];
    const panels = APP_PANELS.filter((p) => wanted.includes(p));
    for (const panel of panels) {
      bodies.set(panel, sglEl("div", { class: "sglw-panel", "data-panel": panel, role: "tabpanel" }));
    }
    if (panels.length > 1) {
      const tabs = sglEl("div", { class: "sglw-tabs", role: "tablist", onkeydown: (event) => {
        const step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
        if (!step) return;
        const next = panels[(panels.indexOf(active) + step + panels.length) % panels.length];
        show(next);
        buttons.get(next).focus();
        event.preventDefault();
      } });
      for (const panel of panels) {
        const button = sglEl("button", { class: "sglw-tab", type: "button", role: "tab", "data-panel": panel,
                                          onclick: () => show(panel) }, APP_TITLES[panel]);
        buttons.set(panel, button);
        tabs.append(button);
      }
      node.append(tabs);
    }
    node.append(...bodies.values());
    if (panels.length) show(panels.includes(active) ? active : panels[0]);
  };
  build();
  const unwatch = sglWatch(model, ["panels"], build);
  return { node, destroy() { unwatch(); teardown(); } };
}

const sglWorkbench = {
  /** Draw the workbench into `el`; returns the cleanup that unsubscribes and destroys every view. */
  render({ model, el }) {
    const header = appHeader(model);
    const progress = appProgress(model);
    const panels = appPanels(model);
    const root = sglEl("div", { class: "sglw-root" }, [header.node, progress.node, panels.node]);
    // Outside JupyterLab (a report, another front end) the page's colour scheme picks the dark palette.
    const dark = matchMedia("(prefers-color-scheme: dark)");
    const scheme = () => root.classList.toggle("sglw-dark", dark.matches && !document.body.dataset.jpThemeLight);
    scheme();
    dark.addEventListener("change", scheme);
    const themeWatch = new MutationObserver(scheme);  // JupyterLab setting its theme attribute wins
    themeWatch.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-light"] });
    el.append(root);
    return () => {
      dark.removeEventListener("change", scheme);
      themeWatch.disconnect();
      header.destroy();
      progress.destroy();
      panels.destroy();
      root.remove();
    };
  },
};
export default sglWorkbench;
