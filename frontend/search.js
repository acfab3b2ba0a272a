// Message search: the box above the conversation list and its results, which take the
// list's place while a search is shown. A result's snippet comes as plain strings, matches
// at odd places; each goes in through textContent (a <mark> for a match), never as HTML.

import { api } from './api.js';
import { state } from './store.js';
import { $, el } from './ui.js';
import { conversationTitle, displayName } from './users.js';

const TYPE_PAUSE_MS = 300;
const MAX_QUERY = 200; // the server's limit
const PAGE = 20;

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

let timer = null;
let asked = 0; // the latest search; answers to earlier ones are dropped
let query = '';
let nextCursor = null;

function snippetNodes(parts) {
  return (Array.isArray(parts) ? parts : []).map((part, index) => (
    index % 2 ? el('mark', { text: String(part) }) : document.createTextNode(String(part))));
}

function resultNode(message, onOpen) {
  const conversation = state.conversations.get(message.conversation_id);
  const where = conversation ? conversationTitle(conversation) : '';
  const button = el('button', { type: 'button', class: 'search-result-btn' },
    el('span', { class: 'search-result-head' },
      el('strong', { class: 'search-sender', text: displayName(message.sender_id) }),
      el('span', { class: 'search-conversation', text: where }),
      el('time', { datetime: message.created_at, text: dateFormat.format(new Date(message.created_at)) })),
    el('span', { class: 'search-snippet' }, ...snippetNodes(message.snippet)));
  button.addEventListener('click', () => onOpen(message));
  return el('li', { class: 'search-result', dataset: { messageId: message.id, conversationId: message.conversation_id } }, button);
}

function show(searching) {
  $('search-results').hidden = !searching;
  $('conversation-list').hidden = searching;
  if (searching) $('conversation-empty').hidden = true;
}

function setStatus(text) {
  $('search-status').textContent = text;
  $('search-status').hidden = !text;
}

async function run(append, onOpen) {
  const ticket = ++asked;
  const params = { q: query, limit: PAGE };
  if (append && nextCursor) params.cursor = nextCursor;
  $('search-more').hidden = true;
  setStatus('Searching…');
  try {
    const answer = await api.searchMessages(params);
    if (ticket !== asked) return;
    const list = $('search-results-list');
    const nodes = answer.messages.map((message) => resultNode(message, onOpen));
    if (append) list.append(...nodes);
    else list.replaceChildren(...nodes);
    nextCursor = answer.next_cursor;
    $('search-more').hidden = !nextCursor;
    setStatus(list.children.length ? '' : 'No messages match.');
  } catch (error) {
    if (ticket === asked) setStatus(error.message);
  }
}

function clear() {
  clearTimeout(timer);
  asked += 1;
  query = '';
  nextCursor = null;
  $('search-results-list').replaceChildren();
  setStatus('');
  show(false);
}

/**
 * Wires the search box. onOpen(message) opens the message's conversation at it.
 * Hooks for browser tests: #search-query, #search-results (shown while searching),
 * #search-results-list > li.search-result[data-message-id] > button with .search-snippet
 * (matches in <mark>), #search-more, #search-status, #search-clear.
 */
export function initSearch({ onOpen }) {
  const input = $('search-query');
  const clearButton = $('search-clear');
  input.maxLength = MAX_QUERY;
  clearButton.hidden = true;
  const start = () => {
    clearTimeout(timer);
    const text = input.value.trim();
    if (!text) {
      clear();
      return;
    }
    if (text === query) return;
    query = text;
    nextCursor = null;
    show(true);
    run(false, onOpen);
  };
  const reset = () => {
    input.value = '';
    clearButton.hidden = true;
    clear();
  };
  input.addEventListener('input', () => {
    clearButton.hidden = !input.value;
    clearTimeout(timer);
    timer = setTimeout(start, TYPE_PAUSE_MS);
  });
  $('search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    start();
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') reset();
  });
  clearButton.addEventListener('click', () => {
    reset();
    input.focus();
  });
  $('search-more').addEventListener('click', () => run(true, onOpen));
  return { clear: reset };
}

/** Marks a message drawn in the open conversation as the one a search led to, and shows it. */
export function reveal(messageId) {
  const node = $('messages').querySelector(`li[data-message-id="${CSS.escape(messageId)}"]`);
  if (!node) return false;
  node.scrollIntoView({ block: 'center' });
  node.classList.add('search-hit');
  setTimeout(() => node.classList.remove('search-hit'), 4000);
  return true;
}
