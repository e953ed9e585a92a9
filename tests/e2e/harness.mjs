// Shared helpers for the browser tests: a real cluster, headless Chromium, and page helpers.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Cargo's target directory: where the binaries are, and the artifacts go. */
export const TARGET = path.resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target');
export const ARTIFACTS = path.join(TARGET, 'e2e-artifacts');
/** How long to wait for a change to show up on the other node's page. */
export const LIVE_TIMEOUT = Number(process.env.KVSYNC_E2E_LIVE_TIMEOUT_MS || 20_000);

/** Loads playwright-core from the tools directory (scripts/install-deps.sh --browser) or NODE_PATH. */
export function loadPlaywright() {
  const tools = process.env.KVSYNC_TOOLS || path.join(os.homedir(), '.cache', 'kvsync-tools');
  const places = [path.join(tools, 'node', 'index.js'), fileURLToPath(import.meta.url)];
  for (const from of places) {
    try {
      return createRequire(from)('playwright-core');
    } catch {
      /* try the next place */
    }
  }
  throw new Error(
    'playwright-core not found: run scripts/install-deps.sh --browser (or put it on NODE_PATH)',
  );
}

let clustersStarted = 0;

/**
 * Starts `kvsync-cluster --nodes N` and waits for its JSON ready line.
 * KVSYNC_CLUSTER_BIN overrides the binary (default: $CARGO_TARGET_DIR/debug/kvsync-cluster,
 * target/ when unset).
 */
export async function startCluster({ nodes = 2, nodeEnv = {}, timeoutMs = 120_000 } = {}) {
  const bin = process.env.KVSYNC_CLUSTER_BIN || path.join(TARGET, 'debug', 'kvsync-cluster');
  if (!fs.existsSync(bin)) {
    throw new Error(`${bin} does not exist; build it with: cargo build -p kvsync-node -p kvsync-testkit`);
  }
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const log = fs.createWriteStream(path.join(ARTIFACTS, 'cluster.log'));
  const args = ['--nodes', String(nodes)];
  // Keeps each cluster's data and logs afterwards (in a directory of its own under this one),
  // for a look at what the nodes did.
  if (process.env.KVSYNC_CLUSTER_DIR) {
    clustersStarted += 1;
    args.push('--dir', path.join(process.env.KVSYNC_CLUSTER_DIR, `${process.pid}-${clustersStarted}`));
  }
  for (const [k, v] of Object.entries(nodeEnv)) args.push('--node-env', `${k}=${v}`);
  const child = spawn(bin, args, {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  child.stderr.pipe(log, { end: false });

  let exited = null;
  const exit = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });

  const lines = readline.createInterface({ input: child.stdout });
  const info = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`kvsync-cluster was not ready within ${timeoutMs / 1000} s (see ${path.relative(ROOT, ARTIFACTS)}/cluster.log)`));
    }, timeoutMs);
    lines.on('line', (line) => {
      log.write(`[stdout] ${line}\n`);
      const text = line.trim();
      if (!text.startsWith('{')) return;
      try {
        const parsed = JSON.parse(text);
        if (Array.isArray(parsed.nodes)) {
          clearTimeout(timer);
          resolve(parsed);
        }
      } catch {
        /* not the ready line */
      }
    });
    exit.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`kvsync-cluster exited before it was ready (code ${code}, signal ${signal}); see ${path.relative(ROOT, ARTIFACTS)}/cluster.log`));
    });
  }).catch(async (err) => {
    child.kill('SIGTERM');
    throw err;
  });

  // The broker (tansu) is a child of kvsync-cluster; a test can pause it (SIGSTOP) so that
  // writes on the nodes meanwhile are truly concurrent: none has seen the other's.
  let brokerPaused = null;
  function brokerPid() {
    const pid = findDescendant(child.pid, 'tansu');
    if (!pid) throw new Error('the broker process (tansu) was not found under kvsync-cluster');
    return pid;
  }
  function pauseBroker() {
    const pid = brokerPid();
    process.kill(pid, 'SIGSTOP');
    brokerPaused = pid;
  }
  function resumeBroker() {
    if (brokerPaused === null) return;
    process.kill(brokerPaused, 'SIGCONT');
    brokerPaused = null;
  }

  // A node can be paused (SIGSTOP) too: to its peers it is as if it stopped answering, and
  // it carries on where it was when resumed (SIGCONT). `id` is the node's id, e.g. "node2".
  const pausedNodes = new Set();
  function nodePid(id) {
    const node = info.nodes.find((n) => n.id === id);
    if (!node) throw new Error(`no node ${id} in this cluster`);
    if (!node.pid) throw new Error('kvsync-cluster did not report the node pids: rebuild it (cargo build -p kvsync-testkit)');
    return node.pid;
  }
  function pauseNode(id) {
    const pid = nodePid(id);
    process.kill(pid, 'SIGSTOP');
    pausedNodes.add(pid);
  }
  function resumeNode(id) {
    const pid = nodePid(id);
    process.kill(pid, 'SIGCONT');
    pausedNodes.delete(pid);
  }

  async function stop() {
    if (exited) return;
    try {
      resumeBroker();
    } catch {
      /* gone already */
    }
    for (const pid of pausedNodes) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        /* gone already */
      }
    }
    pausedNodes.clear();
    child.stdin.end();
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exit;
    clearTimeout(timer);
    log.end();
  }
  return { info, stop, pauseBroker, resumeBroker, pauseNode, resumeNode };
}

/** The first process under `rootPid` (children first) whose name is `name` (Linux /proc). */
function findDescendant(rootPid, name) {
  const children = (pid) => {
    try {
      return fs.readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
        fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number));
    } catch {
      return [];
    }
  };
  const queue = children(rootPid);
  while (queue.length) {
    const pid = queue.shift();
    let comm = '';
    try {
      comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    if (comm === name) return pid;
    queue.push(...children(pid));
  }
  return null;
}

export async function launchBrowser() {
  const { chromium } = loadPlaywright();
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * Opens `url` in a fresh browser context and waits until the page is live. Script errors go
 * to `errors`, and dialogs (there should be none) are dismissed and noted in `dialogs`.
 */
export async function openPage(browser, url, { viewport = { width: 1280, height: 860 }, errors = [], dialogs = [] } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('pageerror', (err) => errors.push(`${url}: ${err.message}`));
  page.on('dialog', (d) => {
    dialogs.push(`${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  await page.goto(url);
  await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
  return page;
}

/** Adds a value through the page's "Add a value" form. */
export async function addThroughForm(page, key, value) {
  await page.getByLabel('Key', { exact: true }).fill(key);
  await page.getByLabel('Value', { exact: true }).fill(value);
  await page.getByRole('button', { name: 'Add value', exact: true }).click();
}

/** Small JSON client for the node API, used to change data behind a page's back. */
export function apiClient(baseUrl, { token } = {}) {
  const auth = token ? { Authorization: `Bearer ${token}` } : {};
  async function call(method, p, { body, headers = {} } = {}) {
    const res = await fetch(new URL(p, baseUrl + '/'), {
      method,
      headers: { ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...auth, ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    return { status: res.status, json, etag: res.headers.get('etag') };
  }
  const kp = (key) => `api/pairs/${encodeURIComponent(key)}`;
  const vp = (key, id) => `${kp(key)}/values/${encodeURIComponent(id)}`;
  return {
    get: (key) => call('GET', kp(key)),
    put: (key, values, headers) => call('PUT', kp(key), { body: { values }, headers }),
    append: (key, value) => call('POST', `${kp(key)}/values`, { body: { value } }),
    editValue: (key, id, value, headers) => call('PUT', vp(key, id), { body: { value }, headers }),
    conflicts: (key) => call('GET', `${kp(key)}/conflicts`),
    remove: (key) => call('DELETE', kp(key)),
    clear: () => call('DELETE', 'api/pairs'),
    list: (q = '') => call('GET', `api/pairs${q}`),
  };
}

/** Polls `fn` until it returns a truthy value. */
export async function eventually(fn, { timeout = LIVE_TIMEOUT, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** A unique key prefix for one test, so tests never see each other's data. */
export function uniq(name) {
  return `${name}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

/** CSS selector for the table row of `key` (JSON string escaping is valid CSS string escaping). */
export function rowSel(key) {
  return `tr.pair-row[data-key=${JSON.stringify(key)}]`;
}

/** The values a page currently shows for `key`, or null if it shows no such row. */
export function rowValues(page, key) {
  return page.evaluate((k) => {
    const row = [...document.querySelectorAll('#pairs-body tr.pair-row')].find(
      (r) => r.dataset.key === k && !r.classList.contains('removing'),
    );
    if (!row || row.classList.contains('editing')) return row ? 'editing' : null;
    return [...row.querySelectorAll('.values .value:not(.value-none)')].map((e) => (e.classList.contains('value-empty') ? '' : e.textContent));
  }, key);
}

/** Waits until the page shows exactly `values` for `key` (or no row at all when `values` is null). */
export async function waitForRow(page, key, values, timeout = LIVE_TIMEOUT) {
  await page.waitForFunction(
    ([k, want]) => {
      const row = [...document.querySelectorAll('#pairs-body tr.pair-row')].find(
        (r) => r.dataset.key === k && !r.classList.contains('removing'),
      );
      if (want === null) return !row;
      if (!row || row.classList.contains('editing')) return false;
      const got = [...row.querySelectorAll('.values .value:not(.value-none)')].map((e) => (e.classList.contains('value-empty') ? '' : e.textContent));
      return JSON.stringify(got) === JSON.stringify(want);
    },
    [key, values],
    { timeout, polling: 50 },
  );
}

/**
 * Installs a recorder in the page: which keys were highlighted, and a marker that disappears
 * if the page reloads. Returns a function that reads the recording.
 */
export async function watchPage(page) {
  await page.evaluate(() => {
    window.__e2eMarker = true;
    window.__e2eFlashed = new Set();
    const body = document.getElementById('pairs-body');
    const note = (el) => {
      if (el instanceof HTMLElement && el.matches('tr.pair-row.flash')) window.__e2eFlashed.add(el.dataset.key);
    };
    new MutationObserver((records) => {
      for (const r of records) {
        note(r.target);
        r.addedNodes.forEach(note);
      }
    }).observe(body, { subtree: true, childList: true, attributes: true, attributeFilter: ['class'] });
  });
  return () => page.evaluate(() => ({ notReloaded: window.__e2eMarker === true, flashed: [...window.__e2eFlashed] }));
}

export async function screenshot(page, name, opts = {}) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file, ...opts });
  return file;
}

/**
 * A TCP proxy in front of a node, so a test can cut the page's connections (as if the node
 * went away) and later let them through again.
 */
export async function startProxy(targetUrl) {
  const target = new URL(targetUrl);
  const sockets = new Set();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Drops every open connection and refuses new ones until restore(). */
    cut() {
      cut = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    restore() {
      cut = false;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
