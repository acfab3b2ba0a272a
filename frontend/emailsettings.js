// The email part of the "Notifications" dialog: the address digests go to, whether it is
// verified, the digest period, a notice when the mail server refused the address and
// digests were turned off, and one when the verification email did not get through (with
// a button that sends it again). Values from the server are set as text, never as HTML.

import { api } from './api.js';
import { $, setBusy } from './ui.js';

export function initEmailSettings() {
  const address = $('ns-email');
  const state = $('ns-email-state');
  const bounced = $('ns-email-bounced');
  const failed = $('ns-email-failed');
  const failedText = $('ns-email-failed-text');
  const resend = $('ns-email-resend');
  const digest = $('ns-email-digest');
  let saved = null; // the address as the server has it

  function fill(settings) {
    saved = settings.email ?? null;
    address.value = saved ?? '';
    digest.value = ['off', 'hourly', 'daily'].includes(settings.email_digest) ? settings.email_digest : 'off';
    if (!saved) {
      state.textContent = 'Add an address to get a digest of the messages you missed.';
    } else if (settings.email_verified) {
      state.textContent = 'Verified.';
    } else {
      state.textContent = `Not verified yet: follow the link sent to ${saved}. Digests start once it is verified.`;
    }
    state.dataset.verified = settings.email_verified ? 'yes' : 'no';
    const off = settings.email_digest_disabled;
    bounced.hidden = !off;
    bounced.textContent = off
      ? `Digests were turned off: the mail server refused this address (${off.reason}). Check it, then turn digests on again.`
      : '';
    const notSent = saved && !settings.email_verified ? settings.email_verification_failed : null;
    failed.hidden = !notSent;
    failedText.textContent = notSent ? `The verification email did not get through (${notSent.reason}).` : '';
  }

  // The same address again: the server sends a new link (within its limits).
  resend.addEventListener('click', async () => {
    if (!saved) return;
    setBusy(resend, true);
    try {
      fill(await api.updateNotificationSettings({ email: saved }));
      state.textContent = `A new link was sent to ${saved}.`;
    } catch (err) {
      failedText.textContent = err.message;
    }
    setBusy(resend, false);
  });

  /** What a save sends: the address only when it changed (a new one is verified again). */
  function body() {
    const typed = address.value.trim();
    const changes = { email_digest: digest.value };
    if (typed !== (saved ?? '')) changes.email = typed || null;
    return changes;
  }

  return { fill, body };
}
