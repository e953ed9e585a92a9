// Browser tests of concurrent changes to one key from pages on two nodes: nothing anyone
// typed may be lost, and where one of two concurrent writes had to lose, both pages say so.
// Run with scripts/e2e.sh, or: node --test --test-concurrency=1 tests/e2e/
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  LIVE_TIMEOUT,
  addThroughForm,
  apiClient,
  eventually,
  launchBrowser,
  openPage,
  rowSel,
  screenshot,
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
/** Page open on node 1 and page open on node 2. */
let pageA;
let pageB;
const errors = [];
const dialogs = [];

function row(page, key) {
  return page.locator(rowSel(key));
}

/** Records the page's writes: `METHOD /path STATUS` and the If-Match sent, of every non-GET API call. */
function recordWrites(page) {
  const writes = [];
  page.on('response', (res) => {
    const req = res.request();
    const url = new URL(req.url());
    if (!url.pathname.startsWith('/api/') || req.method() === 'GET') return;
    const w = `${req.method()} ${decodeURIComponent(url.pathname)} ${res.status()}`;
    writes.push(Object.assign(w, { ifMatch: req.headers()['if-match'] }));
  });
  return writes;
}

/** Both nodes hold the same values for `key`, and `ok(values)` holds; resolves to them. */
function converged(key, ok = () => true, timeout = 30_000) {
  return eventually(async () => {
    const [one, two] = await Promise.all([api1.get(key), api2.get(key)]);
    if (one.status !== 200 || two.status !== 200) return false;
    const same = JSON.stringify(one.json.values) === JSON.stringify(two.json.values);
    return same && ok(one.json.values) ? one.json.values : false;
  }, { timeout, what: `both nodes to agree on ${key}` });
}

async function startEditing(page, key) {
  await row(page, key).locator('[data-action="edit"]').click();
  await row(page, key).locator('form.editor').waitFor();
  return row(page, key);
}

before(async () => {
  cluster = await startCluster({ nodes: 2 });
  [node1, node2] = cluster.info.nodes;
  api1 = apiClient(node1.url);
  api2 = apiClient(node2.url);
  browser = await launchBrowser();
  pageA = await openPage(browser, node1.url + '/', { errors, dialogs });
  pageB = await openPage(browser, node2.url + '/', { errors, dialogs });
});

after(async () => {
  try {
    if (pageA) await screenshot(pageA, 'merge-node1.png', { fullPage: true }).catch(() => {});
    if (pageB) await screenshot(pageB, 'merge-node2.png', { fullPage: true }).catch(() => {});
    if (browser) await browser.close();
  } finally {
    if (cluster) await cluster.stop();
  }
});

describe('concurrent changes from two nodes\' pages', { concurrency: false }, () => {
  test('both pages press "Add value" on one key at the same moment, 10 rounds: no value is lost', async (t) => {
    const key = uniq('together');
    const settle = (page) => page.waitForFunction(() => document.getElementById('add-value').value === ''
      && !document.getElementById('add-submit').disabled);
    for (let i = 0; i < 10; i++) {
      for (const [page, v] of [[pageA, `a${i}`], [pageB, `b${i}`]]) {
        await page.getByLabel('Key', { exact: true }).fill(key);
        await page.getByLabel('Value', { exact: true }).fill(v);
      }
      // Ctrl+Enter submits the form: a click could land beside the button while a notice
      // appears or goes and moves it.
      const add = (page) => page.getByLabel('Value', { exact: true }).press('Control+Enter');
      await Promise.all([add(pageA), add(pageB)]);
      await Promise.all([settle(pageA), settle(pageB)]);
      const values = await converged(key, (vs) => vs.length === 2 * (i + 1));
      // Every value either page added is there, each page's in the order it added them.
      assert.deepEqual(values.filter((v) => v.startsWith('a')), Array.from({ length: i + 1 }, (_, j) => `a${j}`));
      assert.deepEqual(values.filter((v) => v.startsWith('b')), Array.from({ length: i + 1 }, (_, j) => `b${j}`));
      try {
        await Promise.all([waitForRow(pageA, key, values), waitForRow(pageB, key, values)]);
      } catch (err) {
        const shown = await Promise.all([pageA, pageB].map((p) => row(p, key).locator('.value').allTextContents()));
        throw new Error(`round ${i + 1}: the nodes hold ${JSON.stringify(values)}, the pages show ${JSON.stringify(shown)}`, { cause: err });
      }
    }
    t.diagnostic('20 values added in 10 simultaneous pairs; both pages show all of them');
  });

  test('an edit and a removal on page A while page B appends: every change stays', async () => {
    const key = uniq('edit-append');
    assert.equal((await api1.put(key, ['x', 'drop me', 'keep'])).status, 201);
    await waitForRow(pageA, key, ['x', 'drop me', 'keep']);
    await waitForRow(pageB, key, ['x', 'drop me', 'keep']);
    const seen = (await api1.get(key)).json;
    const writesA = recordWrites(pageA);

    const editor = await startEditing(pageA, key);
    await editor.getByLabel('Value 1', { exact: true }).fill('x edited');
    await editor.getByRole('button', { name: 'Remove value 2', exact: true }).click();

    // Meanwhile page B appends, and node 1 gets it before page A saves.
    await addThroughForm(pageB, key, 'appended on 2');
    await eventually(async () => (await api1.get(key)).json.values.includes('appended on 2'), { what: 'the append to reach node 1' });

    await editor.getByRole('button', { name: 'Save' }).click();
    const want = ['x edited', 'keep', 'appended on 2'];
    await waitForRow(pageA, key, want);
    await waitForRow(pageB, key, want);
    assert.deepEqual(await converged(key, (vs) => vs.length === 3), want);
    // One write per changed value, never the whole list. The edit was sent on the version the
    // page had seen, refused (the append came since), and made again on the new version,
    // since the value it changes was still as seen.
    const [x, drop] = seen.elements;
    assert.deepEqual(writesA.map(String), [
      `PUT /api/pairs/${key}/values/${x.id} 412`,
      `PUT /api/pairs/${key}/values/${x.id} 200`,
      `DELETE /api/pairs/${key}/values/${drop.id} 200`,
    ]);
    assert.equal(writesA[0].ifMatch, `"${seen.etag}"`);
  });

  test('concurrent edits of one value: one wins everywhere, both pages name the lost value, Restore and Dismiss', async (t) => {
    const key = uniq('clash');
    assert.equal((await api1.put(key, ['shared', 'other'])).status, 201);
    await waitForRow(pageA, key, ['shared', 'other']);
    await waitForRow(pageB, key, ['shared', 'other']);

    // With the broker paused, neither node can hear of the other's edit before making its own.
    cluster.pauseBroker();
    try {
      for (const [page, v] of [[pageA, 'from node1'], [pageB, 'from node2']]) {
        const editor = await startEditing(page, key);
        await editor.getByLabel('Value 1', { exact: true }).fill(v);
        await editor.getByRole('button', { name: 'Save' }).click();
        await waitForRow(page, key, [v, 'other']);
      }
    } finally {
      cluster.resumeBroker();
    }
    const started = Date.now();
    const values = await converged(key, (vs) => vs.length === 2 && vs[0] !== 'shared');
    t.diagnostic(`merged ${Date.now() - started} ms after the broker resumed: ${JSON.stringify(values)}`);
    assert.equal(values[1], 'other');
    const won = values[0];
    const lost = won === 'from node1' ? 'from node2' : 'from node1';
    const [winPage, losePage] = won === 'from node1' ? [pageA, pageB] : [pageB, pageA];
    const [winNode, loseNode] = won === 'from node1' ? [node1, node2] : [node2, node1];
    const loseApi = apiClient(loseNode.url);

    // One winner on both pages, and on both a notice naming the value that lost.
    const notice = `A concurrent edit from ${winNode.id} replaced “${lost}”`;
    for (const page of [pageA, pageB]) {
      await waitForRow(page, key, [won, 'other']);
      await row(page, key).locator('.merge-note', { hasText: notice }).waitFor({ timeout: LIVE_TIMEOUT });
    }
    await screenshot(losePage, 'merge-conflict.png');

    // The node whose value lost recorded it: a page opened later shows it too.
    t.diagnostic(`conflicts recorded by the winner's node: ${(await apiClient(winNode.url).conflicts(key)).json.conflicts.length}`);
    const recorded = await loseApi.conflicts(key);
    assert.equal(recorded.json.conflicts.length, 1, JSON.stringify(recorded.json));
    assert.deepEqual(recorded.json.conflicts[0].lost, [lost]);
    const fresh = await openPage(browser, loseNode.url + '/', { errors, dialogs });
    await fresh.getByLabel('Filter by key prefix').fill(key);
    await row(fresh, key).locator('.merge-note', { hasText: notice }).waitFor({ timeout: LIVE_TIMEOUT });

    // Restore (on the winner's page) puts the lost value back in its place; it replicates.
    await row(winPage, key).getByRole('button', { name: 'Restore' }).click();
    for (const page of [pageA, pageB, fresh]) await waitForRow(page, key, [lost, 'other']);
    assert.deepEqual(await converged(key, (vs) => vs[0] === lost), [lost, 'other']);
    assert.equal(await row(winPage, key).locator('.merge-note').count(), 0, 'the notice goes once restored');
    // The other page no longer offers to restore what is back, but still shows the notice.
    assert.equal(await row(losePage, key).getByRole('button', { name: 'Restore' }).count(), 0);

    // Dismiss on the page of the node that recorded it: gone there, for good.
    await row(losePage, key).getByRole('button', { name: 'Dismiss' }).click();
    await row(losePage, key).locator('.merge-note').waitFor({ state: 'detached' });
    assert.deepEqual((await loseApi.conflicts(key)).json.conflicts, []);
    await fresh.reload();
    await fresh.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
    await fresh.getByLabel('Filter by key prefix').fill(key);
    await waitForRow(fresh, key, [lost, 'other']);
    assert.equal(await row(fresh, key).locator('.merge-note').count(), 0, 'no notice after a reload');
    await fresh.context().close();
  });

  test('a multi-line value survives Edit and Save byte for byte; a Save without changes writes nothing', async () => {
    const key = uniq('multiline');
    const multi = 'first line\n  indented second\r\nthird\twith tab  \n';
    const put = await api1.put(key, [multi, 'plain']);
    assert.equal(put.status, 201);
    await waitForRow(pageA, key, [multi, 'plain']);
    const writesA = recordWrites(pageA);

    // Edit, then Save without changing anything: no write, same version, same bytes.
    let editor = await startEditing(pageA, key);
    assert.equal(await editor.getByLabel('Value 1', { exact: true }).inputValue(), multi.replace(/\r\n/g, '\n'), 'all lines are editable');
    await editor.getByRole('button', { name: 'Save' }).click();
    await waitForRow(pageA, key, [multi, 'plain']);
    let stored = await api1.get(key);
    assert.equal(stored.json.version, put.json.version, 'the version is unchanged');
    assert.deepEqual(stored.json.values, [multi, 'plain']);
    assert.deepEqual(writesA.map(String), [], 'nothing was written');

    // Changing the other value leaves the multi-line one exactly as it was, on both nodes.
    editor = await startEditing(pageA, key);
    await editor.getByLabel('Value 2', { exact: true }).fill('plain, changed');
    await editor.getByRole('button', { name: 'Save' }).click();
    await waitForRow(pageB, key, [multi, 'plain, changed']);
    assert.deepEqual(await converged(key, (vs) => vs[1] === 'plain, changed'), [multi, 'plain, changed']);
    assert.equal(writesA.length, 1, `one write: ${writesA.join(', ')}`);

    // And a new line typed into it is kept as typed.
    editor = await startEditing(pageA, key);
    const area = editor.getByLabel('Value 1', { exact: true });
    await area.focus();
    await pageA.keyboard.press('Control+End');
    await pageA.keyboard.type('fourth');
    await pageA.keyboard.press('Control+Enter'); // saves
    stored = await converged(key, (vs) => vs[0].endsWith('fourth'));
    assert.deepEqual(stored, [multi.replace(/\r\n/g, '\n') + 'fourth', 'plain, changed']);
  });

  test('no script errors on any page', () => {
    assert.deepEqual(errors, []);
    assert.deepEqual(dialogs, []);
  });
});
