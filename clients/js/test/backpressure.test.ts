import assert from "node:assert/strict";
import { test } from "node:test";

import WebSocket from "ws";

import { Env, next, record } from "./harness.js";

const HIGH_WATER_MARK = 64 * 1024;

test("publishes wait in the client while the socket is full, then all go through in order", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway(`[[namespaces]]\npattern = "bp:*"\nhistory_size = 10\nhistory_ttl_secs = 60\n`);
  // What the socket held each time the client wrote to it.
  const bufferedAtSend: number[] = [];
  class Probe extends WebSocket {
    override send(data: string): void {
      bufferedAtSend.push(this.bufferedAmount);
      super.send(data);
    }
  }
  const client = env.client({ url: gw.url, WebSocket: Probe, highWaterMark: HIGH_WATER_MARK });
  await client.connect();
  const pressure = record(client, ["backpressure"]);

  // A stopped gateway reads nothing: 32 MB is more than loopback's kernel buffers absorb.
  await gw.pause();
  const count = 4000;
  const payload = "x".repeat(8 * 1024);
  const congested = next(client, "backpressure", (e) => e.active);
  const published = Array.from({ length: count }, (_, i) =>
    client.publish("bp:1", { i, payload }, { timeoutMs: 120_000 }),
  );
  const c = await congested;
  assert.ok(c.queued > 0 && client.queued > 0, "publishes are held in the client");
  assert.ok(client.queued < count, "some went out before the socket filled");
  const maxBuffered = () => Math.max(...bufferedAtSend);
  assert.ok(maxBuffered() <= HIGH_WATER_MARK, `wrote into a socket holding ${maxBuffered()} bytes`);

  gw.resume();
  const results = await Promise.all(published);
  assert.deepEqual(
    results.map((r) => r.offset),
    Array.from({ length: count }, (_, i) => i + 1),
    "accepted in the order they were published",
  );
  assert.equal(bufferedAtSend.length, count);
  assert.ok(maxBuffered() <= HIGH_WATER_MARK, `wrote into a socket holding ${maxBuffered()} bytes`);
  assert.equal(client.queued, 0);
  assert.deepEqual(pressure.at(-1)?.[1].active, false, "the congestion is reported over");
});
