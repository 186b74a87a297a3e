/**
 * @switchyard/client: a client for the Switchyard WebSocket message gateway, for Node (with
 * the `ws` package) and browsers (the global WebSocket, loaded as a plain ES module).
 */
export {
  Client,
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  type ConnectingEvent,
  type ConnectedEvent,
  type DisconnectedEvent,
  type ExpiringEvent,
  type RefreshedEvent,
  type BackpressureEvent,
  type StateEvent,
  type SubscribeOptions,
  type PublishOptions,
  type HistoryOptions,
  type UrlSource,
  type UrlContext,
  type TokenSource,
  type TokenContext,
} from "./client.js";
export {
  Subscription,
  type SubscriptionState,
  type SubscriptionEvents,
  type SubscribeHandlers,
  type MessageEvent,
  type SubscribedEvent,
  type RecoveredEvent,
  type GapEvent,
  type PresenceEvent,
  type SubscriptionErrorEvent,
  type UnsubscribedEvent,
} from "./subscription.js";
export {
  SwitchyardError,
  TimeoutError,
  ConnectionClosed,
  UpgradeRefused,
  type ErrorCode,
  type ServerErrorCode,
  type ClientErrorCode,
} from "./errors.js";
export type { Position, HistoryResult, HistoryMessage, PublishResult } from "./protocol.js";
export type { WebSocketLike, WebSocketConstructor } from "./socket.js";
export { type BackoffOptions, backoffDelay, mayReconnectAfter } from "./backoff.js";
export { Emitter, type Listener } from "./emitter.js";
