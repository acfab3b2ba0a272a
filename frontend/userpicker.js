// Picking people by username prefix: a search box, the people found (buttons that toggle)
// and the people picked (chips). The new-conversation dialog and the group info panel use it.
//
// Hooks for browser tests: results hold button.person[data-user-id][aria-pressed]
// (disabled when it cannot be picked, e.g. already a member); chips button[data-user-id].

import { api } from './api.js';
import { state } from './store.js';
import { avatar, el } from './ui.js';
import { rememberUser } from './users.js';

const SEARCH_DELAY_MS = 200;
const START_HINT = 'Type a username to find people.';

/**
 * Wires a picker on existing elements. unavailable(user) -> a short reason ("member") when
 * that person cannot be picked, else ''. onChange() runs after every redraw.
 * Returns {selected: Map(id -> user), reset()}.
 */
export function createUserPicker({ query, results, chips, unavailable = () => '', onChange = () => {} }) {
  const selected = new Map(); // user id -> user, in the order picked
  let found = [];
  let searchTimer;
  let searchCounter = 0; // answers to older searches are dropped

  const name = (user) => user.display_name || user.username;

  function render(hint = '') {
    results.replaceChildren(...found.map((user) => {
      const reason = unavailable(user);
      const note = user.id === state.me.id ? ' (you)' : (reason ? ` (${reason})` : '');
      return el('li', {},
        el('button', { type: 'button', class: 'person', disabled: Boolean(reason), 'aria-pressed': String(selected.has(user.id)), dataset: { userId: user.id } },
          avatar(name(user), user.id),
          el('span', { class: 'person-names' },
            el('span', { class: 'person-name', text: name(user) + note }),
            el('span', { class: 'person-handle', text: `@${user.username}` })),
          el('span', { class: 'check', 'aria-hidden': 'true' })));
    }));
    if (hint) results.append(el('li', { class: 'hint', text: hint }));
    chips.replaceChildren(...[...selected.values()].map((user) => el('span', { class: 'chip' },
      el('span', { text: name(user) }),
      el('button', { type: 'button', class: 'chip-remove', 'aria-label': `Remove ${name(user)}`, dataset: { userId: user.id }, text: '×' }))));
    onChange();
  }

  async function search() {
    const prefix = query.value.trim();
    const counter = ++searchCounter;
    if (!prefix) {
      found = [];
      render(START_HINT);
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
    else if (user && !unavailable(user)) selected.set(userId, user);
    const focusWasInResults = results.contains(document.activeElement);
    render();
    // The result buttons were redrawn: keep keyboard focus on the same person.
    if (focusWasInResults) results.querySelector(`[data-user-id="${userId}"]`)?.focus();
  }

  query.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(search, SEARCH_DELAY_MS);
  });
  // Enter picks the first person found; with nobody new to pick it is left to the form.
  query.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || event.isComposing) return;
    const first = found.find((user) => !unavailable(user));
    if (first && !selected.has(first.id)) {
      event.preventDefault();
      toggle(first.id);
    }
  });
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

  return {
    selected,
    render,
    reset() {
      clearTimeout(searchTimer);
      searchCounter += 1;
      selected.clear();
      found = [];
      query.value = '';
      render(START_HINT);
    },
  };
}
