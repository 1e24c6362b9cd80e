// The live timeline: server-sent min/max columns (decimated on the server), drawn with uPlot.
// window.__ef exposes frame and draw figures for the benchmark (bench/console_live.py).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const listEl = $("series-list"), chartEl = $("chart"), statusEl = $("status");
  const palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22"];
  const params = new URLSearchParams(location.search);
  let selected = (params.get("series") || "").split(",").filter(Boolean);
  let meta = {};          // id → {label, unit, kind, points}
  let columns = {};       // id → Map(column index → [min, max])
  let lastT = {};         // id → newest time (ns) the server has for it
  let colNs = 0, nowCol = 0, width = 800;
  let plot = null, source = null, paused = false, zoomed = false, dirty = false;
  const perf = window.__ef = {frames: 0, draws: 0, drawn: [], messages: 0, errors: 0};

  function windowS() { return Number($("window").value); }

  function colorOf(id) {
    const base = meta[id] && meta[id].kind === "shadow" ? id.replace("/shadow/", "/results/") : id;
    let h = 0;
    for (const c of base) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    return palette[h % palette.length];
  }

  async function loadSeries() {
    try {
      const r = await fetch("/api/live/series");
      if (!r.ok) return;
      const body = await r.json();
      meta = Object.fromEntries(body.series.map((s) => [s.id, s]));
      renderList();
      renderLatest();
    } catch (e) { /* the page goes on; the next poll tries again */ }
  }

  // New series are added in place: the rows already there stay (a click on one is never lost).
  const rows = new Map();
  function renderList() {
    const filter = $("series-filter").value.toLowerCase();
    const ids = Object.keys(meta).sort();
    for (const id of ids) {
      if (rows.has(id)) continue;
      const s = meta[id];
      const label = document.createElement("label");
      label.setAttribute("role", "listitem");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = id;
      box.checked = selected.includes(id);
      box.addEventListener("change", () => {
        selected = box.checked ? [...selected, id] : selected.filter((x) => x !== id);
        restart();
      });
      label.append(box, ` ${s.label}${s.unit ? ` [${s.unit}]` : ""}`);
      label.title = id;
      rows.set(id, label);
    }
    ids.forEach((id, i) => {
      const label = rows.get(id);
      if (listEl.children[i] !== label) listEl.insertBefore(label, listEl.children[i] || null);
      label.hidden = !label.textContent.toLowerCase().includes(filter);
    });
  }

  function buildPlot() {
    if (plot) { plot.destroy(); plot = null; }
    if (!window.uPlot || !selected.length) return;
    const units = [...new Set(selected.map((id) => (meta[id] && meta[id].unit) || ""))];
    const scales = {x: {time: true}};
    for (const u of units) scales[u || "_"] = {auto: true};
    const axes = [{}, ...units.map((u, i) => ({
      scale: u || "_", label: u || "value", side: i % 2 ? 1 : 3, grid: {show: i === 0},
    }))];
    const series = [{}, ...selected.map((id) => {
      const s = meta[id] || {label: id, unit: "", kind: ""};
      return {
        label: `${s.label}${s.unit ? ` [${s.unit}]` : ""}`,
        stroke: colorOf(id),
        dash: s.kind === "shadow" ? [6, 4] : undefined,
        scale: s.unit || "_",
        spanGaps: true,
        points: {show: false},
        width: 1.25,
      };
    })];
    plot = new uPlot({
      width: Math.max(300, chartEl.clientWidth),
      height: 380,
      scales, axes, series,
      cursor: {drag: {x: true, y: false, setScale: false}},
      hooks: {
        setSelect: [(u) => { if (u.select.width > 2) zoomTo(u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x")); }],
        setScale: [showRange],
        draw: [() => drew()],
      },
    }, emptyData(), chartEl);
  }

  function emptyData() { return [[], ...selected.map(() => [])]; }

  // The newest point drawn per series, with when: the benchmark's latency from edge to screen.
  let drawnLast = {};
  function drew() {
    perf.draws++;
    if (zoomed) return;
    const at = performance.timeOrigin + performance.now();
    for (const id of selected) {
      const t = lastT[id];
      if (t && t !== drawnLast[id]) {
        drawnLast[id] = t;
        perf.drawn.push([id, t, at]);
      }
    }
    if (perf.drawn.length > 20000) perf.drawn.splice(0, 10000);
  }

  function liveData() {
    const lo = nowCol - width + 1;
    const x = new Array(2 * width);
    const ys = selected.map(() => new Array(2 * width).fill(null));
    for (let i = 0; i < width; i++) {
      const c = lo + i, t0 = (c * colNs) / 1e9, half = colNs / 4e9;
      x[2 * i] = t0 + half;
      x[2 * i + 1] = t0 + 3 * half;
    }
    selected.forEach((id, k) => {
      const cols = columns[id];
      if (!cols) return;
      for (const [c, mm] of cols) {
        const i = c - lo;
        if (i < 0 || i >= width) { if (i < 0) cols.delete(c); continue; }
        ys[k][2 * i] = mm[0];
        ys[k][2 * i + 1] = mm[1];
      }
    });
    return [x, ...ys];
  }

  function frame() {
    perf.frames++;
    if (dirty && plot && !paused && !zoomed) {
      dirty = false;
      plot.setData(liveData());
    }
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);

  function onColumns(body) {
    perf.messages++;
    colNs = body.col_ns;
    nowCol = body.first + body.count - 1;
    for (const [id, s] of Object.entries(body.series)) {
      const cols = columns[id] || (columns[id] = new Map());
      for (let i = 0; i < body.count; i++) {
        if (s.min[i] === null) continue;
        cols.set(body.first + i, [s.min[i], s.max[i]]);
      }
      lastT[id] = s.last_t;
    }
    dirty = true;
  }

  function restart() {
    if (source) { source.close(); source = null; }
    columns = {}; lastT = {}; drawnLast = {};
    const url = new URL(location.href);
    if (selected.length) url.searchParams.set("series", selected.join(","));
    else url.searchParams.delete("series");
    history.replaceState(null, "", url);
    exitZoom();
    buildPlot();
    if (!selected.length) { statusEl.textContent = "choose series on the left; drag on the chart to zoom"; return; }
    width = Math.max(100, Math.min(2000, Math.round(chartEl.clientWidth || 800)));
    const q = new URLSearchParams({series: selected.join(","), window_s: windowS(), width});
    source = new EventSource(`/api/live/stream?${q}`);
    source.onmessage = (ev) => onColumns(JSON.parse(ev.data));
    source.onopen = () => { statusEl.textContent = paused ? "paused" : "live"; };
    source.onerror = () => { perf.errors++; statusEl.textContent = "reconnecting…"; };
  }

  async function zoomTo(minS, maxS) {
    if (!plot) return;
    zoomed = true;
    $("unzoom").disabled = false;
    statusEl.textContent = "zoomed (live updates held)";
    const q = new URLSearchParams({series: selected.join(","), start_ms: minS * 1e3, end_ms: maxS * 1e3, width});
    const r = await fetch(`/api/live/range?${q}`);
    if (!r.ok) return;
    const body = await r.json();
    const x = [];
    for (let i = 0; i < body.count; i++) {
      const t0 = ((body.first + i) * body.col_ns) / 1e9, q4 = body.col_ns / 4e9;
      x.push(t0 + q4, t0 + 3 * q4);
    }
    const ys = selected.map((id) => {
      const s = body.series[id];
      const y = [];
      for (let i = 0; i < body.count; i++) y.push(s ? s.min[i] : null, s ? s.max[i] : null);
      return y;
    });
    // the x axis spans the selection exactly (not the first and last column's points)
    plot.setData([x, ...ys], false);
    plot.setScale("x", {min: minS, max: maxS});
    plot.setSelect({left: 0, top: 0, width: 0, height: 0}, false);
  }

  // What the x axis spans once uPlot applied a zoom (it sets scales after the call returns).
  function showRange(u, key) {
    if (key !== "x" || !zoomed) return;
    const {min, max} = u.scales.x;
    $("zoom-range").hidden = false;
    $("zoom-range").textContent = `zoomed to ${ef.time(min * 1e9)} – ${ef.time(max * 1e9)} (${(max - min).toFixed(1)} s)`;
  }

  function exitZoom() {
    zoomed = false;
    $("zoom-range").hidden = true;
    $("unzoom").disabled = true;
    dirty = true;
    statusEl.textContent = paused ? "paused" : "live";
  }

  function renderLatest() {
    const body = $("latest").tBodies[0];
    body.replaceChildren(...selected.map((id) => {
      const tr = document.createElement("tr");
      tr.dataset.series = id;
      const cols = columns[id];
      let last = null;
      if (cols && cols.size) last = cols.get(Math.max(...cols.keys()))[1];
      const s = meta[id] || {label: id, unit: "", points: 0};
      for (const [text, cls] of [[s.label], [s.unit || ""], [last === null ? "-" : last.toPrecision(6), "value"], [s.points]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      return tr;
    }));
  }

  // What the chart shows, as CSV: one row per drawn point (each column's min and max) inside
  // the x axis's range, a column per series; a person pastes it into a spreadsheet.
  function shownCsv() {
    if (!plot) return "";
    const [x, ...ys] = plot.data;
    const lo = plot.scales.x.min, hi = plot.scales.x.max;
    const quote = (text) => (/[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text);
    const lines = [["time", ...plot.series.slice(1).map((s) => s.label)].map(quote).join(",")];
    for (let i = 0; i < x.length; i++) {
      if (x[i] < lo || x[i] > hi || ys.every((y) => y[i] === null || y[i] === undefined)) continue;
      const t = new Date(x[i] * 1e3).toISOString();
      lines.push([t, ...ys.map((y) => (y[i] === null || y[i] === undefined ? "" : String(y[i])))].join(","));
    }
    return `${lines.join("\n")}\n`;
  }

  $("copy-csv").addEventListener("click", async () => {
    const csv = shownCsv();
    if (!csv) { statusEl.textContent = "nothing to copy: choose series first"; return; }
    await ef.copy(csv);
    $("copied").textContent = `copied ${csv.split("\n").length - 2} rows`;
  });
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(paused));
    statusEl.textContent = paused ? "paused" : "live";
    dirty = true;
  });
  $("unzoom").addEventListener("click", exitZoom);
  $("window").addEventListener("change", restart);
  $("series-filter").addEventListener("input", renderList);
  if (!window.uPlot) statusEl.textContent = "uPlot is missing: the timeline cannot draw (see above)";

  $("watch-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const topics = $("watch-topics").value.split(",").map((t) => t.trim()).filter(Boolean);
    const r = await fetch("/api/live/watch", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({site: $("watch-site").value.trim(), topics}),
    });
    const body = await r.json();
    $("watch-said").textContent = r.ok ? body.result.message : body.error.message;
    loadSeries();
  });

  loadSeries().then(restart);
  setInterval(loadSeries, 3000);
  setInterval(() => { if (!paused) renderLatest(); }, 500);
})();
