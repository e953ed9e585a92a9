// Browser tests of browsing keys: links (the filter and an open key in the URL), a key's own
// view with long values whole, copy buttons and pretty JSON.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  LIVE_TIMEOUT,
  apiClient,
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
let api1;
let api2;
const pageErrors = [];
const dialogs = [];

before(async () => {
  cluster = await startCluster({ nodes: 2 });
  node1 = cluster.info.nodes[0];
  api1 = apiClient(node1.url);
  api2 = apiClient(cluster.info.nodes[1].url);
  browser = await launchBrowser();
});

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    if (cluster) await cluster.stop();
  }
});

describe('browsing keys', { concurrency: false }, () => {
  test('the filter lives in the URL: reload and a shared link show the same list', async () => {
    const prefix = uniq('url') + '/';
    await api1.put(`${prefix}a`, ['1']);
    await api1.put(`${prefix}b`, ['2']);
    await api1.put(uniq('other'), ['3']);
    const page = await openPageIn(browser, node1.url + '/', { errors: pageErrors, dialogs });
    await page.getByLabel(/Filter/).fill(prefix);
    await page.waitForFunction((p) => new URLSearchParams(location.search).get('filter') === p, prefix, { timeout: LIVE_TIMEOUT });
    const link = page.url();
    await page.reload();
    await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
    assert.equal(await page.getByLabel(/Filter/).inputValue(), prefix);
    await waitForRow(page, `${prefix}a`, ['1']);
    await page.waitForFunction(
      (p) => [...document.querySelectorAll('#pairs-body tr.pair-row')].every((r) => r.dataset.key.startsWith(p)),
      prefix,
    );
    // A link opened elsewhere shows the same.
    const other = await openPageIn(browser, link, { errors: pageErrors, dialogs });
    await waitForRow(other, `${prefix}b`, ['2']);
    assert.equal(await other.getByLabel(/Filter/).inputValue(), prefix);
    await other.context().close();
    await page.context().close();
  });

  test('a key has its own view: whole long values, pretty JSON, copy, "+N more", live, Back', async () => {
    const key = uniq('long');
    const long = 'x'.repeat(10_000);
    const json = '{"name":"kvsync","tags":["a","b"],"n":1}';
    const many = Array.from({ length: 25 }, (_, i) => `v${i}`);
    assert.equal((await api1.put(key, [long, json])).status, 201);
    const manyKey = uniq('many');
    assert.equal((await api1.put(manyKey, many)).status, 201);

    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: node1.url });
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(`key view: ${err.message}`));
    await page.goto(node1.url + '/');
    await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
    await page.locator(rowSel(key)).waitFor({ timeout: LIVE_TIMEOUT });

    // The key opens on its own, with its address.
    await page.locator(rowSel(key)).getByRole('link', { name: key }).click();
    const view = page.locator('#key-view');
    await view.waitFor();
    assert.equal(new URL(page.url()).searchParams.get('key'), key);
    const texts = () => view.locator('.key-value-text').allTextContents();
    await page.waitForFunction(() => document.querySelectorAll('#key-view .key-value-text').length === 2);
    assert.deepEqual(await texts(), [long, json], 'values shown whole, byte for byte');

    // Pretty JSON, and back.
    await view.getByRole('button', { name: 'Pretty JSON' }).click();
    assert.equal((await texts())[1], JSON.stringify(JSON.parse(json), null, 2));
    await view.getByRole('button', { name: 'Pretty JSON' }).click();
    assert.equal((await texts())[1], json);

    // Copy key and value.
    await view.getByRole('button', { name: 'Copy key' }).click();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), key);
    await view.getByRole('button', { name: 'Copy value 1' }).click();
    assert.equal((await page.evaluate(() => navigator.clipboard.readText())).length, 10_000);

    // Live: a change elsewhere shows in the view.
    await api2.append(key, 'appended');
    await page.waitForFunction(() => document.querySelectorAll('#key-view .key-value-text').length === 3, null, { timeout: LIVE_TIMEOUT });

    // Reload keeps the view; Back goes to the list.
    await page.reload();
    await view.waitFor({ timeout: 30_000 });
    await page.waitForFunction(() => document.querySelectorAll('#key-view .key-value-text').length === 3, null, { timeout: LIVE_TIMEOUT });
    await page.goBack();
    await page.locator('#pairs-card').waitFor();
    assert.ok(await view.isHidden(), 'the list is back');

    // "+N more" opens the rest.
    await page.locator(rowSel(manyKey)).getByRole('link', { name: '+5 more' }).click();
    await page.waitForFunction(() => document.querySelectorAll('#key-view .key-value-text').length === 25, null, { timeout: LIVE_TIMEOUT });
    assert.deepEqual(await texts(), many);
    await page.getByRole('link', { name: '← All pairs' }).click();
    await page.locator(rowSel(key)).waitFor();

    // In the list a long value is clipped, and a click shows it whole.
    const cell = page.locator(rowSel(key)).locator('.value').first();
    const clipped = await cell.evaluate((e) => e.scrollHeight > e.clientHeight);
    assert.ok(clipped, 'clipped in the list');
    await cell.click();
    assert.ok(await cell.evaluate((e) => e.scrollHeight <= e.clientHeight + 1), 'whole after a click');
    await context.close();
  });

  test('search by substring or glob, with or without case, and a folder view', async () => {
    const root = uniq('tree');
    const keys = [`${root}/cfg`, `${root}/db/host`, `${root}/db/port`, `${root}/users/Alice`, `${root}/users/bob`];
    for (const k of keys) assert.equal((await api1.put(k, [k])).status, 201);
    const page = await openPageIn(browser, node1.url + '/', { errors: pageErrors, dialogs });
    const shown = () => page.locator('#pairs-body tr.pair-row:not(.removing)').evaluateAll((rs) => rs.map((r) => r.dataset.key));
    const waitShown = (want) => page.waitForFunction(
      (w) => JSON.stringify([...document.querySelectorAll('#pairs-body tr.pair-row:not(.removing)')].map((r) => r.dataset.key)) === JSON.stringify(w),
      want, { timeout: LIVE_TIMEOUT },
    ).catch(async (e) => { throw new Error(`${e.message}; shown: ${JSON.stringify(await shown())}`); });

    // Folders by "/": the prefix's own keys, and one link per folder.
    await page.getByLabel('Filter by key prefix').fill(`${root}/`);
    await page.getByLabel('Folders by').selectOption('/');
    await waitShown([`${root}/cfg`]);
    const folders = page.getByRole('list', { name: 'Folders' }).getByRole('link');
    await page.waitForFunction(() => document.querySelectorAll('#folder-list a').length === 2, null, { timeout: LIVE_TIMEOUT });
    assert.deepEqual((await folders.allTextContents()).map((t) => t.replace(/^\S+ /, '')), ['db/', 'users/']);
    assert.equal(new URL(page.url()).searchParams.get('folders'), '/');
    await folders.filter({ hasText: 'users/' }).click();
    await waitShown([`${root}/users/Alice`, `${root}/users/bob`]);
    assert.equal(new URL(page.url()).searchParams.get('filter'), `${root}/users/`);
    await page.goBack();
    await waitShown([`${root}/cfg`]);
    await page.getByLabel('Folders by').selectOption('');
    await waitShown(keys);

    // Substring, case-sensitive, then not.
    await page.getByLabel('Search keys').fill('ALICE');
    await page.locator('#empty-state').filter({ hasText: 'No keys match “ALICE”' }).waitFor({ timeout: LIVE_TIMEOUT });
    await page.getByLabel('Ignore case').check();
    await waitShown([`${root}/users/Alice`]);
    assert.equal(new URL(page.url()).searchParams.get('q'), 'ALICE');
    // A live change that does not match is counted, not shown; one that does is shown.
    await api2.put(`${root}/users/carol`, ['c']);
    await page.locator('#elsewhere').filter({ hasText: '1 change elsewhere' }).waitFor({ timeout: LIVE_TIMEOUT });
    await api2.put(`${root}/users/alice2`, ['a']);
    await waitShown([`${root}/users/Alice`, `${root}/users/alice2`]);

    // Glob over the whole key.
    await page.getByLabel('Ignore case').uncheck();
    await page.getByLabel('Glob (* and ?)').check();
    await page.getByLabel('Search keys').fill('*/users/?ob');
    await waitShown([`${root}/users/bob`]);
    // The search is in the URL: a reload shows the same.
    await page.reload();
    await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 30_000 });
    await waitShown([`${root}/users/bob`]);
    assert.equal(await page.getByLabel('Search keys').inputValue(), '*/users/?ob');
    assert.ok(await page.getByLabel('Glob (* and ?)').isChecked());
    await page.context().close();
  });

  test('no script errors on any page', () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(dialogs, []);
  });
});
