/*
 * Service worker (scope /): shows Web Push notifications and routes clicks on them.
 *
 * A classic script, not a module, so every browser with Push can run it. The decision helpers
 * (conversationIdFromUrl, shouldShowNotification, chooseClickTarget, notificationFromPayload)
 * are plain global functions that only use their arguments and self.location, so a test can
 * call them from the worker, e.g. with Playwright:
 *   const [worker] = context.serviceWorkers();
 *   await worker.evaluate(() => shouldShowNotification([{url: location.origin + '/?conversation=c1', focused: true}], 'c1'));
 * or load this file into a Node vm context whose `self` stubs addEventListener and location.
 *
 * The web client's URL for a conversation is /?conversation=<id>.
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

/** Turns the server's push payload {title, body, data, tag, url} into showNotification arguments. */
function notificationFromPayload(payload) {
  const data = payload.data ?? {};
  const conversationId = data.conversation_id == null ? null : String(data.conversation_id);
  // The server builds url from its configured base; if that is another origin than ours
  // (e.g. localhost vs 127.0.0.1), use this origin so the click lands in a signed-in page.
  let url = payload.url ? new URL(payload.url, self.location.origin) : null;
  if (!url || url.origin !== self.location.origin) url = new URL(conversationId ? conversationUrl(conversationId) : '/', self.location.origin);
  const tag = conversationId ?? payload.tag ?? undefined;
  return {
    title: payload.title || 'New message',
    options: {
      body: payload.body ?? '',
      icon: ICON_URL,
      badge: ICON_URL,
      tag,
      renotify: Boolean(tag), // a newer message replaces the older one and still alerts
      data: { url: url.href, conversation_id: conversationId },
      actions: [{ action: 'open', title: 'Open' }, { action: 'dismiss', title: 'Dismiss' }],
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

async function handlePush(payload) {
  const { title, options } = notificationFromPayload(payload);
  if (!shouldShowNotification(await listWindows(), options.data.conversation_id)) return;
  await self.registration.showNotification(title, options);
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

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  event.waitUntil(handlePush(readPayload(event.data)));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  if (event.action === 'dismiss') return;
  event.waitUntil(handleClick(event.notification.data ?? {}));
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

// A one-key IndexedDB store for the access token (workers have no localStorage).
function tokenStore(mode, operation) {
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
  return tokenStore('readwrite', (store) => (token ? store.put(token, 'access_token') : store.delete('access_token')));
}

function loadAccessToken() {
  return tokenStore('readonly', (store) => store.get('access_token'));
}
