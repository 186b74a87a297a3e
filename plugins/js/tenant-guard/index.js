// tenant-guard, in JavaScript: the same behaviour as plugins/tenant-guard (Rust).
// - Channels `<prefix><tenant>:...` (default prefix `tenant:`) may be subscribed and published
//   only by connections whose identity has that tenant; others are refused with a reason.
// - On every other channel, a message whose data is an object with a string `tenant` field is
//   delivered only to that tenant's subscribers (the deliver hook runs once per tenant group).
// - There, a message with an object `views` field ({"views": {"acme": A, "beta": B}}) gives
//   each tenant's subscribers only their view (A, as the whole message); tenants without a
//   view receive nothing.
// Config (optional): { "prefix": "tenant:" }.
import { allow, deliver, deny, pass, reject, rewrite, skip } from "@switchyard/plugin";

let prefix = "tenant:";

export function init(config) {
  const unknown = Object.keys(config).filter((k) => k !== "prefix");
  if (unknown.length) throw new Error(`invalid config: unknown field \`${unknown[0]}\`, expected \`prefix\``);
  if (config.prefix !== undefined && typeof config.prefix !== "string") throw new Error("invalid config: `prefix` must be a string");
  prefix = config.prefix ?? "tenant:";
}

/** The tenant owning `channel`, if it is a tenant channel. */
function owner(channel) {
  return channel.startsWith(prefix) ? channel.slice(prefix.length).split(":")[0] : undefined;
}

/** Why `who` may not use `channel`, if it may not. */
function refusal(who, channel) {
  const o = owner(channel);
  return o !== undefined && who.tenant !== o ? `${channel} belongs to tenant ${o}` : undefined;
}

export function onSubscribe(who, channel) {
  const why = refusal(who, channel);
  return why ? deny(why) : allow();
}

export function onPublish(who, channel) {
  const why = refusal(who, channel);
  return why ? reject(why) : pass();
}

export function onDeliver(group, channel, data) {
  if (owner(channel) !== undefined || !(data.includes('"tenant"') || data.includes('"views"'))) return deliver();
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return deliver();
  }
  if (msg === null || typeof msg !== "object" || Array.isArray(msg)) return deliver();
  if (msg.views !== null && typeof msg.views === "object" && !Array.isArray(msg.views)) {
    const has = group.tenant !== undefined && Object.hasOwn(msg.views, group.tenant);
    return has ? rewrite(msg.views[group.tenant]) : skip();
  }
  if (typeof msg.tenant === "string" && group.tenant !== msg.tenant) return skip();
  return deliver();
}
