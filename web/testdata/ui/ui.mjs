// ui.mjs drives ebb's dashboard in headless Chromium for web's Go test
// (web/ui_test.go), which starts ebb, deploys and invokes functions, and
// passes what to expect in the environment:
//
//   EBB_URL          ebb's base URL
//   EBB_KEY          a key with the read role (describe, logs, jobs)
//   EBB_DENIED_KEY   a key without logs (the page must say so)
//   EBB_FUNCTIONS    comma-separated functions the page must list
//   EBB_DETAIL       the function to open (it has logs, errors, 3 async jobs,
//                    a shadow run)
//   EBB_HOSTILE      text one of its log lines holds that must stay text
//   EBB_MONITORED    a monitored function with data, or empty when this ebb
//                    has no monitor API (the panel must say so)
//   EBB_ARTIFACTS    where the screenshots go
//   CHROMIUM         the browser (default /usr/bin/chromium)
//
// It exits non-zero, saying why, on the first expectation that fails, and
// on any console error or uncaught exception in the page other than the
// refusals it provokes (401 before the key is entered, 403 for the denied
// key on the logs, 404 from an absent monitor API). Its last line is a JSON summary.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`ui.mjs: ${k} is not set`);
  return v;
};
const base = env("EBB_URL");
const key = env("EBB_KEY");
const deniedKey = env("EBB_DENIED_KEY");
const functions = env("EBB_FUNCTIONS").split(",").filter(Boolean);
const detail = env("EBB_DETAIL");
const hostile = env("EBB_HOSTILE");
const artifacts = env("EBB_ARTIFACTS");
const monitored = env("EBB_MONITORED", "");
// A 404 from /monitor is expected only from an ebb without the monitor API.
const noMonitor = (status, url) => status === 404 && !monitored && /\/monitor\?/.test(url);
mkdirSync(artifacts, { recursive: true });

const summary = { screenshots: [], listed: [], charts: {}, logLines: 0, consoleErrors: [], allowedRefusals: [] };
const problems = [];
const T = 60_000;

const browser = await chromium.launch({ executablePath: env("CHROMIUM", "/usr/bin/chromium"), headless: true });
try {
  // ---- the read key: everything --------------------------------------------
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await ctx.newPage();
  let keyed = false;
  watch(page, (status, url) => (status === 401 && !keyed) || noMonitor(status, url));

  const res = await page.goto(base + "/ui");
  if (!res.ok()) fail(`GET /ui = ${res.status()}`);
  if (!new URL(page.url()).pathname.endsWith("/ui/")) fail(`/ui did not land on /ui/ but ${page.url()}`);
  await page.locator("#key-form").waitFor({ state: "visible", timeout: T });
  await shot(page, "01-key.png");

  keyed = true;
  await page.fill("#key-input", key);
  await page.click("#key-submit");
  for (const fn of functions) {
    await page.locator(`#fn-rows tr[data-function="${fn}"]`).waitFor({ timeout: T });
  }
  summary.listed = await page.$$eval("#fn-rows tr", (rows) => rows.map((r) => r.dataset.function));
  for (const fn of functions) if (!summary.listed.includes(fn)) fail(`overview does not list ${fn}: ${summary.listed}`);
  await shot(page, "02-overview.png");

  // ---- detail: click the function's row ----------------------------------
  await page.click(`#fn-rows tr[data-function="${detail}"] td:nth-child(3)`);
  await page.waitForFunction((n) => location.hash === "#/fn/" + encodeURIComponent(n), detail, { timeout: T });
  await page.locator("#detail").waitFor({ state: "visible", timeout: T });
  const title = await page.textContent("#d-title");
  if (title !== detail) fail(`detail title = ${JSON.stringify(title)}, want ${detail}`);
  await page.locator("#d-versions tr").first().waitFor({ timeout: T });

  // Charts: a uPlot canvas with real points in its first series, from the
  // usage API.
  for (const id of ["chart-latency", "chart-invocations", "chart-cold", "chart-gbs"]) {
    try {
      await page.waitForFunction(
        (id) => {
          const b = document.getElementById(id);
          return b && b.querySelector("canvas") && Number(String(b.dataset.nonzero).split(",")[0]) > 0;
        },
        id,
        { timeout: T },
      );
    } catch (e) {
      const st = await page.textContent("#d-usage-status");
      fail(`${id}: no uPlot canvas with a non-zero point within ${T / 1000}s (usage panel says: ${st})`);
    }
  }
  // Cost to date in dollars, from GET /v1/functions/{name}/cost.
  try {
    await page.waitForFunction(() => {
      const c = document.querySelector('#d-cost [data-cost="lambda"] .v');
      return c && /^\$\d+\.\d\d$/.test(c.textContent);
    }, null, { timeout: T });
  } catch (e) {
    fail(`cost to date: no dollar amount within ${T / 1000}s (usage panel says: ${await page.textContent("#d-usage-status")})`);
  }
  summary.cost = await page.textContent("#d-cost");
  summary.charts = await page.evaluate(() => {
    const out = {};
    for (const [name, c] of Object.entries(window.ebbDashboard.charts)) {
      out[name] = { labels: c.labels, points: c.data[0].length, nonzero: c.nonzero };
    }
    return out;
  });
  // Every series that must have data here: invocations (and errors: the
  // function failed), p50/p95/p99, cold-start share, GB-s.
  for (const [name, series] of Object.entries({ invocations: 2, latency: 3, cold: 1, gbs: 1 })) {
    const nz = summary.charts[name]?.nonzero || [];
    if (nz.length !== series || nz.some((n) => !(n > 0))) fail(`${name} chart: points with data per series ${JSON.stringify(nz)}, want ${series} series with some`);
  }

  // The live log tail, with the hostile line as text and not as markup.
  await page.waitForFunction((h) => document.getElementById("d-logs").textContent.includes(h), hostile, { timeout: T });
  summary.logLines = await page.locator("#d-logs .line").count();
  const injected = await page.locator("#d-logs img, #d-logs script, #d-logs b").count();
  if (injected > 0) fail(`a log line became markup (${injected} elements)`);

  // The shadow report and the monitor panel (data, or why there is none).
  await page.locator("#d-shadow .card").first().waitFor({ timeout: T });
  summary.shadow = await page.textContent("#d-shadow");
  await page.waitForFunction(() => {
    const s = document.getElementById("d-monitor-status");
    return !s.hidden || document.querySelector("#d-monitor canvas, #d-monitor table");
  }, null, { timeout: T });
  summary.monitor = (await page.textContent("#d-monitor-status")) || "charts";
  // The async jobs the test enqueued.
  await page.waitForFunction(() => document.querySelectorAll("#d-jobs tr").length >= 3, null, { timeout: T });
  summary.jobs = await page.locator("#d-jobs tr").count();
  summary.queue = await page.textContent("#d-queue");
  await shot(page, "03-detail.png", true);

  // Back to the list through the crumb.
  await page.click("#crumbs a");
  await page.locator("#overview").waitFor({ state: "visible", timeout: T });

  // A monitored function's prediction and input distributions.
  if (monitored) {
    await page.click(`#fn-rows tr[data-function="${monitored}"] a`);
    try {
      await page.waitForFunction(() => [...document.querySelectorAll("#d-monitor .chart")].some(
        (b) => b.querySelector("canvas") && Number(String(b.dataset.nonzero).split(",")[0]) > 0), null, { timeout: T });
    } catch (e) {
      fail(`no distribution chart with data for ${monitored} (panel says: ${await page.textContent("#d-monitor-status")})`);
    }
    summary.monitorCharts = await page.evaluate(() => [...document.querySelectorAll("#d-monitor .chart")].filter(
      (b) => b.querySelector("canvas") && Number(String(b.dataset.nonzero).split(",")[0]) > 0).length);
    summary.monitor = await page.textContent("#d-monitor-status");
    await page.locator("#d-monitor").scrollIntoViewIfNeeded();
    await shot(page, "05-monitor.png", true);
  }
  await ctx.close();

  // ---- a key without logs (the invoke role): a clear refusal, in its panel,
  // and the rest of the page still works. Straight to the detail by URL.
  const ctx2 = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const p2 = await ctx2.newPage();
  let denied = false;
  watch(p2, (status, url) => (status === 401 && !denied) || (status === 403 && denied && /\/logs\?/.test(url)) || noMonitor(status, url));
  await p2.goto(base + "/ui/#/fn/" + encodeURIComponent(detail));
  await p2.locator("#key-form").waitFor({ state: "visible", timeout: T });
  denied = true;
  await p2.fill("#key-input", deniedKey);
  await p2.click("#key-submit");
  await p2.waitForFunction(() => /Not allowed with this key/.test(document.getElementById("d-logs-status").textContent), null, { timeout: T });
  summary.denied = await p2.textContent("#d-logs-status");
  await p2.locator("#d-versions tr").first().waitFor({ timeout: T });
  await shot(p2, "04-denied.png", true);
  await ctx2.close();
} catch (e) {
  problems.push(String(e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}

if (summary.consoleErrors.length) problems.push("console errors in the page:\n  " + summary.consoleErrors.join("\n  "));
console.log(JSON.stringify(summary));
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}

function fail(msg) {
  throw new Error(msg);
}

// watch records the page's console errors and uncaught exceptions. A
// refused request is logged by Chromium as "Failed to load resource: ...
// status of N"; allowed(N, url) says which refusals the test provoked.
function watch(page, allowed) {
  page.on("pageerror", (e) => summary.consoleErrors.push("uncaught: " + e.message));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const url = m.location().url || "";
    const st = /status of (\d{3})/.exec(m.text());
    if (st && allowed(Number(st[1]), url)) {
      summary.allowedRefusals.push(`${st[1]} ${url}`);
      return;
    }
    summary.consoleErrors.push(`${m.text()} (${url})`);
  });
}

async function shot(page, name, full) {
  const path = join(artifacts, name);
  await page.screenshot({ path, fullPage: !!full });
  summary.screenshots.push(path);
}
