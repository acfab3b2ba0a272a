// The "Where you're signed in" dialog: this account's sessions, with a way to log out any other
// one, or all of them at once. Every field the server sends is drawn as text.

import { describeAgent } from './agent.js';
import { api } from './api.js';
import { $, el, setBusy } from './ui.js';

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
const MINUTE_MS = 60_000;

function parseTime(value) {
  const time = typeof value === 'string' ? Date.parse(value) : NaN;
  return Number.isNaN(time) ? null : time;
}

/** "just now", "5 minutes ago", "3 hours ago", then the date. */
function ago(time) {
  const minutes = Math.round((Date.now() - time) / MINUTE_MS);
  if (minutes < 1) return 'just now';
  if (minutes < 60) return relative.format(-minutes, 'minute');
  if (minutes < 24 * 60) return relative.format(-Math.round(minutes / 60), 'hour');
  return dateTime.format(time);
}

const text = (value) => (typeof value === 'string' || typeof value === 'number' ? String(value) : '');

function sessionNode(item) {
  const agent = text(item.user_agent);
  const lastUsed = parseTime(item.last_used_at);
  const created = parseTime(item.created_at);
  const current = item.current === true;
  const details = [text(item.ip), current ? 'active now' : lastUsed !== null && `active ${ago(lastUsed)}`]
    .filter(Boolean).join(' · ');
  return el('li', { class: `session${current ? ' current' : ''}`, dataset: { sessionId: text(item.id) } },
    el('span', { class: 'session-icon', 'aria-hidden': 'true' }),
    el('span', { class: 'session-main' },
      el('span', { class: 'session-top' },
        el('span', { class: 'session-name', title: agent || null, text: describeAgent(agent) ?? (agent || 'Unknown device') }),
        current && el('span', { class: 'badge', text: 'This browser' })),
      details && el('span', { class: 'session-detail', text: details }),
      created !== null && el('span', { class: 'session-detail', text: `Signed in ${dateTime.format(created)}` })),
    !current && el('button', { type: 'button', class: 'btn small session-logout', dataset: { sessionId: text(item.id) }, text: 'Log out' }));
}

/** Wires the dialog. Returns open(). */
export function initSessionsDialog() {
  const dialog = $('sessions-dialog');
  const list = $('sessions-list');
  const error = $('sessions-error');
  const others = $('logout-others');
  let loads = 0; // answers to older loads are dropped

  const showError = (message) => {
    error.textContent = message;
    error.hidden = !message;
  };

  function render(sessions) {
    const ordered = [...sessions].sort((a, b) => (b.current === true) - (a.current === true)
      || (parseTime(b.last_used_at) ?? 0) - (parseTime(a.last_used_at) ?? 0));
    list.replaceChildren(...ordered.map(sessionNode));
    list.setAttribute('aria-busy', 'false');
    others.disabled = !ordered.some((item) => item.current !== true);
  }

  async function load() {
    const counter = ++loads;
    try {
      const { sessions } = await api.sessions();
      if (counter !== loads) return;
      render(Array.isArray(sessions) ? sessions.filter((item) => item && typeof item === 'object') : []);
    } catch (err) {
      if (counter !== loads) return;
      list.setAttribute('aria-busy', 'false');
      showError(err.message);
    }
  }

  async function act(button, call) {
    setBusy(button, true);
    showError('');
    try {
      await call();
    } catch (err) {
      showError(err.message);
    }
    setBusy(button, false);
    await load(); // what the server holds now, whichever way it went
  }

  list.addEventListener('click', (event) => {
    const button = event.target.closest('button.session-logout');
    if (button) act(button, () => api.revokeSession(button.dataset.sessionId));
  });
  others.addEventListener('click', () => act(others, () => api.revokeOtherSessions()));
  $('sessions-close').addEventListener('click', () => dialog.close());

  return function open() {
    showError('');
    others.disabled = true;
    list.setAttribute('aria-busy', 'true');
    list.replaceChildren(el('li', { class: 'hint', text: 'Loading…' }));
    dialog.showModal();
    load();
  };
}
