"""Reconnect and recovery across two real nodes sharing a real Redis."""

from __future__ import annotations

import asyncio

from harness import Gateway, Redis, eventually, next_of, token, wait_until
from switchyard_client import (
    Backoff,
    Client,
    ClientEvent,
    Connected,
    Connecting,
    Disconnected,
    Gap,
    Message,
    Position,
    Subscribed,
    SubscriptionItem,
    SwitchyardError,
)

FAST = Backoff(initial=0.05, maximum=0.2)


class Gate:
    """A URL callback the test can hold shut, to keep the client away while it publishes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._open = asyncio.Event()
        self._open.set()

    async def __call__(self) -> str:
        await self._open.wait()
        return self.url

    def hold(self) -> None:
        self._open.clear()

    def release(self, url: str) -> None:
        self.url = url
        self._open.set()


class Counted:
    """A token callback that counts its calls."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return token(self.user)


async def items_until(sub: object, kind: type) -> list[SubscriptionItem]:
    """Items up to and including the next one of type ``kind``."""
    got: list[SubscriptionItem] = []
    while not got or not isinstance(got[-1], kind):
        got.append(await next_of(sub))  # type: ignore[arg-type]
    return got


async def test_sigterm_moves_the_client_to_the_next_url_without_loss(
    cluster: tuple[Gateway, Gateway],
) -> None:
    a, b = cluster
    tokens = Counted("ann")
    c = Client([a.url, b.url], token=tokens)
    events = c.events()
    await c.connect()
    sub = await c.subscribe("chat:flow")
    items: list[SubscriptionItem] = []

    async def collect() -> None:
        async for item in sub:
            items.append(item)

    def messages() -> list[Message]:
        return [i for i in items if isinstance(i, Message)]

    collecting = asyncio.ensure_future(collect())
    stop = asyncio.Event()
    sent = 0
    async with Client(b.url) as publisher:

        async def flow() -> None:
            nonlocal sent
            while not stop.is_set():
                await publisher.publish("chat:flow", sent)
                sent += 1

        flowing = asyncio.ensure_future(flow())
        try:
            await eventually("live messages", lambda: len(messages()) >= 20)
            await asyncio.to_thread(a.terminate)
            assert await next_of(events, Disconnected) == Disconnected(
                1001, "server shutting down", reconnect=True, delay=0.0
            )
            assert await next_of(events) == Connecting(b.url, 1)
            assert await next_of(events) == Connected(b.url)
            back_at = sent
            await eventually("messages after the switch", lambda: len(messages()) >= back_at + 20)
        finally:
            stop.set()
            await flowing
        await eventually("every message", lambda: len(messages()) >= sent)
    await c.close()
    await collecting

    # Every message once, in order, nothing reported lost; the resubscribe recovered.
    assert [m.data for m in messages()] == list(range(sent))
    assert [m.position.offset for m in messages()] == list(range(1, sent + 1))
    assert not [i for i in items if isinstance(i, Gap)]
    renewed = [i for i in items if isinstance(i, Subscribed) and i.resubscribed]
    assert len(renewed) == 1 and renewed[0].recovered is True
    assert tokens.calls == 2, "the token callback is asked again for the new connection"


async def test_sigkill_then_recovery_delivers_exactly_the_missed_messages(
    cluster: tuple[Gateway, Gateway],
) -> None:
    a, b = cluster
    gate = Gate(a.url)
    tokens = Counted("ann")
    c = Client(gate, token=tokens, backoff=FAST)
    events = c.events()
    await c.connect()
    sub = await c.subscribe("chat:k")
    start = await next_of(sub, Subscribed)
    async with Client(b.url) as publisher:
        await publisher.publish("chat:k", "before")
        seen = await next_of(sub, Message)
        assert seen.data == "before"

        gate.hold()
        a.kill()
        gone = await next_of(events, Disconnected)
        assert (gone.code, gone.reconnect) == (1006, True)
        missed = [await publisher.publish("chat:k", n) for n in range(30)]
        gate.release(b.url)
        assert await next_of(events, Connected) == Connected(b.url)

        got = await items_until(sub, Subscribed)
        epoch = start.position.epoch
        assert got[:-1] == [
            Message("chat:k", n, Position(n + 2, epoch)) for n in range(30)
        ], "the missed messages, once each, in order, before the reply"
        assert got[-1] == Subscribed(
            "chat:k", Position(31, epoch), recovered=True, resubscribed=True
        )
        assert [p.position for p in missed] == [m.position for m in got[:-1]]
        assert sub.recovered is True

        await publisher.publish("chat:k", "live")
        assert await next_of(sub, Message) == Message("chat:k", "live", Position(32, epoch))
    assert tokens.calls == 2
    await c.close()


async def test_redis_restart_keeps_the_connection_and_reports_the_new_epoch(
    redis: Redis, cluster: tuple[Gateway, Gateway]
) -> None:
    a, b = cluster
    seen_events: list[ClientEvent] = []
    async with Client(a.url, on_event=seen_events.append) as c, Client(b.url) as publisher:
        sub = await c.subscribe("chat:r")
        before = await publisher.publish("chat:r", "before")
        assert (await next_of(sub, Message)).position == before.position

        redis.kill()
        await asyncio.to_thread(
            wait_until, "both nodes to lose Redis", lambda: a.readyz() == b.readyz() == 503
        )
        try:
            await publisher.publish("chat:r", "during")
        except SwitchyardError as e:
            assert e.code == "unavailable" and e.retryable
        else:
            raise AssertionError("a publish without Redis must fail")

        await asyncio.to_thread(redis.start)
        await asyncio.to_thread(a.wait_ready)
        await asyncio.to_thread(b.wait_ready)
        after = await publisher.publish("chat:r", "after")
        assert after.position is not None and before.position is not None
        assert after.position.epoch != before.position.epoch, "Redis had no persistence"
        assert await next_of(sub) == Gap("chat:r", "epoch_changed", before.position, after.position)
        assert await next_of(sub) == Message("chat:r", "after", after.position)
        assert not [e for e in seen_events if isinstance(e, Disconnected)]


async def test_a_redis_restart_while_away_is_reported_as_a_gap(
    redis: Redis, cluster: tuple[Gateway, Gateway]
) -> None:
    a, b = cluster
    gate = Gate(a.url)
    c = Client(gate, backoff=FAST)
    events = c.events()
    await c.connect()
    sub = await c.subscribe("chat:w")
    async with Client(b.url) as publisher:
        old = await publisher.publish("chat:w", "old")
        assert (await next_of(sub, Message)).data == "old"
        gate.hold()
        a.kill()
        await next_of(events, Disconnected)

        redis.kill()
        await asyncio.to_thread(wait_until, "b to lose Redis", lambda: b.readyz() == 503)
        await asyncio.to_thread(redis.start)
        await asyncio.to_thread(b.wait_ready)
        new = [await publisher.publish("chat:w", n) for n in range(3)]
        gate.release(b.url)

        renewed = await next_of(sub)
        now = new[-1].position
        assert renewed == Subscribed("chat:w", now, recovered=False, resubscribed=True)
        assert await next_of(sub) == Gap("chat:w", "not_recovered", old.position, now)
        await publisher.publish("chat:w", "live")
        assert (await next_of(sub, Message)).data == "live"
    await c.close()
