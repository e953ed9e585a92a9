// The page's live connection to the node's event stream. One stream per browser and
// node is shared by all its tabs through a SharedWorker (live-worker.js); where there is
// none, the page holds its own. A page put away in the back/forward cache lets go of the
// stream, and follows it again when it is shown.
import { EventStream } from './stream.js';

const PING_MS = 15_000; // tells the worker this tab is still there

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
    this.state = 'idle';
    this.port = null; // the shared worker's, or null when the page holds its own stream
    this.own = null; // the page's own EventStream
    this.greeted = false; // a hello came since start: the next one is a reconnect
    this.away = false; // in the back/forward cache
  }

  start() {
    window.addEventListener('online', () => this.reconnectNow());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.state === 'reconnecting') this.reconnectNow();
    });
    window.addEventListener('pagehide', () => {
      this.away = true;
      this.close();
    });
    window.addEventListener('pageshow', (ev) => {
      if (!ev.persisted || !this.away) return;
      this.away = false;
      this.open();
    });
    this.port = sharedPort(() => {
      // The worker failed (e.g. no module workers here): the page holds its own stream.
      this.port = null;
      if (!this.away) this.open();
    });
    if (this.port) {
      this.port.onmessage = (m) => this.fromWorker(m.data || {});
      const port = this.port;
      setInterval(() => port.postMessage({ type: 'ping' }), PING_MS);
    }
    this.open();
  }

  /** Follows the stream (again), through the worker or on the page's own. */
  open() {
    const url = new URL(this.o.url(), location.href).href;
    if (this.port) {
      this.port.postMessage({ type: 'follow', url });
      return;
    }
    this.own?.stop();
    this.own = new EventStream({
      url,
      onEvent: (name, data) => (name === 'hello' ? this.hello(data, this.greeted) : this.event(name, data)),
      onStatus: (state, info) => this.status(state, info),
      onDrop: () => this.dropped(),
    });
    this.own.connect();
  }

  close() {
    if (this.port) this.port.postMessage({ type: 'leave' });
    this.own?.stop();
    this.own = null;
  }

  fromWorker(msg) {
    if (this.away) return;
    if (msg.type === 'hello') this.hello(msg.data, msg.reconnect || this.greeted);
    else if (msg.type === 'event') this.event(msg.name, msg.data);
    else if (msg.type === 'status') this.status(msg.state, msg.info || {});
    else if (msg.type === 'drop') this.dropped();
  }

  hello(data, reconnect) {
    this.greeted = true;
    this.status('live', {});
    this.o.onHello(parse(data) || {}, reconnect);
  }

  event(name, data) {
    const item = parse(data);
    if (name === 'change' && item && typeof item.key === 'string') this.o.onChange(item);
    else if (name === 'conflict' && item && typeof item.key === 'string') this.o.onConflict(item);
    else if (name === 'resync') this.o.onResync();
  }

  status(state, info) {
    if (state === 'idle') return;
    // A tab that joins a stream that is up waits for its own hello before it is live.
    this.state = state === 'connecting' && this.greeted ? 'reconnecting' : state;
    this.o.onStatus(this.state, info);
  }

  dropped() {
    if (this.o.onDrop) Promise.resolve(this.o.onDrop()).catch(() => {});
  }

  /** Reconnects at once (e.g. after the network came back). */
  reconnectNow() {
    if (this.port) this.port.postMessage({ type: 'reconnect' });
    else this.own?.reconnectNow();
  }

  /** Drops the current stream and follows a new one (e.g. with a new token). */
  restart() {
    this.close();
    this.open();
  }
}

/** A port to the shared worker, or null where there is none. */
function sharedPort(onFail) {
  if (typeof SharedWorker !== 'function') return null;
  try {
    const worker = new SharedWorker(new URL('live-worker.js', import.meta.url), { type: 'module', name: 'kvsync-live' });
    worker.addEventListener('error', onFail, { once: true });
    worker.port.start();
    window.addEventListener('pagehide', (ev) => {
      if (!ev.persisted) worker.port.postMessage({ type: 'bye' });
    });
    return worker.port;
  } catch {
    return null;
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
