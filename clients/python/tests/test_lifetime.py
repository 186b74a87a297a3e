"""Token lifetime: expiring -> refresh from the token callback, refusals, 4003, retries."""

from __future__ import annotations

import asyncio
import time

import jwt

from harness import Gateway, free_port, next_of, eventually, token
from switchyard_client import (
    Backoff,
    Client,
    Connected,
    Connecting,
    Disconnected,
    Expiring,
    Gap,
    Message,
    RefreshFailed,
    Refreshed,
    Subscribed,
    SwitchyardError,
)

# Close right at `exp`, warn one second before it.
SHORT = "leeway_secs = 0\nexpiry_warning_secs = 1"
FAST = Backoff(initial=0.05, maximum=0.2)


def exp_of(jwt_text: str) -> int:
    """The `exp` claim of a token."""
    return int(jwt.decode(jwt_text, options={"verify_signature": False})["exp"])


async def test_expiring_refreshes_and_the_connection_outlives_its_first_token(
    make_gateway,
) -> None:
    gw: Gateway = make_gateway("exp", auth=SHORT)
    issued: list[str] = []

    def fresh() -> str:
        issued.append(token("ann", ttl=3))
        return issued[-1]

    seen = []
    c = Client(gw.url, token=fresh, on_event=seen.append)
    events = c.events()
    await c.connect()
    try:
        sub = await c.subscribe("plain:life")
        warned = await next_of(events, Expiring)
        assert warned.expires_at == exp_of(issued[0])
        assert await next_of(events, Refreshed) == Refreshed(exp_of(issued[1]))
        await next_of(events, Expiring)
        assert await next_of(events, Refreshed) == Refreshed(exp_of(issued[2]))
        # Two refreshes in, the first token's deadline has passed on the gateway's clock.
        assert time.time() >= exp_of(issued[0])
        assert not [e for e in seen if isinstance(e, Disconnected)]
        assert c.expires_at == exp_of(issued[2])
        await c.publish("plain:life", "still here")
        assert (await next_of(sub, Message)).data == "still here"
    finally:
        await c.close()


async def test_a_refused_refresh_then_expiry_reconnects_with_a_new_token(make_gateway) -> None:
    gw: Gateway = make_gateway("refused", auth=SHORT)
    calls = 0

    def tokens() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return token("ann", ttl=2)
        if calls == 2:
            return token("bob", ttl=600)  # another user: the refresh is refused
        return token("ann", ttl=600)

    c = Client(gw.url, token=tokens, backoff=FAST)
    events = c.events()
    await c.connect()
    try:
        sub = await c.subscribe("plain:r")
        failed = await next_of(events, RefreshFailed)
        assert isinstance(failed.error, SwitchyardError)
        assert failed.error.code == "unauthorized"
        gone = await next_of(events, Disconnected)
        assert (gone.code, gone.reason, gone.reconnect) == (4003, "token expired", True)
        await next_of(events, Connected)
        assert calls == 3
        # A channel without history cannot be recovered: the resubscribe says so.
        await next_of(sub, Subscribed)
        renewed = await next_of(sub, Subscribed)
        assert renewed.resubscribed and renewed.recovered is False
        assert await next_of(sub) == Gap("plain:r", "no_history", None, None)
        await c.publish("plain:r", "again")
        assert (await next_of(sub, Message)).data == "again"
    finally:
        await c.close()


async def test_a_static_token_is_not_retried_after_expiry(make_gateway) -> None:
    gw: Gateway = make_gateway("static", auth=SHORT)
    c = Client(gw.url, token=token("ann", ttl=2))
    events = c.events()
    await c.connect()
    await next_of(events, Expiring)
    gone = await next_of(events, Disconnected)
    assert (gone.code, gone.reconnect) == (4003, False)
    assert [e async for e in events] == []


async def test_requests_wait_for_a_connection_while_attempts_back_off(make_gateway) -> None:
    gw: Gateway = make_gateway("late", start=False)
    target = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    c = Client(lambda: target, backoff=FAST, send_queue_size=2)
    events = c.events()
    connecting = asyncio.ensure_future(c.connect())
    try:
        for attempt in (1, 2, 3):
            assert await next_of(events) == Connecting(target, attempt)
            failed = await next_of(events)
            assert isinstance(failed, Disconnected) and failed.reconnect
            assert isinstance(failed.error, OSError), failed.error
            assert failed.delay is not None
            assert 0 <= failed.delay <= FAST.ceiling(attempt - 1)
        publishes = [asyncio.ensure_future(c.publish("chat:q", n)) for n in range(3)]
        await eventually("two queued, one waiting", lambda: (c.queued, c.waiting_for_queue) == (2, 1))
        await asyncio.to_thread(gw.start)
        target = gw.url
        await connecting
        results = await asyncio.gather(*publishes)
        assert [r.position.offset for r in results] == [1, 2, 3]
    finally:
        await c.close()
