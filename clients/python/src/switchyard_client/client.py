"""The Switchyard client: one WebSocket connection, kept open across failures."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Union

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidStatus

from ._queue import SendQueue
from .backoff import Backoff, may_reconnect
from .errors import AuthError, ClientError, ConnectionClosed, RequestTimeout, SwitchyardError
from .events import (
    ClientEvent,
    Connected,
    Connecting,
    Disconnected,
    Expiring,
    History,
    HistoryMessage,
    Position,
    Published,
    RefreshFailed,
    Refreshed,
    ServerSubscribed,
    State,
    UnmatchedError,
    Unsubscribed,
    _position,
)
from .subscription import Handler, Subscription

__all__ = ["Client", "EventStream", "TokenSource", "UrlSource"]

log = logging.getLogger("switchyard_client")

TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]], None]
"""A token, or a (sync or async) callable returning one: called before every connection
attempt and on every ``expiring`` warning."""

UrlSource = Union[str, Sequence[str], Callable[[], Union[str, Awaitable[str]]]]
"""A URL, a list tried in turn (the next one after each failure or drain), or a callable
called before every attempt."""

EventHandler = Callable[[ClientEvent], object]

# Reply types of each request type; anything else with the request's id is a protocol error.
_REPLY = {
    "subscribe": "subscribed",
    "unsubscribe": "unsubscribed",
    "publish": "published",
    "history": "history",
    "refresh": "refreshed",
}


async def _resolve(value: Any) -> Any:
    result = value() if callable(value) else value
    if inspect.isawaitable(result):
        result = await result
    return result


class _Request:
    """A request on its way: queued, then written and waiting for its reply."""

    __slots__ = (
        "abandoned", "frame", "id", "kind", "on_cut", "on_error", "on_reply", "sem", "sent", "text",
    )

    def __init__(
        self,
        rid: int,
        frame: dict[str, Any],
        on_reply: Callable[[dict[str, Any]], None],
        on_error: Callable[[SwitchyardError], None],
        on_cut: Callable[[ConnectionClosed], None],
    ) -> None:
        self.id = rid
        self.kind: str = frame["type"]
        self.frame = frame
        # Serialised now, so a value JSON cannot encode fails the caller, not the writer.
        self.text = json.dumps({**frame, "id": rid}, separators=(",", ":"), allow_nan=False)
        self.on_reply = on_reply
        self.on_error = on_error
        self.on_cut = on_cut
        self.abandoned = False
        self.sent = False
        self.sem: asyncio.Semaphore | None = None


class EventStream:
    """Connection events as an async iterator; ends when the client is closed for good."""

    def __init__(self, client: Client) -> None:
        """Registers with ``client``; events before this call are not seen."""
        self._client = client
        self._queue: asyncio.Queue[ClientEvent | None] = asyncio.Queue()
        client.add_listener(self._queue.put_nowait)

    def __aiter__(self) -> EventStream:
        """The stream is its own iterator."""
        return self

    async def __anext__(self) -> ClientEvent:
        """The next event."""
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return event

    def _end(self) -> None:
        self._queue.put_nowait(None)

    def close(self) -> None:
        """Stops receiving events."""
        self._client.remove_listener(self._queue.put_nowait)
        self._end()


class Client:
    """A Switchyard connection that reconnects, resubscribes and recovers by itself.

    ``url`` is a URL (``ws://host:port/ws``), a list of URLs tried in turn, or a callable
    (sync or async) returning the URL for each attempt. ``token`` is a JWT or a callable
    returning one, called for every attempt and every refresh. Requests wait up to
    ``request_timeout`` seconds for their reply, including time spent waiting for a
    connection or for room in the send queue (``send_queue_size`` requests); at most
    ``max_in_flight`` written requests await replies at once.
    """

    def __init__(
        self,
        url: UrlSource,
        *,
        token: TokenSource = None,
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        send_queue_size: int = 256,
        max_in_flight: int = 256,
        auto_refresh: bool = True,
        on_event: EventHandler | None = None,
        ping_interval: float | None = 20.0,
        max_frame_size: int | None = None,
    ) -> None:
        """Configures the client; nothing connects before :meth:`connect`."""
        if isinstance(url, str):
            self._urls: Sequence[str] | None = [url]
            self._url_factory: Callable[[], str | Awaitable[str]] | None = None
        elif callable(url):
            self._urls, self._url_factory = None, url
        else:
            self._urls, self._url_factory = list(url), None
            if not self._urls:
                raise ValueError("at least one URL is required")
        self._token = token
        self._backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._max_in_flight = max_in_flight
        self._auto_refresh = auto_refresh
        self._ping_interval = ping_interval
        self._max_frame_size = max_frame_size
        self._listeners: list[EventHandler] = [on_event] if on_event else []
        self._streams: list[EventStream] = []
        self._queue: SendQueue[_Request] = SendQueue(send_queue_size)
        self._pending: dict[int, _Request] = {}
        self._subs: dict[str, Subscription] = {}
        self._next_id = 0
        self._url_index = 0
        self._state = State.IDLE
        self._ws: ClientConnection | None = None
        self._sem: asyncio.Semaphore | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._connect_waiters: list[asyncio.Future[None]] = []
        self._final: BaseException | None = None
        self._done: asyncio.Future[BaseException | None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.url: str | None = None
        """The URL of the current (or last) connection."""
        self.expires_at: int | None = None
        """The connection's deadline (Unix seconds) as last announced by the gateway."""

    # ---- lifecycle ----

    @property
    def state(self) -> State:
        """Where the connection is now."""
        return self._state

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """The subscriptions held, by channel (a copy)."""
        return dict(self._subs)

    @property
    def queued(self) -> int:
        """Requests waiting in the send queue (not yet written)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests written to the socket and still awaiting their replies."""
        return len(self._pending)

    @property
    def waiting_for_queue(self) -> int:
        """Callers waiting for room in the full send queue."""
        return self._queue.waiting_producers

    async def __aenter__(self) -> Client:
        """Connects (see :meth:`connect`)."""
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Closes."""
        await self.close()

    async def connect(self, timeout: float | None = None) -> None:
        """Starts the connection loop and waits for the first connection.

        Retries with backoff until connected; raises :class:`AuthError` when the upgrade is
        refused with 401/403, :class:`ConnectionClosed` if closed meanwhile, and
        :class:`RequestTimeout` after ``timeout`` seconds (the loop keeps trying).
        """
        if self._final is not None:
            raise self._final
        if self._state is State.CONNECTED:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._connect_waiters.append(waiter)
        if self._run_task is None:
            self._wake = asyncio.Event()
            self._done = loop.create_future()
            self._run_task = asyncio.create_task(self._run(), name="switchyard-client")
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"not connected within {timeout} s") from None
        finally:
            if waiter in self._connect_waiters:
                self._connect_waiters.remove(waiter)

    async def close(self) -> None:
        """Closes the connection for good: pending requests raise, subscriptions end."""
        if self._run_task is None:
            self._finish(ConnectionClosed(1000, "client closed", final=True), 1000, "client closed")
            return
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closed")
        else:
            # Connecting or waiting to retry: nothing to close politely.
            self._run_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._run_task
        for task in list(self._background):
            task.cancel()

    async def wait_closed(self) -> BaseException | None:
        """Waits until the client stops for good; returns why (None after :meth:`close`)."""
        if self._done is None:
            return self._final
        return await asyncio.shield(self._done)

    # ---- events ----

    def add_listener(self, listener: EventHandler) -> None:
        """Calls ``listener(event)`` for every connection event (from the event loop)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EventHandler) -> None:
        """Stops calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def events(self) -> EventStream:
        """A new stream of the connection events from now on."""
        stream = EventStream(self)
        if self._state is State.CLOSED:
            stream._end()
        else:
            self._streams.append(stream)
        return stream

    def _emit(self, event: ClientEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %r", event)

    # ---- requests ----

    async def publish(self, channel: str, data: Any = None) -> Published:
        """Publishes ``data`` (any JSON value); returns once the broker accepted it.

        Raises :class:`SwitchyardError` (``.code``: ``forbidden``, ``rate_limited``,
        ``message_too_large``, ``unavailable``...), :class:`RequestTimeout`, or
        :class:`ConnectionClosed` when the connection ended after the request was written
        (it may have been published).
        """
        reply = await self._call({"type": "publish", "channel": channel, "data": data})
        return Published(channel, _position(reply))

    async def history(
        self, channel: str, limit: int | None = None, since: Position | None = None
    ) -> History:
        """Reads stored messages: the newest ``limit``, or the first ``limit`` after ``since``."""
        frame: dict[str, Any] = {"type": "history", "channel": channel}
        if limit is not None:
            frame["limit"] = limit
        if since is not None:
            frame["since"] = since.to_json()
        reply = await self._call(frame)
        messages = [
            HistoryMessage(m["offset"], m.get("data"))
            for m in reply.get("messages") or []
            if isinstance(m, dict)
        ]
        recovered = reply.get("recovered")
        return History(
            channel=channel,
            position=_position(reply),
            first=reply.get("first"),
            messages=messages,
            limit=reply.get("limit"),
            clamped=bool(reply.get("clamped", False)),
            recovered=recovered if isinstance(recovered, bool) else None,
        )

    async def refresh(self, token: str | None = None) -> int:
        """Sends a newer token over the connection (default: from the token callback).

        Returns the new deadline (Unix seconds); raises :class:`SwitchyardError`
        ``unauthorized`` when refused (the old deadline stands).
        """
        if token is None:
            token = await _resolve(self._token)
        if not isinstance(token, str):
            raise ClientError("no token to refresh with")
        reply = await self._call({"type": "refresh", "token": token})
        expires_at = int(reply["expires_at"])
        self.expires_at = expires_at
        return expires_at

    async def subscribe(
        self,
        channel: str,
        handler: Handler | None = None,
        *,
        since: Position | None = None,
    ) -> Subscription:
        """Subscribes and waits for the gateway's confirmation.

        With ``since`` (a position saved earlier) the gateway first sends what was published
        after it. ``handler``, if given, is called (and awaited if async) with every item in
        order instead of the subscription being iterated. Raises :class:`SwitchyardError`
        (``invalid_channel``, ``forbidden``, ``too_many_subscriptions``...) or
        :class:`RequestTimeout`; a subscribe cut by a reconnect is sent again.
        """
        self._check_open()
        if channel in self._subs:
            raise ClientError(f"already subscribed to {channel!r}")
        sub = Subscription(self, channel, since, handler)
        self._subs[channel] = sub
        request = self._subscribe_request(sub)

        async def confirmed() -> None:
            await self._queue.put(request)
            await asyncio.shield(sub._first)

        try:
            await asyncio.wait_for(confirmed(), self.request_timeout)
        except asyncio.TimeoutError:
            self._drop(sub, RequestTimeout(f"subscribe {channel!r}: no reply"))
            raise RequestTimeout(
                f"subscribe {channel!r}: no reply within {self.request_timeout} s"
            ) from None
        except SwitchyardError:
            self._subs.pop(channel, None)
            raise
        except BaseException as e:
            if not sub._first.done():
                self._drop(sub, e if isinstance(e, ClientError) else _closed(e))
            raise
        return sub

    # ---- internals: requests ----

    def _check_open(self) -> None:
        if self._final is not None:
            raise self._final
        if self._run_task is None:
            raise ClientError("not connected: call connect() first")

    def _new_request(
        self,
        frame: dict[str, Any],
        on_reply: Callable[[dict[str, Any]], None],
        on_error: Callable[[SwitchyardError], None],
        on_cut: Callable[[ConnectionClosed], None],
    ) -> _Request:
        self._next_id += 1
        return _Request(self._next_id, frame, on_reply, on_error, on_cut)

    async def _call(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Queues a request and waits for its reply within the request timeout."""
        self._check_open()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def settle(outcome: Any) -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        request = self._new_request(frame, settle, settle, settle)

        async def answered() -> dict[str, Any]:
            await self._queue.put(request)
            return await future

        try:
            return await asyncio.wait_for(answered(), self.request_timeout)
        except asyncio.TimeoutError:
            request.abandoned = True
            self._queue.remove(request)
            raise RequestTimeout(
                f"{frame['type']}: no reply within {self.request_timeout} s"
            ) from None
        except BaseException:
            # Cancelled or failed: an unsent request is not sent; a sent one's reply is dropped.
            request.abandoned = True
            self._queue.remove(request)
            raise

    def _subscribe_request(self, sub: Subscription) -> _Request:
        """``sub``'s subscribe, with the position to recover from when it has one."""
        since = sub.position

        def on_reply(frame: dict[str, Any]) -> None:
            if sub._request is request:
                sub._request = None
            if not sub._closed:
                sub._on_subscribed(frame, since)

        def on_error(error: SwitchyardError) -> None:
            if sub._request is request:
                sub._request = None
            if sub._closed:
                return
            # An unreachable broker is temporary: keep a live subscription and try again.
            retry = error.code == "unavailable" and sub._ever_subscribed
            if not retry and self._subs.get(sub.channel) is sub:
                del self._subs[sub.channel]
            sub._on_error(error, final=not retry)
            if retry:
                self._retry_subscribe(sub)

        def on_cut(_: ConnectionClosed) -> None:
            # The next connection subscribes again.
            if sub._request is request:
                sub._request = None

        frame: dict[str, Any] = {"type": "subscribe", "channel": sub.channel}
        if since is not None:
            frame["since"] = since.to_json()
        request = self._new_request(frame, on_reply, on_error, on_cut)
        sub._request = request
        return request

    def _retry_subscribe(self, sub: Subscription) -> None:
        """Subscribes again after a delay while the broker is unreachable."""
        ws = self._ws

        async def later() -> None:
            await asyncio.sleep(self._backoff.delay(1))
            if self._ws is ws and ws is not None and self._subs.get(sub.channel) is sub:
                if sub._request is None and not sub._closed:
                    self._write_now(self._subscribe_request(sub))

        self._spawn(later())

    def _write_now(self, request: _Request) -> None:
        """Sends a request ahead of the queue on the current connection (resubscribes)."""
        if self._ws is None:
            request.on_cut(ConnectionClosed(None, "not connected"))
            return
        self._queue.put_urgent(request)

    def _drop(self, sub: Subscription, error: BaseException) -> None:
        """Forgets a subscription whose subscribe failed, telling the gateway if needed."""
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        request, sub._request = sub._request, None
        sub._end(error, None)
        if request is None:
            return
        request.abandoned = True
        if self._queue.remove(request) or not request.sent:
            return
        if self._ws is not None and request.id in self._pending:
            # The subscribe was written: undo it in case the gateway still performs it.
            def ignore(_: object) -> None:
                pass

            self._write_now(
                self._new_request(
                    {"type": "unsubscribe", "channel": sub.channel}, ignore, ignore, ignore
                )
            )

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub._closed:
            return
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        request = sub._request
        if request is not None:
            request.abandoned = True
            self._queue.remove(request)
        sub._end(None, _unsubscribed(sub.channel))
        if self._ws is None or self._final is not None:
            return  # the next connection simply does not subscribe
        with contextlib.suppress(ConnectionClosed):
            await self._call({"type": "unsubscribe", "channel": sub.channel})

    # ---- internals: the connection loop ----

    async def _next_url(self) -> str:
        if self._url_factory is not None:
            url = await _resolve(self._url_factory)
            if not isinstance(url, str):
                raise ClientError(f"the URL callback returned {url!r}")
            return url
        assert self._urls is not None
        url = self._urls[self._url_index % len(self._urls)]
        return url

    def _set_state(self, state: State) -> None:
        self._state = state

    async def _run(self) -> None:
        failures = 0
        final: BaseException | None = None
        code: int | None = None
        reason = ""
        try:
            while not self._closing:
                code, reason = None, ""
                error: BaseException | None = None
                immediate = False
                self._set_state(State.CONNECTING)
                url = "?"
                try:
                    url = await self._next_url()
                    self._emit(Connecting(url, failures + 1))
                    token = await _resolve(self._token)
                    ws = await self._open(url, token)
                except asyncio.CancelledError:
                    raise
                except InvalidStatus as e:
                    status = e.response.status_code
                    body = e.response.body.decode("utf-8", "replace") if e.response.body else ""
                    if status in (401, 403):
                        final = AuthError(status, body)
                        reason = body
                        break
                    error = ClientError(f"upgrade refused with HTTP {status}: {body}")
                except Exception as e:
                    error = e
                else:
                    opened = asyncio.get_running_loop().time()
                    code, reason = await self._serve(ws, url)
                    if asyncio.get_running_loop().time() - opened >= self._backoff.reset_after:
                        failures = 0
                    if self._closing:
                        break
                    if not may_reconnect(code) or (code == 4003 and not callable(self._token)):
                        final = ConnectionClosed(code, reason, final=True)
                        break
                    immediate = code == 1001
                if self._urls is not None:
                    self._url_index += 1
                # A drained node (1001) asks its clients to move at once.
                delay = 0.0 if immediate else self._backoff.delay(failures)
                if not immediate:
                    failures += 1
                if error is not None:
                    reason = reason or str(error)
                    log.debug("connecting to %s failed: %s", url, error)
                self._set_state(State.DISCONNECTED)
                self._emit(Disconnected(code, reason, True, delay, error))
                if delay > 0:
                    assert self._wake is not None
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            if final is None:
                final = ConnectionClosed(1000, "client closed", final=True)
                code, reason = (code or 1000), (reason or "client closed")
            self._finish(final, code, reason)

    async def _open(self, url: str, token: Any) -> ClientConnection:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return await ws_connect(
            url,
            additional_headers=headers,
            open_timeout=self._connect_timeout,
            ping_interval=self._ping_interval,
            max_size=self._max_frame_size,
            proxy=None,
        )

    async def _serve(self, ws: ClientConnection, url: str) -> tuple[int | None, str]:
        """Runs one connection until it ends; returns its close code and reason."""
        self._ws = ws
        self.url = url
        sem = asyncio.Semaphore(self._max_in_flight)
        self._sem = sem
        self._set_state(State.CONNECTED)
        self._emit(Connected(url))
        for waiter in self._connect_waiters:
            if not waiter.done():
                waiter.set_result(None)
        reader = asyncio.create_task(self._read(ws))
        writer: asyncio.Task[None] | None = None
        try:
            # Resubscribe ahead of queued requests, so publishes queued meanwhile reach a
            # connection that already receives the channels again.
            for sub in list(self._subs.values()):
                sub._active = False
                # A first subscribe still in the send queue goes out from there.
                if sub._request is None or sub._request.sent:
                    self._write_now(self._subscribe_request(sub))
            writer = asyncio.create_task(self._write(ws, sem))
            return await asyncio.shield(reader)
        finally:
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            if not reader.done():
                # Leaving early (close() cancelled the loop): close the socket too.
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
                with contextlib.suppress(Exception):
                    await ws.close(1000, "client closed")
            self._ws = None
            self._sem = None
            code, reason = (
                reader.result() if reader.done() and not reader.cancelled() else (None, "")
            )
            cut = ConnectionClosed(code, reason or "connection lost")
            pending, self._pending = self._pending, {}
            for request in [*pending.values(), *self._queue.clear_urgent()]:
                request.on_cut(cut)
            for sub in self._subs.values():
                sub._active = False

    async def _write(self, ws: ClientConnection, sem: asyncio.Semaphore) -> None:
        while True:
            # Take a slot before a request, so a request waiting for a slot stays in the
            # (bounded) queue rather than in the writer's hands.
            await sem.acquire()
            request = await self._queue.get()
            if request.abandoned:
                sem.release()
                continue
            request.sem = sem
            request.sent = True
            self._pending[request.id] = request
            try:
                await ws.send(request.text)
            except WsConnectionClosed:
                return  # the reader sees the close and cuts the written requests

    async def _read(self, ws: ClientConnection) -> tuple[int, str]:
        while True:
            try:
                raw = await ws.recv()
            except WsConnectionClosed as e:
                if e.rcvd is not None:
                    return e.rcvd.code, e.rcvd.reason
                return 1006, ""
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a transport failure websockets did not wrap
                log.debug("connection failed: %r", e)
                return 1006, str(e)
            try:
                frame = json.loads(raw)
            except ValueError:
                log.warning("ignoring a frame that is not JSON: %.100r", raw)
                continue
            if isinstance(frame, dict):
                try:
                    self._dispatch(frame)
                except Exception:
                    log.exception("failed to handle frame %.200r", raw)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message" or kind == "join" or kind == "leave":
            sub = self._subs.get(frame.get("channel"))  # type: ignore[arg-type]
            if sub is not None:
                if kind == "message":
                    sub._on_message(frame)
                else:
                    sub._on_event(frame)
            return
        rid = frame.get("id")
        if isinstance(rid, int) and rid in self._pending:
            self._settle(self._pending.pop(rid), frame)
            return
        if kind == "error":
            if rid is None and self._pending:
                # Replies come back in request order, so an error whose request's id was
                # unreadable (message_too_large) answers the oldest request still owed.
                oldest = next(iter(self._pending))
                self._settle(self._pending.pop(oldest), frame)
            else:
                self._emit(UnmatchedError(_error(frame)))
            return
        if kind == "subscribed" and frame.get("server"):
            self._on_server_subscribed(frame)
        elif kind == "unsubscribed" and frame.get("server"):
            sub = self._subs.pop(frame.get("channel"), None)  # type: ignore[arg-type]
            if sub is not None:
                sub._end(None, _unsubscribed(sub.channel, server=True))
        elif kind == "expiring":
            self._on_expiring(frame)
        else:
            log.debug("ignoring frame %r", frame)

    def _settle(self, request: _Request, frame: dict[str, Any]) -> None:
        if request.sem is not None:
            request.sem.release()
            request.sem = None
        if frame.get("type") == "error":
            request.on_error(_error(frame, request.kind))
        elif frame.get("type") == _REPLY[request.kind]:
            request.on_reply(frame)
        else:
            request.on_error(
                SwitchyardError("internal", f"unexpected reply {frame!r}", request.kind)
            )

    def _on_server_subscribed(self, frame: dict[str, Any]) -> None:
        channel = frame.get("channel")
        if not isinstance(channel, str):
            return
        sub = self._subs.get(channel)
        if sub is not None:
            sub._on_subscribed(frame, None, server=True)
            return
        sub = Subscription(self, channel)
        self._subs[channel] = sub
        sub._on_subscribed(frame, None, server=True)
        self._emit(ServerSubscribed(sub))

    def _on_expiring(self, frame: dict[str, Any]) -> None:
        expires_at = int(frame.get("expires_at") or 0)
        self.expires_at = expires_at
        self._emit(Expiring(expires_at, int(frame.get("in_secs") or 0)))
        if not (self._auto_refresh and callable(self._token)):
            return

        async def refresh() -> None:
            try:
                new_deadline = await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._emit(RefreshFailed(e))
            else:
                self._emit(Refreshed(new_deadline))

        self._spawn(refresh())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _finish(self, final: BaseException, code: int | None, reason: str) -> None:
        """Stops for good: everything waiting fails with ``final``."""
        if self._state is State.CLOSED:
            return
        self._final = final
        self._set_state(State.CLOSED)
        self._queue.fail(final)
        for request in self._queue.drain():
            request.on_cut(final if isinstance(final, ConnectionClosed) else _closed(final))
        pending, self._pending = self._pending, {}
        for request in pending.values():
            request.on_cut(final if isinstance(final, ConnectionClosed) else _closed(final))
        for sub in list(self._subs.values()):
            sub._end(final, None)
        self._subs.clear()
        for waiter in self._connect_waiters:
            if not waiter.done():
                waiter.set_exception(final)
                waiter.exception()
        error = None if _is_client_close(final) else final
        self._emit(Disconnected(code, reason, False, None, error))
        for stream in self._streams:
            stream._end()
        if self._done is not None and not self._done.done():
            self._done.set_result(None if _is_client_close(final) else final)


def _is_client_close(error: BaseException) -> bool:
    return isinstance(error, ConnectionClosed) and error.reason == "client closed"


def _closed(error: BaseException) -> ConnectionClosed:
    closed = ConnectionClosed(None, str(error), final=True)
    closed.__cause__ = error
    return closed


def _error(frame: dict[str, Any], request: str | None = None) -> SwitchyardError:
    return SwitchyardError(
        str(frame.get("code") or "internal"), str(frame.get("message") or ""), request
    )


def _unsubscribed(channel: str, *, server: bool = False) -> Unsubscribed:
    return Unsubscribed(channel, server)
