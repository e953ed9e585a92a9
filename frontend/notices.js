// Notices: short messages at the foot of the screen (never over the header and its
// connection status). An error notice names what it is about (`topic`): it goes once that
// works again, e.g. a failed save of a key goes when the key is saved.
import { ApiError } from './api.js';
import { h } from './dom.js';

const MAX_SHOWN = 4;
let root = null;

export function messageOf(err) {
  if (err instanceof ApiError) return err.message;
  return 'Something went wrong in this page. Reload it and try again.';
}

/** Where notices go. */
export function setNoticeRoot(el) {
  root = el;
}

/**
 * Shows a notice. The same notice again replaces the one shown; a `transient` one (the node
 * could not be reached) goes by itself once the node is back; a success with a `topic`
 * takes away that topic's error notices.
 */
export function notify(text, kind = 'info', { timeout, transient = false, topic = '' } = {}) {
  const ms = timeout ?? (kind === 'error' ? 0 : 4000);
  if (topic && kind !== 'error') resolved(topic);
  for (const old of root.querySelectorAll(`.msg-${kind}`)) {
    if (old.querySelector('.msg-text').textContent === text) old.remove();
  }
  const close = h('button', { type: 'button', class: 'msg-close', 'aria-label': 'Dismiss message', text: '×' });
  const dataset = {};
  if (transient) dataset.transient = '';
  if (topic) dataset.topic = topic;
  const box = h('div', { class: `msg msg-${kind}`, role: kind === 'error' ? 'alert' : 'status', dataset },
    h('span', { class: 'msg-text', text }), close);
  close.addEventListener('click', () => box.remove());
  root.prepend(box);
  while (root.children.length > MAX_SHOWN) root.lastElementChild.remove();
  if (ms > 0) setTimeout(() => box.remove(), ms);
  return box;
}

/** An error notice; one about reaching the node goes once the node is back. */
export function notifyError(text, err, { topic = '' } = {}) {
  const unreachable = err instanceof ApiError && (err.status === 0 || err.status >= 500 || err.status === 401);
  return notify(`${text} ${messageOf(err)}`, 'error', { transient: unreachable, topic });
}

/** What `topic`'s error notices reported works again: they go. */
export function resolved(topic) {
  for (const m of root.querySelectorAll('.msg-error[data-topic]')) {
    if (m.dataset.topic === topic) m.remove();
  }
}

export function clearTransient() {
  root.querySelectorAll('.msg[data-transient]').forEach((m) => m.remove());
}
