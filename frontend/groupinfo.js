// The group info panel, opened from a group's header: its name (renamed by admins), its
// members with their roles, adding people (admins), removing a member (admins; never the
// owner), leaving, and blocking a member (blocking.js holds the block state). Who may do
// what is the server's to say: its refusals are shown in the panel. Membership changes
// reach every member as `conversation.updated` frames (applyConversationUpdate).
//
// Hooks for browser tests: #group-info-open (header, groups only), #group-info-dialog,
// #group-title-input, #group-rename (admins), #group-members > li.member[data-user-id][data-role]
// with .member-name, .member-role, button.member-block[aria-pressed] ("Block" / "Unblock"),
// button.member-remove; #group-add-form (admins) with #group-add-query, #group-add-results
// (see userpicker.js), #group-add-submit; #group-leave, then #group-leave-yes / #group-leave-no;
// #group-info-error, #group-info-close.

import { api } from './api.js';
import { blockedIds, setBlocked } from './blocking.js';
import { forgetConversation, recordRole, state } from './store.js';
import { $, avatar, botBadge, el, setBusy } from './ui.js';
import { createUserPicker } from './userpicker.js';
import { conversationTitle, displayName, loadUser, username } from './users.js';

const ROLE_ORDER = { owner: 0, admin: 1, member: 2 };
const ROLE_LABEL = { owner: 'Owner', admin: 'Admin', member: 'Member' };

let hooks = { changed: () => {}, left: () => {} };
let shownId = null; // the conversation the panel is about, while open
let members = []; // [{user_id, role, last_read_seq}] as the server last answered
let blocked = new Set();
let titleEdited = false; // keep what the reader is typing over a redraw
let loadCounter = 0; // answers to older loads are dropped
let picker;

const myRole = () => members.find((m) => m.user_id === state.me.id)?.role;
const isAdmin = () => myRole() === 'owner' || myRole() === 'admin';

function showError(message) {
  $('group-info-error').textContent = message;
  $('group-info-error').hidden = !message;
}

/** The header's button that opens the panel: groups only. */
export function showGroupInfoButton() {
  $('group-info-open').hidden = state.conversations.get(state.activeId)?.type !== 'group';
}

const memberIds = (conversation) => conversation.participant_ids
  ?? conversation.participants?.map((p) => p.user_id);

/** Takes what a server answer says about the conversation (title, members) into the store. */
function remember(conversation) {
  const known = state.conversations.get(conversation.id);
  if (!known) return;
  const ids = memberIds(conversation);
  if ('title' in conversation) known.title = conversation.title;
  if (ids) known.participant_ids = [...ids].sort((a, b) => a - b);
  if (conversation.created_by !== undefined) known.created_by = conversation.created_by;
  recordRole(conversation.id, conversation.participants);
}

/**
 * A `conversation.updated` frame: 'left' when we are no longer a member (the conversation
 * is forgotten), 'new' when it is one we do not hold yet, else 'changed'.
 */
export function applyConversationUpdate(conversation) {
  const ids = memberIds(conversation);
  if (ids && !ids.includes(state.me.id)) {
    dropped(conversation.id);
    return 'left';
  }
  if (!state.conversations.has(conversation.id)) return 'new';
  remember(conversation);
  if (shownId === conversation.id) load();
  return 'changed';
}

function dropped(conversationId) {
  forgetConversation(conversationId);
  if (shownId === conversationId) $('group-info-dialog').close();
}

async function load() {
  const id = shownId;
  const counter = ++loadCounter;
  try {
    const [conversation, ids] = await Promise.all([api.conversation(id), blockedIds().catch(() => new Set())]);
    await Promise.all(conversation.participants.map((p) => loadUser(p.user_id)));
    if (counter !== loadCounter || shownId !== id) return;
    members = conversation.participants;
    blocked = ids;
    remember(conversation);
    hooks.changed();
    render();
  } catch (error) {
    if (counter !== loadCounter || shownId !== id) return;
    if (error.status === 403 || error.status === 404) {
      // Not a member any more (the frame may still be on its way): nothing here is ours.
      dropped(id);
      hooks.left(id);
      return;
    }
    showError(error.message);
  }
}

function memberNode(member, admin) {
  const me = member.user_id === state.me.id;
  const name = displayName(member.user_id);
  const isBlocked = blocked.has(member.user_id);
  return el('li', { class: 'member', dataset: { userId: member.user_id, role: member.role } },
    avatar(name, member.user_id),
    el('span', { class: 'person-names' },
      el('span', { class: 'member-name person-name', text: me ? `${name} (you)` : name }),
      botBadge(member.user_id),
      username(member.user_id) && el('span', { class: 'person-handle', text: `@${username(member.user_id)}` })),
    el('span', { class: `member-role role-${member.role}`, text: ROLE_LABEL[member.role] ?? member.role }),
    !me && el('button', {
      type: 'button', class: 'btn small member-block', 'aria-pressed': String(isBlocked),
      title: `${isBlocked ? 'Unblock' : 'Block'} ${name}`, text: isBlocked ? 'Unblock' : 'Block',
    }),
    !me && admin && member.role !== 'owner' && el('button', {
      type: 'button', class: 'btn small danger member-remove', title: `Remove ${name} from the group`, text: 'Remove',
    }));
}

function render() {
  const conversation = state.conversations.get(shownId);
  if (!conversation) return;
  const admin = isAdmin();
  const input = $('group-title-input');
  if (!titleEdited) input.value = conversation.title ?? '';
  input.placeholder = conversationTitle({ ...conversation, title: null });
  input.readOnly = !admin;
  $('group-rename').hidden = !admin;
  $('group-add-form').hidden = !admin;
  const sorted = [...members].sort((a, b) => (ROLE_ORDER[a.role] ?? 3) - (ROLE_ORDER[b.role] ?? 3)
    || displayName(a.user_id).localeCompare(displayName(b.user_id)));
  $('group-member-count').textContent = `(${members.length})`;
  $('group-members').replaceChildren(...sorted.map((member) => memberNode(member, admin)));
  picker.render();
}

/** Runs one change against the server; its refusal is shown in the panel. */
async function act(button, task) {
  const id = shownId;
  showError('');
  if (button) setBusy(button, true);
  try {
    await task(id);
    return true;
  } catch (error) {
    if (shownId === id) showError(error.message);
    return false;
  } finally {
    if (button) setBusy(button, false);
  }
}

async function rename(event) {
  event.preventDefault();
  const title = $('group-title-input').value.trim();
  if (!title || !isAdmin()) return;
  await act($('group-rename'), async (id) => {
    const conversation = await api.renameConversation(id, title);
    titleEdited = false;
    remember({ title, ...conversation, id });
    hooks.changed();
    render();
  });
}

async function addPeople(event) {
  event.preventDefault();
  const userIds = [...picker.selected.keys()];
  if (!userIds.length) return;
  const done = await act($('group-add-submit'), (id) => api.addParticipants(id, userIds).then((conversation) => {
    remember({ ...conversation, id });
  }));
  if (done) {
    picker.reset();
    load();
  }
}

async function memberAction(event) {
  const button = event.target.closest('button');
  const userId = Number(button?.closest('[data-user-id]')?.dataset.userId);
  if (!button || !userId) return;
  if (button.classList.contains('member-remove')) {
    if (await act(button, (id) => api.removeParticipant(id, userId))) load();
  } else if (button.classList.contains('member-block')) {
    await act(button, () => setBlocked(userId, !blocked.has(userId)));
    blocked = await blockedIds().catch(() => blocked);
    render();
  }
}

function askLeave(asking) {
  $('group-leave-confirm').hidden = !asking;
  $('group-leave').hidden = asking;
  if (asking) $('group-leave-no').focus();
}

async function leave() {
  const id = shownId;
  const done = await act($('group-leave-yes'), () => api.removeParticipant(id, state.me.id));
  if (!done) return;
  dropped(id);
  hooks.left(id);
}

function open() {
  const conversation = state.conversations.get(state.activeId);
  if (conversation?.type !== 'group') return;
  shownId = conversation.id;
  members = (conversation.participant_ids ?? []).map((userId) => ({ user_id: userId, role: 'member' }));
  titleEdited = false;
  showError('');
  askLeave(false);
  picker.reset();
  $('group-info-open').setAttribute('aria-expanded', 'true');
  $('group-info-dialog').showModal();
  render();
  load();
}

/** changed(): the store was updated, redraw; left(conversationId): we are out of it. */
export function initGroupInfo({ changed, left }) {
  hooks = { changed, left };
  const dialog = $('group-info-dialog');
  picker = createUserPicker({
    query: $('group-add-query'),
    results: $('group-add-results'),
    chips: $('group-add-selected'),
    unavailable: (user) => (members.some((m) => m.user_id === user.id) ? 'member' : ''),
    onChange: () => {
      $('group-add-submit').disabled = !picker?.selected.size;
    },
  });
  $('group-info-open').addEventListener('click', open);
  $('group-info-close').addEventListener('click', () => dialog.close());
  dialog.addEventListener('close', () => {
    shownId = null;
    loadCounter += 1;
    $('group-info-open').setAttribute('aria-expanded', 'false');
  });
  $('group-title-input').addEventListener('input', () => {
    titleEdited = true;
  });
  $('group-title-form').addEventListener('submit', rename);
  $('group-add-form').addEventListener('submit', addPeople);
  $('group-members').addEventListener('click', memberAction);
  $('group-leave').addEventListener('click', () => askLeave(true));
  $('group-leave-no').addEventListener('click', () => askLeave(false));
  $('group-leave-yes').addEventListener('click', leave);
}
