#!/usr/bin/env node
// The chat demo's web server: the page, the JS client's build, and demo tokens.
//
//   node examples/chat/serve.mjs --port 8090 --gateway ws://127.0.0.1:8080/ws[,ws://...]
//
// With several gateway URLs the page tries them in turn when one goes away.
// Environment: SWITCHYARD__AUTH__HS256_SECRET, the secret the gateway verifies tokens with (the
// same variable configures the gateway). GET /token?user=U&tenant=T mints a one-hour HS256
// token for anyone who asks: a demo on loopback, never a way to sign users in.
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

async function handle(req, res) {
  const url = new URL(req.url, "http://localhost");
  if (url.pathname === "/token") {
    const user = url.searchParams.get("user") ?? "";
    const tenant = url.searchParams.get("tenant") || null;
    if (!NAME.test(user) || (tenant !== null && !NAME.test(tenant))) {
      res.writeHead(400, { "content-type": "application/json" });
      return res.end(JSON.stringify({ error: "user and tenant: 1-32 of A-Z a-z 0-9 _ . -" }));
    }
    res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
    return res.end(JSON.stringify({ token: mint(user, tenant) }));
  }
  if (url.pathname === "/config.json") {
    res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
    return res.end(JSON.stringify({ gateways: args.gateway.split(",") }));
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
