/**
 * Test harness: real redis-server and switchyard processes on free loopback ports, HS256
 * tokens, and helpers that wait for events (never for time). Every process an {@link Env}
 * starts is killed by the test's `after` hook, failed or not, and on process exit.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";

import {
  Client,
  type ClientEvents,
  type ClientOptions,
  type Emitter,
  type MessageEvent,
  type Subscription,
  type SubscriptionEvents,
} from "@switchyard/client";

/** Upper bound on waiting for something that should happen; only guards against a hung test. */
export const PATIENCE_MS = 20_000;
/** The gateways' HS256 secret. */
export const SECRET = "test-secret-0123456789";
/** The gateways' backend API key. */
export const API_KEY = "control-key-0123456789";

/** The repository root (this file runs from clients/js/build/test/). */
const REPO = fileURLToPath(new URL("../../../../", import.meta.url));
const GATEWAY_BIN = process.env.SWITCHYARD_BIN ?? join(REPO, "target/debug/switchyard");
/** The example plugins built as WebAssembly components. */
export const PLUGINS_DIR = join(REPO, "target/plugins");

/** Every child any test started, killed on exit should an `after` hook never run. */
const everyChild = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of everyChild) child.kill("SIGKILL");
});

/** A free loopback port (free now; the caller binds it soon after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Rejects after {@link PATIENCE_MS} naming `what`, unless `promise` settles first. */
export function patiently<T>(what: string, promise: Promise<T>, ms = PATIENCE_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The events of a client or a subscription (inference through Emitter's generic methods fails). */
export type EventsOf<T> = T extends Client ? ClientEvents : T extends Subscription ? SubscriptionEvents : never;

/** The next `event` of `emitter` whose payload satisfies `pred`. */
export function next<T extends Client | Subscription, K extends keyof EventsOf<T>>(
  emitter: T,
  event: K,
  pred: (payload: EventsOf<T>[K]) => boolean = () => true,
): Promise<EventsOf<T>[K]> {
  const source = emitter as unknown as Emitter<EventsOf<T>>;
  let off: () => void = () => {};
  const seen = new Promise<EventsOf<T>[K]>((resolve) => {
    off = source.on(event, (payload) => {
      if (pred(payload)) resolve(payload);
    });
  });
  return patiently(`event ${String(event)}`, seen).finally(off);
}

/**
 * Waits until `cond` holds, polling every 10 ms: only for state the test cannot be notified of
 * (readiness, presence); bounded by {@link PATIENCE_MS}.
 */
export async function eventually(what: string, cond: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + PATIENCE_MS;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Records every payload of the given events of `emitter`, in order, as [event, payload]. */
export function record<T extends Client | Subscription, K extends keyof EventsOf<T>>(
  emitter: T,
  events: K[],
): [K, EventsOf<T>[K]][] {
  const source = emitter as unknown as Emitter<EventsOf<T>>;
  const log: [K, EventsOf<T>[K]][] = [];
  for (const event of events) source.on(event, (payload) => log.push([event, payload]));
  return log;
}

/** Messages of a subscription as they arrive, with a way to wait for enough of them. */
export class Inbox {
  readonly messages: MessageEvent[] = [];
  #waiters: { pred: (m: MessageEvent[]) => boolean; resolve: () => void }[] = [];

  /** Collects `sub`'s messages from now on. */
  constructor(sub: Subscription) {
    sub.on("message", (m) => {
      this.messages.push(m);
      this.#waiters = this.#waiters.filter((w) => {
        if (!w.pred(this.messages)) return true;
        w.resolve();
        return false;
      });
    });
  }

  /** The data of every message so far. */
  get data(): unknown[] {
    return this.messages.map((m) => m.data);
  }

  /** Resolves once the messages so far satisfy `pred` (at once if they already do). */
  until(pred: (m: MessageEvent[]) => boolean): Promise<void> {
    if (pred(this.messages)) return Promise.resolve();
    return patiently(
      "messages",
      new Promise<void>((resolve) => this.#waiters.push({ pred, resolve })),
    );
  }

  /** Resolves once `n` messages arrived. */
  count(n: number): Promise<void> {
    return this.until((m) => m.length >= n);
  }
}

/** Unix seconds now. */
export function unixNow(): number {
  return Math.floor(Date.now() / 1000);
}

/** JWT segments are unpadded base64url. */
function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

/** `claims` as an HS256 JWT signed with {@link SECRET}. */
export function sign(claims: Record<string, unknown>, secret = SECRET): string {
  const head = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = base64url(JSON.stringify(claims));
  const mac = createHmac("sha256", secret).update(`${head}.${body}`).digest();
  return `${head}.${body}.${base64url(mac)}`;
}

/** A token for `user` (with `tenant`) that expires `secs` from now (default an hour). */
export function token(user: string, options: { tenant?: string; secs?: number } = {}): string {
  const claims: Record<string, unknown> = {
    sub: user,
    aud: "switchyard",
    exp: unixNow() + (options.secs ?? 3600),
  };
  if (options.tenant) claims.tenant = options.tenant;
  return sign(claims);
}

/** The `[auth]` section accepting {@link token}s (and anonymous clients). */
export const AUTH = `[auth]\nhs256_secret = "${SECRET}"\naudience = "switchyard"\n`;

/** A redis-server child on its own port. */
export class RedisServer {
  readonly port: number;
  #env: Env;
  #child: ChildProcess | undefined;

  /** Use {@link RedisServer.start}. */
  private constructor(env: Env, port: number) {
    this.#env = env;
    this.port = port;
  }

  /** Starts one on a free port and waits until it accepts connections. */
  static async start(env: Env): Promise<RedisServer> {
    const redis = new RedisServer(env, await freePort());
    await redis.#spawn();
    return redis;
  }

  /** `redis://127.0.0.1:PORT`. */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Runs redis-server on the port (again, for a restart) until it is ready. */
  async #spawn(): Promise<void> {
    const child = this.#env.spawn("redis-server", [
      "--port", String(this.port),
      "--bind", "127.0.0.1",
      "--save", "",
      "--appendonly", "no",
      "--protected-mode", "no",
    ]);
    this.#child = child;
    await patiently("redis-server to be ready", lineMatching(child, "stdout", (l) => l.includes("Ready to accept connections")));
  }

  /** Kills it (a crash: no persistence, so everything it held is gone). */
  async kill(): Promise<void> {
    if (this.#child) await this.#env.kill(this.#child);
    this.#child = undefined;
  }

  /** Starts it again on the same port. */
  async restart(): Promise<void> {
    await this.#spawn();
  }
}

/** Options of {@link Gateway.start}. */
export interface GatewayOptions {
  /** The node id (`[server] node_id`). */
  node?: string;
  /** Redis for the broker; without it the node is single (embedded broker). */
  redis?: RedisServer;
}

/** A switchyard binary child listening on a free port. */
export class Gateway {
  /** `127.0.0.1:PORT`. */
  readonly addr: string;
  readonly #child: ChildProcess;
  readonly #env: Env;

  /** Use {@link Gateway.start}. */
  private constructor(env: Env, child: ChildProcess, addr: string) {
    this.#env = env;
    this.#child = child;
    this.addr = addr;
  }

  /** Starts a gateway with `config` (TOML) plus the broker and node sections of `options`. */
  static async start(env: Env, config: string, options: GatewayOptions = {}): Promise<Gateway> {
    let text = `[server]\nshutdown_grace_secs = 2\n${options.node ? `node_id = "${options.node}"\n` : ""}`;
    if (options.redis) text += `[broker]\nredis_url = "${options.redis.url}"\nprefix = "sy:"\n`;
    text += config;
    return Gateway.run(env, ["--config", env.file("switchyard.toml", text)]);
  }

  /**
   * Starts the gateway binary with `args` (after `--listen 127.0.0.1:0 --log-format json`) and
   * `vars` added to the environment; resolves once it listens and is ready.
   */
  static async run(env: Env, args: string[], vars: Record<string, string> = {}): Promise<Gateway> {
    const childEnv = { ...process.env, ...vars };
    delete childEnv.SWITCHYARD_CONFIG;
    const child = env.spawn(GATEWAY_BIN, ["--listen", "127.0.0.1:0", "--log-format", "json", ...args], childEnv);
    const line = await patiently(
      "the gateway to listen",
      lineMatching(child, "stderr", (l) => l.includes('"switchyard listening"')),
    );
    const addr = (JSON.parse(line) as { addr: string }).addr;
    const gw = new Gateway(env, child, addr);
    await gw.ready();
    return gw;
  }

  /** The WebSocket URL. */
  get url(): string {
    return `ws://${this.addr}/ws`;
  }

  /** Waits until /readyz answers 200 (its broker connected). */
  async ready(): Promise<void> {
    await eventually(`${this.addr} to be ready`, async () => {
      try {
        return (await fetch(`http://${this.addr}/readyz`)).status === 200;
      } catch {
        return false;
      }
    });
  }

  /** POST to the backend API with the key; the status and JSON body. */
  async api(path: string, body: unknown): Promise<{ status: number; body: unknown }> {
    const res = await fetch(`http://${this.addr}${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? (JSON.parse(text) as unknown) : null };
  }

  /** GET from the backend API with the key; the JSON body. */
  async apiGet(path: string): Promise<unknown> {
    const res = await fetch(`http://${this.addr}${path}`, { headers: { authorization: `Bearer ${API_KEY}` } });
    return (await res.json()) as unknown;
  }

  /** SIGTERM: the node drains (closes its connections with 1001) and exits. */
  async term(): Promise<void> {
    await this.#env.signalAndWait(this.#child, "SIGTERM");
  }

  /** SIGKILL: a crash; sockets just drop. */
  async kill(): Promise<void> {
    await this.#env.kill(this.#child);
  }

  /**
   * SIGSTOP: the node stops reading and answering, its sockets stay open. Resolves once every
   * thread is stopped (a thread running on another core stops a moment after the signal).
   */
  async pause(): Promise<void> {
    this.#child.kill("SIGSTOP");
    const tasks = `/proc/${this.#child.pid}/task`;
    await eventually("the gateway to stop", () =>
      readdirSync(tasks).every((tid) => {
        const stat = readFileSync(`${tasks}/${tid}/stat`, "utf8");
        // The state follows the parenthesised command name.
        return /^[Tt]$/.test(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0] ?? "");
      }),
    );
  }

  /** SIGCONT after {@link Gateway.pause}. */
  resume(): void {
    this.#child.kill("SIGCONT");
  }
}

/** Resolves with the first line of the child's `stream` matching `pred`; keeps draining after. */
export function lineMatching(child: ChildProcess, stream: "stdout" | "stderr", pred: (line: string) => boolean): Promise<string> {
  const source = child[stream];
  if (!source) return Promise.reject(new Error(`no ${stream} pipe`));
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: source });
    let found = false;
    lines.on("line", (line) => {
      if (!found && pred(line)) {
        found = true;
        resolve(line);
      }
    });
    child.once("exit", (code, signal) => {
      if (!found) reject(new Error(`${child.spawnfile} exited (${code ?? signal}) before the expected line`));
    });
  });
}

/**
 * One test's processes, files and clients, all cleaned up by the test's `after` hook (the hook
 * runs whether the test passed or failed).
 */
export class Env {
  readonly #children = new Set<ChildProcess>();
  /** How cleanup stops a child when SIGKILL would leave its own children behind. */
  readonly #stopSignals = new Map<ChildProcess, NodeJS.Signals>();
  readonly #clients = new Set<Client>();
  #dir: string | undefined;
  #files = 0;

  /** An Env whose cleanup is registered on `t`. */
  static for(t: TestContext): Env {
    const env = new Env();
    t.after(() => env.cleanup());
    return env;
  }

  /** A Redis server owned by this test. */
  redis(): Promise<RedisServer> {
    return RedisServer.start(this);
  }

  /** A gateway owned by this test. */
  gateway(config: string, options: GatewayOptions = {}): Promise<Gateway> {
    return Gateway.start(this, config, options);
  }

  /** A client closed by cleanup; short backoff so reconnect tests do not idle. */
  client(options: ClientOptions): Client {
    const client = new Client({ backoff: { initialMs: 100, maxMs: 1000 }, ...options });
    this.#clients.add(client);
    return client;
  }

  /** Writes a file into this test's temporary directory; returns its path. */
  file(name: string, text: string): string {
    this.#dir ??= mkdtempSync(join(tmpdir(), "switchyard-js-"));
    const path = join(this.#dir, `${this.#files++}-${name}`);
    writeFileSync(path, text);
    return path;
  }

  /**
   * Spawns a child tracked for cleanup (stdout and stderr piped and drained by readers).
   * Cleanup stops it with `stopSignal` (a master process that takes its workers down, such as
   * nginx on SIGTERM), else with SIGKILL.
   */
  spawn(
    command: string,
    args: string[],
    env: NodeJS.ProcessEnv = process.env,
    stopSignal?: NodeJS.Signals,
  ): ChildProcess {
    const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    this.#children.add(child);
    if (stopSignal) this.#stopSignals.set(child, stopSignal);
    everyChild.add(child);
    // Unread pipes would block the child once full.
    child.stdout?.resume();
    child.stderr?.resume();
    child.once("exit", () => {
      this.#children.delete(child);
      this.#stopSignals.delete(child);
      everyChild.delete(child);
    });
    return child;
  }

  /** Sends `signal` and waits for the child to exit. */
  async signalAndWait(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill(signal);
    await patiently(`${child.spawnfile} to exit on ${signal}`, exited);
  }

  /** SIGKILLs the child (which kills a stopped one too, without letting it run) and waits. */
  async kill(child: ChildProcess): Promise<void> {
    await this.signalAndWait(child, "SIGKILL");
  }

  /** Closes the clients, kills every child, removes the files. */
  async cleanup(): Promise<void> {
    await Promise.allSettled([...this.#clients].map((c) => patiently("a client to close", c.close(), 5000)));
    await Promise.allSettled(
      [...this.#children].map((c) =>
        this.signalAndWait(c, this.#stopSignals.get(c) ?? "SIGKILL").catch(() => this.kill(c)),
      ),
    );
    if (this.#dir) rmSync(this.#dir, { recursive: true, force: true });
  }
}
