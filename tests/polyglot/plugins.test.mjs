// The same behavioural checks against a plugin written in each language, through a real
// gateway: `redact` (Rust, plugins/redact), `redact-js` (JavaScript, plugins/js/redact, built
// with plugin-sdk/js) and `redact-py` (Python, plugins/python/redact, built with
// plugin-sdk/python). All are bound at once (rs:*, js:*, py:*) and must treat every message
// alike.
//
// Needs target/plugins/redact{,-js,-py}.wasm (scripts/test.sh builds them) and the JS client's
// test harness (clients/js/build/test, compiled by the JS suite).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { promisify } from "node:util";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { Env, PATIENCE_MS, PLUGINS_DIR, next } from "../../clients/js/build/test/harness.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const LANGUAGES = { rs: "redact", js: "redact-js", py: "redact-py" };
const GATEWAY_BIN = process.env.SWITCHYARD_BIN ?? join(REPO, "target/debug/switchyard");

/** [what is published, what subscribers must receive] */
const CASES = [
  [{ text: "mail ann@example.com" }, { text: "mail [redacted]" }],
  [{ text: "card 4111 1111 1111 1111, again 4111-1111-1111-1111" }, { text: "card [redacted], again [redacted]" }],
  [{ deep: [{ note: "x@y.io" }], n: 4111111111111111, "k@e.yz": 1 }, { deep: [{ note: "[redacted]" }], n: 4111111111111111, "k@e.yz": 1 }],
  [{ text: "nothing here", order: 123456789012 }, { text: "nothing here", order: 123456789012 }],
  [{ text: "glued x4111111111111111 stays" }, { text: "glued x4111111111111111 stays" }],
  ["a plain string with bob@example.org", "a plain string with [redacted]"],
];

test("redact behaves the same in Rust, JavaScript and Python", { timeout: 6 * PATIENCE_MS }, async (t) => {
  const env = Env.for(t);
  const bindings = Object.entries(LANGUAGES)
    .map(([prefix, plugin]) => `[[plugins.bindings]]\npattern = "${prefix}:*"\nplugin = "${plugin}"\n`)
    .join("");
  const config = `[plugins]\ndir = ${JSON.stringify(PLUGINS_DIR)}\ntimeout_ms = 2000\n${bindings}`;
  // `--check` loads every plugin (compile, instantiate, init) and fills the compile cache
  // (on by default, <plugins.dir>/.cache), so the gateway below starts at once: the first
  // compile of a JS component is the slow part (~25 s in a debug build).
  const dir = mkdtempSync(join(tmpdir(), "switchyard-polyglot-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "check.toml"), config);
  const { stdout } = await promisify(execFile)(GATEWAY_BIN, ["--check", "--config", join(dir, "check.toml")], {
    timeout: 5 * PATIENCE_MS,
  });
  for (const plugin of Object.values(LANGUAGES)) assert.match(stdout, new RegExp(`plugin OK: .* -> ${plugin}@`));
  const gw = await env.gateway(config);
  const client = env.client({ url: gw.url });
  await client.connect();
  for (const [prefix, plugin] of Object.entries(LANGUAGES)) {
    const sub = client.subscribe(`${prefix}:1`);
    await sub.ready();
    for (const [sent, expected] of CASES) {
      const received = next(sub, "message");
      await client.publish(`${prefix}:1`, sent);
      assert.deepEqual((await received).data, expected, `${plugin}: ${JSON.stringify(sent)}`);
    }
  }
});
