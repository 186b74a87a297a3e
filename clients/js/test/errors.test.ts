import assert from "node:assert/strict";
import { test } from "node:test";

import { ConnectionClosed, SwitchyardError, TimeoutError } from "@switchyard/client";
import { AUTH, Env, PLUGINS_DIR, next, token } from "./harness.js";

const CONFIG = `[limits]
max_subscriptions = 3
${AUTH}[plugins]
dir = "${PLUGINS_DIR}"
timeout_ms = 1000
[[plugins.bindings]]
pattern = "tenant:*"
plugin = "tenant-guard"
[[plugins.bindings]]
pattern = "trap:*"
plugin = "hostile"
config = { mode = "trap", hooks = ["publish"] }
[[namespaces]]
pattern = "chat:*"
history_size = 100
history_ttl_secs = 600
`;

/** Asserts `promise` rejects with a SwitchyardError of `code`; returns it. */
async function rejectsWith(promise: Promise<unknown>, code: string): Promise<SwitchyardError> {
  const error = await promise.then(
    (v) => assert.fail(`expected ${code}, got ${JSON.stringify(v)}`),
    (e: unknown) => e,
  );
  assert.ok(error instanceof SwitchyardError, `not a SwitchyardError: ${String(error)}`);
  assert.equal(error.code, code, error.message);
  assert.ok(error.message.length > 0);
  return error;
}

test("every error code a client can reach arrives typed", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(CONFIG);
  const acme = env.client({ url: gw.url, token: token("ann", { tenant: "acme" }) });
  await acme.connect();

  await t.test("invalid_channel", async () => {
    const sub = acme.subscribe("bad channel");
    const failed = next(sub, "error");
    const error = await rejectsWith(sub.ready(), "invalid_channel");
    assert.equal((await failed).willRetry, false);
    assert.equal((await failed).error, error);
    assert.equal(sub.state, "failed");
    assert.equal(acme.subscriptions.has("bad channel"), false, "a refused subscription is dropped");
    await rejectsWith(acme.publish("bad channel", 1), "invalid_channel");
    await rejectsWith(acme.history("bad channel"), "invalid_channel");
  });

  await t.test("forbidden by the tenant-guard plugin", async () => {
    const other = acme.subscribe("tenant:beta:orders");
    const error = await rejectsWith(other.ready(), "forbidden");
    assert.match(error.message, /belongs to tenant beta/);
    await rejectsWith(acme.publish("tenant:beta:orders", 1), "forbidden");
    await acme.subscribe("tenant:acme:orders").ready();
    await acme.publish("tenant:acme:orders", 1);
  });

  await t.test("no_history", async () => {
    await rejectsWith(acme.history("plain"), "no_history");
  });

  await t.test("plugin_error", async () => {
    const error = await rejectsWith(acme.publish("trap:x", 1), "plugin_error");
    assert.match(error.message, /on-publish/);
  });

  await t.test("message_too_large, matched by order although the gateway cannot echo its id", async () => {
    const [before, large, after] = await Promise.allSettled([
      acme.publish("chat:big", "small"),
      acme.publish("chat:big", "x".repeat(70_000)),
      acme.publish("chat:big", "small again"),
    ]);
    assert.equal(before.status, "fulfilled");
    assert.equal(after.status, "fulfilled");
    assert.equal(large.status, "rejected");
    assert.equal((large.reason as SwitchyardError).code, "message_too_large");
    // The two that were published hold consecutive offsets: nothing else went in between.
    assert.equal(after.value.offset, (before.value.offset ?? 0) + 1);
  });

  await t.test("too_many_subscriptions", async () => {
    const c = env.client({ url: gw.url });
    await c.connect();
    for (const ch of ["a", "b", "c"]) await c.subscribe(ch).ready();
    await rejectsWith(c.subscribe("d").ready(), "too_many_subscriptions");
  });

  await t.test("unauthorized refresh", async () => {
    const error = await rejectsWith(acme.refresh(token("bob", { tenant: "acme" })), "unauthorized");
    assert.match(error.message, /another user/);
    await rejectsWith(acme.refresh("not.a.token"), "unauthorized");
    const anonymous = env.client({ url: gw.url });
    await anonymous.connect();
    await rejectsWith(anonymous.refresh(token("ann")), "unauthorized");
    // A refused refresh leaves the connection as it was.
    assert.equal(acme.state, "connected");
    await acme.publish("chat:still", 1);
  });
});

test("rate_limited", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway("[limits]\npublish_rate = 2\npublish_burst = 2\n");
  const client = env.client({ url: gw.url });
  await client.connect();
  const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => client.publish("x", i)));
  assert.deepEqual(results.slice(0, 2).map((r) => r.status), ["fulfilled", "fulfilled"], "the burst passes");
  const refused = results.filter((r) => r.status === "rejected");
  assert.ok(refused.length > 0, "publishing faster than the rate is refused");
  for (const r of refused) assert.equal((r.reason as SwitchyardError).code, "rate_limited");
});

test("a gateway that stops answering: timeouts, then a crash cuts what was in flight", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway("");
  const client = env.client({ url: gw.url });
  await client.connect();
  await client.subscribe("x").ready();
  await gw.pause();

  const timedOut = await client.publish("x", 1, { timeoutMs: 200 }).catch((e: unknown) => e);
  assert.ok(timedOut instanceof TimeoutError, String(timedOut));
  assert.equal(timedOut.code, "timeout");
  assert.equal(timedOut.sent, true, "it was written: it may still be published");

  const inFlight = client.publish("x", 2).catch((e: unknown) => e);
  const dropped = next(client, "disconnected");
  await gw.kill();
  const cut = await inFlight;
  assert.ok(cut instanceof ConnectionClosed, String(cut));
  assert.equal(cut.code, "connection_closed");
  assert.equal(cut.sent, true);
  assert.equal(cut.closeCode, 1006);
  const d = await dropped;
  assert.equal(d.wasConnected, true);
  assert.equal(d.willReconnect, true, "a crash is retried");

  // Nobody is there any more: a publish waits for a connection, then gives up unsent.
  const unsent = await client.publish("x", 3, { timeoutMs: 200 }).catch((e: unknown) => e);
  assert.ok(unsent instanceof TimeoutError, String(unsent));
  assert.equal(unsent.sent, false, "never written: safe to retry");
  assert.equal(client.queued, 0, "a timed-out request leaves the queue");
});
