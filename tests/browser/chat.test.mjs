// The chat demo in a real browser: headless Chromium opens the page in two browser contexts
// that nginx's least_conn puts on two different nodes (Redis between them), exchanges messages,
// shows plugin effects, recovers what a page missed while offline, and keeps both pages working
// through a node drain. Screenshots go to target/chat-browser/.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import {
  API_KEY, Env, Gateway, PATIENCE_MS, REPO, SECRET, VIEWPORT, browserFor, eventually, freePort, lineMatching, patiently,
} from "./support.mjs";

const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find(existsSync) ?? "nginx";

/** Two nodes with the example config (the demo's plugins and namespaces) on one Redis. */
async function cluster(env) {
  const redis = await env.redis();
  const vars = { SWITCHYARD__AUTH__HS256_SECRET: SECRET, SWITCHYARD__API__KEYS: `["${API_KEY}"]` };
  const node = (id) =>
    Gateway.run(env, ["--config", join(REPO, "examples/switchyard.toml"), "--redis-url", redis.url, "--node-id", id], vars);
  return Promise.all([node("node-1"), node("node-2")]);
}

/** nginx with the example template in front of `gateways`; its port. */
async function nginx(env, gateways) {
  const port = await freePort();
  const prefix = join(REPO, "target/chat-nginx");
  mkdirSync(prefix, { recursive: true });
  const upstreams = gateways.map((g) => `server ${g.addr} max_fails=0;`).join(" ");
  const conf = readFileSync(join(REPO, "examples/nginx/nginx.conf.template"), "utf8")
    .replaceAll("@LISTEN@", String(port))
    .replaceAll("@UPSTREAMS@", upstreams)
    .replaceAll("@PREFIX@", prefix);
  writeFileSync(join(prefix, "nginx.conf"), conf);
  // SIGTERM: nginx's master stops its workers; a SIGKILLed master would leave them running.
  env.spawn(NGINX, ["-p", prefix, "-c", join(prefix, "nginx.conf")], process.env, "SIGTERM");
  await eventually("nginx to proxy", async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.status === 200);
  return port;
}

/** The page server (examples/chat/serve.mjs) for `gateway`; its base URL. */
async function pageServer(env, gateway, api) {
  const vars = { ...process.env, SWITCHYARD__AUTH__HS256_SECRET: SECRET, SWITCHYARD_DEMO_API_KEY: API_KEY };
  const child = env.spawn(process.execPath, [join(REPO, "examples/chat/serve.mjs"), "--port", "0", "--gateway", gateway, "--api", api], vars);
  const line = await patiently("the page server", lineMatching(child, "stdout", (l) => l.startsWith("chat demo on ")));
  return line.match(/(http:\/\/\S+\/)/)[1];
}

/** Which nodes hold `user`'s connections, from the presence API. */
async function nodesOf(gateway, user) {
  const { connections } = await gateway.apiGet(`/api/presence/users/${user}`);
  return connections.map((c) => c.node);
}

/** The one node holding `user`'s connection, once presence (written asynchronously) shows one (`expected`, if given). */
async function nodeOf(gateway, user, expected) {
  let nodes = [];
  await eventually(`presence of ${user}${expected ? ` on ${expected}` : ""}`, async () => {
    nodes = await nodesOf(gateway, user);
    return nodes.length === 1 && (expected === undefined || nodes[0] === expected);
  });
  return nodes[0];
}

/** A signed-in page for `user` in its own browser context. */
async function signIn(browser, base, user, tenant) {
  const context = await browser.newContext({ viewport: VIEWPORT });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  await page.goto(base);
  await page.fill("#user", user);
  await page.fill("#tenant", tenant);
  await page.click("#connect");
  await page.locator('#state[data-state="connected"]').waitFor();
  return { page, problems };
}

/** Sends `text` in the page's current room and waits for the composer to clear (published). */
async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("text").value === "");
}

const line = (page, text) => page.locator("#messages li", { hasText: text });

test("two browsers on two nodes chat, see plugins work, recover while offline and survive a drain", { timeout: 4 * PATIENCE_MS }, async (t) => {
  const env = Env.for(t);
  const [gw1, gw2] = await cluster(env);
  const port = await nginx(env, [gw1, gw2]);
  const base = await pageServer(env, `ws://127.0.0.1:${port}/ws`, `http://${gw1.addr}`);
  const { browser, shot, recording } = await browserFor(t, "chat-browser");
  const ann = await signIn(browser, base, "ann", "acme");
  const bob = await signIn(browser, base, "bob", "acme");
  await recording({ ann: ann.page, bob: bob.page }, () => chat(gw1, gw2, ann, bob, shot));
});

/** The steps, with both pages signed in. */
async function chat(gw1, gw2, ann, bob, shot) {
  const annNode = await nodeOf(gw1, "ann");
  const bobNode = await nodeOf(gw1, "bob");
  assert.ok(annNode && bobNode && annNode !== bobNode, `least_conn put ann on ${annNode}, bob on ${bobNode}`);

  // Both in chat:lobby: bob's join reached ann (event or the members snapshot).
  await ann.page.locator("#members li", { hasText: "bob" }).waitFor();

  // A message across nodes; chat-router forwards the @mention to bob's private user channel.
  await say(ann.page, "hello @bob from ann");
  await line(bob.page, "hello @bob from ann").waitFor();
  await bob.page.locator("#mentions li", { hasText: "hello @bob from ann" }).waitFor();
  assert.equal(await ann.page.locator("#mentions li").count(), 0, "ann was not mentioned");

  // redact masks card numbers and e-mail addresses in support:*.
  for (const p of [ann.page, bob.page]) await p.click('#rooms li[data-channel="support:help"]');
  await say(bob.page, "card 4111 1111 1111 1111, mail bob@example.com");
  const redacted = line(ann.page, "card [redacted], mail [redacted]");
  await redacted.waitFor();
  assert.doesNotMatch(await ann.page.locator("#messages").innerText(), /4111|bob@example\.com/);
  await shot(ann.page, "1-ann-support");
  await shot(bob.page, "1-bob-support");

  // ann goes offline; what bob says meanwhile comes back on reconnect from history, counted.
  for (const p of [ann.page, bob.page]) await p.click('#rooms li[data-channel="chat:lobby"]');
  await ann.page.click("#offline");
  await ann.page.locator('#state[data-state="closed"]').waitFor();
  for (const n of [1, 2, 3]) await say(bob.page, `while you were away ${n}`);
  await ann.page.click("#offline");
  // Exactly the 3 sent while she was away: her own earlier message reached her live (a deliver
  // hook timing out on a loaded machine once withheld it, to come back here as a 4th; the
  // gateway now catches such a message up from history at once).
  const notice = ann.page.locator("#messages li.notice", { hasText: /recovered \d+ messages/ });
  await notice.waitFor();
  const recovered = Number((await notice.innerText()).match(/recovered (\d+) messages/)[1]);
  assert.equal(recovered, 3);
  for (const n of [1, 2, 3]) await line(ann.page, `while you were away ${n}`).and(ann.page.locator(".recovered")).waitFor();
  await shot(ann.page, "2-ann-recovered");

  // Drain ann's node: her page reconnects through nginx to the other node, bob's stays put,
  // and both keep chatting.
  const [drained, other] = annNode === "node-1" ? [gw1, gw2] : [gw2, gw1];
  await drained.term();
  await ann.page.locator("#stats", { hasText: "reconnects 2" }).waitFor();
  await ann.page.locator('#state[data-state="connected"]').waitFor();
  await nodeOf(other, "ann", bobNode);
  await say(ann.page, "still here after the drain");
  await line(bob.page, "still here after the drain").waitFor();
  await say(bob.page, "welcome back ann");
  await line(ann.page, "welcome back ann").waitFor();
  await shot(ann.page, "3-ann-after-drain");
  await shot(bob.page, "3-bob-after-drain");

  assert.deepEqual([...ann.problems, ...bob.problems], [], "no script errors in either page");
}
