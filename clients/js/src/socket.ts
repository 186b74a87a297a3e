import { ConnectionClosed, SwitchyardError, UpgradeRefused } from "./errors.js";

/**
 * The part of the WebSocket API the client uses, met by browsers' WebSocket and by the `ws`
 * package. Listener parameters are `any` because the two disagree on event classes.
 */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  addEventListener(type: string, listener: (event: any) => void): void;
  /** `ws` only: forcibly destroys the socket without a closing handshake. */
  terminate?(): void;
  /** `ws` only: Node-style events, used to read a refused upgrade's status and body. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  on?(event: string, listener: (...args: any[]) => void): unknown;
}

/** A WebSocket class: the browser's global one, `ws`'s, or a compatible wrapper. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** readyState of an open socket (the same in every implementation). */
export const OPEN = 1;

let cached: Promise<WebSocketConstructor> | undefined;

/**
 * The environment's WebSocket class: the global one where there is one (browsers, Deno, newer
 * Node), else the `ws` package. The module name is held in a variable so that TypeScript and
 * browsers never try to resolve the bare specifier on the browser path.
 */
export function defaultWebSocket(): Promise<WebSocketConstructor> {
  cached ??= (async () => {
    const global = (globalThis as { WebSocket?: unknown }).WebSocket;
    if (typeof global === "function") return global as WebSocketConstructor;
    const name = "ws";
    try {
      const mod = (await import(name)) as { default?: unknown; WebSocket?: unknown };
      const ctor = mod.WebSocket ?? mod.default;
      if (typeof ctor !== "function") throw new TypeError("the ws module exports no WebSocket");
      return ctor as WebSocketConstructor;
    } catch (cause) {
      cached = undefined;
      throw new SwitchyardError(
        "connect_failed",
        "no WebSocket implementation: install the `ws` package or pass `WebSocket` in the options",
        { cause },
      );
    }
  })();
  return cached;
}

/** How a connection attempt ended before the socket opened. */
export interface OpenFailure {
  code: number;
  reason: string;
  error: SwitchyardError;
}

/** An opening socket with the outcome of its handshake. */
export interface Opening {
  ws: WebSocketLike;
  /** Resolves with `null` once open, or with why it never opened. */
  outcome: Promise<OpenFailure | null>;
}

/**
 * Starts a WebSocket to `url` and reports whether the handshake succeeded, failing it after
 * `timeoutMs`. With `ws`, a refused upgrade's status and body are kept so that a 401 can be
 * told apart from a network error (browsers report both as close 1006).
 */
export function openSocket(
  Ctor: WebSocketConstructor,
  url: string,
  timeoutMs: number,
): Opening {
  const ws = new Ctor(url);
  let refusal: UpgradeRefused | undefined;
  let timedOut = false;
  if (typeof ws.on === "function") {
    ws.on("unexpected-response", (_req: unknown, res: ResponseLike) => {
      let body = "";
      const done = () => {
        refusal ??= new UpgradeRefused(res.statusCode ?? 0, body.trim());
        forceClose(ws);
      };
      res.setEncoding?.("utf8");
      res.on("data", (chunk: unknown) => {
        if (body.length < 1024) body += String(chunk);
      });
      res.on("end", done);
      res.on("error", done);
    });
  }
  const outcome = new Promise<OpenFailure | null>((resolve) => {
    const timer = setTimeout(() => {
      timedOut = true;
      forceClose(ws);
    }, timeoutMs);
    ws.addEventListener("open", () => {
      clearTimeout(timer);
      resolve(null);
    });
    ws.addEventListener("close", (event: { code?: number; reason?: string }) => {
      clearTimeout(timer);
      const code = event.code ?? 1006;
      const reason = event.reason ?? "";
      const error =
        refusal ??
        new SwitchyardError(
          timedOut ? "timeout" : "connect_failed",
          timedOut
            ? `no WebSocket handshake within ${timeoutMs} ms`
            : `connection failed (close ${code}${reason ? ` ${reason}` : ""})`,
        );
      resolve({ code, reason: refusal ? refusal.body : reason, error });
    });
    // An error event is always followed by a close event, which settles the outcome.
    ws.addEventListener("error", () => {});
  });
  return { ws, outcome };
}

/** The bits of Node's IncomingMessage read from a refused upgrade. */
interface ResponseLike {
  statusCode?: number;
  setEncoding?(encoding: string): void;
  on(event: string, listener: (chunk?: unknown) => void): unknown;
}

/** Closes `ws` without waiting for the peer: `ws`'s terminate where there is one. */
export function forceClose(ws: WebSocketLike): void {
  try {
    if (typeof ws.terminate === "function") ws.terminate();
    else ws.close();
  } catch {
    // Closing a socket that is already closing is not an error worth reporting.
  }
}

/** Wraps the close of a connection into the error its unanswered requests are rejected with. */
export function closedError(sent: boolean, code?: number, reason?: string): ConnectionClosed {
  const how = code === undefined ? "the client was closed" : `connection closed (${code}${reason ? ` ${reason}` : ""})`;
  return new ConnectionClosed(
    sent ? `${how} before the reply: the request may or may not have been performed` : `${how} before the request was sent`,
    sent,
    code,
    reason,
  );
}
