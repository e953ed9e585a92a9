// scripts/run-local.sh started in the background (standard input closed, as with `&`,
// nohup or a service manager) keeps its cluster running: it used to stop at once, silently.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

import { ROOT, TARGET } from './harness.mjs';

test('run-local.sh keeps its cluster running with standard input closed', async () => {
  const script = fs.readFileSync(path.join(ROOT, 'scripts', 'run-local.sh'), 'utf8');
  const exec = script.slice(script.indexOf('exec target/release/kvsync-cluster'));
  assert.ok(exec.length > 0, 'the script runs kvsync-cluster');
  // The script's own switches (those without a value), on a one-node cluster on free ports.
  const valued = new Set(['--nodes', '--http-port', '--broker-port', '--mongo-port', '--dir']);
  const switches = [...exec.matchAll(/--[a-z-]+/g)].map((m) => m[0]).filter((f) => !valued.has(f));
  const bin = process.env.KVSYNC_CLUSTER_BIN || path.join(TARGET, 'debug', 'kvsync-cluster');
  const child = spawn(bin, ['--nodes', '1', ...switches], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let exited = null;
  const exit = new Promise((resolve) => child.on('exit', (code, signal) => { exited = { code, signal }; resolve(); }));
  try {
    const lines = readline.createInterface({ input: child.stdout });
    const ready = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('not ready within 120 s')), 120_000);
      lines.on('line', (line) => {
        try {
          const info = JSON.parse(line);
          if (Array.isArray(info.nodes)) {
            clearTimeout(timer);
            resolve(info);
          }
        } catch {
          /* not the ready line */
        }
      });
      exit.then(() => reject(new Error(`exited before it was ready: ${JSON.stringify(exited)}`)));
    });
    // Standard input was closed from the start: the cluster answers on and on.
    const url = ready.nodes[0].url;
    for (let i = 0; i < 6; i++) {
      const res = await fetch(`${url}/healthz`).catch((err) => ({ status: String(err) }));
      assert.equal(res.status, 200, `answer ${i + 1} (the cluster ${exited ? `exited: ${JSON.stringify(exited)}` : 'runs'})`);
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal(exited, null, 'the cluster still runs');
  } finally {
    if (!exited) child.kill('SIGTERM');
    await exit;
  }
});
