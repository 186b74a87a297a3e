// The SDK in Node: the adapter the component is built with (config parsing, refusals,
// default hooks), the decision helpers, log and clock through the test host.
import assert from "node:assert/strict";
import { test } from "node:test";

import { accept, allow, allowInGroup, deliver, deny, enrich, forward, pass, rewrite, skip } from "@switchyard/plugin";
import { group, host, identity, load } from "@switchyard/plugin/testing";

const shout = new URL("./fixtures/shout.js", import.meta.url);

test("hooks a plugin leaves out keep their defaults", async () => {
  const p = await load(shout);
  assert.deepEqual(p.connect({ remoteAddr: "127.0.0.1:1", headers: [], query: "", identity: identity() }), accept());
  assert.deepEqual(p.subscribe(identity({ user: "ann" }), "c"), allow());
  assert.deepEqual(p.deliver(group({ key: "acme", tenant: "acme" }), "c", { a: 1 }), deliver());
});

test("config arrives parsed; an error in init or bad JSON refuses the plugin with its message", async () => {
  await load(shout, "");
  await load(shout, "null");
  await assert.rejects(load(shout, { max_len: "x" }), { message: "max_len must be an integer" });
  await assert.rejects(load(shout, "{nope"), /^Error: invalid config: /);
  const p = await load(shout, { max_len: 3 });
  assert.deepEqual(p.publish(identity({ user: "ann" }), "c", { text: "long" }), { tag: "reject", val: "too long" });
});

test("log records and the clock go through the host", async () => {
  host.logs.length = 0;
  host.now = 1_700_000_000_000;
  const p = await load(shout);
  assert.deepEqual(
    p.publish(identity({ user: "ann" }), "chat:1", { text: "hi" }),
    forward(["chat:1", { text: "HI", ts: 1_700_000_000_000 }]),
  );
  assert.deepEqual(host.logs, [{ level: "info", message: "ann shouted on chat:1", fields: [["len", "2"]] }]);
  host.now = undefined;
});

test("decisions are the WIT variants componentize-js expects", () => {
  assert.deepEqual(pass(), { tag: "pass" });
  assert.deepEqual(forward(["a", { x: 1 }], { channel: "b", data: "2" }), {
    tag: "forward",
    val: [{ channel: "a", data: '{"x":1}' }, { channel: "b", data: "2" }],
  });
  assert.deepEqual(allowInGroup("g"), { tag: "allow-in-group", val: "g" });
  assert.deepEqual(deny("no"), { tag: "deny", val: "no" });
  assert.deepEqual(enrich({ user: "u", claims: { r: 1 } }), { tag: "enrich", val: { user: "u", tenant: undefined, claims: '{"r":1}' } });
  assert.deepEqual(rewrite({ y: 2 }), { tag: "rewrite", val: '{"y":2}' });
  assert.deepEqual(skip(), { tag: "skip" });
});
