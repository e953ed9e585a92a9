// Makes docs/ui.png, the README's screenshot: a local two-node cluster (the debug build, or
// KVSYNC_CLUSTER_BIN), a few pairs written on both nodes, node 1's page in headless Chromium
// right after node 2 appended a value (its row highlighted).
//
//   cargo build -p kvsync-node -p kvsync-testkit && node scripts/readme-screenshot.mjs
//
// Needs playwright-core and Chromium (scripts/install-deps.sh --browser; NODE_PATH set as
// scripts/e2e.sh does).

import path from 'node:path';

import { ROOT, apiClient, launchBrowser, openPage, startCluster, waitForRow } from '../tests/e2e/harness.mjs';

const ON_NODE1 = [
  ['app/feature-flags', ['new-editor', 'live-cursors', 'beta-search']],
  ['app/theme', ['dark']],
  ['service:payments:endpoints', ['https://pay-1.internal', 'https://pay-2.internal']],
  ['service:payments:timeout-ms', ['2500']],
  ['user/42/settings', ['{"notifications":true,"digest":"weekly"}']],
  ['user/42/shortcuts', ['ctrl+k: search', 'g h: home']],
];
const ON_NODE2 = [
  ['app/locale', ['en-GB', 'fr-FR']],
  ['user/7/settings', ['{"notifications":false}']],
];

const cluster = await startCluster({ nodes: 2 });
let browser;
try {
  const [node1, node2] = cluster.info.nodes;
  const [api1, api2] = [apiClient(node1.url), apiClient(node2.url)];
  for (const [k, v] of ON_NODE1) await api1.put(k, v);
  for (const [k, v] of ON_NODE2) await api2.put(k, v);
  browser = await launchBrowser();
  const page = await openPage(browser, node1.url + '/', { viewport: { width: 1280, height: 800 } });
  for (const [k, v] of [...ON_NODE1, ...ON_NODE2]) await waitForRow(page, k, v);
  // The cluster chip says 2/2 live once node 2 is heard from.
  await page.locator('#cluster-glance', { hasText: '2/2 live' }).waitFor({ timeout: 30_000 });
  await api2.append('app/locale', 'de-DE');
  await waitForRow(page, 'app/locale', ['en-GB', 'fr-FR', 'de-DE']);
  await page.waitForTimeout(300); // the highlight well under way
  const out = path.join(ROOT, 'docs', 'ui.png');
  await page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  if (browser) await browser.close();
  await cluster.stop();
}
