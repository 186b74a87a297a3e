import { backoffDelay, mayReconnectAfter, resolveBackoff, type Backoff, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { SwitchyardError, TimeoutError, UpgradeRefused } from "./errors.js";
import type { HistoryResult, Position, PublishResult, ServerFrame } from "./protocol.js";
import {
  OPEN,
  closedError,
  defaultWebSocket,
  forceClose,
  openSocket,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./socket.js";
import { Subscription, type SubscribeHandlers, type SubscriptionOwner } from "./subscription.js";

/** The connection's state: `closed` until {@link Client.connect} and after {@link Client.close}. */
export type ConnectionState = "closed" | "connecting" | "connected" | "disconnected";

/** What a URL callback is told about the attempt it chooses a URL for. */
export interface UrlContext {
  /** Consecutive failed attempts before this one (0 on a first try or after a stable connection). */
  attempt: number;
  /** The URL of the previous attempt, if any. */
  previous?: string;
}

/** One URL, a list tried in turn (moving on after each failure or disconnect), or a callback. */
export type UrlSource = string | readonly string[] | ((ctx: UrlContext) => string | Promise<string>);

/** Why a token callback is called. */
export interface TokenContext {
  /** `connect` for every connection attempt, `refresh` when the gateway said `expiring`. */
  reason: "connect" | "refresh";
}

/** A token, or a callback asked for a fresh one on every connect and refresh; null = anonymous. */
export type TokenSource =
  | string
  | ((ctx: TokenContext) => string | null | undefined | Promise<string | null | undefined>);

/** Options of a {@link Client}. */
export interface ClientOptions {
  /** `ws://host:port/ws` of a gateway, several of them, or a callback choosing one per attempt. */
  url: UrlSource;
  /** The JWT sent as `?token=`; a callback is called again on every reconnect and refresh. */
  token?: TokenSource;
  /** Reconnect timing (also used to retry subscribes the gateway answered `unavailable`). */
  backoff?: BackoffOptions;
  /** How long a request may wait for its reply, queueing included (default 10,000 ms). */
  requestTimeoutMs?: number;
  /** How long a WebSocket handshake may take (default 10,000 ms). */
  connectTimeoutMs?: number;
  /**
   * Publishes and history requests wait while the socket's `bufferedAmount` is above this many
   * bytes (default 1 MiB), so a gateway that stops reading cannot make the client buffer
   * without bound.
   */
  highWaterMark?: number;
  /** The WebSocket class to use instead of the global one or the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** Source of randomness for backoff jitter (default Math.random). */
  random?: () => number;
}

/** A connection attempt starts. */
export interface ConnectingEvent {
  /** The URL, without the token. */
  url: string;
  attempt: number;
}

/** A connection opened. */
export interface ConnectedEvent {
  url: string;
}

/** A connection or an attempt ended. */
export interface DisconnectedEvent {
  /** The WebSocket close code (1006 when the socket dropped or never opened). */
  code: number;
  reason: string;
  /** Whether the connection had opened (false for a failed attempt). */
  wasConnected: boolean;
  /** Whether the client will try again; false after close(), 4004, 4006, 4500-4999, 401, 403. */
  willReconnect: boolean;
  /** The delay before the next attempt, when there is one. */
  delayMs?: number;
  /** Why an attempt failed (an {@link UpgradeRefused} for an HTTP refusal). */
  error?: SwitchyardError;
}

/** The gateway warned that the connection's token expires soon. */
export interface ExpiringEvent {
  /** Unix seconds. */
  expiresAt: number;
  inSecs: number;
}

/** The gateway accepted a refreshed token. */
export interface RefreshedEvent {
  expiresAt: number;
}

/** The client started (`active`) or stopped holding requests back because the socket is full. */
export interface BackpressureEvent {
  active: boolean;
  bufferedAmount: number;
  /** Requests waiting in the client. */
  queued: number;
}

/** A connection's state changed. */
export interface StateEvent {
  state: ConnectionState;
  previous: ConnectionState;
}

/** Events of a {@link Client}. */
export interface ClientEvents {
  state: StateEvent;
  connecting: ConnectingEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  /** Failures not tied to a caller's promise: refused refreshes, token callback errors, ... */
  error: SwitchyardError;
  expiring: ExpiringEvent;
  refreshed: RefreshedEvent;
  /** The backend subscribed this connection to a channel it did not hold (`"server":true`). */
  subscription: Subscription;
  backpressure: BackpressureEvent;
}

/** Options of {@link Client.subscribe}. */
export interface SubscribeOptions extends SubscribeHandlers {
  /** Recover from this position (e.g. one saved from an earlier session). */
  since?: Position;
}

/** Options of {@link Client.publish}. */
export interface PublishOptions {
  /** Overrides `requestTimeoutMs` for this publish. */
  timeoutMs?: number;
}

/** Options of {@link Client.history}. */
export interface HistoryOptions {
  /** How many messages (the gateway's default is 100, its maximum 1,000). */
  limit?: number;
  /** List the messages after this position instead of the newest ones. */
  since?: Position;
  /** Overrides `requestTimeoutMs` for this request. */
  timeoutMs?: number;
}

/** The requests the client sends, all with an id and exactly one reply. */
type RequestType = "publish" | "history" | "refresh" | "subscribe" | "unsubscribe";

/** A request with an id, from creation to its one reply. */
interface Request {
  id: number;
  type: RequestType;
  text: string;
  timeoutMs: number;
  sent: boolean;
  /** Rejected or resolved already (a timed-out request stays until its reply arrives). */
  settled: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
  resolve: (reply: ServerFrame) => void;
  reject: (error: SwitchyardError) => void;
}

/** The open connection and how to end it once. */
interface Connection {
  ws: WebSocketLike;
  url: string;
  openedAt: number;
  /** Ends the connection from the client's side; later calls are ignored. */
  end: (code: number, reason: string) => void;
  ended: Promise<{ code: number; reason: string }>;
}

/** A Switchyard gateway client: one WebSocket, reconnected as needed, many subscriptions. */
export class Client extends Emitter<ClientEvents> implements SubscriptionOwner {
  readonly #url: UrlSource;
  readonly #token: TokenSource | undefined;
  readonly #backoff: Backoff;
  readonly #requestTimeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #highWaterMark: number;
  readonly #WebSocket: WebSocketConstructor | undefined;
  readonly #random: () => number;

  #state: ConnectionState = "closed";
  #conn: Connection | undefined;
  #opening: WebSocketLike | undefined;
  #loop: Promise<void> | undefined;
  #stopping = false;
  #wake: (() => void) | undefined;
  #connectWaiters: { resolve: () => void; reject: (e: SwitchyardError) => void }[] = [];
  #attempt = 0;
  #urlIndex = 0;
  #lastUrl: string | undefined;
  #nextId = 1;
  /** Requests not yet written, in call order (publish and history). */
  #outbox: Request[] = [];
  /** Written requests by id, awaiting their reply. */
  #inflight = new Map<number, Request>();
  /** Written requests in send order: the gateway replies in request order. */
  #order: Request[] = [];
  #subs = new Map<string, Subscription>();
  #pendingSubscribe = new Map<Subscription, Request>();
  #retryTimers = new Map<Subscription, ReturnType<typeof setTimeout>>();
  #retryAttempts = new Map<Subscription, number>();
  /** Stopped by close() or a final refusal: requests fail at once instead of queueing. */
  #halted = false;
  #pumpTimer: ReturnType<typeof setTimeout> | undefined;
  #congested = false;
  /** Resolved by close(), to cut short whatever the connection loop awaits. */
  #stopped: Promise<void> = Promise.resolve();
  #stop: () => void = () => {};

  /** Creates a client; nothing connects until {@link Client.connect}. */
  constructor(options: ClientOptions) {
    super();
    if (typeof options.url !== "function" && (Array.isArray(options.url) ? options.url.length === 0 : !options.url)) {
      throw new TypeError("Client needs a url");
    }
    this.#url = options.url;
    this.#token = options.token;
    this.#backoff = resolveBackoff(options.backoff);
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.#highWaterMark = options.highWaterMark ?? 1024 * 1024;
    this.#WebSocket = options.WebSocket;
    this.#random = options.random ?? Math.random;
  }

  /** The connection's current state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** The URL of the open connection (without its token), if any. */
  get url(): string | undefined {
    return this.#conn?.url;
  }

  /** Bytes written to the socket but not yet sent (0 when not connected). */
  get bufferedAmount(): number {
    return this.#conn?.ws.bufferedAmount ?? 0;
  }

  /** Requests waiting in the client for a connection or for the socket to drain. */
  get queued(): number {
    return this.#outbox.length;
  }

  /** The client's subscriptions by channel (those made by the backend included). */
  get subscriptions(): ReadonlyMap<string, Subscription> {
    return this.#subs;
  }

  /**
   * Starts connecting (and reconnecting whenever the connection drops) until
   * {@link Client.close}; resolves once connected, rejects if the client gives up first (an
   * upgrade refused with 401/403, a do-not-reconnect close code, close()).
   */
  connect(): Promise<void> {
    if (this.#state === "connected") return Promise.resolve();
    const ready = new Promise<void>((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (!this.#loop) {
      this.#stopping = false;
      this.#halted = false;
      this.#stopped = new Promise((resolve) => (this.#stop = resolve));
      this.#loop = this.#run().finally(() => {
        this.#loop = undefined;
      });
    }
    return ready;
  }

  /**
   * Closes the connection and stops reconnecting. Subscriptions are kept: a later
   * {@link Client.connect} subscribes them again, recovering where the channel has history.
   * Unanswered requests are rejected with {@link ConnectionClosed}.
   */
  async close(): Promise<void> {
    this.#stopping = true;
    this.#stop();
    this.#wake?.();
    this.#conn?.end(1000, "client closed");
    if (this.#opening) forceClose(this.#opening);
    await this.#loop;
  }

  /**
   * Subscribes to `channel` (now if connected, else on connect) and keeps it subscribed across
   * reconnects; the handlers in `options` are attached before anything can be delivered.
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    if (this.#subs.has(channel)) {
      throw new SwitchyardError(
        "already_subscribed",
        `already subscribed to ${channel}: add listeners to client.subscriptions.get(channel)`,
      );
    }
    const sub = new Subscription(this, channel, false, options.since);
    sub._attach(options);
    this.#subs.set(channel, sub);
    this.#sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes `data` (any JSON value) on `channel`; resolves once the gateway's broker
   * accepted it, with its position on channels with history. Waits for a connection and for
   * the socket to drain below the high-water mark; a publish cut by a disconnect is rejected
   * ({@link ConnectionClosed} with `sent`), never resent, since it may have been published.
   */
  publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    return this.#queue("publish", { type: "publish", channel, data }, options.timeoutMs).then((reply) => {
      const result: PublishResult = {};
      if (typeof reply.offset === "number") result.offset = reply.offset;
      if (typeof reply.epoch === "string") result.epoch = reply.epoch;
      return result;
    });
  }

  /** Reads a channel's stored messages (the newest, or those after `since`). */
  history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const frame: Record<string, unknown> = { type: "history", channel };
    if (options.limit !== undefined) frame.limit = options.limit;
    if (options.since !== undefined) frame.since = { offset: options.since.offset, epoch: options.since.epoch };
    return this.#queue("history", frame, options.timeoutMs).then((reply) => {
      const { type: _type, id: _id, ...rest } = reply;
      return { messages: [], ...rest } as unknown as HistoryResult;
    });
  }

  /**
   * Sends a newer token over the open connection (`token`, else the token callback's); resolves
   * with the new deadline, rejects with `unauthorized` when the gateway refuses it (the old
   * deadline then stands). Called by the client itself when the gateway says `expiring`.
   */
  async refresh(token?: string): Promise<RefreshedEvent> {
    const fresh = token ?? (await this.#resolveToken("refresh"));
    if (!fresh) {
      throw new SwitchyardError("token_error", "no token to refresh with: the token option gives none");
    }
    const conn = this.#conn;
    if (!conn) throw closedError(false);
    const reply = await this.#direct(conn, "refresh", { type: "refresh", token: fresh }, this.#requestTimeoutMs);
    const event: RefreshedEvent = { expiresAt: Number(reply.expires_at) };
    this.emit("refreshed", event);
    return event;
  }

  /** @internal Ends `sub` (see {@link Subscription.unsubscribe}). */
  async _unsubscribe(sub: Subscription): Promise<void> {
    if (!sub._live) return;
    if (this.#subs.get(sub.channel) === sub) this.#subs.delete(sub.channel);
    this.#forgetRetries(sub);
    this.#pendingSubscribe.delete(sub);
    sub._ended(false);
    const conn = this.#conn;
    // Without a connection the gateway holds nothing; with one, unsubscribing a channel it
    // does not hold (a subscribe that failed) is harmless.
    if (!conn) return;
    try {
      await this.#direct(conn, "unsubscribe", { type: "unsubscribe", channel: sub.channel }, this.#requestTimeoutMs);
    } catch {
      // A connection that dropped or a gateway that did not answer holds no subscription we
      // would resend: the subscription is over for this client either way.
    }
  }

  // ---- connection loop ----

  /** Connects, waits for the connection to end, decides whether and when to go again. */
  async #run(): Promise<void> {
    while (!this.#stopping) {
      this.#setState("connecting");
      const attempt = this.#attempt;
      const ended = await this.#attemptOnce(attempt);
      if (ended === undefined) break;
      const { code, reason, wasConnected, error, lived } = ended;
      let willReconnect = !this.#stopping;
      let delayMs = 0;
      if (error instanceof UpgradeRefused && (error.status === 401 || error.status === 403)) {
        willReconnect = false;
      } else if (wasConnected && !mayReconnectAfter(code)) {
        willReconnect = false;
      }
      if (wasConnected && lived >= this.#backoff.stableMs) this.#attempt = 0;
      if (wasConnected && code === 1001 && this.#attempt === 0) {
        // The node is draining and we were not failing before: another node can take us at
        // once. Counting it as an attempt makes a second drain soon after wait its turn.
        delayMs = 0;
      } else {
        delayMs = backoffDelay(this.#backoff, this.#attempt, this.#random);
      }
      this.#attempt++;
      const event: DisconnectedEvent = { code, reason, wasConnected, willReconnect };
      if (willReconnect) event.delayMs = delayMs;
      if (error && !this.#stopping) event.error = error;
      this.emit("disconnected", event);
      if (event.error) this.emit("error", event.error);
      if (!willReconnect) {
        this.#shutDown(this.#stopping ? closedError(false) : (error ?? closedError(false, code, reason)));
        break;
      }
      this.#setState("disconnected");
      await this.#sleep(delayMs);
    }
    if (this.#state !== "closed") {
      this.#shutDown(closedError(false));
    }
  }

  /**
   * One attempt: resolves when it failed or its connection ended (undefined if close() came
   * before anything was opened).
   */
  async #attemptOnce(attempt: number): Promise<
    { code: number; reason: string; wasConnected: boolean; lived: number; error?: SwitchyardError } | undefined
  > {
    let url: string;
    let token: string | null | undefined;
    let Ctor: WebSocketConstructor;
    try {
      const prepared = (async () => {
        const url = await this.#pickUrl(attempt);
        const token = await this.#resolveToken("connect");
        return { url, token, Ctor: this.#WebSocket ?? (await defaultWebSocket()) };
      })();
      // A callback still working when close() comes must not hold close() up.
      prepared.catch(() => {});
      const got = await Promise.race([prepared, this.#stopped.then(() => undefined)]);
      if (got === undefined) return undefined;
      ({ url, token, Ctor } = got);
    } catch (cause) {
      if (this.#stopping) return undefined;
      const error =
        cause instanceof SwitchyardError
          ? cause
          : new SwitchyardError("token_error", `url or token callback failed: ${String(cause)}`, { cause });
      return { code: 1006, reason: error.message, wasConnected: false, lived: 0, error };
    }
    if (this.#stopping) return undefined;
    this.#lastUrl = url;
    this.emit("connecting", { url, attempt });
    let opening;
    try {
      opening = openSocket(Ctor, withToken(url, token), this.#connectTimeoutMs);
    } catch (cause) {
      const error = new SwitchyardError("connect_failed", `cannot open ${url}: ${String(cause)}`, { cause });
      return { code: 1006, reason: error.message, wasConnected: false, lived: 0, error };
    }
    this.#opening = opening.ws;
    const failure = await opening.outcome;
    this.#opening = undefined;
    if (failure) {
      return { code: failure.code, reason: failure.reason, wasConnected: false, lived: 0, error: failure.error };
    }
    if (this.#stopping) {
      opening.ws.close(1000, "client closed");
      return undefined;
    }
    const conn = this.#open(opening.ws, url);
    const { code, reason } = await conn.ended;
    return { code, reason, wasConnected: true, lived: Date.now() - conn.openedAt };
  }

  /** Makes `ws` the connection: wires it, resubscribes everything, flushes the queue. */
  #open(ws: WebSocketLike, url: string): Connection {
    let finish!: (how: { code: number; reason: string }) => void;
    const ended = new Promise<{ code: number; reason: string }>((resolve) => (finish = resolve));
    let done = false;
    const conn: Connection = {
      ws,
      url,
      openedAt: Date.now(),
      ended,
      end: (code, reason) => {
        if (done) return;
        done = true;
        this.#lost(conn, code, reason);
        if (code === 1000 && ws.readyState === OPEN) {
          ws.close(1000, reason);
          // A gateway that no longer reads would keep the closing handshake open for long.
          const timer = setTimeout(() => forceClose(ws), 1000);
          ws.addEventListener("close", () => clearTimeout(timer));
        } else {
          forceClose(ws);
        }
        finish({ code, reason });
      },
    };
    ws.addEventListener("message", (event: { data?: unknown }) => {
      if (!done) this.#onFrame(event.data);
    });
    ws.addEventListener("close", (event: { code?: number; reason?: string }) => {
      if (done) return;
      done = true;
      const code = event.code ?? 1006;
      const reason = event.reason ?? "";
      this.#lost(conn, code, reason);
      finish({ code, reason });
    });
    this.#conn = conn;
    this.#setState("connected");
    this.emit("connected", { url });
    for (const w of this.#connectWaiters.splice(0)) w.resolve();
    for (const sub of this.#subs.values()) {
      this.#cancelRetry(sub);
      this.#sendSubscribe(sub);
    }
    this.#pump();
    return conn;
  }

  /** The connection ended: fail what it carried, keep what a new one can send. */
  #lost(conn: Connection, code: number, reason: string): void {
    if (this.#conn !== conn) return;
    this.#conn = undefined;
    if (this.#pumpTimer !== undefined) clearTimeout(this.#pumpTimer);
    this.#pumpTimer = undefined;
    this.#setCongested(false, 0);
    const cut = [...this.#inflight.values()];
    this.#inflight.clear();
    this.#order = [];
    this.#pendingSubscribe.clear();
    for (const req of cut) this.#settle(req, undefined, closedError(true, code, reason));
    for (const sub of this.#subs.values()) {
      this.#cancelRetry(sub);
      sub._disconnected();
    }
    // Visible at once, before the loop decides what comes next (close() goes to "closed").
    if (!this.#stopping) this.#setState("disconnected");
  }

  /** The client stops for good (until connect() again): reject what is waiting. */
  #shutDown(error: SwitchyardError): void {
    this.#halted = true;
    this.#setState("closed");
    for (const req of this.#outbox.splice(0)) this.#settle(req, undefined, closedError(false));
    for (const w of this.#connectWaiters.splice(0)) w.reject(error);
  }

  /** Waits `ms`, or less if close() is called meanwhile. */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }

  /** The URL for this attempt: a list moves on after every failure or disconnect. */
  async #pickUrl(attempt: number): Promise<string> {
    const source = this.#url;
    if (typeof source === "string") return source;
    if (typeof source === "function") {
      const ctx: UrlContext = { attempt };
      if (this.#lastUrl !== undefined) ctx.previous = this.#lastUrl;
      return await source(ctx);
    }
    const list = source as readonly string[];
    const url = list[this.#urlIndex % list.length] as string;
    this.#urlIndex = (this.#urlIndex + 1) % list.length;
    return url;
  }

  /** The token to use now, from the option (a callback is asked every time). */
  async #resolveToken(reason: TokenContext["reason"]): Promise<string | null | undefined> {
    const source = this.#token;
    if (typeof source === "function") return await source({ reason });
    return source;
  }

  /** Moves to `state`, telling listeners only of real changes. */
  #setState(state: ConnectionState): void {
    const previous = this.#state;
    if (previous === state) return;
    this.#state = state;
    this.emit("state", { state, previous });
  }

  // ---- frames in ----

  /** Routes one frame from the gateway. */
  #onFrame(raw: unknown): void {
    if (typeof raw !== "string") return;
    let frame: ServerFrame;
    try {
      const parsed: unknown = JSON.parse(raw);
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return;
      frame = parsed as ServerFrame;
    } catch {
      return;
    }
    const channel = typeof frame.channel === "string" ? frame.channel : undefined;
    switch (frame.type) {
      case "message": {
        const sub = channel === undefined ? undefined : this.#subs.get(channel);
        if (!sub) return;
        const pending = this.#pendingSubscribe.get(sub);
        // A long recovery is progress, not a hung subscribe.
        if (pending) this.#arm(pending);
        sub._deliver(frame);
        return;
      }
      case "join":
      case "leave": {
        const sub = channel === undefined ? undefined : this.#subs.get(channel);
        sub?._presence(frame.type, frame);
        return;
      }
      case "subscribed":
      case "unsubscribed":
        if (frame.server === true && frame.id === undefined) {
          if (channel !== undefined) this.#serverSide(frame.type, channel, frame);
          return;
        }
        this.#reply(frame);
        return;
      case "expiring":
        this.#onExpiring(frame);
        return;
      case "published":
      case "history":
      case "refreshed":
        this.#reply(frame);
        return;
      case "error":
        if (frame.id === undefined && this.#order.length === 0) {
          this.emit("error", errorFrom(frame));
          return;
        }
        this.#reply(frame);
        return;
      default:
        // Frame types added to the protocol later are not an error.
        return;
    }
  }

  /**
   * Matches a reply to its request. Replies come back in request order, so one without an id
   * (an error for a frame too large to parse) belongs to the oldest request still waiting.
   */
  #reply(frame: ServerFrame): void {
    let req: Request | undefined;
    if (frame.id === undefined) {
      req = this.#order.shift();
    } else {
      req = typeof frame.id === "number" ? this.#inflight.get(frame.id) : undefined;
      if (req) {
        const at = this.#order.indexOf(req);
        // Earlier requests were answered already (or never will be): forget their place.
        if (at >= 0) this.#order.splice(0, at + 1);
      }
    }
    if (!req) return;
    this.#inflight.delete(req.id);
    if (frame.type === "error") this.#settle(req, undefined, errorFrom(frame));
    else this.#settle(req, frame, undefined);
  }

  /** A `subscribed`/`unsubscribed` the backend caused (`"server":true`). */
  #serverSide(type: "subscribed" | "unsubscribed", channel: string, frame: ServerFrame): void {
    let sub = this.#subs.get(channel);
    if (type === "unsubscribed") {
      if (!sub) return;
      this.#subs.delete(channel);
      this.#forgetRetries(sub);
      this.#pendingSubscribe.delete(sub);
      sub._ended(true);
      return;
    }
    if (!sub) {
      sub = new Subscription(this, channel, true);
      this.#subs.set(channel, sub);
      sub._begin(undefined);
      this.emit("subscription", sub);
    }
    sub._subscribed(frame, true);
  }

  /** The token expires soon: refresh it through the callback, if there is one. */
  #onExpiring(frame: ServerFrame): void {
    this.emit("expiring", { expiresAt: Number(frame.expires_at), inSecs: Number(frame.in_secs) });
    if (typeof this.#token !== "function") return;
    this.refresh().catch((error: unknown) => {
      this.emit(
        "error",
        error instanceof SwitchyardError
          ? error
          : new SwitchyardError("token_error", `token callback failed: ${String(error)}`, { cause: error }),
      );
    });
  }

  // ---- requests out ----

  /** Sends a subscribe for `sub` now, if connected (else the next connection will). */
  #sendSubscribe(sub: Subscription): void {
    const conn = this.#conn;
    if (!conn || !sub._live) return;
    const since = sub.position;
    const frame: Record<string, unknown> = { type: "subscribe", channel: sub.channel };
    if (since) frame.since = { offset: since.offset, epoch: since.epoch };
    sub._begin(since);
    const req = this.#request("subscribe", frame, this.#requestTimeoutMs);
    req.resolve = (reply) => {
      this.#pendingSubscribe.delete(sub);
      this.#forgetRetries(sub);
      sub._subscribed(reply, false);
    };
    req.reject = (error) => {
      if (this.#pendingSubscribe.get(sub) !== req) return;
      this.#pendingSubscribe.delete(sub);
      // A dropped connection resubscribes everything anyway.
      if (error.code === "connection_closed") return;
      const willRetry = error.code === "unavailable" || error.code === "timeout";
      if (!willRetry && this.#subs.get(sub.channel) === sub) this.#subs.delete(sub.channel);
      sub._failed(error, willRetry);
      if (willRetry) this.#scheduleRetry(sub);
    };
    this.#pendingSubscribe.set(sub, req);
    this.#write(conn, req);
  }

  /** Subscribes `sub` again after a backoff delay (the gateway answered `unavailable`). */
  #scheduleRetry(sub: Subscription): void {
    const attempt = this.#retryAttempts.get(sub) ?? 0;
    this.#retryAttempts.set(sub, attempt + 1);
    this.#cancelRetry(sub);
    const timer = setTimeout(() => {
      this.#retryTimers.delete(sub);
      this.#sendSubscribe(sub);
    }, backoffDelay(this.#backoff, attempt, this.#random));
    this.#retryTimers.set(sub, timer);
  }

  /** Cancels a pending retry of `sub` (its attempt count stays while it keeps failing). */
  #cancelRetry(sub: Subscription): void {
    const timer = this.#retryTimers.get(sub);
    if (timer !== undefined) clearTimeout(timer);
    this.#retryTimers.delete(sub);
  }

  /** `sub` succeeded or ended: its next failure starts the backoff over. */
  #forgetRetries(sub: Subscription): void {
    this.#cancelRetry(sub);
    this.#retryAttempts.delete(sub);
  }

  /** A request that is sent at once on `conn` (subscribe, unsubscribe, refresh). */
  #direct(conn: Connection, type: RequestType, frame: Record<string, unknown>, timeoutMs: number): Promise<ServerFrame> {
    return new Promise((resolve, reject) => {
      const req = this.#request(type, frame, timeoutMs);
      req.resolve = resolve;
      req.reject = reject;
      this.#write(conn, req);
    });
  }

  /** A request that waits for a connection and a drained socket (publish, history). */
  #queue(type: RequestType, frame: Record<string, unknown>, timeoutMs: number | undefined): Promise<ServerFrame> {
    return new Promise((resolve, reject) => {
      const req = this.#request(type, frame, timeoutMs ?? this.#requestTimeoutMs);
      req.resolve = resolve;
      req.reject = reject;
      this.#arm(req);
      if (this.#halted) {
        this.#settle(req, undefined, closedError(false));
        return;
      }
      this.#outbox.push(req);
      this.#pump();
    });
  }

  /** Builds a request with a fresh id; throws (synchronously) if `frame` is not JSON. */
  #request(type: RequestType, frame: Record<string, unknown>, timeoutMs: number): Request {
    const id = this.#nextId++;
    const text = JSON.stringify({ ...frame, id });
    return {
      id,
      type,
      text,
      timeoutMs,
      sent: false,
      settled: false,
      timer: undefined,
      resolve: () => {},
      reject: () => {},
    };
  }

  /** (Re)starts `req`'s timeout. */
  #arm(req: Request): void {
    if (req.timer !== undefined) clearTimeout(req.timer);
    req.timer = setTimeout(() => {
      req.timer = undefined;
      if (!req.sent) {
        const at = this.#outbox.indexOf(req);
        if (at >= 0) this.#outbox.splice(at, 1);
      }
      // A sent request keeps its place in #order: its late reply must still be matched.
      this.#settle(
        req,
        undefined,
        new TimeoutError(
          `${req.type} got no reply within ${req.timeoutMs} ms${req.sent ? "" : " (never sent: no connection or a full socket)"}`,
          req.sent,
        ),
      );
    }, req.timeoutMs);
  }

  /** Writes `req` to the socket. */
  #write(conn: Connection, req: Request): void {
    try {
      conn.ws.send(req.text);
    } catch (cause) {
      this.#settle(req, undefined, new SwitchyardError("connection_closed", `send failed: ${String(cause)}`, { cause }));
      return;
    }
    req.sent = true;
    this.#inflight.set(req.id, req);
    this.#order.push(req);
    if (req.timer === undefined && !req.settled) this.#arm(req);
  }

  /** Writes queued requests while the socket is below the high-water mark. */
  #pump(): void {
    if (this.#pumpTimer !== undefined) return;
    const conn = this.#conn;
    if (!conn) return;
    while (this.#outbox.length > 0) {
      const buffered = conn.ws.bufferedAmount;
      if (buffered > this.#highWaterMark) {
        this.#setCongested(true, buffered);
        // WebSocket has no drain event (browsers): look again shortly.
        this.#pumpTimer = setTimeout(() => {
          this.#pumpTimer = undefined;
          this.#pump();
        }, 5);
        return;
      }
      const req = this.#outbox.shift() as Request;
      this.#write(conn, req);
    }
    this.#setCongested(false, conn.ws.bufferedAmount);
  }

  /** Reports the start or end of holding requests back (once per change). */
  #setCongested(active: boolean, bufferedAmount: number): void {
    if (this.#congested === active) return;
    this.#congested = active;
    this.emit("backpressure", { active, bufferedAmount, queued: this.#outbox.length });
  }

  /** Resolves or rejects `req` once. */
  #settle(req: Request, reply: ServerFrame | undefined, error: SwitchyardError | undefined): void {
    if (req.timer !== undefined) clearTimeout(req.timer);
    req.timer = undefined;
    if (req.settled) return;
    req.settled = true;
    if (error) req.reject(error);
    else req.resolve(reply as ServerFrame);
  }
}

/** The typed error for an `{"type":"error"}` frame. */
function errorFrom(frame: ServerFrame): SwitchyardError {
  const code = typeof frame.code === "string" ? frame.code : "internal";
  const message = typeof frame.message === "string" ? frame.message : code;
  return new SwitchyardError(code, message);
}

/** `url` with `?token=` set (tokens travel in the query: browsers cannot set headers). */
function withToken(url: string, token: string | null | undefined): string {
  if (!token) return url;
  const u = new URL(url);
  u.searchParams.set("token", token);
  return u.toString();
}
