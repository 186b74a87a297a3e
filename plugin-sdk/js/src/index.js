// @switchyard/plugin: write Switchyard channel plugins in JavaScript. A plugin is an ES module
// exporting any of `init(config)`, `onConnect(info)`, `onSubscribe(who, channel)`,
// `onPublish(who, channel, data)`, `onDeliver(group, channel, data)`; hooks it leaves out keep
// their defaults (accept, allow, pass, deliver). `switchyard-plugin-js build` turns it into a
// WebAssembly component of the `switchyard:plugin/plugin` world (plugin-sdk/wit/plugin.wit);
// `@switchyard/plugin/testing` runs its hooks in Node, no wasm involved.
//
// Values cross the contract as the WIT says: `data` is JSON text, `who` an identity record
// (`user`, `tenant`: string or undefined; `claims`: JSON text). Decisions are plain objects,
// made by the functions below.
import { log as hostLog, nowMs as hostNowMs } from "switchyard:plugin/host@0.1.0";

/** @typedef {{ user?: string, tenant?: string, claims: string }} Identity */
/** @typedef {{ key: string, tenant?: string }} GroupContext */

/** Publish the message unchanged to its own channel. */
export const pass = () => ({ tag: "pass" });
/**
 * Publish these messages instead: `[channel, value]` pairs (each value serialised as JSON) or
 * `{ channel, data }` objects whose `data` is already JSON text.
 */
export const forward = (...messages) => ({
  tag: "forward",
  val: messages.map((m) => (Array.isArray(m) ? { channel: m[0], data: JSON.stringify(m[1]) } : m)),
});
/** Refuse the publish; the publisher gets `forbidden` with `reason`. */
export const reject = (reason) => ({ tag: "reject", val: String(reason) });
/** Discard silently; the publisher is acknowledged as if it had been published. */
export const drop = () => ({ tag: "drop" });

/** Allow a subscribe, in the default delivery group. */
export const allow = () => ({ tag: "allow" });
/** Allow a subscribe in the delivery group `key`. */
export const allowInGroup = (key) => ({ tag: "allow-in-group", val: String(key) });
/** Refuse a subscribe; the client gets `forbidden` with `reason`. */
export const deny = (reason) => ({ tag: "deny", val: String(reason) });

/** Accept a connection as it is. */
export const accept = () => ({ tag: "accept" });
/** Accept a connection with another identity (claims: an object or JSON text). */
export const enrich = ({ user, tenant, claims = {} }) => ({
  tag: "enrich",
  val: { user, tenant, claims: typeof claims === "string" ? claims : JSON.stringify(claims) },
});
/** Refuse a connection with `reason`. */
export const refuse = (reason) => ({ tag: "reject", val: String(reason) });

/** Deliver the message unchanged to this group. */
export const deliver = () => ({ tag: "deliver" });
/** Deliver `value` (serialised as JSON) to this group instead. */
export const rewrite = (value) => ({ tag: "rewrite", val: JSON.stringify(value) });
/** Do not deliver to this group. */
export const skip = () => ({ tag: "skip" });

const record = (level) => (message, fields = {}) =>
  hostLog(level, String(message), Object.entries(fields).map(([k, v]) => [k, String(v)]));
/** Log records in the gateway's log, with the plugin's name and version. */
export const log = {
  trace: record("trace"),
  debug: record("debug"),
  info: record("info"),
  warn: record("warn"),
  error: record("error"),
};

/**
 * The gateway's clock, ms since the Unix epoch. Use it instead of `Date.now()`, which is frozen
 * at build time inside a component.
 */
export const nowMs = () => Number(hostNowMs());

/** The claims of `who` as an object. */
export const claims = (who) => JSON.parse(who.claims || "{}");
