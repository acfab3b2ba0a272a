// REST client for /api/v1: bearer auth, JSON in and out, failures as ApiError.

const TOKEN_KEY = 'messenger.token';
const USER_KEY = 'messenger.user';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0 when the server could not be reached
    this.code = code;
  }
}

// The access token and the signed-in profile live in localStorage so a reload stays signed in
// (and the profile lets the app start while the server is unreachable).
export const session = {
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  get user() {
    try {
      return JSON.parse(localStorage.getItem(USER_KEY));
    } catch {
      return null;
    }
  },
  save(token, user) {
    localStorage.setItem(TOKEN_KEY, token);
    this.saveUser(user);
  },
  saveUser(user) {
    localStorage.setItem(USER_KEY, JSON.stringify(user));
  },
  clear() {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(USER_KEY);
  },
};

let unauthorized = () => {};

/** Called when an authenticated request answers 401: the token is no longer valid. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

async function request(method, path, { body, query, auth = true } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null) url.searchParams.set(key, value);
  }
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const token = session.token;
  if (auth && token) headers.Authorization = `Bearer ${token}`;

  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, 'network_error', 'Cannot reach the server. Check your connection.');
  }
  const data = await response.json().catch(() => null);
  if (response.ok) return data;

  const error = data?.error ?? {};
  if (response.status === 401 && auth && token) unauthorized();
  throw new ApiError(response.status, error.code ?? `http_${response.status}`,
    error.message ?? `The server answered ${response.status}.`);
}

const conversationPath = (id) => `/api/v1/messenger/conversations/${encodeURIComponent(id)}`;

export const api = {
  register: (username, password, displayName) => request('POST', '/api/v1/auth/register', {
    body: displayName ? { username, password, display_name: displayName } : { username, password },
    auth: false,
  }),
  login: (username, password) => request('POST', '/api/v1/auth/login', { body: { username, password }, auth: false }),
  me: () => request('GET', '/api/v1/me'),

  searchUsers: (prefix) => request('GET', '/api/v1/users', { query: { query: prefix } }),
  user: (id) => request('GET', `/api/v1/users/${encodeURIComponent(id)}`),

  conversations: () => request('GET', '/api/v1/messenger/conversations'),
  createConversation: (body) => request('POST', '/api/v1/messenger/conversations', { body }),
  messages: (id, query) => request('GET', `${conversationPath(id)}/messages`, { query }),
  settings: (id) => request('GET', `${conversationPath(id)}/settings`),
  updateSettings: (id, body) => request('PUT', `${conversationPath(id)}/settings`, { body }),

  vapidPublicKey: () => request('GET', '/api/v1/messenger/push/vapid-public-key'),
  registerDevice: (body) => request('POST', '/api/v1/messenger/devices/register', { body }),
  deleteDevice: (token) => request('DELETE', `/api/v1/messenger/devices/${encodeURIComponent(token)}`),
};
