// "New announcement" on the admin page: a title and a text for everyone, or for the users named
// (usernames, resolved to ids here); POST /api/v1/admin/announcements, then the progress from
// GET /api/v1/admin/announcements/{id} until it is done. Each recipient finds it in their
// read-only "Announcements" conversation. Shown to admins only (the server checks anyway).
//
// Hooks for browser tests: #announce-section, #announce-form, #announce-title,
// #announce-content, #announce-recipients, #announce-submit, #announce-error,
// #announce-progress (data-status: sending | done | failed, with data-recipients,
// data-delivered-live, data-pushed, data-failed).

import { api } from './api.js';
import { $, el, setBusy } from './ui.js';

const POLL_MS = 1000;
const POLL_MAX_MS = 10 * 60_000; // a stuck announcement stops being watched, not the page
const MAX_NAMED = 200; // each name is one lookup; for more, everyone or the API

const count = new Intl.NumberFormat();

function section() {
  return el('section', { id: 'announce-section', class: 'admin-announce', 'aria-labelledby': 'announce-heading', hidden: true },
    el('h2', { id: 'announce-heading', text: 'New announcement' }),
    el('p', { class: 'dialog-hint', text: 'Lands in each recipient’s Announcements conversation, live or as a push. Nobody can answer in it.' }),
    el('form', { id: 'announce-form', class: 'announce-form' },
      el('div', { class: 'field' },
        el('label', { for: 'announce-title', text: 'Title' }),
        el('input', { id: 'announce-title', maxlength: '200', required: true, autocomplete: 'off' })),
      el('div', { class: 'field' },
        el('label', { for: 'announce-content', text: 'Text' }),
        el('textarea', { id: 'announce-content', rows: '4', maxlength: '4000', required: true })),
      el('div', { class: 'field' },
        el('label', { for: 'announce-recipients' }, 'Only to ', el('span', { class: 'optional', text: '(usernames, separated by commas; empty: everyone)' })),
        el('input', { id: 'announce-recipients', autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false' })),
      el('p', { id: 'announce-error', class: 'form-error', role: 'alert', hidden: true }),
      el('button', { id: 'announce-submit', type: 'submit', class: 'btn primary small', text: 'Send announcement' })),
    el('p', { id: 'announce-progress', class: 'announce-progress', role: 'status', hidden: true }));
}

function showError(text) {
  $('announce-error').textContent = text;
  $('announce-error').hidden = !text;
}

/** Usernames to user ids, each by an exact match; throws Error naming those not found. */
async function resolve(names) {
  const ids = [];
  const unknown = [];
  for (const name of names) {
    const { users } = await api.searchUsers(name);
    const user = (users ?? []).find((u) => typeof u.username === 'string' && u.username.toLowerCase() === name.toLowerCase());
    if (user) ids.push(user.id);
    else unknown.push(name);
  }
  if (unknown.length) throw new Error(`No such user: ${unknown.join(', ')}`);
  return [...new Set(ids)];
}

function showProgress(answer) {
  const node = $('announce-progress');
  const status = typeof answer.status === 'string' ? answer.status : 'sending';
  const n = (value) => (Number.isFinite(value) ? value : 0);
  node.hidden = false;
  Object.assign(node.dataset, {
    status,
    recipients: String(n(answer.recipients)),
    deliveredLive: String(n(answer.delivered_live)),
    pushed: String(n(answer.pushed)),
    failed: String(n(answer.failed)),
  });
  const figures = `${count.format(n(answer.recipients))} recipients: ${count.format(n(answer.delivered_live))} live, `
    + `${count.format(n(answer.pushed))} pushed, ${count.format(n(answer.failed))} failed`;
  const said = { sending: 'Sending…', done: 'Sent.', failed: 'Stopped before the end.' }[status] ?? `${status}.`;
  node.textContent = `${said} ${figures}`;
}

const finished = (answer) => answer.status !== 'sending' || Boolean(answer.finished_at);

async function watch(id) {
  const started = Date.now();
  for (;;) {
    let answer;
    try {
      answer = await api.announcement(id);
    } catch (error) {
      if (error.status === 0 && Date.now() - started < POLL_MAX_MS) {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        continue; // the network came and went: ask again
      }
      showError(error.message);
      return;
    }
    showProgress(answer);
    if (finished(answer) || Date.now() - started > POLL_MAX_MS) return;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function submit(event) {
  event.preventDefault();
  showError('');
  const title = $('announce-title').value.trim();
  const content = $('announce-content').value.trim();
  const names = $('announce-recipients').value.split(/[\s,]+/).map((name) => name.replace(/^@/, '')).filter(Boolean);
  if (!title || !content) {
    showError('Give it a title and a text.');
    return;
  }
  if (names.length > MAX_NAMED) {
    showError(`Name at most ${MAX_NAMED} people, or leave it empty for everyone.`);
    return;
  }
  if (!names.length && !confirm('Send this announcement to everyone?')) return;
  const button = $('announce-submit');
  setBusy(button, true);
  try {
    const body = { title, content };
    if (names.length) body.user_ids = await resolve(names);
    const answer = await api.announce(body);
    $('announce-form').reset();
    showProgress({ ...answer, status: answer.status ?? 'sending' });
    await watch(answer.id);
  } catch (error) {
    showError(error.message);
  } finally {
    setBusy(button, false);
  }
}

async function start() {
  const main = $('admin-main');
  if (!main) return;
  const node = section();
  main.append(node);
  $('announce-form').addEventListener('submit', submit);
  try {
    const me = await api.me();
    node.hidden = me?.is_admin !== true;
  } catch {
    // Signed out or unreachable: admin.js says so; the form stays hidden.
  }
}

start();
