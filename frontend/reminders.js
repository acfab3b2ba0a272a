// Reminders: "Remind me" in a message's actions offers in 1 hour, tomorrow 9:00 (by the clock of
// the user's time zone) or a picked date and time. At that time the server sends a `reminder
// {id, message}` frame to a user who is online (a push otherwise, shown by sw.js): a toast
// with the message's preview and "Go to message", and a system notification when the tab is
// hidden (the server does not push while a socket is open). The sidebar's clock button lists
// the pending reminders, each with Cancel.
//
// Hooks for browser tests: on li.message button[data-msg-action="remind"] opens
// .reminder-menu (button[data-remind="hour|tomorrow"], form.reminder-pick > input.reminder-at
// (datetime-local, seconds) and button.reminder-set, .reminder-error); #reminder-toasts >
// .reminder-toast[data-reminder-id] with .reminder-toast-text, button.reminder-toast-go,
// button.reminder-toast-close; #reminders-open, #reminders-dialog > #reminders-list >
// li.reminder[data-reminder-id] (.reminder-when, .reminder-text, button.reminder-go,
// button.reminder-cancel), #reminders-empty, #reminders-error; #reminder-status (role=status).

import { api } from './api.js';
import * as push from './push.js';
import { state } from './store.js';
import { $, el, setBusy } from './ui.js';
import { displayName } from './users.js';
import {
  formatIn, fromPickerValue, pickerValue, tomorrowAt, userZone, zoneLabel,
} from './zonetime.js';

const HOUR_MS = 3_600_000;
const PICKER_LEAD_MS = 10 * 60_000;
const PREVIEW_CHARS = 140;
const STATUS_MS = 5000;
const MAX_TOASTS = 5;

let openMessage = () => {};
let statusTimer;
let listed = new Map(); // reminder id -> reminder, as last listed

const BELL_CLOCK = '<svg viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="13" r="8"/><path d="M12 9v4l2 2"/><path d="M5 3 2 6"/><path d="m22 6-3-3"/></svg>';

const previewOf = (message) => {
  if (message?.deleted_at) return 'This message was deleted.';
  const text = typeof message?.content === 'string' ? message.content.replace(/\s+/g, ' ').trim() : '';
  if (!text) return message?.attachments?.length ? 'A message with files' : 'A message';
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
};

function say(text) {
  const status = $('reminder-status');
  status.textContent = text;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { status.textContent = ''; }, STATUS_MS);
}

// ---- "Remind me" on a message

/** Opens (or closes) the reminder choices under a message node. */
export async function toggleReminderMenu(node, message) {
  const open = node.querySelector('.reminder-menu');
  if (open) {
    open.remove();
    return;
  }
  const menu = el('div', { class: 'reminder-menu', role: 'group', 'aria-label': 'Remind me' },
    el('span', { class: 'reminder-menu-title', text: 'Remind me' }),
    el('button', { type: 'button', class: 'btn small', dataset: { remind: 'hour' }, text: 'In 1 hour' }),
    el('button', { type: 'button', class: 'btn small', dataset: { remind: 'tomorrow' }, text: 'Tomorrow at 9:00' }),
    el('form', { class: 'reminder-pick' },
      el('input', { type: 'datetime-local', step: '1', class: 'reminder-at', 'aria-label': 'Remind me at', required: true }),
      el('button', { type: 'submit', class: 'btn primary small reminder-set', text: 'Set' })),
    el('span', { class: 'reminder-zone' }),
    el('p', { class: 'form-error reminder-error', role: 'alert', hidden: true }));
  node.append(menu);
  const zone = await userZone();
  menu.dataset.zone = zone;
  menu.querySelector('.reminder-zone').textContent = `Times in ${zoneLabel(zone)}`;
  const picker = menu.querySelector('.reminder-at');
  picker.min = pickerValue(new Date(), zone);
  if (!picker.value) picker.value = pickerValue(new Date(Date.now() + PICKER_LEAD_MS), zone);
  menu.querySelector('[data-remind="tomorrow"]').title = formatIn(tomorrowAt(9, zone), zone);
  menu.addEventListener('click', (event) => {
    const choice = event.target.closest('button[data-remind]');
    if (!choice) return;
    event.stopPropagation();
    const when = choice.dataset.remind === 'hour' ? new Date(Date.now() + HOUR_MS) : tomorrowAt(9, zone);
    setReminder(menu, message, when, choice);
  });
  menu.querySelector('form').addEventListener('submit', (event) => {
    event.preventDefault();
    setReminder(menu, message, fromPickerValue(picker.value, zone), menu.querySelector('.reminder-set'));
  });
}

async function setReminder(menu, message, when, button) {
  const error = menu.querySelector('.reminder-error');
  const fail = (text) => {
    error.textContent = text;
    error.hidden = !text;
  };
  if (!(when instanceof Date) || Number.isNaN(when.getTime())) return fail('Pick a date and a time.');
  if (when.getTime() <= Date.now()) return fail('That time has passed: pick a later one.');
  setBusy(button, true);
  try {
    const answer = await api.createReminder(message.id, when.toISOString());
    menu.remove();
    say(`Reminder set for ${formatIn(new Date(answer.remind_at ?? when), menu.dataset.zone || 'UTC')}.`);
    if ($('reminders-dialog').open) loadList();
  } catch (err) {
    fail(err.message);
  } finally {
    setBusy(button, false);
  }
  return undefined;
}

// ---- A reminder comes due

/** The `reminder {id, message}` frame: a toast, and a system notification in a hidden tab. */
export function reminderArrived(frame) {
  const message = frame?.message;
  if (typeof frame?.id !== 'string' || !message?.id || !message.conversation_id) return;
  const box = $('reminder-toasts');
  if (box.querySelector(`[data-reminder-id="${CSS.escape(frame.id)}"]`)) return; // the same, again
  const sender = message.sender_id == null ? '' : displayName(message.sender_id);
  const toast = el('div', { class: 'reminder-toast', role: 'alert', dataset: { reminderId: frame.id } },
    el('strong', { class: 'reminder-toast-title', text: sender ? `Reminder · ${sender}` : 'Reminder' }),
    el('span', { class: 'reminder-toast-text', text: previewOf(message) }),
    el('div', { class: 'reminder-toast-actions' },
      el('button', { type: 'button', class: 'btn primary small reminder-toast-go', text: 'Go to message' }),
      el('button', { type: 'button', class: 'link-btn reminder-toast-close', text: 'Dismiss' })));
  toast.querySelector('.reminder-toast-go').addEventListener('click', () => {
    toast.remove();
    openMessage(message);
  });
  toast.querySelector('.reminder-toast-close').addEventListener('click', () => toast.remove());
  box.append(toast);
  while (box.children.length > MAX_TOASTS) box.firstElementChild.remove();
  if ($('reminders-dialog').open) loadList();
  notifyHidden(frame.id, message);
}

async function notifyHidden(reminderId, message) {
  if (document.visibilityState === 'visible' || push.permission() !== 'granted') return;
  const registration = await navigator.serviceWorker?.getRegistration('/').catch(() => null);
  await registration?.showNotification('Reminder', {
    body: previewOf(message),
    icon: '/icon.svg',
    tag: `reminder:${reminderId}`, // its own: a read of the conversation does not clear it
    data: {
      url: `/?conversation=${encodeURIComponent(message.conversation_id)}`,
      conversation_id: message.conversation_id,
      message_id: message.id,
      seq: null,
      count: 1,
      action_token: null,
    },
  }).catch(() => {});
}

// ---- The list

function listError(text) {
  $('reminders-error').textContent = text;
  $('reminders-error').hidden = !text;
}

async function loadList() {
  listError('');
  let reminders;
  let zone;
  try {
    [{ reminders }, zone] = await Promise.all([api.reminders(), userZone()]);
  } catch (err) {
    listError(err.message);
    return;
  }
  const items = Array.isArray(reminders) ? reminders : [];
  $('reminders-empty').hidden = items.length > 0;
  $('reminders-list').replaceChildren(...items.map((reminder) => {
    const when = new Date(reminder.remind_at);
    return el('li', { class: 'reminder', dataset: { reminderId: reminder.id } },
      el('time', { class: 'reminder-when', datetime: reminder.remind_at, text: formatIn(when, zone) }),
      el('span', { class: 'reminder-text', text: previewOf(reminder.message) }),
      el('span', { class: 'reminder-actions' },
        reminder.message && el('button', { type: 'button', class: 'link-btn reminder-go', text: 'Show' }),
        el('button', { type: 'button', class: 'link-btn reminder-cancel', text: 'Cancel' })));
  }));
  listed = new Map(items.map((reminder) => [reminder.id, reminder]));
}

async function onListClick(event) {
  const item = event.target.closest('li.reminder');
  const reminder = item && listed.get(item.dataset.reminderId);
  if (!reminder) return;
  if (event.target.closest('button.reminder-go')) {
    $('reminders-dialog').close();
    openMessage(reminder.message);
    return;
  }
  const button = event.target.closest('button.reminder-cancel');
  if (!button) return;
  setBusy(button, true);
  try {
    await api.cancelReminder(reminder.id);
    item.remove();
    listed.delete(reminder.id);
    $('reminders-empty').hidden = listed.size > 0;
  } catch (err) {
    listError(err.message);
    loadList();
  } finally {
    setBusy(button, false);
  }
}

/** Forgets what was shown for the previous account. */
export function resetReminders() {
  $('reminder-toasts').replaceChildren();
  $('reminders-list').replaceChildren();
  listed = new Map();
}

/** openMessage(message): opens its conversation and scrolls to it. */
export function initReminders({ showMessage }) {
  openMessage = showMessage;
  const opener = el('button', {
    id: 'reminders-open', type: 'button', class: 'icon-btn', 'aria-label': 'Reminders', title: 'Reminders',
    'aria-haspopup': 'dialog',
  });
  opener.innerHTML = BELL_CLOCK; // a constant: no server text
  $('notification-settings').before(opener);

  const dialog = el('dialog', { id: 'reminders-dialog', class: 'dialog', 'aria-labelledby': 'reminders-heading' },
    el('div', { class: 'dialog-body' },
      el('header', { class: 'dialog-header' },
        el('h2', { id: 'reminders-heading', text: 'Reminders' }),
        el('button', { id: 'reminders-close', type: 'button', class: 'icon-btn', 'aria-label': 'Close', text: '✕' })),
      el('p', { class: 'dialog-hint', text: 'Messages you asked to be reminded of. “Remind me” is in each message’s actions.' }),
      el('ul', { id: 'reminders-list', class: 'reminders', 'aria-label': 'Reminders' }),
      el('p', { id: 'reminders-empty', class: 'dialog-hint', text: 'No reminders set.', hidden: true }),
      el('p', { id: 'reminders-error', class: 'form-error', role: 'alert', hidden: true })));
  document.body.append(dialog,
    el('div', { id: 'reminder-toasts', class: 'reminder-toasts', 'aria-live': 'assertive' }),
    el('p', { id: 'reminder-status', class: 'reminder-status', role: 'status' }));
  opener.addEventListener('click', () => {
    dialog.showModal();
    loadList();
  });
  $('reminders-close').addEventListener('click', () => dialog.close());
  $('reminders-list').addEventListener('click', onListClick);
}
