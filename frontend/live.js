// Live connection to the node's Server-Sent Events stream, reconnecting with backoff and
// resuming after the last event seen (the node then sends what changed meanwhile).

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;

export class LiveConnection {
  /**
   * @param {object} o
   * @param {() => string} o.url            builds the stream URL (called on every connect)
   * @param {(hello: object, reconnect: boolean) => void} o.onHello  stream is up
   * @param {(change: object) => void} o.onChange
   * @param {(conflict: object) => void} o.onConflict  the node settled concurrent writes: one lost
   * @param {() => void} o.onResync         the node says events were missed
   * @param {(state: string, info: object) => void} o.onStatus
   * @param {() => Promise<void>|void} [o.onDrop]  called after the stream drops (e.g. to check auth)
   */
  constructor(o) {
    this.o = o;
    this.es = null;
    this.attempt = 0;
    this.timer = null;
    this.everConnected = false;
    this.state = 'idle';
    // Id of the last event that had one: where a new stream resumes.
    this.lastId = '';
  }

  start() {
    window.addEventListener('online', () => this.reconnectNow());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.state === 'reconnecting') this.reconnectNow();
    });
    this.connect();
  }

  setState(state, info = {}) {
    this.state = state;
    this.o.onStatus(state, info);
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.es) this.es.close();
    this.setState(this.everConnected ? 'reconnecting' : 'connecting', { attempt: this.attempt });

    const es = new EventSource(this.streamUrl());
    this.es = es;
    // Remember every id (a browser sends it by itself only on its own reconnects).
    const track = (ev) => {
      if (this.es === es && ev.lastEventId) this.lastId = ev.lastEventId;
    };
    for (const name of ['hello', 'change', 'resync']) es.addEventListener(name, track);

    es.addEventListener('hello', (ev) => {
      if (this.es !== es) return;
      const reconnect = this.everConnected;
      this.everConnected = true;
      this.attempt = 0;
      this.setState('live');
      this.o.onHello(parse(ev.data) || {}, reconnect);
    });
    es.addEventListener('change', (ev) => {
      if (this.es !== es) return;
      const change = parse(ev.data);
      if (change && typeof change.key === 'string') this.o.onChange(change);
    });
    es.addEventListener('conflict', (ev) => {
      if (this.es !== es) return;
      const conflict = parse(ev.data);
      if (conflict && typeof conflict.key === 'string') this.o.onConflict(conflict);
    });
    es.addEventListener('resync', () => {
      if (this.es !== es) return;
      this.o.onResync();
    });
    es.onerror = () => {
      if (this.es !== es) return;
      // Take reconnection into our own hands so we can back off and reload the list afterwards.
      es.close();
      this.es = null;
      this.scheduleReconnect();
      if (this.o.onDrop) Promise.resolve(this.o.onDrop()).catch(() => {});
    };
  }

  /** The stream URL, resuming after the last event seen, if any. */
  streamUrl() {
    const url = this.o.url();
    if (!this.lastId) return url;
    const sep = url.includes('?') ? '&' : '?';
    return `${url}${sep}last_event_id=${encodeURIComponent(this.lastId)}`;
  }

  scheduleReconnect() {
    const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this.setState('reconnecting', { delay, attempt: this.attempt });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnects at once (e.g. after a new token was entered or the network came back). */
  reconnectNow() {
    if (this.state === 'live' && this.es) return;
    this.attempt = 0;
    this.connect();
  }

  /** Drops the current stream and opens a new one (e.g. with a new token). */
  restart() {
    this.attempt = 0;
    this.connect();
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
