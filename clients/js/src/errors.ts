/** Error codes the gateway sends in `{"type":"error"}` replies (see docs/protocol.md). */
export type ServerErrorCode =
  | "invalid_json"
  | "unknown_type"
  | "invalid_field"
  | "invalid_channel"
  | "too_many_subscriptions"
  | "message_too_large"
  | "rate_limited"
  | "forbidden"
  | "plugin_error"
  | "unavailable"
  | "no_history"
  | "unauthorized"
  | "internal";

/** Codes of failures detected by the client itself rather than reported by the gateway. */
export type ClientErrorCode =
  | "timeout"
  | "connection_closed"
  | "connect_failed"
  | "upgrade_refused"
  | "too_many_connections"
  | "token_error"
  | "already_subscribed"
  | "unsubscribed";

/** Every code a {@link SwitchyardError} may carry; unknown future server codes pass through. */
export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** Any failure reported by the client; `code` is stable and meant for programs. */
export class SwitchyardError extends Error {
  /** The protocol's error code, or one of the client's own ({@link ClientErrorCode}). */
  readonly code: ErrorCode;

  /** Creates an error with a machine-readable `code` and a human `message`. */
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = "SwitchyardError";
  }
}

/** A request got no reply within its timeout. */
export class TimeoutError extends SwitchyardError {
  /**
   * Whether the request had been written to a socket: if not, it was certainly not performed
   * and may be retried; if so, the gateway may still have performed it.
   */
  readonly sent: boolean;

  /** Creates a timeout error for a request that was or was not `sent`. */
  constructor(message: string, sent: boolean) {
    super("timeout", message);
    this.name = "TimeoutError";
    this.sent = sent;
  }
}

/** The connection ended (or the client was closed) before the request was answered. */
export class ConnectionClosed extends SwitchyardError {
  /** Whether the request had been sent: if so, it may or may not have been performed. */
  readonly sent: boolean;
  /** The WebSocket close code, when the connection was open. */
  readonly closeCode: number | undefined;
  /** The WebSocket close reason, when there was one. */
  readonly reason: string | undefined;

  /** Creates the error for a request cut by a close with `closeCode` and `reason`. */
  constructor(message: string, sent: boolean, closeCode?: number, reason?: string) {
    super("connection_closed", message);
    this.name = "ConnectionClosed";
    this.sent = sent;
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

/**
 * The gateway answered the WebSocket upgrade with an HTTP error (only detectable where the
 * WebSocket implementation exposes it, i.e. the `ws` package in Node; browsers hide it).
 */
export class UpgradeRefused extends SwitchyardError {
  /** The HTTP status: 401 (token refused), 403 (origin or connect plugin), 429, 502, 503... */
  readonly status: number;
  /** The response body: the gateway's reason, e.g. `token expired`. */
  readonly body: string;

  /** Creates the error for an upgrade answered with `status` and `body`. */
  constructor(status: number, body: string) {
    super(upgradeCode(status), `upgrade refused with HTTP ${status}: ${body}`);
    this.name = "UpgradeRefused";
    this.status = status;
    this.body = body;
  }
}

/** The protocol's code closest to an upgrade status, so callers can switch on `code` alone. */
function upgradeCode(status: number): ErrorCode {
  switch (status) {
    case 401:
      return "unauthorized";
    case 403:
      return "forbidden";
    case 429:
      return "too_many_connections";
    case 502:
      return "plugin_error";
    case 503:
      return "unavailable";
    default:
      return "upgrade_refused";
  }
}
