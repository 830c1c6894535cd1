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
  let info = { poll_s: 3, ratio_band: [1e-4, 1e-2] };
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
    const yLog = opts.scales && opts.scales.y && opts.scales.y.distr === 3;
    if (!opts.axes[1].values && !yLog) opts.axes[1].values = tickValues;  // log axes keep uPlot's sparse labels
    const u = new uPlot(Object.assign({ width, height: opts.height || 180 }, opts), data, target);
    charts.push(u);
    return u;
  }
  // an axis as wide as its longest label (uPlot's axis-autosize demo), so 27,000 is not cut to 7,000
  function axisSize(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    if (cycleNum > 1) return axis._size;
    let size = axis.ticks.size + axis.gap;
    const longest = (values || []).reduce((a, v) => (v && v.length > a.length ? v : a), "");
    if (longest) { u.ctx.font = axis.font[0]; size += u.ctx.measureText(longest).width / devicePixelRatio; }
    return Math.ceil(size) + 2;
  }
  // tick labels: exponent form for huge and tiny values (a diverged loss reaches 1e21), plain otherwise
  function tickValues(u, splits) {
    return splits.map(v => {
      if (v === null || v === undefined) return "";
      const a = Math.abs(v);
      if (a !== 0 && (a >= 1e5 || a < 1e-4)) return v.toExponential(1).replace(".0e", "e");
      return String(Number(v.toPrecision(6)));
    });
  }
  function noData(target, text) { target.append(el("div", { class: "muted", text: text || "no data yet" })); }

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
    return {
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
    };
  }
  function runLabel(run) { return run.name + " (#" + run.id + ")"; }

  function renderCard(run) {
    const chart = el("div", { class: "chart" });
    const card = el("div", { class: "card", "data-run": run.id, "data-status": run.status },
      el("div", { class: "card-head" },
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
    const thead = el("tr", {}, cols.map(c => el("th", {
      class: "sortable", "data-key": c.key, "aria-sort": c.key === col.key ? (state.dir > 0 ? "ascending" : "descending") : null,
      text: c.label,
      onclick: () => {
        sortState[key] = { key: c.key, dir: state.key === c.key ? -state.dir : (c.num ? -1 : 1) };
        const table = document.getElementById("runs-table");
        table.replaceWith(renderTable(data, key));
        applyFilter();
      },
    })));
    const body = rows.map(r => el("tr", { "data-run": r.id, "data-status": r.status }, cols.map(c => {
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
    const xy = pts.map(r => [xOf(r), r.best_metric]).filter(p => p[0] !== null).sort((a, b) => a[0] - b[0]);
    if (!xy.length) return noData(target, "no finished runs with a result");
    const opts = {
      height: 170, legend: { show: false }, cursor: { points: { show: false } },
      scales: { x: { time: false, distr: h.axis === "log" ? 3 : 1,
                     range: h.axis === "category" ? [-0.5, cats.length - 0.5] : undefined } },
      axes: [{ label: h.name + (h.axis === "log" ? " (log)" : ""), labelSize: 16, size: 28, font: "10px system-ui",
               splits: h.axis === "category" ? () => cats.map((_, i) => i) : undefined,
               values: h.axis === "category" ? (u, splits) => splits.map(i => cats[i] ?? "") : undefined },
             { label: metric, labelSize: 16, size: 40, font: "10px system-ui" }],
      series: [{ label: h.name }, pointsSeries(metric, "rgba(37,99,235,0.75)", 6)],
    };
    makeChart(target, opts, [xy.map(p => p[0]), xy.map(p => p[1])]);
  }

  async function showStudy(gen, key, query) {
    currentFilter = query.get("status") || "";
    const data = await api("/api/studies/" + encodeURIComponent(key));
    if (gen !== generation) return;
    performance.mark("tl:study-data");  // marks for the benchmark: data in, page built, charts made, painted
    crumbs({ text: "studies", href: "#/" }, { text: data.study.name });
    const app = document.getElementById("app");
    destroyCharts();
    const filter = el("select", { id: "status-filter", onchange: e => {
      currentFilter = e.target.value;
      history.replaceState(null, "", "#/study/" + encodeURIComponent(key) + (currentFilter ? "?status=" + currentFilter : ""));
      applyFilter();
    } }, el("option", { value: "", text: "all statuses (" + data.runs.length + ")" }),
       Object.entries(data.status_counts).map(([s, n]) => el("option", { value: s, text: s + " (" + n + ")",
                                                                          selected: s === currentFilter })));
    const cards = el("div", { class: "cards", id: "cards" });
    const scatters = el("div", { class: "charts", id: "scatters" });
    app.replaceChildren(
      el("h1", { text: data.study.name }),
      el("div", { class: "toolbar" }, el("label", {}, "show ", filter),
         el("span", {}, Object.entries(data.status_counts).map(([s, n]) => el("span", { class: "pill s-" + s, text: s + " " + n }))),
         el("span", { class: "legend-note", text: "per chart: training loss per step (faint: min/max per bucket; line: moving average), " +
                                                 (data.val_key || VAL) + " per epoch (orange, right axis)" })),
      cards,
      el("h2", { text: "Runs" }),
      el("div", { class: "wide" }, renderTable(data, key)),
      el("h2", { text: data.metric + " against each hyperparameter that varies" }),
      data.hparams.length ? scatters : el("p", { class: "muted", text: "all runs share their hyperparameters" }));
    const made = data.runs.map(run => { const m = renderCard(run); cards.append(m.card); return [run, m.chart]; });
    applyFilter();
    performance.mark("tl:study-dom");
    // size every chart from the first card's width: one layout pass, not one per chart
    const width = made.length ? Math.max(200, made[0][1].clientWidth) : 260;
    const draw = ([run, target]) => {
      if (!run.loss && !run.val) return noData(target);
      charts.push(new uPlot(Object.assign(studyChartOpts(run.name, data.val_key), { width }), studyChartData(run), target));
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
    applyFilter();
    pollStudy(gen, key, data);
  }

  // ------------------------------------------------------------------------------ run page
  function series(m, key) { return m.series[key] || null; }

  function runCharts(grid, run, m) {
    const panels = [];
    const panel = (title, note) => {
      const target = el("div", { class: "chart" });
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
    const studyName = run.study === null ? "(no study)" : run.study;
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

  window.addEventListener("hashchange", () => { window.scrollTo(0, 0); route(); });
  api("/api/info").then(i => { info = i; }, () => {}).finally(route);
})();
