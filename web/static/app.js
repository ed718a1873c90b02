// ebb dashboard. Plain JavaScript, no framework; uPlot draws the charts.
//
// Everything shown comes from ebb's management API, called with the
// operator's key (kept in sessionStorage, sent as a bearer token). Function
// output (logs, results, shadow examples, names) is untrusted: it is only
// ever put on the page as text (textContent), never parsed as HTML.
(function () {
  "use strict";

  const KEY = "ebb.apiKey";
  const REFRESH_MS = 5000;
  const MAX_LOG_LINES = 500;

  // What the page drew, for people poking around in devtools and for the
  // browser test: chart name → {labels, data}.
  const state = { charts: {}, view: "", loaded: 0 };
  window.ebbDashboard = state;

  const $ = (id) => document.getElementById(id);

  // el makes an element. Strings among children become text nodes, so
  // nothing here can turn data into markup.
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k === "title") e.title = String(v);
      else if (k === "href") e.href = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // ---- formatting (every input may be missing or of the wrong type) ------

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  function fmtInt(v) {
    return isNum(v) ? Math.round(v).toLocaleString("en-US") : "–";
  }
  function fmtNum(v, digits) {
    if (!isNum(v)) return "–";
    if (v !== 0 && Math.abs(v) < 0.01) return v.toExponential(1);
    return v.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 2 : digits });
  }
  function fmtTime(v) {
    if (typeof v !== "string" || v === "" || v.startsWith("0001-")) return "–";
    const d = new Date(v);
    return isNaN(d) ? "–" : d.toLocaleString();
  }
  function str(v) {
    return typeof v === "string" ? v : v === undefined || v === null ? "" : String(v);
  }
  const arr = (v) => (Array.isArray(v) ? v : []);
  const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});

  function card(k, v, cls) {
    return el("div", { class: "card" }, el("span", { class: "k", text: k }), el("span", { class: "v " + (cls || ""), text: v }));
  }

  // ---- the API ------------------------------------------------------------

  class APIError extends Error {
    constructor(status, type, message) {
      super(message || "HTTP " + status);
      this.status = status;
      this.type = type || "";
    }
  }

  function authHeaders() {
    const k = sessionStorage.getItem(KEY);
    return k ? { Authorization: "Bearer " + k } : {};
  }

  async function errorOf(res) {
    let type = "", msg = "";
    try {
      const j = await res.json();
      type = str(obj(j).errorType);
      msg = str(obj(j).errorMessage);
    } catch (_) { /* not JSON */ }
    return new APIError(res.status, type, msg || res.status + " " + res.statusText);
  }

  // api GETs path and parses its JSON. 401 asks for a key (once: the
  // form stays up until one works); 403 is reported where it happened.
  async function api(path, signal) {
    const sent = sessionStorage.getItem(KEY);
    const res = await fetch(path, { headers: authHeaders(), signal, cache: "no-store" });
    if (!res.ok) {
      const err = await errorOf(res);
      if (res.status === 401) refused(sent, signal, err);
      throw err;
    }
    return res.json();
  }

  // refused asks for a key after a 401, unless the answer is stale: its
  // view is gone, or a key was entered since it was asked (a slow refusal
  // must not wipe the key just typed).
  function refused(sent, signal, err) {
    if ((signal && signal.aborted) || sessionStorage.getItem(KEY) !== sent) return;
    needKey(err.message);
  }

  // ---- key ----------------------------------------------------------------

  function needKey(why) {
    const had = sessionStorage.getItem(KEY) !== null;
    sessionStorage.removeItem(KEY);
    $("key-reason").textContent = had
      ? "The key was refused (" + why + "). Enter a key with the read role or higher."
      : "This ebb requires an API key. A key with the read role (describe, logs, jobs) shows everything here.";
    $("key-form").hidden = false;
    $("overview").hidden = true;
    $("detail").hidden = true;
    $("forget-key").hidden = true;
    stopView();
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = $("key-input").value.trim();
    if (!k) return;
    sessionStorage.setItem(KEY, k);
    $("key-input").value = "";
    $("key-form").hidden = true;
    route();
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    needKey("");
  });

  function notice(msg, info) {
    const n = $("notice");
    n.textContent = msg || "";
    n.className = info ? "info" : "";
    n.hidden = !msg;
  }

  // describe names the failure for a panel: a missing permission is not an
  // outage.
  function describe(err) {
    if (err instanceof APIError && err.status === 403) return "Not allowed with this key: " + err.message;
    if (err instanceof APIError) return err.message;
    return "Could not reach ebb: " + str(err && err.message);
  }

  function panelStatus(id, msg, isError) {
    const p = $(id);
    p.textContent = msg || "";
    p.className = "status" + (isError ? " error" : "");
    p.hidden = !msg;
  }

  // ---- charts -------------------------------------------------------------

  const charts = new Map(); // container id → uPlot
  const COLORS = ["#2563eb", "#d97706", "#dc2626", "#059669", "#7c3aed", "#0891b2"];

  // drawChart draws series over xs in the container id. opts.bars draws a
  // histogram over category positions instead of a time series.
  function drawChart(id, labels, xs, ys, opts) {
    opts = opts || {};
    const box = $(id) || id;
    const key = box.id || id;
    const data = [xs, ...ys];
    // data-nonzero counts the points with data in each series: a chart
    // is drawn from real data when its first series has some.
    const nonzero = ys.map((s) => s.filter((v) => isNum(v) && v !== 0).length);
    state.charts[box.dataset.chart || key] = { labels, data, nonzero };
    box.dataset.points = String(xs.length);
    box.dataset.nonzero = nonzero.join(",");
    let u = charts.get(key);
    if (u && u.series.length === labels.length + 1) {
      u.setData(data);
      return;
    }
    if (u) u.destroy();
    clear(box);
    if (typeof uPlot === "undefined") {
      box.append(el("p", { class: "nodata", text: "charting library failed to load" }));
      return;
    }
    const series = [{ label: opts.xLabel || "time" }];
    labels.forEach((l, i) => {
      // Points are drawn too: a minute with invocations between quiet ones
      // is a point with no line to its neighbours.
      const s = { label: l, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false, points: { show: true, size: 4 } };
      if (opts.bars) {
        s.fill = COLORS[i % COLORS.length] + "99";
        s.paths = uPlot.paths.bars({ size: [0.8, 60] });
        s.points = { show: false };
      }
      series.push(s);
    });
    const o = {
      width: Math.max(box.clientWidth || 0, 320),
      height: opts.height || 200,
      series,
      scales: { x: { time: !opts.bars }, y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] } },
      axes: [{}, { size: 56 }],
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
    };
    // Bars are centred on their category: half a bar of room each side.
    if (opts.bars) o.scales.x = { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] };
    if (opts.bars && opts.categories) {
      const cats = opts.categories;
      o.axes[0] = { values: (u, splits) => splits.map((v) => (Number.isInteger(v) && cats[v] !== undefined ? cats[v] : "")) };
    }
    u = new uPlot(o, data, box);
    charts.set(key, u);
  }

  function destroyCharts() {
    for (const u of charts.values()) u.destroy();
    charts.clear();
    state.charts = {};
  }

  window.addEventListener("resize", () => {
    for (const [id, u] of charts) {
      const box = $(id) || u.root.parentNode;
      if (box && box.clientWidth) u.setSize({ width: Math.max(box.clientWidth, 320), height: u.height });
    }
  });

  // ---- views --------------------------------------------------------------

  let view = null; // {stop()} of the view on screen

  function stopView() {
    if (view) view.stop();
    view = null;
  }

  function since() {
    return $("since").value;
  }
  $("since").addEventListener("change", () => route());
  $("d-monitor-baseline").addEventListener("change", () => route());

  // poller runs fn now and every REFRESH_MS until stopped; each run gets a
  // signal that aborts when the view goes.
  function poller(fn) {
    const ctl = new AbortController();
    let timer = null;
    const tick = async () => {
      try {
        await fn(ctl.signal);
        notice("");
      } catch (err) {
        if (ctl.signal.aborted) return;
        if (!(err instanceof APIError && err.status === 401)) notice(describe(err));
      }
      if (!ctl.signal.aborted) timer = setTimeout(tick, REFRESH_MS);
    };
    tick();
    return { signal: ctl.signal, stop: () => { ctl.abort(); clearTimeout(timer); } };
  }

  function route() {
    stopView();
    destroyCharts();
    if ($("key-form").hidden === false && !sessionStorage.getItem(KEY)) return;
    $("forget-key").hidden = !sessionStorage.getItem(KEY);
    const h = location.hash || "#/";
    const m = /^#\/fn\/([^/]+)$/.exec(h);
    const crumbs = $("crumbs");
    clear(crumbs);
    if (m) {
      let name;
      try { name = decodeURIComponent(m[1]); } catch (_) { name = ""; }
      crumbs.append(el("a", { href: "#/", text: "functions" }), " / ", name);
      showDetail(name);
    } else {
      crumbs.append("functions");
      showOverview();
    }
  }
  window.addEventListener("hashchange", route);

  const fnPath = (name) => "/v1/functions/" + encodeURIComponent(name);

  // instanceCounts: starting, warm (ready: busy or idle), idle.
  function instanceCounts(instances) {
    const c = { starting: 0, warm: 0, idle: 0, busy: 0 };
    for (const i of arr(instances)) {
      const ph = str(obj(i).phase);
      if (ph === "starting") c.starting++;
      if (ph === "busy" || ph === "idle") c.warm++;
      if (ph === "idle") c.idle++;
      if (ph === "busy") c.busy++;
    }
    return c;
  }

  function splitText(split) {
    const s = arr(split).map((w) => "v" + fmtInt(obj(w).version) + " " + fmtInt(obj(w).percent) + "%");
    return s.length ? s.join(" · ") : "newest";
  }

  // ---- overview -------------------------------------------------------------

  function showOverview() {
    state.view = "overview";
    $("detail").hidden = true;
    $("overview").hidden = false;
    view = poller(async (signal) => {
      const [list, usage] = await Promise.all([
        api("/v1/functions", signal),
        api("/v1/usage?since=" + encodeURIComponent(since()), signal).catch((err) => {
          if (err instanceof APIError && err.status === 401) throw err;
          return null; // usage is extra here; the table stands without it
        }),
      ]);
      const perFn = {};
      for (const u of arr(obj(usage).functions)) perFn[str(obj(u).function)] = obj(u);
      const fns = arr(obj(list).functions).slice().sort((a, b) => str(obj(a).name).localeCompare(str(obj(b).name)));
      const rows = $("fn-rows");
      clear(rows);
      for (const f0 of fns) {
        const f = obj(f0);
        const name = str(f.name);
        const c = instanceCounts(f.instances);
        const link = el("a", { href: "#/fn/" + encodeURIComponent(name), text: name });
        const tr = el("tr", { "data-function": name },
          el("td", {}, link),
          el("td", { class: "num", text: fmtInt(f.version) }),
          el("td", { text: str(f.runtime) }),
          el("td", { text: splitText(f.route) }),
          el("td", { class: "num", text: c.starting + " · " + c.warm + " · " + c.idle }),
          el("td", { class: "num", text: fmtInt(f.in_flight) }),
          el("td", { class: "num", text: fmtInt(f.waiting) }),
          el("td", { class: "num", text: fmtInt(f.invocations) }),
          el("td", { class: "num" + (f.errors > 0 ? " bad" : ""), text: fmtInt(f.errors) }),
          el("td", { class: "num", text: fmtInt(f.cold_starts) }),
          el("td", { class: "num", text: usage ? fmtNum(perFn[name] ? perFn[name].gb_seconds : 0, 3) : "–" }));
        tr.addEventListener("click", (ev) => {
          if (ev.target !== link) location.hash = "#/fn/" + encodeURIComponent(name);
        });
        rows.append(tr);
      }
      $("fn-empty").hidden = fns.length > 0;
      state.loaded++;
    });
  }

  // ---- detail ---------------------------------------------------------------

  function showDetail(name) {
    state.view = "detail";
    $("overview").hidden = true;
    $("detail").hidden = false;
    $("d-title").textContent = name;
    if ($("d-monitor-baseline").dataset.fn !== name) {
      // Another function: its versions are not this one's.
      const sel = $("d-monitor-baseline");
      clear(sel);
      sel.append(el("option", { value: "", text: "the previous period" }));
      sel.dataset.fn = name;
    }
    for (const id of ["d-cards", "d-versions", "d-instances", "d-cost", "d-queue", "d-jobs", "d-shadow", "d-shadow-examples", "d-monitor", "d-logs"]) clear($(id));
    for (const id of ["d-usage-status", "d-jobs-status", "d-shadow-status", "d-monitor-status", "d-logs-status"]) panelStatus(id, "");
    const p = poller(async (signal) => {
      // The function's own status decides whether the view stands; the
      // panels fail on their own.
      const st = obj(await api(fnPath(name), signal));
      renderStatus(st);
      await Promise.all([
        // The shadow report is asked for only while a run is under way
        // (versions names it): without one the API answers 404, which the
        // browser would log as an error every refresh.
        api(fnPath(name) + "/versions", signal).then((v) => loadShadow(name, obj(v).shadow, signal), (e) => panelFail(e, "d-shadow-status")),
        loadUsage(name, signal),
        loadJobs(name, st, signal),
        loadMonitor(name, arr(st.versions).map((v) => obj(v).version).filter(isNum).sort((a, b) => b - a), signal),
      ]);
      state.loaded++;
    });
    const logs = tailLogs(name);
    view = { stop: () => { p.stop(); logs.stop(); } };
  }

  function panelFail(err, statusId) {
    if (err instanceof APIError && err.status === 401) throw err;
    if (err && err.name === "AbortError") throw err;
    panelStatus(statusId, describe(err), true);
  }

  function renderStatus(st) {
    const c = instanceCounts(st.instances);
    const cards = $("d-cards");
    clear(cards);
    cards.append(
      card("version", fmtInt(st.version)),
      card("runtime", str(st.runtime)),
      card("traffic", splitText(st.route)),
      card("starting", String(c.starting)),
      card("warm", String(c.warm)),
      card("idle", String(c.idle)),
      card("in flight", fmtInt(st.in_flight)),
      card("queued", fmtInt(st.waiting)),
      card("invocations", fmtInt(st.invocations)),
      card("errors", fmtInt(st.errors), st.errors > 0 ? "bad" : ""),
      card("cold starts", fmtInt(st.cold_starts)),
      card("memory", isNum(obj(st.spec).memory) ? st.spec.memory + " MiB" : "–"));
    const tb = $("d-instances");
    clear(tb);
    const insts = arr(st.instances);
    for (const i0 of insts) {
      const i = obj(i0);
      tb.append(el("tr", {},
        el("td", { text: str(i.id) }),
        el("td", { class: "num", text: fmtInt(i.version) }),
        el("td", { text: str(i.phase) }),
        el("td", { class: "num", text: fmtInt(i.in_flight) }),
        el("td", { class: "num", text: fmtInt(i.requests) }),
        el("td", { text: fmtTime(i.started_at) }),
        el("td", { text: fmtTime(i.last_used) })));
    }
    $("d-no-instances").hidden = insts.length > 0;
    if (arr(st.versions).length) renderVersions({ versions: st.versions });
  }

  function renderVersions(v0) {
    const v = obj(v0);
    const tb = $("d-versions");
    clear(tb);
    const vs = arr(v.versions).slice().sort((a, b) => (obj(b).version || 0) - (obj(a).version || 0));
    for (const x0 of vs) {
      const x = obj(x0);
      const bar = el("span", { class: "bar" });
      bar.style.width = Math.max(0, Math.min(100, isNum(x.percent) ? x.percent : 0)) * 0.6 + "px";
      tb.append(el("tr", { "data-version": fmtInt(x.version) },
        el("td", { class: "num", text: fmtInt(x.version) }),
        el("td", {}, bar, fmtInt(x.percent) + "%"),
        el("td", { text: arr(x.aliases).map(str).join(", ") }),
        el("td", { text: x.active ? "yes" : "no" }),
        el("td", { class: "num", text: fmtInt(x.invocations) }),
        el("td", { class: "num" + (x.errors > 0 ? " bad" : ""), text: fmtInt(x.errors) }),
        el("td", { class: "num", text: fmtInt(x.cold_starts) }),
        el("td", { class: "num", text: fmtNum(x.p50_ms) }),
        el("td", { class: "num", text: fmtNum(x.p99_ms) }),
        el("td", { text: fmtTime(x.deployed_at) })));
    }
  }

  // loadCost adds what the period cost, priced with ebb's built-in table as
  // Lambda, Cloud Run, an always-on instance and (when ebb serve was given
  // --node-cost-per-hour) this node, and the recommendation.
  async function loadCost(name, signal) {
    let c;
    try {
      c = obj(await api(fnPath(name) + "/cost?since=" + encodeURIComponent(since()), signal));
    } catch (err) {
      return panelFail(err, "d-usage-status");
    }
    const td = obj(c.to_date);
    const usd = (x) => (isNum(x) ? "$" + x.toFixed(2) : "–");
    $("d-cost").append(
      el("div", { class: "card", "data-cost": "lambda" }, el("span", { class: "k", text: "cost to date as Lambda" }), el("span", { class: "v", text: usd(td.lambda_usd) })),
      card("as Cloud Run", usd(td.cloud_run_usd)),
      card("as " + (str(obj(c.dedicated).instance) || "an always-on instance"), usd(td.dedicated_usd)),
      card("on this node", isNum(td.ebb_usd) ? usd(td.ebb_usd) : "set --node-cost-per-hour"),
      card("recommended", str(obj(c.recommendation).choice) || "–"));
  }

  // loadUsage draws the usage API's series: latency percentiles, invocations
  // and errors, cold-start share and GB-s, and the totals as cost to date.
  async function loadUsage(name, signal) {
    let u;
    try {
      u = obj(await api(fnPath(name) + "/usage?since=" + encodeURIComponent(since()), signal));
    } catch (err) {
      if (err instanceof APIError && err.status === 404 && err.type === "NotFound") {
        panelStatus("d-usage-status", "This ebb has no usage API (GET /v1/functions/{name}/usage).", true);
        return;
      }
      return panelFail(err, "d-usage-status");
    }
    panelStatus("d-usage-status", "");
    $("d-usage-range").textContent = "since " + fmtTime(u.since);
    const cost = $("d-cost");
    clear(cost);
    const inv = isNum(u.invocations) ? u.invocations : 0;
    cost.append(
      card("invocations", fmtInt(u.invocations)),
      card("errors", fmtInt(u.errors), u.errors > 0 ? "bad" : ""),
      card("cold starts", fmtInt(u.cold_starts) + (inv > 0 && isNum(u.cold_starts) ? " (" + fmtNum((100 * u.cold_starts) / inv, 1) + "%)" : "")),
      card("p50 / p95 / p99 ms", [obj(u.duration_ms).p50, obj(u.duration_ms).p95, obj(u.duration_ms).p99].map((x) => fmtNum(x)).join(" / ")),
      card("cold start init p50 / p99 ms", obj(u.cold_start_ms).p50 !== undefined ? fmtNum(obj(u.cold_start_ms).p50) + " / " + fmtNum(obj(u.cold_start_ms).p99) : "–"),
      card("billed", isNum(u.billed_ms) ? fmtNum(u.billed_ms / 1000, 2) + " s" : "–"),
      card("GB-seconds", fmtNum(u.gb_seconds, 4)),
      card("vCPU-seconds", fmtNum(u.vcpu_seconds, 4)),
      card("idle warm MiB-s", fmtNum(u.idle_mib_seconds, 0)),
      card("peak concurrency", fmtInt(u.peak_concurrency)),
      card("triggers", Object.entries(obj(u.triggers)).filter(([, n]) => isNum(n)).map(([t, n]) => t + " " + fmtInt(n)).join(" · ") || "–"));
    await loadCost(name, signal);
    const pts = arr(u.series).map(obj);
    const xs = [], p50 = [], p95 = [], p99 = [], invs = [], errs = [], cold = [], gbs = [];
    for (const p of pts) {
      const t = Date.parse(str(p.time));
      if (isNaN(t)) continue;
      const n = isNum(p.invocations) ? p.invocations : 0;
      xs.push(t / 1000);
      // A minute with no invocation has no latency: a gap, not a zero.
      const lat = (v) => (n > 0 && isNum(v) ? v : null);
      p50.push(lat(p.p50_ms));
      p95.push(lat(p.p95_ms));
      p99.push(lat(p.p99_ms));
      invs.push(n);
      errs.push(isNum(p.errors) ? p.errors : 0);
      cold.push(n > 0 && isNum(p.cold_starts) ? (100 * p.cold_starts) / n : null);
      gbs.push(isNum(p.gb_seconds) ? p.gb_seconds : 0);
    }
    drawChart("chart-latency", ["p50", "p95", "p99"], xs, [p50, p95, p99]);
    drawChart("chart-invocations", ["invocations", "errors"], xs, [invs, errs]);
    drawChart("chart-cold", ["cold-start share %"], xs, [cold]);
    drawChart("chart-gbs", ["GB-s"], xs, [gbs]);
  }

  async function loadJobs(name, st, signal) {
    const q = $("d-queue");
    const base = fnPath(name) + "/jobs";
    let recent, queued, dead;
    try {
      [recent, queued, dead] = await Promise.all([
        api(base + "?limit=20", signal),
        api(base + "?status=queued&limit=1000", signal),
        api(base + "?status=dead&limit=1000", signal),
      ]);
    } catch (err) {
      return panelFail(err, "d-jobs-status");
    }
    const count = (page) => arr(obj(page).jobs).length + (obj(page).next ? "+" : "");
    clear(q);
    q.append(
      card("sync queue", fmtInt(st.waiting)),
      card("async queued", count(queued)),
      card("async dead", count(dead), arr(obj(dead).jobs).length ? "bad" : ""));
    const tb = $("d-jobs");
    clear(tb);
    const jobs = arr(obj(recent).jobs);
    panelStatus("d-jobs-status", jobs.length ? "" : "No async jobs.");
    for (const j0 of jobs) {
      const j = obj(j0);
      tb.append(el("tr", {},
        el("td", { text: str(j.id) }),
        el("td", { class: j.status === "dead" || j.status === "failed" ? "bad" : "", text: str(j.status) }),
        el("td", { class: "num", text: fmtInt(j.version) }),
        el("td", { class: "num", text: fmtInt(j.attempts) }),
        el("td", { text: fmtTime(j.enqueued_at) }),
        el("td", { text: fmtTime(j.finished_at) }),
        el("td", { text: j.error ? str(obj(j.error).message || obj(j.error).type || JSON.stringify(j.error)) : "" })));
    }
  }

  async function loadShadow(name, running, signal) {
    if (!running) {
      clear($("d-shadow"));
      clear($("d-shadow-examples"));
      panelStatus("d-shadow-status", "No shadow run under way (ebb shadow " + name + " --version N mirrors traffic to a version; ebb shadow report " + name + " shows the last run).");
      return;
    }
    let r;
    try {
      r = obj(await api(fnPath(name) + "/shadow", signal));
    } catch (err) {
      if (err instanceof APIError && err.status === 404) {
        clear($("d-shadow"));
        clear($("d-shadow-examples"));
        panelStatus("d-shadow-status", err.type === "NotFound" ? "This ebb has no shadow API." : "No shadow run: " + err.message);
        return;
      }
      return panelFail(err, "d-shadow-status");
    }
    panelStatus("d-shadow-status", (r.active ? "Mirroring " : "Last run mirrored ") + fmtInt(r.percent) + "% to version " + fmtInt(r.version) + " since " + fmtTime(r.since) + ".");
    const c = $("d-shadow");
    clear(c);
    c.append(
      card("mirrored", fmtInt(r.mirrored)),
      card("equal", fmtInt(r.equal), "good"),
      card("differ", fmtInt(r.differ), r.differ > 0 ? "bad" : ""),
      card("shadow errors", fmtInt(r.shadow_errors), r.shadow_errors > 0 ? "bad" : ""),
      card("dropped", fmtInt(r.dropped)),
      card("primary p50/p99 ms", fmtNum(r.primary_p50_ms) + " / " + fmtNum(r.primary_p99_ms)),
      card("shadow p50/p99 ms", fmtNum(r.shadow_p50_ms) + " / " + fmtNum(r.shadow_p99_ms)));
    const ex = $("d-shadow-examples");
    clear(ex);
    for (const e0 of arr(r.examples).slice(0, 5)) {
      const e = obj(e0);
      ex.append(el("p", { class: "hint", text: "request " + str(e.request_id) + (e.path ? " differs at " + str(e.path) : "") + (e.error ? ": " + str(e.error) : "") }),
        el("pre", { class: "example", text: "primary: " + str(e.primary) + (e.shadow !== undefined ? "\nshadow:  " + str(e.shadow) : "") }));
    }
  }

  // loadMonitor draws GET /monitor's prediction and input distributions:
  // per feature a histogram of this period's share of values per bin next to
  // the baseline's (the previous period, or another version), per output
  // its class frequencies likewise, each with its drift score (PSI).
  async function loadMonitor(name, versions, signal) {
    const box = $("d-monitor");
    const sel = $("d-monitor-baseline");
    // The baseline choice: the previous period, or any other kept version.
    const want = ["", ...versions.map(String)];
    const have = [...sel.options].map((o) => o.value);
    if (want.join() !== have.join()) {
      const keep = sel.value;
      clear(sel);
      sel.append(el("option", { value: "", text: "the previous period" }));
      for (const v of versions) sel.append(el("option", { value: String(v), text: "version " + v + ", same period" }));
      sel.value = want.includes(keep) ? keep : "";
    }
    let m;
    try {
      m = obj(await api(fnPath(name) + "/monitor?since=" + encodeURIComponent(since()) +
        (sel.value ? "&baseline_version=" + encodeURIComponent(sel.value) : ""), signal));
    } catch (err) {
      if (err instanceof APIError && err.status === 404) {
        clear(box);
        delete box.dataset.sig;
        panelStatus("d-monitor-status", err.type === "NotFound"
          ? "This ebb has no monitor API (GET /v1/functions/{name}/monitor): no prediction distributions to show."
          : "Not monitored: " + err.message);
        return;
      }
      return panelFail(err, "d-monitor-status");
    }
    const feats = arr(m.features).map(obj).filter((f) => arr(f.counts).length > 0).slice(0, 48);
    const classes = arr(m.classes).map(obj).filter((c) => Object.keys(obj(c.counts)).length > 0).slice(0, 24);
    const base = obj(m.baseline);
    panelStatus("d-monitor-status", feats.length || classes.length
      ? "Version " + fmtInt(m.version) + ", " + fmtInt(m.events) + " invocations since " + fmtTime(m.since) +
        (m.baseline ? "; baseline: version " + fmtInt(base.version) + ", " + fmtInt(base.events) + " invocations from " + fmtTime(base.since) : "; no baseline") + "."
      : "No distributions recorded for version " + fmtInt(m.version) + " in this period (is the function monitored? onnx functions are; python and exec ones with monitor: true).");
    // Rebuild the boxes only when the set of distributions changes.
    const sig = feats.map((f) => "f:" + str(f.name)).concat(classes.map((c) => "c:" + str(c.name))).join("|");
    if (box.dataset.sig !== sig) {
      for (const id of [...charts.keys()]) if (id.startsWith("mon-")) { charts.get(id).destroy(); charts.delete(id); }
      clear(box);
      box.dataset.sig = sig;
      box.append(el("div", { class: "cards", id: "mon-cards" }));
      const grid = el("div", { class: "dist" });
      feats.forEach((f, i) => grid.append(el("figure", {}, el("figcaption", { id: "mon-f" + i + "-cap" }), el("div", { class: "chart", id: "mon-f" + i, "data-chart": "monitor:" + str(f.name) }))));
      classes.forEach((c, i) => grid.append(el("figure", {}, el("figcaption", { id: "mon-c" + i + "-cap" }), el("div", { class: "chart", id: "mon-c" + i, "data-chart": "classes:" + str(c.name) }))));
      box.append(grid);
    }
    const cards = $("mon-cards");
    clear(cards);
    cards.append(
      card("max drift (PSI)", fmtNum(m.max_psi, 3), m.max_psi > 0.25 ? "bad" : m.max_psi > 0.1 ? "warn" : ""),
      card("summarised", fmtInt(obj(m.monitor).events)),
      card("dropped", fmtInt(obj(m.monitor).dropped), obj(m.monitor).dropped > 0 ? "bad" : ""),
      card("undecodable", fmtInt(obj(m.monitor).failed)));
    const share = (counts) => {
      const tot = counts.reduce((a, v) => a + (isNum(v) ? v : 0), 0);
      return counts.map((v) => (tot > 0 && isNum(v) ? (100 * v) / tot : 0));
    };
    const psiText = (p) => (isNum(p) ? "  PSI " + fmtNum(p, 3) : "");
    feats.forEach((f, i) => {
      const counts = arr(f.counts).map((v) => (isNum(v) ? v : 0));
      const edges = arr(f.edges);
      // counts[0] is below edges[0], counts[k] in [edges[k-1], edges[k]), the last at or above the last edge.
      const labels = counts.map((_, k) => (k === 0 ? "<" + fmtNum(edges[0], 3) : k === counts.length - 1 ? "≥" + fmtNum(edges[k - 1], 3) : fmtNum(edges[k - 1], 3)));
      const bc = arr(f.baseline_counts);
      $("mon-f" + i + "-cap").textContent = str(f.name) + "  n=" + fmtInt(f.count) + "  mean " + fmtNum(f.mean, 3) + "  std " + fmtNum(f.std, 3) +
        "  [" + fmtNum(f.min, 3) + ", " + fmtNum(f.max, 3) + "]" + psiText(f.psi);
      const ys = [share(counts)];
      if (bc.length === counts.length) ys.push(share(bc.map((v) => (isNum(v) ? v : 0))));
      drawChart("mon-f" + i, ys.length > 1 ? ["% now", "% baseline"] : ["% now"], counts.map((_, k) => k), ys, { bars: true, categories: labels, xLabel: "bin", height: 170 });
    });
    classes.forEach((c, i) => {
      const cur = obj(c.counts), bl = obj(c.baseline_counts);
      const names = [...new Set([...Object.keys(cur), ...Object.keys(bl)])].sort().slice(0, 100);
      $("mon-c" + i + "-cap").textContent = str(c.name) + " classes" + psiText(c.psi);
      const ys = [share(names.map((n) => (isNum(cur[n]) ? cur[n] : 0)))];
      if (Object.keys(bl).length) ys.push(share(names.map((n) => (isNum(bl[n]) ? bl[n] : 0))));
      drawChart("mon-c" + i, ys.length > 1 ? ["% now", "% baseline"] : ["% now"], names.map((_, k) => k), ys, { bars: true, categories: names, xLabel: "class", height: 170 });
    });
  }

  // tailLogs follows the function's log (GET /logs?follow=1, NDJSON) until
  // the view goes, keeping the last MAX_LOG_LINES on screen.
  function tailLogs(name) {
    const ctl = new AbortController();
    const box = $("d-logs");
    let next = 0, stopped = false, timer = null;
    const add = (l0) => {
      const l = obj(l0);
      if (isNum(l.seq)) next = l.seq + 1;
      const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      box.append(el("div", { class: "line " + (l.stream === "stderr" ? "stderr" : "stdout") },
        el("span", { class: "meta", text: [fmtTime(l.time), "v" + fmtInt(l.version), str(l.request_id).slice(0, 8)].join(" ") }),
        el("span", { class: "text", text: str(l.text) })));
      while (box.childNodes.length > MAX_LOG_LINES) box.removeChild(box.firstChild);
      if (stick) box.scrollTop = box.scrollHeight;
    };
    const run = async () => {
      try {
        const sent = sessionStorage.getItem(KEY);
        const res = await fetch(fnPath(name) + "/logs?follow=1&since=" + next, { headers: authHeaders(), signal: ctl.signal, cache: "no-store" });
        if (!res.ok) {
          const err = await errorOf(res);
          if (res.status === 401) refused(sent, ctl.signal, err);
          panelStatus("d-logs-status", describe(err), true);
          return;
        }
        panelStatus("d-logs-status", "");
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (!line.trim()) continue;
            try { add(JSON.parse(line)); } catch (_) { add({ text: line }); }
          }
        }
      } catch (err) {
        if (ctl.signal.aborted) return;
        panelStatus("d-logs-status", "Log stream ended (" + str(err && err.message) + "); reconnecting.", true);
      }
      // The stream ended (ebb restarted, a proxy cut it): pick up where
      // it stopped.
      if (!stopped) timer = setTimeout(run, REFRESH_MS);
    };
    run();
    return { stop: () => { stopped = true; ctl.abort(); clearTimeout(timer); } };
  }

  route();
})();
