// The notification centre: a bell in the header with the unread count, and a panel listing what
// this account was notified of (GET /api/v1/me/notifications), newest first, with each
// device's delivery. Clicking one opens its conversation and records it as opened in the page.
// Server text is drawn with textContent only.

import { api } from './api.js';
import { $, el, setBusy } from './ui.js';

const PAGE = 20;
const REFRESH_EVERY_MS = 60_000; // never polled more often than this
const MIN_GAP_MS = 5_000; // focus, visibility and messages coalesce into one refresh at most this often
const AFTER_MESSAGE_MS = 3_000; // the push (and its history entry) follows the message's commit

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
// A delivery's outcome (push_attempts.outcome) in words.
const OUTCOMES = {
  delivered: 'delivered', failed: 'failed', dead_token: 'device gone', retry: 'retrying', gave_up: 'gave up',
};
const PROVIDERS = { fcm: 'Android (FCM)', apns: 'Apple (APNs)', web_push: 'Web Push' };

const text = (value) => (typeof value === 'string' || typeof value === 'number' ? String(value) : '');
const when = (value) => {
  const time = typeof value === 'string' ? Date.parse(value) : NaN;
  return Number.isNaN(time) ? '' : timeFormat.format(time);
};

/** "Web Push: delivered" for one device's delivery. */
export function describeDelivery(delivery) {
  const provider = PROVIDERS[delivery?.provider] ?? (text(delivery?.provider) || 'device');
  const outcome = OUTCOMES[delivery?.outcome] ?? (text(delivery?.outcome).replaceAll('_', ' ') || 'pending');
  return `${provider}: ${outcome}`;
}

// Not yet seen: neither opened from the notification nor read in the app since (`read`).
const isUnread = (item) => !item.opened_at && !item.read;

function stateText(item) {
  if (item.opened_at) return `Opened ${when(item.opened_at)}`;
  return item.read ? 'Read in the app' : 'Not opened';
}

function notificationNode(item) {
  const unread = isUnread(item);
  const deliveries = Array.isArray(item.deliveries) ? item.deliveries : [];
  return el('li', { class: `notification${unread ? ' not-opened' : ''}`, dataset: { notificationId: text(item.id) } },
    el('button', { type: 'button', class: 'notification-open', dataset: { notificationId: text(item.id) } },
      el('span', { class: 'notification-title', text: text(item.title) || 'Notification' }),
      el('span', { class: 'notification-body', text: text(item.body) }),
      el('span', { class: 'notification-meta' },
        el('time', { class: 'notification-time', datetime: text(item.created_at), text: when(item.created_at) }),
        el('span', { class: 'notification-state', text: stateText(item) })),
      deliveries.length > 0 && el('span', {
        class: 'notification-deliveries',
        text: deliveries.map(describeDelivery).join(' · '),
      })),
    el('button', {
      type: 'button', class: 'icon-btn small notification-dismiss', 'aria-label': 'Dismiss', title: 'Dismiss',
      dataset: { notificationId: text(item.id) },
    }, dismissIcon()));
}

function dismissIcon() {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', 'M18 6 6 18M6 6l12 12');
  svg.append(path);
  return svg;
}

/**
 * Wires the bell and the panel. openConversation(id) shows a conversation.
 * Returns { start(), stop(), messageArrived() }: start on sign-in, stop on sign-out, and
 * messageArrived() for each message from someone else.
 */
export function initNotificationCentre({ openConversation }) {
  const toggle = $('notification-centre-toggle');
  const badge = $('notification-unread');
  const dialog = $('notification-centre');
  const list = $('notification-list');
  const empty = $('notification-empty');
  const more = $('notification-more');
  const clear = $('notification-clear');
  const error = $('notification-error');
  let items = []; // shown, newest first
  let hasMore = false;
  let unread = 0;
  let running = false;
  let loads = 0; // answers to older loads are dropped
  let lastRefresh = 0;
  let refreshTimer = null;
  let pollTimer = null;

  const showError = (message) => {
    error.textContent = message;
    error.hidden = !message;
  };

  function showCount() {
    badge.textContent = unread > 99 ? '99+' : String(unread);
    badge.hidden = unread <= 0;
    toggle.setAttribute('aria-label', unread > 0 ? `Notifications (${unread} unread)` : 'Notifications');
    toggle.dataset.unread = String(unread);
  }

  function render() {
    list.replaceChildren(...items.map(notificationNode));
    empty.hidden = items.length > 0;
    more.hidden = !hasMore;
    clear.disabled = items.length === 0;
  }

  function take(answer) {
    const notifications = Array.isArray(answer?.notifications)
      ? answer.notifications.filter((item) => item && typeof item === 'object' && item.id) : [];
    if (Number.isInteger(answer?.unread)) unread = answer.unread;
    return notifications;
  }

  /** The newest page and the unread count, afresh. */
  async function refresh() {
    if (!running) return;
    const counter = ++loads;
    lastRefresh = Date.now();
    try {
      const answer = await api.notifications({ limit: PAGE });
      if (counter !== loads || !running) return;
      const fresh = take(answer);
      if (!Number.isInteger(answer?.unread)) unread = fresh.filter(isUnread).length;
      items = fresh;
      hasMore = fresh.length >= PAGE;
      showCount();
      if (dialog.open) render();
    } catch (err) {
      if (counter === loads && dialog.open) showError(err.message);
    }
  }

  /** A refresh soon, at most one per MIN_GAP_MS however many reasons come. */
  function refreshSoon(delayMs = 0) {
    if (!running || refreshTimer !== null) return;
    const wait = Math.max(delayMs, lastRefresh + MIN_GAP_MS - Date.now(), 0);
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refresh();
    }, wait);
  }

  async function loadMore() {
    const oldest = items[items.length - 1];
    if (!oldest) return;
    setBusy(more, true);
    showError('');
    try {
      const older = take(await api.notifications({ limit: PAGE, before: oldest.id }));
      const known = new Set(items.map((item) => item.id));
      items = [...items, ...older.filter((item) => !known.has(item.id))];
      hasMore = older.length >= PAGE;
      showCount();
      render();
    } catch (err) {
      showError(err.message);
    }
    setBusy(more, false);
  }

  async function openOne(id) {
    const item = items.find((candidate) => candidate.id === id);
    if (!item) return;
    dialog.close();
    if (item.conversation_id) openConversation(item.conversation_id);
    if (item.opened_at) return;
    // One read in the app already is not counted: opening it now leaves the count as is.
    if (isUnread(item)) unread = Math.max(0, unread - 1);
    item.opened_at = new Date().toISOString();
    showCount();
    try {
      await api.notificationOpened(id, 'foreground');
    } catch {
      // Counted as opened here; the next refresh shows what the server holds.
    }
  }

  async function dismiss(button) {
    const id = button.dataset.notificationId;
    setBusy(button, true);
    showError('');
    try {
      await api.dismissNotification(id);
      items = items.filter((item) => item.id !== id);
      render();
      await refresh(); // the unread count as the server now counts it
    } catch (err) {
      setBusy(button, false);
      showError(err.message);
    }
  }

  async function clearAll() {
    setBusy(clear, true);
    showError('');
    try {
      await api.clearNotifications();
      items = [];
      hasMore = false;
      unread = 0;
      showCount();
      render();
    } catch (err) {
      showError(err.message);
    }
    setBusy(clear, false);
  }

  toggle.addEventListener('click', () => {
    showError('');
    render();
    dialog.showModal();
    refresh();
  });
  list.addEventListener('click', (event) => {
    const dismissButton = event.target.closest('button.notification-dismiss');
    if (dismissButton) {
      dismiss(dismissButton);
      return;
    }
    const open = event.target.closest('button.notification-open');
    if (open) openOne(open.dataset.notificationId);
  });
  more.addEventListener('click', loadMore);
  clear.addEventListener('click', clearAll);
  $('notification-centre-close').addEventListener('click', () => dialog.close());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') refreshSoon();
  });
  window.addEventListener('focus', () => refreshSoon());

  return {
    start() {
      running = true;
      items = [];
      unread = 0;
      showCount();
      refresh();
      clearInterval(pollTimer);
      pollTimer = setInterval(() => {
        if (document.visibilityState === 'visible') refreshSoon();
      }, REFRESH_EVERY_MS);
    },
    stop() {
      running = false;
      loads += 1;
      clearInterval(pollTimer);
      clearTimeout(refreshTimer);
      refreshTimer = null;
      items = [];
      unread = 0;
      showCount();
      if (dialog.open) dialog.close();
    },
    /** A message came while the page was hidden: it was likely pushed, so count it soon. */
    messageArrived() {
      if (document.visibilityState === 'hidden') refreshSoon(AFTER_MESSAGE_MS);
    },
  };
}
