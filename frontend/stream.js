// One Server-Sent Events stream from the node, kept up: reconnects with backoff, resumes
// after the last event seen (the node then sends what changed meanwhile), and trusts the
// stream only while the node's heartbeats arrive. A node that stops answering (a stopped
// process, a frozen machine) keeps its connections open and the browser sees no error:
// without heartbeats the page would say "Live" forever. Runs in a page or in a worker.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;
/** The node sends a heartbeat every 3 s: this much silence means it stopped answering. */
export const SILENCE_MS = 9_000;
/** A connection that brings no hello within this is given up and tried again. */
const CONNECT_MS = 10_000;
const NAMES = ['hello', 'change', 'conflict', 'resync', 'heartbeat'];

export class EventStream {
  /**
   * @param {object} o
   * @param {string} o.url                 the stream's URL (absolute in a worker)
   * @param {(name: string, data: string, id: string) => void} o.onEvent  every named event
   * @param {(state: string, info: object) => void} o.onStatus  connecting | live | reconnecting
   * @param {() => void} [o.onDrop]         the stream failed or fell silent
   */
  constructor(o) {
    this.o = o;
    this.es = null;
    this.attempt = 0;
    this.timer = null;
    this.watch = null;
    this.heard = 0;
    this.opened = 0;
    this.everConnected = false;
    this.state = 'idle';
    this.info = {};
    this.lastId = '';
    this.stopped = false;
  }

  setState(state, info = {}) {
    this.state = state;
    this.info = info;
    this.o.onStatus(state, info);
  }

  connect() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.es) this.es.close();
    this.setState(this.everConnected ? 'reconnecting' : 'connecting', { attempt: this.attempt });
    const es = new EventSource(this.streamUrl());
    this.es = es;
    this.opened = Date.now();
    this.heard = 0;
    for (const name of NAMES) {
      es.addEventListener(name, (ev) => {
        if (this.es !== es) return;
        this.heard = Date.now();
        if (ev.lastEventId) this.lastId = ev.lastEventId;
        if (name === 'hello') {
          this.everConnected = true;
          this.attempt = 0;
          this.setState('live');
        }
        this.o.onEvent(name, ev.data, ev.lastEventId || '');
      });
    }
    // Take reconnection into our own hands to back off and resume where we were.
    es.onerror = () => {
      if (this.es === es) this.drop();
    };
    if (!this.watch) this.watch = setInterval(() => this.check(), 1000);
  }

  /** Gives up a stream that went silent, or one that never got going. */
  check() {
    if (!this.es) return;
    const now = Date.now();
    const silent = this.heard ? now - this.heard > SILENCE_MS : now - this.opened > CONNECT_MS;
    if (silent) this.drop();
  }

  drop() {
    if (this.es) this.es.close();
    this.es = null;
    this.scheduleReconnect();
    if (this.o.onDrop) this.o.onDrop();
  }

  /** The stream URL, resuming after the last event seen, if any. */
  streamUrl() {
    const url = this.o.url;
    if (!this.lastId) return url;
    const sep = url.includes('?') ? '&' : '?';
    return `${url}${sep}last_event_id=${encodeURIComponent(this.lastId)}`;
  }

  scheduleReconnect() {
    const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this.setState('reconnecting', { delay, attempt: this.attempt, at: Date.now() + delay });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnects at once unless live (e.g. the network came back). */
  reconnectNow() {
    if (this.state === 'live' && this.es) return;
    this.attempt = 0;
    this.connect();
  }

  /** Closes the stream for good. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.watch);
    this.watch = null;
    if (this.es) this.es.close();
    this.es = null;
    this.state = 'idle';
  }
}
