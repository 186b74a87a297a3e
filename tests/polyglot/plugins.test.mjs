// The same behavioural checks against plugins written in each language, through a real
// gateway: `redact` and `tenant-guard` in Rust (plugins/), JavaScript (plugins/js, built with
// plugin-sdk/js) and Python (plugins/python, built with plugin-sdk/python). All are bound at
// once (rs:*, js:*, py:*; rsg:*, jsg:*, pyg:*) and must treat every message alike.
//
// Needs target/plugins/{redact,tenant-guard}{,-js,-py}.wasm (scripts/test.sh builds them) and
// the JS client's test harness (clients/js/build/test, compiled by the JS suite).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { promisify } from "node:util";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { AUTH, Env, PATIENCE_MS, PLUGINS_DIR, next, token } from "../../clients/js/build/test/harness.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const LANGUAGES = { rs: "redact", js: "redact-js", py: "redact-py" };
/** tenant-guard in each language, bound to `<prefix>g:*` with its tenant channels under `<prefix>g:t:`. */
const GUARDS = { rs: "tenant-guard", js: "tenant-guard-js", py: "tenant-guard-py" };
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

// Compiling four 12-19 MB components in a debug gateway took 40 s here and over 100 s on a
// loaded CI machine: the bounds below only guard against a hang.
const COMPILE_BOUND_MS = 30 * PATIENCE_MS;

test("redact and tenant-guard behave the same in Rust, JavaScript and Python", { timeout: COMPILE_BOUND_MS + 6 * PATIENCE_MS }, async (t) => {
  const env = Env.for(t);
  const bindings =
    Object.entries(LANGUAGES)
      .map(([prefix, plugin]) => `[[plugins.bindings]]\npattern = "${prefix}:*"\nplugin = "${plugin}"\n`)
      .join("") +
    Object.entries(GUARDS)
      .map(([prefix, plugin]) => `[[plugins.bindings]]\npattern = "${prefix}g:*"\nplugin = "${plugin}"\nconfig = { prefix = "${prefix}g:t:" }\n`)
      .join("");
  const config = `${AUTH}anonymous = true\n[plugins]\ndir = ${JSON.stringify(PLUGINS_DIR)}\ntimeout_ms = 2000\n${bindings}`;
  // `--check` loads every plugin (compile, instantiate, init) and fills the compile cache
  // (on by default, <plugins.dir>/.cache), so the gateway below starts at once: the first
  // compile of a JS component is the slow part (~25 s in a debug build).
  const dir = mkdtempSync(join(tmpdir(), "switchyard-polyglot-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "check.toml"), config);
  const { stdout } = await promisify(execFile)(GATEWAY_BIN, ["--check", "--config", join(dir, "check.toml")], {
    timeout: COMPILE_BOUND_MS,
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

  // tenant-guard: tenant channels refused to other tenants with the same reason; on a shared
  // channel each tenant receives its own messages, untagged ones and its own view only.
  const as = async (tenant) => {
    const c = env.client({ url: gw.url, token: token(`${tenant}-user`, { tenant }) });
    await c.connect();
    return c;
  };
  const [acme, beta] = [await as("acme"), await as("beta")];
  for (const [prefix, plugin] of Object.entries(GUARDS)) {
    const refused = acme.subscribe(`${prefix}g:t:beta:orders`);
    await assert.rejects(refused.ready(), { code: "forbidden", message: `${prefix}g:t:beta:orders belongs to tenant beta` }, plugin);
    await acme.subscribe(`${prefix}g:t:acme:orders`).ready();

    const shared = `${prefix}g:news`;
    const [a, b] = [acme.subscribe(shared), beta.subscribe(shared)];
    await Promise.all([a.ready(), b.ready()]);
    const seen = { acme: [], beta: [] };
    a.on("message", ({ data }) => seen.acme.push(data));
    b.on("message", ({ data }) => seen.beta.push(data));
    // The untagged last message reaches both: everything before it has been decided.
    const last = [a, b].map((sub) => next(sub, "message", ({ data }) => data.n === 4));
    for (const data of [{ tenant: "acme", n: 1 }, { tenant: "beta", n: 2 }, { views: { acme: { v: "a" }, beta: { v: "b" } } }, { n: 4 }]) {
      await client.publish(shared, data);
    }
    await Promise.all(last);
    assert.deepEqual(seen.acme, [{ tenant: "acme", n: 1 }, { v: "a" }, { n: 4 }], plugin);
    assert.deepEqual(seen.beta, [{ tenant: "beta", n: 2 }, { v: "b" }, { n: 4 }], plugin);
  }
});
