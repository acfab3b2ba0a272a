// Naming a browser from its User-Agent string, for device and session lists.

const BROWSERS = [[/Edg\//, 'Edge'], [/OPR\//, 'Opera'], [/Firefox\//, 'Firefox'], [/Chrome\//, 'Chrome'], [/Safari\//, 'Safari']];
const SYSTEMS = [[/Android/, 'Android'], [/iPhone|iPad/, 'iOS'], [/Mac OS X/, 'macOS'], [/Windows/, 'Windows'], [/CrOS/, 'ChromeOS'], [/Linux/, 'Linux']];

/** A short label, e.g. "Firefox on Linux"; null when the string names no browser or system we know. */
export function describeAgent(agent) {
  if (typeof agent !== 'string') return null;
  const browser = BROWSERS.find(([pattern]) => pattern.test(agent))?.[1];
  const system = SYSTEMS.find(([pattern]) => pattern.test(agent))?.[1];
  if (!browser && !system) return null;
  return system ? `${browser ?? 'Browser'} on ${system}` : browser;
}
