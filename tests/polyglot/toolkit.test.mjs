// The plugin toolkit as a new author uses it, in JavaScript and Python: `switchyard plugin new`
// scaffolds, `plugin test` passes the scaffold's own test, `plugin build` makes a component a
// gateway serves, and after an edit `plugin push` hot-swaps v2 into the running gateway.
// (Rust plugins live in the cargo workspace, plugins/<name>; scripts/build-plugins.sh and the
// Rust suite cover that path.)
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { Env, PATIENCE_MS, next } from "../../clients/js/build/test/harness.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const GATEWAY_BIN = process.env.SWITCHYARD_BIN ?? join(REPO, "target/debug/switchyard");
const TOKEN = "toolkit-token-0123456789";
const WORK = join(REPO, "target/toolkit-test");

// Builds and first compiles of 12-19 MB components take seconds here and a minute or more on
// a loaded CI machine with a debug gateway: the bounds below only guard against a hang.
const STEP_BOUND_MS = 15 * PATIENCE_MS;

/** Runs `switchyard plugin ...`; its stdout. */
async function plugin(...args) {
  const { stdout } = await promisify(execFile)(GATEWAY_BIN, ["plugin", ...args], {
    timeout: STEP_BOUND_MS,
    env: { ...process.env, SWITCHYARD_ADMIN_TOKEN: TOKEN },
  });
  return stdout;
}

/** Each language: the scaffold's source file and an edit that makes v2 add `"v": 2`. */
const LANGUAGES = {
  js: { source: "index.js", edit: (s) => s.replace("text: msg.text.toUpperCase() }", "text: msg.text.toUpperCase(), v: 2 }") },
  python: { source: "tk_python.py", edit: (s) => s.replace('"text": msg["text"].upper()}', '"text": msg["text"].upper(), "v": 2}') },
};

test("new, test, build, serve, edit, push: a hot-swapped v2 in JavaScript and Python", { timeout: 4 * STEP_BOUND_MS }, async (t) => {
  rmSync(WORK, { recursive: true, force: true });
  const plugins = join(WORK, "plugins");
  mkdirSync(plugins, { recursive: true });
  t.after(() => rmSync(WORK, { recursive: true, force: true }));

  for (const lang of Object.keys(LANGUAGES)) {
    const dir = join(WORK, `tk-${lang}`);
    assert.match(await plugin("new", `tk-${lang}`, "--lang", lang, "--dir", dir), /created/);
    await plugin("test", dir);
    assert.match(await plugin("build", dir, "-o", join(plugins, `tk-${lang}.wasm`)), /MB in/);
  }
  await assert.rejects(plugin("new", "tk-js", "--lang", "js", "--dir", join(WORK, "tk-js")), /exists already/);

  const bindings = Object.keys(LANGUAGES)
    .map((lang) => `[[plugins.bindings]]\npattern = "${lang}:*"\nplugin = "tk-${lang}"\n`)
    .join("");
  const config = `[admin]\ntoken = "${TOKEN}"\nwatch = false\n[plugins]\ndir = ${JSON.stringify(plugins)}\ntimeout_ms = 2000\n${bindings}`;
  // Compile both components once (into <plugins>/.cache) before the gateway must listen.
  writeFileSync(join(WORK, "check.toml"), config);
  await promisify(execFile)(GATEWAY_BIN, ["--check", "--config", join(WORK, "check.toml")], { timeout: STEP_BOUND_MS });
  const env = Env.for(t);
  const gw = await env.gateway(config);
  const client = env.client({ url: gw.url });
  await client.connect();

  for (const [lang, { source, edit }] of Object.entries(LANGUAGES)) {
    const sub = client.subscribe(`${lang}:1`);
    await sub.ready();
    let got = next(sub, "message");
    await client.publish(`${lang}:1`, { text: "hi" });
    assert.deepEqual((await got).data, { text: "HI" }, `${lang} v1`);

    const dir = join(WORK, `tk-${lang}`);
    const file = join(dir, source);
    const v2 = edit(readFileSync(file, "utf8"));
    assert.notEqual(v2, readFileSync(file, "utf8"), `the ${lang} edit applies to the scaffold`);
    writeFileSync(file, v2);
    const out = join(WORK, `tk-${lang}-v2.wasm`);
    await plugin("build", dir, "-o", out);
    assert.match(await plugin("push", `tk-${lang}`, out, "--admin", `http://${gw.addr}`), /"changed":true/);

    got = next(sub, "message");
    await client.publish(`${lang}:1`, { text: "hi" });
    assert.deepEqual((await got).data, { text: "HI", v: 2 }, `${lang} v2`);
  }
  await assert.rejects(plugin("push", "tk-js", join(WORK, "check.toml"), "--admin", `http://${gw.addr}`), /415|not_wasm/);
});
