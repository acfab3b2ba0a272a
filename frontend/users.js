// Public profiles, fetched once per session on first use, and the names built from them.

import { api } from './api.js';
import { state } from './store.js';

let changed = () => {};

/** Called after a profile arrives, so names drawn as placeholders can be redrawn. */
export function onUsersChanged(handler) {
  changed = handler;
}

export function rememberUser(user) {
  state.users.set(user.id, user);
}

export function loadUser(id) {
  if (state.users.has(id)) return Promise.resolve(state.users.get(id));
  if (!state.userRequests.has(id)) {
    const request = api.user(id)
      .then((user) => {
        rememberUser(user);
        changed();
        return user;
      })
      .catch((error) => {
        // Asking again only helps if we were offline; a 404 would stay a 404.
        if (error.status === 0) state.userRequests.delete(id);
        return null;
      });
    state.userRequests.set(id, request);
  }
  return state.userRequests.get(id);
}

export function displayName(id) {
  const user = state.users.get(id);
  if (user) return user.display_name || user.username;
  loadUser(id);
  return '…';
}

/** Whether the user is a bot (a script's account or a webhook's); false until loaded. */
export function isBot(id) {
  return Boolean(state.users.get(id)?.is_bot);
}

export function username(id) {
  return state.users.get(id)?.username ?? '';
}

/** The other person in a direct chat (yourself, for a chat with only you in it). */
export function otherParticipant(conversation) {
  return conversation.participant_ids.find((id) => id !== state.me.id) ?? state.me.id;
}

export function conversationTitle(conversation) {
  if (conversation.type === 'group') {
    if (conversation.title) return conversation.title;
    const others = conversation.participant_ids.filter((id) => id !== state.me.id);
    return others.map(displayName).join(', ') || 'Group';
  }
  const other = otherParticipant(conversation);
  return other === state.me.id ? `${displayName(other)} (you)` : displayName(other);
}
