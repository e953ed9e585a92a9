// Browser benchmark of the web UI with many pairs, in one run on a local two-node cluster
// (kvsync-cluster) and headless Chromium. Started by `bench/run.sh ui [flags]`, which builds
// release binaries and points KVSYNC_CLUSTER_BIN at them; run directly it takes the debug
// build (see tests/e2e/harness.mjs).
//
// Steps, in this order (the node holds only what each step needs):
//   few     live changes with only a few pairs in the node (for comparison);
//   clear   a page on node 2 shows --clear-pairs rows while node 1 clears them: the longest
//           main-thread block in that page and the time until its list is empty;
//   seed    --pairs pairs imported on node 1 in batches of 1,000, and the wait until node 2
//           holds them all;
//   first   first useful render on node 1 (first rows and the total shown), --loads loads;
//   rest    the main thread's CPU of a live page while nothing happens (5 s);
//   scroll  frame times while scrolling with --loaded rows loaded;
//   live    --changes writes on node 2 to rows on screen in node 1's page, one at a time,
//           timed inside the page (MutationObserver, Date.now(): the machine's one clock);
//   memory  --stream writes on node 2 at --rate/s over the whole key space: JS heap and DOM
//           nodes before, during and after (after a forced garbage collection).
//
// Timings are reported, never judged: the exit code is non-zero only when something is
// functionally wrong (a change never shows, a count is wrong, a write fails).
//
//   node bench/ui/ui-bench.mjs [--pairs 100000] [--changes 200] [--stream 10000] [--out DIR]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { ROOT, apiClient, launchBrowser, startCluster } from '../../tests/e2e/harness.mjs';

const { values: flags } = parseArgs({
  options: {
    pairs: { type: 'string', default: '100000' },
    changes: { type: 'string', default: '200' },
    stream: { type: 'string', default: '10000' },
    rate: { type: 'string', default: '100' },
    few: { type: 'string', default: '100' },
    'clear-pairs': { type: 'string', default: '1000' },
    loads: { type: 'string', default: '5' },
    loaded: { type: 'string', default: '3000' },
    'scroll-step': { type: 'string', default: '400' },
    'scroll-frames': { type: 'string', default: '300' },
    'replication-timeout': { type: 'string', default: '1800' },
    out: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log(`usage: ui-bench.mjs [--pairs N] [--changes N] [--stream N] [--rate N/s] [--few N]
  [--clear-pairs N] [--loads N] [--loaded N] [--scroll-step PX] [--scroll-frames N]
  [--replication-timeout S] [--out DIR]`);
  process.exit(0);
}
const num = (name) => {
  const v = Number(flags[name]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} must be a number, not ${flags[name]}`);
  return v;
};
const PAIRS = num('pairs');
const CHANGES = num('changes');
const STREAM = num('stream');
const RATE = num('rate');
const FEW = num('few');
const CLEAR_PAIRS = num('clear-pairs');
const LOADS = Math.max(1, num('loads'));
const LOADED = Math.min(num('loaded'), PAIRS);
const SCROLL_STEP = num('scroll-step');
const SCROLL_FRAMES = num('scroll-frames');
const REPLICATION_TIMEOUT_MS = num('replication-timeout') * 1000;
const OUT = path.resolve(flags.out || path.join(ROOT, 'bench', 'results', `${new Date().toISOString().slice(0, 10)}-ui`));
const SHOW_TIMEOUT_MS = 20_000; // a change not shown within this is a failure
const TARGETS = { firstRenderMs: 1000, liveP50Ms: 100, liveP99Ms: 250, scrollP90Ms: 50 };

const nf = new Intl.NumberFormat('en-US');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round = (x, d = 1) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);

/** Nearest-rank percentile. */
function pct(xs, p) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((s.length * p) / 100) - 1))];
}
function summary(xs) {
  return {
    count: xs.length,
    p50_ms: round(pct(xs, 50)),
    p90_ms: round(pct(xs, 90)),
    p99_ms: round(pct(xs, 99)),
    max_ms: round(xs.length ? Math.max(...xs) : null),
    mean_ms: round(xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null),
  };
}

const failures = [];
function fail(what) {
  failures.push(what);
  log(`FAILURE: ${what}`);
}
function log(text) {
  process.stderr.write(`[ui-bench ${new Date().toISOString().slice(11, 19)}] ${text}\n`);
}

const steps = {}; // step -> { load_before, load_after, seconds }
async function step(name, fn) {
  const load = os.loadavg().map((x) => round(x, 2));
  const started = Date.now();
  log(`${name}: start (load average ${load.join(' ')})`);
  try {
    return await fn();
  } finally {
    steps[name] = { load_before: load, load_after: os.loadavg().map((x) => round(x, 2)), seconds: round((Date.now() - started) / 1000) };
    log(`${name}: done in ${steps[name].seconds} s (load average ${steps[name].load_after.join(' ')})`);
  }
}

function machine() {
  const cpus = os.cpus();
  let commit = null;
  let dirty = null;
  try {
    commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
  } catch {
    /* not a git checkout */
  }
  const bin = process.env.KVSYNC_CLUSTER_BIN || 'target/debug/kvsync-cluster';
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memory_gib: round(os.totalmem() / 2 ** 30, 1),
    os: `${os.type()} ${os.release()}`,
    node_js: process.version,
    commit,
    dirty,
    build: /release/.test(bin) ? 'release' : 'debug',
  };
}

// ---------------------------------------------------------------------------------------------
// The cluster's data

const width = Math.max(6, String(Math.max(0, PAIRS - 1)).length);
const pad = (i) => String(i).padStart(width, '0');

/** Retries a request answered 503/504 (a busy test database); other statuses are returned. */
async function withRetry(fn, what, { tries = 30, delay = 1000 } = {}) {
  for (let i = 1; ; i++) {
    let r;
    try {
      r = await fn();
    } catch (err) {
      if (i >= tries) throw new Error(`${what}: ${err.message}`);
      await sleep(delay);
      continue;
    }
    if ((r.status !== 503 && r.status !== 504) || i >= tries) return r;
    await sleep(delay);
  }
}

/**
 * Imports `count` pairs `${prefix}${pad(i)}` with one value each on `baseUrl` through
 * /api/import in batches of 1,000 lines (the export line of one pair written normally, with
 * the key changed). Returns the milliseconds it took.
 */
async function seed(baseUrl, prefix, count) {
  const api = apiClient(baseUrl);
  const model = `${prefix}model`;
  const put = await api.put(model, ['seeded']);
  if (put.status !== 201) throw new Error(`seeding: PUT ${model} answered ${put.status}`);
  const res = await fetch(`${baseUrl}/api/export?prefix=${encodeURIComponent(model)}`);
  const line = JSON.parse((await res.text()).trim().split('\n')[0]);
  if ((await api.remove(model)).status !== 204) throw new Error('seeding: could not delete the model pair');
  const started = Date.now();
  let lastLog = started;
  for (let i = 0; i < count; i += 1000) {
    const lines = [];
    for (let j = i; j < Math.min(count, i + 1000); j++) lines.push(JSON.stringify({ key: `${prefix}${pad(j)}`, state: line.state }));
    const body = lines.join('\n');
    // An import merges: sending a batch again is safe.
    const r = await withRetry(async () => {
      const x = await fetch(`${baseUrl}/api/import`, { method: 'POST', body });
      return { status: x.status, text: await x.text() };
    }, `import from ${i}`, { tries: 120 });
    if (r.status !== 200) throw new Error(`import of the pairs from ${i} answered ${r.status}: ${r.text.slice(0, 300)}`);
    if (Date.now() - lastLog > 10_000) {
      lastLog = Date.now();
      log(`  imported ${nf.format(i + lines.length)} of ${nf.format(count)}`);
    }
  }
  return Date.now() - started;
}

async function countOn(api, prefix = '') {
  const r = await withRetry(() => api.list(`?${prefix ? `prefix=${encodeURIComponent(prefix)}&` : ''}count=true&limit=1`), 'count');
  if (r.status !== 200) throw new Error(`count answered ${r.status}`);
  return r.json.total;
}

/** Waits until `api`'s node holds `want` pairs; the milliseconds waited. */
async function waitForCount(api, want, { prefix = '', timeout = REPLICATION_TIMEOUT_MS, what = 'the pairs' } = {}) {
  const started = Date.now();
  let last = null;
  let lastLog = started;
  for (;;) {
    last = await countOn(api, prefix);
    if (last === want) return Date.now() - started;
    if (Date.now() - started > timeout) throw new Error(`${what}: ${last} pairs after ${timeout / 1000} s, expected ${want}`);
    if (Date.now() - lastLog > 15_000) {
      lastLog = Date.now();
      log(`  waiting for ${what}: ${nf.format(last)} of ${nf.format(want)}`);
    }
    await sleep(want > 10_000 ? 2000 : 250);
  }
}

/** Clears every pair through node `api` (as the page's "Clear database" does) and waits until `others` are empty. */
async function clearAll(api, others) {
  const r = await api.clear();
  if (r.status !== 200 || r.json?.error) throw new Error(`clear answered ${r.status}: ${JSON.stringify(r.json)}`);
  for (const o of [api, ...others]) await waitForCount(o, 0, { timeout: 120_000, what: 'an empty node' });
}

// ---------------------------------------------------------------------------------------------
// Pages

let browser;

/**
 * Opens `url` in a fresh context and waits until the page is live, or, with `until`, until
 * the page logs that text to the console: a wait that runs nothing in the page (Playwright's
 * locators and waitForFunction put their own script in it first, which took 100-150 ms of
 * the page's main thread in the middle of a first render being measured).
 */
async function newPage(url, { init, until } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  if (init) await context.addInitScript(init.fn, init.arg);
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(err.message));
  page.on('dialog', (d) => {
    page.errors.push(`dialog: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  const logged = until ? page.waitForEvent('console', { predicate: (m) => m.text() === until, timeout: 60_000 }) : null;
  try {
    await page.goto(url);
    if (logged) await logged;
    else await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
  } catch (err) {
    await context.close();
    throw err;
  }
  return page;
}

async function closePage(page, what) {
  if (page.errors.length) fail(`${what}: script errors in the page: ${page.errors.join('; ')}`);
  await page.context().close();
}

const countText = (page) => page.locator('#pair-count').textContent();

/** Waits until the page's count says `total` pairs (all loaded or not). */
async function waitForTotal(page, total, timeout = 60_000) {
  const want = `${nf.format(total)} pairs`;
  try {
    await page.waitForFunction((w) => {
      const t = document.getElementById('pair-count').textContent;
      return t === w || t.startsWith(`${w} ·`);
    }, want, { timeout, polling: 100 });
  } catch {
    throw new Error(`the page's count shows "${await countText(page)}", expected "${want}"`);
  }
}

/** Rows loaded, from the count ("100,000 pairs · 3,000 loaded", or all of them). */
async function loadedRows(page) {
  const t = await countText(page);
  const m = /· ([\d,]+) loaded/.exec(t);
  if (m) return Number(m[1].replace(/,/g, ''));
  const all = /^([\d,]+) pairs?$/.exec(t);
  return all ? Number(all[1].replace(/,/g, '')) : 0;
}

/** Scrolls to the end until at least `rows` rows are loaded. */
async function loadRows(page, rows, timeout = 300_000) {
  const deadline = Date.now() + timeout;
  while ((await loadedRows(page)) < rows) {
    if (Date.now() > deadline) throw new Error(`only ${await loadedRows(page)} rows loaded after scrolling for ${timeout / 1000} s`);
    await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight));
    await sleep(150);
  }
}

/** Keys of rows fully on screen, away from the edges. */
function keysOnScreen(page) {
  return page.evaluate(() => [...document.querySelectorAll('#pairs-body tr.pair-row:not(.removing):not(.editing)')]
    .filter((r) => {
      const b = r.getBoundingClientRect();
      return b.top > 150 && b.bottom < window.innerHeight - 100;
    })
    .map((r) => r.dataset.key));
}

/** Installs `window.__uiBenchWatch(key, value)`: resolves to Date.now() when the row of `key` shows `value`. */
function installWatch(page) {
  return page.evaluate(() => {
    window.__uiBenchWatch = (key, value) => {
      const body = document.getElementById('pairs-body');
      const shows = () => {
        for (const r of body.querySelectorAll('tr.pair-row')) {
          if (r.dataset.key !== key || r.classList.contains('removing')) continue;
          return [...r.querySelectorAll('.values .value')].some((v) => v.textContent === value);
        }
        return false;
      };
      window.__uiBenchSeen = new Promise((resolve) => {
        const mo = new MutationObserver(() => {
          if (shows()) {
            const at = Date.now();
            mo.disconnect();
            resolve(at);
          }
        });
        mo.observe(body, { subtree: true, childList: true, characterData: true, attributes: true });
      });
    };
  });
}

/**
 * Writes `key` = [value] on `api` and times how long until `page` shows it, inside the page.
 * Returns { ms, put_ms } or null (and records a failure) when it never shows.
 */
async function timedChange(page, api, key, value, pageApi) {
  await page.evaluate(([k, v]) => window.__uiBenchWatch(k, v), [key, value]);
  const t0 = Date.now();
  const r = await withRetry(() => api.put(key, [value]), `PUT ${key}`);
  const putMs = Date.now() - t0;
  if (r.status !== 200 && r.status !== 201) {
    fail(`PUT ${key} answered ${r.status}`);
    return null;
  }
  const seen = () => page.evaluate(() => window.__uiBenchSeen);
  let at = await Promise.race([seen(), sleep(SHOW_TIMEOUT_MS).then(() => null)]);
  if (at !== null) return { ms: at - t0, put_ms: putMs };
  // Not shown: was it the replication (the page's node does not have it yet) or the page?
  const onNode = pageApi ? await pageApi.get(key).catch(() => null) : null;
  const nodeHas = onNode ? (onNode.json?.values || []).includes(value) : null;
  const inPage = await page.evaluate((k) => {
    const row = [...document.querySelectorAll('#pairs-body tr.pair-row')].find((x) => x.dataset.key === k);
    return {
      row: row ? [...row.querySelectorAll('.values .value')].map((v) => v.textContent) : null,
      live: document.getElementById('live-status').dataset.state,
      loading: document.getElementById('load-more').textContent,
      count: document.getElementById('pair-count').textContent,
    };
  }, key);
  at = await Promise.race([seen(), sleep(60_000).then(() => null)]);
  fail(`the change of ${key} to "${value}" did not show within ${SHOW_TIMEOUT_MS / 1000} s`
    + ` (then: the page's node ${nodeHas === null ? 'not asked' : nodeHas ? 'had it' : 'did not have it yet'};`
    + ` the page: ${JSON.stringify(inPage)}; ${at === null ? 'still not shown 60 s later' : `shown after ${at - t0} ms`})`);
  return null;
}

/** `count` live changes written through `api` to rows on screen in `page`, one at a time. */
async function liveChanges(page, api, count, tag, pageApi) {
  await installWatch(page);
  const times = [];
  const puts = [];
  let missed = 0; // changes not shown in time: recorded as failures; the run goes on after a few
  for (let i = 0; i < count; i++) {
    const keys = await keysOnScreen(page);
    if (!keys.length) {
      fail(`${tag}: no row on screen to change`);
      break;
    }
    const key = keys[Math.floor(Math.random() * keys.length)];
    const got = await timedChange(page, api, key, `${tag} ${i} ${Math.random().toString(36).slice(2, 8)}`, pageApi);
    if (!got) {
      if (++missed >= 3) break;
      continue;
    }
    times.push(got.ms);
    puts.push(got.put_ms);
    await sleep(50 + Math.random() * 100);
  }
  return { ...summary(times), put: summary(puts), missed, samples_ms: times };
}

/** Scrolls the page from the top in steps, one per frame; the frame intervals (ms). */
function scrollFrames(page, step, frames) {
  return page.evaluate(([stepPx, count]) => new Promise((resolve) => {
    window.scrollTo(0, 0);
    const times = [];
    let last = null;
    let n = 0;
    const tick = (now) => {
      if (last !== null) times.push(now - last);
      last = now;
      window.scrollBy(0, stepPx);
      if (++n <= count) requestAnimationFrame(tick);
      else resolve(times);
    };
    requestAnimationFrame(() => requestAnimationFrame(tick));
  }), [step, frames]);
}

// ---------------------------------------------------------------------------------------------
// Steps

async function fewStep(node1, api2) {
  const ms = await seed(node1.url, 'few:', FEW);
  await waitForCount(api2, FEW, { what: 'node 2 to hold the few pairs' });
  const page = await newPage(node1.url + '/');
  await waitForTotal(page, FEW);
  const live = await liveChanges(page, api2, CHANGES, 'few', apiClient(node1.url));
  await closePage(page, 'few');
  return { pairs: FEW, seed_ms: ms, live };
}

async function clearStep(node1, node2, api1, api2) {
  const seedMs = await seed(node1.url, 'clr:', CLEAR_PAIRS);
  await waitForCount(api2, CLEAR_PAIRS, { what: 'node 2 to hold the pairs to clear' });
  const page = await newPage(node2.url + '/');
  await waitForTotal(page, CLEAR_PAIRS);
  await loadRows(page, CLEAR_PAIRS);
  const shown = await countText(page);
  if (shown !== `${nf.format(CLEAR_PAIRS)} pairs`) fail(`clear: node 2's page shows "${shown}" before the clear`);
  await page.evaluate(() => window.scrollTo(0, 0));
  // The page's main thread: long tasks, and the gaps between animation frames.
  await page.evaluate(() => {
    const w = window;
    w.__clr = { longtasks: [], maxGap: 0, gaps: 0, frames: 0, running: true, emptyAt: null };
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) w.__clr.longtasks.push(e.duration);
    }).observe({ type: 'longtask' });
    let last = performance.now();
    const tick = (now) => {
      const gap = now - last;
      last = now;
      w.__clr.frames += 1;
      if (gap > w.__clr.maxGap) w.__clr.maxGap = gap;
      if (gap > 50) w.__clr.gaps += 1;
      if (w.__clr.running) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    const empty = () => !document.querySelector('#pairs-body tr.pair-row:not(.removing)') && !document.getElementById('empty-state').hidden;
    w.__clrEmpty = new Promise((resolve) => {
      const mo = new MutationObserver(() => {
        if (empty()) {
          const at = Date.now();
          mo.disconnect();
          resolve(at);
        }
      });
      mo.observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
    });
  });
  await sleep(300);
  const meter = await workMeter(page);
  const t0 = Date.now();
  const r = await api1.clear();
  const clearMs = Date.now() - t0;
  if (r.status !== 200 || r.json?.error) fail(`clear answered ${r.status}: ${JSON.stringify(r.json)}`);
  else if (r.json?.deleted !== CLEAR_PAIRS) fail(`clear deleted ${r.json?.deleted}, expected ${CLEAR_PAIRS}`);
  const emptyAt = await Promise.race([page.evaluate(() => window.__clrEmpty), sleep(120_000).then(() => null)]);
  if (emptyAt === null) fail(`clear: node 2's page was not empty 120 s after the clear (count "${await countText(page)}")`);
  await sleep(1000); // the fade-outs and a few quiet frames
  const main = await page.evaluate(() => {
    window.__clr.running = false;
    return { ...window.__clr };
  });
  const work = await meter();
  const after = await countText(page);
  if (after !== '0 pairs') fail(`clear: node 2's page shows "${after}" after the clear`);
  await closePage(page, 'clear');
  await waitForCount(api2, 0, { timeout: 120_000, what: 'node 2 to be empty' });
  return {
    pairs: CLEAR_PAIRS,
    seed_ms: seedMs,
    clear_request_ms: clearMs,
    list_empty_after_ms: emptyAt === null ? null : emptyAt - t0,
    longest_task_ms: round(main.longtasks.length ? Math.max(...main.longtasks) : 0),
    long_tasks: main.longtasks.length,
    long_tasks_total_ms: round(main.longtasks.reduce((a, b) => a + b, 0)),
    longest_frame_gap_ms: round(main.maxGap),
    frame_gaps_over_50ms: main.gaps,
    frames: main.frames,
    work,
  };
}

async function seedStep(node1, api1, api2) {
  const seedMs = await seed(node1.url, 'k:', PAIRS);
  const n1 = await countOn(api1);
  if (n1 !== PAIRS) fail(`node 1 holds ${n1} pairs after the import, expected ${PAIRS}`);
  const waitMs = await waitForCount(api2, PAIRS, { what: 'node 2 to hold the pairs' });
  return { pairs: PAIRS, batch: 1000, import_ms: seedMs, node2_all_after_ms: waitMs, import_pairs_per_s: round(PAIRS / (seedMs / 1000), 0) };
}

/** Recorded in the page from its very start: when the first rows and the total are shown. */
function firstRenderProbe({ want, shown }) {
  window.__first = null;
  const check = () => {
    const body = document.getElementById('pairs-body');
    const count = document.getElementById('pair-count');
    if (!body || !count || !body.querySelector('tr.pair-row')) return false;
    const t = count.textContent;
    return t === want || t.startsWith(`${want} ·`);
  };
  const mo = new MutationObserver(() => {
    if (window.__first || !check()) return;
    mo.disconnect();
    window.__first = { dom: performance.now(), rows: document.querySelectorAll('#pairs-body tr.pair-row').length };
    requestAnimationFrame(() => {
      window.__first.frame = performance.now();
      console.debug(shown);
    });
  });
  mo.observe(document, { subtree: true, childList: true, characterData: true });
}
const FIRST_SHOWN = 'kvsync-bench: first render';

async function firstStep(node1) {
  const want = `${nf.format(PAIRS)} pairs`;
  const loads = [];
  for (let i = 0; i < LOADS; i++) {
    let page;
    try {
      page = await newPage(node1.url + '/', { init: { fn: firstRenderProbe, arg: { want, shown: FIRST_SHOWN } }, until: FIRST_SHOWN });
    } catch {
      fail(`first render: load ${i + 1} did not show rows and "${want}" within 60 s`);
      break;
    }
    let got = null;
    try {
      got = await page.evaluate(() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const lists = performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/pairs?'));
        const list = lists[0];
        return {
          ...window.__first,
          dom_content_loaded: nav ? nav.domContentLoadedEventEnd : null,
          list_request_start: list ? list.startTime : null,
          list_response_end: list ? list.responseEnd : null,
          // Every list request until then, with its status: a busy node answers 503 and the page tries again.
          list_requests: lists.filter((e) => e.startTime <= window.__first.dom).map((e) => `${e.responseStatus ?? '?'}@${Math.round(e.startTime)}`),
        };
      });
    } catch (err) {
      fail(`first render: load ${i + 1}: its timings could not be read (${err.message})`);
    }
    await closePage(page, 'first render');
    if (!got) break;
    loads.push({
      frame_ms: round(got.frame),
      dom_ms: round(got.dom),
      rows: got.rows,
      dom_content_loaded_ms: round(got.dom_content_loaded),
      list_request_start_ms: round(got.list_request_start),
      list_response_end_ms: round(got.list_response_end),
      list_requests: got.list_requests,
    });
  }
  const frames = loads.map((l) => l.frame_ms);
  return { loads, p50_ms: round(pct(frames, 50)), max_ms: round(frames.length ? Math.max(...frames) : null) };
}

async function scrollStep(page) {
  await loadRows(page, LOADED);
  const loaded = await loadedRows(page);
  const meter = await workMeter(page);
  const frames = await scrollFrames(page, SCROLL_STEP, SCROLL_FRAMES);
  const work = await meter();
  const rendered = await page.locator('#pairs-body tr.pair-row').count();
  const height = await page.evaluate(() => document.documentElement.scrollHeight);
  const baseline = await baselineScroll(height);
  return {
    work,
    baseline_plain_page: baseline,
    total: PAIRS,
    loaded_before: loaded,
    loaded_after: await loadedRows(page),
    rows_in_dom: rendered,
    step_px: SCROLL_STEP,
    frames: frames.length,
    p50_ms: round(pct(frames, 50)),
    p90_ms: round(pct(frames, 90)),
    p99_ms: round(pct(frames, 99)),
    max_ms: round(Math.max(...frames)),
  };
}

/**
 * Where a page's main thread spent a stretch of time: CDP Performance metrics (seconds,
 * summed over tasks) turned into deltas in ms. `task` is wall time inside tasks, `thread`
 * the main thread's CPU time: on a busy machine the difference is time spent waiting for a core.
 */
async function workMeter(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  const read = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]));
  const start = await read();
  return async () => {
    const end = await read();
    const d = (name) => round(((end[name] ?? 0) - (start[name] ?? 0)) * 1000);
    await cdp.detach().catch(() => {});
    return {
      task_ms: d('TaskDuration'),
      thread_cpu_ms: d('ThreadTime'),
      script_ms: d('ScriptDuration'),
      layout_ms: d('LayoutDuration'),
      style_ms: d('RecalcStyleDuration'),
      layouts: (end.LayoutCount ?? 0) - (start.LayoutCount ?? 0),
      style_recalcs: (end.RecalcStyleCount ?? 0) - (start.RecalcStyleCount ?? 0),
    };
  };
}

/**
 * The same scroll on a static page of the same height without the app (rows of text, no
 * script): what the browser and the machine manage alone.
 */
async function baselineScroll(height) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const n = Math.min(5000, Math.ceil(height / 46));
  await page.setContent(`<!doctype html><body style="margin:0;font-family:monospace">${'<p style="margin:0;height:25px;padding:10px 14px;border-bottom:1px solid #ddd">k:000123 <span style="border:1px solid #ccc;border-radius:6px;padding:1px 8px">a value</span></p>'.repeat(n)}</body>`);
  const frames = await scrollFrames(page, SCROLL_STEP, SCROLL_FRAMES);
  await context.close();
  return { rows: n, p50_ms: round(pct(frames, 50)), p90_ms: round(pct(frames, 90)), p99_ms: round(pct(frames, 99)), max_ms: round(Math.max(...frames)) };
}

async function metrics(cdp) {
  const { metrics: m } = await cdp.send('Performance.getMetrics');
  const get = (name) => m.find((x) => x.name === name)?.value ?? null;
  return { heap_mib: round(get('JSHeapUsedSize') / 2 ** 20, 2), dom_nodes: get('Nodes'), listeners: get('JSEventListeners') };
}

/**
 * What a live page with 100,000 pairs costs while nothing happens: its main thread's CPU over
 * REST_MS, once its start-up is over (the live dot's few pulses included).
 */
const REST_MS = 5000;
async function restStep(page) {
  await sleep(8000);
  const meter = await workMeter(page);
  await sleep(REST_MS);
  const work = await meter();
  return { seconds: REST_MS / 1000, ...work, cpu_per_s_ms: round(work.thread_cpu_ms / (REST_MS / 1000)) };
}

async function memoryStep(page, api2) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  await cdp.send('HeapProfiler.enable');
  const gc = () => cdp.send('HeapProfiler.collectGarbage');
  await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight / 2));
  await sleep(500);
  await installWatch(page);
  const onScreen = await keysOnScreen(page);
  if (!onScreen.length) fail('memory: no row on screen');
  const onScreenSet = new Set(onScreen);
  await gc();
  await sleep(500);
  const before = await metrics(cdp);
  const started = Date.now();
  const series = [{ t_s: 0, ...before }];
  const last = new Map(); // on-screen key -> last value written
  let errors = 0;
  let inFlight = 0;
  let onScreenWrites = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      await sleep(1000);
      if (!sampling) break;
      series.push({ t_s: round((Date.now() - started) / 1000), ...(await metrics(cdp)) });
    }
  })();
  const writes = [];
  for (let i = 0; i < STREAM; i++) {
    const due = started + (i * 1000) / RATE;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
    while (inFlight >= 32) await sleep(5);
    // One write in ten to a row on screen, the others anywhere in the key space.
    const onIt = onScreen.length && i % 10 === 0;
    let key = onIt ? onScreen[(i / 10) % onScreen.length] : null;
    // The others never to an on-screen key, whose last value is checked afterwards.
    while (key === null || (!onIt && onScreenSet.size < PAIRS && onScreenSet.has(key))) key = `k:${pad(Math.floor(Math.random() * PAIRS))}`;
    const value = `s${i}`;
    if (onIt) {
      onScreenWrites += 1;
      last.set(key, value);
    }
    inFlight += 1;
    writes.push(withRetry(() => api2.put(key, [value]), `PUT ${key}`).then((r) => {
      if (r.status !== 200 && r.status !== 201) errors += 1;
    }, () => { errors += 1; }).finally(() => { inFlight -= 1; }));
    // Two writes of one on-screen key must not overtake each other: wait for this one.
    if (onIt) await writes[writes.length - 1];
  }
  await Promise.all(writes);
  const writeSeconds = (Date.now() - started) / 1000;
  if (errors) fail(`memory: ${errors} of ${STREAM} writes failed`);
  // Every on-screen key shows the last value written to it.
  for (const [key, value] of last) {
    try {
      await page.waitForFunction(([k, v]) => [...document.querySelectorAll('#pairs-body tr.pair-row')]
        .some((r) => r.dataset.key === k && [...r.querySelectorAll('.values .value')].some((e) => e.textContent === v)), [key, value], { timeout: SHOW_TIMEOUT_MS, polling: 100 });
    } catch {
      fail(`memory: ${key} does not show its last value "${value}"`);
    }
  }
  await sleep(3000); // the last recount and flashes
  sampling = false;
  await sampler;
  series.push({ t_s: round((Date.now() - started) / 1000), ...(await metrics(cdp)) });
  const total = await countText(page);
  if (!total.startsWith(`${nf.format(PAIRS)} pairs`)) fail(`memory: the page's count shows "${total}" after the writes, expected ${nf.format(PAIRS)} pairs`);
  const elsewhere = await page.locator('#elsewhere').textContent();
  await gc();
  await sleep(500);
  const afterGc = await metrics(cdp);
  const peak = Math.max(...series.map((s) => s.heap_mib));
  const growth = afterGc.heap_mib - before.heap_mib;
  // Bounded: after a collection, within 25 % (or 2 MiB) of where it started, and as many DOM nodes (±10 %).
  const bounded = growth <= Math.max(2, before.heap_mib * 0.25) && Math.abs(afterGc.dom_nodes - before.dom_nodes) <= before.dom_nodes * 0.1;
  return {
    writes: STREAM,
    rate_target_per_s: RATE,
    rate_achieved_per_s: round(STREAM / writeSeconds, 0),
    on_screen_writes: onScreenWrites,
    write_errors: errors,
    before_gc: before,
    peak_heap_mib: round(peak, 2),
    after_gc: afterGc,
    heap_growth_mib: round(growth, 2),
    bounded,
    elsewhere_shown: elsewhere,
    series,
  };
}

// ---------------------------------------------------------------------------------------------
// The report

const met = (ok) => (ok === null ? 'n/a' : ok ? 'met' : '**not met**');

function workLine(w) {
  return `Main thread meanwhile (CDP metrics): ${w.task_ms} ms in tasks (wall), of which ${w.thread_cpu_ms} ms on a core; script ${w.script_ms} ms, layout ${w.layout_ms} ms (${w.layouts} layouts), style ${w.style_ms} ms (${w.style_recalcs} recalculations).`;
}

function markdown(r) {
  const m = r.machine;
  const L = [];
  L.push('# Web UI benchmark', '');
  L.push(`Commit ${m.commit}${m.dirty ? ' (with uncommitted changes)' : ''}, ${m.build} build; ${m.cpu}, ${m.cores} cores, ${m.memory_gib} GiB, ${m.os}, Node ${m.node_js}, headless Chromium ${r.browser}.`);
  L.push(`Started ${r.started}, ${r.seconds} s in all. Flags: \`${r.command}\`.`, '');
  L.push('Load average (1, 5, 15 min) at the start and end of each step (the machine may be shared):', '');
  L.push('| step | seconds | load before | load after |', '|---|--:|---|---|');
  for (const [name, s] of Object.entries(r.steps)) L.push(`| ${name} | ${s.seconds} | ${s.load_before.join(' ')} | ${s.load_after.join(' ')} |`);
  L.push('');
  const t = r.targets;
  L.push('## Against the targets', '');
  L.push('| figure | measured | target | |', '|---|--:|--:|---|');
  if (r.first) L.push(`| first useful render, ${nf.format(PAIRS)} pairs (p50 / max of ${r.first.loads.length} loads) | ${r.first.p50_ms} / ${r.first.max_ms} ms | ≤ ${t.firstRenderMs} ms | ${met(r.first.max_ms === null ? null : r.first.max_ms <= t.firstRenderMs)} |`);
  for (const [name, x] of [[`live change, ${nf.format(PAIRS)} pairs`, r.live], [`live change, ${nf.format(FEW)} pairs`, r.few?.live]]) {
    if (!x) continue;
    L.push(`| ${name}: p50 | ${x.p50_ms} ms | ≤ ${t.liveP50Ms} ms | ${met(x.p50_ms === null ? null : x.p50_ms <= t.liveP50Ms)} |`);
    L.push(`| ${name}: p99 | ${x.p99_ms} ms | ≤ ${t.liveP99Ms} ms | ${met(x.p99_ms === null ? null : x.p99_ms <= t.liveP99Ms)} |`);
  }
  if (r.scroll) L.push(`| scroll frames p90 (${nf.format(r.scroll.loaded_before)} rows loaded) | ${r.scroll.p90_ms} ms | ≤ ${t.scrollP90Ms} ms | ${met(r.scroll.p90_ms <= t.scrollP90Ms)} |`);
  if (r.rest) L.push(`| a live page at rest: main thread CPU | ${r.rest.cpu_per_s_ms} ms per s | (no target) | |`);
  if (r.memory) L.push(`| JS heap after ${nf.format(r.memory.writes)} changes, after GC | ${r.memory.before_gc.heap_mib} → ${r.memory.after_gc.heap_mib} MiB | bounded | ${met(r.memory.bounded)} |`);
  if (r.clear) L.push(`| clear of ${nf.format(r.clear.pairs)} pairs on node 1: longest block in node 2's page | ${r.clear.longest_task_ms} ms (longest frame gap ${r.clear.longest_frame_gap_ms} ms) | (was 9.7 s) | |`);
  L.push('');
  if (r.seed) {
    L.push('## Seeding', '');
    L.push(`${nf.format(r.seed.pairs)} pairs imported on node 1 in batches of ${r.seed.batch} in ${round(r.seed.import_ms / 1000)} s (${r.seed.import_pairs_per_s} pairs/s); node 2 held them all ${round(r.seed.node2_all_after_ms / 1000)} s later.`, '');
  }
  if (r.first) {
    L.push('## First useful render', '');
    L.push('From navigation start (fresh browser context: nothing cached) until the page shows rows and the total; "frame" is the first animation frame after that (it paints then). Milliseconds.', '');
    L.push('| load | frame | rows and total in the DOM | DOMContentLoaded | first list request sent | answered | rows | list requests until shown (status@ms) |', '|--:|--:|--:|--:|--:|--:|--:|---|');
    r.first.loads.forEach((l, i) => L.push(`| ${i + 1} | ${l.frame_ms} | ${l.dom_ms} | ${l.dom_content_loaded_ms} | ${l.list_request_start_ms} | ${l.list_response_end_ms} | ${l.rows} | ${(l.list_requests || []).join(' ')} |`));
    L.push('');
  }
  const liveRow = (name, x) => `| ${name} | ${x.count} | ${x.p50_ms} | ${x.p90_ms} | ${x.p99_ms} | ${x.max_ms} | ${x.put.p50_ms} |`;
  if (r.live || r.few) {
    L.push('## Live change', '');
    L.push('A write on node 2 to a key whose row is on screen in node 1\'s page, one at a time; from just before the PUT (benchmark) until a MutationObserver in the page sees the row show the value (`Date.now()` on both sides: one clock). Milliseconds.', '');
    L.push('| pairs in the node | changes | p50 | p90 | p99 | max | PUT p50 |', '|---|--:|--:|--:|--:|--:|--:|');
    if (r.live) L.push(liveRow(`${nf.format(PAIRS)} (${nf.format(r.scroll?.loaded_after ?? 0)} loaded)`, r.live));
    if (r.few) L.push(liveRow(nf.format(FEW), r.few.live));
    L.push('');
  }
  if (r.scroll) {
    const s = r.scroll;
    L.push('## Scrolling', '');
    L.push(`${nf.format(s.total)} pairs, ${nf.format(s.loaded_before)} rows loaded by scrolling (${nf.format(s.loaded_after)} after), ${s.rows_in_dom} rows in the DOM; scrolled ${s.step_px} px per frame from the top for ${s.frames} frames. Frame intervals: p50 ${s.p50_ms} ms, p90 ${s.p90_ms} ms, p99 ${s.p99_ms} ms, max ${s.max_ms} ms.`, '');
    L.push(`The same scroll on a static page of ${s.baseline_plain_page.rows} rows of text without the app (the browser and machine alone): p50 ${s.baseline_plain_page.p50_ms} ms, p90 ${s.baseline_plain_page.p90_ms} ms, p99 ${s.baseline_plain_page.p99_ms} ms, max ${s.baseline_plain_page.max_ms} ms.`, '');
    L.push(workLine(s.work), '');
  }
  if (r.memory) {
    const x = r.memory;
    L.push('## Memory while changes stream in', '');
    L.push(`${nf.format(x.writes)} writes on node 2 at ${x.rate_achieved_per_s}/s (target ${x.rate_target_per_s}/s), one in ten to a row on screen in node 1's page (${x.on_screen_writes}), the others to random keys of the ${nf.format(PAIRS)}; write errors: ${x.write_errors}. After: "${x.elsewhere_shown}".`, '');
    L.push(`JS heap used ${x.before_gc.heap_mib} MiB before (after a forced GC), peak ${x.peak_heap_mib} MiB, ${x.after_gc.heap_mib} MiB after (after a forced GC): ${x.heap_growth_mib >= 0 ? '+' : ''}${x.heap_growth_mib} MiB. DOM nodes ${x.before_gc.dom_nodes} → ${x.after_gc.dom_nodes}. Bounded (within 25 % or 2 MiB, DOM nodes within 10 %): ${x.bounded ? 'yes' : 'no'}.`, '');
    L.push('| s | heap MiB | DOM nodes | listeners |', '|--:|--:|--:|--:|');
    const every = Math.max(1, Math.ceil(x.series.length / 30));
    x.series.forEach((s, i) => {
      if (i % every === 0 || i === x.series.length - 1) L.push(`| ${s.t_s} | ${s.heap_mib} | ${s.dom_nodes} | ${s.listeners} |`);
    });
    L.push('');
  }
  if (r.clear) {
    const c = r.clear;
    L.push('## Clear', '');
    L.push(`A page on node 2 with all ${nf.format(c.pairs)} rows loaded; node 1 clears them (\`DELETE /api/pairs\`, what "Clear database" calls): answered in ${c.clear_request_ms} ms; node 2's page showed an empty list ${c.list_empty_after_ms} ms after the request was sent. In that page meanwhile: ${c.long_tasks} long tasks (${c.long_tasks_total_ms} ms in all), the longest ${c.longest_task_ms} ms; longest gap between animation frames ${c.longest_frame_gap_ms} ms, ${c.frame_gaps_over_50ms} gaps over 50 ms in ${c.frames} frames.`, '');
    L.push(workLine(c.work), '');
  }
  if (r.failures.length) {
    L.push('## Failures', '');
    for (const f of r.failures) L.push(`- ${f}`);
    L.push('');
  }
  return L.join('\n');
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const report = {
    started: new Date().toISOString(),
    command: `ui-bench ${process.argv.slice(2).join(' ')}`.trim(),
    machine: machine(),
    flags: { pairs: PAIRS, changes: CHANGES, stream: STREAM, rate: RATE, few: FEW, clear_pairs: CLEAR_PAIRS, loads: LOADS, loaded: LOADED, scroll_step: SCROLL_STEP, scroll_frames: SCROLL_FRAMES },
    targets: TARGETS,
    steps,
    failures,
  };
  const started = Date.now();
  let cluster;
  // Stopped from outside: the cluster goes too.
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => {
      log(`${sig}: stopping the cluster`);
      Promise.resolve(cluster?.stop()).finally(() => process.exit(130));
    });
  }
  try {
    cluster = await startCluster({ nodes: 2 });
    browser = await launchBrowser();
    report.browser = browser.version();
    const [node1, node2] = cluster.info.nodes;
    const api1 = apiClient(node1.url);
    const api2 = apiClient(node2.url);

    report.few = await step('few', () => fewStep(node1, api2));
    await clearAll(api1, [api2]);
    report.clear = await step('clear', () => clearStep(node1, node2, api1, api2));
    report.seed = await step('seed', () => seedStep(node1, api1, api2));
    report.first = await step('first', () => firstStep(node1));

    const page = await newPage(node1.url + '/');
    await waitForTotal(page, PAIRS);
    report.rest = await step('rest', () => restStep(page));
    report.scroll = await step('scroll', () => scrollStep(page));
    await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight / 2));
    await sleep(500);
    report.live = await step('live', () => liveChanges(page, api2, CHANGES, 'big', api1));
    report.memory = await step('memory', () => memoryStep(page, api2));
    await closePage(page, 'large');
  } catch (err) {
    fail(`stopped: ${err.stack || err.message}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (cluster) await cluster.stop();
  }
  report.seconds = round((Date.now() - started) / 1000, 0);
  fs.mkdirSync(OUT, { recursive: true });
  fs.writeFileSync(path.join(OUT, 'ui.json'), JSON.stringify(report, null, 2) + '\n');
  fs.writeFileSync(path.join(OUT, 'ui.md'), markdown(report) + '\n');
  log(`wrote ${path.join(OUT, 'ui.md')} and ui.json`);
  if (failures.length) {
    log(`${failures.length} failure(s):\n  ${failures.join('\n  ')}`);
    process.exit(1);
  }
  process.exit(0); // without waiting for the timers of the races above
}

await main();
