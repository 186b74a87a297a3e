import assert from "node:assert/strict";
import { test } from "node:test";

import { forward } from "@switchyard/plugin";
import { identity, load } from "@switchyard/plugin/testing";

test("shouts", async () => {
  const p = await load(new URL("../index.js", import.meta.url));
  assert.deepEqual(p.publish(identity({ user: "ann" }), "chat:1", { text: "hi" }), forward(["chat:1", { text: "HI" }]));
});
