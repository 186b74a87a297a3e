import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import WebSocket from "ws";

import { Client } from "@switchyard/client";
import { Env } from "./harness.js";

const DIST = fileURLToPath(new URL("../../dist/", import.meta.url));

test("dist has no bare import a browser could not resolve", () => {
  const files = readdirSync(DIST).filter((f) => f.endsWith(".js"));
  assert.ok(files.includes("index.js"));
  for (const file of files) {
    const text = readFileSync(DIST + file, "utf8");
    for (const [, specifier] of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']/gm)) {
      assert.match(specifier ?? "", /^\.\/[\w.-]+\.js$/, `${file} imports ${specifier}`);
    }
    // The one dynamic import (ws, for Node) names its module through a variable.
    for (const [call] of text.matchAll(/\bimport\s*\(([^)]*)\)/g)) {
      assert.doesNotMatch(call, /["']/, `${file}: ${call}`);
    }
    assert.doesNotMatch(text, /\b(require|process|Buffer)\b/, `${file} uses a Node-only global`);
  }
});

test("a global WebSocket (as in browsers) is used instead of the ws package", async (t) => {
  const env = Env.for(t);
  const gw = await env.gateway("");
  const made: string[] = [];
  class BrowserLike extends WebSocket {
    constructor(url: string) {
      super(url);
      made.push(url);
    }
  }
  const global = globalThis as { WebSocket?: unknown };
  const before = global.WebSocket;
  global.WebSocket = BrowserLike;
  t.after(() => {
    global.WebSocket = before;
  });
  const client = env.client({ url: gw.url });
  await client.connect();
  assert.ok(client instanceof Client);
  assert.deepEqual(made, [gw.url]);
  await client.subscribe("x").ready();
});
