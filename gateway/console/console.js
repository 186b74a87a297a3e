// The operations console: polls the admin API (GET /admin/cluster, GET /admin/plugins) every
// POLL_MS, draws what it gets, and calls PUT /admin/plugins/{name}, POST .../rollback,
// DELETE .../bindings and the rollout endpoints (PUT .../rollout, POST .../rollout/promote,
// DELETE .../rollout) for the operator. Everything shown comes from those documented
// endpoints; rates and charts are computed here from the samples each node keeps of its
// counters (`recent`: every 2 s over the last 5 minutes), so a page just opened has history.

const POLL_MS = 2000;
/** What the charts span: the nodes' sample window. */
const WINDOW_MS = 5 * 60 * 1000;
const TOKEN_KEY = "switchyard-admin-token";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== undefined && c !== null));
  return node;
};

/** A refusal from the admin API: HTTP status, the API's code and message. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  timer: undefined,
};

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${state.token}` };
  if (body) headers["content-type"] = "application/wasm";
  const res = await fetch(path, { method, headers, body, cache: "no-store" });
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    json = { message: text };
  }
  if (!res.ok) throw new ApiError(res.status, json.code ?? `http_${res.status}`, json.message ?? res.statusText);
  return json;
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  state.token = $("token").value;
  $("login-error").textContent = "";
  try {
    await api("GET", "/admin/cluster");
  } catch (err) {
    signOut(describe(err));
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("token").value = "";
  start();
});
$("logout").addEventListener("click", () => signOut(""));
$("upload").addEventListener("submit", (e) => {
  e.preventDefault();
  upload().catch((err) => outcome(describe(err), false));
});

function start() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  refresh();
  state.timer = setInterval(refresh, POLL_MS);
}

function signOut(message) {
  clearInterval(state.timer);
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("answering").textContent = "";
  $("login-error").textContent = message;
  // Nothing the previous token could see stays on the page.
  for (const id of ["nodes", "plugins"]) $(id).tBodies[0].replaceChildren();
  for (const id of ["chart-messages", "chart-p99", "chart-errors"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
}

async function refresh() {
  let cluster, plugins;
  try {
    [cluster, plugins] = await Promise.all([api("GET", "/admin/cluster"), api("GET", "/admin/plugins")]);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signOut(describe(err));
    $("cluster-error").textContent = `cannot reach the admin API: ${describe(err)}`;
    return;
  }
  $("cluster-error").textContent = cluster.error ? `cluster status incomplete: ${cluster.error}` : "";
  $("answering").textContent = `answered by ${cluster.node}`;
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  renderNodes(cluster.nodes, plugins.plugins);
  renderPlugins(plugins.plugins);
  renderCharts(cluster.nodes);
}

/** A node's rates between successive samples: [{ at, in, out, errors, p99 }] (per second). */
function rates(node) {
  const r = node.recent ?? [];
  const out = [];
  for (let i = 1; i < r.length; i++) {
    const [a, b] = [r[i - 1], r[i]];
    const secs = (b.at_ms - a.at_ms) / 1000;
    if (secs <= 0) continue;
    const per = (k) => Math.max(0, b[k] - a[k]) / secs;
    out.push({ at: b.at_ms, in: per("published_total"), out: per("delivered_total"), errors: per("plugin_errors_total"), p99: b.plugin_p99_us });
  }
  return out;
}

/** The cluster's series: every node's rates in POLL_MS slots, summed (p99: the slowest node's). */
function series(nodes) {
  const slots = new Map();
  for (const n of nodes) {
    for (const r of rates(n)) {
      const slot = Math.round(r.at / POLL_MS) * POLL_MS;
      const s = slots.get(slot) ?? { at: slot, in: 0, out: 0, errors: 0, p99: 0 };
      s.in += r.in;
      s.out += r.out;
      s.errors += r.errors;
      s.p99 = Math.max(s.p99, r.p99);
      slots.set(slot, s);
    }
  }
  return [...slots.values()].sort((a, b) => a.at - b.at);
}

function renderNodes(nodes, plugins) {
  const serving = new Map(plugins.filter((p) => p.version).map((p) => [p.name, p.version]));
  $("nodes").tBodies[0].replaceChildren(
    ...nodes.map((n) => {
      const rate = rates(n).at(-1);
      const [label, kind] = n.stale ? ["stale", "bad"] : n.draining ? ["draining", "warn"] : n.ready ? ["ready", "ok"] : ["not ready", "bad"];
      const versions = Object.entries(n.plugins).map(([name, v]) => {
        const lag = serving.has(name) && serving.get(name) !== v;
        return el("div", { className: lag ? "lag" : "", title: lag ? `lags: the cluster serves ${serving.get(name)}` : "" }, `${name} `, el("span", { className: "version" }, v));
      });
      const row = el(
        "tr",
        {},
        el("td", {}, n.node),
        el("td", {}, el("span", { className: `pill ${kind}` }, label)),
        el("td", {}, `${n.broker} `, el("span", { className: `pill ${n.broker_connected ? "ok" : "bad"}` }, n.broker_connected ? "connected" : "down")),
        el("td", { className: "num" }, String(n.connections)),
        el("td", { className: "num" }, String(n.channels)),
        el("td", { className: "num" }, rate ? rate.in.toFixed(1) : "…"),
        el("td", { className: "num" }, rate ? rate.out.toFixed(1) : "…"),
        el("td", {}, uptime(n.at_ms - n.started_ms)),
        el("td", {}, ...versions),
      );
      row.dataset.node = n.node;
      return row;
    }),
  );
}

function renderPlugins(plugins) {
  $("plugin-names").replaceChildren(...plugins.map((p) => el("option", { value: p.name })));
  $("plugins").tBodies[0].replaceChildren(
    ...plugins.map((p) => {
      const kind = p.status === "serving" ? "ok" : p.status === "refused" ? "bad" : "warn";
      const nodes = Object.entries(p.nodes ?? {}).map(([node, v]) => {
        const lag = v !== p.version;
        return el("div", { className: lag ? "lag" : "", title: lag ? "this node serves another version" : "" }, `${node} `, el("span", { className: "version" }, v));
      });
      const row = el(
        "tr",
        {},
        el("td", {}, p.name),
        el("td", {}, ...p.bindings.map((b) => el("div", {}, el("code", {}, b)))),
        el("td", {}, el("span", { className: `pill ${kind}` }, p.status)),
        el("td", { className: "version" }, p.version ?? "—", ...trial(p)),
        el("td", { className: "version" }, p.previous ?? "—"),
        el("td", {}, ...(nodes.length ? nodes : ["this node only"])),
        el("td", { className: "num" }, String(p.calls)),
        el("td", { className: "num" }, String(p.errors)),
        el(
          "td",
          { className: "hooks" },
          ...Object.entries(p.hooks ?? {}).map(([hook, f]) =>
            el("div", {}, el("code", {}, hook), ` ${f.calls} · ${f.errors} · ${f.p50_us}/${f.p99_us}`),
          ),
        ),
        el("td", { className: "error" }, p.last_error ?? ""),
        el(
          "td",
          {},
          button("Roll back", `Roll ${p.name} back to ${p.previous} on every node?`, () => act("POST", `/admin/plugins/${p.name}/rollback`, `${p.name} rolled back`), !p.previous),
          button("Unbind", `Unbind ${p.name}? Its channels go without it until it is bound again.`, () => act("DELETE", `/admin/plugins/${p.name}/bindings`, `${p.name} unbound`), p.status === "unbound"),
          ...(p.rollout
            ? [
                button("Promote", `Make ${p.rollout.version} the live version of ${p.name} for everyone, on every node?`, () => act("POST", `/admin/plugins/${p.name}/rollout/promote`, `${p.name} promoted`)),
                button("Abort", `Drop the ${p.rollout.plan.stage} ${p.rollout.version} of ${p.name} on every node?`, () => act("DELETE", `/admin/plugins/${p.name}/rollout`, `${p.name}: ${p.rollout.plan.stage} aborted`)),
              ]
            : []),
        ),
      );
      row.dataset.plugin = p.name;
      return row;
    }),
  );
}

/** A plugin's trial under its version: the candidate, its share, the shadow's agreement or the
 * canary's window; and how the last one ended. */
function trial(p) {
  const out = [];
  const r = p.rollout;
  if (r) {
    const plan = r.plan;
    const who = plan.stage === "shadow"
      ? `${plan.percent ?? 100} % of calls`
      : [plan.tenants && `tenants ${plan.tenants}`, plan.percent && `${plan.percent} % by ${plan.by}`].filter(Boolean).join(", ");
    const shadow = Object.values(r.shadow ?? {});
    const calls = shadow.reduce((n, f) => n + f.calls, 0);
    const agreed = shadow.reduce((n, f) => n + f.agreed, 0);
    const shed = shadow.reduce((n, f) => n + f.shed, 0);
    const figures = plan.stage === "shadow"
      ? `agrees ${calls ? ((100 * agreed) / calls).toFixed(1) : "100"} % of ${calls}${shed ? `, ${shed} shed` : ""}`
      : `errors ${(100 * r.candidate_window.error_rate).toFixed(1)} % (live ${(100 * r.live_window.error_rate).toFixed(1)} %) over ${r.candidate_window.calls} calls`;
    const last = (r.disagreements ?? []).at(-1);
    out.push(
      el("div", { className: `trial ${plan.stage}` },
        el("span", { className: "pill warn" }, plan.stage), ` ${r.version} · ${who} · ${figures}`,
        ...(last ? [el("div", { className: "muted" }, `last disagreement: ${last.hook} ${last.channel}: live ${last.live}, shadow ${last.shadow}`)] : []),
      ),
    );
  }
  const ended = p.last_rollout;
  if (ended && !r) {
    const kind = ended.outcome === "promoted" ? "ok" : ended.outcome === "rolled_back" ? "bad" : "warn";
    out.push(el("div", { className: "trial ended" }, el("span", { className: `pill ${kind}` }, ended.outcome.replace("_", " ")), ` ${ended.stage} ${ended.version}: ${ended.reason}`));
  }
  return out;
}

function button(text, question, action, disabled) {
  const b = el("button", { type: "button", textContent: text, disabled: Boolean(disabled) });
  b.addEventListener("click", () => {
    if (confirm(question)) action().catch((err) => outcome(describe(err), false));
  });
  return b;
}

async function act(method, path, done) {
  const reply = await api(method, path);
  outcome(`${done}${reply.version ? `: now ${reply.version}` : ""}${reply.cluster === false ? " (this node only)" : ""}`, true);
  await refresh();
}

async function upload() {
  const name = $("upload-name").value.trim();
  const file = $("upload-file").files[0];
  if (!name || !file) return;
  const stage = $("upload-stage").value;
  if (stage) {
    if (!confirm(`Run ${file.name} (${file.size} bytes) as a ${stage} of ${name} on every node?`)) return;
    const plan = new URLSearchParams($("upload-plan").value.trim());
    plan.set("stage", stage);
    const reply = await api("PUT", `/admin/plugins/${encodeURIComponent(name)}/rollout?${plan}`, await file.arrayBuffer());
    outcome(`${name}: ${reply.version} runs as a ${stage}${reply.cluster ? " on every node" : " (this node only)"}`, true);
    $("upload-file").value = "";
    await refresh();
    return;
  }
  if (!confirm(`Upload ${file.name} (${file.size} bytes) as the new version of ${name} on every node?`)) return;
  const reply = await api("PUT", `/admin/plugins/${encodeURIComponent(name)}`, await file.arrayBuffer());
  outcome(
    reply.changed
      ? `${name}: now ${reply.version}${reply.cluster ? " on every node" : " (this node only)"}`
      : `${name}: ${reply.version} was already serving`,
    true,
  );
  $("upload-file").value = "";
  await refresh();
}

function outcome(text, ok) {
  const p = $("outcome");
  p.textContent = text;
  p.className = ok ? "ok" : "bad";
}

function renderCharts(nodes) {
  const s = series(nodes);
  const line = (k) => s.map((p) => [p.at, p[k]]);
  chart($("chart-messages"), [["in", "#2563eb", line("in")], ["out", "#16a34a", line("out")]]);
  chart($("chart-p99"), [["p99 µs", "#9333ea", line("p99")]]);
  chart($("chart-errors"), [["errors/s", "#dc2626", line("errors")]]);
}

/** A line chart of `lines` ([label, colour, [[ms, value]...]]) over the last WINDOW_MS. */
function chart(canvas, lines) {
  const g = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  const pad = { l: 44, r: 8, t: 18, b: 14 };
  const end = Date.now();
  const x = (t) => pad.l + ((w - pad.l - pad.r) * (t - (end - WINDOW_MS))) / WINDOW_MS;
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...lines.flatMap(([, , points]) => points.map(([, v]) => v)));
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / max);
  g.strokeStyle = "#d1d5db";
  g.fillStyle = "#4b5563";
  g.font = "11px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    g.beginPath();
    g.moveTo(pad.l, y(max * f));
    g.lineTo(w - pad.r, y(max * f));
    g.stroke();
    g.fillText(short(max * f), 4, y(max * f) + 4);
  }
  g.fillText("−5 min", pad.l, h - 2);
  g.fillText("now", w - pad.r - 20, h - 2);
  let x0 = pad.l;
  for (const [label, colour, points] of lines) {
    g.strokeStyle = colour;
    g.lineWidth = 2;
    g.beginPath();
    points.forEach(([t, v], i) => (i === 0 ? g.moveTo(x(t), y(v)) : g.lineTo(x(t), y(v))));
    g.stroke();
    g.lineWidth = 1;
    g.fillStyle = colour;
    const text = `${label} ${short(points.at(-1)?.[1] ?? 0)}`;
    g.fillText(text, x0, 12);
    x0 += g.measureText(text).width + 14;
  }
}

function short(v) {
  return v >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : v >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

function uptime(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

function describe(err) {
  return err instanceof ApiError ? `${err.code}: ${err.message}` : String(err?.message ?? err);
}

if (state.token) start();
