// Wall-clock times in the user's time zone (their notification settings' `time_zone`, else
// this browser's), for "Send later" and "Remind me": the server takes instants in UTC, the
// person thinks in their own zone's clock, which need not be the browser's.

import { api } from './api.js';

let knownZone = null; // the last zone the settings gave

export function browserZone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  } catch {
    return 'UTC';
  }
}

/**
 * The user's zone; the default UTC (a zone never chosen, as notifysettings.js reads it) stands
 * for this browser's own. Asked each time, since the settings may have changed; offline, the last known.
 */
export async function userZone() {
  try {
    const settings = await api.notificationSettings();
    const zone = settings.time_zone;
    // The server answers UTC for someone who never chose a zone: that, like none at all,
    // stands for the browser's (the rule notifysettings.js shows the settings by).
    const chosen = typeof zone === 'string' && zone && zone !== 'UTC' && isZone(zone);
    knownZone = chosen ? zone : browserZone();
  } catch {
    // Unreachable: what we knew, or the browser's.
  }
  return knownZone ?? browserZone();
}

export function forgetZone() {
  knownZone = null;
}

function isZone(zone) {
  try {
    Intl.DateTimeFormat('en-US', { timeZone: zone }); // throws RangeError for an unknown zone
    return true;
  } catch {
    return false;
  }
}

const formatters = new Map(); // zone -> formatter of numeric wall-clock parts
function partsFormatter(zone) {
  if (!formatters.has(zone)) {
    formatters.set(zone, new Intl.DateTimeFormat('en-US', {
      timeZone: zone, hourCycle: 'h23',
      year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric',
    }));
  }
  return formatters.get(zone);
}

/** {year, month (1-12), day, hour, minute, second} the clock in `zone` shows at `date`. */
export function wallClock(date, zone) {
  const parts = {};
  for (const { type, value } of partsFormatter(zone).formatToParts(date)) parts[type] = Number(value);
  return { year: parts.year, month: parts.month, day: parts.day, hour: parts.hour % 24, minute: parts.minute, second: parts.second };
}

const asUtc = (clock) => Date.UTC(clock.year, clock.month - 1, clock.day, clock.hour, clock.minute, clock.second ?? 0);

/**
 * The instant at which the clock in `zone` shows `clock`. A time skipped by a DST change comes
 * out an hour later; a time shown twice, the first of the two.
 */
export function instantOf(clock, zone) {
  const wall = asUtc(clock);
  const offsetAt = (ms) => asUtc(wallClock(new Date(ms), zone)) - Math.floor(ms / 1000) * 1000;
  // The zone's offsets a day either side: around a change of offset the two differ.
  const before = offsetAt(wall - 86_400_000);
  const after = offsetAt(wall + 86_400_000);
  const fits = [wall - before, wall - after].filter((ms) => asUtc(wallClock(new Date(ms), zone)) === wall);
  return new Date(fits.length ? Math.min(...fits) : wall - before);
}

const pad = (value, width = 2) => String(value).padStart(width, '0');

/** The value of an <input type=datetime-local step=1> showing `date` in `zone`. */
export function pickerValue(date, zone) {
  const c = wallClock(date, zone);
  return `${pad(c.year, 4)}-${pad(c.month)}-${pad(c.day)}T${pad(c.hour)}:${pad(c.minute)}:${pad(c.second)}`;
}

/** The instant a datetime-local value means in `zone`; null when it is not a full date and time. */
export function fromPickerValue(value, zone) {
  const match = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$/.exec(value ?? '');
  if (!match) return null;
  const [year, month, day, hour, minute, second] = match.slice(1).map((part) => Number(part ?? 0));
  return instantOf({ year, month, day, hour, minute, second }, zone);
}

/** Tomorrow at hour:00 by the clock in `zone`. */
export function tomorrowAt(hour, zone, now = new Date()) {
  const today = wallClock(now, zone);
  // Noon UTC of today's date plus a day: the calendar's next date, whatever the zone.
  const next = new Date(Date.UTC(today.year, today.month - 1, today.day + 1, 12));
  return instantOf({
    year: next.getUTCFullYear(), month: next.getUTCMonth() + 1, day: next.getUTCDate(), hour, minute: 0, second: 0,
  }, zone);
}

/** "Mon 30 Nov, 09:00" as the clock in `zone` shows it. */
export function formatIn(date, zone) {
  return new Intl.DateTimeFormat(undefined, {
    timeZone: zone, weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit',
  }).format(date);
}

/** The zone's name for people: "Asia/Tokyo" as "Asia/Tokyo", underscores as spaces. */
export const zoneLabel = (zone) => zone.replaceAll('_', ' ');
