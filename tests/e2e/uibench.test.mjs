// A short run of the web UI benchmark (bench/ui/ui-bench.mjs, `bench/run.sh ui`), so it
// cannot rot: small counts, the debug build, a report checked for sane fields. About a minute.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ROOT } from './harness.mjs';

const SCRIPT = path.join(ROOT, 'bench', 'ui', 'ui-bench.mjs');

function run(args, env = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [SCRIPT, ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => { output += d; });
    child.stderr.on('data', (d) => { output += d; });
    child.on('exit', (code) => resolve({ code, output }));
  });
}

const positive = (x, what) => assert.ok(typeof x === 'number' && x > 0, `${what}: ${x}`);

test('a short UI benchmark run writes ui.json and ui.md with every figure', async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'ui-bench-'));
  try {
    const { code, output } = await run([
      '--pairs', '2000', '--changes', '30', '--stream', '500', '--rate', '100', '--few', '20',
      '--clear-pairs', '300', '--loads', '2', '--loaded', '1500', '--scroll-frames', '90', '--out', out,
    ]);
    assert.equal(code, 0, output);
    const r = JSON.parse(fs.readFileSync(path.join(out, 'ui.json'), 'utf8'));
    assert.deepEqual(r.failures, []);
    positive(r.machine.cores, 'cores');
    for (const s of ['few', 'clear', 'seed', 'first', 'scroll', 'live', 'memory']) {
      assert.equal(r.steps[s]?.load_before?.length, 3, `load average of ${s}`);
    }

    assert.equal(r.seed.pairs, 2000);
    positive(r.seed.import_ms, 'import');
    assert.ok(r.seed.node2_all_after_ms >= 0);

    assert.equal(r.first.loads.length, 2);
    for (const l of r.first.loads) {
      positive(l.frame_ms, 'first render');
      assert.ok(l.frame_ms >= l.dom_ms, JSON.stringify(l));
      positive(l.rows, 'rows at the first render');
      assert.ok(l.list_requests.length >= 1 && l.list_requests.every((x) => x.startsWith('200@')), JSON.stringify(l));
    }

    for (const live of [r.live, r.few.live]) {
      assert.equal(live.count, 30);
      assert.equal(live.samples_ms.length, 30);
      positive(live.p50_ms, 'live p50');
      assert.ok(live.p50_ms <= live.p99_ms && live.p99_ms <= live.max_ms, JSON.stringify(live));
    }

    assert.equal(r.scroll.frames, 90);
    assert.ok(r.scroll.loaded_before >= 1500, `loaded ${r.scroll.loaded_before}`);
    assert.ok(r.scroll.rows_in_dom < 300, `${r.scroll.rows_in_dom} rows in the DOM`);
    positive(r.scroll.p90_ms, 'scroll p90');
    positive(r.scroll.baseline_plain_page.p90_ms, 'scroll p90 without the app');
    positive(r.scroll.work.task_ms, 'scroll: time in tasks');

    assert.equal(r.memory.writes, 500);
    assert.equal(r.memory.write_errors, 0);
    assert.equal(r.memory.on_screen_writes, 50);
    assert.ok(r.memory.series.length >= 3, `${r.memory.series.length} samples`);
    positive(r.memory.before_gc.heap_mib, 'heap before');
    positive(r.memory.after_gc.dom_nodes, 'DOM nodes after');
    assert.equal(typeof r.memory.bounded, 'boolean');

    assert.equal(r.clear.pairs, 300);
    positive(r.clear.list_empty_after_ms, 'clear: list empty after');
    positive(r.clear.longest_frame_gap_ms, 'clear: longest frame gap');
    positive(r.clear.frames, 'clear: frames');
    positive(r.clear.work.script_ms, 'clear: script time');

    const md = fs.readFileSync(path.join(out, 'ui.md'), 'utf8');
    assert.match(md, /## Against the targets/);
    assert.match(md, /\| first useful render, 2,000 pairs/);
    assert.match(md, /## Clear/);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test('the UI benchmark exits non-zero when it cannot run', async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'ui-bench-'));
  try {
    const { code, output } = await run(['--pairs', '10', '--out', out], { KVSYNC_CLUSTER_BIN: path.join(out, 'no-such-binary') });
    assert.notEqual(code, 0, output);
    const r = JSON.parse(fs.readFileSync(path.join(out, 'ui.json'), 'utf8'));
    assert.equal(r.failures.length, 1, output);
    assert.match(r.failures[0], /does not exist/);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
