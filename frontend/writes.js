// Writes that take too long. A node that stops answering (a stopped process) keeps the
// request open, and its answer may still come, with the write applied. So a write is not
// given up and never sent again: past the deadline the page says so and lets the person
// go on, and the answer, when it comes, is shown as usual.

export const WRITE_TIMEOUT_MS = 10_000;

export function slowText(ms = WRITE_TIMEOUT_MS) {
  return `The node did not answer within ${Math.round(ms / 1000)} s. The change may still be applied when it answers (it is not sent again); this page shows it then.`;
}

/**
 * Resolves or rejects as `promise` does; if it takes longer than `ms`, `onSlow()` is called
 * meanwhile (once).
 */
export async function watchSlow(promise, onSlow, ms = WRITE_TIMEOUT_MS) {
  const timer = setTimeout(onSlow, ms);
  try {
    return await promise;
  } finally {
    clearTimeout(timer);
  }
}
