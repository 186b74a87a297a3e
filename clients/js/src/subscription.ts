import { Emitter, type Listener } from "./emitter.js";
import { SwitchyardError } from "./errors.js";
import { positionOf, type Position, type ServerFrame } from "./protocol.js";

/** Where a subscription is in its life. */
export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed" | "failed";

/** A delivery on the subscription's channel. */
export interface MessageEvent {
  channel: string;
  data: unknown;
  /** The message's position, on channels with history. */
  offset?: number;
  epoch?: string;
  /** True for messages replayed from history while recovering after a reconnect. */
  recovered: boolean;
}

/** The gateway confirmed the subscription (again, after a reconnect, when `resubscribed`). */
export interface SubscribedEvent {
  channel: string;
  /** The position the subscription continues after, on channels with history. */
  offset?: number;
  epoch?: string;
  /** Present when the subscribe asked to recover (`since`): whether nothing was lost. */
  recovered?: boolean;
  /** The backend made this subscription (`POST /api/subscribe`), not this client. */
  server: boolean;
  /** Not the first `subscribed` of this subscription: it came back after a reconnect. */
  resubscribed: boolean;
}

/** Recovery after a reconnect delivered every message missed since `since`. */
export interface RecoveredEvent {
  /** How many messages history replayed (they came as `message` events with `recovered`). */
  count: number;
  since: Position;
  position?: Position;
}

/**
 * Messages may have been lost: the gateway could not recover from `since`
 * (`not_recovered`: history was lost, trimmed or expired, or the channel keeps none), or live
 * deliveries moved to a new epoch (`epoch_changed`: the channel's history was reset, e.g.
 * Redis restarted). Reload the channel's state by other means.
 */
export interface GapEvent {
  reason: "not_recovered" | "epoch_changed";
  since?: Position;
  position?: Position;
}

/** A subscriber joined or left the channel (namespaces with `join_leave`). */
export interface PresenceEvent {
  channel: string;
  /** The user; null for an anonymous connection. */
  user: string | null;
  /** What the channel's deliver plugin made of the event, when it rewrote it. */
  info?: unknown;
}

/** A subscribe failed: `willRetry` when it was `unavailable` or timed out and is retried. */
export interface SubscriptionErrorEvent {
  error: SwitchyardError;
  willRetry: boolean;
}

/** The subscription ended: by {@link Subscription.unsubscribe}, or by the backend (`server`). */
export interface UnsubscribedEvent {
  channel: string;
  server: boolean;
}

/** Events of a {@link Subscription}. */
export interface SubscriptionEvents {
  message: MessageEvent;
  subscribed: SubscribedEvent;
  recovered: RecoveredEvent;
  gap: GapEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
  error: SubscriptionErrorEvent;
  unsubscribed: UnsubscribedEvent;
}

/** Handlers that {@link Client.subscribe} attaches before anything can be delivered. */
export interface SubscribeHandlers {
  onMessage?: Listener<MessageEvent>;
  onSubscribed?: Listener<SubscribedEvent>;
  onRecovered?: Listener<RecoveredEvent>;
  onGap?: Listener<GapEvent>;
  onJoin?: Listener<PresenceEvent>;
  onLeave?: Listener<PresenceEvent>;
  onError?: Listener<SubscriptionErrorEvent>;
  onUnsubscribed?: Listener<UnsubscribedEvent>;
}

/** What a subscription needs from its client. */
export interface SubscriptionOwner {
  /** @internal */
  _unsubscribe(sub: Subscription): Promise<void>;
}

/**
 * One channel this client is subscribed to. It survives reconnects: the client subscribes it
 * again on every new connection, from the last position seen where the channel has history.
 */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** The channel name. */
  readonly channel: string;
  readonly #owner: SubscriptionOwner;
  #server: boolean;
  #state: SubscriptionState = "subscribing";
  #position: Position | undefined;
  #everSubscribed = false;
  #recovering: Position | undefined;
  #recoveredCount = 0;
  #waiters: { resolve: (e: SubscribedEvent) => void; reject: (e: SwitchyardError) => void }[] = [];
  #lastSubscribed: SubscribedEvent | undefined;
  #failure: SwitchyardError | undefined;

  /** @internal Made by the client only. */
  constructor(owner: SubscriptionOwner, channel: string, server: boolean, since?: Position) {
    super();
    this.#owner = owner;
    this.channel = channel;
    this.#server = server;
    this.#position = since;
  }

  /** Where the subscription is: subscribing (also while reconnecting), subscribed, or ended. */
  get state(): SubscriptionState {
    return this.#state;
  }

  /** The last position seen on the channel (what a recovery continues from), if any. */
  get position(): Position | undefined {
    return this.#position;
  }

  /** Whether the backend made this subscription rather than this client. */
  get server(): boolean {
    return this.#server;
  }

  /**
   * Resolves with the `subscribed` event once the gateway confirmed the subscription (at once
   * if it already has); rejects if it failed for good or was unsubscribed first.
   */
  ready(): Promise<SubscribedEvent> {
    if (this.#state === "subscribed" && this.#lastSubscribed) {
      return Promise.resolve(this.#lastSubscribed);
    }
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Ends the subscription; resolves once the gateway confirmed it (or the connection is gone). */
  unsubscribe(): Promise<void> {
    return this.#owner._unsubscribe(this);
  }

  /** @internal Attaches the handlers given to subscribe. */
  _attach(handlers: SubscribeHandlers): void {
    const pairs: [keyof SubscriptionEvents, Listener<never> | undefined][] = [
      ["message", handlers.onMessage],
      ["subscribed", handlers.onSubscribed],
      ["recovered", handlers.onRecovered],
      ["gap", handlers.onGap],
      ["join", handlers.onJoin],
      ["leave", handlers.onLeave],
      ["error", handlers.onError],
      ["unsubscribed", handlers.onUnsubscribed],
    ];
    for (const [event, listener] of pairs) {
      if (listener) this.on(event, listener as Listener<SubscriptionEvents[typeof event]>);
    }
  }

  /** @internal Whether the client should still hold and resubscribe it. */
  get _live(): boolean {
    return this.#state === "subscribing" || this.#state === "subscribed";
  }

  /** @internal A subscribe is being sent: it recovers from `since` when there is one. */
  _begin(since: Position | undefined): void {
    this.#state = "subscribing";
    this.#recovering = since;
    this.#recoveredCount = 0;
  }

  /** @internal The connection dropped: the subscription waits for the next one. */
  _disconnected(): void {
    if (this.#state === "subscribed") this.#state = "subscribing";
  }

  /** @internal A `message` frame for this channel. */
  _deliver(frame: ServerFrame): void {
    if (!this._live) return;
    const at = positionOf(frame);
    const before = this.#position;
    if (at && before) {
      // A replayed history message already seen (a retried recovery overlapping the first).
      if (at.epoch === before.epoch && at.offset <= before.offset) return;
      if (at.epoch !== before.epoch && this.#state === "subscribed") {
        this.emit("gap", { reason: "epoch_changed", since: before, position: at });
      }
    }
    if (at) this.#position = at;
    const recovered = this.#state === "subscribing" && this.#recovering !== undefined;
    if (recovered) this.#recoveredCount++;
    const event: MessageEvent = { channel: this.channel, data: frame.data, recovered };
    if (at) {
      event.offset = at.offset;
      event.epoch = at.epoch;
    }
    this.emit("message", event);
  }

  /** @internal The gateway confirmed a subscribe (the client's, or the backend's when `server`). */
  _subscribed(frame: ServerFrame, server: boolean): void {
    if (!this._live) return;
    const at = positionOf(frame);
    const since = this.#recovering;
    this.#recovering = undefined;
    if (at) this.#position = at;
    const event: SubscribedEvent = {
      channel: this.channel,
      server,
      resubscribed: this.#everSubscribed,
    };
    if (at) {
      event.offset = at.offset;
      event.epoch = at.epoch;
    }
    if (typeof frame.recovered === "boolean") event.recovered = frame.recovered;
    this.#everSubscribed = true;
    this.#state = "subscribed";
    this.#lastSubscribed = event;
    if (since && !server) {
      if (frame.recovered === true) {
        const recovered: RecoveredEvent = { count: this.#recoveredCount, since };
        if (at) recovered.position = at;
        this.emit("recovered", recovered);
      } else {
        const gap: GapEvent = { reason: "not_recovered", since };
        if (at) gap.position = at;
        this.emit("gap", gap);
      }
    }
    this.emit("subscribed", event);
    for (const w of this.#waiters.splice(0)) w.resolve(event);
  }

  /** @internal A subscribe was refused: for good unless `willRetry`. */
  _failed(error: SwitchyardError, willRetry: boolean): void {
    if (!this._live) return;
    if (!willRetry) {
      this.#state = "failed";
      this.#failure = error;
    }
    this.emit("error", { error, willRetry });
    if (!willRetry) for (const w of this.#waiters.splice(0)) w.reject(error);
  }

  /** @internal The subscription ended, by this client or by the backend (`server`). */
  _ended(server: boolean): void {
    if (!this._live) return;
    this.#state = "unsubscribed";
    this.#failure = new SwitchyardError("unsubscribed", `unsubscribed from ${this.channel}`);
    this.emit("unsubscribed", { channel: this.channel, server });
    for (const w of this.#waiters.splice(0)) w.reject(this.#failure);
  }

  /** @internal A `join` or `leave` frame for this channel. */
  _presence(kind: "join" | "leave", frame: ServerFrame): void {
    if (!this._live) return;
    const event: PresenceEvent = {
      channel: this.channel,
      user: typeof frame.user === "string" ? frame.user : null,
    };
    if ("info" in frame) event.info = frame.info;
    this.emit(kind, event);
  }
}
