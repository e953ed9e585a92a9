// Thin client for the node's REST API. All URLs are relative so the page works from any origin.

const TOKEN_KEY = 'kvsync.token';
const MAX_TOKEN_TRIES = 3;

/** An API failure with a message meant for people, not programs. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = '', detail = '', body = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.body = body;
  }
}

// The token is kept for the tab (sessionStorage) and, unless asked not to, for the browser
// session: a session cookie (no expiry, gone when the browser closes) that other tabs of
// this node read. The node never reads the cookie; the page sends the token itself.
const TOKEN_COOKIE = 'kvsync_token';

function cookieToken() {
  const m = document.cookie.split('; ').find((c) => c.startsWith(`${TOKEN_COOKIE}=`));
  return m ? decodeURIComponent(m.slice(TOKEN_COOKIE.length + 1)) : '';
}

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || cookieToken();
  } catch {
    return cookieToken();
  }
}

// Read from storage once, then kept here: each read of the storage or the cookie is a
// synchronous call into the browser, and every request needs the token. Another tab may
// store a new one meanwhile; a 401 reads the storage again before asking (`request`).
let currentToken = null;

export function getToken() {
  if (currentToken === null) currentToken = storedToken();
  return currentToken;
}

/** Keeps `token` (empty: forgets it everywhere); `tabOnly` keeps it out of other tabs. */
export function setToken(token, { tabOnly = false } = {}) {
  currentToken = token || '';
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage unavailable: the token lives only as long as this call chain */
  }
  document.cookie = token && !tabOnly
    ? `${TOKEN_COOKIE}=${encodeURIComponent(token)}; SameSite=Strict`
    : `${TOKEN_COOKIE}=; Max-Age=0; SameSite=Strict`;
}

// Called when the node answers 401; must resolve once a new token is stored (or reject).
let askForToken = async () => {
  throw new ApiError('This node needs an access token.', { status: 401, code: 'unauthorized' });
};
let pendingTokenPrompt = null;

export function onTokenNeeded(fn) {
  askForToken = fn;
}

function tokenPromptOnce(rejected) {
  // Several requests may hit 401 at the same time; ask the person only once.
  if (!pendingTokenPrompt) {
    pendingTokenPrompt = Promise.resolve(askForToken(rejected)).finally(() => {
      pendingTokenPrompt = null;
    });
  }
  return pendingTokenPrompt;
}

export function keyPath(key) {
  return 'api/pairs/' + encodeURIComponent(key);
}

function valuePath(key, id) {
  return `${keyPath(key)}/values/${encodeURIComponent(id)}`;
}

/** Turns an error response into a sentence a person can act on. */
function describe(status, body, fallbackText) {
  const detail = body && typeof body.detail === 'string' ? body.detail : '';
  const code = body && typeof body.error === 'string' ? body.error : '';
  const extra = detail || code || fallbackText || '';
  switch (true) {
    case status === 400 || status === 422:
      return `The node did not accept this request${extra ? ': ' + extra : '.'}`;
    case status === 401:
      return 'This node needs a valid access token.';
    case status === 403:
      return 'This node does not allow that action.';
    case status === 404:
      return 'That key does not exist (it may have been deleted elsewhere).';
    case status === 412:
      return 'This pair was changed elsewhere.';
    case status === 413:
      return `That is too large for the node${detail ? ': ' + detail : '.'}`;
    case status === 429:
      return 'The node is busy right now. Please try again in a moment.';
    case status >= 500:
      return `The node ran into a problem${extra ? ': ' + extra : '.'} Please try again.`;
    default:
      return `The request failed (HTTP ${status})${extra ? ': ' + extra : '.'}`;
  }
}

/** The body as text; `onText`, if given, sees the text so far as each piece arrives. */
async function readText(res, onText) {
  if (!onText || !res.body || !res.body.getReader) return res.text();
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
    onText(text);
  }
  return text + decoder.decode();
}

/** Whether the person is being asked for a token right now. */
export function tokenPromptPending() {
  return pendingTokenPrompt !== null;
}

/**
 * The answer to a request index.html made before this module loaded, if it is this one: a
 * GET of the same path, sent without a token as that one was. Taken once.
 */
function earlyAnswer(method, path, token) {
  const early = globalThis.kvsyncEarly;
  if (!early || method !== 'GET' || token || early.path !== path) return null;
  globalThis.kvsyncEarly = null;
  return early.response;
}

/**
 * Performs a request. Resolves to { status, data, etag } for 2xx responses and for statuses
 * listed in `accept`; throws ApiError otherwise. `onText` follows a body that streams.
 * `prompt: false` fails on a 401 instead of asking for a token (for background calls);
 * `timeoutMs` gives up on an answer that takes longer (a node that hangs answers nothing).
 */
export async function request(method, path, { body, raw, headers = {}, accept = [], attempt = 0, onText, prompt = true, timeoutMs = 0 } = {}) {
  const h = { Accept: 'application/json', ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (raw !== undefined) h['Content-Type'] = raw.type;
  const token = getToken();
  if (token) h.Authorization = `Bearer ${token}`;

  const abort = timeoutMs > 0 ? new AbortController() : null;
  const timer = abort ? setTimeout(() => abort.abort(), timeoutMs) : null;
  const timedOut = () => new ApiError(`The node did not answer within ${Math.round(timeoutMs / 100) / 10} s.`, { status: 0, code: 'timeout' });

  let res;
  let data = null;
  let text = '';
  try {
    try {
      res = await (earlyAnswer(method, path, token) ?? fetch(path, {
        method,
        headers: h,
        body: raw !== undefined ? raw.text : body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        signal: abort ? abort.signal : undefined,
      }));
    } catch {
      if (abort && abort.signal.aborted) throw timedOut();
      throw new ApiError("Can't reach the node. Check that it is running and your network is up.", { status: 0 });
    }

    if (res.status !== 204) {
      text = await readText(res, onText).catch(() => '');
      if (abort && abort.signal.aborted) throw timedOut();
      if (text) {
        try {
          data = JSON.parse(text);
        } catch {
          data = null;
        }
      }
    }
  } finally {
    clearTimeout(timer);
  }

  if (res.status === 401 && prompt && attempt < MAX_TOKEN_TRIES) {
    // If another request (or another tab) already got a new token meanwhile, just try
    // again with it.
    if (getToken() === token) {
      const stored = storedToken();
      if (stored && stored !== token) currentToken = stored;
      else await tokenPromptOnce(Boolean(token));
    }
    return request(method, path, { body, raw, headers, accept, attempt: attempt + 1, onText, prompt, timeoutMs });
  }

  if (res.ok || accept.includes(res.status)) {
    return { status: res.status, data, text, etag: res.headers.get('ETag') };
  }
  throw new ApiError(describe(res.status, data, text.slice(0, 200)), {
    status: res.status,
    code: data && data.error,
    detail: data && data.detail,
    body: data,
  });
}

function plural(n) {
  return `${n} ${n === 1 ? 'pair' : 'pairs'}`;
}

/** A conditional write; see `api.put`. */
async function conditional(method, path, body, tag) {
  const headers = {};
  if (tag === null) headers['If-None-Match'] = '*';
  else if (tag !== undefined) headers['If-Match'] = `"${tag}"`;
  const r = await request(method, path, { body, headers, accept: [404, 412] });
  if (r.status === 412) return { ok: false, current: r.data ? r.data.current ?? null : null };
  if (r.status === 404) return { ok: false, gone: true };
  return { ok: true, pair: r.data };
}

export const api = {
  node: () => request('GET', 'api/node').then((r) => r.data),

  /** The members as this node sees them (GET /api/cluster); never asks for a token. */
  cluster: ({ timeoutMs = 0 } = {}) => request('GET', 'api/cluster', { prompt: false, timeoutMs }).then((r) => r.data),

  /** A page of pairs; with `count`, the answer's `total` is how many the prefix matches. */
  list({ prefix = '', limit = 100, after = null, count = false, contains, glob, ignoreCase, delimiter } = {}) {
    const q = new URLSearchParams();
    if (prefix) q.set('prefix', prefix);
    if (contains) q.set('contains', contains);
    if (glob) q.set('glob', glob);
    if (ignoreCase) q.set('ignore_case', 'true');
    if (delimiter) q.set('delimiter', delimiter);
    q.set('limit', String(limit));
    if (after !== null && after !== undefined) q.set('after', after);
    if (count) q.set('count', 'true');
    return request('GET', `api/pairs?${q}`).then((r) => r.data);
  },

  get: (key) => request('GET', keyPath(key), { accept: [404] }).then((r) => (r.status === 404 ? null : r.data)),

  append: (key, value) => request('POST', keyPath(key) + '/values', { body: { value } }).then((r) => r.data),

  /**
   * Replaces the whole list. `tag` is the ETag of the state the edit was based on (If-Match);
   * `null` means "only if it does not exist" (If-None-Match: *); `undefined` means unconditional.
   * Resolves to { ok: true, pair } or { ok: false, current } on a 412 conflict.
   */
  put: (key, values, tag) => conditional('PUT', keyPath(key), { values }, tag),

  /**
   * Changes one value in place, if the pair is still in state `tag`. Resolves like `put`, or to
   * { ok: false, gone: true } when the value is no longer there.
   */
  editValue: (key, id, value, tag) => conditional('PUT', valuePath(key, id), { value }, tag),

  /** Removes one value (the pair stays), if the pair is still in state `tag`; resolves like `editValue`. */
  removeValue: (key, id, tag) => conditional('DELETE', valuePath(key, id), undefined, tag),

  /** The conflicts this node recorded for the key, oldest first. */
  conflicts: (key) => request('GET', keyPath(key) + '/conflicts', { prompt: false }).then((r) => r.data?.conflicts || []),

  /** Every pair under `prefix` as exported JSON lines (GET /api/export), as text. */
  exportText: (prefix = '') => request('GET', `api/export${prefix ? `?prefix=${encodeURIComponent(prefix)}` : ''}`, { headers: { Accept: 'application/x-ndjson' } }).then((r) => r.text),

  /** Merges up to 1,000 exported lines (POST /api/import): { lines, changed, unchanged }. */
  importLines: (text) => request('POST', 'api/import', { raw: { text, type: 'application/x-ndjson' } }).then((r) => r.data),

  /** Forgets the conflicts this node recorded for the key. */
  dismissConflicts: (key) => request('DELETE', keyPath(key) + '/conflicts').then(() => undefined),

  /** Deletes the pair; with `tag` (its ETag), only if it is still in that state. */
  async remove(key, tag) {
    const headers = {};
    if (tag !== undefined && tag !== null) headers['If-Match'] = `"${tag}"`;
    const r = await request('DELETE', keyPath(key), { headers, accept: [404, 412] });
    if (r.status === 412) return { ok: false, current: r.data ? r.data.current ?? null : null };
    return { ok: true, existed: r.status !== 404 };
  },

  /**
   * Deletes every pair. The node answers while it works, one JSON document
   * `{"progress":[500,1000,...],"deleted":n}`; `onProgress(n)` sees each running total. A
   * failure part-way arrives in that document as `error` and `detail`.
   */
  async clear(onProgress = () => {}) {
    const onText = (text) => {
      const m = /"progress":\[([\d,]*)/.exec(text);
      const totals = m ? m[1].split(',').filter(Boolean) : [];
      if (totals.length) onProgress(Number(totals[totals.length - 1]));
    };
    const r = await request('DELETE', 'api/pairs', { onText });
    const data = r.data || {};
    if (data.error) {
      throw new ApiError(`It stopped after ${plural(data.deleted ?? 0)} deleted: ${data.detail || data.error}`, {
        status: r.status,
        code: data.error,
        detail: data.detail,
        body: data,
      });
    }
    return data;
  },
};

/** URL of the event stream; EventSource cannot send headers, so the token goes in the query. */
export function eventsUrl() {
  const token = getToken();
  return token ? `api/events?access_token=${encodeURIComponent(token)}` : 'api/events';
}
