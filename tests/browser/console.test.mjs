// The operations console (/admin/) in a real browser, against two nodes on one Redis: a wrong
// token shows the refusal and no data; the right one shows both nodes; a new plugin version
// uploaded through the page reaches both nodes; a rollback brings the old one back on both; a
// broken component is refused and shows as an error status. Screenshots go to
// target/console-browser/.
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { Env, PATIENCE_MS, PLUGINS_DIR, VIEWPORT, browserFor } from "./support.mjs";

const TOKEN = "console-token-0123456789";
const v1 = join(PLUGINS_DIR, "stamp-v1.wasm");
const v2 = join(PLUGINS_DIR, "stamp-v2.wasm");
/** The version the admin API shows: the first 12 hex digits of the component's SHA-256. */
const version = (path) => createHash("sha256").update(readFileSync(path)).digest("hex").slice(0, 12);

test("the console logs in, shows two nodes, uploads, rolls back and shows a refused upload", { timeout: 4 * PATIENCE_MS }, async (t) => {
  const env = Env.for(t);
  const dir = mkdtempSync(join(tmpdir(), "switchyard-console-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  copyFileSync(v1, join(dir, "stamp.wasm"));
  const broken = join(dir, "broken.wasm");
  // A component's header and then nothing a compiler accepts: passes the upload's format check,
  // fails to compile.
  writeFileSync(broken, Buffer.concat([Buffer.from([0, 0x61, 0x73, 0x6d, 0x0d, 0, 1, 0]), Buffer.alloc(64, 0xff)]));
  const config =
    `[admin]\ntoken = "${TOKEN}"\nwatch = false\n` +
    `[plugins]\ndir = ${JSON.stringify(dir)}\ntimeout_ms = 2000\n` +
    `[[plugins.bindings]]\npattern = "news:*"\nplugin = "stamp"\n`;
  const redis = await env.redis();
  const [a, b] = await Promise.all([
    env.gateway(config, { redis, node: "node-a" }),
    env.gateway(config, { redis, node: "node-b" }),
  ]);

  // Steady traffic through the plugin, so the charts and rates have something to show.
  const subscriber = env.client({ url: b.url });
  await subscriber.connect();
  await subscriber.subscribe("news:1").ready();
  const publisher = env.client({ url: a.url });
  await publisher.connect();
  const traffic = setInterval(() => publisher.publish("news:1", { n: Date.now() }).catch(() => {}), 20);
  t.after(() => clearInterval(traffic));

  // No admin data without the token: only the page itself is public.
  assert.equal((await fetch(`http://${a.addr}/admin/cluster`)).status, 401);
  assert.equal((await fetch(`http://${a.addr}/admin/plugins`, { headers: { authorization: "Bearer nope" } })).status, 401);
  const page = await fetch(`http://${a.addr}/admin/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'self'/);

  const { browser, shot, recording } = await browserFor(t, "console-browser");
  const context = await browser.newContext({ viewport: VIEWPORT });
  const tab = await context.newPage();
  const problems = [];
  tab.on("pageerror", (e) => problems.push(String(e)));
  // Every confirmation the page asks for is accepted (and must be asked: counted).
  let confirmations = 0;
  tab.on("dialog", (d) => {
    confirmations += 1;
    void d.accept();
  });
  await tab.goto(`http://${a.addr}/admin/`);

  await recording({ console: tab }, async () => {
    // A wrong token: the API's refusal, no data.
    await tab.fill("#token", "wrong-token-0123456789");
    await tab.click("#sign-in");
    await tab.locator("#login-error", { hasText: "missing or wrong admin token" }).waitFor();
    assert.equal(await tab.locator("#console").isVisible(), false);
    assert.equal(await tab.locator("#nodes tbody tr").count(), 0);
    await shot(tab, "1-wrong-token");

    // The right token: both nodes, ready, serving v1.
    await tab.fill("#token", TOKEN);
    await tab.click("#sign-in");
    const node = (id) => tab.locator(`#nodes tr[data-node="${id}"]`);
    for (const id of ["node-a", "node-b"]) {
      await node(id).filter({ hasText: "ready" }).filter({ hasText: version(v1) }).waitFor();
    }
    assert.equal(await tab.locator("#nodes tbody tr").count(), 2);
    const stamp = tab.locator('#plugins tr[data-plugin="stamp"]');
    await stamp.filter({ hasText: "serving" }).waitFor();
    // Per-hook figures: stamp works on publish.
    await stamp.locator("td.hooks", { hasText: "on-publish" }).waitFor();
    // Traffic shows as a rate once two reports are in.
    await node("node-a").locator("td.num").nth(2).filter({ hasNotText: /^(…|0\.0)$/ }).waitFor();

    // Upload v2 through the page: both nodes switch.
    await tab.fill("#upload-name", "stamp");
    await tab.setInputFiles("#upload-file", v2);
    await tab.click("#upload-button");
    await tab.locator("#outcome.ok", { hasText: `stamp: now ${version(v2)} on every node` }).waitFor();
    for (const id of ["node-a", "node-b"]) await node(id).filter({ hasText: version(v2) }).waitFor();
    await stamp.filter({ hasText: version(v1) }).waitFor(); // as the previous version
    await shot(tab, "2-uploaded");

    // Roll back: both nodes serve v1 again.
    await stamp.getByRole("button", { name: "Roll back" }).click();
    await tab.locator("#outcome.ok", { hasText: `stamp rolled back: now ${version(v1)}` }).waitFor();
    for (const id of ["node-a", "node-b"]) await node(id).filter({ hasText: version(v1) }).waitFor();

    // A canary for one tenant through the page: shown on the plugin's row on both nodes'
    // data, then aborted; v1 serves everyone throughout.
    await tab.selectOption("#upload-stage", "canary");
    await tab.fill("#upload-plan", "tenants=acme");
    await tab.setInputFiles("#upload-file", v2);
    await tab.click("#upload-button");
    await tab.locator("#outcome.ok", { hasText: `stamp: ${version(v2)} runs as a canary on every node` }).waitFor();
    await stamp.locator(".trial.canary", { hasText: "tenants acme" }).waitFor();
    await shot(tab, "3-canary");
    await stamp.getByRole("button", { name: "Abort" }).click();
    await tab.locator("#outcome.ok", { hasText: "stamp: canary aborted" }).waitFor();
    await stamp.locator(".trial.ended", { hasText: "aborted" }).waitFor();
    for (const id of ["node-a", "node-b"]) await node(id).filter({ hasText: version(v1) }).waitFor();
    await tab.selectOption("#upload-stage", "");

    // A broken component: refused, shown as the outcome and as the plugin's status; v1 serves on.
    await tab.setInputFiles("#upload-file", broken);
    await tab.click("#upload-button");
    await tab.locator("#outcome.bad", { hasText: "refused" }).waitFor();
    await stamp.filter({ hasText: "refused" }).waitFor();
    for (const id of ["node-a", "node-b"]) await node(id).filter({ hasText: version(v1) }).waitFor();
    await shot(tab, "4-refused", { fullPage: true });
  });
  assert.equal(confirmations, 5, "upload, rollback, canary, abort and the last upload each asked first");
  assert.deepEqual(problems, [], "no script errors in the page");
});
