"""Real processes for the tests: redis-server and switchyard gateway nodes on loopback.

Every process is started in its own session (process group) and registered with a
:class:`Processes` registry, which the fixtures empty in teardown, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import jwt

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("SWITCHYARD_BIN") or REPO / "target" / "debug" / "switchyard")
PLUGINS = REPO / "target" / "plugins"
SECRET = "test-secret-0123456789"
API_KEY = "control-key-0123456789"
# Bounds waiting for something that should happen; only guards against a hung test.
PATIENCE = 20.0


def free_port() -> int:
    """A loopback port free now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(user: str, tenant: str | None = None, ttl: float = 3600, **claims: Any) -> str:
    """An HS256 token the test gateways accept, expiring ``ttl`` seconds from now."""
    body: dict[str, Any] = {"sub": user, "aud": "switchyard", "exp": int(time.time() + ttl)}
    if tenant is not None:
        body["tenant"] = tenant
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


def wait_until(what: str, check: Callable[[], bool], patience: float = PATIENCE) -> None:
    """Polls ``check`` until it holds; fails after ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class _Lines:
    """Reads a child's output on a thread, so the child never blocks on a full pipe."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.kept: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.kept.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, match: Callable[[str], bool], what: str) -> str:
        """The first line (from those not yet taken) for which ``match`` holds."""
        deadline = time.monotonic() + PATIENCE
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                tail = "\n".join(self.kept[-20:])
                raise AssertionError(f"process exited before {what}:\n{tail}")
            if match(line):
                return line


class Processes:
    """Every child a test started; :meth:`kill_all` ends them and their children."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Starts ``args`` in a new process group, registered for teardown."""
        env = dict(os.environ)
        env.pop("SWITCHYARD_CONFIG", None)
        child = subprocess.Popen(args, start_new_session=True, env=env, **kw)
        self.children.append(child)
        return child

    def kill_all(self) -> None:
        """SIGKILLs every registered process group still running and reaps it."""
        gone = (ProcessLookupError, PermissionError)
        for child in self.children:
            with contextlib.suppress(*gone):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=PATIENCE)
        self.children.clear()


class Redis:
    """A private redis-server without persistence on a free loopback port."""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.port = free_port()
        self.child: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """The gateway's ``broker.redis_url``."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts (or starts again, on the same port) and waits until it answers PING."""
        self.child = self.procs.spawn(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--protected-mode", "no",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.child.stdout is not None
        out = _Lines(self.child.stdout, f"redis-{self.port}")
        out.wait_for(lambda line: "Ready to accept connections" in line, "redis to start")
        wait_until("redis to answer PING", self.ping)

    def ping(self) -> bool:
        """Whether the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Crashes the server (SIGKILL) and waits until it is gone."""
        assert self.child is not None
        self.child.kill()
        self.child.wait(timeout=PATIENCE)


def gateway_config(
    *,
    node_id: str,
    redis_url: str | None = None,
    auth: str = "",
    limits: str = "",
    extra: str = "",
) -> str:
    """A node's TOML: HS256 auth, the API key, history on ``chat:*``, join/leave on
    ``chat:*`` and ``room:*``, tenant-guard on ``tenant:*``, a publish hook that traps on
    ``hostile:*``; ``auth``/``limits`` add lines to those sections."""
    broker = f'[broker]\nredis_url = "{redis_url}"\nprefix = "sy:"\n' if redis_url else ""
    return f"""{broker}
[server]
node_id = "{node_id}"
shutdown_grace_secs = 5

[auth]
hs256_secret = "{SECRET}"
audience = "switchyard"
{auth}

[api]
keys = ["{API_KEY}"]

[limits]
{limits}

[plugins]
dir = "{PLUGINS}"

[[plugins.bindings]]
pattern = "tenant:*"
plugin = "tenant-guard"

[[plugins.bindings]]
pattern = "hostile:*"
plugin = "hostile"
config = {{ mode = "trap", hooks = ["publish"] }}

[[namespaces]]
pattern = "chat:*"
history_size = 1000
history_ttl_secs = 3600
join_leave = true

[[namespaces]]
pattern = "room:*"
join_leave = true
{extra}"""


class Gateway:
    """A switchyard node: started from a config file, SIGTERMed, SIGKILLed or paused."""

    def __init__(self, procs: Processes, directory: Path, config: str, name: str) -> None:
        self.procs = procs
        self.name = name
        self.config_path = directory / f"{name}.toml"
        self.config_path.write_text(config)
        self.child: subprocess.Popen[bytes] | None = None
        self.addr = ""
        self.log: _Lines | None = None

    @property
    def url(self) -> str:
        """The WebSocket URL."""
        return f"ws://{self.addr}/ws"

    def start(self, *, ready: bool = True) -> Gateway:
        """Starts the node, reads its listening address, and waits for /readyz when asked."""
        if not BIN.exists():
            raise AssertionError(f"gateway binary {BIN} is missing (build it or set SWITCHYARD_BIN)")
        self.child = self.procs.spawn(
            [str(BIN), "--listen", "127.0.0.1:0", "--log-format", "json",
             "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.child.stderr is not None
        self.log = _Lines(self.child.stderr, f"gateway-{self.name}")
        line = self.log.wait_for(_is_listening, f"gateway {self.name} to listen")
        self.addr = json.loads(line)["addr"]
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Waits until /readyz answers 200 (the broker is connected)."""
        wait_until(f"gateway {self.name} to be ready", lambda: self.readyz() == 200)

    def readyz(self) -> int:
        """The status of GET /readyz (0 when the node does not answer)."""
        try:
            return self.http("GET", "/readyz")[0]
        except OSError:
            return 0

    def http(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        """An HTTP request to the node; the status and the JSON body (or its text)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.addr}{path}", data=data, method=method)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=PATIENCE) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def api(self, path: str, body: Any) -> Any:
        """POST to the backend API with the key; the JSON reply (asserting 200)."""
        status, reply = self.http("POST", path, body, key=API_KEY)
        assert status == 200, (path, status, reply)
        return reply

    def presence_count(self, user: str) -> int:
        """How many connections presence lists for ``user``."""
        status, reply = self.http("GET", f"/api/presence/users/{user}", key=API_KEY)
        return len(reply.get("connections", [])) if status == 200 else 0

    def terminate(self) -> None:
        """Graceful shutdown (SIGTERM): clients get 1001; waits for the process to exit."""
        assert self.child is not None
        self.child.terminate()
        self.child.wait(timeout=PATIENCE)

    def kill(self) -> None:
        """A crash (SIGKILL): sockets just drop."""
        assert self.child is not None
        os.killpg(self.child.pid, signal.SIGKILL)
        self.child.wait(timeout=PATIENCE)

    def pause(self) -> None:
        """Freezes the process (SIGSTOP): it keeps its sockets but answers nothing."""
        assert self.child is not None
        os.killpg(self.child.pid, signal.SIGSTOP)
        # The signal is delivered asynchronously: wait until every thread has stopped.
        pid = self.child.pid
        wait_until(f"gateway {self.name} to stop", lambda: _all_threads_stopped(pid))

    def resume(self) -> None:
        """Unfreezes the process (SIGCONT)."""
        assert self.child is not None
        os.killpg(self.child.pid, signal.SIGCONT)


def _all_threads_stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        # The state follows the command name, which is in parentheses.
        if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            return False
    return True


def _is_listening(line: str) -> bool:
    try:
        return json.loads(line).get("message") == "switchyard listening"
    except ValueError:
        return False


# ---- async helpers for the tests ----


async def next_of(items: AsyncIterator[Any], *kinds: type) -> Any:
    """The next item of ``items`` that is one of ``kinds`` (any item when none is given)."""

    async def find() -> Any:
        async for item in items:
            if not kinds or isinstance(item, kinds):
                return item
        raise AssertionError(f"the stream ended before a {kinds}")

    return await asyncio.wait_for(find(), PATIENCE)


async def take(items: AsyncIterator[Any], n: int, *kinds: type) -> list[Any]:
    """The next ``n`` items of ``items`` that are one of ``kinds``."""
    return [await next_of(items, *kinds) for _ in range(n)]


async def eventually(what: str, check: Callable[[], bool]) -> None:
    """Lets the event loop run until ``check`` holds; fails after ``PATIENCE`` seconds."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
