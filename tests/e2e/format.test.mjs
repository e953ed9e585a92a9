// The page's number and time formatting (frontend/format.js), which replaced Intl on the
// first render's path: it must say the same as Intl did for the counts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clockTime, dateTime, groupDigits } from '../../frontend/format.js';

test('counts group their thousands as Intl en-US does', () => {
  const intl = new Intl.NumberFormat('en-US');
  const samples = [0, 1, 12, 999, 1000, 1001, 99_999, 100_000, 100_001, 1_234_567, 2 ** 31, -1, -1000, -1_234_567];
  for (let n = 1; n < 1e15; n = n * 7 + 3) samples.push(n, -n);
  for (const n of samples) assert.equal(groupDigits(n), intl.format(n), `${n}`);
});

test('times read the same in every locale, on the 24-hour clock', () => {
  const d = new Date(2026, 11, 7, 9, 4, 3);
  assert.equal(clockTime(d), '09:04:03');
  assert.equal(dateTime(d), '7 Dec 2026, 09:04');
  assert.equal(clockTime(new Date(2026, 0, 1, 23, 59, 59)), '23:59:59');
  assert.equal(dateTime(new Date(2027, 0, 31, 0, 0)), '31 Jan 2027, 00:00');
});
