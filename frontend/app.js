// kvsync web UI: lists pairs, edits them, and applies live changes from the node's event stream.
// All data from the server is put on the page with textContent / attributes, never as HTML.

import { api, ApiError, eventsUrl, onTokenNeeded, setToken } from './api.js';
import { LiveConnection } from './live.js';

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
  edits: new Map(), // key -> { baseVersion, conflict: null | { current, why }, saving }
  rows: new Map(), // key -> <tr>
  fading: new Set(), // <tr> elements on their way out
  flash: new Set(), // keys to highlight on the next render
  fade: new Set(), // keys deleted while shown: their rows fade out instead of vanishing
  nodeId: '',
};

// ---------------------------------------------------------------------------------------------
// Small helpers

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k in node && typeof v !== 'string') node[k] = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

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
    state.pairs = new Map((res.pairs || []).map((p) => [p.key, p]));
    state.next = res.next ?? null;
    state.loaded = true;
    if (flashChanges) {
      for (const [key, p] of state.pairs) {
        const old = before.get(key);
        if (!old || old.version !== p.version) state.flash.add(key);
      }
      for (const key of before.keys()) if (!state.pairs.has(key)) state.fade.add(key);
    }
    for (const [key, edit] of state.edits) {
      if (!inView(key)) continue;
      const cur = state.pairs.get(key) || null;
      if ((cur ? cur.version : null) !== edit.baseVersion) noteRemoteChange(key, cur);
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

async function loadMore() {
  if (state.next === null) return;
  const seq = state.loadSeq;
  state.busy += 1;
  el.loadMore.disabled = true;
  el.loadMore.textContent = 'Loading…';
  try {
    const res = await api.list({ prefix: state.filter, limit: PAGE_SIZE, after: state.next });
    if (seq !== state.loadSeq) return;
    for (const p of res.pairs || []) state.pairs.set(p.key, p);
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
  for (const change of queued) applyChange(change);
}

/** Applies one change event (local or replicated) to the page. */
function applyChange(change) {
  if (state.busy > 0) {
    state.queue.push(change);
    return;
  }
  const key = change.key;
  const pair = change.deleted || change.values == null
    ? null
    : { key, values: change.values, version: change.version, updated_at: change.updated_at, origin: change.origin };
  const known = state.pairs.get(key);

  if (pair) {
    if (known && known.version === pair.version) return; // already shown (e.g. our own save)
    if (known || inView(key)) {
      state.pairs.set(key, pair);
      state.flash.add(key);
    }
  } else if (known) {
    state.pairs.delete(key);
    state.fade.add(key);
  }

  const edit = state.edits.get(key);
  if (edit && !edit.saving && (pair ? pair.version : null) !== edit.baseVersion) noteRemoteChange(key, pair);
  scheduleRender();
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
      if (!row || row.classList.contains('editing') || row.dataset.version !== String(pair.version)) {
        const fresh = viewRow(pair);
        if (row) {
          const hadFocus = row.contains(document.activeElement) ? document.activeElement.dataset.action : null;
          row.replaceWith(fresh);
          if (hadFocus) fresh.querySelector(`[data-action="${hadFocus}"]`)?.focus();
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

function viewRow(pair) {
  const when = formatTime(pair.updated_at);
  const origin = pair.origin ? String(pair.origin) : '';
  return h('tr', { class: 'pair-row', dataset: { key: pair.key, version: String(pair.version) } },
    h('th', { scope: 'row', class: 'key-cell' }, h('span', { class: 'key-text', text: pair.key })),
    h('td', { class: 'values-cell' }, valuesList(pair.values)),
    h('td', { class: 'meta-cell' },
      origin ? h('span', { class: 'origin', title: 'Node where this change was made', text: origin }) : null,
      when.text ? h('time', { datetime: when.iso || null, title: when.iso || null, text: when.text }) : null),
    h('td', { class: 'actions-cell' },
      h('div', { class: 'row-actions' },
        h('button', { type: 'button', class: 'btn btn-small', dataset: { action: 'edit' }, 'aria-label': `Edit values of ${pair.key}`, text: 'Edit' }),
        h('button', { type: 'button', class: 'btn btn-small btn-danger-ghost', dataset: { action: 'delete' }, 'aria-label': `Delete ${pair.key}`, text: 'Delete' }))));
}

let editorSeq = 0;

function valueInputItem(value, index) {
  const id = `ev-${++editorSeq}`;
  return h('li', { class: 'edit-value' },
    h('label', { class: 'visually-hidden', for: id, text: `Value ${index + 1}` }),
    h('input', { id, type: 'text', class: 'value-input', value, autocomplete: 'off', spellcheck: 'false' }),
    h('button', { type: 'button', class: 'btn btn-icon', dataset: { action: 'remove-value' }, 'aria-label': `Remove value ${index + 1}`, title: 'Remove this value', text: '✕' }));
}

function renumber(list) {
  [...list.children].forEach((li, i) => {
    li.querySelector('label').textContent = `Value ${i + 1}`;
    li.querySelector('[data-action="remove-value"]').setAttribute('aria-label', `Remove value ${i + 1}`);
  });
}

function editorRow(key, edit) {
  const pair = state.pairs.get(key);
  const values = edit.draft ?? (pair ? pair.values : []);
  delete edit.draft;
  const list = h('ol', { class: 'edit-values' }, values.map((v, i) => valueInputItem(v, i)));
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
      h('span', { class: 'editor-hint', text: 'Enter saves · Esc cancels' })));
  return h('tr', { class: 'pair-row editing', dataset: { key } },
    h('td', { colspan: '4', class: 'editor-cell' }, form));
}

function focusEditor(row) {
  requestAnimationFrame(() => {
    const target = row.querySelector('.value-input') || row.querySelector('[data-action="add-value"]');
    target?.focus();
  });
}

function draftValues(row) {
  return [...row.querySelectorAll('.value-input')].map((i) => i.value);
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
  const sig = c ? `${c.why}|${c.current ? c.current.version : 'deleted'}` : '';
  if (box.dataset.sig === sig) return;
  box.dataset.sig = sig;
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
  state.edits.set(key, { baseVersion: pair.version, conflict: null, saving: false });
  render();
}

function stopEdit(key, { focus = true } = {}) {
  state.edits.delete(key);
  render();
  if (focus) state.rows.get(key)?.querySelector('[data-action="edit"]')?.focus();
}

async function save(key, row, { overwrite = false } = {}) {
  const edit = state.edits.get(key);
  if (!edit || edit.saving) return;
  const values = draftValues(row);
  // Overwriting is still conditional: on the version we were just shown, so a third change is not lost.
  const version = overwrite && edit.conflict ? (edit.conflict.current ? edit.conflict.current.version : null) : edit.baseVersion;
  edit.saving = true;
  row.querySelectorAll('button').forEach((b) => { b.disabled = true; });
  try {
    const res = await api.put(key, values, version);
    if (res.ok) {
      state.edits.delete(key);
      if (res.pair && (state.pairs.has(key) || inView(key))) {
        const known = state.pairs.get(key);
        if (!known || known.version !== res.pair.version) {
          state.pairs.set(key, res.pair);
          state.flash.add(key);
        }
      }
      render();
      state.rows.get(key)?.querySelector('[data-action="edit"]')?.focus();
      notify(`Saved “${key}”.`, 'success');
      return;
    }
    // 412: someone else changed it. Keep the person's draft and show what is there now.
    const current = res.current;
    if (current) state.pairs.set(key, current);
    else state.pairs.delete(key);
    edit.conflict = { current, why: 'save' };
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
      if (res.current) {
        state.pairs.set(key, res.current);
        state.flash.add(key);
      } else state.pairs.delete(key);
      render();
      notify(`“${key}” was changed elsewhere after you loaded it, so it was not deleted. Its newest values are shown now.`, 'error');
      return;
    }
    if (state.pairs.delete(key)) state.fade.add(key);
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
      const known = state.pairs.get(key);
      if (!known || known.version !== pair.version) {
        state.pairs.set(key, pair);
        state.flash.add(key);
      }
      const edit = state.edits.get(key);
      if (edit && edit.baseVersion !== pair.version) noteRemoteChange(key, pair);
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
  if (ev.key !== 'Escape') return;
  const row = ev.target.closest('tr.pair-row.editing');
  if (!row) return;
  ev.preventDefault();
  stopEdit(row.dataset.key);
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

const live = new LiveConnection({
  url: eventsUrl,
  onHello(hello, reconnect) {
    if (hello && typeof hello.node === 'string') setNode(hello.node);
    // (Re)load after the stream is up, so no change can fall between the list and the stream.
    reload({ flashChanges: reconnect });
  },
  onChange: applyChange,
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
  // If the stream cannot come up quickly, show the list anyway (it reloads once the stream is up).
  setTimeout(() => {
    if (!state.loaded && state.busy === 0) reload();
  }, 1500);
  render();
}

start();
