// The realtime socket: one connection at a time, authenticated by its first frame (the token
// never goes in the URL), a heartbeat that notices dead links, and reconnection with capped
// exponential backoff plus jitter. It tells the server whether the person is looking
// (attention.js): the server pushes to their other devices only while no socket is active.

import { attention } from './attention.js';

const PING_EVERY_MS = 25_000;
const PONG_TIMEOUT_MS = 10_000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const CLOSE_UNAUTHORIZED = 4401;
// The user opened more sockets than the server allows and this was the oldest: retrying
// on a timer would close another tab's, so it waits for reconnectNow() (the tab shown again).
const CLOSE_TOO_MANY_SOCKETS = 4429;

// Answers to auth frames are this module's business. A renewal the server refuses leaves the
// socket on its previous token: when that expires the server closes it (4401) and the usual
// refresh-and-reconnect follows.
const isAuthAnswer = (frame) => frame.type === 'auth.ok' || (frame.type === 'error' && frame.code === 'invalid_token');

export class Connection {
  /**
   * auth.token() resolves to a valid access token; auth.refresh(staleToken) to a new one (both
   * reject with an error whose status 401 means the session is over: the socket then stops).
   * handlers: onOpen() (the server accepted the token), onFrame(frame),
   * onStatus('connecting'|'online'|'offline', {everOnline}).
   */
  constructor(auth, handlers) {
    this.auth = auth;
    this.handlers = handlers;
    this.socket = null;
    this.token = null; // the token this socket authenticates with
    this.stopped = true;
    this.starting = false; // fetching a token before opening a socket
    this.generation = 0;
    this.attempt = 0;
    this.everOnline = false;
  }

  start() {
    this.stopped = false;
    this.unwatch ??= attention.subscribe((state) => this.send({ type: 'activity', state }));
    this.#connect();
  }

  stop() {
    this.unwatch?.();
    this.unwatch = null;
    this.stopped = true;
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.#teardown();
  }

  get isOpen() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Sends a frame if the socket is open; returns whether it was sent. */
  send(frame) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /** A renewed access token: the open socket switches to it before the old one expires. */
  authenticate(token) {
    this.token = token;
    this.send({ type: 'auth', access_token: token });
  }

  /** Skips the backoff wait, e.g. when the browser reports the network is back. */
  reconnectNow() {
    if (this.stopped || this.socket || this.starting) return;
    clearTimeout(this.retryTimer);
    this.#connect();
  }

  /** Gives up on the current socket at once instead of waiting for TCP to notice it is gone. */
  drop() {
    if (this.socket) this.#closed(this.socket, 1006);
  }

  async #connect() {
    const generation = ++this.generation;
    this.starting = true;
    this.#status('connecting');
    try {
      this.token = await this.auth.token();
      if (!this.token) throw Object.assign(new Error('signed out'), { status: 401 });
    } catch (error) {
      if (generation !== this.generation) return;
      this.starting = false;
      this.#authFailed(error);
      return;
    }
    if (generation !== this.generation) return;
    this.starting = false;
    this.#open();
  }

  #open() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${location.host}/ws`);
    this.socket = socket;
    this.accepted = false;

    socket.onopen = () => {
      this.lastFrameAt = Date.now();
      // The first frame authenticates; the server's auth.ok (any frame) says it was accepted.
      this.send({ type: 'auth', access_token: this.token });
      this.pingTimer = setInterval(() => this.#ping(), PING_EVERY_MS);
    };
    socket.onmessage = (event) => {
      this.lastFrameAt = Date.now();
      if (!this.accepted) this.#accepted();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!frame?.type || frame.type === 'pong' || isAuthAnswer(frame)) return;
      this.handlers.onFrame(frame);
    };
    // An error event is always followed by close, which does the work.
    socket.onclose = (event) => this.#closed(socket, event.code);
  }

  #ping() {
    const sentAt = Date.now();
    if (!this.send({ type: 'ping' })) return;
    clearTimeout(this.pongTimer);
    // Any frame counts as a sign of life, not only the pong.
    this.pongTimer = setTimeout(() => {
      if (this.lastFrameAt < sentAt) this.drop();
    }, PONG_TIMEOUT_MS);
  }

  #accepted() {
    this.accepted = true;
    this.everOnline = true;
    this.attempt = 0;
    this.#status('online');
    // A new socket counts as active until told otherwise: say so again after each connect.
    this.send({ type: 'activity', state: attention.state });
    this.handlers.onOpen();
  }

  #closed(socket, code) {
    if (socket !== this.socket) return;
    const wasAccepted = this.accepted;
    this.#teardown();
    if (this.stopped) return;
    if (code === CLOSE_UNAUTHORIZED) {
      this.#reauthenticate(wasAccepted);
      return;
    }
    if (code === CLOSE_TOO_MANY_SOCKETS) {
      this.#status('offline');
      return;
    }
    this.#scheduleRetry();
  }

  /**
   * 4401: the token expired or the session was revoked. One refresh tells them apart: it fails
   * with 401 when the session is over. A socket refused before it was ever accepted waits out
   * the backoff, so a server that keeps refusing is not hammered.
   */
  async #reauthenticate(wasAccepted) {
    const generation = ++this.generation;
    this.starting = true;
    this.#status('connecting');
    try {
      this.token = await this.auth.refresh(this.token);
    } catch (error) {
      if (generation !== this.generation) return;
      this.starting = false;
      this.#authFailed(error);
      return;
    }
    if (generation !== this.generation) return;
    this.starting = false;
    if (wasAccepted) this.#open();
    else this.#scheduleRetry();
  }

  #authFailed(error) {
    if (error?.status === 401) {
      // The session is over (the api module signs out): nothing to reconnect with.
      this.stopped = true;
      this.#status('offline');
      return;
    }
    this.#scheduleRetry(); // offline or the server is busy: try again later
  }

  #scheduleRetry() {
    // "Equal jitter": half the exponential step is fixed, half random, so clients spread out
    // after a server restart but none retries immediately in a loop.
    const step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = step / 2 + Math.random() * (step / 2);
    this.attempt += 1;
    this.#status('offline');
    this.retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #teardown() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) socket.close();
  }

  #status(state) {
    this.handlers.onStatus(state, { everOnline: this.everOnline });
  }
}
