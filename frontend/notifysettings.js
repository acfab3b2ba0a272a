// The "Notifications" dialog: this account's time zone, quiet hours, push delay, preview and
// language (PUT /api/v1/me/notification-settings), and a test notification to every device.
// Every value from the server is set as a form value or option text, never as HTML.

import { api } from './api.js';
import { initEmailSettings } from './emailsettings.js';
import { initTestPush } from './testpush.js';
import { $, el, setBusy } from './ui.js';

const browserZone = () => {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  } catch {
    return 'UTC';
  }
};

function zoneNames(...also) {
  let zones = [];
  try {
    zones = Intl.supportedValuesOf('timeZone');
  } catch {
    // Older browsers: the zones we know of are offered.
  }
  return [...new Set(['UTC', ...zones, ...also.filter((zone) => typeof zone === 'string' && zone)])].sort();
}

/** Makes sure a select offers `value` (a setting made elsewhere may be one we do not list). */
function offer(select, value, label = String(value)) {
  if (![...select.options].some((option) => option.value === String(value))) {
    select.append(el('option', { value: String(value), text: label }));
  }
  select.value = String(value);
}

/** Wires the dialog. Returns open(). */
export function initNotificationSettingsDialog() {
  const dialog = $('notification-settings-dialog');
  const form = $('notification-settings-form');
  const zone = $('ns-time-zone');
  const quiet = $('ns-quiet');
  const start = $('ns-quiet-start');
  const end = $('ns-quiet-end');
  const mentions = $('ns-quiet-mentions');
  const delay = $('ns-push-delay');
  const preview = $('ns-preview');
  const locale = $('ns-locale');
  const save = $('ns-save');
  const error = $('ns-error');
  const status = $('ns-status');
  const email = initEmailSettings();
  let loads = 0; // answers to older loads are dropped

  const showError = (message) => {
    error.textContent = message;
    error.hidden = !message;
  };
  const showQuiet = () => {
    for (const input of [start, end, mentions]) input.disabled = !quiet.checked;
  };

  function fill(settings) {
    // A zone never chosen (the default, UTC) starts out as this browser's own.
    const chosen = settings.time_zone && settings.time_zone !== 'UTC' ? settings.time_zone : browserZone();
    zone.replaceChildren(...zoneNames(chosen, settings.time_zone).map((name) => el('option', { value: name, text: name.replaceAll('_', ' ') })));
    zone.value = chosen;
    status.textContent = chosen !== settings.time_zone ? 'Time zone taken from this browser: save to keep it.' : '';
    const hours = settings.quiet_hours;
    quiet.checked = Boolean(hours);
    if (hours) {
      start.value = hours.start;
      end.value = hours.end;
      mentions.checked = hours.allow_mentions === true;
    }
    showQuiet();
    offer(delay, Number(settings.push_delay_seconds) || 0, `If still unread after ${Number(settings.push_delay_seconds) || 0} seconds`);
    offer(preview, settings.preview ?? 'full');
    offer(locale, settings.locale ?? 'en');
    email.fill(settings);
  }

  async function load() {
    const counter = ++loads;
    save.disabled = true;
    try {
      const settings = await api.notificationSettings();
      if (counter !== loads) return;
      fill(settings);
      save.disabled = false;
    } catch (err) {
      if (counter === loads) showError(err.message);
    }
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    showError('');
    if (quiet.checked && start.value === end.value) {
      showError('Quiet hours must start and end at different times.');
      return;
    }
    const body = {
      time_zone: zone.value,
      quiet_hours: quiet.checked
        ? { start: start.value.slice(0, 5), end: end.value.slice(0, 5), allow_mentions: mentions.checked }
        : null,
      push_delay_seconds: Number(delay.value),
      preview: preview.value,
      locale: locale.value,
      ...email.body(),
    };
    setBusy(save, true);
    try {
      fill(await api.updateNotificationSettings(body));
      status.textContent = 'Saved.';
    } catch (err) {
      showError(err.message);
    }
    setBusy(save, false);
  });
  quiet.addEventListener('change', showQuiet);
  $('ns-close').addEventListener('click', () => dialog.close());
  $('ns-cancel').addEventListener('click', () => dialog.close());
  const testPush = initTestPush();

  return function open() {
    showError('');
    testPush.reset();
    status.textContent = '';
    dialog.showModal();
    load();
  };
}
