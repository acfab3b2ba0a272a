// Client state: conversations, the message windows of opened conversations, the outbox of
// unsent messages and what others have read. Plain data plus the updates that must stay
// consistent (dedupe by message id and by seq); app.js does the I/O, ui.js the drawing.

export const state = {};

export function resetState(me = null) {
  for (const timers of state.typing?.values() ?? []) {
    for (const timer of timers.values()) clearTimeout(timer);
  }
  Object.assign(state, {
    me,
    users: new Map(), // user id -> {id, username, display_name}
    userRequests: new Map(), // user id -> in-flight profile request
    presence: new Map(), // user id -> online?
    conversations: new Map(), // id -> conversation as the server lists it, kept current
    windows: new Map(), // conversation id -> MessageWindow, for conversations opened
    reads: new Map(), // conversation id -> Map(user id -> highest seq that user read)
    readSent: new Map(), // conversation id -> highest seq we reported read
    typing: new Map(), // conversation id -> Map(user id -> timer that hides the indicator)
    settings: new Map(), // conversation id -> Promise of {muted, mute_until, push_enabled, notify}
    drafts: new Map(), // conversation id -> composer text not sent yet
    outbox: [], // [{client_msg_id, conversation_id, content, created_at, status: 'pending'|'failed', error?}]
    activeId: null,
  });
  if (me) state.users.set(me.id, me);
}
resetState();

/**
 * The messages held for one conversation, sorted by seq. Once loaded, a window is kept
 * contiguous from its oldest message up to the newest one, so paging back asks for
 * before_seq=oldest and catching up asks for after_seq=contiguousSeq.
 */
export class MessageWindow {
  constructor() {
    this.list = [];
    this.ids = new Set();
    this.seqs = new Set();
    this.loaded = false;
    this.loading = null; // the first page's request, while in flight
    this.loadingOlder = false;
    this.error = null;
  }

  /** Adds a message unless its id or its seq is already here; returns whether it was added. */
  add(message) {
    if (this.ids.has(message.id) || this.seqs.has(message.seq)) return false;
    this.ids.add(message.id);
    this.seqs.add(message.seq);
    let index = this.list.length;
    while (index > 0 && this.list[index - 1].seq > message.seq) index -= 1;
    this.list.splice(index, 0, message);
    return true;
  }

  get oldestSeq() {
    return this.list[0]?.seq ?? null;
  }

  get newestSeq() {
    return this.list.at(-1)?.seq ?? 0;
  }

  /** The highest seq with nothing missing between it and the oldest message held. */
  get contiguousSeq() {
    let seq = this.oldestSeq ?? 0;
    while (this.seqs.has(seq + 1)) seq += 1;
    return seq;
  }

  /** Seqs start at 1 with no gaps, so anything above 1 means there is history to fetch. */
  get hasOlder() {
    return this.list.length > 0 && this.list[0].seq > 1;
  }
}

export function windowFor(conversationId) {
  if (!state.windows.has(conversationId)) state.windows.set(conversationId, new MessageWindow());
  return state.windows.get(conversationId);
}

/**
 * Records a message from the server (ack, live frame or fetch). Loaded windows store it;
 * for the others only last_message matters. Returns whether the message is new to us.
 */
export function addMessage(message) {
  const conversation = state.conversations.get(message.conversation_id);
  const held = state.windows.get(message.conversation_id);
  const lastSeq = conversation?.last_message?.seq ?? 0;
  const isNew = held?.loaded ? held.add(message) : message.seq > lastSeq;
  if (conversation && message.seq > lastSeq) conversation.last_message = message;
  if (message.sender_id === state.me?.id && message.client_msg_id) removeFromOutbox(message.client_msg_id);
  return isNew;
}

/**
 * A message changed (edited, deleted, reacted to): replaces the one held, with a new
 * `version` so it is drawn again. Returns whether anything on screen may differ.
 */
export function updateMessage(message) {
  const conversation = state.conversations.get(message.conversation_id);
  if (conversation?.last_message?.id === message.id) conversation.last_message = message;
  const held = state.windows.get(message.conversation_id);
  const index = held ? held.list.findIndex((m) => m.id === message.id) : -1;
  if (index < 0) return Boolean(conversation);
  held.list[index] = { ...message, version: (held.list[index].version ?? 0) + 1 };
  return true;
}

/**
 * A conversation we are no longer in (removed, or we left): everything held for it goes,
 * unsent messages too (the server would refuse them).
 */
export function forgetConversation(conversationId) {
  for (const timer of state.typing.get(conversationId)?.values() ?? []) clearTimeout(timer);
  for (const map of [state.conversations, state.windows, state.reads, state.readSent, state.typing,
    state.settings, state.drafts]) map.delete(conversationId);
  const before = state.outbox.length;
  state.outbox = state.outbox.filter((item) => item.conversation_id !== conversationId);
  if (state.outbox.length !== before) saveOutbox();
}

/** Per-user key: a pending message must never be sent under another account. */
const outboxKey = () => `messenger.outbox.${state.me.id}`;

export function loadOutbox() {
  try {
    state.outbox = JSON.parse(localStorage.getItem(outboxKey())) ?? [];
  } catch {
    state.outbox = [];
  }
}

export function saveOutbox() {
  if (state.outbox.length) localStorage.setItem(outboxKey(), JSON.stringify(state.outbox));
  else localStorage.removeItem(outboxKey());
}

export function clearOutbox() {
  state.outbox = [];
  saveOutbox();
}

export function findOutboxItem(clientMsgId) {
  return state.outbox.find((item) => item.client_msg_id === clientMsgId);
}

export function removeFromOutbox(clientMsgId) {
  const before = state.outbox.length;
  state.outbox = state.outbox.filter((item) => item.client_msg_id !== clientMsgId);
  if (state.outbox.length !== before) saveOutbox();
}

/** Our role in a conversation (owner, admin, member), from an answer listing its participants. */
export function recordRole(conversationId, participants) {
  const conversation = state.conversations.get(conversationId);
  const mine = participants?.find((p) => p.user_id === state.me?.id);
  if (conversation && mine) conversation.my_role = mine.role;
}

/** Highest seq each other participant has read, from `read` frames seen this session. */
export function recordRead(conversationId, userId, seq) {
  if (!state.reads.has(conversationId)) state.reads.set(conversationId, new Map());
  const reads = state.reads.get(conversationId);
  reads.set(userId, Math.max(seq, reads.get(userId) ?? 0));
}

export function isMuted(settings) {
  const until = settings.mute_until ? Date.parse(settings.mute_until) : 0;
  return Boolean(settings.muted) || until > Date.now();
}
