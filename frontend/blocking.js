// Blocking the other person of a direct conversation, from its header. A blocked user
// cannot message us there (the server refuses their sends) nor see our presence.
//
// Hooks for browser tests: #block-toggle (shown in direct conversations only), text
// "Block" / "Unblock", aria-pressed="true" while blocked.

import { api } from './api.js';
import { state } from './store.js';
import { $ } from './ui.js';
import { displayName, otherParticipant } from './users.js';

let blocked = null; // {me, ids: Promise of Set of user ids we blocked}, once per session
let busy = false;
let showError = () => {};

/** Promise of the Set of user ids we blocked (asked once per session, kept current here). */
export function blockedIds() {
  if (blocked?.me !== state.me) {
    const entry = {
      me: state.me,
      ids: api.blocks().then(({ blocks }) => new Set(blocks.map((b) => b.user_id))),
    };
    entry.ids.catch(() => {
      if (blocked === entry) blocked = null; // ask again next time
    });
    blocked = entry;
  }
  return blocked.ids;
}

/** The person the open conversation's block button is about, or null. */
function target() {
  const conversation = state.conversations.get(state.activeId);
  if (conversation?.type !== 'direct') return null;
  const other = otherParticipant(conversation);
  return other === state.me.id ? null : other;
}

function draw(userId, isBlocked) {
  const button = $('block-toggle');
  button.hidden = userId === null;
  button.disabled = isBlocked === null;
  button.setAttribute('aria-pressed', String(Boolean(isBlocked)));
  button.textContent = isBlocked ? 'Unblock' : 'Block';
  button.title = userId === null ? '' : `${isBlocked ? 'Unblock' : 'Block'} ${displayName(userId)}`;
}

/** Shows the block state of the open conversation's other person (hidden for groups). */
export function showBlockState() {
  const userId = target();
  draw(userId, null);
  if (userId === null) return;
  blockedIds().then((ids) => {
    if (target() === userId) draw(userId, ids.has(userId));
  }, () => {});
}

/** Blocks or unblocks a user; rejects with the server's ApiError. */
export async function setBlocked(userId, block) {
  const ids = await blockedIds();
  if (block) {
    await api.block(userId);
    ids.add(userId);
  } else {
    await api.unblock(userId);
    ids.delete(userId);
  }
}

async function toggle() {
  const userId = target();
  if (userId === null || busy) return;
  busy = true;
  $('block-toggle').disabled = true;
  try {
    const ids = await blockedIds();
    await setBlocked(userId, !ids.has(userId));
  } catch (error) {
    showError(error.message);
  } finally {
    busy = false;
    showBlockState();
  }
}

export function initBlocking({ onError }) {
  showError = onError;
  $('block-toggle').addEventListener('click', toggle);
}
