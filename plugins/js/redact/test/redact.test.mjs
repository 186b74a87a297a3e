// redact-js's hooks in Node (no wasm), with the SDK's test harness.
import assert from "node:assert/strict";
import { test } from "node:test";

import { forward, pass, reject } from "@switchyard/plugin";
import { identity, load } from "@switchyard/plugin/testing";

const plugin = new URL("../index.js", import.meta.url);
const ann = identity({ user: "ann" });

test("masks e-mail addresses and card numbers at any depth, keys and numbers untouched", async () => {
  const p = await load(plugin);
  const data = { text: "mail ann@example.com", deep: [{ card: "4111 1111 1111 1111" }], "a@b.cd": 4111111111111111 };
  assert.deepEqual(
    p.publish(ann, "support:1", data),
    forward(["support:1", { text: "mail [redacted]", deep: [{ card: "[redacted]" }], "a@b.cd": 4111111111111111 }]),
  );
});

test("passes a message with nothing to mask, and leaves glued or short runs alone", async () => {
  const p = await load(plugin);
  assert.deepEqual(p.publish(ann, "support:1", { text: "hello" }), pass());
  assert.deepEqual(p.publish(ann, "support:1", { text: "order 123456789012" }), pass());
  assert.deepEqual(p.publish(ann, "support:1", { text: "x4111111111111111" }), pass());
});

test("config: mask and luhn; unknown keys and wrong types refuse the plugin", async () => {
  const p = await load(plugin, { mask: "***", luhn: true });
  assert.deepEqual(p.publish(ann, "s", { c: "4111-1111-1111-1111" }), forward(["s", { c: "***" }]));
  assert.deepEqual(p.publish(ann, "s", { c: "4111-1111-1111-1112" }), pass(), "fails Luhn");
  await assert.rejects(load(plugin, { masc: "x" }), /unknown field `masc`/);
  await assert.rejects(load(plugin, { luhn: "yes" }), /`luhn` must be a boolean/);
});

test("a message nested deeper than 128 levels is refused, not passed unscanned", async () => {
  const p = await load(plugin);
  const deep = "[".repeat(200) + '"a@b.cd"' + "]".repeat(200);
  assert.deepEqual(p.publish(ann, "s", deep), reject("cannot inspect message: recursion limit exceeded"));
});
