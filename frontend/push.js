// Web Push on the page side: permission, the service worker, this browser's subscription
// and its device record on the server.

import { describeAgent } from './agent.js';
import { api, session } from './api.js';

const DEVICE_TOKEN_KEY = 'messenger.pushDeviceToken'; // the device_token we registered last
const WORKER_URL = '/sw.js';

export function isSupported() {
  return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
}

export function permission() {
  return isSupported() ? Notification.permission : 'unsupported';
}

/** Asks for permission (call it straight from a click), then subscribes. Returns the permission. */
export async function enable() {
  const result = await Notification.requestPermission();
  if (result === 'granted') await subscribeAndRegister();
  return result;
}

/** Makes sure this browser is subscribed and registered as a device of the signed-in user. */
export async function subscribeAndRegister() {
  await navigator.serviceWorker.register(WORKER_URL, { scope: '/' });
  const registration = await navigator.serviceWorker.ready; // subscribe() needs an active worker
  const { public_key: publicKey } = await api.vapidPublicKey();
  const applicationServerKey = base64UrlToBytes(publicKey);

  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameBytes(subscription.options.applicationServerKey, applicationServerKey)) {
    // The server's key changed: a subscription made with the old one can no longer be used.
    await subscription.unsubscribe();
    subscription = null;
  }
  subscription ??= await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey });

  const deviceToken = JSON.stringify(subscription);
  await api.registerDevice({ device_token: deviceToken, platform: 'web', provider: 'web_push', device_name: describeAgent(navigator.userAgent) ?? 'Browser' });
  const previous = localStorage.getItem(DEVICE_TOKEN_KEY);
  localStorage.setItem(DEVICE_TOKEN_KEY, deviceToken);
  if (previous && previous !== deviceToken) api.deleteDevice(previous).catch(() => {});
  // The worker keeps the token to re-register by itself on pushsubscriptionchange (see sw.js).
  registration.active?.postMessage({ type: 'auth-token', token: session.token });
}

/** On logout: stop pushes to this browser and forget the device on the server (needs the token still). */
export async function unregister() {
  if (!isSupported()) return;
  const registration = await navigator.serviceWorker.getRegistration('/');
  const subscription = await registration?.pushManager.getSubscription();
  const tokens = new Set([localStorage.getItem(DEVICE_TOKEN_KEY), subscription && JSON.stringify(subscription)]);
  tokens.delete(null);
  await subscription?.unsubscribe().catch(() => {});
  await Promise.all([...tokens].map((token) => api.deleteDevice(token).catch(() => {})));
  localStorage.removeItem(DEVICE_TOKEN_KEY);
  registration?.active?.postMessage({ type: 'auth-token', token: null });
  // What was shown for the account goes with it: its texts, and buttons whose tokens died with the device.
  for (const notification of (await registration?.getNotifications().catch(() => [])) ?? []) notification.close();
  await navigator.clearAppBadge?.().catch(() => {});
}

/**
 * A renewed access token for the worker, if this browser gets pushes: it re-registers by itself
 * on pushsubscriptionchange while no page is open (see sw.js).
 */
export function shareToken(token) {
  if (!isSupported() || !localStorage.getItem(DEVICE_TOKEN_KEY)) return;
  navigator.serviceWorker.getRegistration('/')
    .then((registration) => registration?.active?.postMessage({ type: 'auth-token', token }))
    .catch(() => {});
}

/** Messages from the service worker: {type: "open-conversation", conversation_id} and {type: "push-subscription-changed"}. */
export function listen({ openConversation, subscriptionChanged }) {
  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker.addEventListener('message', (event) => {
    const message = event.data ?? {};
    if (message.type === 'open-conversation' && message.conversation_id != null) openConversation(String(message.conversation_id));
    else if (message.type === 'push-subscription-changed') subscriptionChanged();
  });
  navigator.serviceWorker.startMessages();
}

/**
 * Shows a notification from the page, for a browser the server does not push to (Web Push is
 * off on the server, or this browser never registered). A registered one is pushed once its
 * tab is hidden or idle (the server pushes by attention), and the worker shows that push, with
 * its Reply and Mark as read: announcing it here as well would alert twice.
 */
export async function notify(title, { body, conversationId }) {
  if (permission() !== 'granted' || localStorage.getItem(DEVICE_TOKEN_KEY)) return;
  const registration = await navigator.serviceWorker.getRegistration('/');
  await registration?.showNotification(title, {
    body,
    icon: '/icon.svg',
    tag: conversationId,
    renotify: true,
    data: { url: `/?conversation=${encodeURIComponent(conversationId)}`, conversation_id: conversationId, seq: null, count: 1, action_token: null },
  });
}

function base64UrlToBytes(value) {
  const base64 = value.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(value.length / 4) * 4, '=');
  return Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
}

function sameBytes(buffer, bytes) {
  if (!buffer) return false;
  const other = new Uint8Array(buffer);
  return other.length === bytes.length && other.every((byte, index) => byte === bytes[index]);
}
