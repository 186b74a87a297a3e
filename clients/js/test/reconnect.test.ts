import assert from "node:assert/strict";
import { test } from "node:test";

import { type Client, SwitchyardError } from "@switchyard/client";
import { AUTH, Env, Inbox, eventually, next, record, token } from "./harness.js";

const HISTORY = `[[namespaces]]\npattern = "chat:*"\nhistory_size = 1000\nhistory_ttl_secs = 600\n`;
const CONFIG = AUTH + HISTORY;

/**
 * `client` subscribed to `channel`, with 0..4 published there by a second client on `url` and
 * received: where the SIGTERM and SIGKILL tests start.
 */
async function primed(env: Env, client: Client, channel: string, url: string) {
  const sub = client.subscribe(channel);
  const inbox = new Inbox(sub);
  await sub.ready();
  const publisher = env.client({ url });
  await publisher.connect();
  for (const i of upTo(5)) await publisher.publish(channel, i);
  await inbox.count(5);
  return { sub, inbox, publisher };
}

/** 0, 1, ..., n - 1. */
function upTo(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

test("SIGTERM: the client moves to the other node at once and recovers exactly what it missed", async (t) => {
  const env = Env.for(t);
  const redis = await env.redis();
  const a = await env.gateway(CONFIG, { node: "a", redis });
  const b = await env.gateway(CONFIG, { node: "b", redis });

  // The URL callback holds the client back until the test has published while it is away.
  let release!: () => void;
  const away = new Promise<void>((resolve) => (release = resolve));
  const reasons: string[] = [];
  const client = env.client({
    url: async ({ previous }) => {
      if (previous === undefined) return a.url;
      await away;
      return b.url;
    },
    token: ({ reason }) => {
      reasons.push(reason);
      return token("ann");
    },
  });
  await client.connect();
  const { sub, inbox, publisher } = await primed(env, client, "chat:r", b.url);

  const gone = next(client, "disconnected");
  await a.term();
  const d = await gone;
  assert.deepEqual([d.code, d.wasConnected, d.willReconnect, d.delayMs], [1001, true, true, 0]);
  for (const i of upTo(25).slice(5)) await publisher.publish("chat:r", i);
  const recovered = next(sub, "recovered");
  const resubscribed = next(sub, "subscribed");
  release();
  const r = await recovered;
  assert.equal(r.count, 20, "every message published while away, from history");
  assert.deepEqual(r.since.offset, 5);
  const s = await resubscribed;
  assert.deepEqual([s.resubscribed, s.recovered, s.offset], [true, true, 25]);
  assert.equal(client.url, b.url);

  await publisher.publish("chat:r", 25);
  await inbox.count(26);
  assert.deepEqual(inbox.data, upTo(26), "all of them, once, in order");
  assert.deepEqual(inbox.messages.map((m) => m.offset), upTo(26).map((i) => i + 1));
  assert.deepEqual(
    inbox.messages.map((m) => m.recovered),
    upTo(26).map((i) => i >= 5 && i < 25),
    "exactly the missed ones came from history",
  );
  assert.deepEqual(reasons, ["connect", "connect"], "the token callback is asked again on reconnect");
});

test("SIGKILL: the client tries the next URL of its list and recovers", async (t) => {
  const env = Env.for(t);
  const redis = await env.redis();
  const a = await env.gateway(CONFIG, { node: "a", redis });
  const b = await env.gateway(CONFIG, { node: "b", redis });
  const client = env.client({ url: [a.url, b.url] });
  await client.connect();
  assert.equal(client.url, a.url);
  const { sub, inbox, publisher } = await primed(env, client, "chat:k", b.url);

  const gone = next(client, "disconnected");
  const back = next(client, "connected");
  const resubscribed = next(sub, "subscribed");
  await a.kill();
  const d = await gone;
  assert.deepEqual([d.code, d.wasConnected, d.willReconnect], [1006, true, true]);
  // Published while the client reconnects: each arrives either recovered or live.
  for (const i of upTo(15).slice(5)) await publisher.publish("chat:k", i);
  assert.equal((await back).url, b.url);
  const s = await resubscribed;
  assert.deepEqual([s.resubscribed, s.recovered], [true, true]);
  await publisher.publish("chat:k", 15);
  await inbox.count(16);
  assert.deepEqual(inbox.data, upTo(16), "all of them, once, in order");
  assert.deepEqual(inbox.messages.map((m) => m.offset), upTo(16).map((i) => i + 1));
});

test("Redis restart: publishes fail typed, the resubscribe is retried, and the lost history is a gap", async (t) => {
  const env = Env.for(t);
  const redis = await env.redis();
  const a = await env.gateway(CONFIG, { node: "a", redis });
  const b = await env.gateway(CONFIG, { node: "b", redis });
  const client = env.client({ url: [a.url, b.url] });
  await client.connect();
  const sub = client.subscribe("chat:r");
  const inbox = new Inbox(sub);
  await sub.ready();
  // A second client stays on b throughout: it sees the epoch change on live messages.
  const watcher = env.client({ url: b.url });
  await watcher.connect();
  const live = watcher.subscribe("chat:live");
  const liveInbox = new Inbox(live);
  const liveStart = await live.ready();
  await watcher.publish("chat:r", "before");
  await watcher.publish("chat:live", "before");
  await inbox.count(1);
  await liveInbox.count(1);
  const lost = sub.position;
  assert.equal(lost?.offset, 1);

  await redis.kill();
  for (const gw of [a, b]) {
    await eventually("the nodes to see Redis gone", async () => (await fetch(`http://${gw.addr}/readyz`)).status === 503);
  }
  const refused = await client.publish("chat:r", "during").catch((e: unknown) => e);
  assert.ok(refused instanceof SwitchyardError && refused.code === "unavailable", String(refused));

  // Draining a moves the client to b while Redis is still down: b cannot subscribe it yet.
  const retrying = next(sub, "error");
  await a.term();
  const e = await retrying;
  assert.deepEqual([e.error.code, e.willRetry], ["unavailable", true]);
  assert.equal(sub.state, "subscribing");
  assert.equal(client.url, b.url);

  const gap = next(sub, "gap");
  const resubscribed = next(sub, "subscribed");
  const liveGap = next(live, "gap");
  await redis.restart();
  const g = await gap;
  assert.equal(g.reason, "not_recovered");
  assert.deepEqual(g.since, lost);
  const s = await resubscribed;
  assert.equal(s.recovered, false);
  assert.notEqual(s.epoch, lost?.epoch, "Redis without persistence starts a new epoch");

  await b.ready();
  await watcher.publish("chat:live", "after");
  const lg = await liveGap;
  assert.deepEqual([lg.reason, lg.since?.epoch, lg.position?.offset], ["epoch_changed", liveStart.epoch, 1]);
  await liveInbox.count(2);
  assert.deepEqual(liveInbox.data, ["before", "after"]);

  await watcher.publish("chat:r", "after");
  await inbox.count(2);
  assert.deepEqual(inbox.data, ["before", "after"]);
  assert.deepEqual([inbox.messages[1]?.offset, inbox.messages[1]?.epoch], [1, s.epoch]);
  const events = record(client, ["disconnected"]);
  await client.publish("chat:r", "fine");
  assert.deepEqual(events, [], "one connection since the drain");
});
