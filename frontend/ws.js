// The realtime socket: one connection at a time, a heartbeat that notices dead links,
// and reconnection with capped exponential backoff plus jitter.

const PING_EVERY_MS = 25_000;
const PONG_TIMEOUT_MS = 10_000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const CLOSE_UNAUTHORIZED = 4401;

export class Connection {
  /**
   * getToken() returns the current access token.
   * handlers: onOpen(), onFrame(frame), onStatus('connecting'|'online'|'offline', {everOnline}),
   * onUnauthorized() (close code 4401: stop, the token is bad), onConnectFailed() (closed before opening).
   */
  constructor(getToken, handlers) {
    this.getToken = getToken;
    this.handlers = handlers;
    this.socket = null;
    this.stopped = true;
    this.attempt = 0;
    this.everOnline = false;
  }

  start() {
    this.stopped = false;
    this.#connect();
  }

  stop() {
    this.stopped = true;
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

  /** Skips the backoff wait, e.g. when the browser reports the network is back. */
  reconnectNow() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.retryTimer);
    this.#connect();
  }

  /** Gives up on the current socket at once instead of waiting for TCP to notice it is gone. */
  drop() {
    if (this.socket) this.#closed(this.socket, 1006);
  }

  #connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/ws?token=${encodeURIComponent(this.getToken() ?? '')}`;
    const socket = new WebSocket(url);
    this.socket = socket;
    this.opened = false;
    this.#status('connecting');

    socket.onopen = () => {
      this.opened = true;
      this.everOnline = true;
      this.attempt = 0;
      this.lastFrameAt = Date.now();
      this.#status('online');
      this.pingTimer = setInterval(() => this.#ping(), PING_EVERY_MS);
      this.handlers.onOpen();
    };
    socket.onmessage = (event) => {
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame?.type && frame.type !== 'pong') this.handlers.onFrame(frame);
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

  #closed(socket, code) {
    if (socket !== this.socket) return;
    const wasOpen = this.opened;
    this.#teardown();
    if (code === CLOSE_UNAUTHORIZED) {
      this.stopped = true;
      this.#status('offline');
      this.handlers.onUnauthorized();
      return;
    }
    if (this.stopped) return;
    if (!wasOpen) this.handlers.onConnectFailed?.();
    this.#scheduleRetry();
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
