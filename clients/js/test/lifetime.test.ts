import assert from "node:assert/strict";
import { test } from "node:test";

import { AUTH, Env, next, record, sign, unixNow } from "./harness.js";

/** Closes connections right at `exp` and warns one second before. */
const CONFIG = `${AUTH}leeway_secs = 0\nexpiry_warning_secs = 1\n`;

/** A token for `user` expiring `secs` from now, and its exp. */
function shortToken(user: string, secs: number): { token: string; exp: number } {
  const exp = unixNow() + secs;
  return { token: sign({ sub: user, aud: "switchyard", exp }), exp };
}

test("expiring: the callback's fresh token keeps the connection alive past the first exp", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(CONFIG);
  const issued: { reason: string; exp: number }[] = [];
  const client = env.client({
    url: gw.url,
    token: ({ reason }) => {
      const { token, exp } = shortToken("ann", 3);
      issued.push({ reason, exp });
      return token;
    },
  });
  const log = record(client, ["expiring", "refreshed", "disconnected"]);
  await client.connect();
  const firstExp = issued[0]?.exp ?? 0;
  // The gateway warns once per token: a second warning, for a later deadline, on the same
  // connection after the first deadline passed, shows the refresh took.
  const second = await next(client, "expiring", (e) => e.expiresAt > firstExp);
  assert.ok(unixNow() >= firstExp, "the second warning comes after the first token expired");
  assert.equal(client.state, "connected");
  await client.publish("x", "still here");
  assert.deepEqual(issued.map((i) => i.reason).slice(0, 2), ["connect", "refresh"]);
  assert.equal(second.expiresAt, issued[1]?.exp);
  assert.deepEqual(
    log.slice(0, 3).map(([event, e]) => [event, (e as { expiresAt: number }).expiresAt]),
    [["expiring", firstExp], ["refreshed", issued[1]?.exp], ["expiring", issued[1]?.exp]],
  );
  assert.equal(log.filter(([event]) => event === "disconnected").length, 0, "never disconnected");
});

test("a refused refresh: closed with 4003 at exp, then reconnected with the callback's next token", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(CONFIG);
  const reasons: string[] = [];
  const client = env.client({
    url: gw.url,
    token: ({ reason }) => {
      reasons.push(reason);
      // The refresh names another user, which the gateway refuses; a reconnect gets a fine one.
      if (reason === "refresh") return shortToken("bob", 3600).token;
      return shortToken("ann", reasons.length === 1 ? 2 : 3600).token;
    },
  });
  const refused = next(client, "error", (e) => e.code === "unauthorized");
  const expired = next(client, "disconnected");
  await client.connect();
  const sub = client.subscribe("room");
  await sub.ready();
  const resubscribed = next(sub, "subscribed", (e) => e.resubscribed);
  assert.match((await refused).message, /another user/);
  const d = await expired;
  assert.deepEqual([d.code, d.reason, d.willReconnect], [4003, "token expired", true]);
  await resubscribed;
  assert.equal(client.state, "connected");
  assert.deepEqual(reasons, ["connect", "refresh", "connect"]);
});
