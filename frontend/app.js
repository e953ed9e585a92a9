// kvsync web UI: lists pairs, edits them, and applies live changes from the node's event stream.
// All data from the server is put on the page with textContent / attributes, never as HTML.

import { api, ApiError, eventsUrl, getToken, onTokenNeeded, setToken } from './api.js';
import { LiveConnection } from './live.js';
import { ClusterPanel } from './cluster.js';
import { h } from './dom.js';
import { clockTime, dateTime, groupDigits } from './format.js';
import { clearTransient, messageOf, notify, notifyError, resolved, setNoticeRoot } from './notices.js';
import { slowText, watchSlow } from './writes.js';
import { countMatches, looksLikeGlob, matchesSearch as matchesKey } from './search.js';
import { conflictList, mergeNotes, tallyText } from './conflicts.js';
import { valueEditor } from './valueedit.js';
import { holdAnchor, readingAnchor, sightTop, whereIs } from './offscreen.js';
import { setupBulk } from './bulk.js';

const PAGE_SIZE = 100; // the first page: shown quickly
const MORE_SIZE = 500; // each page loaded as the list is scrolled
const MAX_PAGE = 1000;
// Up to this many rows all are in the page; beyond, only those near the screen (windowing).
const RENDER_ALL = 300;
const OVERSCAN_PX = 800; // rows kept rendered above and below the screen
const EST_ROW_PX = 46; // a row's height until one is measured
const COUNT_EVERY_MS = 1000; // at most one recount of the total per second
const MAX_KEY_BYTES = 512;
const VALUES_SHOWN = 20;
const FLASH_MS = 1600;
const FADE_MS = 600;

const $ = (sel) => document.querySelector(sel);
const el = {
  nodeId: $('#node-id'),
  keyView: $('#key-view'),
  keyViewKey: $('#key-view-key'),
  keyViewMeta: $('#key-view-meta'),
  keyViewValues: $('#key-view-values'),
  keyViewMissing: $('#key-view-missing'),
  keyViewAdd: $('#key-view-add'),
  keyBack: $('#key-back'),
  copyKey: $('#copy-key'),
  addCard: $('#add-card'),
  pairsCard: $('#pairs-card'),
  live: $('#live-status'),
  liveText: $('#live-status .live-text'),
  messages: $('#messages'),
  addForm: $('#add-form'),
  addKey: $('#add-key'),
  addValue: $('#add-value'),
  addSubmit: $('#add-submit'),
  addError: $('#add-error'),
  filter: $('#filter-input'),
  search: $('#search-input'),
  searchGlob: $('#search-glob'),
  searchCase: $('#search-case'),
  folderSep: $('#folder-sep'),
  globHint: $('#glob-hint'),
  changesAbove: $('#changes-above'),
  changesBelow: $('#changes-below'),
  conflictCount: $('#conflict-count'),
  keyViewConflicts: $('#key-view-conflicts'),
  globUse: $('#glob-use'),
  folderPath: $('#folder-path'),
  folderList: $('#folder-list'),
  count: $('#pair-count'),
  elsewhere: $('#elsewhere'),
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
  clearDialog: $('#clear-dialog'),
  clearText: $('#clear-text'),
  clearInput: $('#clear-input'),
  clearOk: $('#clear-ok'),
  tokenDialog: $('#token-dialog'),
  tokenForm: $('#token-form'),
  tokenInput: $('#token-input'),
  tokenError: $('#token-error'),
  tokenTabOnly: $('#token-tab-only'),
  tokenMenu: $('#token-menu'),
  tokenBtn: $('#token-btn'),
  tokenItems: $('#token-items'),
  tokenChange: $('#token-change'),
  tokenForget: $('#token-forget'),
};

setNoticeRoot(el.messages);

const state = {
  filter: '',
  search: { text: '', glob: false, ignoreCase: false }, // a substring or glob, on the node
  sep: '', // folder view: keys split at this separator ('' for none)
  folders: [], // the folders found below the prefix, in key order
  pairs: new Map(), // key -> pair, the loaded slice of the store (all keys <= `next` matching the filter)
  order: [], // the keys of `pairs` and `edits`, sorted: the rows, top to bottom
  heights: new Map(), // key -> the row's measured height (px)
  measured: { sum: 0, n: 0 }, // for the estimate of rows not measured yet
  total: null, // live pairs matching the filter, as the node counted them
  found: null, // what the search found: { found, scanned, done }, counted in the background
  elsewhere: 0, // changes to keys this page does not show, since the last load
  moreFailed: false, // loading more failed: scrolling does not retry until a reload or a click
  next: null, // cursor for "load more"; null once everything matching the filter is loaded
  loaded: false,
  loadSeq: 0,
  loading: false, // a load of the list is under way
  reloadAfter: null, // options of a load to start once the one under way is done
  busy: 0, // loads in flight; live changes are queued meanwhile and replayed afterwards
  queue: [],
  edits: new Map(), // key -> { base: Map(id -> value), baseTag (its ETag), conflict: null | { current, why }, saving }
  conflicts: new Map(), // key -> conflicts the node settled for it (shown until dismissed)
  tally: new Map(), // key -> conflicts, of every key this page heard of (loaded or live): the header's count
  viewConflicts: [], // the conflicts of the key shown on its own
  viewEditors: new Map(), // value id -> its open editor in the key's own view (kept across renders)
  viewAdding: null, // the editor of a value being added in the key's own view
  restoring: new Set(), // keys with a Restore under way
  rows: new Map(), // key -> <tr>
  fading: new Set(), // <tr> elements on their way out
  flash: new Set(), // keys to highlight on the next render
  touched: new Set(), // keys changed live since the last render: out of sight, they are counted
  above: new Set(), // keys changed live above the screen, not seen since
  below: new Set(), // and below it
  fade: new Set(), // keys deleted while shown: their rows fade out instead of vanishing
  nodeId: '',
  view: null, // the key shown on its own (?key=), or null for the list
  viewPair: undefined, // its pair: undefined while loading, null when there is none
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

/** Where `key` is, or would go, in `state.order`. */
function orderIndex(key) {
  const order = state.order;
  let lo = 0;
  let hi = order.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cmpKeys(order[mid], key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Brings `state.order` in line with whether `key` has a row (a pair or an editor). */
function syncOrder(key) {
  const i = orderIndex(key);
  const present = state.order[i] === key;
  const wanted = state.pairs.has(key) || state.edits.has(key);
  if (wanted && !present) state.order.splice(i, 0, key);
  else if (!wanted && present) state.order.splice(i, 1);
}

function setPair(key, pair) {
  const fresh = !state.pairs.has(key);
  state.pairs.set(key, pair);
  if (fresh) syncOrder(key);
}

function dropPair(key) {
  if (!state.pairs.delete(key)) return false;
  syncOrder(key);
  return true;
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
  return `${groupDigits(n)} ${n === 1 ? one : many}`;
}

function formatTime(value) {
  if (value === undefined || value === null || value === '') return { text: '', iso: '' };
  let d;
  if (typeof value === 'number') d = new Date(value < 1e12 ? value * 1000 : value);
  else d = new Date(value);
  if (Number.isNaN(d.getTime())) return { text: String(value), iso: '' };
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const text = sameDay ? clockTime(d) : dateTime(d);
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

/**
 * Whether `pair` (null: deleted), of `version`, should replace `shown`: unless it is older. A
 * merge of an older concurrent write changes the values and keeps the version, so a state
 * that differs at the same version replaces too.
 */
function replaces(shown, pair, version) {
  if (!shown) return true;
  if (olderThan(version, shown.version)) return false;
  return !pair || !samePair(shown, pair);
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

let tokenDeclined = false; // the person said no: the page is locked until they give one

const lockedError = () => new ApiError('This node needs an access token. Use "Token" → "Change token" to enter it.', { status: 401 });

/** Asks for the token; resolves once one is kept, rejects when the person declines. */
function askToken(rejected) {
  return new Promise((resolve, reject) => {
    el.tokenMenu.hidden = false; // the node wants a token: offer to change or forget it
    el.tokenError.hidden = !rejected;
    el.tokenError.textContent = rejected ? 'That token was not accepted. Check it and try again.' : '';
    el.tokenInput.value = '';
    const onClose = () => {
      el.tokenDialog.removeEventListener('close', onClose);
      const token = el.tokenInput.value.trim();
      if (el.tokenDialog.returnValue === 'ok' && token) {
        setToken(token, { tabOnly: el.tokenTabOnly.checked });
        setLocked(false);
        resolve();
        live.restart();
      } else {
        setLocked(true);
        reject(lockedError());
      }
    };
    el.tokenDialog.returnValue = '';
    el.tokenDialog.addEventListener('close', onClose);
    if (!el.tokenDialog.open) el.tokenDialog.showModal();
    el.tokenInput.focus();
  });
}

// After "no" (Esc), don't nag on every background retry; "Change token" asks again.
onTokenNeeded((rejected) => (tokenDeclined ? Promise.reject(lockedError()) : askToken(rejected)));

function setLocked(locked) {
  tokenDeclined = locked;
  if (locked) showStatus('locked');
  else if (live.state) showStatus(live.state, {});
}

// ---------------------------------------------------------------------------------------------
// The list

/** Whether `key` falls in the slice of the store this page has loaded. */
function inView(key) {
  if (!state.loaded) return false;
  if (!key.startsWith(state.filter)) return false;
  if (!matchesSearch(key)) return false;
  if (state.sep && !state.search.text && key.indexOf(state.sep, state.filter.length) >= 0) return false; // in a sub-folder
  return state.next === null || cmpKeys(key, state.next) <= 0;
}

/** Whether `key` matches the search, as the node does. */
function matchesSearch(key) {
  return matchesKey(key, state.search);
}

/** The list request's query for the prefix, the search and the folder view. */
function listQuery() {
  const q = { prefix: state.filter };
  const { text, glob, ignoreCase } = state.search;
  if (text) Object.assign(q, glob ? { glob: text } : { contains: text }, ignoreCase ? { ignoreCase: true } : {});
  if (state.sep && !text) q.delimiter = state.sep;
  return q;
}

/**
 * Loads the list again once the load under way, if any, has been shown. For the stream's
 * hello: its load must start after the stream did, but the load already on its way (sent at
 * start-up, before the stream was up) can show first rather than be dropped.
 */
function reloadAfterCurrent(opts) {
  if (state.loading) state.reloadAfter = opts;
  else reload(opts);
}

/**
 * Loads the list again: as far as it was loaded (page by page), so a refresh or reconnect
 * keeps every row loaded and the scroll position; the first load reads one short page.
 */
async function reload({ flashChanges = false } = {}) {
  const seq = ++state.loadSeq;
  state.loading = true;
  state.busy += 1;
  el.refresh.disabled = true;
  try {
    const wasLoaded = state.loaded;
    const until = state.next; // null: everything was loaded
    const want = wasLoaded ? state.pairs.size : 0;
    const pages = [];
    let fetched = 0;
    let after = null;
    let total = null;
    const folders = [];
    const query = listQuery();
    for (;;) {
      const limit = Math.min(MAX_PAGE, Math.max(PAGE_SIZE, want - fetched));
      const res = await api.list({ ...query, limit, after, count: after === null && !state.search.text });
      if (seq !== state.loadSeq) return;
      if (after === null && typeof res.total === 'number') total = res.total;
      pages.push(res.pairs || []);
      folders.push(...(res.folders || []));
      fetched += (res.pairs || []).length;
      after = res.next ?? null;
      if (after === null || !wasLoaded) break;
      if (until !== null ? cmpKeys(after, until) >= 0 : fetched >= want + MAX_PAGE) break;
    }
    const before = state.pairs;
    state.pairs = new Map();
    state.conflicts = new Map();
    for (const page of pages) addLoaded(page, before);
    state.order = [...state.pairs.keys()]; // pages come in key order
    for (const key of state.edits.keys()) syncOrder(key);
    state.next = after;
    state.loaded = true;
    state.total = total;
    state.found = after === null && state.search.text ? { found: state.pairs.size, done: true } : null;
    if (!state.found && state.search.text) countSoon(seq, query);
    state.folders = folders;
    state.elsewhere = 0;
    clearTransient();
    resolved('load');
    state.moreFailed = false;
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
    if (seq === state.loadSeq) {
      notifyError('Could not load the pairs.', err, { topic: 'load' });
      // A busy or briefly unreachable node: try again soon rather than stay empty.
      const transient = err instanceof ApiError && (err.status === 0 || err.status >= 500);
      if (transient) setTimeout(() => { if (seq === state.loadSeq) reload({ flashChanges }); }, 3000);
    }
  } finally {
    state.busy -= 1;
    if (seq === state.loadSeq) {
      el.refresh.disabled = false;
      state.loading = false;
    }
    drainQueue();
    render();
    if (seq === state.loadSeq && state.reloadAfter) {
      const opts = state.reloadAfter;
      state.reloadAfter = null;
      reload(opts);
    }
  }
}

/** Counts what a search finds beyond the loaded rows (the total shows as it grows). */
function countSoon(seq, query) {
  countMatches(api.list, query, (found) => {
    state.found = found;
    scheduleRender();
  }, () => seq !== state.loadSeq).catch(() => { /* the count stays "so far" */ });
}

/** Takes a page of pairs from the node, keeping the objects of those unchanged since `before`. */
function addLoaded(pairs = [], before = state.pairs) {
  for (const p of pairs) {
    const old = before.get(p.key);
    state.pairs.set(p.key, old && samePair(old, p) ? old : p);
    if (p.conflicts?.length) {
      state.conflicts.set(p.key, p.conflicts);
      state.tally.set(p.key, p.conflicts);
    } else state.tally.delete(p.key);
  }
}

let loadingMore = false;

async function loadMore() {
  if (state.next === null || loadingMore) return;
  const seq = state.loadSeq;
  loadingMore = true;
  state.busy += 1;
  el.loadMore.disabled = true;
  el.loadMore.textContent = 'Loading…';
  try {
    const res = await api.list({ ...listQuery(), limit: MORE_SIZE, after: state.next });
    if (seq !== state.loadSeq) return;
    if (res.folders?.length) state.folders = [...state.folders, ...res.folders];
    const known = state.pairs;
    for (const p of res.pairs || []) {
      const had = known.has(p.key);
      addLoaded([p]);
      if (!had) syncOrder(p.key);
    }
    state.next = res.next ?? null;
    state.moreFailed = false;
  } catch (err) {
    state.moreFailed = true;
    notifyError('Could not load more pairs.', err, { topic: 'load' });
  } finally {
    loadingMore = false;
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
    : { key, values: change.values, elements: change.elements || [], version: change.version, etag: change.etag, updated_at: change.updated_at, origin: change.origin };

  if (pair) {
    if (known && samePair(known, pair)) return; // already shown (e.g. our own save)
    if (known || inView(key)) {
      if (!known && state.total !== null) state.total += 1; // in the loaded slice: a new key
      setPair(key, pair);
      state.flash.add(key);
      state.touched.add(key);
    } else {
      noteElsewhere();
    }
  } else if (known) {
    dropPair(key);
    if (state.total !== null) state.total = Math.max(0, state.total - 1);
    state.conflicts.delete(key);
    state.tally.delete(key);
    state.fade.add(key);
  } else if (!inView(key)) {
    noteElsewhere();
  }

  const edit = state.edits.get(key);
  if (edit && !edit.saving && (edit.conflict || clashes(edit, pair))) noteRemoteChange(key, pair);
  if (key === state.view && replaces(state.viewPair, pair, change.version)) {
    state.viewPair = pair;
    renderKeyView();
  }
  scheduleRender();
}

/** A change this page does not show: counted, and the total counted again soon. */
function noteElsewhere() {
  state.elsewhere += 1;
  recountSoon();
}

let countTimer = null;
function recountSoon() {
  if (countTimer !== null || !state.loaded) return;
  countTimer = setTimeout(async () => {
    const seq = state.loadSeq;
    try {
      if (state.search.text) return; // a search has no total
      const res = await api.list({ prefix: state.filter, limit: 1, count: true });
      if (seq === state.loadSeq && typeof res.total === 'number') {
        state.total = res.total;
        scheduleRender();
      }
    } catch {
      /* the next load counts again */
    } finally {
      countTimer = null;
    }
  }, COUNT_EVERY_MS);
}

/** Shows a conflict the node settled (a concurrent write lost) on the key's row. */
function applyConflict(note) {
  if (state.busy > 0) {
    state.queue.push(() => applyConflict(note));
    return;
  }
  const key = note.key;
  const id = (c) => JSON.stringify([c.kind, c.element, c.lost_version, c.won_version]);
  const add = (notes = []) => (notes.some((c) => id(c) === id(note)) ? notes : [...notes, note]);
  state.tally.set(key, add(state.tally.get(key)));
  if (key === state.view) {
    state.viewConflicts = add(state.viewConflicts);
    renderKeyView();
  }
  scheduleRender();
  if (!state.pairs.has(key) && !inView(key)) return;
  // Already listed (by a reload meanwhile) or not, the row shows it.
  state.conflicts.set(key, add(state.conflicts.get(key)));
}

/**
 * Takes a pair from the node's answer to a request (a write, or a 412). The feed may have
 * brought a newer state meanwhile: an older version never replaces what is shown. At the
 * same version a merge may have changed the values, and the answer cannot tell whether it
 * comes before or after that merge: the node is asked (`confirm`).
 */
function adopt(key, pair, { show = state.pairs.has(key) || inView(key) } = {}) {
  const known = state.pairs.get(key);
  if (!pair) {
    if (known) {
      dropPair(key);
      state.fade.add(key);
    }
    return;
  }
  if (!show || (known && !replaces(known, pair, pair.version))) return;
  if (known && known.version === pair.version) {
    confirm(key);
    return;
  }
  setPair(key, pair);
  state.flash.add(key);
}

/** Feed changes seen per key: an answer asked for before the latest of them may be older. */
const fed = new Map();

/**
 * Asks the node for the key's state and shows it, unless the feed brought a change of the
 * key meanwhile (the feed is in order: what it brought is as new or newer).
 */
function confirm(key) {
  const seen = fed.get(key) ?? 0;
  api.get(key).then((pair) => {
    if ((fed.get(key) ?? 0) !== seen || !pair) return;
    const known = state.pairs.get(key);
    if (known && replaces(known, pair, pair.version)) {
      setPair(key, pair);
      state.flash.add(key);
    }
    if (key === state.view && replaces(state.viewPair, pair, pair.version)) {
      state.viewPair = pair;
      renderKeyView();
    }
    scheduleRender();
  }, () => { /* the feed brings it */ });
}

// Changes that arrive together (a burst of events, a scroll) make one render per frame.
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    if (renderQueued) render();
  });
}

const padTop = h('tr', { class: 'pad-row', 'aria-hidden': 'true' }, h('td', { colspan: '4' }));
const padBottom = h('tr', { class: 'pad-row', 'aria-hidden': 'true' }, h('td', { colspan: '4' }));

function rowHeight(key, est) {
  return state.heights.get(key) ?? est;
}

// Until the page has first shown its rows, only those near the screen are put in, even of
// a short list: laying out a whole first page of rows was a third of the first render.
// The rest follow once the page is idle.
let settled = false;
let settling = false;

function settleSoon() {
  if (settled || settling) return;
  settling = true;
  const go = () => {
    settled = true;
    scheduleRender();
  };
  if (window.requestIdleCallback) requestIdleCallback(go, { timeout: 500 });
  else setTimeout(go, 100);
}

/**
 * The rows to put in the page: all of them up to RENDER_ALL, else those near the screen,
 * with the height of the others above and below (from measured rows, or an estimate).
 */
function visibleWindow() {
  const order = state.order;
  const n = order.length;
  if (n <= RENDER_ALL && settled) return { start: 0, end: n, above: 0, below: 0 };
  const est = state.measured.n ? state.measured.sum / state.measured.n : EST_ROW_PX;
  const top = el.body.getBoundingClientRect().top; // where the first row goes, on screen
  const from = -top - OVERSCAN_PX;
  const to = -top + window.innerHeight + OVERSCAN_PX;
  let y = 0;
  let i = 0;
  for (; i < n; i++) {
    const rh = rowHeight(order[i], est);
    if (y + rh > from) break;
    y += rh;
  }
  const start = i;
  const above = y;
  for (; i < n && y < to; i++) y += rowHeight(order[i], est);
  const end = i;
  let below = 0;
  for (; i < n; i++) below += rowHeight(order[i], est);
  return { start, end, above, below };
}

/** Sets an element's text only when it differs (each write is a change to lay out again). */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** Counts live changes to rows out of sight; a row seen again is no longer counted. */
function noteOutOfSight(win) {
  const top = sightTop();
  for (const key of state.touched) {
    const i = orderIndex(key);
    if (state.order[i] !== key || state.view !== null) continue;
    const row = state.rows.get(key);
    const where = row?.isConnected ? whereIs(row, top) : i < win.start ? 'above' : 'below';
    if (where !== 'on') state[where].add(key);
  }
  state.touched.clear();
  for (const side of ['above', 'below']) {
    for (const key of state[side]) {
      const row = state.rows.get(key);
      if (!state.pairs.has(key) || (row?.isConnected && whereIs(row, top) === 'on')) state[side].delete(key);
    }
  }
  for (const [side, button, arrow] of [['above', el.changesAbove, '↑'], ['below', el.changesBelow, '↓']]) {
    const n = state[side].size;
    // Written only when it changes: a render runs on every frame of a scroll.
    const hidden = n === 0 || state.view !== null;
    if (button.hidden !== hidden) button.hidden = hidden;
    if (!hidden) setText(button, `${arrow} ${plural(n, 'change', 'changes')} ${side}`);
  }
  if (!el.changesAbove.hidden) el.changesAbove.style.top = `${top + 8}px`;
}

/** Brings the nearest row changed out of sight (on `side`) into sight. */
function showChanged(side) {
  const keys = [...state[side]].sort(cmpKeys);
  const key = side === 'above' ? keys.at(-1) : keys[0];
  if (key === undefined) return;
  state[side].delete(key);
  state.flash.add(key);
  revealRow(key);
  render();
}

/** Brings a row into sight (it may sort far below, not even in the page yet). */
function revealRow(key) {
  const i = orderIndex(key);
  if (state.order[i] !== key) return;
  if (!state.rows.get(key)?.isConnected) {
    const est = state.measured.n ? state.measured.sum / state.measured.n : EST_ROW_PX;
    let y = 0;
    for (let j = 0; j < i; j++) y += rowHeight(state.order[j], est);
    window.scrollTo({ top: Math.max(0, el.body.getBoundingClientRect().top + window.scrollY + y - window.innerHeight / 2) });
    settled = true;
    render();
  }
  const r = state.rows.get(key)?.getBoundingClientRect();
  if (r && (r.top < 0 || r.bottom > window.innerHeight)) state.rows.get(key).scrollIntoView({ block: 'center' });
}

/** Brings the table in line with `state`, touching only rows that changed. */
function render() {
  renderQueued = false;
  if (padTop.parentNode !== el.body) el.body.prepend(padTop);
  if (padBottom.parentNode !== el.body) el.body.append(padBottom);
  // What is read now stays where it is, whatever comes or goes above it.
  const anchor = state.view === null ? readingAnchor(el.body) : null;
  const win = visibleWindow();
  const ordered = state.order.slice(win.start, win.end);
  const keys = new Set(ordered);

  // Rows that disappeared fade out briefly, then go; rows scrolled away just go (an
  // editor keeps its element, and so its draft, for when it is back).
  for (const [key, row] of state.rows) {
    if (keys.has(key)) continue;
    if (state.pairs.has(key) || state.edits.has(key)) {
      row.remove();
      if (!state.edits.has(key)) state.rows.delete(key);
      continue;
    }
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
  const fresh = new Map(); // rows new in the page: to measure
  const wanted = ordered.map((key) => {
    let row = state.rows.get(key);
    const edit = state.edits.get(key);
    if (edit) {
      if (!row || !row.classList.contains('editing')) {
        const made = editorRow(key, edit);
        if (row) row.replaceWith(made);
        row = made;
        fresh.set(key, row);
        state.rows.set(key, row);
        focusEditor(row);
      }
      renderConflict(row, key, edit);
    } else {
      const pair = state.pairs.get(key);
      const notes = state.conflicts.get(key);
      const busy = state.restoring.has(key);
      if (!row || row.classList.contains('editing') || row._pair !== pair || row._notes !== notes || row._busy !== busy) {
        const made = viewRow(pair, notes, busy);
        if (row) {
          const hadFocus = row.contains(document.activeElement) ? document.activeElement.dataset.action : null;
          row.replaceWith(made);
          if (hadFocus) (made.querySelector(`[data-action="${hadFocus}"]`) || made.querySelector('[data-action="edit"]')).focus();
        }
        row = made;
        fresh.set(key, row);
        state.rows.set(key, row);
      }
    }
    return [key, row];
  });

  let cursor = padTop.nextElementSibling;
  for (const [key, row] of wanted) {
    while (cursor && state.fading.has(cursor)) cursor = cursor.nextElementSibling;
    if (row !== cursor) {
      el.body.insertBefore(row, cursor);
      fresh.set(key, row);
    } else cursor = cursor.nextElementSibling;

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
  padTop.firstElementChild.style.height = `${win.above}px`;
  padBottom.firstElementChild.style.height = `${win.below}px`;
  padTop.hidden = win.above === 0;
  padBottom.hidden = win.below === 0;

  // Heights of the rows just put in, for the place of the others (one layout pass).
  if (state.order.length > RENDER_ALL / 2) {
    for (const [key, row] of fresh) {
      const rh = row.offsetHeight;
      if (rh <= 0) continue;
      if (!state.heights.has(key)) {
        state.measured.sum += rh;
        state.measured.n += 1;
      }
      state.heights.set(key, rh);
    }
  }

  holdAnchor(anchor);
  noteOutOfSight(win);
  renderCount();
  if (state.loaded) settleSoon();
  el.loadMore.hidden = state.next === null;
  el.empty.hidden = !state.loaded || state.order.length > 0 || state.folders.length > 0;
  if (state.loaded && state.order.length === 0) {
    el.empty.textContent = state.search.text
      ? `No keys match “${state.search.text}”${state.filter ? ` among those starting with “${state.filter}”` : ''}.`
      : state.filter
      ? `No keys start with “${state.filter}”.`
      : 'No pairs yet. Add a value above to create the first one.';
  }
  loadMoreIfNear();
}

function renderCount() {
  const n = state.pairs.size;
  if (!state.loaded) {
    el.count.textContent = '';
  } else {
    const total = state.total ?? n;
    const what = state.filter ? plural(total, 'match', 'matches') : plural(total, 'pair', 'pairs');
    if (state.search.text) {
      const f = state.next === null ? { found: n, done: true } : state.found;
      el.count.textContent = f?.done
        ? plural(f.found, 'match', 'matches')
        : `${plural(Math.max(n, f?.found ?? 0), 'match', 'matches')} so far${f ? ` (${plural(f.scanned, 'key', 'keys')} searched)` : ''}, counting on…`;
    } else {
      el.count.textContent = state.next !== null ? `${what} · ${groupDigits(n)} loaded` : what;
    }
  }
  renderFolders();
  bulk.update(state.filter, Boolean(state.search.text));
  const glob = looksLikeGlob({ text: el.search.value, glob: el.searchGlob.checked });
  if (el.globHint.hidden === glob) el.globHint.hidden = !glob;
  const conflicts = tallyText(state.tally);
  if (el.conflictCount.hidden === Boolean(conflicts)) el.conflictCount.hidden = !conflicts;
  setText(el.conflictCount, conflicts ? `⚠ ${conflicts}` : '');
  el.elsewhere.hidden = state.elsewhere === 0;
  el.elsewhere.textContent = `${plural(state.elsewhere, 'change', 'changes')} elsewhere`;
  el.elsewhere.title = state.filter
    ? 'Changes to keys outside the filter or the loaded rows. Refresh to load the list again.'
    : 'Changes to keys beyond the loaded rows. Refresh to load the list again.';
}

/** The folder path (links up) and the folders below the prefix (links down). */
function renderFolders() {
  const sep = state.sep;
  el.folderPath.hidden = !sep;
  el.folderList.hidden = !sep || state.folders.length === 0;
  if (!sep) return;
  const key = JSON.stringify([sep, state.filter, state.folders.length, state.folders.at(-1)]);
  if (el.folderList._shown === key) return;
  el.folderList._shown = key;
  const parts = state.filter.split(sep);
  const crumbs = [h('a', { href: linkTo({ filter: '' }), dataset: { folder: '' }, text: 'All keys' })];
  let at = '';
  for (const part of parts.slice(0, -1)) {
    at += part + sep;
    crumbs.push(h('span', { 'aria-hidden': 'true', text: '›' }), h('a', { href: linkTo({ filter: at }), dataset: { folder: at }, text: part + sep }));
  }
  el.folderPath.replaceChildren(...crumbs);
  el.folderList.replaceChildren(...state.folders.map((f) => h('li', {},
    h('a', { href: linkTo({ filter: f }), dataset: { folder: f }, title: `Open the folder ${f}`, text: `📁 ${f.slice(state.filter.length)}` }))));
}

/** Loads the next page once the end of the loaded rows comes near the screen. */
function loadMoreIfNear() {
  if (!state.loaded || state.next === null || loadingMore || state.moreFailed || state.busy > 0) return;
  if (state.view !== null) return; // the list is hidden behind a key's own view
  if (el.body.getBoundingClientRect().bottom < window.innerHeight * 3) loadMore();
}

function valuesList(values, { limit = VALUES_SHOWN, key = null } = {}) {
  const list = h('ol', { class: 'values' });
  values.slice(0, limit).forEach((v) => {
    // Long values show their first lines; a click shows them whole.
    const long = v.length > 240 || v.split('\n').length > 4;
    list.append(v === ''
      ? h('li', { class: 'value value-empty', title: 'Empty string', text: '∅ empty' })
      : h('li', { class: long ? 'value clipped' : 'value', title: long ? 'Click to show it all' : null, text: v }));
  });
  if (values.length > limit) {
    const more = `+${values.length - limit} more`;
    list.append(h('li', { class: 'value value-more' }, key === null
      ? more
      : h('a', { class: 'value-more', href: linkTo({ key }), dataset: { open: key }, text: more })));
  }
  if (values.length === 0) list.append(h('li', { class: 'value value-none', text: 'no values' }));
  return list;
}

/** A mark for spaces at either end of a key, which would not show otherwise. */
function keyFlag(key) {
  const start = /^\s/.test(key);
  const end = /\s$/.test(key);
  if (!start && !end) return null;
  const text = start && end ? 'spaces at both ends' : start ? 'starts with a space' : 'ends with a space';
  return h('span', { class: 'key-flag', title: `This key ${start && end ? 'has spaces at both ends' : text}.`, text });
}

function viewRow(pair, notes, busy) {
  const when = formatTime(pair.updated_at);
  const origin = pair.origin ? String(pair.origin) : '';
  const row = h('tr', { class: 'pair-row', dataset: { key: pair.key, version: String(pair.version) } },
    h('th', { scope: 'row', class: 'key-cell' },
      h('a', { class: 'key-link', href: linkTo({ key: pair.key }), dataset: { open: pair.key }, title: 'Open this key on its own' },
        h('span', { class: 'key-text', text: pair.key })),
      keyFlag(pair.key)),
    h('td', { class: 'values-cell' }, valuesList(pair.values, { key: pair.key }), notes?.length ? mergeNotes(pair, notes, busy) : null),
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
// The editor: one field per value, each tied to the value's id, so a save writes only what changed

let editorSeq = 0;

/** A field for one value; `id` is the value's (none for a value the person adds). */
function valueInputItem(value, index, id) {
  const cid = `ev-${++editorSeq}`;
  // A text field would drop line breaks: values with some get a text area.
  // Every value gets a text area: a pasted value keeps its line breaks (Enter adds one).
  const lines = value.split(/\r\n|\r|\n/).length;
  const control = h('textarea', { id: cid, class: 'value-input', rows: String(Math.min(8, lines)), spellcheck: 'false', autocomplete: 'off' });
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
      h('span', { class: 'editor-hint', text: 'Ctrl+Enter saves · Enter starts a new line · Esc cancels' })));
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
// The address: the filter and an open key live in the URL (?filter=, ?key=), so a view can be
// bookmarked, shared and reloaded.

function linkTo({ key = null, filter = state.filter } = {}) {
  const q = new URLSearchParams();
  if (key !== null) q.set('key', key);
  else {
    if (filter) q.set('filter', filter);
    if (state.search.text) q.set('q', state.search.text);
    if (state.search.text && state.search.glob) q.set('glob', '1');
    if (state.search.text && state.search.ignoreCase) q.set('case', 'ignore');
    if (state.sep) q.set('folders', state.sep);
  }
  const text = q.toString();
  return text ? `?${text}` : location.pathname;
}

function readUrl() {
  const q = new URLSearchParams(location.search);
  return {
    key: q.get('key'),
    filter: q.get('filter') ?? '',
    search: { text: q.get('q') ?? '', glob: q.get('glob') === '1', ignoreCase: q.get('case') === 'ignore' },
    sep: ['/', ':'].includes(q.get('folders')) ? q.get('folders') : '',
  };
}

/** Puts the search and folder settings in the form. */
function showListSettings() {
  el.filter.value = state.filter;
  el.search.value = state.search.text;
  el.searchGlob.checked = state.search.glob;
  el.searchCase.checked = state.search.ignoreCase;
  el.folderSep.value = state.sep;
}

/** Shows what the URL says: one key on its own, or the list (with its filter). */
function followUrl() {
  const { key, filter } = readUrl();
  if (key !== null && key !== '') {
    openKey(key, { push: false });
    return;
  }
  closeKey();
  const { search, sep } = readUrl();
  const same = filter === state.filter && sep === state.sep && JSON.stringify(search) === JSON.stringify(state.search);
  if (!same) {
    Object.assign(state, { search, sep });
    el.filter.value = filter;
    setFilter(filter, { push: false });
    showListSettings();
  }
}

function openKey(key, { push = true } = {}) {
  if (push) history.pushState(null, '', linkTo({ key }));
  if (state.view !== key) {
    state.viewEditors.clear();
    state.viewAdding = null;
  }
  state.view = key;
  state.viewPair = state.pairs.get(key);
  state.viewConflicts = state.tally.get(key) || [];
  api.conflicts(key).then((notes) => {
    if (state.view !== key) return;
    state.viewConflicts = notes;
    if (notes.length) state.tally.set(key, notes);
    else state.tally.delete(key);
    renderKeyView();
    scheduleRender();
  }, () => { /* the notes stay as known */ });
  el.keyView.hidden = false;
  el.addCard.hidden = true;
  el.pairsCard.hidden = true;
  document.title = `${key} · kvsync`;
  renderKeyView();
  el.keyViewKey.closest('section').querySelector('h2').focus();
  const seen = fed.get(key) ?? 0;
  api.get(key).then((pair) => {
    if (state.view !== key) return;
    // The feed's changes are in order: one that came meanwhile is as new or newer.
    const overtaken = (fed.get(key) ?? 0) !== seen && state.viewPair;
    if (!overtaken && (!pair || replaces(state.viewPair, pair, pair.version))) state.viewPair = pair;
    renderKeyView();
  }, (err) => notifyError(`Could not load “${key}”.`, err, { topic: 'load' }));
}

function closeKey() {
  if (state.view === null) return;
  state.view = null;
  state.viewEditors.clear();
  state.viewAdding = null;
  el.keyView.hidden = true;
  el.addCard.hidden = false;
  el.pairsCard.hidden = false;
  document.title = state.nodeId ? `kvsync · ${state.nodeId}` : 'kvsync';
  scheduleRender();
}

/** The value as indented JSON, if it is a JSON object or array; else null. */
function prettyJson(value) {
  const t = value.trim();
  if (!(t.startsWith('{') || t.startsWith('['))) return null;
  try {
    return JSON.stringify(JSON.parse(t), null, 2);
  } catch {
    return null;
  }
}

async function copyText(text, what) {
  try {
    await navigator.clipboard.writeText(text);
    notify(`Copied the ${what}.`, 'success', { timeout: 2000 });
  } catch {
    notify(`Could not copy the ${what}: the browser did not allow it.`, 'error');
  }
}

function renderKeyView() {
  const key = state.view;
  if (key === null) return;
  const pair = state.viewPair;
  el.keyViewKey.textContent = key;
  el.keyViewKey.parentElement.querySelector('.key-flag')?.remove();
  const flag = keyFlag(key);
  if (flag) el.keyViewKey.after(flag);
  el.keyViewMissing.hidden = pair !== null;
  const notes = state.viewConflicts;
  el.keyViewConflicts.hidden = !notes.length;
  el.keyViewConflicts.replaceChildren(...(notes.length ? [conflictList(key, notes)] : []));
  if (!pair) {
    el.keyViewAdd.replaceChildren();
    el.keyViewValues.replaceChildren();
    el.keyViewMeta.textContent = pair === undefined ? 'Loading…' : '';
    return;
  }
  const when = formatTime(pair.updated_at);
  el.keyViewMeta.textContent = `${plural(pair.values.length, 'value', 'values')} · ${groupDigits(encoder.encode(pair.values.join('')).length)} bytes · last change ${when.text}${pair.origin ? ` on ${pair.origin}` : ''}`;
  for (const id of state.viewEditors.keys()) {
    if (!pair.elements.some((e) => e.id === id)) state.viewEditors.delete(id);
  }
  el.keyViewValues.replaceChildren(...pair.values.map((v, i) => {
    const elementId = pair.elements[i]?.id;
    const editor = state.viewEditors.get(elementId);
    const pretty = prettyJson(v);
    const pre = h('pre', { class: 'key-value-text', text: v });
    const toggle = pretty === null ? null : h('button', { type: 'button', class: 'btn btn-small btn-ghost', 'aria-pressed': 'false', text: 'Pretty JSON' });
    toggle?.addEventListener('click', () => {
      const on = toggle.getAttribute('aria-pressed') !== 'true';
      toggle.setAttribute('aria-pressed', String(on));
      pre.textContent = on ? pretty : v;
    });
    const copy = h('button', { type: 'button', class: 'btn btn-small btn-secondary', 'aria-label': `Copy value ${i + 1}`, text: 'Copy' });
    copy.addEventListener('click', () => copyText(v, `value ${i + 1}`));
    const edit = editor || !elementId ? null : h('button', { type: 'button', class: 'btn btn-small', 'aria-label': `Edit value ${i + 1}`, text: 'Edit' });
    edit?.addEventListener('click', () => openValueEditor(key, elementId, v, i));
    const remove = editor || !elementId ? null : h('button', { type: 'button', class: 'btn btn-small btn-danger-ghost', 'aria-label': `Remove value ${i + 1}`, text: 'Remove' });
    remove?.addEventListener('click', () => removeViewValue(key, elementId, v, i));
    return h('li', { class: 'key-value' },
      h('div', { class: 'key-value-head' },
        h('span', { text: `Value ${i + 1} · ${groupDigits(encoder.encode(v).length)} bytes` }),
        h('span', { class: 'spacer' }), editor ? null : toggle, edit, copy, remove),
      editor || pre);
  }));
  renderViewAdd(key, pair.values.length);
}

/** "+ Add value" under a key's values, or the editor of the value being added. */
function renderViewAdd(key, count) {
  if (state.viewAdding) {
    if (!el.keyViewAdd.contains(state.viewAdding)) el.keyViewAdd.replaceChildren(state.viewAdding);
    return;
  }
  const add = h('button', { type: 'button', class: 'btn btn-small btn-ghost', text: '+ Add value' });
  add.addEventListener('click', () => {
    const close = () => {
      state.viewAdding = null;
      renderKeyView();
      el.keyViewAdd.querySelector('button')?.focus();
    };
    state.viewAdding = valueEditor('', count, {
      onCancel: close,
      async onSave(value) {
        const pair = await watchSlow(api.append(key, value),
          () => notify(`Adding to “${key}”: ${slowText()}`, 'error', { topic: `save:${key}` }));
        state.viewAdding = null;
        if (pair) {
          if (!state.viewPair || olderThan(state.viewPair.version, pair.version)) state.viewPair = pair;
          else confirm(key);
          adopt(key, pair);
        }
        renderKeyView();
        scheduleRender();
        notify(`Added a value to “${key}”.`, 'success', { topic: `save:${key}` });
      },
    });
    renderKeyView();
    state.viewAdding._area.focus();
  });
  el.keyViewAdd.replaceChildren(add);
}

/** Removes one value of the key shown on its own, if it is still as shown. */
async function removeViewValue(key, id, seen, index) {
  const ok = await confirmAction({ title: `Remove value ${index + 1}?`, text: `${quoteValue(seen)} will be removed from “${key}” on every node.`, ok: 'Remove' });
  if (!ok) return;
  try {
    const res = await watchSlow(writeOps(key, [{ id, seen, remove: true }], state.viewPair?.etag),
      () => notify(`Removing from “${key}”: ${slowText()}`, 'error', { topic: `save:${key}` }));
    const pair = res.pair ?? res.current;
    if (state.view === key && pair && (!state.viewPair || !olderThan(pair.version, state.viewPair.version))) state.viewPair = pair;
    adopt(key, pair);
    renderKeyView();
    scheduleRender();
    if (res.pair) notify(`Removed value ${index + 1} of “${key}”.`, 'success', { topic: `save:${key}` });
    else notify(`Value ${index + 1} of “${key}” was changed elsewhere meanwhile, so it was not removed.`, 'error', { topic: `save:${key}` });
  } catch (err) {
    notify(`Could not remove the value from “${key}”. ${messageOf(err)}`, 'error', { topic: `save:${key}` });
  }
}

function quoteValue(value) {
  const chars = [...value];
  return `“${chars.length > 60 ? chars.slice(0, 59).join('') + '…' : value}”`;
}

/** Opens the editor of one value in the key's own view; a save writes that value only. */
function openValueEditor(key, id, seen, index) {
  const close = () => {
    state.viewEditors.delete(id);
    renderKeyView();
  };
  const editor = valueEditor(seen, index, {
    onCancel: close,
    async onSave(value) {
      if (value === seen) return close();
      const tag = state.viewPair?.etag;
      const res = await watchSlow(writeOps(key, [{ id, seen, value }], tag),
        () => notify(`Saving “${key}”: ${slowText()}`, 'error', { topic: `save:${key}` }));
      if (!res.pair) {
        state.viewPair = res.current;
        adopt(key, res.current);
        throw new Error(res.current ? 'This value was changed elsewhere meanwhile, so yours was not saved. It shows the new one above; copy yours before you cancel.' : 'This key was deleted elsewhere.');
      }
      state.viewEditors.delete(id);
      if (!state.viewPair || olderThan(state.viewPair.version, res.pair.version)) state.viewPair = res.pair;
      else if (!samePair(state.viewPair, res.pair)) confirm(key);
      adopt(key, res.pair);
      renderKeyView();
      scheduleRender();
      notify(`Saved “${key}”.`, 'success', { topic: `save:${key}` });
    },
  });
  state.viewEditors.set(id, editor);
  renderKeyView();
  editor._area.focus();
}

// ---------------------------------------------------------------------------------------------
// Actions

function startEdit(key) {
  const pair = state.pairs.get(key);
  if (!pair) return;
  const base = new Map(pair.elements.map((e) => [e.id, e.value]));
  state.edits.set(key, { base, baseTag: pair.etag, conflict: null, saving: false });
  render();
}

function stopEdit(key, { focus = true } = {}) {
  state.edits.delete(key);
  syncOrder(key);
  render();
  if (focus) state.rows.get(key)?.querySelector('[data-action="edit"]')?.focus();
}

/**
 * Writes `ops` to `key` one at a time: { id, seen, value } changes a value, { id, seen, remove }
 * removes one, { value } appends. Each is conditional on the state last seen (its ETag `tag`); when
 * the pair changed meanwhile (412), the write is made again on the new state as long as every value
 * still to be written is as it was seen, so changes elsewhere to other values (and appends)
 * stay. Resolves to { pair } once all are written, or to { current } (null: deleted) when
 * one of those values was changed or removed elsewhere; `onWritten(op, pair)` sees each write.
 */
async function writeOps(key, ops, tag, onWritten = () => {}) {
  let pair = null;
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i];
    let res;
    for (let attempt = 0; ; attempt++) {
      if (op.id === undefined) res = { ok: true, pair: await api.append(key, op.value) };
      else if (op.remove) res = await api.removeValue(key, op.id, tag);
      else res = await api.editValue(key, op.id, op.value, tag);
      if (res.ok) break;
      const current = res.gone ? await api.get(key) : res.current;
      const asSeen = (o) => o.id === undefined || current?.elements.some((e) => e.id === o.id && e.value === o.seen);
      if (res.gone || !current || attempt >= 5 || !ops.slice(i).every(asSeen)) return { current: current ?? null };
      tag = current.etag;
    }
    pair = res.pair;
    tag = pair.etag;
    onWritten(op, pair);
  }
  return { pair };
}

/** After one write of a save: the editor's base follows, so saving again does not repeat it. */
function settleOp(edit, op, pair) {
  edit.baseTag = pair.etag;
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
  const topic = `save:${key}`;
  // Past the deadline the save goes on (it is never sent twice): Cancel leaves the editor.
  const onSlow = () => {
    notify(`Saving “${key}”: ${slowText()}`, 'error', { topic });
    const cancel = state.rows.get(key)?.querySelector('[data-action="cancel"]');
    if (cancel) cancel.disabled = false;
  };
  try {
    let res;
    if (overwrite) {
      // The one whole-list write: still conditional, on the version just shown, so a third change is not lost.
      const tag = edit.conflict ? (edit.conflict.current ? edit.conflict.current.etag : null) : edit.baseTag;
      const put = await watchSlow(api.put(key, draftValues(row, edit), tag), onSlow);
      res = put.ok ? { pair: put.pair } : { current: put.current ?? null };
    } else {
      res = await watchSlow(writeOps(key, ops, edit.baseTag, (op, pair) => settleOp(edit, op, pair)), onSlow);
    }
    if (res.pair) {
      const editing = state.edits.get(key) === edit;
      if (editing) state.edits.delete(key);
      syncOrder(key);
      adopt(key, res.pair);
      render();
      if (editing) state.rows.get(key)?.querySelector('[data-action="edit"]')?.focus();
      notify(`Saved “${key}”.`, 'success', { topic });
      return;
    }
    // A value this save touches was changed or removed elsewhere: keep the draft and show what is there now.
    adopt(key, res.current);
    resolved(topic);
    edit.conflict = { current: res.current, why: 'save' };
  } catch (err) {
    notify(`Could not save “${key}”. ${messageOf(err)}`, 'error', { topic });
  } finally {
    const still = state.edits.get(key);
    if (still === edit) {
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
    const res = await watchSlow(writeOps(key, ops, pair.etag),
      () => notify(`Restoring in “${key}”: ${slowText()}`, 'error', { topic: `restore:${key}` }));
    if (!res.pair) {
      adopt(key, res.current);
      notify(`“${key}” was changed elsewhere meanwhile, so nothing was restored. Its newest values are shown now.`, 'error', { topic: `restore:${key}` });
      return;
    }
    adopt(key, res.pair);
    notify(`Restored ${plural(c.lost.length, 'value', 'values')} of “${key}”.`, 'success', { topic: `restore:${key}` });
    if (notes.length === 1) await dismiss(key);
  } catch (err) {
    notify(`Could not restore the lost ${c.lost.length === 1 ? 'value' : 'values'} of “${key}”. ${messageOf(err)}`, 'error', { topic: `restore:${key}` });
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
    state.tally.delete(key);
    if (key === state.view) {
      state.viewConflicts = [];
      renderKeyView();
    }
    resolved(`dismiss:${key}`);
    render();
  } catch (err) {
    notify(`Could not dismiss the notice about “${key}”. ${messageOf(err)}`, 'error', { topic: `dismiss:${key}` });
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
    text: pair.values.length
      ? `“${key}” and its ${plural(pair.values.length, 'value', 'values')} will be deleted on every node.`
      : `“${key}” (which has no values) will be deleted on every node.`,
    ok: 'Delete',
  });
  if (!ok) {
    state.rows.get(key)?.querySelector('[data-action="delete"]')?.focus();
    return;
  }
  const neighbour = state.rows.get(key)?.nextElementSibling || state.rows.get(key)?.previousElementSibling;
  try {
    const res = await watchSlow(api.remove(key, pair.etag),
      () => notify(`Deleting “${key}”: ${slowText()}`, 'error', { topic: `delete:${key}` }));
    if (!res.ok) {
      adopt(key, res.current);
      render();
      notify(`“${key}” was changed elsewhere after you loaded it, so it was not deleted. Its newest values are shown now.`, 'error', { topic: `delete:${key}` });
      return;
    }
    if (dropPair(key)) {
      state.fade.add(key);
      if (state.total !== null) state.total = Math.max(0, state.total - 1);
    }
    state.conflicts.delete(key);
    render();
    notify(res.existed ? `Deleted “${key}”.` : `“${key}” was already deleted elsewhere.`, 'success', { topic: `delete:${key}` });
    const next = neighbour?.isConnected && !neighbour.classList.contains('removing') ? neighbour.querySelector('[data-action="edit"]') : null;
    (next || document.getElementById('pairs-heading')).focus();
  } catch (err) {
    notify(`Could not delete “${key}”. ${messageOf(err)}`, 'error', { topic: `delete:${key}` });
  }
}

/** Asks to type "clear", saying how many pairs a clear deletes (as counted just now). */
async function confirmClear() {
  let total = null;
  try {
    total = (await api.list({ limit: 1, count: true })).total ?? null;
  } catch (err) {
    notifyError('Could not count the pairs.', err, { topic: 'clear' });
    return false;
  }
  el.clearText.textContent = typeof total === 'number'
    ? `All ${plural(total, 'pair', 'pairs')} will be deleted on every node. This cannot be undone.`
    : 'Every pair will be deleted on every node. This cannot be undone.';
  el.clearInput.value = '';
  el.clearOk.disabled = true;
  el.clearDialog.returnValue = '';
  return new Promise((resolve) => {
    el.clearDialog.addEventListener('close', () => resolve(el.clearDialog.returnValue === 'ok' && el.clearInput.value.trim().toLowerCase() === 'clear'), { once: true });
    el.clearDialog.showModal();
    el.clearInput.focus();
  });
}

el.clearInput.addEventListener('input', () => {
  el.clearOk.disabled = el.clearInput.value.trim().toLowerCase() !== 'clear';
});
el.clearInput.addEventListener('keydown', (ev) => {
  if (ev.key !== 'Enter') return;
  ev.preventDefault(); // the form's first button is Cancel
  if (!el.clearOk.disabled) el.clearDialog.close('ok');
});

async function clearAll() {
  const ok = await confirmClear();
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
    notify(n === null ? 'The database was cleared.' : `The database was cleared (${plural(n, 'pair', 'pairs')} deleted).`, 'success', { topic: 'clear' });
    await reload();
  } catch (err) {
    progress?.remove();
    notify(`Could not clear the database. ${messageOf(err)}`, 'error', { topic: 'clear' });
  } finally {
    el.clear.disabled = el.live.dataset.state === 'reconnecting' || el.live.dataset.state === 'locked';
  }
}

// Adds past their deadline, still waiting for the node's answer: never sent a second time.
const waitingAdds = new Set();

function showAddError(text, pending = '') {
  el.addError.textContent = text;
  el.addError.dataset.pending = pending;
  el.addError.hidden = false;
}

const offline = () => el.live.dataset.state === 'reconnecting' || el.live.dataset.state === 'locked';

async function addValue(ev) {
  ev.preventDefault();
  const key = el.addKey.value;
  const value = el.addValue.value;
  const problem = keyProblem(key) || (value === '' ? 'Enter a value to add.' : '');
  if (problem) {
    showAddError(problem);
    (keyProblem(key) ? el.addKey : el.addValue).focus();
    return;
  }
  const pending = JSON.stringify([key, value]);
  if (waitingAdds.has(pending)) {
    showAddError(`This value is still on its way to “${key}”: the node has not answered yet. It is not sent twice.`, pending);
    return;
  }
  el.addError.hidden = true;
  el.addSubmit.disabled = true;
  let slow = false;
  const onSlow = () => {
    slow = true;
    waitingAdds.add(pending);
    showAddError(`Adding to “${key}”: ${slowText()}`, pending);
    el.addSubmit.disabled = offline();
  };
  try {
    const pair = await watchSlow(api.append(key, value), onSlow);
    // Show the pair even if it sorts beyond the loaded pages: the person just touched it.
    const shown = state.pairs.has(key) || (state.loaded && key.startsWith(state.filter));
    if (pair && shown) {
      adopt(key, pair, { show: true });
      render();
      if (!slow) revealRow(key);
    }
    notify(shown || !pair
      ? `Added a value to “${key}”.`
      : `Added a value to “${key}” (not shown: it does not match the filter).`, 'success', { topic: 'add' });
    if (el.addError.dataset.pending === pending) el.addError.hidden = true;
    // A late answer leaves alone what was typed since.
    if (!slow || (el.addKey.value === key && el.addValue.value === value)) {
      el.addValue.value = '';
      fitAddValue();
      if (!slow) el.addValue.focus({ preventScroll: true }); // the new row stays in sight
    }
  } catch (err) {
    showAddError(`Could not add the value${slow ? ` to “${key}”` : ''}. ${messageOf(err)}`);
  } finally {
    waitingAdds.delete(pending);
    if (!slow) el.addSubmit.disabled = offline();
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

el.addForm.addEventListener('submit', addValue);
el.addValue.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault(); // Enter alone makes a new line
    el.addForm.requestSubmit();
  }
});
// The field grows with its lines (up to a point; then it scrolls).
const fitAddValue = () => {
  el.addValue.style.height = 'auto';
  el.addValue.style.height = `${Math.min(el.addValue.scrollHeight + 2, 240)}px`;
};
el.addValue.addEventListener('input', fitAddValue);
for (const input of [el.addKey, el.addValue]) {
  input.addEventListener('input', () => { el.addError.hidden = true; });
}

el.tokenBtn.addEventListener('click', () => {
  const open = el.tokenItems.hidden;
  el.tokenItems.hidden = !open;
  el.tokenBtn.setAttribute('aria-expanded', String(open));
  if (open) el.tokenChange.focus();
});
const closeTokenMenu = () => {
  el.tokenItems.hidden = true;
  el.tokenBtn.setAttribute('aria-expanded', 'false');
};
document.addEventListener('click', (ev) => {
  if (!el.tokenMenu.contains(ev.target)) closeTokenMenu();
});
el.tokenChange.addEventListener('click', () => {
  closeTokenMenu();
  tokenDeclined = false;
  askToken(false).then(() => reload(), () => {});
});
el.tokenForget.addEventListener('click', () => {
  closeTokenMenu();
  setToken('');
  setLocked(false);
  notify('The access token was forgotten in every tab opened from now on.', 'info');
  live.restart(); // the stream still runs on the old token
});
el.loadMore.addEventListener('click', () => {
  state.moreFailed = false;
  loadMore();
});
el.elsewhere.addEventListener('click', () => reload({ flashChanges: true }));
// Scrolling brings other rows into the window, and nears the end of the loaded ones.
const onScroll = () => {
  if (state.order.length > RENDER_ALL || state.above.size || state.below.size) scheduleRender();
  else loadMoreIfNear();
};
el.changesAbove.addEventListener('click', () => showChanged('above'));
el.changesBelow.addEventListener('click', () => showChanged('below'));
window.addEventListener('scroll', onScroll, { passive: true });
window.addEventListener('resize', onScroll, { passive: true });
el.refresh.addEventListener('click', () => {
  setLocked(false);
  if (live.state !== 'live') live.reconnectNow();
  reload({ flashChanges: true });
});
el.clear.addEventListener('click', clearAll);
const bulk = setupBulk({ prefix: () => state.filter, done: () => reload({ flashChanges: true }) });

function setFilter(filter, { push = true } = {}) {
  state.filter = filter;
  state.folders = [];
  if (push) history.replaceState(null, '', linkTo({ filter }));
  state.pairs = new Map();
  state.order = [];
  for (const key of state.edits.keys()) syncOrder(key);
  state.next = null;
  state.loaded = false;
  state.total = null;
  window.scrollTo({ top: Math.min(window.scrollY, el.body.getBoundingClientRect().top + window.scrollY - 200) });
  reload();
}

let filterTimer = null;
el.filter.addEventListener('input', () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    if (el.filter.value !== state.filter) setFilter(el.filter.value);
  }, 200);
});
const onSearch = () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    const search = { text: el.search.value, glob: el.searchGlob.checked, ignoreCase: el.searchCase.checked };
    const sep = el.folderSep.value;
    const same = JSON.stringify(search) === JSON.stringify(state.search) && sep === state.sep;
    if (same && el.filter.value === state.filter) return;
    Object.assign(state, { search, sep });
    setFilter(el.filter.value); // the one timer may have taken over a prefix being typed
  }, 250);
};
el.search.addEventListener('input', onSearch);
el.search.addEventListener('input', () => {
  el.globHint.hidden = !looksLikeGlob({ text: el.search.value, glob: el.searchGlob.checked });
});
el.globUse.addEventListener('click', () => {
  el.searchGlob.checked = true;
  el.globHint.hidden = true;
  onSearch();
  el.search.focus();
});
for (const c of [el.searchGlob, el.searchCase, el.folderSep]) c.addEventListener('change', onSearch);
// A folder link opens the folder: it becomes the prefix (the URL follows, so Back goes up).
document.addEventListener('click', (ev) => {
  const a = ev.target.closest('a[data-folder]');
  if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  history.pushState(null, '', linkTo({ filter: a.dataset.folder }));
  el.filter.value = a.dataset.folder;
  setFilter(a.dataset.folder, { push: false });
});

// Links to a key open it in place (the URL follows); Back and Forward follow the URL.
document.addEventListener('click', (ev) => {
  const a = ev.target.closest('a[data-open]');
  if (a && !ev.ctrlKey && !ev.metaKey && !ev.shiftKey && ev.button === 0) {
    ev.preventDefault();
    openKey(a.dataset.open);
    return;
  }
  const v = ev.target.closest('#pairs-body .value.clipped');
  if (v) v.classList.toggle('expanded');
});
el.keyBack.addEventListener('click', (ev) => {
  ev.preventDefault();
  history.pushState(null, '', linkTo({}));
  closeKey();
});
el.copyKey.addEventListener('click', () => copyText(state.view ?? '', 'key'));
el.keyViewConflicts.addEventListener('click', (ev) => {
  if (ev.target.closest('[data-action="dismiss-view"]') && state.view !== null) dismiss(state.view);
});
// The header's count of conflicts opens the first key that has any.
el.conflictCount.addEventListener('click', () => {
  const [first] = [...state.tally.keys()].sort(cmpKeys);
  if (first !== undefined) openKey(first);
});
window.addEventListener('popstate', followUrl);

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
      item.querySelector('.value-input').focus();
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
  } else if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault(); // Enter alone makes a new line
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
  locked: 'Locked: needs an access token',
};

let countdown = null;

/** Shows the connection's state; while the node cannot be reached, writes are off. */
function showStatus(s, info = {}) {
  if (tokenDeclined && s !== 'live') s = 'locked';
  clearInterval(countdown);
  countdown = null;
  el.live.dataset.state = s;
  document.body.dataset.live = s;
  const offline = s === 'reconnecting' || s === 'locked';
  el.addSubmit.disabled = offline;
  el.clear.disabled = offline;
  el.live.title = s === 'live'
    ? 'Changes made on any node appear here as they happen.'
    : s === 'locked'
      ? 'This node needs an access token: use "Token" to enter it.'
      : 'The node cannot be reached: nothing can be written until it is back. The list reloads then.';
  if (s === 'reconnecting' && info.delay) {
    const at = info.at ?? Date.now() + info.delay;
    const tick = () => {
      const left = Math.ceil((at - Date.now()) / 1000);
      el.liveText.textContent = left > 0 ? `Reconnecting… (retry in ${left} s)` : LIVE_TEXT.reconnecting;
      if (left <= 0) clearInterval(countdown);
    };
    tick();
    countdown = setInterval(tick, 250);
  } else {
    el.liveText.textContent = LIVE_TEXT[s] || s;
  }
  if (s === 'live') clearTransient();
}

const cluster = new ClusterPanel({ root: $('#cluster') });

const live = new LiveConnection({
  url: eventsUrl,
  onHello(hello, reconnect) {
    if (hello && typeof hello.node === 'string') setNode(hello.node);
    cluster.refresh(); // at once, e.g. after the connection came back or a token was given
    // (Re)load after the stream is up, so no change can fall between the list and the stream.
    reloadAfterCurrent({ flashChanges: reconnect });
  },
  onChange(change) {
    fed.set(change.key, (fed.get(change.key) ?? 0) + 1);
    applyChange(change);
  },
  onConflict: applyConflict,
  onResync() {
    reload({ flashChanges: true });
  },
  onStatus: showStatus,
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
  if (getToken()) el.tokenMenu.hidden = false;
  const { filter, search, sep } = readUrl();
  Object.assign(state, { filter, search, sep });
  showListSettings();
  followUrl();
  api.node().then((n) => n && setNode(n.node_id)).catch((err) => {
    if (!(err instanceof ApiError && err.status === 0)) notifyError("Could not read the node's details.", err, { topic: 'node' });
  });
  live.start();
  cluster.start();
  // The list at once, not after the stream is up: that wait was up to half the first render.
  // The stream's hello loads it again once this one is shown (a change between this read and
  // the stream's start would otherwise be missed).
  reload();
  render();
}

start();
