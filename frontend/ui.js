// Drawing. User data only ever goes in through textContent or attributes, never as HTML.
// Lists are keyed and reconciled, so a redraw keeps focus, scroll position and unchanged nodes.

import {
  attachmentsNode, attachmentSummary, clearComposerFiles, pendingFilesNode, updateSendButton,
} from './attachments.js';
import { messageExtras } from './messageactions.js';
import { state } from './store.js';
import { conversationTitle, displayName, isBot, loadUser, otherParticipant, username } from './users.js';

export const $ = (id) => document.getElementById(id);

/** Builds an element. props: class, text, dataset, or any attribute (false/null/undefined: left out). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children.filter(Boolean));
  return node;
}

/** Makes parent's children exactly `nodes`, in order, moving only what is out of place. */
function reconcile(parent, nodes) {
  nodes.forEach((node, index) => {
    if (parent.children[index] !== node) parent.insertBefore(node, parent.children[index] ?? null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

/** Initials on a colour derived from `seed`; with `online` given, a presence dot too. */
/** A small "bot" mark beside a bot's name, so nobody takes a script for a person. */
export function botBadge(userId) {
  return isBot(userId) && el('span', { class: 'bot-badge', title: 'A bot: an account run by a script or a webhook', text: 'bot' });
}

export function avatar(name, seed, { online } = {}) {
  const initials = name.split(/\s+/).filter(Boolean).slice(0, 2)
    .map((word) => [...word][0]).join('').toUpperCase() || '?';
  const hue = [...String(seed)].reduce((hash, char) => (hash * 31 + char.codePointAt(0)) % 360, 7);
  const face = el('span', { class: 'avatar', 'aria-hidden': 'true', text: initials });
  face.style.setProperty('--hue', hue);
  if (online === undefined) return face;
  return el('span', { class: 'avatar-wrap' }, face,
    el('span', { class: 'presence', role: 'img', 'aria-label': online ? 'Online' : 'Offline', dataset: { online: String(online) } }));
}

// ---- Dates

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
const weekdayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'short' });
const shortDateFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
const DAY_MS = 86_400_000;

const dayKey = (date) => `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
const startOfDay = (date) => new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();

function daysAgo(date) {
  return Math.round((startOfDay(new Date()) - startOfDay(date)) / DAY_MS);
}

function dayLabel(date) {
  const ago = daysAgo(date);
  if (ago === 0) return 'Today';
  if (ago === 1) return 'Yesterday';
  return dayFormat.format(date);
}

function listTime(date) {
  const ago = daysAgo(date);
  if (ago === 0) return timeFormat.format(date);
  if (ago < 7) return weekdayFormat.format(date);
  return shortDateFormat.format(date);
}

// ---- Screens

export function showAuth(message = '') {
  $('main-view').hidden = true;
  $('auth-view').hidden = false;
  showAuthError(message);
  $('login-username').focus();
}

export function setAuthMode(registering) {
  $('display-name-field').hidden = !registering;
  $('login-submit').textContent = registering ? 'Create account' : 'Sign in';
  $('auth-subtitle').textContent = registering
    ? 'Create an account to start chatting.'
    : 'Sign in to pick up where you left off.';
  $('auth-switch-text').textContent = registering ? 'Already have an account?' : 'New here?';
  $('register-toggle').textContent = registering ? 'Sign in' : 'Create an account';
  $('login-password').autocomplete = registering ? 'new-password' : 'current-password';
  showAuthError('');
}

export function showAuthError(message) {
  $('auth-error').textContent = message;
  $('auth-error').hidden = !message;
}

export function setBusy(button, busy) {
  button.disabled = busy;
  button.setAttribute('aria-busy', String(busy));
}

export function showMain(user) {
  $('auth-view').hidden = true;
  $('main-view').hidden = false;
  $('me-name').textContent = user.display_name || user.username;
  $('me-avatar').replaceChildren(avatar(user.display_name || user.username, user.id));
  showChat(false);
}

/** Forgets everything drawn for the previous account. */
export function resetMain() {
  conversationNodes.clear();
  messageNodes.clear();
  shownConversation = null;
  $('conversation-list').replaceChildren();
  $('messages').replaceChildren();
  $('composer').value = '';
  clearComposerFiles();
  renderTyping();
  showComposerError('');
  setNotificationPrompt(false);
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
}

export function setConnectionStatus(status, { everOnline }) {
  const node = $('connection-status');
  node.dataset.state = status;
  node.textContent = { online: 'Online', offline: 'Offline' }[status] ?? (everOnline ? 'Reconnecting…' : 'Connecting…');
  $('offline-banner').hidden = status === 'online' || (status === 'connecting' && !everOnline);
}

export function setNotificationPrompt(visible, text = 'Get notified when a message arrives while you are away.') {
  $('notifications-banner').hidden = !visible;
  $('notifications-text').textContent = text;
}

// ---- Conversation list

const conversationNodes = new Map(); // conversation id -> <li>

const activityTime = (conversation) =>
  Date.parse(conversation.last_message?.created_at ?? conversation.created_at ?? '') || 0;

function typingNames(conversationId) {
  return [...(state.typing.get(conversationId)?.keys() ?? [])].map(displayName);
}

// The Announcements conversation (type "announcement"): the server's title, a megaphone, and
// no composer, since only admins post there (through /admin).
const isAnnouncements = (conversation) => conversation?.type === 'announcement';
const titleOf = (conversation) =>
  (isAnnouncements(conversation) ? conversation.title || 'Announcements' : conversationTitle(conversation));
const MEGAPHONE = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M3 11v2a1 1 0 0 0 1 1h3l6 4V6L7 10H4a1 1 0 0 0-1 1Z"/><path d="M16.5 8.5a5 5 0 0 1 0 7"/><path d="M19.5 5.5a9 9 0 0 1 0 13"/></svg>';

function megaphone() {
  const face = el('span', { class: 'avatar announcement-avatar', 'aria-hidden': 'true' });
  face.innerHTML = MEGAPHONE; // a constant: no server text
  return face;
}

function conversationAvatar(conversation, title) {
  if (isAnnouncements(conversation)) return megaphone();
  if (conversation.type === 'group') return avatar(title, conversation.id);
  const other = otherParticipant(conversation);
  if (other === state.me.id) return avatar(title, other);
  return avatar(title, other, { online: state.presence.get(other) === true });
}

function preview(conversation) {
  const last = conversation.last_message;
  if (!last) return 'No messages yet';
  let who = '';
  if (last.sender_id === state.me.id) who = 'You: ';
  else if (conversation.type === 'group') who = `${displayName(last.sender_id)}: `;
  return who + (last.content || attachmentSummary(last)).replace(/\s+/g, ' ');
}

function fillConversation(item, conversation) {
  const active = conversation.id === state.activeId;
  const unread = conversation.unread_count || 0;
  const typing = typingNames(conversation.id).length > 0;
  const title = titleOf(conversation);
  const last = conversation.last_message && new Date(conversation.last_message.created_at);
  item.classList.toggle('active', active);
  item.classList.toggle('has-unread', unread > 0);
  const button = item.firstElementChild;
  if (active) button.setAttribute('aria-current', 'true');
  else button.removeAttribute('aria-current');
  button.replaceChildren(
    conversationAvatar(conversation, title),
    el('span', { class: 'conversation-main' },
      el('span', { class: 'conversation-top' },
        el('span', { class: 'conversation-name', text: title }),
        last && el('time', { class: 'conversation-time', datetime: conversation.last_message.created_at, text: listTime(last) })),
      el('span', { class: 'conversation-bottom' },
        el('span', { class: `conversation-preview${typing ? ' typing' : ''}`, text: typing ? 'typing…' : preview(conversation) }),
        el('span', { class: 'unread', hidden: unread === 0, 'aria-hidden': 'true', text: unread > 99 ? '99+' : String(unread) }),
        unread > 0 && el('span', { class: 'visually-hidden', text: `${unread} unread` }))),
  );
}

export function renderConversationList() {
  const conversations = [...state.conversations.values()].sort((a, b) => activityTime(b) - activityTime(a));
  const nodes = conversations.map((conversation) => {
    if (!conversationNodes.has(conversation.id)) {
      conversationNodes.set(conversation.id, el('li', { class: 'conversation', dataset: { conversationId: conversation.id } },
        el('button', { type: 'button', class: 'conversation-btn' })));
    }
    const item = conversationNodes.get(conversation.id);
    fillConversation(item, conversation);
    return item;
  });
  for (const id of conversationNodes.keys()) {
    if (!state.conversations.has(id)) conversationNodes.delete(id);
  }
  reconcile($('conversation-list'), nodes);
  $('conversation-empty').hidden = conversations.length > 0;
  const unread = conversations.reduce((sum, conversation) => sum + (conversation.unread_count || 0), 0);
  document.title = unread ? `(${unread}) Messenger` : 'Messenger';
}

// ---- Chat

export function showChat(open) {
  $('chat-pane').hidden = !open;
  $('chat-empty').hidden = open;
  $('main-view').classList.toggle('chat-open', open);
}

function subtitle(conversation) {
  if (isAnnouncements(conversation)) return 'News from the admins';
  if (conversation.type === 'group') return `${conversation.participant_ids.length} members`;
  const other = otherParticipant(conversation);
  if (other === state.me.id) return 'Notes to yourself';
  const handle = username(other) && `@${username(other)}`;
  return state.presence.get(other) ? ['Online', handle].filter(Boolean).join(' · ') : handle;
}

export function renderChatHeader() {
  const conversation = state.conversations.get(state.activeId);
  if (!conversation) return;
  const title = titleOf(conversation);
  const readOnly = isAnnouncements(conversation);
  $('composer-form').hidden = readOnly;
  $('read-only-note').hidden = !readOnly;
  $('chat-title').textContent = title;
  $('chat-subtitle').textContent = subtitle(conversation);
  $('chat-avatar').replaceChildren(conversationAvatar(conversation, title));
}

/** level: "all" | "mentions" | "none", or null while the settings are not known (disabled). */
export function setNotifyLevel(level) {
  const select = $('notify-level');
  select.disabled = level === null;
  if (level !== null) select.value = level;
}

/** muted: true/false, or null while the settings are not known (the toggle is disabled). */
export function setMuted(muted) {
  const button = $('mute-toggle');
  button.disabled = muted === null;
  button.setAttribute('aria-pressed', String(Boolean(muted)));
  button.title = muted ? 'Notifications muted — click to unmute' : 'Mute notifications';
}

const messageNodes = new Map(); // key -> <li>, for the conversation on screen
let shownConversation = null;
const historyNode = el('li', { class: 'history-status' });
const CONTINUE_WITHIN_MS = 5 * 60_000;

const senderOf = (item) => item.sender_id ?? state.me.id; // outbox items are ours

function continues(previous, item) {
  return Boolean(previous) && senderOf(previous) === senderOf(item)
    && Date.parse(item.created_at) - Date.parse(previous.created_at) < CONTINUE_WITHIN_MS;
}

function historyStatus(held) {
  let text = '';
  if (!held?.loaded) text = held?.error ? 'Could not load messages. They will load when the connection is back.' : 'Loading messages…';
  else if (held.loadingOlder) text = 'Loading earlier messages…';
  else if (held.error) text = 'Could not load earlier messages. Scroll up to try again.';
  else if (!held.hasOlder) text = 'This is the beginning of the conversation.';
  historyNode.textContent = text;
  return historyNode;
}

/** "Seen" goes under our last message once another participant's read covers its seq. */
function seenState(conversation, held) {
  const reads = state.reads.get(conversation.id);
  const lastOwn = held?.list.findLast((message) => message.sender_id === state.me.id);
  if (!reads || !lastOwn) return null;
  const readers = [...reads].filter(([userId, seq]) => userId !== state.me.id && seq >= lastOwn.seq).map(([userId]) => userId);
  if (!readers.length) return null;
  const text = conversation.type === 'group' ? `Seen by ${readers.map(displayName).join(', ')}` : 'Seen';
  return { messageId: lastOwn.id, text };
}

// As the server reads them: an "@" not inside a word or an e-mail address, then a username's
// characters (a trailing "." or "-" may be punctuation instead).
const MENTION = /(?<![\p{L}\p{N}\p{M}_.+@-])@([A-Za-z0-9_.-]{1,64})/gu;

/** The content as text nodes, with each `@name` the server counted as a mention in a span. */
function contentWithMentions(message, conversation) {
  const mentions = Array.isArray(message.mentions) ? message.mentions : [];
  if (!mentions.length) return [message.content];
  const names = new Map(); // lower-cased username -> user id
  for (const id of mentions) {
    const name = username(id);
    if (name) names.set(name.toLowerCase(), id);
    else loadUser(id); // drawn again once known
  }
  const everyone = conversation.type === 'group'
    && conversation.participant_ids.every((id) => mentions.includes(id));
  const parts = [];
  let at = 0;
  for (const match of message.content.matchAll(MENTION)) {
    const token = match[1].toLowerCase();
    const name = [token, token.replace(/[.-]+$/, '')].find((candidate) => names.has(candidate)
      || (candidate === 'all' && everyone && !names.has('all')));
    if (!name) continue;
    const forMe = name === 'all' ? mentions.includes(state.me.id) : names.get(name) === state.me.id;
    const end = match.index + 1 + name.length;
    parts.push(message.content.slice(at, match.index),
      el('span', { class: `mention${forMe ? ' me' : ''}`, text: message.content.slice(match.index, end) }));
    at = end;
  }
  parts.push(message.content.slice(at));
  return parts.filter((part) => part !== '');
}

function messageNode(message, conversation) {
  const own = message.sender_id === state.me.id;
  const date = new Date(message.created_at);
  const mentionsMe = !own && Array.isArray(message.mentions) && message.mentions.includes(state.me.id);
  const deleted = Boolean(message.deleted_at);
  const extras = messageExtras(message, conversation); // reply quote, reactions, actions
  const files = attachmentsNode(message); // none once deleted
  return el('li', { class: `message ${own ? 'own' : 'other'}${mentionsMe ? ' mentions-me' : ''}${deleted ? ' deleted' : ''}`, dataset: { messageId: message.id, seq: message.seq, senderId: message.sender_id } },
    !own && conversation.type === 'group' && el('span', { class: 'sender' }, displayName(message.sender_id), botBadge(message.sender_id)),
    extras.quote,
    el('div', { class: `bubble${files ? ' has-files' : ''}` },
      files,
      // Files alone: no empty line of text under them.
      (deleted || message.content || !files)
        && el('p', { class: 'text' }, ...(deleted ? ['This message was deleted.'] : contentWithMentions(message, conversation))),
      el('span', { class: 'meta' }, extras.edited,
        el('time', { datetime: message.created_at, title: fullFormat.format(date), text: timeFormat.format(date) }))),
    ...extras.after);
}

function pendingNode(item) {
  const failed = item.status === 'failed';
  const action = (name, label) => el('button', { type: 'button', class: `link-btn ${name}`, dataset: { action: name, clientMsgId: item.client_msg_id }, text: label });
  return el('li', { class: `message own ${item.status}`, dataset: { clientMsgId: item.client_msg_id } },
    el('div', { class: 'bubble' },
      (item.content || !item.files?.length) && el('p', { class: 'text', text: item.content }),
      pendingFilesNode(item),
      el('span', { class: 'meta', text: failed ? 'Not sent' : 'Sending…' })),
    failed && el('div', { class: 'failed-actions' },
      el('span', { class: 'failed-reason', text: item.error || 'Not sent' }),
      action('retry', 'Retry'),
      action('discard', 'Discard')));
}

/**
 * Draws the open conversation: confirmed messages by seq, then our pending ones.
 * prepended: older history was added on top, so keep what the reader was looking at in place;
 * otherwise follow new messages only if the reader was already at the bottom.
 */
export function renderMessages({ prepended = false } = {}) {
  const list = $('messages');
  const id = state.activeId;
  if (shownConversation !== id) {
    messageNodes.clear();
    shownConversation = id;
    list.replaceChildren();
  }
  const conversation = state.conversations.get(id);
  if (!conversation) return;
  const held = state.windows.get(id);
  const fromBottom = list.scrollHeight - list.scrollTop;
  const atBottom = fromBottom - list.clientHeight < 120;

  const used = new Set();
  const keep = (key, build) => {
    used.add(key);
    if (!messageNodes.has(key)) messageNodes.set(key, build());
    return messageNodes.get(key);
  };
  const nodes = [historyStatus(held)];
  const seen = seenState(conversation, held);
  const pending = state.outbox.filter((item) => item.conversation_id === id);
  let previous = null;
  let lastDay = null;
  for (const item of [...(held?.list ?? []), ...pending]) {
    const date = new Date(item.created_at);
    if (dayKey(date) !== lastDay) {
      lastDay = dayKey(date);
      nodes.push(keep(`day:${lastDay}`, () => el('li', { class: 'day' }, el('span', { text: dayLabel(date) }))));
      previous = null;
    }
    const node = item.seq === undefined
      ? keep(`pending:${item.client_msg_id}:${item.status}:${item.error ?? ''}`, () => pendingNode(item))
      // (our role is in the key: it decides which actions a message offers)
      : keep(`message:${item.id}:${item.version ?? 0}:${conversation.my_role ?? ''}`, () => messageNode(item, conversation));
    node.classList.toggle('continued', continues(previous, item));
    nodes.push(node);
    if (seen && item.id === seen.messageId) {
      nodes.push(keep(`seen:${seen.text}`, () => el('li', { class: 'seen', text: seen.text })));
    }
    previous = item;
  }
  reconcile(list, nodes);
  for (const key of messageNodes.keys()) {
    if (!used.has(key)) messageNodes.delete(key);
  }
  if (prepended) list.scrollTop = list.scrollHeight - fromBottom;
  else if (atBottom) list.scrollTop = list.scrollHeight;
}

/** Drops cached message nodes so names that were placeholders are drawn again. */
export function forgetMessageNodes() {
  messageNodes.clear();
}

export function scrollToBottom() {
  $('messages').scrollTop = $('messages').scrollHeight;
}

export function renderTyping() {
  const names = state.activeId ? typingNames(state.activeId) : [];
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = 'Several people are typing…';
  const node = $('typing-indicator');
  node.classList.toggle('active', Boolean(text));
  node.replaceChildren(...(text ? [el('span', { class: 'typing-dots', 'aria-hidden': 'true' }, el('i'), el('i'), el('i')), el('span', { text })] : []));
}

let composerErrorTimer;

export function showComposerError(message) {
  const node = $('composer-error');
  node.textContent = message;
  node.hidden = !message;
  clearTimeout(composerErrorTimer);
  if (message) composerErrorTimer = setTimeout(() => { node.hidden = true; }, 8000);
}

/** Grows the composer with its text, up to a limit after which it scrolls. */
export function fitComposer() {
  const composer = $('composer');
  composer.style.height = 'auto';
  composer.style.height = `${Math.min(composer.scrollHeight, 160)}px`;
  updateSendButton();
}
