// The chat page: one Client (clients/js, served under /client/), rooms as subscriptions.
// What the page shows comes from the client's events only: connection state, messages (live,
// from history, recovered after a reconnect), join/leave events, and typed errors.
import { Client, SwitchyardError } from "/client/index.js";

/** Rooms every user starts in: one with history and join/leave events, one redacted. */
const DEFAULT_ROOMS = ["chat:lobby", "support:help"];
/** Messages kept per room; older ones fall off the top. */
const KEEP = 500;
/** Messages loaded from history when a room is opened. */
const BACKLOG = 50;

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

/** The page's whole state. */
const chat = {
  /** @type {Client | undefined} */
  client: undefined,
  user: "",
  tenant: "",
  /** room channel -> { sub, messages: [{offset?, data, recovered}], offsets: Set, members: Map<user, count>, notices: [] } */
  rooms: new Map(),
  current: "",
  stats: { received: 0, recovered: 0, reconnects: 0, gaps: 0 },
  connectedOnce: false,
};

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  start($("user").value.trim(), $("tenant").value.trim()).catch(showError);
});
$("join-room").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("room-name").value.trim();
  if (!name) return;
  joinRoom(name);
  selectRoom(name);
  $("room-name").value = "";
});
$("compose").addEventListener("submit", (e) => {
  e.preventDefault();
  send().catch(showError);
});
$("offline").addEventListener("click", () => toggleOffline().catch(showError));

async function start(user, tenant) {
  const config = await (await fetch("/config.json")).json();
  chat.user = user;
  chat.tenant = tenant;
  const client = new Client({
    url: config.gateways,
    // Called for the first connection, every reconnect and every refresh, so a page open for
    // hours never presents an expired token.
    token: async () => {
      const query = new URLSearchParams({ user, tenant });
      const res = await fetch(`/token?${query}`);
      const body = await res.json();
      if (!res.ok) throw new Error(body.error ?? `token: HTTP ${res.status}`);
      return body.token;
    },
    backoff: { initialMs: 250, maxMs: 5000 },
  });
  chat.client = client;
  client.on("state", renderState);
  client.on("connected", () => {
    if (chat.connectedOnce) chat.stats.reconnects += 1;
    chat.connectedOnce = true;
    renderState();
  });
  client.on("disconnected", (e) => {
    renderState(e);
    if (e.error && !e.willReconnect) showError(e.error);
  });
  client.on("error", showError);

  $("login").hidden = true;
  $("chat").hidden = false;
  $("offline").hidden = false;
  document.title = `${user} — Switchyard chat`;

  // Mentions: chat-router forwards a message naming @user to user:<user>, which user-channels
  // lets only that user subscribe to.
  client.subscribe(`user:${user}`, {
    onMessage: ({ data }) => {
      const m = asChat(data);
      $("mentions").prepend(el("li", { className: "mention" }, el("span", { className: "who" }, m.user), m.text));
    },
    onError: ({ error }) => showError(error),
  });
  for (const room of DEFAULT_ROOMS) joinRoom(room);
  selectRoom(DEFAULT_ROOMS[0]);
  await client.connect();
}

/** Subscribes to `channel` (once) and loads its recent history. */
function joinRoom(channel) {
  if (chat.rooms.has(channel)) return;
  const room = { sub: undefined, messages: [], offsets: new Set(), members: new Map(), notices: [] };
  chat.rooms.set(channel, room);
  room.sub = chat.client.subscribe(channel, {
    onMessage: (m) => {
      chat.stats.received += 1;
      if (m.recovered) chat.stats.recovered += 1;
      addMessage(channel, m);
    },
    onSubscribed: ({ resubscribed }) => {
      if (!resubscribed) loadBacklog(channel).catch(showError);
      loadMembers(channel).catch(() => {});
    },
    onRecovered: ({ count }) => {
      if (count > 0) notice(channel, `Reconnected: recovered ${count} message${count === 1 ? "" : "s"} missed while away`);
    },
    onGap: ({ reason }) => {
      chat.stats.gaps += 1;
      notice(channel, `Some messages could not be recovered (${reason.replace("_", " ")}); showing what history holds`);
      loadBacklog(channel).catch(showError);
    },
    onJoin: ({ user }) => presence(channel, user, +1),
    onLeave: ({ user }) => presence(channel, user, -1),
    onError: ({ error, willRetry }) => {
      if (!willRetry) notice(channel, `Cannot join: ${describe(error)}`);
    },
  });
  renderRooms();
}

/** The last messages of a room with history; rooms without history just start empty. */
async function loadBacklog(channel) {
  const result = await chat.client.history(channel, { limit: BACKLOG });
  for (const { offset, data } of result.messages) addMessage(channel, { offset, data, recovered: false }, false);
  if (channel === chat.current) renderMessages();
}

/** Who is in the room now, from the page server (which asks the gateway's presence API). */
async function loadMembers(channel) {
  const res = await fetch(`/members?${new URLSearchParams({ channel })}`);
  if (!res.ok) return;
  const { users } = await res.json();
  const room = chat.rooms.get(channel);
  room.members = new Map(users.map(({ user, connections }) => [user, connections]));
  if (channel === chat.current) renderMembers();
}

function presence(channel, user, delta) {
  const room = chat.rooms.get(channel);
  const who = user ?? "anonymous";
  const n = (room.members.get(who) ?? 0) + delta;
  if (n > 0) room.members.set(who, n);
  else room.members.delete(who);
  if (channel === chat.current) renderMembers();
  notice(channel, `${who} ${delta > 0 ? "joined" : "left"}`, "event");
}

function addMessage(channel, { offset, data, recovered }, render = true) {
  const room = chat.rooms.get(channel);
  if (offset !== undefined) {
    if (room.offsets.has(offset)) return;
    room.offsets.add(offset);
  }
  const item = { offset, data, recovered };
  // History arrives after live messages may have: a numbered message goes before the first
  // one numbered after it; everything else (live without history, notices) in arrival order.
  const at = offset === undefined ? -1 : room.messages.findIndex((m) => m.offset !== undefined && m.offset > offset);
  if (at < 0) room.messages.push(item);
  else room.messages.splice(at, 0, item);
  if (room.messages.length > KEEP) room.messages.splice(0, room.messages.length - KEEP);
  if (render && channel === chat.current) renderMessages();
  renderStats();
}

function notice(channel, text, kind = "notice") {
  const room = chat.rooms.get(channel);
  room.messages.push({ notice: text, kind });
  if (channel === chat.current) renderMessages();
  renderStats();
}

async function send() {
  const input = $("text");
  const text = input.value.trim();
  if (!text || !chat.current) return;
  $("send").disabled = true;
  try {
    // `user` is whatever the page says: a demo. A real app would have a plugin stamp the
    // sender from the connection's identity.
    await chat.client.publish(chat.current, { user: chat.user, text });
    input.value = "";
    $("error").textContent = "";
  } finally {
    $("send").disabled = false;
    input.focus();
  }
}

/** Closes the connection (subscriptions kept) or opens it again, recovering what was missed. */
async function toggleOffline() {
  const button = $("offline");
  if (chat.client.state === "closed") {
    button.textContent = "Go offline";
    await chat.client.connect();
  } else {
    button.textContent = "Go online";
    await chat.client.close();
  }
}

function selectRoom(channel) {
  chat.current = channel;
  $("room-title").textContent = channel;
  $("text").placeholder = channel.startsWith("support:")
    ? "Support room: e-mail addresses and card numbers are redacted by the redact plugin"
    : "Say something; @name sends it to that user's mentions too";
  renderRooms();
  renderMessages();
  renderMembers();
  // Rooms without join/leave events (support:*) are only as current as their last snapshot.
  loadMembers(channel).catch(() => {});
}

function renderRooms() {
  $("rooms").replaceChildren(
    ...[...chat.rooms.keys()].map((channel) => {
      const li = el("li", { textContent: channel });
      li.dataset.channel = channel;
      li.setAttribute("aria-current", String(channel === chat.current));
      li.addEventListener("click", () => selectRoom(channel));
      return li;
    }),
  );
}

function renderMessages() {
  const room = chat.rooms.get(chat.current);
  const list = $("messages");
  list.replaceChildren(
    ...(room?.messages ?? []).map((m) => {
      if (m.notice) return el("li", { className: m.kind, textContent: m.notice });
      const c = asChat(m.data);
      const li = el("li", {}, el("span", { className: "who" }, c.user), c.text);
      if (c.ts) li.append(el("span", { className: "ts" }, new Date(c.ts).toLocaleTimeString()));
      if (m.recovered) {
        li.classList.add("recovered");
        li.append(el("span", { className: "tag" }, "recovered"));
      }
      return li;
    }),
  );
  list.scrollTop = list.scrollHeight;
}

function renderMembers() {
  const room = chat.rooms.get(chat.current);
  $("members").replaceChildren(
    ...[...(room?.members ?? new Map()).entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([user, n]) => el("li", { textContent: n > 1 ? `${user} (${n})` : user })),
  );
}

function renderState(e) {
  const client = chat.client;
  const state = client?.state ?? "closed";
  const pill = $("state");
  pill.dataset.state = state;
  pill.textContent =
    state === "connected" ? `connected as ${chat.user}${chat.tenant ? ` (${chat.tenant})` : ""}`
    : state === "disconnected" && e?.code !== undefined
      ? `disconnected (${e.code}${e.reason ? ` ${e.reason}` : ""})${e.willReconnect ? `, retrying in ${Math.round(e.delayMs ?? 0)} ms` : ""}`
      : state;
  renderStats();
}

function renderStats() {
  const s = chat.stats;
  $("stats").textContent =
    `received ${s.received} · reconnects ${s.reconnects} · recovered ${s.recovered}` + (s.gaps ? ` · gaps ${s.gaps}` : "");
}

/** A chat message's fields, whatever the data was (the page shows anything it receives). */
function asChat(data) {
  if (data && typeof data === "object" && typeof data.text === "string") {
    return { user: String(data.user ?? "?"), text: data.text, ts: typeof data.ts === "number" ? data.ts : undefined };
  }
  return { user: "?", text: JSON.stringify(data), ts: undefined };
}

function describe(error) {
  return error instanceof SwitchyardError ? `${error.code}: ${error.message}` : String(error?.message ?? error);
}

function showError(error) {
  $("error").textContent = describe(error);
}
