/* trainlab command center: hash routes over the read-only JSON API, charts drawn with uPlot.
 *
 *   #/                       studies
 *   #/study/KEY?status=S     one study: small multiples, sortable table, metric vs hyperparameters
 *   #/run/ID                 one run: loss, accuracy, lr, update/weight ratios, grad norm, findings
 *
 * Text from the store only ever goes in through textContent (no innerHTML), so a run named
 * "<img onerror=...>" is just a name. While a page shows runs in progress it polls the API.
 * document.body.dataset.ready is set to the page's kind once all its charts are drawn (tests and the
 * benchmark wait for it); window.tlDrawnMs is when, in ms since navigation start, and on a study
 * page window.tlFirstScreenMs when the charts on the first screen were.
 */
"use strict";
(function () {
  const COLORS = ["#2563eb", "#e8590c", "#2b8a3e", "#c2255c", "#6741d9", "#0b7285", "#a61e4d", "#5c940d",
                  "#d9480f", "#364fc7", "#087f5b", "#862e9c"];
  const LOSS = "train/loss", VAL = "val/acc";
  let info = { poll_s: 3, ratio_band: [1e-4, 1e-2], checks: "checks", compare_max_runs: 24 };
  let generation = 0;          // bumped on every navigation; stale async work checks it and stops
  let pollTimer = null;
  let charts = [];             // uPlot instances of the current page (destroyed on navigation)
  const sortState = {};        // study key -> {key, dir}

  // ------------------------------------------------------------------------------ small helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "boolean") return String(v);
    if (typeof v === "number") {
      if (!isFinite(v)) return String(v);
      if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
      const a = Math.abs(v);
      if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
      return String(Number(v.toPrecision(4)));
    }
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(2) + " h";
  }
  async function api(path) {
    const r = await fetch(path, { headers: { accept: "application/json" }, cache: "no-store" });
    let body;
    try { body = await r.json(); } catch (e) { body = { error: r.status + " " + r.statusText }; }
    if (!r.ok) throw new Error(body.error || (r.status + " " + r.statusText));
    return body;
  }
  function setLive(text, isError) {
    const live = document.getElementById("live");
    live.textContent = text || "";
    live.classList.toggle("error", !!isError);
  }
  function crumbs(...parts) {
    const nav = document.getElementById("crumbs");
    nav.replaceChildren();
    parts.forEach((p, i) => {
      if (i) nav.append(el("span", { class: "sep", text: "/" }));
      nav.append(p.href ? el("a", { href: p.href, text: p.text }) : el("span", { text: p.text }));
    });
  }
  function statusPill(status) { return el("span", { class: "pill s-" + status, text: status }); }
  // the status as a pill, unless a finding of that name (diverged, failed, ...) shows it as a badge
  function statusAndBadges(status, list) {
    const shown = new Set();
    const unique = (list || []).filter(b => !shown.has(b.name) && shown.add(b.name));
    return [unique.some(b => b.name === status) ? null : statusPill(status), badges(unique)];
  }
  function badges(list) {
    return (list || []).map(b => el("span", { class: "badge sev-" + b.severity, title: b.message || b.name,
                                              text: b.name }));
  }
  function destroyCharts() { charts.forEach(u => u.destroy()); charts = []; }
  function afterPaint() { return new Promise(res => requestAnimationFrame(() => requestAnimationFrame(res))); }
  function markDrawn(kind) {
    window.tlDrawnMs = performance.now();
    document.body.dataset.ready = kind;
  }
  function schedule(fn, gen, seconds) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(() => { if (gen === generation) fn(); }, (seconds || info.poll_s) * 1000);
  }

  // ------------------------------------------------------------------------------ chart helpers
  // uPlot wants one ascending x array shared by every series; join (x, y...) tables on x, null where absent.
  function join(tables) {
    const xs = Array.from(new Set(tables.flatMap(t => t[0]))).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const out = [xs];
    for (const t of tables) {
      for (let s = 1; s < t.length; s++) {
        const ys = new Array(xs.length).fill(null);
        t[0].forEach((x, i) => { ys[index.get(x)] = t[s][i]; });
        out.push(ys);
      }
    }
    return out;
  }
  function positive(ys) { return ys.map(v => (v !== null && v > 0 ? v : null)); }
  function pointsSeries(label, color, size) {
    return { label, stroke: color, fill: color, width: 0, paths: () => null,
             points: { show: true, size: size || 3, stroke: color, fill: color, width: 0 } };
  }
  function lineSeries(label, color, extra) {
    return Object.assign({ label, stroke: color, width: 1.5, spanGaps: true, points: { show: false } }, extra || {});
  }
  function makeChart(target, opts, data) {
    const width = Math.max(200, Math.floor(target.clientWidth || 260));
    opts.axes = opts.axes || [{}, {}];
    if (!opts.axes[1].size) opts.axes[1].size = axisSize;
    withTicks(opts);
    const u = new uPlot(Object.assign({ width, height: opts.height || 180 }, opts), data, target);
    charts.push(u);
    addCsv(target, () => chartCsv(u), target.dataset.csv || "chart");
    return u;
  }
  // every axis without its own labels gets labels formatted for its range (log or linear)
  function withTicks(opts) {
    const scales = opts.scales || {};
    opts.axes.forEach((a, i) => {
      if (a.values) return;
      const scale = a.scale || (i === 0 ? "x" : "y");
      a.values = scales[scale] && scales[scale].distr === 3 ? logTicks : tickValues;
    });
    return opts;
  }
  // an axis as wide as its longest label (uPlot's axis-autosize demo), so 27,000 is not cut to 7,000
  function axisSize(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    let size = axis.ticks.size + axis.gap;
    const longest = (values || []).reduce((a, v) => (v && v.length > a.length ? v : a), "");
    if (longest) { u.ctx.font = axis.font[0]; size += u.ctx.measureText(longest).width / devicePixelRatio; }
    size = Math.ceil(size) + 2;
    // the labels change as the axis settles (uPlot sizes in up to 3 cycles): never shrink after the first,
    // so the cycles converge and the widest labels fit
    return cycleNum > 1 ? Math.max(size, axis._size || 0) : size;
  }
  // Tick labels formatted for their range. Linear: as many decimals as the tick spacing needs (0.0002,
  // 0.0004, not "0 0 0"), exponent form when the largest tick is huge or tiny (a diverged loss reaches
  // 1e21; a weight decay of 2e-5). Log: the powers of ten as 1e-3 (0.1 to 1000 plain), the ticks between
  // them labelled only when the axis spans less than two decades.
  function expo(v, digits) {
    return v.toExponential(digits).replace(/\.?0+e/, "e").replace("e+", "e");
  }
  // the decimals x needs (at most 8): 0.25 -> 2, 2.5 -> 1, 3 -> 0
  function decimalsOf(x) {
    for (let d = 0; d < 8; d++) {
      const s = Math.abs(x) * Math.pow(10, d);
      if (Math.abs(s - Math.round(s)) < 1e-6 * Math.max(1, s)) return d;
    }
    return 8;
  }
  function tickLabels(splits) {
    const finite = splits.filter(v => v !== null && v !== undefined && isFinite(v));
    if (!finite.length) return splits.map(() => "");
    const big = Math.max(...finite.map(Math.abs));
    const expoForm = big >= 1e5 || big < 1e-3;
    // one number of digits for every tick, enough for each (uPlot's splits are multiples of its spacing)
    const digits = Math.min(expoForm ? 3 : 8, Math.max(0, ...finite.filter(v => v !== 0).map(v =>
      expoForm ? decimalsOf(v / Math.pow(10, Math.floor(Math.log10(Math.abs(v)) + 1e-9))) : decimalsOf(v))));
    return splits.map(v => {
      if (v === null || v === undefined || !isFinite(v)) return "";
      if (v === 0) return "0";
      return expoForm ? expo(v, digits) : v.toFixed(digits);
    });
  }
  function tickValues(u, splits) { return tickLabels(splits); }
  function pow10(e) { return e >= -1 && e <= 3 ? String(Number(Math.pow(10, e).toPrecision(1))) : "1e" + e; }
  function logTicks(u, splits) {
    const pos = splits.filter(v => v > 0);
    const decades = pos.length ? Math.log10(Math.max(...pos) / Math.min(...pos)) : 0;
    return splits.map(v => {
      if (!(v > 0)) return "";
      const e = Math.log10(v), r = Math.round(e);
      if (Math.abs(e - r) < 1e-6) return pow10(r);
      const m = Math.round(v / Math.pow(10, Math.floor(e + 1e-9)));
      if (decades < 2 && (m === 2 || m === 5 || decades < 1)) return logLabel(v);
      return "";
    });
  }
  // log ticks in plain form for mid-range values (2e-1 -> 0.2), exponent form otherwise
  function logLabel(v) { const e = Math.floor(Math.log10(v) + 1e-9); return e >= -1 && e <= 3 ? String(Number(v.toPrecision(2))) : expo(v, 0); }
  function noData(target, text) { target.append(el("div", { class: "muted", text: text || "no data yet" })); }

  // ------------------------------------------------------------------------------ CSV download
  function csvCell(v) {
    if (v === null || v === undefined) return "";
    const s = typeof v === "object" ? JSON.stringify(v) : String(v);
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function csvText(header, rows) {
    return [header].concat(rows).map(r => r.map(csvCell).join(",")).join("\n") + "\n";
  }
  function download(name, text) {
    const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })),
                        download: name.replace(/[^A-Za-z0-9._-]+/g, "_") + ".csv" });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 0);
  }
  // a chart's data as drawn: one row per x, one column per series (uPlot's table)
  function chartCsv(u) {
    const header = u.series.map(s => s.label);
    return csvText(header, u.data[0].map((_, i) => u.data.map(col => col[i])));
  }
  // a "CSV" button in the panel (or card) holding target; getText builds the file when clicked
  // (a chart drawn again replaces what the button downloads)
  function addCsv(target, getText, name) {
    const holder = target.closest(".panel, .card");
    if (!holder) return;
    holder.tlCsv = { getText, name };
    if (holder.querySelector(":scope > .csv")) return;
    holder.append(el("button", { class: "csv", type: "button", title: "download this chart's data as CSV",
                                 text: "CSV", onclick: () => download(holder.tlCsv.name, holder.tlCsv.getText()) }));
  }

  // The band of healthy update/weight ratios, shaded under the series, with a dashed line at 1e-3.
  function bandHook(lo, hi) {
    return u => {
      const ctx = u.ctx, b = u.bbox;
      const y0 = u.valToPos(hi, "y", true), y1 = u.valToPos(lo, "y", true);
      const top = Math.max(b.top, Math.min(y0, y1)), bottom = Math.min(b.top + b.height, Math.max(y0, y1));
      ctx.save();
      if (bottom > top) { ctx.fillStyle = "rgba(46,125,50,0.10)"; ctx.fillRect(b.left, top, b.width, bottom - top); }
      const ym = u.valToPos(1e-3, "y", true);
      if (ym >= b.top && ym <= b.top + b.height) {
        ctx.strokeStyle = "rgba(46,125,50,0.7)"; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(b.left, ym); ctx.lineTo(b.left + b.width, ym); ctx.stroke();
      }
      ctx.restore();
    };
  }

  // ------------------------------------------------------------------------------ studies page
  async function showStudies(gen) {
    crumbs({ text: "studies" });
    const data = await api("/api/studies");
    if (gen !== generation) return;
    const app = document.getElementById("app");
    app.replaceChildren(el("h1", { text: "Studies" }));
    if (!data.studies.length) {
      app.append(el("p", { class: "muted", text: "No runs in this store yet. Train something: trainlab train" }));
    } else {
      const rows = data.studies.map(s => el("tr", { "data-key": s.key },
        el("td", {}, el("a", { href: "#/study/" + encodeURIComponent(s.key), text: s.name })),
        el("td", { class: "num", text: s.runs }),
        el("td", { class: "num", text: fmt(s.best_metric) }),
        el("td", {}, Object.entries(s.status).map(([k, n]) => el("span", { class: "pill s-" + k, text: k + " " + n }))),
        el("td", { text: when(s.last_activity) })));
      app.append(el("div", { class: "wide" }, el("table", { class: "grid", id: "studies" },
        el("thead", {}, el("tr", {}, ["study", "runs", "best val", "status", "last activity"].map(t => el("th", { text: t })))),
        el("tbody", {}, rows))));
    }
    markDrawn("studies");
    const running = data.studies.some(s => s.status.running);
    setLive(running ? "live: runs in progress" : "");
    if (running) schedule(() => refresh(gen, showStudies), gen);
  }

  async function refresh(gen, show) {
    try {
      await show(gen);
    } catch (e) {
      if (gen !== generation) return;
      setLive("update failed (" + e.message + "); retrying", true);
      schedule(() => refresh(gen, show), gen);
    }
  }

  // ------------------------------------------------------------------------------ study page
  function studyChartData(run) {
    const tables = [];
    const loss = run.loss, val = run.val;
    tables.push(loss ? [loss.x, loss.lo, loss.hi, loss.avg] : [[], [], [], []]);
    tables.push(val ? [val.x, val.mean] : [[], []]);
    return join(tables);
  }
  function studyChartOpts(title, valKey) {
    valKey = valKey || VAL;  // the task's metric: val/acc on [0, 1], or e.g. val/mse on its own range
    return withTicks({
      height: 150, legend: { show: false }, cursor: { points: { show: false } },
      scales: { x: { time: false }, acc: valKey === VAL ? { range: [0, 1] } : {} },
      axes: [
        { size: 26, font: "10px system-ui", ticks: { size: 3 } },
        { size: axisSize, values: tickValues, font: "10px system-ui", ticks: { size: 3 } },
        { scale: "acc", side: 1, size: 30, font: "10px system-ui", grid: { show: false }, ticks: { size: 3 } },
      ],
      series: [
        { label: "step" },
        pointsSeries("loss min", "rgba(37,99,235,0.25)", 2.5),
        pointsSeries("loss max", "rgba(37,99,235,0.25)", 2.5),
        lineSeries("loss (moving average)", "#1e40af"),
        lineSeries(valKey, "#e8590c", { scale: "acc", points: { show: true, size: 4 } }),
      ],
    });
  }
  function runLabel(run) { return run.name + " (#" + run.id + ")"; }

  // The doctor's findings every run of the study shares (the API takes them off each run): drawn once,
  // under the study's name, with how many runs and what to do. Nothing when there are none.
  function renderShared(data) {
    const shared = data.shared_findings || [];
    if (!shared.length) return el("div", { id: "shared-findings", hidden: true });
    return el("div", { class: "panel shared", id: "shared-findings" },
      el("h3", { text: "Every run of this study shares " + (shared.length === 1 ? "this finding" : "these findings") }),
      el("ul", { class: "findings" }, shared.map(f => el("li", { "data-finding": f.name },
        badges([f]), " ", el("span", { class: "runs", text: "all " + f.runs + " runs" }), " · ", f.message || "",
        // the API's evidence opens with the count shown just before it: "all 3 runs; e.g. run 7: ..."
        f.evidence ? el("span", { class: "evidence", text: String(f.evidence).replace(/^all \d+ runs; /, "") }) : null,
        f.action ? el("span", { class: "action", text: "try: " + f.action }) : null))));
  }

  function renderCard(run) {
    const chart = el("div", { class: "chart" });
    const card = el("div", { class: "card st-" + run.status, "data-run": run.id, "data-status": run.status },
      el("div", { class: "card-head" },
        pickBox(run.id),
        el("a", { class: "name", href: "#/run/" + run.id, title: runLabel(run), text: runLabel(run) }),
        el("span", { class: "badges" }, statusAndBadges(run.status, run.badges))),
      el("div", { class: "card-sub", title: run.reason || "",
                  text: "best " + (run.best_metric === null ? "–" : fmt(run.best_metric)) +
                        (run.reason ? " · " + run.reason : "") }),
      chart);
    return { card, chart };
  }

  const COLUMNS = [
    { key: "name", label: "run", get: r => r.name },
    { key: "id", label: "id", get: r => r.id, num: true },
    { key: "status", label: "status", get: r => r.status },
    { key: "best_metric", label: "best", get: r => r.best_metric, num: true },
    { key: "best_epoch", label: "best epoch", get: r => r.best_epoch, num: true },
    { key: "epochs", label: "epochs", get: r => r.epochs, num: true },
    { key: "test", label: "test acc", get: r => (r.summary || {})["test/acc"], num: true },
    { key: "seconds", label: "time", get: r => (r.summary || {}).seconds, num: true, show: duration },
  ];
  function compare(a, b) {
    const an = a === null || a === undefined, bn = b === null || b === undefined;
    if (an || bn) return an === bn ? 0 : an ? 1 : -1;        // missing values last either way
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function renderTable(data, key) {
    const hcols = data.hparams.map(h => ({ key: "hp:" + h.name, label: h.name, get: r => r.hparams[h.name],
                                           num: h.axis !== "category" }));
    const testKey = data.test_key || "test/acc";
    const cols = COLUMNS.map(c => (c.key === "best_metric" ? Object.assign({}, c, { label: data.metric })
      : c.key === "test" ? Object.assign({}, c, { label: testKey.replace("/", " "), get: r => (r.summary || {})[testKey] }) : c))
      .concat(hcols);
    const state = sortState[key] || { key: "id", dir: 1 };
    const col = cols.find(c => c.key === state.key) || cols[1];
    const rows = data.runs.slice().sort((a, b) => {
      const va = col.get(a), vb = col.get(b);
      const missing = (va === null || va === undefined) - (vb === null || vb === undefined);
      return missing || state.dir * compare(va, vb) || a.id - b.id;
    });
    const thead = el("tr", {}, el("th", { class: "pick-col", title: "compare" }, "⇄"), cols.map(c => el("th", {
      class: "sortable", "data-key": c.key, "aria-sort": c.key === col.key ? (state.dir > 0 ? "ascending" : "descending") : null,
      text: c.label,
      onclick: () => {
        sortState[key] = { key: c.key, dir: state.key === c.key ? -state.dir : (c.num ? -1 : 1) };
        const table = document.getElementById("runs-table");
        table.replaceWith(renderTable(data, key));
        applyFilter();
      },
    })));
    const body = rows.map(r => el("tr", { "data-run": r.id, "data-status": r.status }, el("td", { class: "pick-col" }, pickBox(r.id)), cols.map(c => {
      if (c.key === "name") return el("td", {}, el("a", { href: "#/run/" + r.id, text: r.name }));
      if (c.key === "status") return el("td", {}, statusAndBadges(r.status, r.badges));
      const v = c.get(r);
      return el("td", { class: c.num ? "num" : null, text: c.show ? c.show(v) : fmt(v) });
    })));
    return el("table", { class: "grid", id: "runs-table" }, el("thead", {}, thead), el("tbody", {}, body));
  }

  let currentFilter = "";
  function applyFilter() {
    document.querySelectorAll(".card[data-status], #runs-table tr[data-status]").forEach(n => {
      n.classList.toggle("hidden", !!currentFilter && n.dataset.status !== currentFilter);
    });
  }

  function scatter(target, h, runs, metric) {
    const pts = runs.filter(r => r.best_metric !== null && r.hparams[h.name] !== undefined && r.hparams[h.name] !== null);
    const cats = h.categories || [];
    const xOf = r => {
      const v = r.hparams[h.name];
      if (h.axis === "category") return cats.indexOf(typeof v === "string" ? v : JSON.stringify(v));
      return h.axis === "log" && v <= 0 ? null : v;
    };
    // completed runs filled, pruned and stopped ones hollow grey, failed and diverged ones red
    const group = r => (r.status === "completed" || r.status === "running" ? 0 : r.status === "pruned" || r.status === "stopped" ? 1 : 2);
    const xy = pts.map(r => [xOf(r), r.best_metric, group(r)]).filter(p => p[0] !== null).sort((a, b) => a[0] - b[0]);
    if (!xy.length) return noData(target, "no finished runs with a result");
    const opts = {
      height: 190, legend: { show: true, live: false }, cursor: { points: { show: false } },
      scales: { x: { time: false, distr: h.axis === "log" ? 3 : 1,
                     range: h.axis === "category" ? [-0.5, cats.length - 0.5] : undefined } },
      axes: [{ label: h.name + (h.axis === "log" ? " (log)" : ""), labelSize: 16, size: 28, font: "10px system-ui",
               splits: h.axis === "category" ? () => cats.map((_, i) => i) : undefined,
               values: h.axis === "category" ? (u, splits) => splits.map(i => cats[i] ?? "") : undefined },
             { label: metric, labelSize: 16, size: axisSize, font: "10px system-ui" }],
      series: [{ label: h.name },
               pointsSeries("completed", "rgba(37,99,235,0.8)", 7),
               { label: "pruned / stopped", stroke: "#6b7280", fill: "rgba(0,0,0,0)", width: 0, paths: () => null,
                 points: { show: true, size: 8, stroke: "#6b7280", fill: "#fff", width: 1.5 } },
               pointsSeries("failed / diverged", "rgba(198,40,40,0.85)", 6)],
    };
    const ys = [0, 1, 2].map(g => xy.map(p => (p[2] === g ? p[1] : null)));
    target.dataset.csv = h.name;
    makeChart(target, opts, [xy.map(p => p[0])].concat(ys));
  }

  // ------------------------------------------------------------------------------ comparing runs
  // The runs picked for the comparison chart, per study; every checkbox of a run shows the same state.
  const picked = {};           // study key -> Set of run ids
  const compareState = {};     // study key -> {key, log, smooth}
  let study = null;            // {key, data} of the study page on screen
  function pickSet() { return picked[study.key] || (picked[study.key] = new Set()); }
  function pickBox(id) {
    const box = el("input", { type: "checkbox", class: "pick", "data-pick": id, title: "compare this run",
                              "aria-label": "compare run " + id, onchange: e => togglePick(id, e.target.checked) });
    box.checked = !!study && pickSet().has(id);
    return box;
  }
  function togglePick(id, on) {
    const set = pickSet();
    if (on && set.size >= info.compare_max_runs) {
      setLive("at most " + info.compare_max_runs + " runs in one comparison", true);
      on = false;
    }
    if (on) set.add(id); else set.delete(id);
    document.querySelectorAll('input.pick[data-pick="' + id + '"]').forEach(b => { b.checked = on; });
    document.querySelectorAll('#parcoords path[data-run="' + id + '"]').forEach(p => p.classList.toggle("picked", on));
    drawCompare();
  }
  function defaultPicks(runs) {
    const ranked = runs.filter(r => r.best_metric !== null).sort((a, b) => b.best_metric - a.best_metric);
    return (ranked.length ? ranked : runs).slice(0, 5).map(r => r.id);
  }
  // trailing exponential moving average, debiased (as TensorBoard's smoothing), gaps kept as gaps
  function smooth(ys, a) {
    if (!a) return ys;
    let s = 0, n = 0;
    return ys.map(v => {
      if (v === null || v === undefined || !isFinite(v)) return null;
      s = a * s + (1 - a) * v; n++;
      return s / (1 - Math.pow(a, n));
    });
  }
  function compareControls(key) {
    const st = compareState[key] || (compareState[key] = { key: LOSS, log: false, smooth: 0.6 });
    const metric = el("select", { id: "compare-key", onchange: e => { st.key = e.target.value; drawCompare(); } },
                      el("option", { value: st.key, text: st.key }));
    const log = el("input", { type: "checkbox", id: "compare-log", onchange: e => { st.log = e.target.checked; drawCompare(true); } });
    log.checked = st.log;
    const out = el("span", { id: "compare-smooth-value", class: "num", text: st.smooth.toFixed(2) });
    const slider = el("input", { type: "range", id: "compare-smooth", min: 0, max: 0.99, step: 0.01, value: st.smooth,
                                 oninput: e => { st.smooth = Number(e.target.value); out.textContent = st.smooth.toFixed(2); drawCompare(true); } });
    return el("div", { class: "toolbar" },
      el("label", {}, "metric ", metric),
      el("label", {}, log, " log y"),
      el("label", {}, "smoothing ", slider, " ", out),
      el("button", { type: "button", id: "compare-clear", text: "clear", onclick: () => {
        [...pickSet()].forEach(id => togglePick(id, false)); } }),
      el("span", { class: "legend-note", id: "compare-note" }));
  }
  let compareData = null;      // the last /api/compare answer (redrawn without asking again on log/smoothing)
  let compareChart = null;
  async function drawCompare(local) {
    const target = document.getElementById("compare-chart");
    if (!target || !study) return;
    const gen = generation, key = study.key, st = compareState[key];
    const ids = [...pickSet()];
    delete document.body.dataset.compare;
    document.getElementById("compare-note").textContent = ids.length
      ? ids.length + " runs; hover for values. Pick runs with the boxes on the charts, in the table or on the lines below."
      : "";
    if (!ids.length) {
      compareData = null;
      if (compareChart) { compareChart.destroy(); charts = charts.filter(c => c !== compareChart); compareChart = null; }
      target.replaceChildren(el("div", { class: "muted", text: "no runs picked: tick the box of a run to compare it" }));
      document.body.dataset.compare = "empty";
      return;
    }
    if (!local || !compareData || compareData.key !== st.key) {
      const data = await api("/api/compare?runs=" + ids.join(",") + "&key=" + encodeURIComponent(st.key));
      if (gen !== generation || study.key !== key) return;
      if (ids.join(",") !== [...pickSet()].join(",")) return;   // picked again meanwhile: that call draws
      compareData = data;
      const select = document.getElementById("compare-key");
      select.replaceChildren(...data.keys.map(k => el("option", { value: k, text: k, selected: k === st.key })));
    }
    const runs = compareData.runs;
    const tables = runs.map(r => (r.series ? [r.series.x, smooth(r.series.mean, st.smooth)] : [[], []]));
    const data = join(tables);
    if (st.log) for (let i = 1; i < data.length; i++) data[i] = positive(data[i]);
    const opts = {
      height: 300, legend: { show: true, live: true },
      cursor: { points: { size: 7 } },
      scales: { x: { time: false }, y: st.log ? { distr: 3, log: 10 } : {} },
      axes: [{ label: "step", labelSize: 14 }, { label: st.key + (st.log ? " (log)" : ""), labelSize: 16 }],
      series: [{ label: "step" }].concat(runs.map((r, i) => lineSeries(runLabel(r) + (r.status !== "completed" ? " [" + r.status + "]" : ""),
        COLORS[i % COLORS.length], { width: 1.6, points: { size: 5 }, dash: r.status === "pruned" ? [6, 3] : r.status === "completed" ? undefined : [2, 3],
                                     value: (u, v) => (v === null || v === undefined ? "–" : fmt(v)) }))),
    };
    if (compareChart) { compareChart.destroy(); charts = charts.filter(c => c !== compareChart); }
    target.replaceChildren();
    target.dataset.csv = (study.data.study.name + "-" + st.key).replace(/\//g, "_");
    compareChart = makeChart(target, opts, data);
    const missing = runs.filter(r => !r.series).map(r => r.name);
    if (missing.length) target.append(el("div", { class: "muted", text: "no " + st.key + " in: " + missing.join(", ") }));
    document.body.dataset.compare = "ready";
  }

  // ------------------------------------------------------------------------------ parallel coordinates
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }
  function niceTicks(lo, hi) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / 4, p = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * p).find(s => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }
  // One vertical axis per hyperparameter that varies, then the metric; a line per run. Completed runs are
  // solid and coloured by the metric, pruned ones dashed grey, failed and diverged ones dotted red.
  function parcoords(target, data) {
    const metric = data.metric, runs = data.runs;
    const dims = data.hparams.map(h => ({ name: h.name, axis: h.axis, cats: h.categories || [],
                                          get: r => r.hparams[h.name] }))
      .concat([{ name: metric, axis: "linear", metric: true, get: r => r.best_metric }]);
    const width = Math.max(520, target.clientWidth || 600), height = 300;
    const top = 28, bottom = height - 46, left = 46, right = width - 46;
    const gap = dims.length > 1 ? (right - left) / (dims.length - 1) : 0;
    dims.forEach((d, i) => {
      d.x = dims.length > 1 ? left + i * gap : (left + right) / 2;
      const vals = runs.map(d.get).filter(v => v !== null && v !== undefined);
      if (d.axis === "category") {
        const n = d.cats.length;
        d.y = v => { const k = d.cats.indexOf(typeof v === "string" ? v : JSON.stringify(v));
                     return k < 0 ? null : n > 1 ? bottom - k * (bottom - top) / (n - 1) : (top + bottom) / 2; };
        d.ticks = d.cats.map(c => [d.y(c), c]);
      } else {
        const log = d.axis === "log";
        const nums = vals.filter(v => typeof v === "number" && isFinite(v) && (!log || v > 0)).map(v => (log ? Math.log10(v) : v));
        const lo = Math.min(...nums), hi = Math.max(...nums);
        const span = hi > lo ? hi - lo : 1;
        d.y = v => (typeof v !== "number" || !isFinite(v) || (log && v <= 0) || !nums.length) ? null
          : bottom - ((log ? Math.log10(v) : v) - (hi > lo ? lo : lo - 0.5)) / span * (bottom - top);
        if (!nums.length) d.ticks = [];
        else if (log) {
          const pows = [];
          for (let e = Math.ceil(lo - 1e-9); e <= hi + 1e-9; e++) pows.push(e);
          const at = pows.length >= 2 ? pows.map(e => Math.pow(10, e)) : [Math.pow(10, lo), Math.pow(10, hi)];
          d.ticks = at.map(v => [d.y(v), pows.length >= 2 ? pow10(Math.round(Math.log10(v))) : logLabel(v)]);
        } else {
          const ts = hi > lo ? niceTicks(lo, hi) : [lo];
          d.ticks = tickLabels(ts).map((label, k) => [d.y(ts[k]), label]);
        }
      }
    });
    const noneY = bottom + 20;
    const mvals = runs.map(r => r.best_metric).filter(v => v !== null && v !== undefined);
    const mlo = Math.min(...mvals), mhi = Math.max(...mvals);
    const ramp = v => {  // light orange (worst) -> dark blue (best)
      const t = mhi > mlo ? (v - mlo) / (mhi - mlo) : 1;
      const c0 = [240, 140, 60], c1 = [30, 64, 175];
      return "rgb(" + c0.map((c, k) => Math.round(c + (c1[k] - c) * t)).join(",") + ")";
    };
    const style = r => {
      if (r.status === "completed") return { cls: "completed", stroke: r.best_metric === null ? "#64748b" : ramp(r.best_metric) };
      if (r.status === "pruned") return { cls: "pruned", stroke: "#8a94a6", dash: "6 4" };
      if (r.status === "failed" || r.status === "diverged" || r.status === "lost") return { cls: "failed", stroke: "#c62828", dash: "2 3" };
      if (r.status === "running") return { cls: "running", stroke: "#1565c0" };
      return { cls: "other", stroke: "#64748b", dash: "8 3 2 3" };
    };
    const root = svg("svg", { id: "parcoords", width, height: height, viewBox: "0 0 " + width + " " + height, role: "img",
                              "aria-label": "parallel coordinates of the hyperparameters and " + metric });
    const lines = svg("g", { class: "lines" });
    const order = { pruned: 0, other: 1, failed: 2, running: 3, completed: 4 };
    runs.slice().sort((a, b) => order[style(a).cls] - order[style(b).cls] || (a.best_metric ?? -1) - (b.best_metric ?? -1))
      .forEach(r => {
        const s = style(r);
        const pts = dims.map(d => { const v = d.get(r); const y = v === null || v === undefined ? null : d.y(v);
                                    return [d.x, y === null ? noneY : y]; });
        const path = svg("path", { d: "M" + pts.map(p => p[0].toFixed(1) + " " + p[1].toFixed(1)).join(" L"),
          class: "pc-line pc-" + s.cls + (pickSet().has(r.id) ? " picked" : ""), stroke: s.stroke,
          "stroke-dasharray": s.dash || null, "data-run": r.id, "data-status": r.status },
          svg("title", {}, runLabel(r) + ", " + r.status + "\n" + dims.map(d => d.name + ": " + fmt(d.get(r))).join("\n")));
        path.addEventListener("click", () => togglePick(r.id, !pickSet().has(r.id)));
        lines.append(path);
      });
    root.append(lines);
    dims.forEach(d => {
      const g = svg("g", { class: "pc-axis", "data-axis": d.name });
      g.append(svg("line", { x1: d.x, x2: d.x, y1: top, y2: bottom }));
      g.append(svg("text", { x: d.x, y: top - 12, class: "pc-name", "text-anchor": "middle" },
                   d.name + (d.axis === "log" ? " (log)" : "")));
      (d.ticks || []).forEach(([y, label]) => {
        if (y === null || y === undefined) return;
        g.append(svg("line", { x1: d.x - 3, x2: d.x, y1: y, y2: y }));
        g.append(svg("text", { x: d.metric ? d.x + 5 : d.x - 5, y: y + 3, class: "pc-tick",
                               "text-anchor": d.metric ? "start" : "end" }, label));
      });
      g.append(svg("text", { x: d.metric ? d.x + 5 : d.x - 5, y: noneY + 3, class: "pc-tick pc-none",
                             "text-anchor": d.metric ? "start" : "end" }, "none"));
      root.append(g);
    });
    target.replaceChildren(root, el("div", { class: "legend-note pc-legend" },
      el("span", { class: "sw sw-completed" }), "completed (colour: " + metric + ", dark blue = best) ",
      el("span", { class: "sw sw-pruned" }), "pruned ",
      el("span", { class: "sw sw-failed" }), "failed / diverged ",
      el("span", { class: "sw sw-picked" }), "picked for comparison (click a line to pick it)"));
    addCsv(target, () => csvText(["id", "name", "status"].concat(dims.map(d => d.name)),
                                 runs.map(r => [r.id, r.name, r.status].concat(dims.map(d => d.get(r))))),
           data.study.name + "-hyperparameters");
  }

  // ------------------------------------------------------------------------------ importance
  async function showImportance(gen, key) {
    const target = document.getElementById("importance");
    if (!target) return;
    let imp;
    try { imp = await api("/api/studies/" + encodeURIComponent(key) + "/importance"); }
    catch (e) { imp = { available: false, note: "importance could not be computed: " + e.message, importances: [] }; }
    if (gen !== generation) return;
    const body = [];
    if (imp.available) {
      const top = Math.max(...imp.importances.map(i => i.importance), 1e-12);
      body.push(el("table", { class: "bars", id: "importance-table" }, el("tbody", {}, imp.importances.map(i =>
        el("tr", { "data-param": i.name }, el("td", { text: i.name }),
           el("td", { class: "bar-cell" }, el("span", { class: "bar", style: "width:" + (100 * i.importance / top).toFixed(1) + "%" })),
           el("td", { class: "num", text: i.importance.toFixed(3) }))))));
    }
    body.push(el("p", { class: "imp-note" + (imp.few ? " few" : ""), id: "importance-note", text: imp.note || "" }));
    if (imp.trials && Object.keys(imp.trials).length)
      body.push(el("p", { class: "legend-note", text: "trials: " + Object.entries(imp.trials).map(([s, n]) => s + " " + n).join(", ") +
                                                       (imp.evaluator ? "; " + imp.evaluator : "") }));
    if (imp.optuna_dashboard)
      body.push(el("p", { class: "legend-note" }, "history, contour, slice and intermediate values of this study: ",
                   el("code", { text: imp.optuna_dashboard })));
    target.replaceChildren(...body);
    if (imp.available) addCsv(target, () => csvText(["hyperparameter", "importance"], imp.importances.map(i => [i.name, i.importance])),
                              (imp.study || "study") + "-importance");
    document.body.dataset.importance = imp.available ? "ready" : "none";
  }

  async function showStudy(gen, key, query) {
    currentFilter = query.get("status") || "";
    const data = await api("/api/studies/" + encodeURIComponent(key));
    if (gen !== generation) return;
    performance.mark("tl:study-data");  // marks for the benchmark: data in, page built, charts made, painted
    crumbs({ text: "studies", href: "#/" }, { text: data.study.name });
    const app = document.getElementById("app");
    destroyCharts();
    compareChart = null; compareData = null;
    study = { key, data };
    if (!picked[key]) picked[key] = new Set(defaultPicks(data.runs));
    const filter = el("select", { id: "status-filter", onchange: e => {
      currentFilter = e.target.value;
      history.replaceState(null, "", "#/study/" + encodeURIComponent(key) + (currentFilter ? "?status=" + currentFilter : ""));
      applyFilter();
    } }, el("option", { value: "", text: "all statuses (" + data.runs.length + ")" }),
       Object.entries(data.status_counts).map(([s, n]) => el("option", { value: s, text: s + " (" + n + ")",
                                                                          selected: s === currentFilter })));
    const cards = el("div", { class: "cards", id: "cards" });
    const scatters = el("div", { class: "charts", id: "scatters" });
    const comparePanel = el("div", { class: "panel", id: "compare" }, compareControls(key),
                            el("div", { class: "chart", id: "compare-chart" }));
    const pcTarget = el("div", { class: "chart", id: "parcoords-chart" });
    const searchPanels = el("div", { class: "charts two" },
      el("div", { class: "panel", id: "parcoords-panel" },
         el("h3", { text: "hyperparameters and " + data.metric + ", one line per run" }), pcTarget),
      el("div", { class: "panel", id: "importance-panel" },
         el("h3", { text: "hyperparameter importance (Optuna)" }),
         el("div", { id: "importance" }, el("p", { class: "muted", text: "computing…" }))));
    app.replaceChildren(
      el("h1", { text: data.study.name }),
      renderShared(data),
      el("div", { class: "toolbar" }, el("label", {}, "show ", filter),
         el("span", {}, Object.entries(data.status_counts).map(([s, n]) => el("span", { class: "pill s-" + s, text: s + " " + n }))),
         el("span", { class: "legend-note", text: "per chart: training loss per step (faint: min/max per bucket; line: moving average), " +
                                                 (data.val_key || VAL) + " per epoch (orange, right axis)" })),
      cards,
      el("h2", { text: "Compare runs on shared axes" }),
      comparePanel,
      el("h2", { text: "Runs" }),
      el("div", { class: "wide" }, renderTable(data, key)),
      data.hparams.length ? el("h2", { text: "Hyperparameters" }) : "",
      data.hparams.length ? searchPanels : "",
      el("h2", { text: data.metric + " against each hyperparameter that varies" }),
      data.hparams.length ? scatters : el("p", { class: "muted", text: "all runs share their hyperparameters" }));
    const made = data.runs.map(run => { const m = renderCard(run); cards.append(m.card); return [run, m.chart]; });
    applyFilter();
    performance.mark("tl:study-dom");
    // size every chart from the first card's width: one layout pass, not one per chart
    const width = made.length ? Math.max(200, made[0][1].clientWidth) : 260;
    const draw = ([run, target]) => {
      if (!run.loss && !run.val) return noData(target);
      const u = new uPlot(Object.assign(studyChartOpts(run.name, data.val_key), { width }), studyChartData(run), target);
      charts.push(u);
      addCsv(target, () => chartCsv(u), run.name);
    };
    // the cards on screen first (one layout to find them), the rest a batch per frame, so the
    // first screen shows at once and the page stays responsive while 200 charts are drawn
    const fold = window.innerHeight + 200;
    const first = made.filter(m => m[1].getBoundingClientRect().top < fold);
    const rest = made.filter(m => !first.includes(m));
    first.forEach(draw);
    await afterPaint();
    if (gen !== generation) return;
    window.tlFirstScreenMs = performance.now();
    performance.mark("tl:study-first-screen");
    for (let i = 0; i < rest.length; i += 50) {
      rest.slice(i, i + 50).forEach(draw);
      await new Promise(res => requestAnimationFrame(res));
      if (gen !== generation) return;
    }
    performance.mark("tl:study-charts");
    if (data.hparams.length) parcoords(pcTarget, data);
    for (const h of data.hparams) {
      const panel = el("div", { class: "panel", "data-hparam": h.name },
                       el("h3", { text: h.name + (h.axis === "log" ? " (log axis)" : "") }));
      const target = el("div", { class: "chart" });
      panel.append(target);
      scatters.append(panel);
      scatter(target, h, data.runs, data.metric);
    }
    await afterPaint();
    if (gen !== generation) return;
    markDrawn("study");
    pollStudy(gen, key, data);
    drawCompare().catch(e => { if (gen === generation) setLive("comparison failed (" + e.message + ")", true); });
    if (data.hparams.length) showImportance(gen, key);
  }
  function pollStudy(gen, key, data) {
    const pending = data.doctor && data.doctor.pending;
    if (data.running) setLive("live: runs in progress, updating every " + info.poll_s + " s");
    else if (pending) setLive("diagnosing " + pending + " runs…");
    else setLive("");
    if (data.running || pending) schedule(() => refreshStudy(gen, key, data), gen);
  }

  // Polling a study: charts of runs that wrote since get new data; a new run or a changed set redraws all.
  async function refreshStudy(gen, key, old) {
    let data;
    try {
      data = await api("/api/studies/" + encodeURIComponent(key));
    } catch (e) {
      if (gen !== generation) return;
      setLive("update failed (" + e.message + "); retrying", true);
      return schedule(() => refreshStudy(gen, key, old), gen);
    }
    if (gen !== generation) return;
    const sameRuns = data.runs.length === old.runs.length && data.runs.every((r, i) => r.id === old.runs[i].id);
    if (!sameRuns || data.hparams.length !== old.hparams.length) {
      const y = window.scrollY;
      await showStudy(gen, key, new URLSearchParams(currentFilter ? "status=" + currentFilter : ""));
      window.scrollTo(0, y);
      return;
    }
    data.runs.forEach((run, i) => {
      const same = run.updated === old.runs[i].updated;
      if (same && JSON.stringify(run.badges) === JSON.stringify(old.runs[i].badges)) return;
      const card = document.querySelector('.card[data-run="' + run.id + '"]');
      const fresh = renderCard(run);
      const u = charts.find(c => c.root.parentNode === card.querySelector(".chart"));
      card.querySelector(".card-head").replaceWith(fresh.card.querySelector(".card-head"));
      card.querySelector(".card-sub").replaceWith(fresh.card.querySelector(".card-sub"));
      card.dataset.status = run.status;
      if (u && !same) u.setData(studyChartData(run));
    });
    const table = document.getElementById("runs-table");
    if (table) table.replaceWith(renderTable(data, key));
    const shared = document.getElementById("shared-findings");
    if (shared) shared.replaceWith(renderShared(data));
    applyFilter();
    pollStudy(gen, key, data);
  }

  // ------------------------------------------------------------------------------ run page
  function series(m, key) { return m.series[key] || null; }

  function runCharts(grid, run, m) {
    const panels = [];
    const panel = (title, note) => {
      const target = el("div", { class: "chart", "data-csv": run.name + "-" + title });
      const p = el("div", { class: "panel", "data-chart": title }, el("h3", { text: title }),
                   note ? el("div", { class: "legend-note", text: note }) : null, target);
      grid.append(p);
      panels.push(target);
      return target;
    };
    const lineOf = s => [s.x, s.mean];
    // loss: raw per step as faint min/max points, moving average, validation and eval losses per epoch
    const tl = series(m, LOSS);
    const lossTarget = panel("loss", "faint points: per-step training loss (min and max per bucket); line: moving average");
    const lossTables = [], lossSeries = [{ label: "step" }];
    if (tl) {
      lossTables.push([tl.x, tl.lo, tl.hi, tl.avg]);
      lossSeries.push(pointsSeries("train/loss min", "rgba(37,99,235,0.25)", 3),
                      pointsSeries("train/loss max", "rgba(37,99,235,0.25)", 3),
                      lineSeries("train/loss (moving average)", "#1e40af", { width: 2 }));
    }
    [["val/loss", "#e8590c"], ["train/loss_eval", "#2b8a3e"]].forEach(([k, c]) => {
      const s = series(m, k);
      if (s) { lossTables.push(lineOf(s)); lossSeries.push(lineSeries(k, c, { points: { show: true, size: 5 } })); }
    });
    if (lossTables.length) makeChart(lossTarget, { scales: { x: { time: false } }, series: lossSeries }, join(lossTables));
    else noData(lossTarget);

    const head = ((run.summary || {}).metrics || {}).headline || "acc";  // the task's metric: acc, mse, ...
    const accTarget = panel(head === "acc" ? "accuracy" : head);
    const accKeys = [["train/" + head, "#2b8a3e"], ["val/" + head, "#e8590c"]].filter(([k]) => series(m, k));
    if (accKeys.length) {
      makeChart(accTarget, { scales: { x: { time: false } },
        series: [{ label: "step" }].concat(accKeys.map(([k, c]) => lineSeries(k, c, { points: { show: true, size: 5 } }))) },
        join(accKeys.map(([k]) => lineOf(series(m, k)))));
    } else noData(accTarget);

    const lrTarget = panel("learning rate");
    const lr = series(m, "lr");
    if (lr) makeChart(lrTarget, { scales: { x: { time: false } }, series: [{ label: "step" }, lineSeries("lr", "#6741d9")] }, lineOf(lr));
    else noData(lrTarget);

    const band = run.ratio_band || info.ratio_band;
    const ratioTarget = panel("update/weight ratio per layer",
      "log scale; shaded: the healthy band " + band[0] + "–" + band[1] + ", dashed: 1e-3");
    const ratioKeys = Object.keys(m.series).filter(k => k.startsWith("ratio/")).sort();
    if (ratioKeys.length) {
      makeChart(ratioTarget, {
        height: 240, scales: { x: { time: false }, y: { distr: 3, log: 10 } },
        hooks: { drawClear: [bandHook(band[0], band[1])] },
        series: [{ label: "step" }].concat(ratioKeys.map((k, i) => lineSeries(k.slice(6), COLORS[i % COLORS.length], { width: 1.2 }))),
      }, join(ratioKeys.map(k => [m.series[k].x, positive(m.series[k].mean)])));
    } else noData(ratioTarget, "no ratios measured (monitor_every = 0?)");

    const gn = series(m, "grad_norm");
    const gnTarget = panel("gradient norm");
    if (gn) makeChart(gnTarget, { scales: { x: { time: false } }, series: [{ label: "step" }, lineSeries("grad norm", "#c2255c")] }, lineOf(gn));
    else noData(gnTarget);

    const shown = new Set([LOSS, "val/loss", "train/loss_eval", "train/acc", "val/acc", "lr", "grad_norm"].concat(ratioKeys));
    Object.keys(m.series).filter(k => !shown.has(k)).sort().forEach((k, i) => {
      const target = panel(k);
      makeChart(target, { height: 150, scales: { x: { time: false } },
                          series: [{ label: "step" }, lineSeries(k, COLORS[(i + 4) % COLORS.length], { points: { show: true, size: 4 } })] },
                lineOf(m.series[k]));
    });
    return panels;
  }

  function kvList(obj) {
    return el("dl", { class: "kv" }, Object.entries(obj).map(([k, v]) => [el("dt", { text: k }), el("dd", { text: fmt(v) })]));
  }

  async function showRun(gen, id) {
    const [run, m] = await Promise.all([api("/api/runs/" + id), api("/api/runs/" + id + "/metrics")]);
    if (gen !== generation) return;
    const studyName = run.study !== null ? run.study : run.study_key === info.checks ? "(checks)" : "(no study)";
    crumbs({ text: "studies", href: "#/" }, { text: studyName, href: "#/study/" + encodeURIComponent(run.study_key) },
           { text: run.name });
    destroyCharts();
    const app = document.getElementById("app");
    const grid = el("div", { class: "charts", id: "run-charts" });
    const findings = run.findings.length
      ? el("ul", { class: "findings" }, run.findings.map(f => el("li", { "data-finding": f.name }, badges([f]), " ", f.message,
          f.confidence ? el("span", { class: "muted", text: " (" + f.confidence + " confidence)" }) : null,
          f.evidence ? el("span", { class: "evidence", text: typeof f.evidence === "string" ? f.evidence : JSON.stringify(f.evidence, null, 1) }) : null,
          f.action ? el("span", { class: "action", text: "try: " + f.action }) : null)))
      : el("p", { class: "muted", text: !run.doctor ? "none (this trainlab has no learning-curve doctor)"
                                       : run.status === "running" ? "none yet (in progress)" : "none: the curves look healthy" });
    const summary = Object.assign({ status: run.status, reason: run.reason, kind: run.kind, [("best " + (run.hparams.early_stop_metric || "metric"))]: run.best_metric,
      "best epoch": run.best_epoch, epochs: run.epochs, seed: run.seed, host: run.host, created: when(run.created),
      finished: when(run.finished), checkpoint: run.checkpoint || "none" }, run.summary);
    app.replaceChildren(
      el("h1", {}, run.name + " ", el("span", { class: "muted", text: "#" + run.id + " " }), statusAndBadges(run.status, run.findings)),
      grid,
      el("div", { class: "charts" },
        el("div", { class: "panel" }, el("h3", { text: "findings" }), findings),
        el("div", { class: "panel", id: "result" }, el("h3", { text: "result" }), kvList(summary)),
        el("div", { class: "panel", id: "hparams" }, el("h3", { text: "hyperparameters" }), kvList(run.hparams))));
    runCharts(grid, run, m);
    await afterPaint();
    if (gen !== generation) return;
    markDrawn("run");
    setLive(run.status === "running" ? "live: in progress, updating every " + info.poll_s + " s" : "");
    if (run.status === "running") schedule(() => refreshRun(gen, id, run.updated), gen);
  }

  async function refreshRun(gen, id, updated) {
    try {
      const run = await api("/api/runs/" + id);
      if (gen !== generation) return;
      if (run.updated === updated) return schedule(() => refreshRun(gen, id, updated), gen);
      const y = window.scrollY;
      await showRun(gen, id);
      window.scrollTo(0, y);
    } catch (e) {
      if (gen !== generation) return;
      setLive("update failed (" + e.message + "); retrying", true);
      schedule(() => refreshRun(gen, id, updated), gen);
    }
  }

  // ------------------------------------------------------------------------------ routing
  async function route() {
    const gen = ++generation;
    clearTimeout(pollTimer);
    delete document.body.dataset.ready;
    setLive("");
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, qs] = hash.split("?");
    const query = new URLSearchParams(qs || "");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    try {
      if (parts.length === 0) await showStudies(gen);
      else if (parts[0] === "study" && parts.length === 2) await showStudy(gen, parts[1], query);
      else if (parts[0] === "run" && parts.length === 2 && /^[0-9]+$/.test(parts[1])) await showRun(gen, parts[1]);
      else throw new Error("no page " + location.hash);
    } catch (e) {
      if (gen !== generation) return;
      destroyCharts();
      document.getElementById("app").replaceChildren(el("div", { class: "error-box", text: e.message }),
                                                     el("p", {}, el("a", { href: "#/", text: "back to the studies" })));
      markDrawn("error");
    }
  }

  window.tlTicks = { tickLabels, logTicks: splits => logTicks(null, splits) };  // for the tests
  window.addEventListener("hashchange", () => { window.scrollTo(0, 0); route(); });
  api("/api/info").then(i => { info = i; }, () => {}).finally(route);
})();
