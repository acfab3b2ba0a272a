// How far the other participants have read a conversation, as the server holds it, so
// "Seen" / "Seen by …" under our newest message survives a reload. Later marks arrive as
// `read` frames (app.js); store.recordRead keeps the highest of both.

import { api } from './api.js';
import { recordRead, recordRole, state } from './store.js';

/** Fetches the conversation's participants and records their read marks; whether it did. */
export async function loadReadMarks(conversationId) {
  const me = state.me;
  const conversation = await api.conversation(conversationId);
  if (state.me !== me) return false;
  recordRole(conversationId, conversation.participants);
  for (const { user_id: userId, last_read_seq: seq } of conversation.participants ?? []) {
    if (userId !== me.id) recordRead(conversationId, userId, seq);
  }
  return true;
}
