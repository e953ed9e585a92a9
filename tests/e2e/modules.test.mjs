// Unit tests of the page's small modules that need no browser: search matching and the glob
// hint, the JSON check of the value editor, the header's conflict count, and write deadlines.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { countMatches, looksLikeGlob, matchesSearch } from '../../frontend/search.js';
import { jsonCheck } from '../../frontend/valueedit.js';
import { tallyText } from '../../frontend/conflicts.js';
import { slowText, watchSlow } from '../../frontend/writes.js';

test('a search matches keys as the node does: substring or whole-key glob, case ignored if asked', () => {
  const s = (text, glob = false, ignoreCase = false) => ({ text, glob, ignoreCase });
  assert.ok(matchesSearch('user:42:name', s('42')));
  assert.ok(!matchesSearch('user:42:name', s('NAME')));
  assert.ok(matchesSearch('user:42:name', s('NAME', false, true)));
  assert.ok(matchesSearch('user:42:name', s('user:*:name', true)));
  assert.ok(matchesSearch('user:4:name', s('user:?:name', true)));
  assert.ok(!matchesSearch('user:42:name', s('user:?:name', true)));
  assert.ok(!matchesSearch('xuser:42:name', s('user:*', true)), 'a glob covers the whole key');
  assert.ok(matchesSearch('ключ🙂', s('ключ?', true)), 'one character, not one UTF-16 unit');
  assert.ok(matchesSearch('anything', s('')));
});

test('a substring search with * or ? is offered as a glob; a glob is not', () => {
  assert.ok(looksLikeGlob({ text: 'user:*:name', glob: false }));
  assert.ok(looksLikeGlob({ text: 'a?c', glob: false }));
  assert.ok(!looksLikeGlob({ text: 'user:*:name', glob: true }));
  assert.ok(!looksLikeGlob({ text: 'user:42', glob: false }));
});

test('a search is counted page by page until the end, and stops when cancelled', async () => {
  const pages = [{ pairs: [1, 2], scanned: 5000, next: 'b' }, { pairs: [3], scanned: 5000, next: 'c' }, { pairs: [], scanned: 10, next: null }];
  const asked = [];
  const seen = [];
  await countMatches(async (q) => { asked.push(q.after); return pages[asked.length - 1]; }, { contains: 'x' }, (f) => seen.push(f), () => false);
  assert.deepEqual(asked, [null, 'b', 'c']);
  assert.deepEqual(seen.at(-1), { found: 3, scanned: 10_010, done: true });
  assert.equal(seen.filter((f) => f.done).length, 1);
  let calls = 0;
  await countMatches(async () => { calls += 1; return pages[0]; }, {}, () => {}, () => calls >= 2);
  assert.equal(calls, 2);
});

test('the value editor checks JSON only where a value looks like JSON', () => {
  assert.equal(jsonCheck('plain text'), null);
  assert.deepEqual(jsonCheck(' {"a": [1, 2]} '), { ok: true });
  assert.equal(jsonCheck('[1, 2').ok, false);
  assert.match(jsonCheck('{"a": }').why, /./);
});

test('the header counts conflicts, and the keys when more than one', () => {
  assert.equal(tallyText(new Map()), '');
  assert.equal(tallyText(new Map([['a', [{}]]])), '1 conflict');
  assert.equal(tallyText(new Map([['a', [{}, {}]]])), '2 conflicts');
  assert.equal(tallyText(new Map([['a', [{}]], ['b', [{}, {}]]])), '3 conflicts on 2 keys');
});

test('a slow write is told once past its deadline and still settles as it would', async () => {
  let told = 0;
  let finish;
  const write = new Promise((resolve) => { finish = resolve; });
  const watched = watchSlow(write, () => { told += 1; }, 20);
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(told, 1);
  finish('done');
  assert.equal(await watched, 'done');
  assert.equal(await watchSlow(Promise.resolve(1), () => { told += 1; }, 20), 1);
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(told, 1, 'a quick write is not told slow');
  assert.match(slowText(10_000), /within 10 s.*may still be applied.*not sent again/);
});
