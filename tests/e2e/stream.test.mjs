// Unit tests of frontend/stream.js, the page's (or shared worker's) event stream, with a
// stand-in EventSource and mocked timers: "Live" holds only while the node is heard from.

import { mock, test } from 'node:test';
import assert from 'node:assert/strict';

class FakeEventSource {
  static all = [];
  constructor(url) {
    this.url = url;
    this.listeners = {};
    this.closed = false;
    FakeEventSource.all.push(this);
  }
  addEventListener(name, fn) {
    (this.listeners[name] ||= []).push(fn);
  }
  close() {
    this.closed = true;
  }
  emit(name, data = '{}', lastEventId = '') {
    for (const fn of this.listeners[name] || []) fn({ data, lastEventId });
  }
}

test('live only while the node is heard from; silence drops the stream, which resumes where it was', async () => {
  globalThis.EventSource = FakeEventSource;
  mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'] });
  try {
    const { EventStream, SILENCE_MS } = await import('../../frontend/stream.js');
    const states = [];
    const events = [];
    let drops = 0;
    const stream = new EventStream({
      url: 'http://node/api/events',
      onEvent: (name, data, id) => events.push([name, id]),
      onStatus: (state) => states.push(state),
      onDrop: () => { drops += 1; },
    });
    stream.connect();
    const first = FakeEventSource.all.at(-1);
    first.emit('hello', '{"node":"n1"}', 'n1.e.5');
    assert.equal(stream.state, 'live');
    // Heartbeats keep it live, however long.
    for (let i = 0; i < 5; i++) {
      mock.timers.tick(3000);
      first.emit('heartbeat');
    }
    assert.equal(stream.state, 'live');
    assert.equal(drops, 0);
    // Then silence: dropped within a second of the limit, and "reconnecting".
    mock.timers.tick(SILENCE_MS + 1000);
    assert.equal(drops, 1);
    assert.equal(stream.state, 'reconnecting');
    assert.ok(first.closed, 'the silent stream is closed');
    // The next stream resumes after the last event that had an id.
    mock.timers.tick(1000);
    const second = FakeEventSource.all.at(-1);
    assert.notEqual(second, first);
    assert.equal(second.url, 'http://node/api/events?last_event_id=n1.e.5');
    // One that never says hello is given up too, and tried again.
    mock.timers.tick(11_000);
    assert.ok(second.closed);
    assert.equal(drops, 2);
    mock.timers.tick(2000);
    const third = FakeEventSource.all.at(-1);
    third.emit('hello', '{"node":"n1"}', 'n1.e.9');
    assert.equal(stream.state, 'live');
    assert.deepEqual(events.filter(([n]) => n === 'hello').map(([, id]) => id), ['n1.e.5', 'n1.e.9']);
    stream.stop();
  } finally {
    mock.timers.reset();
    delete globalThis.EventSource;
  }
});
