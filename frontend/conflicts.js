// Conflicts: where two writes on different nodes were concurrent and one had to lose. The
// row of a key says what was lost (with Restore and Dismiss), the key's own view lists it,
// and the header counts what this page knows of.
import { h } from './dom.js';
import { groupDigits } from './format.js';

function quote(value) {
  const chars = [...value];
  return `“${chars.length > 60 ? chars.slice(0, 59).join('') + '…' : value}”`;
}

export function conflictText(c) {
  const won = c.won_origin || 'another node';
  const lostBy = c.lost_origin || 'another node';
  const lost = c.lost || [];
  const wonValue = typeof c.won === 'string' ? c.won : null;
  switch (c.kind) {
    case 'edit':
      return `A concurrent edit from ${won} replaced ${quote(lost[0] ?? '')}${wonValue === null ? '' : ` with ${quote(wonValue)}`}.`;
    case 'replace': {
      const shown = lost.slice(0, 5).map(quote).join(', ') + (lost.length > 5 ? `, +${lost.length - 5} more` : '');
      return `A concurrent edit from ${won} replaced the list [${shown}].`;
    }
    case 'remove':
      return `A concurrent edit from ${won} kept a value that ${lostBy} removed${wonValue === null ? '' : `: ${quote(wonValue)}`}.`;
    case 'delete':
      return `A concurrent edit from ${won} kept the key that ${lostBy} deleted.`;
    default:
      return `A concurrent write from ${won} won over one from ${lostBy}.`;
  }
}

/** Whether a conflict lost values that are not back in the pair (only edits and replacements lose any). */
function restorable(c, pair) {
  const lost = c.lost || [];
  if (c.kind === 'edit') {
    const e = pair.elements.find((x) => x.id === c.element);
    return e ? e.value !== lost[0] : !pair.values.includes(lost[0]);
  }
  return c.kind === 'replace' && lost.some((v) => !pair.values.includes(v));
}

export function mergeNotes(pair, notes, busy) {
  const lines = notes.map((c, i) => {
    const canRestore = restorable(c, pair);
    return h('li', { class: 'merge-note' },
      h('span', { text: conflictText(c) }),
      !canRestore && (c.kind === 'edit' || c.kind === 'replace') ? h('span', { class: 'merge-done', text: ' It is back in the list.' }) : null,
      canRestore
        ? h('button', { type: 'button', class: 'btn btn-small btn-warning', dataset: { action: 'restore', note: String(i) }, disabled: busy, 'aria-label': `Restore what ${pair.key} lost`, title: c.kind === 'edit' ? 'Puts the lost value back in its place' : 'Adds the lost values to the end of the list', text: 'Restore' })
        : null);
  });
  return h('div', { class: 'merge-notes' },
    h('ul', { class: 'merge-list' }, lines),
    h('p', { class: 'merge-where', text: RECORDED_HERE }),
    h('button', { type: 'button', class: 'btn btn-small btn-ghost', dataset: { action: 'dismiss' }, disabled: busy, 'aria-label': `Dismiss the notice about ${pair.key}`, text: 'Dismiss' }));
}

/**
 * Conflicts do not replicate: each node records those it settled itself (the merged
 * values are the same everywhere), so another node may show none for the same key.
 */
export const RECORDED_HERE = 'Recorded by this node: other nodes may not list it.';

/** The notes of one key, for its own view: what was lost, and Dismiss. */
export function conflictList(key, notes) {
  return h('div', { class: 'merge-notes' },
    h('p', { class: 'merge-head' }, h('strong', { text: `${notes.length === 1 ? 'A concurrent edit' : `${groupDigits(notes.length)} concurrent edits`} lost here:` })),
    h('ul', { class: 'merge-list' }, notes.map((c) => h('li', { class: 'merge-note', text: conflictText(c) }))),
    h('p', { class: 'merge-where', text: RECORDED_HERE }),
    h('button', { type: 'button', class: 'btn btn-small btn-ghost', dataset: { action: 'dismiss-view' }, 'aria-label': `Dismiss the notice about ${key}`, text: 'Dismiss' }));
}

/** The header's count: how many conflicts, on how many keys. */
export function tallyText(tally) {
  let n = 0;
  for (const notes of tally.values()) n += notes.length;
  if (n === 0) return '';
  const what = `${groupDigits(n)} ${n === 1 ? 'conflict' : 'conflicts'}`;
  return tally.size > 1 ? `${what} on ${groupDigits(tally.size)} keys` : what;
}
