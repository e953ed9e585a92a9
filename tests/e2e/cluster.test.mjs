// Browser tests of the cluster panel (GET /api/cluster) against a real two-node cluster whose
// nodes call a peer away after a short silence, so that pausing one shows within seconds.
// Run with scripts/e2e.sh, or: node --test --test-concurrency=1 tests/e2e/
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  LIVE_TIMEOUT,
  launchBrowser,
  openPage as openPageIn,
  screenshot,
  startCluster,
  startProxy,
} from './harness.mjs';

const DESKTOP = { width: 1280, height: 860 };
/** The nodes' KVSYNC_PEER_AWAY_AFTER_MS and KVSYNC_HEARTBEAT_INTERVAL_MS. */
const AWAY_MS = 2500;
const HEARTBEAT_MS = 250;
/** The panel asks the node every third of the away time, at least every second. */
const POLL_MS = Math.max(1000, Math.round(AWAY_MS / 3));
/** What a page may add to the node's own view: one poll, and the time to ask and draw. */
const PAGE_SLACK_MS = POLL_MS + 2000;

let cluster;
let browser;
let node1;
let node2;
let pageA; // on node 1
let pageB; // on node 2
const pageErrors = [];
const dialogs = [];

function openPage(url) {
  return openPageIn(browser, url, { viewport: DESKTOP, errors: pageErrors, dialogs });
}

/** What the panel shows for each member, row by row. */
function members(page) {
  return page.evaluate(() => [...document.querySelectorAll('#cluster-body tr')].map((r) => ({
    node: r.querySelector('.member-node')?.textContent ?? null,
    status: r.querySelector('.member-status')?.textContent.replace(/[●○]/g, '').trim() ?? null,
    self: Boolean(r.querySelector('.member-self')?.textContent === 'this node'),
    joining: Boolean(r.querySelector('.member-joining')),
    behind: r.querySelector('.lag-cell')?.textContent ?? null,
    clock: r.querySelector('.clock-cell')?.textContent ?? null,
    heard: r.querySelector('.heard-cell')?.textContent ?? null,
    link: r.querySelector('.member-addr a')?.getAttribute('href') ?? null,
    addr: r.querySelector('.member-addr')?.textContent ?? null,
  })));
}

/** Waits until the panel shows `node` with the status text `status` ("Live" or "Away"), fresh. */
function waitForMember(page, node, status, timeout = LIVE_TIMEOUT) {
  return page.waitForFunction(([n, s]) => {
    if (document.getElementById('cluster')?.dataset.stale !== 'false') return false;
    const row = [...document.querySelectorAll('#cluster-body tr')].find((r) => r.querySelector('.member-node')?.textContent === n);
    return row && row.querySelector('.member-status').textContent.replace(/[●○]/g, '').trim() === s;
  }, [node, status], { timeout, polling: 50 });
}

function glance(page) {
  return page.locator('#cluster-glance');
}

async function openPanel(page) {
  const details = page.locator('#cluster');
  if (!(await details.evaluate((d) => d.open))) await page.locator('#cluster > summary').click();
  await page.getByRole('table').filter({ has: page.getByRole('columnheader', { name: 'Member' }) }).waitFor();
}

async function clusterApi(url) {
  const res = await fetch(`${url}/api/cluster`);
  assert.equal(res.status, 200);
  return res.json();
}

before(async () => {
  cluster = await startCluster({
    nodes: 2,
    nodeEnv: { KVSYNC_PEER_AWAY_AFTER_MS: AWAY_MS, KVSYNC_HEARTBEAT_INTERVAL_MS: HEARTBEAT_MS },
  });
  [node1, node2] = cluster.info.nodes;
  assert.ok(node1 && node2, 'the cluster reports two nodes');
  browser = await launchBrowser();
  pageA = await openPage(node1.url + '/');
  pageB = await openPage(node2.url + '/');
});

after(async () => {
  try {
    if (pageA) await screenshot(pageA, 'cluster-final-node1.png').catch(() => {});
    if (browser) await browser.close();
  } finally {
    if (cluster) await cluster.stop();
  }
});

describe('cluster panel', { concurrency: false }, () => {
  test('lists both nodes live, marks this node, and opens over the page without moving it', async () => {
    await glance(pageA).filter({ hasText: '2/2 live' }).waitFor({ timeout: LIVE_TIMEOUT });
    assert.equal(await pageA.locator('#cluster').evaluate((d) => d.open), false, 'closed at first');
    const before = await pageA.locator('#pairs-heading').boundingBox();

    await openPanel(pageA);
    await waitForMember(pageA, node2.id, 'Live');
    const shown = await members(pageA);
    assert.deepEqual(shown.map((m) => [m.node, m.status, m.self]), [[node1.id, 'Live', true], [node2.id, 'Live', false]]);
    for (const m of shown) {
      assert.match(m.behind, /^(up to date|\d+ events?( · .+)?|\d.*s)$/, `${m.node} behind: ${m.behind}`);
      assert.equal(m.joining, false);
    }
    assert.match(shown[1].clock, /^([+−±]\d.*s|unknown)$/, `clock offset of ${node2.id}: ${shown[1].clock}`);
    assert.match(shown[1].heard, /ago$/);
    assert.equal(shown[0].link, null, 'no address configured: no link');
    const row2 = pageA.getByRole('row', { name: new RegExp(node2.id) });
    assert.equal(await row2.getByRole('rowheader').count(), 1, 'each member is a row headed by its name');
    assert.deepEqual(await pageA.locator('#pairs-heading').boundingBox(), before, 'the list did not move');
    await screenshot(pageA, 'cluster-panel-node1.png');

    // The keyboard closes it (Escape) and opens it (Enter on the summary).
    await pageA.keyboard.press('Escape');
    assert.equal(await pageA.locator('#cluster').evaluate((d) => d.open), false, 'Escape closes the panel');
    assert.equal(await pageA.evaluate(() => document.activeElement?.tagName), 'SUMMARY', 'focus goes back to the summary');
    await pageA.keyboard.press('Enter');
    assert.equal(await pageA.locator('#cluster').evaluate((d) => d.open), true, 'Enter opens it');
    await pageA.keyboard.press('Escape');

    // Node 2's page marks node 2 as this node.
    await openPanel(pageB);
    await waitForMember(pageB, node1.id, 'Live');
    assert.deepEqual((await members(pageB)).map((m) => [m.node, m.self]), [[node2.id, true], [node1.id, false]]);
    await pageB.keyboard.press('Escape');
  });

  test('phone width: the chip and the open panel fit the screen', async () => {
    const context = await browser.newContext({ viewport: { width: 375, height: 812 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const phone = await context.newPage();
    phone.on('pageerror', (err) => pageErrors.push(`phone: ${err.message}`));
    try {
      await phone.goto(node1.url + '/');
      await glance(phone).filter({ hasText: '2/2 live' }).waitFor({ timeout: LIVE_TIMEOUT });
      await phone.locator('#cluster > summary').tap();
      await waitForMember(phone, node2.id, 'Live');
      const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.ok(overflow <= 0, `page scrolls sideways by ${overflow}px`);
      const box = await phone.locator('.cluster-panel').boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= 375, `the panel fits the screen: ${JSON.stringify(box)}`);
      await screenshot(phone, 'cluster-phone.png');
    } finally {
      await context.close();
    }
  });

  test('a node that stops answering turns away within the away time, and live when it is back', async (t) => {
    await openPanel(pageA);
    await waitForMember(pageA, node2.id, 'Live');
    cluster.pauseNode(node2.id);
    const paused = Date.now();
    try {
      await waitForMember(pageA, node2.id, 'Away', AWAY_MS + PAGE_SLACK_MS);
      const away = Date.now() - paused;
      t.diagnostic(`${node2.id} shown away ${away} ms after it was paused (away after ${AWAY_MS} ms)`);
      const shown = await members(pageA);
      assert.deepEqual(shown.map((m) => [m.node, m.status, m.self]), [[node1.id, 'Live', true], [node2.id, 'Away', false]]);
      assert.equal(await glance(pageA).textContent(), '1/2 live, 1 away');
      assert.match(await pageA.locator('#cluster-announce').textContent(), new RegExp(`${node2.id} is away`));
      const api = await clusterApi(node1.url);
      assert.equal(api.members.find((m) => m.node === node2.id).status, 'away', 'the node says so too');
      await screenshot(pageA, 'cluster-away-node1.png');
    } finally {
      cluster.resumeNode(node2.id);
    }
    const resumed = Date.now();
    await waitForMember(pageA, node2.id, 'Live');
    t.diagnostic(`${node2.id} shown live again ${Date.now() - resumed} ms after it was resumed`);
    assert.equal(await glance(pageA).textContent(), '2/2 live');
    assert.match(await pageA.locator('#cluster-announce').textContent(), new RegExp(`${node2.id} is live again`));
    await pageA.keyboard.press('Escape');
  });

  test('when the page cannot reach its node the panel says it is stale, and is fresh once it can', async () => {
    const proxy = await startProxy(node1.url);
    const context = await browser.newContext({ viewport: DESKTOP });
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(`proxied: ${err.message}`));
    try {
      await page.goto(proxy.url + '/');
      await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
      await openPanel(page);
      await waitForMember(page, node2.id, 'Live');

      proxy.cut();
      await page.locator('#cluster-glance[data-state="stale"]').waitFor({ timeout: LIVE_TIMEOUT });
      assert.equal(await glance(page).textContent(), 'not updated', 'the glance no longer claims anyone is live');
      const note = page.locator('#cluster-stale');
      assert.ok(await note.isVisible(), 'the panel says it is stale');
      assert.match(await note.textContent(), /^Not updated since .+ may be out of date\.$/);
      assert.match(await page.locator('#cluster-updated').textContent(), /\(stale\)$/);
      assert.equal((await members(page)).length, 2, 'the last answer is still there, marked stale');
      await screenshot(page, 'cluster-stale.png');

      proxy.restore();
      await waitForMember(page, node2.id, 'Live');
      assert.ok(await note.isHidden(), 'the stale note is gone');
      assert.equal(await glance(page).textContent(), '2/2 live');
    } finally {
      await context.close();
      await proxy.close();
    }
  });

  test('a node that hangs leaves its page\'s panel stale, not fresh', async (t) => {
    await openPanel(pageA);
    await waitForMember(pageA, node2.id, 'Live');
    cluster.pauseNode(node1.id); // the page's own node: connections stay open, nothing answers
    const paused = Date.now();
    try {
      await pageA.locator('#cluster-glance[data-state="stale"]').waitFor({ timeout: LIVE_TIMEOUT });
      t.diagnostic(`stale ${Date.now() - paused} ms after the page's node was paused`);
      assert.match(await pageA.locator('#cluster-stale').textContent(), /did not answer within/);
    } finally {
      cluster.resumeNode(node1.id);
    }
    await waitForMember(pageA, node2.id, 'Live');
    await pageA.keyboard.press('Escape');
  });

  test('addresses are links (web addresses only), joining members and lag are shown', async () => {
    const context = await browser.newContext({ viewport: DESKTOP });
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(`faked: ${err.message}`));
    const fake = {
      node: 'node1',
      at: new Date().toISOString(),
      away_after_ms: 10_000,
      members: [
        { node: 'node1', self: true, status: 'live', addr: 'http://node1.example:3003/', last_heard_ms_ago: 0, clock_offset_ms: 0, caught_up_at: null, repairs: 0, joining: false },
        { node: 'node2', self: false, status: 'live', addr: 'javascript:alert(1)', last_heard_ms_ago: 120, clock_offset_ms: 15, caught_up_at: null, repairs: 0, joining: true },
        { node: 'node3', self: false, status: 'away', addr: '<img src=x onerror=alert(1)>', last_heard_ms_ago: 65_000, clock_offset_ms: -1234, caught_up_at: null, repairs: 2, joining: false },
      ],
      lag: [
        { origin: 'node2', applier: 'node1', events: 0, ms: 0 },
        { origin: 'node3', applier: 'node1', events: 0, ms: 0 },
        { origin: 'node1', applier: 'node2', events: 42, ms: 1500 },
        { origin: 'node3', applier: 'node2', events: 5, ms: 0 },
        { origin: 'node1', applier: 'node3', events: 7, ms: 250 },
        { origin: 'node2', applier: 'node3', events: 3, ms: 900 },
      ],
      repair: { rounds: 0, buckets_differing: 0, keys_republished: 0, snapshots_served: 0, tombstones_collected: 0 },
    };
    await page.route('**/api/cluster', (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(fake) }));
    try {
      await page.goto(node1.url + '/');
      await glance(page).filter({ hasText: '2/3 live, 1 away, joining' }).waitFor({ timeout: LIVE_TIMEOUT });
      await openPanel(page);
      const [m1, m2, m3] = await members(page);
      assert.equal(m1.link, 'http://node1.example:3003/');
      assert.deepEqual([m2.link, m2.addr], [null, 'javascript:alert(1)'], 'not a web address: shown as text');
      assert.deepEqual([m3.link, m3.addr], [null, '<img src=x onerror=alert(1)>']);
      assert.equal(await page.locator('#cluster img').count(), 0, 'an address is never HTML');
      assert.deepEqual([m2.status, m2.joining, m2.behind, m2.clock, m2.heard], ['Live', true, '42 events · 1.5 s', '+15 ms', '120 ms ago']);
      assert.deepEqual([m3.status, m3.behind, m3.clock, m3.heard], ['Away', '7 events · 900 ms', '−1.2 s', '65 s ago']);
      assert.deepEqual([m1.self, m1.behind, m1.clock], [true, 'up to date', '—']);
      await screenshot(page, 'cluster-panel-three.png');
    } finally {
      await context.close();
    }
  });

  test('no script errors on any page', () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(dialogs, []);
  });
});
