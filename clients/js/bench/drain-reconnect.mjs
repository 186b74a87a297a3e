// How long a client is away when its node drains: N rounds of SIGTERM on the node the client is
// connected to, timed from the 1001 close to `connected` on the other node (and from the signal).
// Two nodes and Redis of its own; after each round a fresh node replaces the drained one.
//
//   cd clients/js && npm run build && tsc -p test && node bench/drain-reconnect.mjs [rounds]
//   SWITCHYARD_BIN=../../target/release/switchyard node bench/drain-reconnect.mjs 50
//
// A benchmark, not a test: it prints figures and asserts nothing about them.

import { Client } from "@switchyard/client";
import { AUTH, Env } from "../build/test/harness.js";

const rounds = Number(process.argv[2] ?? 50);
const env = new Env();
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
const summary = (name, xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  console.log(
    `${name}: median ${quantile(s, 0.5).toFixed(2)} ms, p99 ${quantile(s, 0.99).toFixed(2)} ms, ` +
      `min ${s[0].toFixed(2)}, max ${s[s.length - 1].toFixed(2)}, mean ${mean.toFixed(2)} (n=${s.length})`,
  );
};

try {
  const redis = await env.redis();
  let current = await env.gateway(AUTH, { node: "n0", redis });
  let spare = await env.gateway(AUTH, { node: "n1", redis });
  // The client goes wherever the live (not draining) node is.
  let live = current;
  // stableMs 0: every round is an isolated drain (by default a drain within 5 s of the last
  // connect counts as a repeat failure and waits its backoff turn, which rounds back to back
  // would measure instead).
  const client = new Client({ url: () => live.url, backoff: { stableMs: 0 } });
  await client.connect();
  const fromClose = [];
  const fromSignal = [];
  for (let i = 0; i < rounds; i++) {
    let closedAt = 0;
    let code = 0;
    const closed = new Promise((resolve) =>
      client.once("disconnected", (e) => {
        closedAt = performance.now();
        code = e.code;
        resolve();
      }),
    );
    const connected = new Promise((resolve) => client.once("connected", () => resolve(performance.now())));
    live = spare;
    const signalled = performance.now();
    const exited = current.term();
    await closed;
    const at = await connected;
    if (code !== 1001) throw new Error(`round ${i}: closed with ${code}, not 1001`);
    fromClose.push(at - closedAt);
    fromSignal.push(at - signalled);
    await exited;
    current = spare;
    spare = await env.gateway(AUTH, { node: `n${i + 2}`, redis });
  }
  await client.close();
  summary("1001 close -> connected", fromClose);
  summary("SIGTERM -> connected", fromSignal);
} finally {
  await env.cleanup();
}
