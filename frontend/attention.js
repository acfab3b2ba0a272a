// Whether the person is looking at this tab: 'active' while it is shown and was touched
// (pointer, key, wheel, scroll, touch, focus) within the idle time, 'idle' otherwise. The
// socket reports it to the server, which pushes to the person's other devices only while
// none of their sockets is active: a tab left open in the background lets the phone ring.

// localStorage key overriding the idle time in milliseconds (browser tests make it short);
// read once, at load.
export const IDLE_AFTER_KEY = 'messenger.idleAfterMs';
const IDLE_AFTER_MS = 60_000;
const TOUCHES = ['pointerdown', 'pointermove', 'keydown', 'wheel', 'scroll', 'touchstart', 'focus'];

function idleAfterMs() {
  try {
    const value = Number(localStorage.getItem(IDLE_AFTER_KEY));
    if (Number.isFinite(value) && value > 0) return value;
  } catch {
    // storage unavailable: the default
  }
  return IDLE_AFTER_MS;
}

class Attention {
  constructor(idleMs) {
    this.idleMs = idleMs;
    this.listeners = new Set();
    this.touchedAt = Date.now();
    this.state = document.visibilityState === 'visible' ? 'active' : 'idle';
    this.timer = null;
    // A touch only notes the time (pointermove fires often); the timer looks at it when due.
    const touched = () => {
      this.touchedAt = Date.now();
      if (this.state === 'idle' && document.visibilityState === 'visible') this.#set('active');
    };
    for (const name of TOUCHES) window.addEventListener(name, touched, { capture: true, passive: true });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') touched();
      else this.#set('idle');
    });
    if (this.state === 'active') this.#arm(this.idleMs);
  }

  /** Calls listener(state) on every change; returns the function that stops it. */
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  #arm(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.#due(), delay);
  }

  #due() {
    const quiet = Date.now() - this.touchedAt;
    if (quiet >= this.idleMs) this.#set('idle');
    else this.#arm(this.idleMs - quiet);
  }

  #set(state) {
    if (state === 'active') this.#arm(this.idleMs);
    else clearTimeout(this.timer);
    if (state === this.state) return;
    this.state = state;
    for (const listener of this.listeners) listener(state);
  }
}

export const attention = new Attention(idleAfterMs());
