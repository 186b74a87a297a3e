#!/usr/bin/env node
// The chat demo's web server: the page, the JS client's build, and demo tokens.
//
//   node examples/chat/serve.mjs --port 8090 --gateway ws://127.0.0.1:8080/ws[,ws://...] \
//        [--api http://127.0.0.1:8081]
//
// With several gateway URLs the page tries them in turn when one goes away.
// Environment: SWITCHYARD__AUTH__HS256_SECRET, the secret the gateway verifies tokens with (the
// same variable configures the gateway). GET /token?user=U&tenant=T mints a one-hour HS256
// token for anyone who asks: a demo on loopback, never a way to sign users in.
// With --api and SWITCHYARD_DEMO_API_KEY (one of the gateway's api.keys), GET /members?channel=C
// answers who is in a room, from the gateway's presence API (as an application's backend
// would ask it): {"users":[{"user":U,"connections":N}]}.
// No dependencies beyond Node's own modules; every asset is served from this repository.

import { createHmac } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
const roots = {
  "/client/": join(here, "../../clients/js/dist"),
  "/": join(here, "public"),
};
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
  ".svg": "image/svg+xml",
};

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "8090" },
    host: { type: "string", default: "127.0.0.1" },
    gateway: { type: "string", default: "ws://127.0.0.1:8080/ws" },
    audience: { type: "string", default: "switchyard" },
    api: { type: "string" },
  },
});
const secret = process.env.SWITCHYARD__AUTH__HS256_SECRET;
if (!secret) {
  console.error("serve.mjs: set SWITCHYARD__AUTH__HS256_SECRET (the gateway's auth.hs256_secret)");
  process.exit(2);
}

/** A one-hour HS256 JWT for `user` (and `tenant`), audience as the gateway expects. */
function mint(user, tenant, key = secret, audience = args.audience) {
  const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, aud: audience, iat: now, exp: now + 3600 };
  if (tenant) claims.tenant = tenant;
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
}

/** Names the demo accepts: what channel names allow, so `user:<name>` is a valid channel. */
const NAME = /^[A-Za-z0-9_.-]{1,32}$/;
/** Rooms whose members the page may ask for. */
const ROOM = /^(chat|support):[A-Za-z0-9_.-]{1,32}$/;
const apiKey = process.env.SWITCHYARD_DEMO_API_KEY;

/** The users subscribed to `channel` on any node, with their connection counts. */
async function members(channel) {
  const url = `${args.api}/api/presence/channels/${encodeURIComponent(channel)}`;
  const res = await fetch(url, { headers: { authorization: `Bearer ${apiKey}` } });
  if (!res.ok) throw new Error(`presence API: HTTP ${res.status}`);
  const counts = new Map();
  for (const { user } of (await res.json()).subscribers) {
    const who = user ?? "anonymous";
    counts.set(who, (counts.get(who) ?? 0) + 1);
  }
  return [...counts].map(([user, connections]) => ({ user, connections }));
}

function json(res, status, body) {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

async function handle(req, res) {
  const url = new URL(req.url, "http://localhost");
  if (url.pathname === "/token") {
    const user = url.searchParams.get("user") ?? "";
    const tenant = url.searchParams.get("tenant") || null;
    if (!NAME.test(user) || (tenant !== null && !NAME.test(tenant))) {
      return json(res, 400, { error: "user and tenant: 1-32 of A-Z a-z 0-9 _ . -" });
    }
    return json(res, 200, { token: mint(user, tenant) });
  }
  if (url.pathname === "/config.json") {
    return json(res, 200, { gateways: args.gateway.split(",") });
  }
  if (url.pathname === "/members") {
    const channel = url.searchParams.get("channel") ?? "";
    if (!args.api || !apiKey) return json(res, 404, { error: "no presence API configured (--api, SWITCHYARD_DEMO_API_KEY)" });
    if (!ROOM.test(channel)) return json(res, 400, { error: "channel: chat:<room> or support:<room>" });
    try {
      return json(res, 200, { users: await members(channel) });
    } catch (e) {
      return json(res, 502, { error: String(e.message ?? e) });
    }
  }
  const prefix = url.pathname.startsWith("/client/") ? "/client/" : "/";
  const rel = url.pathname.slice(prefix.length) || "index.html";
  const path = normalize(join(roots[prefix], rel));
  if (!path.startsWith(roots[prefix] + sep)) {
    res.writeHead(404);
    return res.end();
  }
  try {
    const body = await readFile(path);
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end(prefix === "/client/" ? "not found (build the client: cd clients/js && npm run build)\n" : "not found\n");
  }
}

const server = createServer((req, res) => {
  handle(req, res).catch((e) => {
    res.writeHead(500);
    res.end(String(e));
  });
});
server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  // The test harness reads this line for the port.
  console.log(`chat demo on http://${args.host}:${port}/ (gateway ${args.gateway})`);
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
