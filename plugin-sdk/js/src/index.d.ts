// Types of @switchyard/plugin, over the contract's types generated from plugin-sdk/wit by
// `npm run types` (jco types -> types/). Hooks a plugin exports have the signatures in
// types/plugin.d.ts (init, onConnect, onSubscribe, onPublish, onDeliver).
import type {
  ConnectDecision,
  DeliverDecision,
  Identity,
  Outgoing,
  PublishDecision,
  SubscribeDecision,
} from "../types/interfaces/switchyard-plugin-types.js";

export type {
  ConnectDecision,
  ConnectInfo,
  DeliverDecision,
  GroupContext,
  Identity,
  Outgoing,
  PublishDecision,
  SubscribeDecision,
} from "../types/interfaces/switchyard-plugin-types.js";

/** Publish the message unchanged to its own channel. */
export function pass(): PublishDecision;
/** Publish these messages instead: `[channel, value]` pairs or `{ channel, data }` (JSON text). */
export function forward(...messages: Array<[string, unknown] | Outgoing>): PublishDecision;
/** Refuse the publish; the publisher gets `forbidden` with `reason`. */
export function reject(reason: string): PublishDecision;
/** Discard silently; the publisher is acknowledged. */
export function drop(): PublishDecision;
/** Allow a subscribe, in the default delivery group. */
export function allow(): SubscribeDecision;
/** Allow a subscribe in the delivery group `key`. */
export function allowInGroup(key: string): SubscribeDecision;
/** Refuse a subscribe with `reason`. */
export function deny(reason: string): SubscribeDecision;
/** Accept a connection as it is. */
export function accept(): ConnectDecision;
/** Accept a connection with another identity (claims: an object or JSON text). */
export function enrich(identity: { user?: string; tenant?: string; claims?: object | string }): ConnectDecision;
/** Refuse a connection with `reason`. */
export function refuse(reason: string): ConnectDecision;
/** Deliver the message unchanged to this group. */
export function deliver(): DeliverDecision;
/** Deliver `value` (serialised as JSON) to this group instead. */
export function rewrite(value: unknown): DeliverDecision;
/** Do not deliver to this group. */
export function skip(): DeliverDecision;
/** Log records in the gateway's log, with the plugin's name and version. */
export const log: Record<"trace" | "debug" | "info" | "warn" | "error", (message: string, fields?: Record<string, unknown>) => void>;
/** The gateway's clock, ms since the Unix epoch (`Date.now()` is frozen inside a component). */
export function nowMs(): number;
/** The claims of `who` as an object. */
export function claims(who: Identity): Record<string, unknown>;
