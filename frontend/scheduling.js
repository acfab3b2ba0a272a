// "Send later": a clock button next to Send opens a small menu (in 1 hour, tomorrow 9:00, or a
// date and time picked, all by the clock of the user's time zone) that posts the composer's
// text with `send_at`; the server keeps it and sends it then. Above the composer, the open
// conversation's scheduled messages, each with Cancel. The list is asked for again when one
// of ours arrives as a message (its client_msg_id is "scheduled:<id>") and after a reconnect.
//
// Hooks for browser tests: #send-later (opens the menu), #send-later-menu with
// button[data-send-later="hour|tomorrow"], #send-later-at (datetime-local, seconds),
// #send-later-submit, #send-later-zone, #send-later-error; #scheduled-panel >
// #scheduled-list > li.scheduled[data-scheduled-id] holding .scheduled-when, .scheduled-text,
// button.scheduled-cancel.

import { api } from './api.js';
import { hasReadyFiles } from './attachments.js';
import { replyingTo, takeReplyTo } from './messageactions.js';
import { state } from './store.js';
import { $, el, fitComposer, setBusy } from './ui.js';
import {
  browserZone, formatIn, fromPickerValue, pickerValue, tomorrowAt, userZone, zoneLabel,
} from './zonetime.js';

const HOUR_MS = 3_600_000;
const PICKER_LEAD_MS = 5 * 60_000; // where the picker starts: a few minutes from now
const SCHEDULED_PREFIX = 'scheduled:';

let pending = []; // the caller's pending scheduled messages, soonest first
// Ids of scheduled messages seen arriving (message.new), never listed again.
const arrived = new Set();
let loads = 0; // answers to older loads are dropped
let zone = null; // the zone the menu was opened in
let shownFor = null; // the conversation the menu and list were drawn for
let showError = () => {};

const CLOCK = '<svg viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/></svg>';

function clientMsgId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

// The last scheduling that got no answer: trying the same one again (same conversation,
// text and time) reuses its client_msg_id, so a request that did arrive is not doubled.
let unanswered = null;

function clientMsgIdFor(conversationId, content, sendAt) {
  if (unanswered && unanswered.conversationId === conversationId
      && unanswered.content === content && unanswered.sendAt === sendAt) {
    return unanswered.id;
  }
  unanswered = { conversationId, content, sendAt, id: clientMsgId() };
  return unanswered.id;
}

// ---- The menu

function menuError(message) {
  $('send-later-error').textContent = message;
  $('send-later-error').hidden = !message;
}

async function openMenu() {
  const menu = $('send-later-menu');
  if (!menu.hidden) {
    closeMenu();
    return;
  }
  menuError('');
  menu.hidden = false;
  $('send-later').setAttribute('aria-expanded', 'true');
  zone = await userZone();
  if (menu.hidden) return;
  $('send-later-zone').textContent = `Times in ${zoneLabel(zone)}`;
  const tomorrow = tomorrowAt(9, zone);
  menu.querySelector('[data-send-later="tomorrow"] .when').textContent = formatIn(tomorrow, zone);
  const picker = $('send-later-at');
  picker.min = pickerValue(new Date(), zone);
  if (!picker.value) picker.value = pickerValue(new Date(Date.now() + PICKER_LEAD_MS), zone);
}

function closeMenu() {
  $('send-later-menu').hidden = true;
  $('send-later').setAttribute('aria-expanded', 'false');
}

/**
 * Posts the composer's text (and its reply-to) to be sent at `when`. As with an ordinary
 * send, nothing of the composer is lost to a failure: text and reply-to are cleared only
 * once the server has accepted, and only if they are still what was scheduled.
 */
async function schedule(when, button) {
  const conversationId = state.activeId;
  const composer = $('composer');
  const content = composer.value.trim();
  if (!conversationId) return;
  if (!content) {
    menuError('Write the message first, then pick when it goes.');
    return;
  }
  const context = $('composer-context');
  if (context && !context.hidden && context.classList.contains('editing')) {
    menuError('Finish or cancel the edit first: an edit cannot wait.');
    return;
  }
  if (hasReadyFiles(conversationId)) {
    menuError('A scheduled message cannot carry files: send them now, or remove them first.');
    return;
  }
  if (!(when instanceof Date) || Number.isNaN(when.getTime())) {
    menuError('Pick a date and a time.');
    return;
  }
  if (when.getTime() <= Date.now()) {
    menuError('That time has passed: pick a later one.');
    return;
  }
  setBusy(button, true);
  try {
    const replyTo = replyingTo(conversationId);
    const sendAt = when.toISOString();
    const body = { content, client_msg_id: clientMsgIdFor(conversationId, content, sendAt), send_at: sendAt };
    if (replyTo) body.reply_to = replyTo;
    const answer = await api.scheduleMessage(conversationId, body);
    unanswered = null;
    // Whatever was typed or chosen while the request was out stays.
    if (replyTo && replyingTo(conversationId) === replyTo) takeReplyTo(conversationId);
    if (state.activeId === conversationId && composer.value.trim() === content) composer.value = '';
    if ((state.drafts.get(conversationId) ?? '').trim() === content) state.drafts.delete(conversationId);
    fitComposer();
    $('send-later-at').value = '';
    closeMenu();
    remember({ ...answer, id: answer.id ?? answer.scheduled_id, conversation_id: conversationId, content });
    refreshScheduled();
  } catch (error) {
    menuError(error.message);
  } finally {
    setBusy(button, false);
  }
}

function onMenuClick(event) {
  const choice = event.target.closest('button[data-send-later]');
  if (!choice) return;
  const kind = choice.dataset.sendLater;
  const when = kind === 'hour' ? new Date(Date.now() + HOUR_MS) : tomorrowAt(9, zone ?? browserZone());
  schedule(when, choice);
}

function onPick(event) {
  event.preventDefault();
  schedule(fromPickerValue($('send-later-at').value, zone ?? browserZone()), $('send-later-submit'));
}

// ---- The list

function remember(item) {
  if (!item?.id || pending.some((known) => known.id === item.id)) return;
  pending = [...pending, item].sort((a, b) => Date.parse(a.send_at) - Date.parse(b.send_at));
  showScheduled();
}

/** Asks the server for the caller's pending scheduled messages and draws the open conversation's. */
export async function refreshScheduled() {
  const counter = ++loads;
  const me = state.me;
  try {
    const [{ scheduled }, known] = await Promise.all([api.scheduled(), zone ?? userZone()]);
    if (counter !== loads || state.me !== me) return;
    zone = known; // times in the list are shown by the user's clock
    pending = (Array.isArray(scheduled) ? scheduled : []).filter((item) => !arrived.has(item.id));
  } catch {
    return; // offline: the next reconnect asks again
  }
  showScheduled();
}

/** Draws the list for the open conversation (hidden when it has none). */
export function showScheduled() {
  const panel = $('scheduled-panel');
  if (!panel) return;
  if (shownFor !== state.activeId) {
    shownFor = state.activeId;
    closeMenu(); // opened for another conversation
  }
  const mine = state.me ? pending.filter((item) => item.conversation_id === state.activeId) : [];
  panel.hidden = mine.length === 0;
  $('scheduled-count').textContent = String(mine.length);
  const shownZone = zone ?? browserZone();
  $('scheduled-list').replaceChildren(...mine.map((item) => {
    const when = new Date(item.send_at);
    return el('li', { class: 'scheduled', dataset: { scheduledId: item.id } },
      el('time', {
        class: 'scheduled-when', datetime: item.send_at, title: when.toString(),
        text: formatIn(when, shownZone),
      }),
      el('span', { class: 'scheduled-text', text: item.content }),
      el('button', { type: 'button', class: 'link-btn scheduled-cancel', text: 'Cancel' }));
  }));
}

async function onListClick(event) {
  const button = event.target.closest('button.scheduled-cancel');
  const id = button?.closest('li.scheduled')?.dataset.scheduledId;
  if (!id) return;
  setBusy(button, true);
  try {
    await api.cancelScheduled(id);
    pending = pending.filter((item) => item.id !== id);
    showScheduled();
  } catch (error) {
    showError(error.message);
    refreshScheduled(); // sent or cancelled meanwhile: show what the server holds
  } finally {
    setBusy(button, false);
  }
}

/** A message frame: one of ours that was scheduled has gone out, so it leaves the list. */
export function scheduledMessageArrived(message) {
  if (!state.me || message?.sender_id !== state.me.id) return;
  const id = typeof message.client_msg_id === 'string' && message.client_msg_id.startsWith(SCHEDULED_PREFIX)
    ? message.client_msg_id.slice(SCHEDULED_PREFIX.length) : null;
  if (!id) return;
  // The server marks the row sent just after the message goes out: a list fetched in between
  // still holds it, so it is remembered as sent and left out of what comes back.
  arrived.add(id);
  pending = pending.filter((item) => item.id !== id);
  showScheduled();
  refreshScheduled();
}

/** Forgets the previous account's list. */
export function resetScheduling() {
  loads += 1;
  pending = [];
  arrived.clear();
  zone = null;
  closeMenu();
  $('send-later-at').value = '';
  showScheduled();
}

/** Puts the button next to Send, the menu and the list above the composer. */
export function initScheduling({ onError }) {
  showError = onError;
  const button = el('button', {
    id: 'send-later', type: 'button', class: 'icon-btn send-later-btn', 'aria-label': 'Send later',
    title: 'Send later', 'aria-haspopup': 'true', 'aria-expanded': 'false', 'aria-controls': 'send-later-menu',
  });
  button.innerHTML = CLOCK; // a constant: no server text
  $('send').before(button);

  const menu = el('form', { id: 'send-later-menu', class: 'send-later-menu', 'aria-label': 'Send later', hidden: true },
    el('header', { class: 'send-later-header' },
      el('strong', { text: 'Send later' }),
      el('span', { id: 'send-later-zone', class: 'send-later-zone' })),
    el('button', { type: 'button', class: 'btn small', dataset: { sendLater: 'hour' } },
      el('span', { text: 'In 1 hour' })),
    el('button', { type: 'button', class: 'btn small', dataset: { sendLater: 'tomorrow' } },
      el('span', { text: 'Tomorrow at 9:00 ' }), el('span', { class: 'when' })),
    el('label', { for: 'send-later-at', text: 'Pick a date and time' }),
    el('div', { class: 'inline-field' },
      el('input', { id: 'send-later-at', type: 'datetime-local', step: '1', required: true }),
      el('button', { id: 'send-later-submit', type: 'submit', class: 'btn primary small', text: 'Schedule' })),
    el('p', { id: 'send-later-error', class: 'form-error', role: 'alert', hidden: true }));

  const panel = el('section', { id: 'scheduled-panel', class: 'scheduled-panel', 'aria-labelledby': 'scheduled-heading', hidden: true },
    el('h3', { id: 'scheduled-heading' }, 'Scheduled ', el('span', { id: 'scheduled-count', class: 'badge' })),
    el('ul', { id: 'scheduled-list', class: 'scheduled-list', 'aria-label': 'Scheduled messages' }));

  $('composer-form').before(panel, menu);
  button.addEventListener('click', openMenu);
  menu.addEventListener('click', onMenuClick);
  menu.addEventListener('submit', onPick);
  menu.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      closeMenu();
      button.focus();
    }
  });
  $('scheduled-list').addEventListener('click', onListClick);
}
