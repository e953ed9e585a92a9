// The list while it is read: rows inserted or grown above the reading position do not move
// what is on screen, and live changes to rows out of sight are counted ("3 changes above")
// with a button that brings the nearest one into sight.

/** The bottom of the sticky header: rows above it are out of sight. */
export function sightTop() {
  const bar = document.querySelector('.topbar');
  if (!bar || getComputedStyle(bar).position !== 'sticky') return 0;
  return Math.max(0, bar.getBoundingClientRect().bottom);
}

/**
 * The first row in sight and where it is, when the list is scrolled into (only then is
 * there a reading position to hold); null otherwise.
 */
export function readingAnchor(body) {
  const top = sightTop();
  if (body.getBoundingClientRect().top >= top) return null;
  for (const row of body.children) {
    if (!row.classList.contains('pair-row') || row.classList.contains('removing')) continue;
    const r = row.getBoundingClientRect();
    if (r.bottom > top) return { row, top: r.top };
  }
  return null;
}

/** Scrolls back by however much the anchor row moved. */
export function holdAnchor(anchor) {
  if (!anchor || !anchor.row.isConnected) return;
  const moved = anchor.row.getBoundingClientRect().top - anchor.top;
  if (Math.abs(moved) >= 1) window.scrollBy(0, moved);
}

/** 'above', 'below' or 'on' the screen, for a row in the page. */
export function whereIs(row, top = sightTop()) {
  const r = row.getBoundingClientRect();
  if (r.bottom <= top) return 'above';
  if (r.top >= window.innerHeight) return 'below';
  return 'on';
}
