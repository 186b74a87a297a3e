import assert from "node:assert/strict";
import { test } from "node:test";

import { AUTH, Env, Inbox, next, record, token } from "./harness.js";

const HISTORY = `[[namespaces]]\npattern = "chat:*"\nhistory_size = 1000\nhistory_ttl_secs = 3600\njoin_leave = true\n`;

test("publish, subscribe, history and close on one node", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(AUTH + HISTORY);
  const client = env.client({ url: gw.url });
  const states = record(client, ["state"]);
  await client.connect();
  assert.equal(client.state, "connected");

  const sub = client.subscribe("chat:1");
  const inbox = new Inbox(sub);
  const start = await sub.ready();
  assert.equal(start.offset, 0, "a fresh channel starts at 0");
  assert.equal(typeof start.epoch, "string");
  assert.equal(start.resubscribed, false);

  const published = await Promise.all([1, 2, 3].map((i) => client.publish("chat:1", { i })));
  assert.deepEqual(published.map((p) => p.offset), [1, 2, 3]);
  for (const p of published) assert.equal(p.epoch, start.epoch);
  await inbox.count(3);
  assert.deepEqual(
    inbox.messages.map((m) => [m.offset, m.data, m.recovered]),
    [[1, { i: 1 }, false], [2, { i: 2 }, false], [3, { i: 3 }, false]],
  );

  const newest = await client.history("chat:1", { limit: 2 });
  assert.deepEqual(newest.messages, [{ offset: 2, data: { i: 2 } }, { offset: 3, data: { i: 3 } }]);
  assert.equal(newest.offset, 3);
  const after = await client.history("chat:1", { since: { offset: 1, epoch: start.epoch as string } });
  assert.equal(after.recovered, true);
  assert.deepEqual(after.messages.map((m) => m.offset), [2, 3]);

  // A channel without history: no positions.
  const plain = client.subscribe("plain");
  await plain.ready();
  assert.deepEqual(await client.publish("plain", "x"), {});

  await sub.unsubscribe();
  assert.equal(sub.state, "unsubscribed");
  const disconnected = next(client, "disconnected");
  await client.close();
  const d = await disconnected;
  assert.equal(d.willReconnect, false);
  assert.equal(client.state, "closed");
  assert.deepEqual(
    states.map(([, s]) => s.state),
    ["connecting", "connected", "closed"],
  );
  await assert.rejects(client.publish("plain", 1), { code: "connection_closed", sent: false });
});

test("join and leave events reach the other subscribers", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(AUTH + HISTORY);
  const ann = env.client({ url: gw.url, token: token("ann") });
  const bob = env.client({ url: gw.url, token: () => token("bob") });
  const anon = env.client({ url: gw.url });
  await Promise.all([ann.connect(), bob.connect(), anon.connect()]);
  const room = ann.subscribe("chat:room");
  const log = record(room, ["join", "leave"]);
  await next(room, "join", (e) => e.user === "ann");
  const bobs = bob.subscribe("chat:room");
  await next(room, "join", (e) => e.user === "bob");
  const anons = anon.subscribe("chat:room");
  await next(room, "join", (e) => e.user === null);
  // Waiters go first: the leave may overtake the leaver's own acknowledgement.
  const bobLeft = next(room, "leave", (e) => e.user === "bob");
  await bobs.unsubscribe();
  await bobLeft;
  const anonLeft = next(room, "leave", (e) => e.user === null);
  await anon.close();
  await anonLeft;
  assert.equal(anons.state, "subscribing", "close() keeps subscriptions for a later connect()");
  assert.deepEqual(
    log.map(([event, e]) => [event, e.user]),
    [["join", "ann"], ["join", "bob"], ["join", null], ["leave", "bob"], ["leave", null]],
  );
});
