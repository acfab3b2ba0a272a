// The "New conversation" dialog: find people by username prefix; one person makes a direct
// chat, several people (or a group name) make a group.

import { api } from './api.js';
import { $ } from './ui.js';
import { createUserPicker } from './userpicker.js';

/** Wires the dialog; onCreated(conversation) gets the server's answer. Returns open(). */
export function initNewChatDialog({ onCreated }) {
  const dialog = $('new-chat-dialog');
  const query = $('new-chat-query');
  const results = $('new-chat-results');
  const chips = $('new-chat-selected');
  const title = $('new-group-title');
  const create = $('create-chat');
  const error = $('new-chat-error');
  const showError = (message) => {
    error.textContent = message;
    error.hidden = !message;
  };

  const picker = createUserPicker({ query, results, chips, onChange: () => render() });
  const { selected } = picker;

  const isGroup = () => selected.size > 1 || title.value.trim() !== '';

  function render() {
    create.disabled = selected.size === 0;
    create.textContent = isGroup() ? 'Create group' : 'Start chat';
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

  title.addEventListener('input', () => render());
  $('new-chat-form').addEventListener('submit', submit);
  $('new-chat-close').addEventListener('click', () => dialog.close());
  $('new-chat-cancel').addEventListener('click', () => dialog.close());

  return function open() {
    title.value = '';
    showError('');
    picker.reset();
    dialog.showModal();
    query.focus();
  };
}
