// The "New conversation" dialog: find people by username prefix; one person makes a direct
// chat, several people (or a group name) make a group.

import { api } from './api.js';
import { state } from './store.js';
import { $, avatar, el } from './ui.js';
import { rememberUser } from './users.js';

const SEARCH_DELAY_MS = 200;

/** Wires the dialog; onCreated(conversation) gets the server's answer. Returns open(). */
export function initNewChatDialog({ onCreated }) {
  const dialog = $('new-chat-dialog');
  const query = $('new-chat-query');
  const results = $('new-chat-results');
  const chips = $('new-chat-selected');
  const title = $('new-group-title');
  const create = $('create-chat');
  const error = $('new-chat-error');
  const selected = new Map(); // user id -> user, in the order picked
  let found = [];
  let searchTimer;
  let searchCounter = 0; // answers to older searches are dropped

  const showError = (message) => {
    error.textContent = message;
    error.hidden = !message;
  };

  const isGroup = () => selected.size > 1 || title.value.trim() !== '';

  function render(hint = '') {
    results.replaceChildren(...found.map((user) => el('li', {},
      el('button', { type: 'button', class: 'person', 'aria-pressed': String(selected.has(user.id)), dataset: { userId: user.id } },
        avatar(user.display_name || user.username, user.id),
        el('span', { class: 'person-names' },
          el('span', { class: 'person-name', text: (user.display_name || user.username) + (user.id === state.me.id ? ' (you)' : '') }),
          el('span', { class: 'person-handle', text: `@${user.username}` })),
        el('span', { class: 'check', 'aria-hidden': 'true' })))));
    if (hint) results.append(el('li', { class: 'hint', text: hint }));
    chips.replaceChildren(...[...selected.values()].map((user) => el('span', { class: 'chip' },
      el('span', { text: user.display_name || user.username }),
      el('button', { type: 'button', class: 'chip-remove', 'aria-label': `Remove ${user.display_name || user.username}`, dataset: { userId: user.id }, text: '×' }))));
    create.disabled = selected.size === 0;
    create.textContent = isGroup() ? 'Create group' : 'Start chat';
  }

  async function search() {
    const prefix = query.value.trim();
    const counter = ++searchCounter;
    if (!prefix) {
      found = [];
      render('Type a username to find people.');
      return;
    }
    try {
      const { users } = await api.searchUsers(prefix);
      if (counter !== searchCounter) return;
      users.forEach(rememberUser);
      found = users;
      render(users.length ? '' : 'Nobody found with that username.');
    } catch (err) {
      if (counter === searchCounter) render(err.message);
    }
  }

  function toggle(userId) {
    const user = found.find((candidate) => candidate.id === userId) ?? selected.get(userId);
    if (selected.has(userId)) selected.delete(userId);
    else if (user) selected.set(userId, user);
    const focusWasInResults = results.contains(document.activeElement);
    render();
    // The result buttons were redrawn: keep keyboard focus on the same person.
    if (focusWasInResults) results.querySelector(`[data-user-id="${userId}"]`)?.focus();
  }

  async function submit(event) {
    event.preventDefault();
    if (!selected.size) return;
    const participantIds = [...selected.keys()];
    const groupTitle = title.value.trim();
    const body = isGroup()
      ? { type: 'group', participant_ids: participantIds, ...(groupTitle ? { title: groupTitle } : {}) }
      : { type: 'direct', participant_ids: participantIds };
    create.disabled = true;
    showError('');
    try {
      const conversation = await api.createConversation(body);
      dialog.close();
      onCreated(conversation);
    } catch (err) {
      showError(err.message);
    } finally {
      create.disabled = selected.size === 0;
    }
  }

  query.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(search, SEARCH_DELAY_MS);
  });
  // Enter picks the first person found; with nobody new to pick it creates the chat.
  query.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || event.isComposing) return;
    const first = found[0];
    if (first && !selected.has(first.id)) {
      event.preventDefault();
      toggle(first.id);
    }
  });
  title.addEventListener('input', () => render());
  results.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-user-id]');
    if (button) toggle(Number(button.dataset.userId));
  });
  chips.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-user-id]');
    if (!button) return;
    toggle(Number(button.dataset.userId));
    query.focus();
  });
  $('new-chat-form').addEventListener('submit', submit);
  $('new-chat-close').addEventListener('click', () => dialog.close());
  $('new-chat-cancel').addEventListener('click', () => dialog.close());

  return function open() {
    selected.clear();
    found = [];
    query.value = '';
    title.value = '';
    showError('');
    render('Type a username to find people.');
    dialog.showModal();
    query.focus();
  };
}
