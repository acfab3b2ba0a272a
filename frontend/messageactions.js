// What can be done to a message once sent: edit (own), delete (own, or any in a group we
// own or administer), reply (quoted above the composer, and in the message), react (a few emoji;
// counts, toggled by a click, who on hover). Changes arrive as `message.updated` frames;
// after a reconnect each loaded conversation asks for what changed since its cursor.
//
// Hooks for browser tests:
//   on li.message: .message-actions > button[data-msg-action="reply|react|edit|delete|remind"]
//   (remind: see reminders.js),
//   .reaction-picker > button[data-emoji], .reactions > button.reaction[data-emoji][aria-pressed]
//   (text "👍 2", title: who), blockquote.quote[data-reply-to] (the quoted message), .edited,
//   li.message.deleted; above the composer #composer-context (.replying / .editing) with
//   #composer-context-cancel.

import { api } from './api.js';
import { toggleReminderMenu } from './reminders.js';
import { state, updateMessage } from './store.js';
import { displayName } from './users.js';
import { $, el } from './ui.js';

const PICKER = ['👍', '❤️', '😂', '🎉', '😮', '😢'];
const CHANGES_PAGE = 200;
const QUOTE_CHARS = 120;

let draw = () => {};
let showError = () => {};
// conversation id -> {mode: 'reply' | 'edit', message}
const context = new Map();

/** The parts a message node gets besides its text: {quote, edited, after: [nodes]}. */
export function messageExtras(message, conversation) {
  const own = message.sender_id === state.me.id;
  const deleted = Boolean(message.deleted_at);
  return {
    quote: message.reply_to ? quoteNode(message.reply_to, conversation.id) : null,
    edited: message.edited_at && !deleted
      ? el('span', { class: 'edited', title: new Date(message.edited_at).toLocaleString(), text: 'edited ' })
      : null,
    after: deleted ? [] : [reactionsNode(message), actionsNode(message, conversation, own)],
  };
}

function quoteNode(messageId, conversationId) {
  const quoted = state.windows.get(conversationId)?.list.find((m) => m.id === messageId);
  let text = 'Earlier message';
  if (quoted?.deleted_at) text = 'This message was deleted.';
  else if (quoted) text = quoted.content.length > QUOTE_CHARS ? `${quoted.content.slice(0, QUOTE_CHARS)}…` : quoted.content;
  return el('blockquote', { class: 'quote', dataset: { replyTo: messageId } },
    quoted && el('span', { class: 'quote-sender', text: displayName(quoted.sender_id) }),
    el('span', { class: 'quote-text', text }));
}

function reactionsNode(message) {
  const entries = Object.entries(message.reactions ?? {});
  if (!entries.length) return null;
  return el('div', { class: 'reactions' }, ...entries.map(([emoji, users]) => el('button', {
    type: 'button',
    class: 'reaction',
    dataset: { emoji },
    'aria-pressed': String(users.includes(state.me.id)),
    title: users.map(displayName).join(', '),
    text: `${emoji} ${users.length}`,
  })));
}

function actionsNode(message, conversation, own) {
  const admin = conversation.type === 'group' && ['owner', 'admin'].includes(conversation.my_role);
  const readOnly = conversation.type === 'announcement'; // nobody writes in it: a reminder only
  const action = (name, label) => el('button', { type: 'button', class: 'link-btn', dataset: { msgAction: name }, text: label });
  return el('div', { class: 'message-actions' },
    !readOnly && action('reply', 'Reply'),
    !readOnly && action('react', 'React'),
    !readOnly && own && action('edit', 'Edit'),
    !readOnly && (own || admin) && action('delete', 'Delete'),
    action('remind', 'Remind me'));
}

// ---- Acting

function findMessage(id) {
  return state.windows.get(state.activeId)?.list.find((m) => m.id === id);
}

async function change(promise) {
  try {
    const message = await promise;
    if (updateMessage(message)) draw();
  } catch (error) {
    showError(error.message);
  }
}

function toggleReaction(message, emoji) {
  const mine = (message.reactions?.[emoji] ?? []).includes(state.me.id);
  change(api.react(message.conversation_id, message.id, emoji, !mine));
}

function openPicker(node, message) {
  const open = node.querySelector('.reaction-picker');
  if (open) {
    open.remove();
    return;
  }
  node.append(el('div', { class: 'reaction-picker', role: 'group', 'aria-label': 'React' },
    ...PICKER.map((emoji) => el('button', { type: 'button', dataset: { emoji, pick: '1' }, text: emoji }))));
}

function onClick(event) {
  const node = event.target.closest('li.message[data-message-id]');
  const message = node && findMessage(node.dataset.messageId);
  if (!message) return;
  const reaction = event.target.closest('button[data-emoji]');
  if (reaction) {
    if (reaction.dataset.pick) reaction.closest('.reaction-picker')?.remove();
    toggleReaction(message, reaction.dataset.emoji);
    return;
  }
  const action = event.target.closest('button[data-msg-action]')?.dataset.msgAction;
  if (action === 'react') openPicker(node, message);
  else if (action === 'reply' || action === 'edit') start(action, message);
  else if (action === 'remind') toggleReminderMenu(node, message);
  else if (action === 'delete' && confirm('Delete this message for everyone?')) {
    change(api.deleteMessage(message.conversation_id, message.id));
  }
}

function start(mode, message) {
  context.set(message.conversation_id, { mode, message });
  if (mode === 'edit') $('composer').value = message.content;
  showContext();
  $('composer').focus();
}

function cancel() {
  const current = context.get(state.activeId);
  context.delete(state.activeId);
  if (current?.mode === 'edit') $('composer').value = '';
  showContext();
}

/** Draws the reply or edit above the composer for the open conversation. */
export function showContext() {
  const box = $('composer-context');
  const current = context.get(state.activeId);
  box.hidden = !current;
  if (!current) return;
  box.className = `composer-context ${current.mode === 'edit' ? 'editing' : 'replying'}`;
  const label = current.mode === 'edit' ? 'Editing message' : `Replying to ${displayName(current.message.sender_id)}`;
  box.querySelector('.composer-context-label').textContent = label;
  box.querySelector('.composer-context-text').textContent = current.message.content.slice(0, QUOTE_CHARS);
}

/** The message the composer's text replies to, left in place (a send that may fail). */
export function replyingTo(conversationId) {
  const current = context.get(conversationId);
  return current?.mode === 'reply' ? current.message.id : null;
}

/** The message the composer's text replies to, taken (once) for the send. */
export function takeReplyTo(conversationId) {
  const current = context.get(conversationId);
  if (current?.mode !== 'reply') return null;
  context.delete(conversationId);
  showContext();
  return current.message.id;
}

/** When the composer edits a message: saves the text as its content; whether it did. */
export function submitEdit(conversationId, content) {
  const current = context.get(conversationId);
  if (current?.mode !== 'edit') return false;
  context.delete(conversationId);
  showContext();
  $('composer').value = '';
  if (content !== current.message.content) {
    change(api.editMessage(conversationId, current.message.id, content));
  }
  return true;
}

/** What changed in a loaded conversation since its cursor (edits, deletions, reactions). */
export async function catchUpChanges(conversationId) {
  const held = state.windows.get(conversationId);
  if (!held?.loaded || held.changeCursor == null) return;
  const me = state.me;
  let more = true;
  while (more) {
    const page = await api.messages(conversationId, { changed_after: held.changeCursor, limit: CHANGES_PAGE });
    if (state.me !== me) return;
    page.messages.forEach(updateMessage);
    held.changeCursor = page.cursor;
    more = page.has_more;
  }
  draw();
}

export function initMessageActions({ render, onError }) {
  draw = render;
  showError = onError;
  $('messages').addEventListener('click', onClick);
  const box = el('div', { id: 'composer-context', class: 'composer-context', hidden: true },
    el('span', { class: 'composer-context-label' }),
    el('span', { class: 'composer-context-text' }),
    el('button', { type: 'button', id: 'composer-context-cancel', class: 'link-btn', text: 'Cancel' }));
  $('composer-form').before(box);
  $('composer-context-cancel').addEventListener('click', cancel);
}
