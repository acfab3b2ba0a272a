// Reads GET /api/v1/admin/stats (app/admin_stats.py) into the series the dashboard draws: one
// value per day for each bar or line, days in order; a day without data is 0 for a count and
// null (a gap) for a rate or a latency.

const number = (value) => (typeof value === 'number' && Number.isFinite(value) ? value : null);
const counted = (value) => number(value) ?? 0;
const entries = (value) => (value && typeof value === 'object' && !Array.isArray(value) ? Object.entries(value) : []);
const share = (value) => (number(value) === null ? null : value * 100);
const p = (figures, name) => number(figures?.[name]);

/**
 * The model: labels (days), pushes [{provider, outcome, data}], successRate (%), p50, p95 (ms),
 * openRate (%), timeToOpen (median, s), skipped [{reason, data}], devices [{label, data}]
 * (registered, by provider), inactive {30, 60, 90}, totals {pushes, delivered, notified, opened}.
 */
export function readStats(answer) {
  const days = (Array.isArray(answer?.series) ? answer.series : [])
    .filter((day) => day && typeof day === 'object' && typeof day.day === 'string');
  const n = days.length;
  const series = (map, key) => {
    if (!map.has(key)) map.set(key, new Array(n).fill(0));
    return map.get(key);
  };
  const pushes = new Map();
  const skipped = new Map();
  const devices = new Map();
  const totals = { pushes: 0, delivered: 0, notified: 0, opened: 0 };

  days.forEach((day, i) => {
    for (const [provider, outcomes] of entries(day.pushes)) {
      for (const [outcome, count] of entries(outcomes)) series(pushes, `${provider}\u0000${outcome}`)[i] += counted(count);
    }
    for (const [reason, count] of entries(day.skipped)) series(skipped, reason)[i] += counted(count);
    for (const [provider, count] of entries(day.devices_registered)) series(devices, provider)[i] += counted(count);
    totals.pushes += counted(day.pushes_total);
    totals.delivered += counted(day.delivered);
    totals.notified += counted(day.notifications);
    totals.opened += counted(day.opened);
  });

  const inactive = {};
  for (const age of [30, 60, 90]) inactive[age] = number(answer?.devices_inactive?.[String(age)]);

  return {
    labels: days.map((day) => day.day.slice(0, 10)),
    pushes: [...pushes].map(([key, data]) => {
      const [provider, outcome] = key.split('\u0000');
      return { provider, outcome, data };
    }),
    successRate: days.map((day) => share(day.success_rate)),
    p50: days.map((day) => p(day.commit_to_accepted_ms, 'p50')),
    p95: days.map((day) => p(day.commit_to_accepted_ms, 'p95')),
    openRate: days.map((day) => share(day.open_rate)),
    timeToOpen: days.map((day) => p(day.time_to_open_seconds, 'p50')),
    skipped: [...skipped].map(([reason, data]) => ({ reason, data })),
    devices: [...devices].map(([label, data]) => ({ label, data })),
    inactive,
    totals,
  };
}
