// tenant-guard-js's hooks in Node (no wasm).
import assert from "node:assert/strict";
import { test } from "node:test";

import { allow, deliver, deny, pass, reject, rewrite, skip } from "@switchyard/plugin";
import { group, identity, load } from "@switchyard/plugin/testing";

const plugin = new URL("../index.js", import.meta.url);
const acme = identity({ user: "ann", tenant: "acme" });

test("tenant channels belong to their tenant", async () => {
  const p = await load(plugin);
  assert.deepEqual(p.subscribe(acme, "tenant:acme:orders"), allow());
  assert.deepEqual(p.subscribe(acme, "tenant:beta:orders"), deny("tenant:beta:orders belongs to tenant beta"));
  assert.deepEqual(p.publish(identity(), "tenant:acme:x", {}), reject("tenant:acme:x belongs to tenant acme"));
  assert.deepEqual(p.publish(acme, "news", {}), pass());
});

test("shared channels deliver a tenant's messages and views to that tenant only", async () => {
  const p = await load(plugin);
  const g = (tenant) => group({ key: tenant, tenant });
  assert.deepEqual(p.deliver(g("acme"), "news", { tenant: "acme", n: 1 }), deliver());
  assert.deepEqual(p.deliver(g("beta"), "news", { tenant: "acme", n: 1 }), skip());
  assert.deepEqual(p.deliver(g("beta"), "news", { n: 1 }), deliver());
  assert.deepEqual(p.deliver(g("acme"), "news", { views: { acme: { a: 1 } } }), rewrite({ a: 1 }));
  assert.deepEqual(p.deliver(g("beta"), "news", { views: { acme: { a: 1 } } }), skip());
});

test("config: prefix; unknown keys refuse", async () => {
  const p = await load(plugin, { prefix: "t:" });
  assert.deepEqual(p.subscribe(acme, "t:beta:x"), deny("t:beta:x belongs to tenant beta"));
  await assert.rejects(load(plugin, { prefx: "t:" }), /unknown field `prefx`/);
});
