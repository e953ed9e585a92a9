// The cluster panel: every member as this node sees it (GET /api/cluster), refreshed every few
// seconds. Server data goes on the page as text and attributes only, never as HTML.

import { api, ApiError, tokenPromptPending } from './api.js';
import { h } from './dom.js';
import { clockTime as timeOfDay } from './format.js';

const MIN_POLL_MS = 1000;
const MAX_POLL_MS = 3000;
const TIMEOUT_MS = 4000;


function clockTime(ms) {
  return timeOfDay(new Date(ms));
}

/** A duration for people: "340 ms", "1.2 s", "14 s", "3 min", "2 h". */
export function duration(ms) {
  const a = Math.abs(ms);
  if (a < 1000) return `${Math.round(a)} ms`;
  if (a < 10_000) return `${(a / 1000).toFixed(1)} s`;
  if (a < 120_000) return `${Math.round(a / 1000)} s`;
  if (a < 7_200_000) return `${Math.round(a / 60_000)} min`;
  return `${Math.round(a / 3_600_000)} h`;
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/** Only web addresses become links: `addr` is whatever the member was configured with. */
function webUrl(addr) {
  try {
    const u = new URL(addr);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

/** For each applier, how far it is behind the origin it lags most (events, and ms). */
function behindByApplier(lag = []) {
  const out = new Map();
  for (const l of lag) {
    const cur = out.get(l.applier) || { events: 0, ms: 0, eventsFrom: null, msFrom: null };
    const events = Number(l.events) || 0;
    const ms = Number(l.ms) || 0;
    if (events > cur.events) Object.assign(cur, { events, eventsFrom: l.origin });
    if (ms > cur.ms) Object.assign(cur, { ms, msFrom: l.origin });
    out.set(l.applier, cur);
  }
  return out;
}

export class ClusterPanel {
  /** @param {{ root: HTMLDetailsElement }} o */
  constructor({ root }) {
    this.root = root;
    this.glance = root.querySelector('#cluster-glance');
    this.body = root.querySelector('#cluster-body');
    this.updated = root.querySelector('#cluster-updated');
    this.staleNote = root.querySelector('#cluster-stale');
    this.announcer = document.getElementById('cluster-announce');
    this.data = null; // the last answer
    this.okAt = 0; // when it arrived (this page's clock)
    this.problem = ''; // why the panel is stale, '' while fresh
    this.statuses = null; // node -> status, to announce changes
    this.timer = null;
    this.inFlight = false;
    this.again = false;
  }

  start() {
    const summary = this.root.querySelector('summary');
    // Escape or a click elsewhere closes the panel, like any pop-over.
    this.root.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && this.root.open) {
        ev.preventDefault();
        this.root.open = false;
        summary.focus();
      }
    });
    document.addEventListener('click', (ev) => {
      if (this.root.open && !this.root.contains(ev.target)) this.root.open = false;
    });
    this.root.addEventListener('toggle', () => {
      if (this.root.open) this.refresh();
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.refresh();
    });
    this.render();
    this.refresh();
  }

  /** Polls at a third of the away time (1 to 3 s), so an away member shows soon after it is. */
  interval() {
    const away = Number(this.data?.away_after_ms);
    return away > 0 ? Math.min(MAX_POLL_MS, Math.max(MIN_POLL_MS, Math.round(away / 3))) : MAX_POLL_MS;
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), this.interval());
  }

  /** Asks the node now (e.g. when the page's connection to it is back). */
  async refresh() {
    if (this.inFlight) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    // While the person is asked for a token, a call would only be refused; the page's
    // connection comes back (and refreshes this) once a token is given.
    if (tokenPromptPending()) {
      this.schedule();
      return;
    }
    this.inFlight = true;
    try {
      const data = await api.cluster({ timeoutMs: TIMEOUT_MS });
      if (!data || !Array.isArray(data.members)) throw new ApiError('The node gave an answer this page does not understand.');
      this.announce(data);
      this.data = data;
      this.okAt = Date.now();
      this.problem = '';
    } catch (err) {
      const node = this.data?.node || 'the node';
      if (!(err instanceof ApiError)) this.problem = 'This page could not read the answer.';
      else if (err.code === 'timeout') this.problem = `${node} did not answer within ${TIMEOUT_MS / 1000} s.`;
      else if (err.status === 0) this.problem = `Can't reach ${node}.`;
      else if (err.status === 401) this.problem = `${node} needs an access token.`;
      else if (err.status === 404) this.problem = `${node} does not report its cluster.`;
      else this.problem = err.message;
    } finally {
      this.inFlight = false;
    }
    this.render();
    if (this.again) {
      this.again = false;
      this.refresh();
    } else {
      this.schedule();
    }
  }

  /** Tells screen readers when a member goes away or comes back. */
  announce(data) {
    const now = new Map(data.members.map((m) => [String(m.node), m.status]));
    if (this.statuses && this.announcer) {
      const lines = [];
      for (const [node, status] of now) {
        const was = this.statuses.get(node);
        if (was === status) continue;
        if (status === 'away') lines.push(`${node} is away.`);
        else if (was === 'away') lines.push(`${node} is live again.`);
        else if (was === undefined) lines.push(`${node} joined the cluster.`);
      }
      if (lines.length) this.announcer.textContent = lines.join(' ');
    }
    this.statuses = now;
  }

  render() {
    const d = this.data;
    const stale = this.problem !== '';
    this.root.dataset.stale = String(stale);

    // The glance in the header: how many members are live, never old news as if fresh.
    let glance;
    let state;
    if (stale) {
      state = 'stale';
      glance = d ? 'not updated' : 'unknown';
    } else if (!d) {
      state = 'loading';
      glance = '…';
    } else {
      const live = d.members.filter((m) => m.status === 'live').length;
      const away = d.members.length - live;
      const joining = d.members.some((m) => m.joining);
      state = away > 0 ? 'away' : 'live';
      glance = `${live}/${d.members.length} live${away ? `, ${away} away` : ''}${joining ? ', joining' : ''}`;
    }
    this.glance.dataset.state = state;
    this.glance.textContent = glance;

    this.staleNote.hidden = !stale;
    this.staleNote.textContent = !stale
      ? ''
      : d
        ? `Not updated since ${clockTime(this.okAt)}: ${this.problem} What follows may be out of date.`
        : `Could not read the cluster: ${this.problem}`;

    if (!d) {
      this.updated.textContent = '';
      this.body.replaceChildren();
      return;
    }
    const asOf = `${d.node ? `As seen by ${d.node}` : 'As seen by this node'}, ${clockTime(this.okAt)}`;
    this.updated.textContent = stale ? `${asOf} (stale)` : asOf;
    const at = new Date(this.okAt).toISOString();
    this.updated.title = `Away after ${duration(Number(d.away_after_ms) || 0)} without a heartbeat. Answered at ${d.at || at}.`;

    const behind = behindByApplier(d.lag);
    // Rows are rebuilt on every answer: keep the focus on the link it was on.
    const focused = this.body.contains(document.activeElement) ? document.activeElement.closest('tr')?.dataset.node : null;
    this.body.replaceChildren(...d.members.map((m) => this.memberRow(m, behind.get(m.node))));
    if (focused !== null && focused !== undefined) {
      const again = [...this.body.rows].find((r) => r.dataset.node === focused)?.querySelector('a');
      if (again) again.focus();
    }
  }

  memberRow(m, lag) {
    const node = String(m.node);
    const live = m.status === 'live';
    const link = m.addr ? webUrl(String(m.addr)) : null;

    const who = h('th', { scope: 'row', class: 'member-cell' },
      h('span', { class: 'member-node', text: node }),
      m.self ? h('span', { class: 'member-self', text: 'this node' }) : null,
      m.addr
        ? h('span', { class: 'member-addr' }, link
          ? h('a', { href: link, title: `Open ${node}'s web UI`, text: String(m.addr) })
          : String(m.addr))
        : null);

    const status = h('td', { class: 'status-cell' },
      h('span', { class: 'member-status', dataset: { status: live ? 'live' : 'away' } },
        h('span', { class: 'status-icon', 'aria-hidden': 'true', text: live ? '●' : '○' }),
        live ? 'Live' : 'Away'),
      m.joining
        ? h('span', { class: 'member-joining', title: "Joining from its peers' state: not ready until it holds it", text: 'joining' })
        : null);

    let lagText = '—';
    let lagTitle = null;
    if (lag) {
      const parts = [];
      if (lag.events > 0) parts.push(plural(lag.events, 'event', 'events'));
      if (lag.ms > 0) parts.push(duration(lag.ms));
      lagText = parts.length ? parts.join(' · ') : 'up to date';
      if (parts.length) {
        const from = [...new Set([lag.eventsFrom, lag.msFrom].filter(Boolean))].join(' and ');
        lagTitle = `Most behind ${from}`;
      }
      if (!live) lagTitle = `${lagTitle ? lagTitle + '; as' : 'As'} of its last heartbeat`;
    }
    const behindCell = h('td', { class: 'lag-cell', dataset: { events: String(lag?.events ?? ''), ms: String(lag?.ms ?? '') }, title: lagTitle },
      lag && (lag.events > 0 || lag.ms > 0) ? h('span', { class: 'behind', text: lagText }) : lagText);

    const offset = m.clock_offset_ms;
    let clock;
    if (m.self) clock = h('td', { class: 'clock-cell', title: 'The others are measured against this clock', text: '—' });
    else if (typeof offset !== 'number') clock = h('td', { class: 'clock-cell', title: 'Not measured yet', text: 'unknown' });
    else clock = h('td', { class: 'clock-cell', title: `${node}'s clock is ${offset === 0 ? 'in step with' : offset > 0 ? 'ahead of' : 'behind'} this node's`, text: `${offset > 0 ? '+' : offset < 0 ? '−' : '±'}${duration(offset)}` });

    const heard = m.self
      ? h('td', { class: 'heard-cell', text: '—' })
      : h('td', { class: 'heard-cell', text: typeof m.last_heard_ms_ago === 'number' ? `${duration(m.last_heard_ms_ago)} ago` : 'never' });

    return h('tr', { class: `member-row${m.self ? ' member-this' : ''}`, dataset: { node, status: live ? 'live' : 'away', self: String(Boolean(m.self)), joining: String(Boolean(m.joining)) } },
      who, status, behindCell, clock, heard);
  }
}
