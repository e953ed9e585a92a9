// The event stream shared by every tab of this node in the browser (a SharedWorker). A
// browser keeps at most six connections per host over HTTP/1.1: with one stream per tab,
// the seventh tab never loaded. Here each stream URL has one stream, and every tab that
// follows it gets its events.
import { EventStream } from './stream.js';

/** Tabs are dropped when they have not pinged for this long (closed without a goodbye). */
const TAB_SILENCE_MS = 150_000;

const streams = new Map(); // url -> { stream, tabs: Set<Tab>, hello }

function post(tab, msg) {
  try {
    tab.port.postMessage(msg);
  } catch {
    /* the tab is gone */
  }
}

function follow(tab, url) {
  leave(tab);
  let s = streams.get(url);
  if (!s) {
    s = { tabs: new Set(), hello: null };
    s.stream = new EventStream({
      url,
      onEvent(name, data, id) {
        if (name === 'hello') s.hello = data;
        for (const t of s.tabs) {
          if (name === 'hello') {
            post(t, { type: 'hello', data, reconnect: t.greeted });
            t.greeted = true;
          } else if (t.greeted) {
            post(t, { type: 'event', name, data, id });
          }
        }
      },
      onStatus(state, info) {
        if (state !== 'live') s.hello = null;
        for (const t of s.tabs) post(t, { type: 'status', state, info });
      },
      onDrop() {
        for (const t of s.tabs) post(t, { type: 'drop' });
      },
    });
    streams.set(url, s);
    s.stream.connect();
  }
  tab.url = url;
  tab.greeted = false;
  s.tabs.add(tab);
  post(tab, { type: 'status', state: s.stream.state, info: s.stream.info });
  // The stream is up already: the tab starts from now (its list loads after this hello).
  if (s.stream.state === 'live' && s.hello !== null) {
    post(tab, { type: 'hello', data: s.hello, reconnect: false });
    tab.greeted = true;
  }
}

function leave(tab) {
  const s = tab.url && streams.get(tab.url);
  tab.url = null;
  if (!s) return;
  s.tabs.delete(tab);
  if (s.tabs.size === 0) {
    s.stream.stop();
    streams.delete(s.stream.o.url);
  }
}

const tabs = new Set();

self.onconnect = (ev) => {
  const port = ev.ports[0];
  const tab = { port, url: null, greeted: false, seen: Date.now() };
  tabs.add(tab);
  port.onmessage = (m) => {
    const msg = m.data || {};
    tab.seen = Date.now();
    if (msg.type === 'follow') follow(tab, msg.url);
    else if (msg.type === 'leave') leave(tab);
    else if (msg.type === 'reconnect') streams.get(tab.url)?.stream.reconnectNow();
    else if (msg.type === 'bye') {
      leave(tab);
      tabs.delete(tab);
      port.close();
    }
  };
  port.start();
};

setInterval(() => {
  const now = Date.now();
  for (const tab of tabs) {
    if (now - tab.seen > TAB_SILENCE_MS) {
      leave(tab);
      tabs.delete(tab);
    }
  }
}, 30_000);
