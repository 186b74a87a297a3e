// The gateway's `host` interface as the test harness provides it in Node: log records are kept
// in `host.logs`, the clock reads `host.now` when set (else the real time).
export const host = {
  /** @type {{ level: string, message: string, fields: [string, string][] }[]} */
  logs: [],
  /** @type {number | undefined} */
  now: undefined,
};

export function log(level, message, fields) {
  host.logs.push({ level, message, fields });
}

export function nowMs() {
  return BigInt(host.now ?? Date.now());
}
