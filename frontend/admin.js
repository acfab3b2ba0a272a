// The admin dashboard at /admin: push statistics as Chart.js charts (vendor/chartjs, loaded as a
// classic script before this module runs) and a user lookup with the user's devices and push log.
// Only admins get answers (the server checks; a 403 shows "Admins only"). Server text is drawn
// with textContent only.
//
// Hooks for browser tests: #admin-status, #admin-content, #admin-days (7 | 30 | 90),
// canvas#chart-pushes, #chart-success, #chart-latency, #chart-opens, #chart-skipped, #chart-devices
// (Chart.getChart(canvas) gives each chart), #inactive-30, #inactive-60, #inactive-90,
// #figure-pushes, #admin-user-query, #admin-user-results button[data-user-id], #admin-user-detail,
// #admin-devices tbody tr[data-device-id], #admin-push-log tbody tr, #admin-log-more.

import { api, session } from './api.js';
import { readStats } from './adminstats.js';
import { $, el, setBusy } from './ui.js';

const LOG_PAGE = 50;
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const percent = new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: 1 });
const count = new Intl.NumberFormat();

const text = (value) => (typeof value === 'string' || typeof value === 'number' ? String(value) : '');
const when = (value) => {
  const time = typeof value === 'string' ? Date.parse(value) : NaN;
  return Number.isNaN(time) ? '' : dateTime.format(time);
};

// Fixed colours, so a series keeps its colour from one period to the next.
const PROVIDER_HUES = { fcm: 140, apns: 210, web_push: 265 };
const OUTCOME_LIGHTNESS = { delivered: 42, success: 42, failed: 58, dead_token: 72, throttled: 84 };
const REASON_COLOURS = {
  online: '#6a7285', muted: '#d99a1e', notify_level: '#b5651d', quiet_hours: '#4f5fe0',
  read_before_delay: '#1fa971', no_device: '#9aa3b5', blocked: '#cf3f4f', failed: '#e0457b', dead_token: '#7a1f2b',
};
const SPARE = ['#0f9fb0', '#8e44ad', '#c0392b', '#16a085', '#2c3e50', '#f39c12'];
const ACCENT = '#4f5fe0';
const SECOND = '#e0457b';

function spare(index) {
  return SPARE[index % SPARE.length];
}

function pushColour(provider, outcome, index) {
  const hue = PROVIDER_HUES[provider];
  const lightness = OUTCOME_LIGHTNESS[outcome];
  return hue === undefined || lightness === undefined ? spare(index) : `hsl(${hue}, 65%, ${lightness}%)`;
}

const charts = new Map(); // canvas id → Chart

function draw(id, config) {
  charts.get(id)?.destroy();
  const base = {
    animation: false, // drawn at once: nothing to watch, and screenshots show the data
    responsive: true,
    maintainAspectRatio: false,
    interaction: { mode: 'index', intersect: false },
    plugins: { legend: { position: 'bottom', labels: { boxWidth: 12 } } },
  };
  const chart = new window.Chart($(id), { ...config, options: { ...base, ...config.options } });
  charts.set(id, chart);
}

function stackedBars(id, labels, series, unit) {
  draw(id, {
    type: 'bar',
    data: {
      labels,
      datasets: series.map(({ label, data, colour }) => ({ label, data, backgroundColor: colour, borderWidth: 0 })),
    },
    options: {
      scales: {
        x: { stacked: true },
        y: { stacked: true, beginAtZero: true, ticks: { precision: 0 }, title: { display: Boolean(unit), text: unit } },
      },
    },
  });
}

function lines(id, labels, series, y = {}, extraScales = {}) {
  draw(id, {
    type: 'line',
    data: {
      labels,
      datasets: series.map(({ label, data, colour, axis }) => ({
        label, data, borderColor: colour, backgroundColor: colour, pointRadius: 3, borderWidth: 2,
        spanGaps: true, yAxisID: axis ?? 'y',
      })),
    },
    options: { scales: { y: { beginAtZero: true, ...y }, ...extraScales } },
  });
}

function showFigures(stats) {
  $('figure-pushes').textContent = count.format(stats.totals.pushes);
  $('figure-success').textContent = stats.totals.pushes ? percent.format(stats.totals.delivered / stats.totals.pushes) : '–';
  $('figure-open-rate').textContent = stats.totals.notified ? percent.format(stats.totals.opened / stats.totals.notified) : '–';
  for (const days of [30, 60, 90]) {
    const value = stats.inactive[days];
    $(`inactive-${days}`).textContent = Number.isFinite(value) ? count.format(value) : '–';
  }
}

function showStats(stats) {
  const { labels } = stats;
  showFigures(stats);
  stackedBars('chart-pushes', labels, stats.pushes.map((series, index) => ({
    label: `${series.provider} · ${series.outcome.replaceAll('_', ' ')}`,
    data: series.data,
    colour: pushColour(series.provider, series.outcome, index),
  })), 'pushes');
  lines('chart-success', labels, [{ label: 'delivered', data: stats.successRate, colour: '#1fa971' }],
    { max: 100, title: { display: true, text: '%' } });
  lines('chart-latency', labels, [
    { label: 'p50', data: stats.p50, colour: ACCENT },
    { label: 'p95', data: stats.p95, colour: SECOND },
  ], { title: { display: true, text: 'ms' } });
  lines('chart-opens', labels, [
    { label: 'open rate (%)', data: stats.openRate, colour: ACCENT },
    { label: 'median time to open (s)', data: stats.timeToOpen, colour: '#d99a1e', axis: 'seconds' },
  ], { max: 100, title: { display: true, text: '%' } }, {
    seconds: { position: 'right', beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: 's' } },
  });
  stackedBars('chart-skipped', labels, stats.skipped.map((series, index) => ({
    label: series.reason.replaceAll('_', ' '),
    data: series.data,
    colour: REASON_COLOURS[series.reason] ?? spare(index),
  })), 'recipients');
  stackedBars('chart-devices', labels, stats.devices.map((series, index) => ({
    label: series.label,
    data: series.data,
    colour: PROVIDER_HUES[series.label] === undefined ? spare(index) : `hsl(${PROVIDER_HUES[series.label]}, 65%, 45%)`,
  })), 'devices');
}

// ---- Loading

const status = $('admin-status');
const content = $('admin-content');
let loads = 0;

function refuse(message) {
  status.textContent = message;
  status.hidden = false;
  content.hidden = true;
  $('admin-main').setAttribute('aria-busy', 'false');
}

async function loadStats() {
  const counter = ++loads;
  const days = Number($('admin-days').value) || 30;
  $('admin-main').setAttribute('aria-busy', 'true');
  try {
    const answer = await api.adminStats(days);
    if (counter !== loads) return;
    content.hidden = false;
    status.hidden = true;
    showStats(readStats(answer));
    $('admin-main').setAttribute('aria-busy', 'false');
  } catch (err) {
    if (counter !== loads) return;
    if (err.status === 403) refuse('Admins only. This account may not see the dashboard.');
    else if (err.status === 401) refuse('Sign in first, then come back.');
    else refuse(err.message);
  }
}

// ---- User lookup

let shownUser = null; // the user whose detail is shown
let logCursor = null;

function userButton(user) {
  const name = text(user.display_name) || text(user.username);
  return el('li', {}, el('button', { type: 'button', class: 'btn small', dataset: { userId: text(user.id) } },
    `${name} (@${text(user.username)})`));
}

function deviceRow(device) {
  return el('tr', { dataset: { deviceId: text(device.id) } },
    el('td', { text: text(device.name) || text(device.id).slice(0, 8) }),
    el('td', { text: text(device.platform) }),
    el('td', { text: text(device.provider) }),
    el('td', { text: device.is_active === false ? 'no' : 'yes' }),
    el('td', { text: when(device.created_at) }),
    el('td', { text: when(device.last_used_at) }));
}

function logRow(entry) {
  return el('tr', { dataset: { reason: text(entry.reason), type: text(entry.type) } },
    el('td', { text: when(entry.created_at) }),
    el('td', { text: text(entry.conversation_id).slice(0, 8), title: text(entry.conversation_id) || null }),
    el('td', { text: text(entry.message_id).slice(0, 8), title: text(entry.message_id) || null }),
    el('td', { text: text(entry.reason).replaceAll('_', ' ') }),
    el('td', { text: text(entry.device_id).slice(0, 8), title: text(entry.device_id) || null }),
    el('td', { text: text(entry.provider) }),
    el('td', { text: text(entry.outcome).replaceAll('_', ' ') }));
}

const lookupError = (message) => {
  $('admin-user-error').textContent = message;
  $('admin-user-error').hidden = !message;
};

// GET /admin/users/{id} holds the first page as push_log, GET /admin/push-log the next ones as entries.
function entriesOf(answer) {
  const entries = answer?.push_log ?? answer?.entries ?? [];
  return Array.isArray(entries) ? entries.filter((entry) => entry && typeof entry === 'object') : [];
}

function showLog(entries, { append, next }) {
  const body = $('admin-push-log').tBodies[0];
  const rows = entries.map(logRow);
  if (append) body.append(...rows);
  else body.replaceChildren(...rows);
  logCursor = next;
  $('admin-log-more').hidden = !next;
}

async function showUser(id) {
  lookupError('');
  try {
    const answer = await api.adminUser(id);
    const user = answer?.user ?? answer;
    shownUser = user?.id ?? id;
    $('admin-user-name').textContent = `${text(user?.display_name) || text(user?.username)} (@${text(user?.username)})`;
    const devices = Array.isArray(answer?.devices) ? answer.devices.filter((d) => d && typeof d === 'object') : [];
    $('admin-devices').tBodies[0].replaceChildren(...devices.map(deviceRow));
    const entries = entriesOf(answer);
    showLog(entries, { append: false, next: answer?.next_before ?? null });
    $('admin-user-detail').hidden = false;
  } catch (err) {
    lookupError(err.status === 404 ? 'No such user.' : err.message);
  }
}

async function moreLog() {
  const button = $('admin-log-more');
  if (shownUser === null || logCursor === null) return;
  setBusy(button, true);
  try {
    const answer = await api.adminPushLog({ user_id: shownUser, before: logCursor, limit: LOG_PAGE });
    const entries = entriesOf(answer);
    showLog(entries, { append: true, next: answer?.next_before ?? null });
  } catch (err) {
    lookupError(err.message);
  }
  setBusy(button, false);
}

async function findUsers(event) {
  event.preventDefault();
  const query = $('admin-user-query').value.trim();
  lookupError('');
  if (!query) return;
  const button = $('admin-user-search');
  setBusy(button, true);
  try {
    const answer = await api.adminUsers(query);
    const users = Array.isArray(answer?.users) ? answer.users.filter((u) => u && typeof u === 'object') : [];
    $('admin-user-results').replaceChildren(...users.map(userButton));
    if (!users.length) lookupError('Nobody by that name.');
  } catch (err) {
    lookupError(err.message);
  }
  setBusy(button, false);
}

// ---- Start

$('admin-days').addEventListener('change', loadStats);
$('admin-user-form').addEventListener('submit', findUsers);
$('admin-user-results').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-user-id]');
  if (button) showUser(button.dataset.userId);
});
$('admin-log-more').addEventListener('click', moreLog);

if (!window.Chart) refuse('The chart library did not load.');
else if (!session.token) refuse('Sign in first, then come back.');
else loadStats();
