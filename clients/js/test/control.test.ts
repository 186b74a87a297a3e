import assert from "node:assert/strict";
import { test } from "node:test";

import { UpgradeRefused, type Subscription } from "@switchyard/client";
import { API_KEY, AUTH, Env, Inbox, next, record, sign, token, unixNow } from "./harness.js";

const CONFIG = `${AUTH}[api]\nkeys = ["${API_KEY}"]\n`;

test("an upgrade refused with 401 is reported typed and not retried", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(CONFIG);
  const forged = sign({ sub: "ann", aud: "switchyard", exp: unixNow() + 60 }, "another-secret-0123456789");
  const client = env.client({ url: gw.url, token: forged });
  const attempts = record(client, ["connecting", "disconnected"]);
  const error = await client.connect().catch((e: unknown) => e);
  assert.ok(error instanceof UpgradeRefused, String(error));
  assert.deepEqual([error.status, error.code, error.body], [401, "unauthorized", "token signature invalid"]);
  assert.equal(client.state, "closed");
  assert.deepEqual(
    attempts.map(([event]) => event),
    ["connecting", "disconnected"],
    "one attempt only",
  );
  const d = attempts[1]?.[1] as { willReconnect: boolean; wasConnected: boolean };
  assert.deepEqual([d.willReconnect, d.wasConnected], [false, false]);
});

test("close codes from the backend API: 4005 reconnects, 4006, 4500 and 4004 do not", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(CONFIG);
  const reasons: string[] = [];
  const ann = env.client({
    url: gw.url,
    token: ({ reason }) => {
      reasons.push(reason);
      return token("ann");
    },
  });
  await ann.connect();
  const sub = ann.subscribe("room");
  await sub.ready();

  const dropped = next(ann, "disconnected");
  const back = next(ann, "connected");
  const resubscribed = next(sub, "subscribed");
  assert.equal((await gw.api("/api/disconnect", { user: "ann" })).status, 200);
  const d = await dropped;
  assert.deepEqual([d.code, d.reason, d.willReconnect], [4005, "disconnected by server", true]);
  await back;
  assert.equal((await resubscribed).resubscribed, true);
  assert.deepEqual(reasons, ["connect", "connect"]);

  const final = next(ann, "disconnected");
  await gw.api("/api/disconnect", { user: "ann", reason: "account closed", reconnect: false });
  const f = await final;
  assert.deepEqual([f.code, f.reason, f.willReconnect], [4006, "account closed", false]);
  assert.equal(ann.state, "closed");
  await assert.rejects(ann.publish("room", 1), { code: "connection_closed", sent: false });

  // connect() again is allowed (say, after the user signed in again); so is a custom code.
  await ann.connect();
  const custom = next(ann, "disconnected");
  await gw.api("/api/disconnect", { user: "ann", code: 4500, reason: "bye" });
  assert.deepEqual([(await custom).code, (await custom).willReconnect], [4500, false]);

  const revoked = env.client({
    url: gw.url,
    token: sign({ sub: "cy", aud: "switchyard", exp: unixNow() + 3600, jti: "t-1" }),
  });
  await revoked.connect();
  const r = next(revoked, "disconnected");
  assert.equal((await gw.api("/api/revoke", { jti: "t-1" })).status, 200);
  assert.deepEqual([(await r).code, (await r).reason, (await r).willReconnect], [4004, "token revoked", false]);
  assert.equal(revoked.state, "closed");
});

test("subscriptions made and ended by the backend surface on the client", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(CONFIG);
  const ann = env.client({ url: gw.url, token: token("ann") });
  await ann.connect();
  const own = ann.subscribe("news");
  await own.ready();

  let inbox: Inbox | undefined;
  const made = new Promise<Subscription>((resolve) =>
    ann.on("subscription", (sub) => {
      // Attached before any delivery can arrive for it.
      inbox = new Inbox(sub);
      resolve(sub);
    }),
  );
  assert.equal((await gw.api("/api/subscribe", { user: "ann", channel: "alerts" })).status, 200);
  const alerts = await made;
  assert.deepEqual([alerts.channel, alerts.server, alerts.state], ["alerts", true, "subscribed"]);
  assert.equal(ann.subscriptions.get("alerts"), alerts);
  const publisher = env.client({ url: gw.url });
  await publisher.connect();
  await publisher.publish("alerts", "fire");
  await inbox?.count(1);
  assert.deepEqual(inbox?.data, ["fire"]);

  const ended = next(own, "unsubscribed");
  await gw.api("/api/unsubscribe", { user: "ann", channel: "news" });
  assert.deepEqual(await ended, { channel: "news", server: true });
  assert.equal(own.state, "unsubscribed");
  assert.equal(ann.subscriptions.has("news"), false, "not resubscribed on a reconnect");
});
