// @switchyard/plugin/testing: runs a plugin's hooks in Node, no wasm involved, with the same
// adapter the component uses (config parsing, default hooks, init errors as refusals).
//
//   import { load, host, identity } from "@switchyard/plugin/testing";
//   const p = await load(new URL("../index.js", import.meta.url), { mask: "***" });
//   assert.deepEqual(p.publish(identity({ user: "ann" }), "support:1", { text: "hi" }), pass());
//
// The plugin's import of the gateway's host interface resolves to a test host (`host.logs`
// collects log records, `host.now` fixes the clock) once `@switchyard/plugin/register` has run:
// run tests with `node --import @switchyard/plugin/register --test`, so that it runs before any
// module that imports `@switchyard/plugin`.
import { host } from "./test-host.js";

export { host };

/** An identity record as the gateway passes it (claims: an object, kept as JSON text). */
export function identity({ user, tenant, claims = {} } = {}) {
  return { user, tenant, claims: JSON.stringify(claims) };
}

/** A delivery group as the gateway passes it to `onDeliver`. */
export function group({ key = "", tenant } = {}) {
  return { key, tenant };
}

let instances = 0;
const text = (data) => (typeof data === "string" ? data : JSON.stringify(data));

/**
 * Loads the plugin module at `url` and runs its `init` with `config` (an object, or JSON text
 * as the gateway would pass it). Rejects with the refusal when init refuses.
 */
export async function load(url, config = {}) {
  const { adapt } = await import("./adapter.js");
  // A fresh module instance per load (as every component instance has its own state).
  const fresh = new URL(url instanceof URL ? url.href : url, "file://");
  fresh.searchParams.set("instance", String(++instances));
  const hooks = adapt(await import(fresh.href));
  try {
    hooks.init(text(config));
  } catch (refusal) {
    throw new Error(String(refusal));
  }
  return {
    /** `onConnect` with a connect-info record. */
    connect: (info) => hooks.onConnect(info),
    /** `onSubscribe`. */
    subscribe: (who, channel) => hooks.onSubscribe(who, channel),
    /** `onPublish`; `data` as JSON text or a value (serialised). */
    publish: (who, channel, data) => hooks.onPublish(who, channel, text(data)),
    /** `onDeliver`; `data` as JSON text or a value (serialised). */
    deliver: (g, channel, data) => hooks.onDeliver(g, channel, text(data)),
  };
}
