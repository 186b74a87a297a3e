/** Reconnect and retry timing: exponential backoff with full jitter. */
export interface BackoffOptions {
  /** Upper bound of the first delay, in milliseconds (default 500). */
  initialMs?: number;
  /** Cap of any delay, in milliseconds (default 30,000). */
  maxMs?: number;
  /** Growth of the bound per failed attempt (default 2). */
  factor?: number;
  /**
   * A connection that stayed open this long (default 5,000 ms) resets the attempt count; a
   * shorter one counts as a failed attempt, so a server that accepts and closes at once
   * cannot drive a reconnect storm.
   */
  stableMs?: number;
}

/** {@link BackoffOptions} with every default filled in. */
export type Backoff = Required<BackoffOptions>;

/** Fills in the defaults of `options` and checks they make sense. */
export function resolveBackoff(options: BackoffOptions = {}): Backoff {
  const b: Backoff = {
    initialMs: options.initialMs ?? 500,
    maxMs: options.maxMs ?? 30_000,
    factor: options.factor ?? 2,
    stableMs: options.stableMs ?? 5_000,
  };
  if (!(b.initialMs >= 0 && b.maxMs >= b.initialMs && b.factor >= 1 && b.stableMs >= 0)) {
    throw new RangeError(`invalid backoff ${JSON.stringify(b)}`);
  }
  return b;
}

/**
 * The delay before retry number `attempt` (0 for the first): uniformly random below the
 * exponential bound ("full jitter"), so clients cut off together do not come back together.
 */
export function backoffDelay(b: Backoff, attempt: number, random: () => number): number {
  const bound = Math.min(b.maxMs, b.initialMs * Math.pow(b.factor, Math.min(attempt, 64)));
  return Math.floor(random() * bound);
}

/**
 * Whether the protocol allows reconnecting after a close with `code`: not after a revoked
 * token (4004), an explicit "do not reconnect" (4006) or an API code in 4500-4999.
 */
export function mayReconnectAfter(code: number): boolean {
  return !(code === 4004 || code === 4006 || (code >= 4500 && code <= 4999));
}
