// REST client for /api/v1: bearer auth with short-lived access tokens kept fresh by a rotating
// refresh token, JSON in and out, failures as ApiError.

const SESSION_KEY = 'messenger.session'; // {access_token, refresh_token, expires_at, lifetime_ms, session_id}
const USER_KEY = 'messenger.user';
const LEGACY_TOKEN_KEY = 'messenger.token'; // a bare access token from before sessions: not kept
const REFRESH_LOCK = 'messenger.refresh';
const REFRESH_AHEAD_MAX_MS = 60_000;
const REFRESH_RETRY_MS = 5_000;
const MAX_LIFETIME_S = 900; // the contract's longest access token, should an answer not say

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0 when the server could not be reached
    this.code = code;
  }
}

const EXPIRED = () => new ApiError(401, 'invalid_token', 'Your session has ended. Please sign in again.');

function readSession() {
  try {
    return JSON.parse(localStorage.getItem(SESSION_KEY));
  } catch {
    return null;
  }
}

/**
 * The session and the signed-in profile live in localStorage, shared by the tabs of this origin,
 * so a reload stays signed in (and the profile lets the app start while the server is unreachable).
 * Anything that runs script in this origin can read them: see the README ("The web client").
 */
export const session = {
  get token() {
    return readSession()?.access_token ?? null;
  },
  get id() {
    return readSession()?.session_id ?? null;
  },
  get user() {
    try {
      return JSON.parse(localStorage.getItem(USER_KEY));
    } catch {
      return null;
    }
  },
  /** Keeps a login's answer: tokens, session id and profile. */
  save(login) {
    tabSessionId = login.session_id;
    storeTokens(login, login.session_id);
    this.saveUser(login.user);
  },
  saveUser(user) {
    localStorage.setItem(USER_KEY, JSON.stringify(user));
  },
  clear() {
    clearTimeout(refreshTimer);
    tabSessionId = null;
    localStorage.removeItem(SESSION_KEY);
    localStorage.removeItem(USER_KEY);
  },
};

function storeTokens({ access_token: access, refresh_token: refresh, expires_in: expiresIn }, sessionId) {
  const lifetime = (Number(expiresIn) > 0 ? Number(expiresIn) : MAX_LIFETIME_S) * 1000;
  localStorage.setItem(SESSION_KEY, JSON.stringify({
    access_token: access,
    refresh_token: refresh,
    expires_at: Date.now() + lifetime,
    lifetime_ms: lifetime,
    session_id: sessionId,
  }));
  scheduleRefresh();
}

/** When to renew: a quarter of the lifetime before it ends, at most a minute before. */
const renewAt = (stored) => stored.expires_at - Math.min(REFRESH_AHEAD_MAX_MS, stored.lifetime_ms / 4);
const isDue = (stored) => Date.now() >= renewAt(stored);
const isExpired = (stored) => Date.now() >= stored.expires_at;

// ---- Hooks for the app

let unauthorized = () => {};
let replaced = () => {};
const tokenListeners = new Set();

/** Called once the session is over: a refresh was refused (revoked, expired or spent). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** Called when another tab signed out or signed in as someone else: this tab's session is gone. */
export function onSessionReplaced(handler) {
  replaced = handler;
}

/** listener(accessToken) after every new access token, from this tab or another. */
export function onTokenRefreshed(listener) {
  tokenListeners.add(listener);
}

function announce(token) {
  for (const listener of tokenListeners) listener(token);
}

function sessionOver() {
  session.clear();
  unauthorized();
}

// ---- Refreshing

let tabSessionId = readSession()?.session_id ?? null; // the session this tab runs
let refreshTimer;
let inFlight = null;

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const stored = readSession();
  if (!stored?.refresh_token) return;
  refreshTimer = setTimeout(() => refreshOnTime(stored.access_token), Math.max(0, renewAt(stored) - Date.now()));
}

async function refreshOnTime(token) {
  try {
    await refresh(token);
  } catch (error) {
    // Unreachable or busy: try again while the token still works; after that the next request
    // or reconnect refreshes first.
    const stored = readSession();
    if (error.status !== 401 && stored && !isExpired(stored)) {
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => refreshOnTime(stored.access_token), REFRESH_RETRY_MS);
    }
  }
}

/**
 * A new access token in place of `staleToken`; resolves to the current access token.
 * Calls in this tab share one request, and tabs take turns (Web Locks): a refresh token works
 * once, and using a spent one revokes the session, so a tab that finds the token already
 * renewed by another takes that one. Rejects with ApiError; a 401 has ended the session.
 */
export function refresh(staleToken) {
  inFlight ??= withRefreshLock(() => rotate(staleToken)).finally(() => {
    inFlight = null;
  });
  return inFlight;
}

function withRefreshLock(task) {
  // navigator.locks exists only in secure contexts (https, localhost); elsewhere tabs may race.
  return navigator.locks ? navigator.locks.request(REFRESH_LOCK, task) : task();
}

async function rotate(staleToken) {
  const ours = () => {
    const stored = readSession();
    // Signed out, or another tab signed in as someone else: nothing of ours to renew.
    return stored && tabSessionId && stored.session_id === tabSessionId ? stored : null;
  };
  const stored = ours();
  if (!stored) throw EXPIRED();
  if (stored.access_token !== staleToken && !isDue(stored)) return stored.access_token;
  if (!stored.refresh_token) {
    sessionOver();
    throw EXPIRED();
  }
  let answer;
  try {
    answer = await call('POST', '/api/v1/auth/refresh', { body: { refresh_token: stored.refresh_token } });
  } catch (error) {
    if (error.status === 401 && ours()) sessionOver();
    throw error;
  }
  if (!ours()) throw EXPIRED(); // signed out while the answer was on its way
  storeTokens(answer, stored.session_id);
  announce(answer.access_token);
  return answer.access_token;
}

/** The access token to use now, renewed first when its time has come (null when signed out). */
export async function accessToken() {
  const stored = readSession();
  if (!stored || !isDue(stored)) return stored?.access_token ?? null;
  try {
    return await refresh(stored.access_token);
  } catch (error) {
    // Not renewed but still valid: use it; the timer tries again.
    if (error.status !== 401 && !isExpired(stored)) return stored.access_token;
    throw error;
  }
}

// Another tab renewed the tokens, signed out, or signed in as someone else.
window.addEventListener('storage', (event) => {
  if (event.key !== SESSION_KEY && event.key !== null) return;
  const stored = readSession();
  if ((stored?.session_id ?? null) !== tabSessionId) {
    clearTimeout(refreshTimer);
    replaced();
  } else if (stored) {
    scheduleRefresh();
    announce(stored.access_token);
  }
});

localStorage.removeItem(LEGACY_TOKEN_KEY);
scheduleRefresh();

// ---- Requests

/** One HTTP exchange: the answer's JSON, or ApiError. */
async function call(method, path, { body, query, token } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null) url.searchParams.set(key, value);
  }
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;

  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, 'network_error', 'Cannot reach the server. Check your connection.');
  }
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const error = data?.error ?? {};
  throw new ApiError(response.status, error.code ?? `http_${response.status}`,
    error.message ?? `The server answered ${response.status}.`);
}

/** An authenticated call: on a 401 the token is renewed once and the call made once more. */
async function request(method, path, options = {}) {
  const token = await accessToken();
  try {
    return await call(method, path, { ...options, token });
  } catch (error) {
    if (error.status !== 401 || !token) throw error;
  }
  // Renewed meanwhile by another call: use that; otherwise renew now (a 401 there signs out).
  const stored = readSession();
  const renewed = stored && stored.access_token !== token ? stored.access_token : await refresh(token);
  try {
    return await call(method, path, { ...options, token: renewed });
  } catch (error) {
    if (error.status === 401) sessionOver(); // refused even with a fresh token: revoked just now
    throw error;
  }
}

// ---- Files: uploads and authenticated downloads (attachments.js)

const errorFrom = (status, data) => new ApiError(status, data?.error?.code ?? `http_${status}`,
  data?.error?.message ?? `The server answered ${status}.`);

/** An attachment path as a URL of this origin: the token never goes anywhere else. */
function ownUrl(path) {
  const url = new URL(path, location.origin);
  if (url.origin !== location.origin) throw new ApiError(0, 'foreign_url', 'This file is not on this server.');
  return url;
}

/**
 * The bytes at an authenticated path (an attachment's url or thumbnail_url) as a Blob, with
 * the token in the Authorization header; on a 401 the token is renewed once. Rejects with ApiError.
 */
export async function fetchBlob(path) {
  const url = ownUrl(path);
  const get = async (token) => {
    try {
      return await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    } catch {
      throw new ApiError(0, 'network_error', 'Cannot reach the server. Check your connection.');
    }
  };
  const token = await accessToken();
  let response = await get(token);
  if (response.status === 401 && token) response = await get(await refresh(token));
  if (!response.ok) throw errorFrom(response.status, await response.json().catch(() => null));
  return response.blob();
}

/**
 * Uploads one file as multipart (field `file`) with XMLHttpRequest, the one browser API that
 * reports upload progress: onProgress(sentBytes, totalBytes). Returns {done, abort}: `done`
 * resolves to the server's answer or rejects with ApiError (code `aborted` after abort()).
 */
export function uploadFile(path, file, onProgress) {
  let xhr = null;
  let aborted = false;
  const cancelled = () => new ApiError(0, 'aborted', 'Upload cancelled.');
  const send = (token) => new Promise((resolve, reject) => {
    xhr = new XMLHttpRequest();
    xhr.open('POST', ownUrl(path));
    xhr.setRequestHeader('Accept', 'application/json');
    if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    xhr.upload.onprogress = (event) => onProgress?.(event.loaded, event.lengthComputable ? event.total : file.size);
    xhr.onload = () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        // not JSON: the status alone says what happened
      }
      resolve({ status: xhr.status, data });
    };
    xhr.onerror = () => reject(new ApiError(0, 'network_error', 'The upload was cut off. Check your connection.'));
    xhr.onabort = () => reject(cancelled());
    const form = new FormData();
    form.append('file', file, file.name || 'file');
    xhr.send(form);
  });
  const done = (async () => {
    const token = await accessToken();
    if (aborted) throw cancelled();
    let answer = await send(token);
    if (answer.status === 401 && token) {
      const renewed = await refresh(token);
      if (aborted) throw cancelled();
      answer = await send(renewed);
    }
    if (answer.status >= 200 && answer.status < 300) return answer.data;
    throw errorFrom(answer.status, answer.data);
  })();
  return {
    done,
    abort() {
      aborted = true;
      xhr?.abort();
    },
  };
}

const conversationPath = (id) => `/api/v1/messenger/conversations/${encodeURIComponent(id)}`;
const messagePath = (id, messageId) => `${conversationPath(id)}/messages/${encodeURIComponent(messageId)}`;

export const api = {
  register: (username, password, displayName) => call('POST', '/api/v1/auth/register', {
    body: displayName ? { username, password, display_name: displayName } : { username, password },
  }),
  login: (username, password) => call('POST', '/api/v1/auth/login', { body: { username, password } }),
  logout: () => request('POST', '/api/v1/auth/logout'),
  me: () => request('GET', '/api/v1/me'),

  sessions: () => request('GET', '/api/v1/me/sessions'),
  revokeSession: (id) => request('DELETE', `/api/v1/me/sessions/${encodeURIComponent(id)}`),
  revokeOtherSessions: () => request('DELETE', '/api/v1/me/sessions'),
  notificationSettings: () => request('GET', '/api/v1/me/notification-settings'),
  updateNotificationSettings: (body) => request('PUT', '/api/v1/me/notification-settings', { body }),

  searchUsers: (prefix) => request('GET', '/api/v1/users', { query: { query: prefix } }),
  user: (id) => request('GET', `/api/v1/users/${encodeURIComponent(id)}`),
  blocks: () => request('GET', '/api/v1/me/blocks'),
  block: (userId) => request('PUT', `/api/v1/me/blocks/${encodeURIComponent(userId)}`),
  unblock: (userId) => request('DELETE', `/api/v1/me/blocks/${encodeURIComponent(userId)}`),

  conversations: () => request('GET', '/api/v1/messenger/conversations'),
  createConversation: (body) => request('POST', '/api/v1/messenger/conversations', { body }),
  conversation: (id) => request('GET', conversationPath(id)),
  renameConversation: (id, title) => request('PATCH', conversationPath(id), { body: { title } }),
  addParticipants: (id, userIds) => request('POST', `${conversationPath(id)}/participants`, { body: { user_ids: userIds } }),
  removeParticipant: (id, userId) => request('DELETE', `${conversationPath(id)}/participants/${encodeURIComponent(userId)}`),
  messages: (id, query) => request('GET', `${conversationPath(id)}/messages`, { query }),
  settings: (id) => request('GET', `${conversationPath(id)}/settings`),
  updateSettings: (id, body) => request('PUT', `${conversationPath(id)}/settings`, { body }),
  searchMessages: (query) => request('GET', '/api/v1/messenger/search', { query }),
  editMessage: (id, messageId, content) => request('PATCH', messagePath(id, messageId), { body: { content } }),
  deleteMessage: (id, messageId) => request('DELETE', messagePath(id, messageId)),
  react: (id, messageId, emoji, on) => request(on ? 'PUT' : 'DELETE',
    `${messagePath(id, messageId)}/reactions/${encodeURIComponent(emoji)}`),

  notifications: (query) => request('GET', '/api/v1/me/notifications', { query }),
  notification: (id) => request('GET', `/api/v1/me/notifications/${encodeURIComponent(id)}`),
  notificationOpened: (id, how) => request('POST', `/api/v1/me/notifications/${encodeURIComponent(id)}/opened`, { body: { how } }),
  dismissNotification: (id) => request('DELETE', `/api/v1/me/notifications/${encodeURIComponent(id)}`),
  clearNotifications: () => request('DELETE', '/api/v1/me/notifications'),
  testPush: () => request('POST', '/api/v1/me/devices/test-push'),

  // Send later (body: {content, client_msg_id?, reply_to?, send_at}) and reminders.
  scheduleMessage: (id, body) => request('POST', `${conversationPath(id)}/messages`, { body }),
  scheduled: () => request('GET', '/api/v1/messenger/scheduled'),
  cancelScheduled: (id) => request('DELETE', `/api/v1/messenger/scheduled/${encodeURIComponent(id)}`),
  reminders: () => request('GET', '/api/v1/me/reminders'),
  createReminder: (messageId, remindAt) => request('POST', '/api/v1/me/reminders', { body: { message_id: messageId, remind_at: remindAt } }),
  cancelReminder: (id) => request('DELETE', `/api/v1/me/reminders/${encodeURIComponent(id)}`),
  announce: (body) => request('POST', '/api/v1/admin/announcements', { body }),
  announcement: (id) => request('GET', `/api/v1/admin/announcements/${encodeURIComponent(id)}`),

  adminStats: (days) => request('GET', '/api/v1/admin/stats', { query: { days } }),
  adminUsers: (q) => request('GET', '/api/v1/admin/users', { query: { q } }),
  adminUser: (id) => request('GET', `/api/v1/admin/users/${encodeURIComponent(id)}`),
  adminPushLog: (query) => request('GET', '/api/v1/admin/push-log', { query }),

  vapidPublicKey: () => request('GET', '/api/v1/messenger/push/vapid-public-key'),
  devices: () => request('GET', '/api/v1/messenger/devices'),
  registerDevice: (body) => request('POST', '/api/v1/messenger/devices/register', { body }),
  deleteDevice: (token) => request('DELETE', `/api/v1/messenger/devices/${encodeURIComponent(token)}`),
};
