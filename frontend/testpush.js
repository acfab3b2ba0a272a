// "Send a test notification" in the notification settings: POST /api/v1/me/devices/test-push
// answers 202 {id, devices: [{device_id, provider}]} at once; each device's result is then read
// from the test notification's deliveries (GET /api/v1/me/notifications/{id}) as its push
// service answers, a few looks over about ten seconds.

import { api } from './api.js';
import { describeDelivery } from './notifications.js';
import { $, el, setBusy } from './ui.js';

// When to look, in ms after sending.
const LOOKS_MS = [700, 1500, 2500, 4000, 6000, 8000, 10_500];
const PLATFORMS = { web: 'Browser', android: 'Android', ios: 'iPhone / iPad' };

const text = (value) => (typeof value === 'string' || typeof value === 'number' ? String(value) : '');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const objects = (value) => (Array.isArray(value) ? value.filter((item) => item && typeof item === 'object') : []);

/** Device id → its name as the devices list gives it ("Browser" when it has none). */
async function deviceNames() {
  try {
    const { devices } = await api.devices();
    return new Map(objects(devices).map((device) => [
      text(device.id), text(device.device_name) || PLATFORMS[device.platform] || text(device.platform),
    ]));
  } catch {
    return new Map(); // names are a nicety: the results still show
  }
}

/** Wires the button. Returns { reset() } for when the dialog opens again. */
export function initTestPush() {
  const button = $('ns-test-push');
  const status = $('ns-test-push-status');
  const result = $('ns-test-push-result');
  let runs = 0; // a newer test (or a reset) ends the polling of an older one

  /** Draws one row per device; true once every device has its delivery. */
  function draw(devices, names, deliveries) {
    const byDevice = new Map(objects(deliveries).map((delivery) => [text(delivery.device_id), delivery]));
    result.replaceChildren(...devices.map((device) => {
      const id = text(device.device_id);
      const delivery = byDevice.get(id);
      return el('li', { dataset: { deviceId: id, outcome: text(delivery?.outcome) || 'waiting' } },
        el('span', { class: 'test-push-device', text: names.get(id) || `Device ${id.slice(0, 8)}` }),
        el('span', {
          class: 'test-push-outcome',
          text: describeDelivery(delivery ?? { provider: device.provider, outcome: 'waiting…' }),
        }));
    }));
    return devices.every((device) => byDevice.has(text(device.device_id)));
  }

  button.addEventListener('click', async () => {
    const run = ++runs;
    setBusy(button, true);
    result.replaceChildren();
    status.textContent = 'Sending…';
    const finish = (message) => {
      if (run !== runs) return;
      status.textContent = message;
      setBusy(button, false);
    };
    let answer;
    let names;
    try {
      [answer, names] = await Promise.all([api.testPush(), deviceNames()]);
    } catch (err) {
      finish(err.code === 'no_device' ? 'No device of yours can be notified: enable notifications on one first.' : err.message);
      return;
    }
    const devices = objects(answer?.devices);
    if (run !== runs) return;
    status.textContent = 'Sent. Waiting for each device’s push service…';
    let done = draw(devices, names, []);
    const started = Date.now();
    for (const at of LOOKS_MS) {
      if (done) break;
      await sleep(Math.max(0, started + at - Date.now()));
      if (run !== runs) return;
      try {
        const notification = await api.notification(answer.id);
        if (run !== runs) return;
        done = draw(devices, names, notification?.deliveries);
      } catch {
        // A missed look: the next one tries again.
      }
    }
    finish(done ? 'Done.' : 'Some devices have not answered yet: look in the notification centre later.');
  });

  return {
    reset() {
      runs += 1;
      setBusy(button, false);
      status.textContent = '';
      result.replaceChildren();
    },
  };
}
