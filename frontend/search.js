// Key search as the node does it (substring or glob over the whole key, ignoring case if
// asked), a hint for a glob typed as a substring, and the count of what a search finds.

/** Whether `key` matches the search (see the API's contains and glob). */
export function matchesSearch(key, { text, glob, ignoreCase }) {
  if (!text) return true;
  const k = ignoreCase ? key.toLowerCase() : key;
  const t = ignoreCase ? text.toLowerCase() : text;
  if (!glob) return k.includes(t);
  const p = [...t];
  const s = [...k];
  let pi = 0;
  let si = 0;
  let star = -1;
  let mark = 0;
  while (si < s.length) {
    if (pi < p.length && (p[pi] === '?' || (p[pi] !== '*' && p[pi] === s[si]))) {
      pi += 1;
      si += 1;
    } else if (pi < p.length && p[pi] === '*') {
      star = pi++;
      mark = si;
    } else if (star >= 0) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.length && p[pi] === '*') pi += 1;
  return pi === p.length;
}

/** A substring search that reads like a glob ("user:*:name"), which finds nothing as typed. */
export function looksLikeGlob({ text, glob }) {
  return !glob && /[*?]/.test(text);
}

const COUNT_PAGE = 1000;

/**
 * Counts the keys a search finds, page after page (each request scans a bounded number of
 * keys): `onProgress({ found, scanned, done })` after each. Stops when `cancelled()`.
 */
export async function countMatches(list, query, onProgress, cancelled) {
  let after = null;
  let found = 0;
  let scanned = 0;
  for (;;) {
    const res = await list({ ...query, limit: COUNT_PAGE, after });
    if (cancelled()) return;
    found += (res.pairs || []).length;
    scanned += res.scanned ?? 0;
    after = res.next ?? null;
    onProgress({ found, scanned, done: after === null });
    if (after === null) return;
  }
}
