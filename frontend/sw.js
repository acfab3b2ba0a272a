/*
 * Service worker (scope /): shows Web Push notifications, takes them down when the conversation
 * is read elsewhere, keeps the app badge, and acts on their Reply and Mark as read buttons.
 *
 * A classic script, not a module, so every browser with Push can run it. The decision helpers
 * (conversationIdFromUrl, shouldShowNotification, chooseClickTarget, notificationFromPayload)
 * are plain global functions that only use their arguments and self.location, so a test can
 * call them from the worker, e.g. with Playwright:
 *   const [worker] = context.serviceWorkers();
 *   await worker.evaluate(() => shouldShowNotification([{url: location.origin + '/?conversation=c1', focused: true}], 'c1'));
 * or load this file into a Node vm context whose `self` stubs addEventListener and location.
 * The event handlers are globals too (handlePush, handleNotificationClick): a test calls them
 * with an event-like object, since a synthetic event cannot waitUntil.
 *
 * The web client's URL for a conversation is /?conversation=<id>.
 *
 * Reply and Mark as read work without a page and without the session: each message push
 * carries an action token good for this device, this conversation and these two actions only,
 * for a few days (see the README, "Notification actions"). It is kept in the notification's
 * data, sent to the API in a request body (never a URL), and never logged.
 */

const ICON_URL = '/icon.svg';

/** The conversation a page of the web client shows, from its URL; null for any other page. */
function conversationIdFromUrl(url) {
  try {
    return new URL(url, self.location.origin).searchParams.get('conversation');
  } catch {
    return null;
  }
}

function conversationUrl(conversationId) {
  return new URL(`/?conversation=${encodeURIComponent(conversationId)}`, self.location.origin).href;
}

/** False when a focused, visible window already shows the conversation: that page shows the message itself. */
function shouldShowNotification(windowClients, conversationId) {
  if (conversationId == null) return true;
  return !windowClients.some((client) => client.focused && client.visibilityState !== 'hidden'
    && conversationIdFromUrl(client.url) === String(conversationId));
}

/**
 * Where a click on a notification for `url` goes:
 *   {action: "focus", client}         a window of the web client: focus it and post it the conversation;
 *   {action: "navigate", client, url} another page of this origin, which cannot take the message;
 *   {action: "open", url}             no window of ours is open.
 * A window already showing the conversation wins, then the focused one, then any.
 */
function chooseClickTarget(windowClients, url) {
  const target = new URL(url, self.location.origin);
  const ours = windowClients.filter((client) => new URL(client.url).origin === self.location.origin);
  const isApp = (client) => new URL(client.url).pathname === '/';
  const wanted = target.searchParams.get('conversation');
  const app = ours.find((client) => isApp(client) && wanted !== null && conversationIdFromUrl(client.url) === wanted)
    ?? ours.find((client) => isApp(client) && client.focused)
    ?? ours.find(isApp);
  if (app) return { action: 'focus', client: app };
  const other = ours.find((client) => client.focused) ?? ours[0];
  if (other) return { action: 'navigate', client: other, url: target.href };
  return { action: 'open', url: target.href };
}

// The page calls the API on its own origin, /api/v1; so does the worker.
const API_BASE = new URL('/api/v1/', self.location.origin).href;
const ACTIONS_URL = new URL('messenger/notification-actions/', API_BASE).href;

// The buttons' labels come with each push, in the user's language (`actions`: the server
// localises title, body and labels); these stand in for a payload that names none.
const FALLBACK_LABELS = { reply: 'Reply', read: 'Mark as read' };

/** {reply, read, placeholder}: the payload's labels where it has them. */
function actionLabels(payload) {
  const labels = { ...FALLBACK_LABELS, placeholder: null };
  for (const action of Array.isArray(payload.actions) ? payload.actions : []) {
    if ((action?.action === 'reply' || action?.action === 'read') && typeof action.title === 'string' && action.title) {
      labels[action.action] = action.title;
      if (action.action === 'reply' && typeof action.placeholder === 'string') labels.placeholder = action.placeholder;
    }
  }
  labels.placeholder ??= `${labels.reply}…`;
  return labels;
}

const asCount = (value) => (Number.isSafeInteger(value) && value >= 0 ? value : null);
const asId = (value) => (typeof value === 'string' && value ? value : null);

/**
 * Turns the server's message push {title, body, data, tag, url, badge, count, action_token} into
 * showNotification arguments. One notification per conversation (its tag); title and body are
 * shown as sent (already in the user's language, and generic when the preview is "none").
 */
function notificationFromPayload(payload) {
  const data = payload.data ?? {};
  const conversationId = data.conversation_id == null ? null : String(data.conversation_id);
  // The server builds url from its configured base; if that is another origin than ours
  // (e.g. localhost vs 127.0.0.1), use this origin so the click lands in a signed-in page.
  let url = payload.url ? new URL(payload.url, self.location.origin) : null;
  if (!url || url.origin !== self.location.origin) url = new URL(conversationId ? conversationUrl(conversationId) : '/', self.location.origin);
  // A reminder has a tag of its own: it neither replaces the conversation's message
  // notification nor goes when the conversation is read.
  const reminderId = payload.type === 'reminder' ? asId(data.reminder_id) : null;
  const tag = reminderId ? `reminder:${reminderId}` : conversationId ?? payload.tag ?? undefined;
  const token = typeof payload.action_token === 'string' && payload.action_token ? payload.action_token : null;
  // A test push or a reminder acts on no conversation: its token records its open only.
  const openToken = typeof payload.open_token === 'string' && payload.open_token ? payload.open_token : null;
  const labels = actionLabels(payload);
  // Without a token the buttons could do nothing: a plain click still opens the chat.
  const actions = token && conversationId
    ? [
        { action: 'reply', type: 'text', title: labels.reply, placeholder: labels.placeholder },
        { action: 'read', title: labels.read },
      ]
    : [];
  return {
    title: payload.title || 'New message',
    options: {
      body: payload.body ?? '',
      lang: typeof payload.lang === 'string' ? payload.lang : '',
      icon: ICON_URL,
      badge: ICON_URL,
      tag,
      renotify: Boolean(tag), // handlePush turns it off unless the count grew
      data: {
        url: url.href,
        conversation_id: conversationId,
        message_id: asId(data.message_id),
        notification_id: asId(data.notification_id),
        seq: asCount(data.seq),
        count: asCount(payload.count) ?? 1,
        action_token: token,
        open_token: openToken,
      },
      actions,
      // A message's thumbnail: a signed URL the browser fetches without a session.
      ...(typeof payload.image === 'string' && /^https?:\/\//.test(payload.image) ? { image: payload.image } : {}),
    },
  };
}

function readPayload(pushData) {
  if (!pushData) return {};
  try {
    return pushData.json();
  } catch {
    return { body: pushData.text() };
  }
}

const listWindows = () => self.clients.matchAll({ type: 'window', includeUncontrolled: true });

/** The app icon's badge: the user's unread total as the server counted it; null leaves it. */
async function setBadge(badge) {
  const count = asCount(badge);
  if (count === null) return;
  const nav = self.navigator;
  try {
    if (count > 0 && typeof nav.setAppBadge === 'function') await nav.setAppBadge(count);
    else if (count === 0 && typeof nav.clearAppBadge === 'function') await nav.clearAppBadge();
    else if (count === 0 && typeof nav.setAppBadge === 'function') await nav.setAppBadge(0);
  } catch {
    // Not installed as an app, or no badge on this system: nothing to show it on.
  }
}

async function handlePush(payload) {
  if (payload?.type === 'clear') return handleClear(payload);
  const { title, options } = notificationFromPayload(payload);
  const { conversation_id: conversationId, seq, count } = options.data;
  // A read elsewhere may overtake its conversation's push: what is read is not shown again
  // (nor its badge, counted before that read).
  if (conversationId !== null && seq !== null && seq <= ((await loadReadMark(conversationId).catch(() => 0)) ?? 0)) return;
  const [previous] = options.tag ? await self.registration.getNotifications({ tag: options.tag }) : [];
  // A conversation's pushes may arrive out of order: one for an older message than the
  // notification shows came late, and its text and badge are out of date.
  const shownSeq = asCount(previous?.data?.seq);
  if (seq !== null && shownSeq !== null && seq < shownSeq) return;
  await setBadge(payload.badge);
  if (!shouldShowNotification(await listWindows(), conversationId)) return;
  // It alerts again only when more is unread; the same again (a retried delivery, an
  // edit) replaces the shown one silently.
  if (previous) options.renotify = count > (asCount(previous.data?.count) ?? 0);
  await self.registration.showNotification(title, options);
}

/**
 * A clearing push {type: "clear", tag, conversation_id, seq, badge}: the conversation was read
 * up to seq elsewhere. With `reason: "deleted"` and `message_id`, that message was deleted
 * instead: only a notification showing it goes, and nothing counts as read.
 */
async function handleClear(payload) {
  const conversationId = payload.conversation_id == null ? null : String(payload.conversation_id);
  const tag = payload.tag == null ? conversationId : String(payload.tag);
  const messageId = asId(payload.message_id);
  if (payload.reason === 'deleted' || messageId !== null) {
    if (tag && messageId !== null) {
      for (const notification of await self.registration.getNotifications({ tag })) {
        if (notification.data?.message_id === messageId) notification.close();
      }
    }
    await setBadge(payload.badge);
    return;
  }
  const seq = asCount(payload.seq);
  if (conversationId !== null && seq !== null) await saveReadMark(conversationId, seq).catch(() => {});
  if (tag) {
    for (const notification of await self.registration.getNotifications({ tag })) {
      const shownSeq = asCount(notification.data?.seq);
      // One shown for a later message stays: that one is still unread.
      if (seq === null || shownSeq === null || shownSeq <= seq) notification.close();
    }
  }
  await setBadge(payload.badge);
}

async function handleClick(data) {
  const url = data.url ?? conversationUrl(data.conversation_id);
  const target = chooseClickTarget(await listWindows(), url);
  if (target.action === 'focus') {
    const client = (await target.client.focus()) ?? target.client;
    if (data.conversation_id != null) client.postMessage({ type: 'open-conversation', conversation_id: data.conversation_id });
    return;
  }
  if (target.action === 'navigate') {
    // navigate() only works on pages this worker controls; otherwise open a new window.
    const client = await target.client.navigate(target.url).catch(() => null);
    if (client) {
      await client.focus();
      return;
    }
  }
  await self.clients.openWindow(url);
}

/**
 * POSTs a notification action, the token in the body. Retries what may pass on a second try
 * (no answer, 429, 503; a reply keeps its client_msg_id, so it is never posted twice).
 * Resolves to the Response of the last try, or null when the server was never reached.
 */
async function postAction(kind, body) {
  let response = null;
  for (let attempt = 0; attempt < 5; attempt += 1) {
    if (attempt > 0) {
      const retryAfter = Number(response?.headers.get('Retry-After'));
      const wait = Math.min(Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : 1000 * attempt, 5000);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    try {
      response = await fetch(new URL(kind, ACTIONS_URL).href, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        credentials: 'omit',
        cache: 'no-store',
      });
    } catch {
      response = null;
      continue;
    }
    if (response.status !== 429 && response.status !== 503) return response;
  }
  return response;
}

function newClientMsgId() {
  if (typeof self.crypto?.randomUUID === 'function') return self.crypto.randomUUID();
  return `n-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/**
 * notificationclick: Reply posts the typed text, Mark as read marks the conversation read up to
 * the notification's message, both without a page; a plain click (or an action the worker cannot
 * do: no inline reply, no token, the server refused) opens the conversation.
 * Resolves to what was done: "replied", "read" or "opened".
 */
async function handleNotificationClick(event) {
  const notification = event.notification;
  const data = notification?.data ?? {};
  notification?.close();
  const token = data.action_token;
  if (event.action === 'reply' && token) {
    const content = typeof event.reply === 'string' ? event.reply : '';
    if (content.trim()) {
      const response = await postAction('reply', { action_token: token, content, client_msg_id: newClientMsgId() });
      if (response?.ok) return 'replied';
      console.warn('Reply from the notification failed:', response ? response.status : 'no answer');
    }
  } else if (event.action === 'read' && token && data.seq != null) {
    const response = await postAction('read', { action_token: token, seq: data.seq });
    if (response?.ok) {
      if (data.conversation_id != null) await saveReadMark(String(data.conversation_id), data.seq).catch(() => {});
      return 'read';
    }
    console.warn('Mark as read from the notification failed:', response ? response.status : 'no answer');
  }
  // Whether a page of ours was in front is read before the click brings one there.
  const windows = await listWindows();
  const foreground = windows.some((client) => client.focused && client.visibilityState === 'visible');
  await Promise.all([reportOpened(data, foreground ? 'foreground' : 'click'), handleClick(data)]);
  return 'opened';
}

/**
 * Records the open in the user's notification history (POST /me/notifications/{id}/opened). The
 * worker holds no access token: the push's action token is the credential (good for its user and
 * conversation only), or for a test push or a reminder its open token (good for that one
 * notification only). The server writes the history a moment after the push service took the
 * push, so a click faster than that meets a 404: tried again, for up to ten seconds. Only the first open counts,
 * so a repeated report does no harm.
 */
async function reportOpened(data, how) {
  const token = data.action_token || data.open_token;
  if (!data.notification_id || !token) return;
  const url = new URL(`me/notifications/${encodeURIComponent(data.notification_id)}/opened`, API_BASE).href;
  for (let attempt = 0; attempt < 3; attempt += 1) {
    if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 1000 * attempt));
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ how, action_token: token }),
      credentials: 'omit',
      cache: 'no-store',
    }).catch(() => null);
    if (response && ![404, 429, 503].includes(response.status)) return;
  }
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  event.waitUntil(handlePush(readPayload(event.data)));
});

self.addEventListener('notificationclick', (event) => {
  event.waitUntil(handleNotificationClick(event));
});

/*
 * pushsubscriptionchange: the browser dropped or rotated our subscription. We subscribe again with
 * the server's current key. Then, to keep one place that owns the device record:
 *   - if a page of ours is open, it re-registers (it holds the session) — we only tell it;
 *   - otherwise we register with the access token a page left here (in IndexedDB); pages renew it
 *     with every refresh and logout clears it. It lives minutes, so once it has expired (or with
 *     none) the next page load re-registers.
 */
self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil(renewSubscription(event.oldSubscription));
});

self.addEventListener('message', (event) => {
  if (event.data?.type === 'auth-token') event.waitUntil(saveAccessToken(event.data.token ?? null));
});

async function renewSubscription(oldSubscription) {
  const token = await loadAccessToken().catch(() => null);
  const auth = token ? { Authorization: `Bearer ${token}` } : {};
  const applicationServerKey = await fetch('/api/v1/messenger/push/vapid-public-key', { headers: auth })
    .then((response) => (response.ok ? response.json() : Promise.reject(new Error(`HTTP ${response.status}`))))
    .then((body) => base64UrlToBytes(body.public_key))
    .catch(() => oldSubscription?.options?.applicationServerKey);
  if (!applicationServerKey) return;
  const subscription = await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey });

  const pages = await listWindows();
  if (pages.length) {
    for (const page of pages) page.postMessage({ type: 'push-subscription-changed' });
    return;
  }
  if (!token) return;
  await fetch('/api/v1/messenger/devices/register', {
    method: 'POST',
    headers: { ...auth, 'Content-Type': 'application/json' },
    body: JSON.stringify({ device_token: JSON.stringify(subscription), platform: 'web', provider: 'web_push', device_name: 'Web browser' }),
  });
  if (oldSubscription) {
    await fetch(`/api/v1/messenger/devices/${encodeURIComponent(JSON.stringify(oldSubscription))}`, { method: 'DELETE', headers: auth })
      .catch(() => {});
  }
}

function base64UrlToBytes(value) {
  const base64 = value.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(value.length / 4) * 4, '=');
  return Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
}

// The worker's own small key-value store in IndexedDB (workers have no localStorage): the
// access token a page left for renewing the subscription, and each conversation's read mark.
function workerStore(mode, operation) {
  return new Promise((resolve, reject) => {
    const opening = indexedDB.open('messenger-sw', 1);
    opening.onupgradeneeded = () => opening.result.createObjectStore('kv');
    opening.onerror = () => reject(opening.error);
    opening.onsuccess = () => {
      const db = opening.result;
      const transaction = db.transaction('kv', mode);
      const request = operation(transaction.objectStore('kv'));
      transaction.oncomplete = () => {
        db.close();
        resolve(request.result);
      };
      transaction.onerror = transaction.onabort = () => {
        db.close();
        reject(transaction.error);
      };
    };
  });
}

function saveAccessToken(token) {
  return workerStore('readwrite', (store) => (token ? store.put(token, 'access_token') : store.delete('access_token')));
}

function loadAccessToken() {
  return workerStore('readonly', (store) => store.get('access_token'));
}

// How far each conversation is known to be read (clearing pushes, Mark as read), so a push
// that arrives after its clear is not shown.
async function saveReadMark(conversationId, seq) {
  const key = `cleared:${conversationId}`;
  const known = (await workerStore('readonly', (store) => store.get(key))) ?? 0;
  if (seq > known) await workerStore('readwrite', (store) => store.put(seq, key));
}

function loadReadMark(conversationId) {
  return workerStore('readonly', (store) => store.get(`cleared:${conversationId}`));
}
