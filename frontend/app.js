// kvsync web UI: lists pairs, edits them, and applies live changes from the node's event stream.
// All data from the server is put on the page with textContent / attributes, never as HTML.

import { api, ApiError, eventsUrl, onTokenNeeded, setToken } from './api.js';
import { LiveConnection } from './live.js';
import { ClusterPanel } from './cluster.js';
import { h } from './dom.js';

const PAGE_SIZE = 100;
const MAX_PAGE = 1000;
const MAX_KEY_BYTES = 512;
const VALUES_SHOWN = 20;
const FLASH_MS = 1600;
const FADE_MS = 600;

const $ = (sel) => document.querySelector(sel);
const el = {
  nodeId: $('#node-id'),
  live: $('#live-status'),
  liveText: $('#live-status .live-text'),
  messages: $('#messages'),
  addForm: $('#add-form'),
  addKey: $('#add-key'),
  addValue: $('#add-value'),
  addSubmit: $('#add-submit'),
  addError: $('#add-error'),
  filter: $('#filter-input'),
  count: $('#pair-count'),
  body: $('#pairs-body'),
  empty: $('#empty-state'),
  loadMore: $('#load-more'),
  refresh: $('#refresh-btn'),
  clear: $('#clear-btn'),
  confirm: $('#confirm-dialog'),
  confirmTitle: $('#confirm-title'),
  confirmText: $('#confirm-text'),
  confirmOk: $('#confirm-ok'),
  confirmCancel: $('#confirm-cancel'),
  tokenDialog: $('#token-dialog'),
  tokenForm: $('#token-form'),
  tokenInput: $('#token-input'),
  tokenError: $('#token-error'),
};

const state = {
  filter: '',
  pairs: new Map(), // key -> pair, the loaded slice of the store (all keys <= `next` matching the filter)
  next: null, // cursor for "load more"; null once everything matching the filter is loaded
  loaded: false,
  loadSeq: 0,
  busy: 0, // loads in flight; live changes are queued meanwhile and replayed afterwards
  queue: [],
  edits: new Map(), // key -> { base: Map(id -> value), baseVersion, conflict: null | { current, why }, saving }
  conflicts: new Map(), // key -> conflicts the node settled for it (shown until dismissed)
  restoring: new Set(), // keys with a Restore under way
  rows: new Map(), // key -> <tr>
  fading: new Set(), // <tr> elements on their way out
  flash: new Set(), // keys to highlight on the next render
  fade: new Set(), // keys deleted while shown: their rows fade out instead of vanishing
  nodeId: '',
};

// ---------------------------------------------------------------------------------------------
// Small helpers


/** Orders keys like the store does: by Unicode code point (same as UTF-8 byte order). */
function cmpKeys(a, b) {
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const ca = a.codePointAt(i);
    const cb = b.codePointAt(j);
    if (ca !== cb) return ca < cb ? -1 : 1;
    i += ca > 0xffff ? 2 : 1;
    j += cb > 0xffff ? 2 : 1;
  }
  if (i < a.length) return 1;
  if (j < b.length) return -1;
  return 0;
}

const encoder = new TextEncoder();

function keyProblem(key) {
  if (key.length === 0) return 'Enter a key.';
  const bytes = encoder.encode(key).length;
  if (bytes > MAX_KEY_BYTES) return `That key is ${bytes} bytes long; keys can be at most ${MAX_KEY_BYTES} bytes.`;
  // Same rule as the server: no Unicode control characters (Cc).
  if (/[\u0000-\u001f\u007f-\u009f]/.test(key)) return 'Keys cannot contain control characters such as tabs or line breaks.';
  return '';
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function formatTime(value) {
  if (value === undefined || value === null || value === '') return { text: '', iso: '' };
  let d;
  if (typeof value === 'number') d = new Date(value < 1e12 ? value * 1000 : value);
  else d = new Date(value);
  if (Number.isNaN(d.getTime())) return { text: String(value), iso: '' };
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const text = sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString([], { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  return { text, iso: d.toISOString() };
}

/** Whether two pairs show the same: a merge of an older write keeps the version, so the values count too. */
function samePair(a, b) {
  if (a.version !== b.version || a.elements.length !== b.elements.length) return false;
  return a.elements.every((e, i) => e.id === b.elements[i].id && e.value === b.elements[i].value);
}

/** Versions order as their text does (fixed-width hex clock, then the node), as on the node. */
function olderThan(a, b) {
  return a < b;
}

function messageOf(err) {
  if (err instanceof ApiError) return err.message;
  return 'Something went wrong in this page. Reload it and try again.';
}

// ---------------------------------------------------------------------------------------------
// Messages

function notify(text, kind = 'info', { timeout } = {}) {
  const ms = timeout ?? (kind === 'error' ? 0 : 4000);
  const close = h('button', { type: 'button', class: 'msg-close', 'aria-label': 'Dismiss message', text: '×' });
  const box = h('div', { class: `msg msg-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'msg-text', text }), close);
  close.addEventListener('click', () => box.remove());
  el.messages.prepend(box);
  while (el.messages.children.length > 4) el.messages.lastElementChild.remove();
  if (ms > 0) setTimeout(() => box.remove(), ms);
  return box;
}

// ---------------------------------------------------------------------------------------------
// Dialogs

function confirmAction({ title, text, ok }) {
  return new Promise((resolve) => {
    el.confirmTitle.textContent = title;
    el.confirmText.textContent = text;
    el.confirmOk.textContent = ok;
    el.confirm.returnValue = '';
    el.confirm.addEventListener('close', () => resolve(el.confirm.returnValue === 'ok'), { once: true });
    el.confirm.showModal();
    el.confirmCancel.focus();
  });
}

let tokenDeclined = false;

onTokenNeeded((rejected) => new Promise((resolve, reject) => {
  // After "no" (Esc), don't nag on every background retry; "Refresh" asks again.
  if (tokenDeclined) {
    reject(new ApiError('This node needs an access token. Use "Refresh" to enter it.', { status: 401 }));
    return;
  }
  el.tokenError.hidden = !rejected;
  el.tokenError.textContent = rejected ? 'That token was not accepted. Check it and try again.' : '';
  el.tokenInput.value = '';
  const onClose = () => {
    el.tokenDialog.removeEventListener('close', onClose);
    const token = el.tokenInput.value.trim();
    if (el.tokenDialog.returnValue === 'ok' && token) {
      setToken(token);
      resolve();
      live.reconnectNow();
    } else {
      tokenDeclined = true;
      reject(new ApiError('This node needs an access token. Use "Refresh" to enter it.', { status: 401 }));
    }
  };
  el.tokenDialog.returnValue = '';
  el.tokenDialog.addEventListener('close', onClose);
  if (!el.tokenDialog.open) el.tokenDialog.showModal();
  el.tokenInput.focus();
}));

// ---------------------------------------------------------------------------------------------
// The list

/** Whether `key` falls in the slice of the store this page has loaded. */
function inView(key) {
  if (!state.loaded) return false;
  if (!key.startsWith(state.filter)) return false;
  return state.next === null || cmpKeys(key, state.next) <= 0;
}

async function reload({ flashChanges = false } = {}) {
  const seq = ++state.loadSeq;
  state.busy += 1;
  el.refresh.disabled = true;
  try {
    const limit = Math.min(MAX_PAGE, Math.max(PAGE_SIZE, state.loaded ? state.pairs.size : 0));
    const res = await api.list({ prefix: state.filter, limit });
    if (seq !== state.loadSeq) return;
    const before = state.pairs;
    state.pairs = new Map();
    state.conflicts = new Map();
    addLoaded(res.pairs, before);
    state.next = res.next ?? null;
    state.loaded = true;
    if (flashChanges) {
      for (const [key, p] of state.pairs) if (before.get(key) !== p) state.flash.add(key);
      for (const key of before.keys()) if (!state.pairs.has(key)) state.fade.add(key);
    }
    for (const [key, edit] of state.edits) {
      if (!inView(key) || edit.saving) continue;
      const cur = state.pairs.get(key) || null;
      if (edit.conflict || clashes(edit, cur)) noteRemoteChange(key, cur);
    }
  } catch (err) {
    if (seq === state.loadSeq) notify(`Could not load the pairs. ${messageOf(err)}`, 'error');
  } finally {
    state.busy -= 1;
    if (seq === state.loadSeq) el.refresh.disabled = false;
    drainQueue();
    render();
  }
}

/** Takes a page of pairs from the node, keeping the objects of those unchanged since `before`. */
function addLoaded(pairs = [], before = state.pairs) {
  for (const p of pairs) {
    const old = before.get(p.key);
    state.pairs.set(p.key, old && samePair(old, p) ? old : p);
    if (p.conflicts?.length) state.conflicts.set(p.key, p.conflicts);
  }
}

async function loadMore() {
  if (state.next === null) return;
  const seq = state.loadSeq;
  state.busy += 1;
  el.loadMore.disabled = true;
  el.loadMore.textContent = 'Loading…';
  try {
    const res = await api.list({ prefix: state.filter, limit: PAGE_SIZE, after: state.next });
    if (seq !== state.loadSeq) return;
    addLoaded(res.pairs);
    state.next = res.next ?? null;
  } catch (err) {
    notify(`Could not load more pairs. ${messageOf(err)}`, 'error');
  } finally {
    state.busy -= 1;
    el.loadMore.disabled = false;
    el.loadMore.textContent = 'Load more';
    drainQueue();
    render();
  }
}

function drainQueue() {
  if (state.busy > 0) return;
  const queued = state.queue;
  state.queue = [];
  for (const apply of queued) apply();
}

/** Applies one change event (local or replicated) to the page. */
function applyChange(change) {
  if (state.busy > 0) {
    state.queue.push(() => applyChange(change));
    return;
  }
  const key = change.key;
  const known = state.pairs.get(key);
  // The feed brings a node's changes in order, but two writes of one key may announce
  // theirs the other way round: an older one is already shown in the newer.
  if (known && olderThan(change.version, known.version)) return;
  const pair = change.deleted || change.values == null
    ? null
    : { key, values: change.values, elements: change.elements || [], version: change.version, updated_at: change.updated_at, origin: change.origin };

  if (pair) {
    if (known && samePair(known, pair)) return; // already shown (e.g. our own save)
    if (known || inView(key)) {
      state.pairs.set(key, pair);
      state.flash.add(key);
    }
  } else if (known) {
    state.pairs.delete(key);
    state.conflicts.delete(key);
    state.fade.add(key);
  }

  const edit = state.edits.get(key);
  if (edit && !edit.saving && (edit.conflict || clashes(edit, pair))) noteRemoteChange(key, pair);
  scheduleRender();
}

/** Shows a conflict the node settled (a concurrent write lost) on the key's row. */
function applyConflict(note) {
  if (state.busy > 0) {
    state.queue.push(() => applyConflict(note));
    return;
  }
  const key = note.key;
  if (!state.pairs.has(key) && !inView(key)) return;
  const notes = state.conflicts.get(key) || [];
  const id = (c) => JSON.stringify([c.kind, c.element, c.lost_version, c.won_version]);
  if (notes.some((c) => id(c) === id(note))) return; // already listed (by a reload meanwhile)
  state.conflicts.set(key, [...notes, note]);
  scheduleRender();
}

/**
 * Takes a pair from the node's answer to a request (a write, or a 412). The feed may have
 * brought a newer state meanwhile, so it counts only when its version is newer than the one shown.
 */
function adopt(key, pair, { show = state.pairs.has(key) || inView(key) } = {}) {
  const known = state.pairs.get(key);
  if (!pair) {
    if (known) {
      state.pairs.delete(key);
      state.fade.add(key);
    }
    return;
  }
  if (!show || (known && !olderThan(known.version, pair.version))) return;
  state.pairs.set(key, pair);
  state.flash.add(key);
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    render();
  });
}

/** Brings the table in line with `state`, touching only rows that changed. */
function render() {
  const keys = new Set(state.pairs.keys());
  for (const key of state.edits.keys()) keys.add(key);
  const ordered = [...keys].sort(cmpKeys);

  // Rows that disappeared fade out briefly, then go.
  for (const [key, row] of state.rows) {
    if (keys.has(key)) continue;
    state.rows.delete(key);
    if (!state.fade.has(key) || !row.isConnected) {
      row.remove();
      continue;
    }
    row.classList.add('removing');
    row.setAttribute('aria-hidden', 'true');
    row.querySelectorAll('button').forEach((b) => { b.disabled = true; });
    state.fading.add(row);
    setTimeout(() => { row.remove(); state.fading.delete(row); }, FADE_MS);
  }

  // First bring each row up to date (in place), then put the rows in key order.
  const wanted = ordered.map((key) => {
    let row = state.rows.get(key);
    const edit = state.edits.get(key);
    if (edit) {
      if (!row || !row.classList.contains('editing')) {
        const fresh = editorRow(key, edit);
        if (row) row.replaceWith(fresh);
        row = fresh;
        state.rows.set(key, row);
        focusEditor(row);
      }
      renderConflict(row, key, edit);
    } else {
      const pair = state.pairs.get(key);
      const notes = state.conflicts.get(key);
      const busy = state.restoring.has(key);
      if (!row || row.classList.contains('editing') || row._pair !== pair || row._notes !== notes || row._busy !== busy) {
        const fresh = viewRow(pair, notes, busy);
        if (row) {
          const hadFocus = row.contains(document.activeElement) ? document.activeElement.dataset.action : null;
          row.replaceWith(fresh);
          if (hadFocus) (fresh.querySelector(`[data-action="${hadFocus}"]`) || fresh.querySelector('[data-action="edit"]')).focus();
        }
        row = fresh;
        state.rows.set(key, row);
      }
    }
    return [key, row];
  });

  let cursor = el.body.firstElementChild;
  for (const [key, row] of wanted) {
    while (cursor && state.fading.has(cursor)) cursor = cursor.nextElementSibling;
    if (row !== cursor) el.body.insertBefore(row, cursor);
    else cursor = cursor.nextElementSibling;

    if (state.flash.has(key)) {
      row.classList.remove('flash');
      void row.offsetWidth; // restart the animation
      row.classList.add('flash');
      clearTimeout(row._flashTimer);
      row._flashTimer = setTimeout(() => row.classList.remove('flash'), FLASH_MS);
    }
  }
  state.flash.clear();
  state.fade.clear();

  const n = state.pairs.size;
  if (!state.loaded) {
    el.count.textContent = '';
  } else {
    el.count.textContent = state.next !== null ? `${n} shown, more available` : plural(n, 'pair', 'pairs');
  }
  el.loadMore.hidden = state.next === null;
  el.empty.hidden = !state.loaded || ordered.length > 0;
  if (state.loaded && ordered.length === 0) {
    el.empty.textContent = state.filter
      ? `No keys start with “${state.filter}”.`
      : 'No pairs yet. Add a value above to create the first one.';
  }
}

function valuesList(values, { limit = VALUES_SHOWN } = {}) {
  const list = h('ol', { class: 'values' });
  values.slice(0, limit).forEach((v) => {
    list.append(v === ''
      ? h('li', { class: 'value value-empty', title: 'Empty string', text: '∅ empty' })
      : h('li', { class: 'value', text: v }));
  });
  if (values.length > limit) list.append(h('li', { class: 'value value-more', text: `+${values.length - limit} more` }));
  if (values.length === 0) list.append(h('li', { class: 'value value-none', text: 'no values' }));
  return list;
}

function viewRow(pair, notes, busy) {
  const when = formatTime(pair.updated_at);
  const origin = pair.origin ? String(pair.origin) : '';
  const row = h('tr', { class: 'pair-row', dataset: { key: pair.key, version: String(pair.version) } },
    h('th', { scope: 'row', class: 'key-cell' }, h('span', { class: 'key-text', text: pair.key })),
    h('td', { class: 'values-cell' }, valuesList(pair.values), notes?.length ? mergeNotes(pair, notes, busy) : null),
    h('td', { class: 'meta-cell' },
      origin ? h('span', { class: 'origin', title: 'Node where this change was made', text: origin }) : null,
      when.text ? h('time', { datetime: when.iso || null, title: when.iso || null, text: when.text }) : null),
    h('td', { class: 'actions-cell' },
      h('div', { class: 'row-actions' },
        h('button', { type: 'button', class: 'btn btn-small', dataset: { action: 'edit' }, 'aria-label': `Edit values of ${pair.key}`, text: 'Edit' }),
        h('button', { type: 'button', class: 'btn btn-small btn-danger-ghost', dataset: { action: 'delete' }, 'aria-label': `Delete ${pair.key}`, text: 'Delete' }))));
  Object.assign(row, { _pair: pair, _notes: notes, _busy: busy });
  return row;
}

// ---------------------------------------------------------------------------------------------
// Conflicts: where two writes on different nodes were concurrent and one had to lose

function quote(value) {
  const chars = [...value];
  return `“${chars.length > 60 ? chars.slice(0, 59).join('') + '…' : value}”`;
}

function conflictText(c) {
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

function mergeNotes(pair, notes, busy) {
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
    h('button', { type: 'button', class: 'btn btn-small btn-ghost', dataset: { action: 'dismiss' }, disabled: busy, 'aria-label': `Dismiss the notice about ${pair.key}`, text: 'Dismiss' }));
}

// ---------------------------------------------------------------------------------------------
// The editor: one field per value, each tied to the value's id, so a save writes only what changed

let editorSeq = 0;

/** A field for one value; `id` is the value's (none for a value the person adds). */
function valueInputItem(value, index, id) {
  const cid = `ev-${++editorSeq}`;
  // A text field would drop line breaks: values with some get a text area.
  const lines = value.split(/\r\n|\r|\n/).length;
  const control = lines > 1
    ? h('textarea', { id: cid, class: 'value-input', rows: String(Math.min(8, lines)), spellcheck: 'false' })
    : h('input', { id: cid, type: 'text', class: 'value-input', autocomplete: 'off', spellcheck: 'false' });
  control.value = value;
  const li = h('li', { class: 'edit-value', dataset: id ? { id } : {} },
    h('label', { class: 'visually-hidden', for: cid, text: `Value ${index + 1}` }),
    control,
    h('button', { type: 'button', class: 'btn btn-icon', dataset: { action: 'remove-value' }, 'aria-label': `Remove value ${index + 1}`, title: 'Remove this value', text: '✕' }));
  // What the field shows (a text area turns \r\n into \n): unchanged while it still shows this.
  li._shown = control.value;
  return li;
}

function renumber(list) {
  [...list.children].forEach((li, i) => {
    li.querySelector('label').textContent = `Value ${i + 1}`;
    li.querySelector('[data-action="remove-value"]').setAttribute('aria-label', `Remove value ${i + 1}`);
  });
}

function editorRow(key, edit) {
  const list = h('ol', { class: 'edit-values' }, [...edit.base].map(([id, v], i) => valueInputItem(v, i, id)));
  const form = h('form', { class: 'editor', 'aria-label': `Edit values of ${key}`, novalidate: true },
    h('div', { class: 'editor-head' },
      h('span', { class: 'editor-title', text: 'Editing' }),
      h('span', { class: 'key-text', text: key })),
    list,
    h('button', { type: 'button', class: 'btn btn-small btn-ghost', dataset: { action: 'add-value' }, text: '+ Add value' }),
    h('div', { class: 'conflict', role: 'alert', hidden: true }),
    h('div', { class: 'editor-actions' },
      h('button', { type: 'submit', class: 'btn btn-primary', dataset: { action: 'save' }, text: 'Save' }),
      h('button', { type: 'button', class: 'btn btn-secondary', dataset: { action: 'cancel' }, text: 'Cancel' }),
      h('span', { class: 'editor-hint', text: 'Enter saves (Ctrl+Enter in a multi-line value) · Esc cancels' })));
  return h('tr', { class: 'pair-row editing', dataset: { key } },
    h('td', { colspan: '4', class: 'editor-cell' }, form));
}

function focusEditor(row) {
  requestAnimationFrame(() => {
    const target = row.querySelector('.value-input') || row.querySelector('[data-action="add-value"]');
    target?.focus();
  });
}

/**
 * The writes a save makes: edits of changed values, removals, then appends of new ones, each
 * with the value as the editor got it (`seen`).
 */
function draftOps(row, edit) {
  const edits = [];
  const appends = [];
  const kept = new Set();
  for (const li of row.querySelectorAll('.edit-value')) {
    const value = li.querySelector('.value-input').value;
    const id = li.dataset.id;
    if (!id) appends.push({ value, li });
    else {
      kept.add(id);
      if (value !== li._shown) edits.push({ id, seen: edit.base.get(id), value, li });
    }
  }
  const removals = [...edit.base].filter(([id]) => !kept.has(id)).map(([id, seen]) => ({ id, seen, remove: true }));
  return [...edits, ...removals, ...appends];
}

/** The whole draft list, for "Overwrite with mine"; values left alone keep their exact text. */
function draftValues(row, edit) {
  return [...row.querySelectorAll('.edit-value')].map((li) => {
    const value = li.querySelector('.value-input').value;
    return li.dataset.id && value === li._shown ? edit.base.get(li.dataset.id) : value;
  });
}

/** Whether `current` (null: deleted) changed or removed a value the editor shows. Appends don't. */
function clashes(edit, current) {
  if (!current) return true;
  const now = new Map(current.elements.map((e) => [e.id, e.value]));
  for (const [id, value] of edit.base) if (now.get(id) !== value) return true;
  return false;
}

function noteRemoteChange(key, current) {
  const edit = state.edits.get(key);
  if (!edit) return;
  edit.conflict = { current, why: 'live' };
  scheduleRender();
}

function renderConflict(row, key, edit) {
  const box = row.querySelector('.conflict');
  const c = edit.conflict;
  if (box._current === c?.current && box._why === c?.why) return;
  Object.assign(box, { _current: c?.current, _why: c?.why });
  box.replaceChildren();
  box.hidden = !c;
  if (!c) return;
  const lead = c.why === 'save'
    ? 'This pair was changed elsewhere, so your changes were not saved.'
    : 'This pair was changed elsewhere while you were editing.';
  box.append(h('p', { class: 'conflict-title' }, h('strong', { text: lead })));
  if (c.current) {
    box.append(
      h('p', { class: 'conflict-sub', text: `Its values are now (${plural(c.current.values.length, 'value', 'values')}):` }),
      h('div', { class: 'theirs' }, valuesList(c.current.values, { limit: 50 })));
  } else {
    box.append(h('p', { class: 'conflict-sub', text: 'It has been deleted elsewhere.' }));
  }
  box.append(h('div', { class: 'conflict-actions' },
    h('button', { type: 'button', class: 'btn btn-small btn-secondary', dataset: { action: 'show-theirs' }, text: c.current ? 'Show theirs' : 'Discard my changes' }),
    h('button', { type: 'button', class: 'btn btn-small btn-warning', dataset: { action: 'overwrite' }, text: 'Overwrite with mine' })));
}

// ---------------------------------------------------------------------------------------------
// Actions

function startEdit(key) {
  const pair = state.pairs.get(key);
  if (!pair) return;
  const base = new Map(pair.elements.map((e) => [e.id, e.value]));
  state.edits.set(key, { base, baseVersion: pair.version, conflict: null, saving: false });
  render();
}

function stopEdit(key, { focus = true } = {}) {
  state.edits.delete(key);
  render();
  if (focus) state.rows.get(key)?.querySelector('[data-action="edit"]')?.focus();
}

/**
 * Writes `ops` to `key` one at a time: { id, seen, value } changes a value, { id, seen, remove }
 * removes one, { value } appends. Each is conditional on the version last seen; when the pair
 * changed meanwhile (412), the write is made again on the new version as long as every value
 * still to be written is as it was seen, so changes elsewhere to other values (and appends)
 * stay. Resolves to { pair } once all are written, or to { current } (null: deleted) when
 * one of those values was changed or removed elsewhere; `onWritten(op, pair)` sees each write.
 */
async function writeOps(key, ops, version, onWritten = () => {}) {
  let pair = null;
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i];
    let res;
    for (let attempt = 0; ; attempt++) {
      if (op.id === undefined) res = { ok: true, pair: await api.append(key, op.value) };
      else if (op.remove) res = await api.removeValue(key, op.id, version);
      else res = await api.editValue(key, op.id, op.value, version);
      if (res.ok) break;
      const current = res.gone ? await api.get(key) : res.current;
      const asSeen = (o) => o.id === undefined || current?.elements.some((e) => e.id === o.id && e.value === o.seen);
      if (res.gone || !current || attempt >= 5 || !ops.slice(i).every(asSeen)) return { current: current ?? null };
      version = current.version;
    }
    pair = res.pair;
    version = pair.version;
    onWritten(op, pair);
  }
  return { pair };
}

/** After one write of a save: the editor's base follows, so saving again does not repeat it. */
function settleOp(edit, op, pair) {
  edit.baseVersion = pair.version;
  if (op.remove) {
    edit.base.delete(op.id);
    return;
  }
  // An appended value's id is the version of the write that made it, index 0.
  const id = op.id ?? pair.elements.find((e) => e.id === `${pair.version}.0`)?.id;
  if (!id) return;
  edit.base.set(id, op.value);
  op.li.dataset.id = id;
  op.li._shown = op.value;
}

async function save(key, row, { overwrite = false } = {}) {
  const edit = state.edits.get(key);
  if (!edit || edit.saving) return;
  const ops = overwrite ? null : draftOps(row, edit);
  if (ops && ops.length === 0) {
    stopEdit(key);
    notify(`Nothing was changed in “${key}”, so nothing was saved.`, 'info');
    return;
  }
  edit.saving = true;
  row.querySelectorAll('button').forEach((b) => { b.disabled = true; });
  try {
    let res;
    if (overwrite) {
      // The one whole-list write: still conditional, on the version just shown, so a third change is not lost.
      const version = edit.conflict ? (edit.conflict.current ? edit.conflict.current.version : null) : edit.baseVersion;
      const put = await api.put(key, draftValues(row, edit), version);
      res = put.ok ? { pair: put.pair } : { current: put.current ?? null };
    } else {
      res = await writeOps(key, ops, edit.baseVersion, (op, pair) => settleOp(edit, op, pair));
    }
    if (res.pair) {
      state.edits.delete(key);
      adopt(key, res.pair);
      render();
      state.rows.get(key)?.querySelector('[data-action="edit"]')?.focus();
      notify(`Saved “${key}”.`, 'success');
      return;
    }
    // A value this save touches was changed or removed elsewhere: keep the draft and show what is there now.
    adopt(key, res.current);
    edit.conflict = { current: res.current, why: 'save' };
  } catch (err) {
    notify(`Could not save “${key}”. ${messageOf(err)}`, 'error');
  } finally {
    const still = state.edits.get(key);
    if (still) {
      still.saving = false;
      const r = state.rows.get(key);
      r?.querySelectorAll('button').forEach((b) => { b.disabled = false; });
      render();
      r?.querySelector('.conflict:not([hidden]) [data-action="show-theirs"]')?.focus();
    }
  }
}

/**
 * Brings back what a conflict lost: an edited value goes back in its place (if that value is
 * still there), a replaced list's values (or an edited value whose place is gone) are appended.
 */
async function restore(key, index) {
  const pair = state.pairs.get(key);
  const notes = state.conflicts.get(key) || [];
  const c = notes[index];
  if (!pair || !c || state.restoring.has(key)) return;
  const place = c.kind === 'edit' ? pair.elements.find((e) => e.id === c.element) : null;
  const ops = place ? [{ id: place.id, seen: place.value, value: c.lost[0] }] : c.lost.map((value) => ({ value }));
  state.restoring.add(key);
  render();
  try {
    const res = await writeOps(key, ops, pair.version);
    if (!res.pair) {
      adopt(key, res.current);
      notify(`“${key}” was changed elsewhere meanwhile, so nothing was restored. Its newest values are shown now.`, 'error');
      return;
    }
    adopt(key, res.pair);
    notify(`Restored ${plural(c.lost.length, 'value', 'values')} of “${key}”.`, 'success');
    if (notes.length === 1) await dismiss(key);
  } catch (err) {
    notify(`Could not restore the lost ${c.lost.length === 1 ? 'value' : 'values'} of “${key}”. ${messageOf(err)}`, 'error');
  } finally {
    state.restoring.delete(key);
    render();
  }
}

/** Forgets the key's conflicts on this node: the notice goes. */
async function dismiss(key) {
  try {
    await api.dismissConflicts(key);
    state.conflicts.delete(key);
    render();
  } catch (err) {
    notify(`Could not dismiss the notice about “${key}”. ${messageOf(err)}`, 'error');
  }
}

function showTheirs(key) {
  const edit = state.edits.get(key);
  if (!edit) return;
  stopEdit(key);
  if (state.pairs.has(key)) state.flash.add(key);
  render();
}

async function deletePair(key) {
  const pair = state.pairs.get(key);
  if (!pair) return;
  const ok = await confirmAction({
    title: 'Delete this pair?',
    text: `“${key}” and its ${plural(pair.values.length, 'value', 'values')} will be deleted on every node.`,
    ok: 'Delete',
  });
  if (!ok) {
    state.rows.get(key)?.querySelector('[data-action="delete"]')?.focus();
    return;
  }
  const neighbour = state.rows.get(key)?.nextElementSibling || state.rows.get(key)?.previousElementSibling;
  try {
    const res = await api.remove(key, pair.version);
    if (!res.ok) {
      adopt(key, res.current);
      render();
      notify(`“${key}” was changed elsewhere after you loaded it, so it was not deleted. Its newest values are shown now.`, 'error');
      return;
    }
    if (state.pairs.delete(key)) state.fade.add(key);
    state.conflicts.delete(key);
    render();
    notify(res.existed ? `Deleted “${key}”.` : `“${key}” was already deleted elsewhere.`, 'success');
    const next = neighbour?.isConnected && !neighbour.classList.contains('removing') ? neighbour.querySelector('[data-action="edit"]') : null;
    (next || document.getElementById('pairs-heading')).focus();
  } catch (err) {
    notify(`Could not delete “${key}”. ${messageOf(err)}`, 'error');
  }
}

async function clearAll() {
  const ok = await confirmAction({
    title: 'Clear the whole database?',
    text: 'Every pair will be deleted on every node. This cannot be undone.',
    ok: 'Clear database',
  });
  if (!ok) {
    el.clear.focus();
    return;
  }
  el.clear.disabled = true;
  // A large clear takes a while: show the running total the node streams back.
  let progress = null;
  const onProgress = (n) => {
    const text = `Clearing the database… ${plural(n, 'pair', 'pairs')} deleted so far.`;
    if (!progress) progress = notify(text, 'info', { timeout: -1 });
    else progress.querySelector('.msg-text').textContent = text;
  };
  try {
    const res = await api.clear(onProgress);
    const n = res && typeof res.deleted === 'number' ? res.deleted : null;
    progress?.remove();
    notify(n === null ? 'The database was cleared.' : `The database was cleared (${plural(n, 'pair', 'pairs')} deleted).`, 'success');
    await reload();
  } catch (err) {
    progress?.remove();
    notify(`Could not clear the database. ${messageOf(err)}`, 'error');
  } finally {
    el.clear.disabled = false;
  }
}

async function addValue(ev) {
  ev.preventDefault();
  const key = el.addKey.value;
  const value = el.addValue.value;
  const problem = keyProblem(key) || (value === '' ? 'Enter a value to add.' : '');
  if (problem) {
    el.addError.textContent = problem;
    el.addError.hidden = false;
    (keyProblem(key) ? el.addKey : el.addValue).focus();
    return;
  }
  el.addError.hidden = true;
  el.addSubmit.disabled = true;
  try {
    const pair = await api.append(key, value);
    // Show the pair even if it sorts beyond the loaded pages: the person just touched it.
    const shown = state.pairs.has(key) || (state.loaded && key.startsWith(state.filter));
    if (pair && shown) {
      adopt(key, pair, { show: true });
      render();
    }
    notify(shown || !pair
      ? `Added a value to “${key}”.`
      : `Added a value to “${key}” (not shown: it does not match the filter).`, 'success');
    el.addValue.value = '';
    el.addValue.focus();
  } catch (err) {
    el.addError.textContent = `Could not add the value. ${messageOf(err)}`;
    el.addError.hidden = false;
  } finally {
    el.addSubmit.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

el.addForm.addEventListener('submit', addValue);
el.loadMore.addEventListener('click', loadMore);
el.refresh.addEventListener('click', () => {
  tokenDeclined = false;
  if (live.state !== 'live') live.reconnectNow();
  reload({ flashChanges: true });
});
el.clear.addEventListener('click', clearAll);

let filterTimer = null;
el.filter.addEventListener('input', () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    if (el.filter.value === state.filter) return;
    state.filter = el.filter.value;
    state.pairs = new Map();
    state.next = null;
    state.loaded = false;
    reload();
  }, 200);
});

el.body.addEventListener('click', (ev) => {
  const btn = ev.target.closest('button[data-action]');
  if (!btn || btn.disabled) return;
  const row = btn.closest('tr.pair-row');
  const key = row?.dataset.key;
  if (key === undefined) return;
  switch (btn.dataset.action) {
    case 'edit':
      startEdit(key);
      break;
    case 'delete':
      deletePair(key);
      break;
    case 'cancel':
      stopEdit(key);
      break;
    case 'add-value': {
      const list = row.querySelector('.edit-values');
      const item = valueInputItem('', list.children.length);
      list.append(item);
      item.querySelector('input').focus();
      break;
    }
    case 'remove-value': {
      const li = btn.closest('li');
      const list = li.parentElement;
      const after = li.nextElementSibling || li.previousElementSibling;
      li.remove();
      renumber(list);
      (after?.querySelector('.value-input') || row.querySelector('[data-action="add-value"]')).focus();
      break;
    }
    case 'show-theirs':
      showTheirs(key);
      break;
    case 'restore':
      restore(key, Number(btn.dataset.note));
      break;
    case 'dismiss':
      dismiss(key);
      break;
    case 'overwrite':
      save(key, row, { overwrite: true });
      break;
    default:
  }
});

el.body.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const row = ev.target.closest('tr.pair-row');
  if (row) save(row.dataset.key, row);
});

el.body.addEventListener('keydown', (ev) => {
  const row = ev.target.closest('tr.pair-row.editing');
  if (!row) return;
  if (ev.key === 'Escape') {
    ev.preventDefault();
    stopEdit(row.dataset.key);
  } else if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey) && ev.target.tagName === 'TEXTAREA') {
    ev.preventDefault(); // in a text area, Enter makes a new line
    save(row.dataset.key, row);
  }
});

function setNode(id) {
  if (!id || id === state.nodeId) return;
  state.nodeId = id;
  el.nodeId.textContent = id;
  document.title = `kvsync · ${id}`;
}

const LIVE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
};

const cluster = new ClusterPanel({ root: $('#cluster') });

const live = new LiveConnection({
  url: eventsUrl,
  onHello(hello, reconnect) {
    if (hello && typeof hello.node === 'string') setNode(hello.node);
    cluster.refresh(); // at once, e.g. after the connection came back or a token was given
    // (Re)load after the stream is up, so no change can fall between the list and the stream.
    reload({ flashChanges: reconnect });
  },
  onChange: applyChange,
  onConflict: applyConflict,
  onResync() {
    reload({ flashChanges: true });
  },
  onStatus(s, info) {
    el.live.dataset.state = s;
    let text = LIVE_TEXT[s] || s;
    if (s === 'reconnecting' && info.delay) text = `Reconnecting… (retry in ${Math.max(1, Math.round(info.delay / 1000))} s)`;
    el.liveText.textContent = text;
    el.live.title = s === 'live' ? 'Changes made on any node appear here as they happen.' : 'Live updates are paused; the list reloads when the connection is back.';
  },
  async onDrop() {
    cluster.refresh(); // shows at once whether the node still answers
    // If the stream failed because a token is needed, asking the API brings up the prompt.
    try {
      const node = await api.node();
      if (node && node.node_id) setNode(node.node_id);
    } catch {
      /* the node is down; the live connection keeps retrying */
    }
  },
});

async function start() {
  api.node().then((n) => n && setNode(n.node_id)).catch((err) => {
    if (!(err instanceof ApiError && err.status === 0)) notify(`Could not read the node's details. ${messageOf(err)}`, 'error');
  });
  live.start();
  cluster.start();
  // If the stream cannot come up quickly, show the list anyway (it reloads once the stream is up).
  setTimeout(() => {
    if (!state.loaded && state.busy === 0) reload();
  }, 1500);
  render();
}

start();
