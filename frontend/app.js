/*
 * Messenger web client: the entry point that ties the modules together.
 *   api.js REST and tokens · ws.js socket · store.js state · users.js names · ui.js drawing
 *   newchat.js new-conversation dialog · sessions.js sessions dialog · agent.js browser names
 *   notifysettings.js the notification settings dialog (and its test push)
 *   notifications.js the notification centre (bell, unread count, history) · admin.html/admin.js /admin
 *   push.js Web Push, page side · sw.js service worker
 *
 * Hooks for browser tests (stable ids and attributes):
 *   Sign-in   #auth-view, #login-username, #login-password, #register-display-name (register mode),
 *             #login-submit, #register-toggle (switches sign-in/register), #auth-error
 *   Shell     #main-view (.chat-open when a chat is shown), #me-name, #sessions, #logout, #enable-notifications,
 *             #connection-status: data-state="online|offline|connecting", text "Online" | "Offline" |
 *             "Connecting…" (first attempt) | "Reconnecting…"; #offline-banner
 *   List      #conversation-list > li[data-conversation-id] (.active, .has-unread) with .conversation-name,
 *             .conversation-preview, .unread (the count; hidden when 0), .presence[data-online] for direct chats
 *   New chat  #new-chat, #new-chat-dialog, #new-chat-query, #new-chat-results button[data-user-id][aria-pressed],
 *             #new-chat-selected, #new-group-title, #create-chat, #new-chat-error
 *   Sessions  #sessions (opens it), #sessions-dialog, #sessions-list > li.session[data-session-id] (.current:
 *             this browser, with .badge) holding .session-name, .session-detail and (others only)
 *             button.session-logout; #logout-others, #sessions-error, #sessions-close
 *   Centre    #notification-centre-toggle (the bell, data-unread), #notification-unread (count; hidden when 0),
 *             #notification-centre (dialog), #notification-list > li.notification[data-notification-id] (.not-opened)
 *             holding button.notification-open (.notification-title, .notification-body, .notification-time,
 *             .notification-state, .notification-deliveries) and button.notification-dismiss;
 *             #notification-more, #notification-clear, #notification-error; #admin-link (admins only)
 *   Test push #ns-test-push, #ns-test-push-status, #ns-test-push-result > li[data-device-id][data-outcome]
 *   Notify    #notification-settings (opens it), #notification-settings-dialog, #ns-time-zone, #ns-quiet,
 *             #ns-quiet-start, #ns-quiet-end, #ns-quiet-mentions, #ns-push-delay, #ns-preview, #ns-locale,
 *             #ns-save, #ns-error, #ns-status ("Saved."), #ns-close
 *   Chat      #chat-title, #chat-subtitle, #back, #mute-toggle[aria-pressed="true" when muted],
 *             #notify-level (select: all | mentions | none),
 *             #messages (role=log): li.message[data-message-id][data-seq][data-sender-id] (.own / .other,
 *             .mentions-me when it names the reader) with span.mention (.me: the reader) in its text,
 *             pending ones li.message.pending / .failed [data-client-msg-id] with button.retry / button.discard,
 *             li.seen ("Seen" / "Seen by …"), li.day, li.history-status;
 *             #typing-indicator, #composer (textarea), #send, #composer-error
 *   Search    see search.js; a result opens its conversation at the message, li.message.search-hit for a while
 *   Changes   see messageactions.js: reply, react, edit and delete on a message
 *   Blocking  see blocking.js: #block-toggle in a direct conversation's header
 *   Groups    see groupinfo.js: #group-info-open in a group's header opens its name and members
 *   Files     see attachments.js: #attach, chips in #composer-files, image grids, file cards, the viewer
 *   Later     see scheduling.js (Send later, the Scheduled list) and reminders.js (Remind me, toasts, list);
 *             the Announcements conversation (type "announcement") has #read-only-note instead of a composer
 *   URL       /?conversation=<id> opens that conversation; the open one is kept in the URL (replaceState).
 */

import {
  accessToken, api, onSessionReplaced, onTokenRefreshed, onUnauthorized, refresh, session,
} from './api.js';
import {
  catchUpChanges, initMessageActions, showContext, submitEdit, takeReplyTo,
} from './messageactions.js';
import {
  attachmentSummary, hasReadyFiles, initAttachments, showComposerFiles, takeAttachments,
} from './attachments.js';
import { initBlocking, showBlockState } from './blocking.js';
import { applyConversationUpdate, initGroupInfo, showGroupInfoButton } from './groupinfo.js';
import { initNewChatDialog } from './newchat.js';
import { initSearch, reveal } from './search.js';
import { initNotificationSettingsDialog } from './notifysettings.js';
import { initNotificationCentre } from './notifications.js';
import * as push from './push.js';
import { loadReadMarks } from './readmarks.js';
import { initReminders, reminderArrived, resetReminders } from './reminders.js';
import {
  initScheduling, refreshScheduled, resetScheduling, scheduledMessageArrived, showScheduled,
} from './scheduling.js';
import { initSessionsDialog } from './sessions.js';
import {
  addMessage, clearOutbox, findOutboxItem, isMuted, loadOutbox, recordRead, removeFromOutbox,
  resetState, saveOutbox, state, updateMessage, windowFor,
} from './store.js';
import * as ui from './ui.js';
import { conversationTitle, loadUser, onUsersChanged } from './users.js';
import { Connection } from './ws.js';
import { forgetZone } from './zonetime.js';

const { $ } = ui;

const PAGE_SIZE = 50;
const CATCH_UP_PAGE = 200;
const LOAD_OLDER_WITHIN_PX = 200;
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 6000;
const RATE_LIMIT_RETRY_MS = 2500;
const LOGOUT_TIMEOUT_MS = 5000;
const EXPIRED_MESSAGE = 'Your session has ended. Please sign in again.';
const BLOCKED_MESSAGE = 'Notifications are blocked for this site. Allow them in your browser’s site settings, then try again.';

let connection = null;
let registering = false;
let endingSession = false;
let pendingOpen = new URLSearchParams(location.search).get('conversation'); // opened once the list knows it
let lastTyping = { conversationId: null, at: 0 };
let syncing = null;
let syncAgain = false;
let renderQueued = false;
let muteBusy = false;
let openNewChat;
let openSessions;
let openNotificationSettings;
let notificationCentre;

// ---- Session

async function resume() {
  if (!session.token) {
    ui.showAuth();
    return;
  }
  try {
    const user = await api.me();
    session.saveUser(user);
    startSession(user);
  } catch (error) {
    // Offline: start from the cached profile and let the socket keep trying. A 401 is handled by onUnauthorized.
    if (error.status === 0 && session.user) startSession(session.user);
    else if (error.status !== 401) ui.showAuth(error.message);
  }
}

function startSession(user) {
  resetState(user);
  loadOutbox();
  ui.showMain(user);
  connection = new Connection({ token: accessToken, refresh }, {
    onOpen: resync,
    onFrame: handleFrame,
    onStatus: (status, info) => {
      ui.setConnectionStatus(status, info);
      // Cut off, we no longer hear who comes and goes: show nobody online rather than stale dots.
      if (status !== 'online' && state.presence.size) {
        state.presence.clear();
        scheduleRender();
      }
    },
  });
  connection.start();
  resync();
  setUpNotifications();
  notificationCentre.start();
  showAdminLink(user);
}

/** The admin dashboard's link, for admins (a login's profile may not say: ask /me then). */
async function showAdminLink(user) {
  $('admin-link').hidden = true;
  const me = typeof user.is_admin === 'boolean' ? user : await api.me().catch(() => null);
  if (me && state.me?.id === me.id) $('admin-link').hidden = me.is_admin !== true;
}

async function endSession({ expired = false } = {}) {
  if (endingSession) return;
  if (!state.me) {
    session.clear();
    ui.showAuth(expired ? EXPIRED_MESSAGE : '');
    return;
  }
  endingSession = true;
  notificationCentre.stop();
  $('admin-link').hidden = true;
  connection.stop();
  connection = null;
  // Push cleanup needs the session, so it goes first, then the server forgets the session;
  // a dead network must not hold logout up.
  const leave = async () => {
    await push.unregister().catch(() => {});
    if (!expired) await api.logout().catch(() => {});
  };
  await Promise.race([leave(), delay(LOGOUT_TIMEOUT_MS)]);
  clearOutbox();
  session.clear();
  resetState();
  resetScheduling();
  resetReminders();
  forgetZone();
  ui.resetMain();
  searchBox.clear();
  history.replaceState(null, '', location.pathname);
  ui.showAuth(expired ? EXPIRED_MESSAGE : '');
  endingSession = false;
}

async function submitAuth(event) {
  event.preventDefault();
  const username = $('login-username').value.trim();
  const password = $('login-password').value;
  ui.setBusy($('login-submit'), true);
  ui.showAuthError('');
  try {
    if (registering) {
      await api.register(username, password, $('register-display-name').value.trim());
      registering = false; // the account exists now: a failed sign-in below must not register again
      ui.setAuthMode(false);
    }
    const login = await api.login(username, password);
    session.save(login);
    $('auth-form').reset();
    startSession(login.user);
  } catch (error) {
    ui.showAuthError(error.message);
  } finally {
    ui.setBusy($('login-submit'), false);
  }
}

// ---- Keeping up with the server

/** Refreshes the list, catches up every loaded conversation and resends the outbox; calls coalesce. */
function resync() {
  if (syncing) {
    syncAgain = true;
    return syncing;
  }
  syncing = (async () => {
    do {
      syncAgain = false;
      await syncOnce();
    } while (syncAgain);
  })().finally(() => {
    syncing = null;
  });
  return syncing;
}

async function syncOnce() {
  const me = state.me;
  let listed = false;
  try {
    const { conversations } = await api.conversations();
    if (state.me !== me) return;
    mergeConversations(conversations);
    listed = true;
  } catch {
    // Offline or failing: the next socket open syncs again.
  }
  // The list brings last_message and unread_count for every conversation; the ones whose
  // messages we hold also need what they missed, asked for with after_seq.
  const loaded = [...state.windows].filter(([, held]) => held.loaded).map(([id]) => id);
  // ... and what changed in what we hold (edits, deletions, reactions), from its cursor.
  await Promise.all(loaded.map((id) => catchUp(id).then(() => catchUpChanges(id)).catch(() => {})));
  if (state.me !== me) return;
  if (state.activeId) await ensureLoaded(state.activeId).catch(() => {});
  // Read frames sent while we were away are lost: the marks are asked for again.
  if (state.activeId) await loadReadMarks(state.activeId).catch(() => {});
  if (state.me !== me) return;
  if (listed) openPending();
  refreshScheduled(); // some may have gone out while we were away
  markActiveRead();
  flushOutbox();
  scheduleRender();
}

function mergeConversations(list) {
  const previous = state.conversations;
  state.conversations = new Map(list.map((conversation) => {
    // A message.new may have overtaken the list request.
    const known = previous.get(conversation.id)?.last_message;
    const last = known && known.seq > (conversation.last_message?.seq ?? 0) ? known : conversation.last_message;
    return [conversation.id, { ...conversation, last_message: last ?? null }];
  }));
  if (state.activeId && !state.conversations.has(state.activeId)) closeConversation();
}

/** Fetches everything after the last message held without a gap, page by page. */
async function catchUp(conversationId) {
  const me = state.me;
  const held = windowFor(conversationId);
  for (;;) {
    const after = held.contiguousSeq;
    const { messages } = await api.messages(conversationId, { after_seq: after, limit: CATCH_UP_PAGE });
    if (state.me !== me) return;
    messages.forEach(addMessage);
    if (messages.length < CATCH_UP_PAGE || held.contiguousSeq === after) return;
  }
}

/** Loads the newest page of a conversation the first time it is opened. */
function ensureLoaded(conversationId) {
  const held = windowFor(conversationId);
  if (held.loaded) return Promise.resolve();
  held.loading ??= loadLatest(conversationId, held).finally(() => {
    held.loading = null;
  });
  return held.loading;
}

async function loadLatest(conversationId, held) {
  const me = state.me;
  const lastSeq = state.conversations.get(conversationId)?.last_message?.seq;
  held.error = null;
  try {
    const query = lastSeq ? { before_seq: lastSeq + 1, limit: PAGE_SIZE } : { after_seq: 0, limit: PAGE_SIZE };
    const { messages, cursor } = await api.messages(conversationId, query);
    if (state.me !== me) return;
    held.changeCursor ??= cursor; // changes from here on come by frame or changed_after
    held.loaded = true;
    messages.forEach(addMessage);
    await catchUp(conversationId); // whatever arrived while the first page was on its way
  } catch (error) {
    held.error = error;
    throw error;
  } finally {
    scheduleRender();
  }
}

async function loadOlder() {
  const id = state.activeId;
  const held = id && state.windows.get(id);
  if (!held?.loaded || held.loadingOlder || !held.hasOlder) return;
  const me = state.me;
  held.loadingOlder = true;
  held.error = null;
  ui.renderMessages({ prepended: true });
  let added = 0;
  try {
    const { messages } = await api.messages(id, { before_seq: held.oldestSeq, limit: PAGE_SIZE });
    if (state.me !== me) return;
    added = messages.filter(addMessage).length;
  } catch (error) {
    held.error = error;
  } finally {
    held.loadingOlder = false;
  }
  if (state.activeId !== id) return;
  ui.renderMessages({ prepended: true });
  if (added) fillScreen();
}

/** Pages back while the messages do not fill the view, since there is then nothing to scroll. */
function fillScreen() {
  const list = $('messages');
  if (list.scrollHeight <= list.clientHeight + LOAD_OLDER_WITHIN_PX) loadOlder();
}

// ---- Frames from the server

const frameHandlers = {
  'message.new': (frame) => {
    onNewMessage(frame.message);
    scheduledMessageArrived(frame.message);
  },
  reminder: reminderArrived,
  'message.ack': onAck,
  'message.updated': (frame) => {
    if (updateMessage(frame.message)) scheduleRender();
  },
  'conversation.updated': onConversationUpdated,
  'conversation.new': () => resync(), // added to a group: the list brings it
  typing: onTyping,
  read: onRead,
  presence: (frame) => {
    state.presence.set(frame.user_id, Boolean(frame.online));
    scheduleRender();
  },
  error: onErrorFrame,
};

function handleFrame(frame) {
  frameHandlers[frame.type]?.(frame); // frame types this client does not know are ignored
}

function onNewMessage(message) {
  const conversation = state.conversations.get(message.conversation_id);
  if (!conversation) {
    stopTyping(message.conversation_id, message.sender_id); // its typing frame may have come first
    resync(); // a conversation new to us: the list brings it, with its unread count
    notificationCentre.messageArrived();
    return;
  }
  const held = state.windows.get(conversation.id);
  const gap = held?.loaded && message.seq > held.contiguousSeq + 1;
  if (!addMessage(message)) return;
  stopTyping(conversation.id, message.sender_id);
  if (message.sender_id !== state.me.id) {
    if (isOnScreen(conversation.id)) {
      markActiveRead();
    } else {
      conversation.unread_count = (conversation.unread_count ?? 0) + 1;
      announce(conversation, message);
    }
    notificationCentre.messageArrived();
  }
  if (gap) catchUp(conversation.id).then(scheduleRender, () => {});
  scheduleRender();
}

/** Renamed, members added or removed: a group we were added to appears, one we left goes. */
function onConversationUpdated({ conversation }) {
  if (!conversation?.id) return;
  const outcome = applyConversationUpdate(conversation);
  if (outcome === 'new') resync();
  else if (outcome === 'left') leftConversation(conversation.id);
  scheduleRender();
}

function leftConversation(conversationId) {
  if (state.activeId === conversationId) closeConversation();
  scheduleRender();
}

function onAck({ client_msg_id: clientMsgId, message }) {
  removeFromOutbox(clientMsgId);
  if (message) addMessage(message);
  scheduleRender();
}

function onTyping({ conversation_id: conversationId, user_id: userId }) {
  if (userId === state.me.id) return;
  if (!state.typing.has(conversationId)) state.typing.set(conversationId, new Map());
  const timers = state.typing.get(conversationId);
  clearTimeout(timers.get(userId));
  timers.set(userId, setTimeout(() => stopTyping(conversationId, userId), TYPING_SHOWN_MS));
  scheduleRender();
}

function stopTyping(conversationId, userId) {
  const timers = state.typing.get(conversationId);
  if (!timers?.has(userId)) return;
  clearTimeout(timers.get(userId));
  timers.delete(userId);
  scheduleRender();
}

function onRead({ conversation_id: conversationId, user_id: userId, seq }) {
  const conversation = state.conversations.get(conversationId);
  if (!conversation) return;
  if (userId !== state.me.id) {
    recordRead(conversationId, userId, seq);
  } else if (seq >= (conversation.last_message?.seq ?? 0)) {
    conversation.unread_count = 0; // read on another of our devices
  } else {
    const held = state.windows.get(conversationId);
    if (held?.loaded && held.oldestSeq <= seq + 1) {
      conversation.unread_count = held.list.filter((m) => m.seq > seq && m.sender_id !== state.me.id).length;
    }
  }
  scheduleRender();
}

function onErrorFrame(frame) {
  const item = frame.ref ? findOutboxItem(frame.ref) : null;
  const text = frame.message || frame.code || 'Something went wrong.';
  if (item && frame.code === 'rate_limited') {
    // Still pending: send it again in a moment (and on any reconnect meanwhile).
    setTimeout(() => {
      if (findOutboxItem(item.client_msg_id)?.status === 'pending') transmit(item);
    }, RATE_LIMIT_RETRY_MS * (1 + Math.random()));
  } else if (item) {
    item.status = 'failed';
    item.error = text;
    saveOutbox();
    scheduleRender();
  }
  ui.showComposerError(text);
}

// ---- Reading

const isOnScreen = (conversationId) =>
  state.activeId === conversationId && document.visibilityState === 'visible';

/** Reports the newest message of the open conversation as read, if the page is visible. */
function markActiveRead() {
  const id = state.activeId;
  if (!id || !isOnScreen(id)) return;
  const conversation = state.conversations.get(id);
  const held = state.windows.get(id);
  const seq = held?.loaded ? held.newestSeq : 0;
  if (!conversation || !seq) return;
  // Resend when the server still counts unread: an earlier read may have been lost with its socket.
  if (seq > (state.readSent.get(id) ?? 0) || conversation.unread_count > 0) {
    if (connection?.send({ type: 'read', conversation_id: id, seq })) state.readSent.set(id, seq);
  }
  if (conversation.unread_count) {
    conversation.unread_count = 0;
    scheduleRender();
  }
}

/** A page in a background tab announces messages itself: the server does not push while a socket is open. */
async function announce(conversation, message) {
  if (document.visibilityState === 'visible' || push.permission() !== 'granted') return;
  const settings = await settingsFor(conversation.id).catch(() => null);
  if (settings && (isMuted(settings) || settings.push_enabled === false)) return;
  if (settings?.notify === 'none') return;
  if (settings?.notify === 'mentions' && !message.mentions?.includes(state.me.id)) return;
  const sender = await loadUser(message.sender_id);
  const senderName = sender?.display_name || sender?.username || 'New message';
  const title = conversation.type === 'group' ? `${senderName} • ${conversationTitle(conversation)}` : senderName;
  const body = (message.content || attachmentSummary(message)).slice(0, 200);
  push.notify(title, { body, conversationId: conversation.id }).catch(() => {});
}

// ---- Sending

function newClientMsgId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // randomUUID exists only in secure contexts; plain http on a LAN address still needs ids.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((byte) => byte.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function sendComposer() {
  const composer = $('composer');
  const content = composer.value.trim();
  if (!state.activeId || (!content && !hasReadyFiles(state.activeId))) return;
  if (content && submitEdit(state.activeId, content)) {
    state.drafts.delete(state.activeId);
    ui.fitComposer();
    return;
  }
  const item = {
    client_msg_id: newClientMsgId(),
    conversation_id: state.activeId,
    content,
    created_at: new Date().toISOString(),
    status: 'pending',
  };
  // Finished uploads go with it; those still uploading stay in the composer for the next.
  const { ids, files } = takeAttachments(state.activeId);
  if (ids.length) Object.assign(item, { attachments: ids, files });
  const replyTo = takeReplyTo(state.activeId);
  if (replyTo) item.reply_to = replyTo;
  state.outbox.push(item);
  saveOutbox();
  transmit(item);
  composer.value = '';
  state.drafts.delete(state.activeId);
  lastTyping = { conversationId: null, at: 0 };
  ui.fitComposer();
  ui.renderMessages();
  ui.scrollToBottom();
}

/** Sends an outbox item if the socket is open; otherwise it waits for the next open. */
function transmit(item) {
  connection?.send({
    type: 'message.send',
    conversation_id: item.conversation_id,
    content: item.content,
    client_msg_id: item.client_msg_id,
    ...(item.reply_to ? { reply_to: item.reply_to } : {}),
    ...(item.attachments?.length ? { attachments: item.attachments } : {}),
  });
}

/** After a (re)connect: the server answers a reused client_msg_id with the original, so resending is safe. */
function flushOutbox() {
  for (const item of state.outbox) {
    if (item.status === 'pending') transmit(item);
  }
}

function retryOrDiscard(event) {
  const button = event.target.closest('button[data-action]');
  const item = button && findOutboxItem(button.dataset.clientMsgId);
  if (!item) return;
  if (button.dataset.action === 'retry') {
    item.status = 'pending';
    delete item.error;
    saveOutbox();
    transmit(item);
  } else {
    removeFromOutbox(item.client_msg_id);
  }
  ui.renderMessages();
  $('composer').focus();
}

function noteTyping() {
  const id = state.activeId;
  ui.fitComposer();
  if (!id) return;
  state.drafts.set(id, $('composer').value);
  if (!$('composer').value.trim()) return;
  const now = Date.now();
  if (lastTyping.conversationId === id && now - lastTyping.at < TYPING_SEND_EVERY_MS) return;
  if (connection?.send({ type: 'typing', conversation_id: id })) lastTyping = { conversationId: id, at: now };
}

// ---- Navigation

function openConversation(conversationId) {
  if (!state.conversations.has(conversationId)) return;
  state.activeId = conversationId;
  history.replaceState(null, '', `?conversation=${encodeURIComponent(conversationId)}`);
  ui.showChat(true);
  $('composer').value = state.drafts.get(conversationId) ?? '';
  showComposerFiles();
  ui.fitComposer();
  ui.showComposerError('');
  showContext();
  showMuteState(conversationId);
  showBlockState();
  showGroupInfoButton();
  showScheduled();
  loadReadMarks(conversationId).then(scheduleRender, () => {});
  renderAll();
  ui.scrollToBottom();
  markActiveRead();
  ensureLoaded(conversationId).then(() => {
    if (state.activeId !== conversationId) return;
    renderAll();
    ui.scrollToBottom();
    markActiveRead();
    fillScreen();
  }, () => {});
  // On touch screens focusing the composer would pop the keyboard over the conversation.
  if (matchMedia('(pointer: fine)').matches) $('composer').focus();
}

/** Opens a conversation at one of its messages (a search result), paging back to it first. */
async function showMessage({ conversation_id: conversationId, id, seq }) {
  if (!state.conversations.has(conversationId)) await resync();
  if (!state.conversations.has(conversationId)) return;
  const me = state.me;
  openConversation(conversationId);
  const held = windowFor(conversationId);
  try {
    await ensureLoaded(conversationId);
    // The window stays contiguous (store.js): everything from the message to the newest.
    held.loadingOlder = true;
    while (state.activeId === conversationId && state.me === me && held.hasOlder && held.oldestSeq > seq) {
      const { messages } = await api.messages(conversationId, { before_seq: held.oldestSeq, limit: CATCH_UP_PAGE });
      if (!messages.filter(addMessage).length) break;
    }
  } catch {
    // Drawn as far as it got; the history line says what failed.
  } finally {
    held.loadingOlder = false;
  }
  if (state.activeId !== conversationId) return;
  ui.renderMessages({ prepended: true });
  reveal(id);
}

function closeConversation() {
  const id = state.activeId;
  state.activeId = null;
  history.replaceState(null, '', location.pathname);
  ui.showChat(false);
  renderAll();
  $('conversation-list').querySelector(`[data-conversation-id="${CSS.escape(id ?? '')}"] button`)?.focus();
}

/** Opens a conversation asked for by a link or a notification, now or once the list has it. */
function requestOpen(conversationId) {
  if (state.me && state.conversations.has(conversationId)) {
    openConversation(conversationId);
    return;
  }
  pendingOpen = conversationId;
  if (state.me) resync();
}

function openPending() {
  if (pendingOpen === null) return;
  const id = pendingOpen;
  pendingOpen = null;
  if (state.conversations.has(id)) openConversation(id);
  else if (!state.activeId) history.replaceState(null, '', location.pathname);
}

function conversationCreated(conversation) {
  const known = state.conversations.get(conversation.id);
  state.conversations.set(conversation.id, { unread_count: 0, last_message: null, ...known, ...conversation });
  openConversation(conversation.id);
}

// ---- Conversation settings

function settingsFor(conversationId) {
  if (!state.settings.has(conversationId)) {
    state.settings.set(conversationId, api.settings(conversationId).catch((error) => {
      state.settings.delete(conversationId);
      throw error;
    }));
  }
  return state.settings.get(conversationId);
}

function showMuteState(conversationId) {
  ui.setMuted(null);
  ui.setNotifyLevel(null);
  settingsFor(conversationId).then((settings) => {
    if (state.activeId !== conversationId) return;
    ui.setMuted(isMuted(settings));
    ui.setNotifyLevel(settings.notify ?? 'all');
  }, () => {});
}

async function changeNotifyLevel() {
  const id = state.activeId;
  const select = $('notify-level');
  if (!id) return;
  select.disabled = true;
  try {
    const updated = await api.updateSettings(id, { notify: select.value });
    state.settings.set(id, Promise.resolve(updated));
    if (state.activeId === id) ui.setNotifyLevel(updated.notify);
  } catch (error) {
    ui.showComposerError(error.message);
    showMuteState(id); // back to what the server holds
    return;
  }
  select.disabled = false;
}

async function toggleMute() {
  const id = state.activeId;
  if (!id || muteBusy) return;
  muteBusy = true;
  try {
    const muted = !isMuted(await settingsFor(id));
    const updated = await api.updateSettings(id, muted ? { muted: true } : { muted: false, mute_until: null });
    state.settings.set(id, Promise.resolve(updated));
    if (state.activeId === id) ui.setMuted(isMuted(updated));
  } catch (error) {
    ui.showComposerError(error.message);
  } finally {
    muteBusy = false;
  }
}

// ---- Notifications

function setUpNotifications() {
  const permission = push.permission();
  if (permission === 'unsupported') return;
  if (permission !== 'granted') {
    ui.setNotificationPrompt(true);
    return;
  }
  // Already allowed: make sure this browser is registered for this user, without asking anything.
  push.subscribeAndRegister().catch((error) => console.warn('Push registration failed:', error));
}

async function enableNotifications() {
  const button = $('enable-notifications');
  ui.setBusy(button, true);
  try {
    const result = await push.enable();
    if (result === 'granted') ui.setNotificationPrompt(false);
    else ui.setNotificationPrompt(true, result === 'denied' ? BLOCKED_MESSAGE : 'Notifications stay off for now.');
  } catch (error) {
    ui.setNotificationPrompt(true, `Notifications could not be turned on: ${error.message}`);
  } finally {
    ui.setBusy(button, false);
  }
}

// ---- Drawing

function renderAll() {
  if (!state.me) return;
  ui.renderConversationList();
  ui.renderChatHeader();
  ui.renderMessages();
  ui.renderTyping();
}

/** Coalesces the redraws asked for while handling one batch of events. */
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    renderAll();
  });
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- Wiring

function bindEvents() {
  $('auth-form').addEventListener('submit', submitAuth);
  $('register-toggle').addEventListener('click', () => {
    registering = !registering;
    ui.setAuthMode(registering);
    $('login-username').focus();
  });

  $('logout').addEventListener('click', async () => {
    ui.setBusy($('logout'), true);
    await endSession();
    ui.setBusy($('logout'), false);
  });
  $('enable-notifications').addEventListener('click', enableNotifications);
  $('dismiss-notifications').addEventListener('click', () => ui.setNotificationPrompt(false));
  $('new-chat').addEventListener('click', () => openNewChat());
  $('sessions').addEventListener('click', () => openSessions());
  $('notification-settings').addEventListener('click', () => openNotificationSettings());
  $('start-first-chat').addEventListener('click', () => openNewChat());

  $('conversation-list').addEventListener('click', (event) => {
    const item = event.target.closest('[data-conversation-id]');
    if (item) openConversation(item.dataset.conversationId);
  });
  $('back').addEventListener('click', closeConversation);
  $('mute-toggle').addEventListener('click', toggleMute);
  $('notify-level').addEventListener('change', changeNotifyLevel);

  const messages = $('messages');
  messages.addEventListener('scroll', () => {
    if (messages.scrollTop < LOAD_OLDER_WITHIN_PX) loadOlder();
  }, { passive: true });
  messages.addEventListener('click', retryOrDiscard);

  const composer = $('composer');
  composer.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendComposer();
    }
  });
  composer.addEventListener('input', noteTyping);
  $('composer-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sendComposer();
    composer.focus();
  });

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible' || !state.me) return;
    markActiveRead();
    connection?.reconnectNow(); // phones freeze background tabs: do not wait out the backoff
  });
  window.addEventListener('online', () => connection?.reconnectNow());
  window.addEventListener('offline', () => connection?.drop());
}

bindEvents();
openNewChat = initNewChatDialog({ onCreated: conversationCreated });
openSessions = initSessionsDialog();
const searchBox = initSearch({ onOpen: showMessage });
openNotificationSettings = initNotificationSettingsDialog();
notificationCentre = initNotificationCentre({ openConversation: requestOpen });
initMessageActions({ render: scheduleRender, onError: (message) => ui.showComposerError(message) });
initBlocking({ onError: (message) => ui.showComposerError(message) });
initGroupInfo({ changed: scheduleRender, left: leftConversation });
initAttachments({ onError: (message) => ui.showComposerError(message) });
initScheduling({ onError: (message) => ui.showComposerError(message) });
initReminders({ showMessage });
onUnauthorized(() => endSession({ expired: true }));
onTokenRefreshed((token) => {
  connection?.authenticate(token);
  push.shareToken(token);
});
// Another tab signed out or in as someone else: start over from what storage holds now.
onSessionReplaced(() => location.reload());
onUsersChanged(() => {
  ui.forgetMessageNodes(); // sender names drawn as placeholders
  scheduleRender();
});
push.listen({
  openConversation: requestOpen,
  subscriptionChanged: () => {
    if (state.me && push.permission() === 'granted') push.subscribeAndRegister().catch(() => {});
  },
});
resume();
