// Browser tests of a UI that never misleads: multi-line values kept, any number of tabs on
// one node, "Live" only while the node answers, writes that end with a clear message,
// notices that neither cover the status nor outstay what they reported, a visible focus
// ring in every colour scheme, and searches that help.
// Run with scripts/e2e.sh, or: node --test --test-concurrency=1 tests/e2e/honest.test.mjs
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

import {
  LIVE_TIMEOUT,
  apiClient,
  eventually,
  launchBrowser,
  openPage as openPageIn,
  rowSel,
  startCluster,
  uniq,
  waitForRow,
} from './harness.mjs';

let cluster;
let browser;
let node1;
let node2;
let api1;
let api2;
let pageA; // on node 1, kept open
const errors = [];
const dialogs = [];

const openPage = (url, opts = {}) => openPageIn(browser, url, { errors, dialogs, ...opts });
const row = (page, key) => page.locator(rowSel(key));

before(async () => {
  cluster = await startCluster({ nodes: 2 });
  [node1, node2] = cluster.info.nodes;
  api1 = apiClient(node1.url);
  api2 = apiClient(node2.url);
  browser = await launchBrowser();
  pageA = await openPage(node1.url + '/');
});

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    if (cluster) await cluster.stop();
  }
});

/** Shows only keys starting with `prefix` and waits for that list. */
async function filterTo(page, prefix) {
  await page.getByLabel('Filter by key prefix').fill(prefix);
  await page.waitForFunction((p) => (new URL(location.href).searchParams.get('filter') ?? '') === p, prefix, { timeout: LIVE_TIMEOUT })
    .catch((e) => { throw new Error(`${e.message}; at ${page.url()}, filter field: ${JSON.stringify(prefix)}`); });
}

function overlaps(a, b) {
  return a && b && a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
}

describe('a web UI that never misleads', { concurrency: false }, () => {
  test('a multi-line value typed into the add form, or a new value of the editor, keeps its line breaks', async () => {
    const key = uniq('lines');
    await filterTo(pageA, key);
    await pageA.getByLabel('Key', { exact: true }).fill(key);
    await pageA.getByLabel('Value', { exact: true }).fill('first line\nsecond line');
    await pageA.getByRole('button', { name: 'Add value', exact: true }).click();
    await eventually(async () => (await api1.get(key)).status === 200, { what: 'the add' });
    assert.deepEqual((await api1.get(key)).json.values, ['first line\nsecond line']);
    await waitForRow(pageA, key, ['first line\nsecond line']);

    // Typed: Enter starts a new line, Ctrl+Enter adds.
    const value = pageA.getByLabel('Value', { exact: true });
    await value.fill('');
    await value.focus();
    await pageA.keyboard.type('typed one');
    await pageA.keyboard.press('Enter');
    await pageA.keyboard.type('typed two');
    await pageA.keyboard.press('Control+Enter');
    await waitForRow(pageA, key, ['first line\nsecond line', 'typed one\ntyped two']);

    // A new value in the editor.
    await row(pageA, key).locator('[data-action="edit"]').click();
    const editor = row(pageA, key);
    await editor.getByRole('button', { name: '+ Add value' }).click();
    const third = editor.getByLabel('Value 3', { exact: true });
    await third.focus();
    await pageA.keyboard.type('pem begin');
    await pageA.keyboard.press('Enter');
    await pageA.keyboard.type('pem end');
    await pageA.keyboard.press('Control+Enter'); // saves
    await eventually(async () => (await api1.get(key)).json.values.length === 3, { what: 'the save' });
    assert.deepEqual((await api1.get(key)).json.values, ['first line\nsecond line', 'typed one\ntyped two', 'pem begin\npem end']);
    await filterTo(pageA, '');
  });

  test('notices never cover the connection status, and an error notice goes once the thing works again', async () => {
    const key = uniq('notice');
    await api1.put(key, ['v']);
    await filterTo(pageA, key);
    await waitForRow(pageA, key, ['v']);
    await row(pageA, key).locator('[data-action="edit"]').click();
    // Too large for the node (a value is at most 64 KiB): the save fails.
    await row(pageA, key).getByLabel('Value 1', { exact: true }).fill('x'.repeat(70_000));
    await row(pageA, key).getByRole('button', { name: 'Save' }).click();
    const failed = pageA.locator('#messages .msg-error').filter({ hasText: `Could not save “${key}”` });
    await failed.waitFor({ timeout: LIVE_TIMEOUT });
    for (const viewport of [{ width: 1280, height: 860 }, { width: 375, height: 740 }]) {
      await pageA.setViewportSize(viewport);
      await pageA.evaluate(() => window.scrollTo(0, 0));
      const status = await pageA.locator('#live-status').boundingBox();
      const notice = await failed.boundingBox();
      assert.ok(!overlaps(status, notice), `at ${viewport.width} px the notice ${JSON.stringify(notice)} covers the status ${JSON.stringify(status)}`);
    }
    await pageA.setViewportSize({ width: 1280, height: 860 });
    // Saved after all: the error notice about it goes.
    await row(pageA, key).getByLabel('Value 1', { exact: true }).fill('small');
    await row(pageA, key).getByRole('button', { name: 'Save' }).click();
    await waitForRow(pageA, key, ['small']);
    await failed.waitFor({ state: 'detached', timeout: LIVE_TIMEOUT });
    await filterTo(pageA, '');
  });

  test('the focus ring is visible in light, dark and forced colours', async () => {
    const page = await openPage(node1.url + '/');
    try {
      for (const media of [{ colorScheme: 'light' }, { colorScheme: 'dark' }, { forcedColors: 'active' }]) {
        await page.emulateMedia(media);
        for (const sel of ['#refresh-btn', '#filter-input']) {
          // Reached from the keyboard, as :focus-visible wants.
          await page.locator(sel).focus();
          await page.keyboard.press('Shift+Tab');
          await page.keyboard.press('Tab');
          const ring = await page.evaluate(() => {
            const s = getComputedStyle(document.activeElement);
            return { id: document.activeElement.id, style: s.outlineStyle, width: parseFloat(s.outlineWidth), color: s.outlineColor };
          });
          assert.equal(ring.id, sel.slice(1));
          assert.ok(ring.style !== 'none' && ring.width >= 2 && !/rgba\(.*, 0\)$/.test(ring.color) && ring.color !== 'transparent',
            `${JSON.stringify(media)}: ${sel} shows ${JSON.stringify(ring)}`);
        }
      }
    } finally {
      await page.context().close();
    }
  });

  test('a glob typed without "Glob" ticked is offered as a glob, and a search shows how many keys it found', async () => {
    const root = uniq('many');
    // More matches than the first page of a search holds.
    const keys = Array.from({ length: 150 }, (_, i) => `${root}/k${String(i).padStart(3, '0')}`);
    for (let i = 0; i < keys.length; i += 15) await Promise.all(keys.slice(i, i + 15).map((k) => api1.put(k, ['v'])));
    const page = await openPage(node1.url + '/');
    try {
      await page.getByLabel('Search keys').fill(`${root}/k?4*`);
      const hint = page.locator('#glob-hint');
      await hint.waitFor({ timeout: LIVE_TIMEOUT });
      await hint.getByRole('button', { name: 'Search as a glob' }).click();
      assert.ok(await page.getByLabel('Glob (* and ?)').isChecked());
      await page.locator('#pair-count').filter({ hasText: /^20 matches$/ }).waitFor({ timeout: LIVE_TIMEOUT });
      await hint.waitFor({ state: 'hidden' });

      await page.getByLabel('Glob (* and ?)').uncheck();
      await page.getByLabel('Search keys').fill(`${root}/k`);
      // Only the first 100 rows are loaded, but the total is counted.
      await page.locator('#pair-count').filter({ hasText: /^150 matches/ }).waitFor({ timeout: LIVE_TIMEOUT });
      assert.equal(await page.locator('#pairs-body tr.pair-row').count() <= 150, true);
    } finally {
      await page.context().close();
    }
  });

  test('a lost concurrent edit is counted in the header and shown in the key view, where it can be dismissed', async () => {
    const pageB = await openPage(node2.url + '/');
    try {
      const key = uniq('clash');
      const put = await api1.put(key, ['shared']);
      await eventually(async () => (await api2.get(key)).status === 200, { what: 'replication to node 2' });
      const id = put.json.elements[0].id;
      // With the broker paused, neither node hears of the other's edit before making its own.
      cluster.pauseBroker();
      try {
        assert.equal((await api1.editValue(key, id, 'from node1')).status, 200);
        assert.equal((await api2.editValue(key, id, 'from node2')).status, 200);
      } finally {
        cluster.resumeBroker();
      }
      const loser = await eventually(async () => {
        for (const n of [node1, node2]) if ((await apiClient(n.url).conflicts(key)).json?.conflicts?.length) return n;
        return null;
      }, { timeout: 60_000, what: 'a node to record the conflict' });
      const page = loser === node1 ? pageA : pageB;
      const count = page.locator('#conflict-count');
      await count.filter({ hasText: /^⚠ 1 conflict$/ }).waitFor({ timeout: LIVE_TIMEOUT });
      await count.click();
      await page.locator('#key-view-conflicts').filter({ hasText: 'A concurrent edit from' }).waitFor({ timeout: LIVE_TIMEOUT });
      assert.equal(new URL(page.url()).searchParams.get('key'), key);
      await page.getByRole('link', { name: '← All pairs' }).click();

      // A page opened on the key later shows it too, and Dismiss forgets it.
      const fresh = await openPage(`${loser.url}/?key=${encodeURIComponent(key)}`);
      try {
        const notes = fresh.locator('#key-view-conflicts');
        await notes.filter({ hasText: 'A concurrent edit from' }).waitFor({ timeout: LIVE_TIMEOUT });
        // Conflicts are each node's own record: the page says so where it shows them.
        await notes.filter({ hasText: 'Recorded by this node' }).waitFor({ timeout: LIVE_TIMEOUT });
        await fresh.locator('#conflict-count').filter({ hasText: '1 conflict' }).waitFor({ timeout: LIVE_TIMEOUT });
        await notes.getByRole('button', { name: `Dismiss the notice about ${key}` }).click();
        await notes.waitFor({ state: 'hidden', timeout: LIVE_TIMEOUT });
        await fresh.locator('#conflict-count').waitFor({ state: 'hidden', timeout: LIVE_TIMEOUT });
        assert.deepEqual((await apiClient(loser.url).conflicts(key)).json.conflicts, []);
      } finally {
        await fresh.context().close();
      }
    } finally {
      await pageB.context().close();
    }
  });

  test('a key\'s view edits, adds and removes values in place, with a JSON check and Format; clipped values say so; an added key comes into sight', async () => {
    const root = uniq('view');
    const key = `${root}/json`;
    const long = Array.from({ length: 12 }, (_, i) => `line ${i}`).join('\n');
    await api1.put(key, ['{"a":1}', long]);
    await Promise.all(Array.from({ length: 40 }, (_, i) => api1.put(`${root}/k${String(i).padStart(2, '0')}`, ['v'])));
    const page = await openPage(`${node1.url}/?filter=${encodeURIComponent(root + '/')}`, { viewport: { width: 1000, height: 600 } });
    try {
      await waitForRow(page, key, ['{"a":1}', long]);
      const cue = await row(page, key).locator('.value.clipped').evaluate((e) => getComputedStyle(e, '::after').content);
      assert.match(cue, /more/, 'a clipped value shows a cue');

      // Added to a key that sorts last, far below: the row is brought into sight.
      await page.evaluate(() => window.scrollTo(0, 0));
      const late = `${root}/zz-late`;
      await page.getByLabel('Key', { exact: true }).fill(late);
      await page.getByLabel('Value', { exact: true }).fill('here');
      await page.getByRole('button', { name: 'Add value', exact: true }).click();
      await waitForRow(page, late, ['here']);
      await page.waitForFunction((sel) => {
        const r = document.querySelector(sel)?.getBoundingClientRect();
        return r && r.top >= 0 && r.bottom <= window.innerHeight + 1;
      }, rowSel(late), { timeout: LIVE_TIMEOUT });

      await row(page, key).getByRole('link').first().click();
      await page.getByRole('button', { name: 'Edit value 1' }).click();
      const area = page.locator('#key-view-values').getByLabel('Value 1', { exact: true });
      await area.fill('{"a": 1,');
      await page.locator('.json-check').filter({ hasText: 'Not valid JSON' }).waitFor();
      await area.fill('{"a":1,"b":[2,3]}');
      await page.locator('.json-check').filter({ hasText: 'Valid JSON' }).waitFor();
      await page.getByRole('button', { name: 'Format JSON' }).click();
      const pretty = JSON.stringify({ a: 1, b: [2, 3] }, null, 2);
      assert.equal(await area.inputValue(), pretty);
      await page.locator('#key-view-values').getByRole('button', { name: 'Save', exact: true }).click();
      await eventually(async () => (await api1.get(key)).json.values[0] === pretty, { what: 'the save' });
      assert.deepEqual((await api1.get(key)).json.values, [pretty, long]);
      await page.locator('#key-view-values pre').first().filter({ hasText: '"b"' }).waitFor({ timeout: LIVE_TIMEOUT });

      // Values are added and removed there too.
      await page.locator('#key-view-add').getByRole('button', { name: '+ Add value' }).click();
      const added = page.locator('#key-view-add').getByLabel('Value 3', { exact: true });
      await added.focus();
      await page.keyboard.type('added here');
      await page.keyboard.press('Enter');
      await page.keyboard.type('on two lines');
      await page.keyboard.press('Control+Enter');
      await eventually(async () => (await api1.get(key)).json.values.length === 3, { what: 'the add' });
      assert.deepEqual((await api1.get(key)).json.values, [pretty, long, 'added here\non two lines']);
      await page.getByRole('button', { name: 'Remove value 2' }).click();
      await page.locator('#confirm-dialog').getByRole('button', { name: 'Remove' }).click();
      await eventually(async () => (await api1.get(key)).json.values.length === 2, { what: 'the removal' });
      assert.deepEqual((await api1.get(key)).json.values, [pretty, 'added here\non two lines']);
      await page.locator('#key-view-values > li').nth(1).waitFor({ state: 'visible' });
      await page.waitForFunction(() => document.querySelectorAll('#key-view-values > li').length === 2, null, { timeout: LIVE_TIMEOUT });
    } finally {
      await page.context().close();
    }
  });

  test('rows inserted above the reading position do not move it, and live changes out of sight are counted', async () => {
    const root = uniq('hold');
    const k = (p, i) => `${root}/${p}${String(i).padStart(2, '0')}`;
    await Promise.all(Array.from({ length: 60 }, (_, i) => api1.put(k('m', i), ['v'])));
    const page = await openPage(`${node1.url}/?filter=${encodeURIComponent(root + '/')}`, { viewport: { width: 1000, height: 600 } });
    try {
      const target = page.locator(rowSel(k('m', 40)));
      await waitForRow(page, k('m', 40), ['v']);
      // Reading from m40, near the top of the screen.
      await target.evaluate((r) => window.scrollBy(0, r.getBoundingClientRect().top - 150));
      const before = await target.evaluate((r) => r.getBoundingClientRect().top);
      await Promise.all(Array.from({ length: 20 }, (_, i) => api2.put(k('a', i), ['new'])));
      await page.locator('#changes-above').filter({ hasText: /^↑ 20 changes above$/ }).waitFor({ timeout: LIVE_TIMEOUT });
      await page.waitForFunction((n) => document.querySelectorAll('#pairs-body tr.pair-row').length >= n, 80, { timeout: LIVE_TIMEOUT });
      const after = await target.evaluate((r) => r.getBoundingClientRect().top);
      assert.ok(Math.abs(after - before) <= 2, `the row read moved from ${before} to ${after} px`);

      // A change below the screen: counted, and a click brings it into sight.
      await api2.put(k('m', 59), ['changed']);
      const below = page.locator('#changes-below');
      await below.filter({ hasText: /^↓ 1 change below$/ }).waitFor({ timeout: LIVE_TIMEOUT });
      await below.click();
      await waitForRow(page, k('m', 59), ['changed']);
      await page.waitForFunction((sel) => {
        const r = document.querySelector(sel)?.getBoundingClientRect();
        return r && r.top >= 0 && r.bottom <= window.innerHeight + 1;
      }, rowSel(k('m', 59)), { timeout: LIVE_TIMEOUT });
      await below.waitFor({ state: 'hidden', timeout: LIVE_TIMEOUT });
    } finally {
      await page.context().close();
    }
  });

  test('every key under a prefix is deleted after a typed confirmation with the count; export and import from the page', async () => {
    const root = uniq('bulk');
    const keys = Array.from({ length: 30 }, (_, i) => `${root}/k${String(i).padStart(2, '0')}`);
    await Promise.all(keys.map((k, i) => api1.put(k, [`v${i}`])));
    const page = await openPage(`${node1.url}/?filter=${encodeURIComponent(root + '/')}`);
    try {
      await waitForRow(page, keys[29], ['v29']);
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export', exact: true }).click()]);
      const text = fs.readFileSync(await download.path(), 'utf8');
      const lines = text.trim().split('\n').map((l) => JSON.parse(l));
      assert.deepEqual(lines.map((l) => l.key), keys, 'the export holds the prefix\'s pairs');

      await page.getByRole('button', { name: `Delete every key under ${root}/` }).click();
      const dialog = page.locator('#prefix-dialog');
      await dialog.getByText('30 pairs will be deleted on every node').waitFor({ timeout: LIVE_TIMEOUT });
      assert.ok(await dialog.getByRole('button', { name: 'Delete 30 pairs' }).isDisabled(), 'not before "delete" is typed');
      await dialog.getByLabel('Type delete to confirm').fill('delete');
      await dialog.getByRole('button', { name: 'Delete 30 pairs' }).click();
      await page.locator('#messages .msg-success').filter({ hasText: `Deleted 30 pairs under “${root}/”` }).waitFor({ timeout: 60_000 });
      assert.equal((await api1.list(`?prefix=${encodeURIComponent(root + '/')}&count=true`)).json.total, 0);
      await page.locator('#empty-state').filter({ hasText: 'No keys start with' }).waitFor({ timeout: LIVE_TIMEOUT });

      // The export, under other keys, imported from the page.
      const copy = lines.map((l) => JSON.stringify({ ...l, key: l.key.replace(`${root}/`, `${root}-copy/`) })).join('\n') + '\n';
      // Every notice shown is recorded: a success notice goes after a few seconds.
      await page.evaluate(() => {
        window.__notices = [];
        new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((n) => window.__notices.push(n.textContent))))
          .observe(document.getElementById('messages'), { childList: true });
      });
      await page.locator('#import-file').setInputFiles({ name: 'copy.ndjson', mimeType: 'application/x-ndjson', buffer: Buffer.from(copy) });
      const outcome = await eventually(async () => (await page.evaluate(() => window.__notices))
        .find((t) => t.startsWith('Imported copy.ndjson') || t.startsWith('Could not import')), { timeout: 60_000, what: 'the import\'s outcome' });
      assert.match(outcome, /^Imported copy\.ndjson: 30 pairs changed/);
      const back = await api1.list(`?prefix=${encodeURIComponent(root + '-copy/')}&limit=100`);
      assert.deepEqual(back.json.pairs.map((p) => p.values[0]), keys.map((_, i) => `v${i}`));
    } finally {
      await page.context().close();
    }
  });

  test('eight tabs opened one after the other on one node all load and all show a change live', async (t) => {
    const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    const key = uniq('tabs');
    try {
      const pages = [];
      for (let i = 0; i < 8; i++) {
        const page = await context.newPage();
        page.on('pageerror', (err) => errors.push(`tab ${i + 1}: ${err.message}`));
        await page.goto(`${node1.url}/?filter=${encodeURIComponent(key)}`, { timeout: 30_000 });
        await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
        await page.locator('#empty-state').filter({ hasText: 'No keys start with' }).waitFor({ timeout: 30_000 });
        pages.push(page);
      }
      t.diagnostic('8 tabs loaded and live');
      await api2.put(key, ['seen by all']);
      await Promise.all(pages.map((p) => waitForRow(p, key, ['seen by all'])));
    } finally {
      await context.close();
    }
  });

  test('the tabs of one browser share one event stream, and let go of it when they go', async () => {
    // A node that serves at most two event streams: with a stream per tab, the third tab
    // would never be live.
    const capped = await startCluster({ nodes: 1, nodeEnv: { KVSYNC_MAX_EVENT_STREAMS: '2' } });
    const base = capped.info.nodes[0].url;
    try {
      const live = (page) => page.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
      const first = await browser.newContext();
      for (let i = 0; i < 5; i++) {
        const page = await first.newPage();
        page.on('pageerror', (err) => errors.push(`shared ${i + 1}: ${err.message}`));
        await page.goto(base + '/');
        await live(page);
      }
      // Pages left and come back to: each lets go of its place and takes one again.
      const roaming = first.pages()[0];
      for (let i = 0; i < 3; i++) {
        await roaming.goto('about:blank');
        await roaming.goto(base + '/');
        await live(roaming);
      }
      await first.close();
      // Another browser profile: two streams are free again once the first one's tabs are gone.
      const second = await browser.newContext();
      try {
        await eventually(async () => {
          const page = await second.newPage();
          await page.goto(base + '/');
          try {
            await live(page);
            return true;
          } finally {
            await page.close();
          }
        }, { timeout: 60_000, what: 'a stream for a new browser profile' });
      } finally {
        await second.close();
      }
    } finally {
      await capped.stop();
    }
  });

  test('the page of a stopped node stops saying "Live" within 15 s, a write there ends with a clear message and applies once', async (t) => {
    const page = await openPage(node2.url + '/');
    const key = uniq('frozen');
    try {
      await filterTo(page, key);
      await page.locator('#empty-state').filter({ hasText: 'No keys start with' }).waitFor({ timeout: LIVE_TIMEOUT });
      await page.getByLabel('Key', { exact: true }).fill(key);
      await page.getByLabel('Value', { exact: true }).fill('once');
      cluster.pauseNode(node2.id);
      const stopped = Date.now();
      try {
        await page.getByRole('button', { name: 'Add value', exact: true }).click();
        await page.locator('#live-status:not([data-state="live"])').waitFor({ timeout: 15_000 });
        t.diagnostic(`not "Live" ${Date.now() - stopped} ms after the node stopped`);
        assert.match(await page.locator('#live-status').textContent(), /Reconnecting/);
        const slow = page.locator('#add-error').filter({ hasText: 'did not answer within 10 s' });
        await slow.waitFor({ timeout: 20_000 });
        t.diagnostic(`the write's message ${Date.now() - stopped} ms after the node stopped`);
        assert.match(await slow.textContent(), /may still be applied/);
        // Asked again, the page does not send it twice.
        await page.getByLabel('Value', { exact: true }).press('Control+Enter');
        await page.locator('#add-error').filter({ hasText: 'not sent twice' }).waitFor({ timeout: LIVE_TIMEOUT });
      } finally {
        cluster.resumeNode(node2.id);
      }
      await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 60_000 });
      t.diagnostic(`"Live" again ${Date.now() - stopped} ms after the node stopped`);
      // The write applied when the node went on, once; the page shows it.
      await waitForRow(page, key, ['once'], 60_000);
      await page.locator('#messages .msg-success').filter({ hasText: `Added a value to “${key}”` }).waitFor({ timeout: LIVE_TIMEOUT });
      const both = async () => [(await api1.get(key)).json?.values, (await api2.get(key)).json?.values];
      await eventually(async () => JSON.stringify(await both()) === JSON.stringify([['once'], ['once']]), { what: 'both nodes to hold the value once' });
    } finally {
      await page.context().close();
    }
  });

  test('no script errors on any page', () => {
    assert.deepEqual(errors, []);
    assert.deepEqual(dialogs, []);
  });
});
