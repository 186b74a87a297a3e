"""The client against one real gateway node (embedded broker): requests, items, errors."""

from __future__ import annotations

import asyncio

import pytest

from harness import Gateway, eventually, next_of, take, token
from switchyard_client import (
    AuthError,
    Client,
    ConnectionClosed,
    Connected,
    Connecting,
    Disconnected,
    ErrorCode,
    Gap,
    Join,
    Leave,
    Message,
    Position,
    RequestTimeout,
    ServerSubscribed,
    State,
    Subscribed,
    SwitchyardError,
    Unsubscribed,
)


async def test_publish_subscribe_history_and_unsubscribe(single: Gateway) -> None:
    async with Client(single.url, token=token("ann")) as c:
        sub = await c.subscribe("chat:1")
        first = await next_of(sub)
        assert first == Subscribed("chat:1", Position(0, first.position.epoch))
        assert await next_of(sub) == Join("chat:1", "ann")

        published = [await c.publish("chat:1", {"n": n}) for n in range(3)]
        epoch = first.position.epoch
        assert [p.position for p in published] == [Position(n, epoch) for n in (1, 2, 3)]
        got = await take(sub, 3)
        assert got == [Message("chat:1", {"n": n}, Position(n + 1, epoch)) for n in range(3)]
        assert sub.position == Position(3, epoch)

        history = await c.history("chat:1", limit=2)
        assert history.position == Position(3, epoch)
        assert [(m.offset, m.data) for m in history.messages] == [(2, {"n": 1}), (3, {"n": 2})]
        after = await c.history("chat:1", since=Position(1, epoch))
        assert after.recovered is True
        assert [m.offset for m in after.messages] == [2, 3]

        # A channel without history: no positions, data as sent.
        plain = await c.subscribe("plain")
        assert (await c.publish("plain", [1, "two", None])).position is None
        assert await next_of(plain, Message) == Message("plain", [1, "two", None], None)

        await sub.unsubscribe()
        assert await next_of(sub) == Unsubscribed("chat:1")
        assert [item async for item in sub] == []
        assert sub.closed and "chat:1" not in c.subscriptions
        # Unsubscribed for real: a publish now reaches only the other subscription.
        await c.publish("chat:1", "unseen")
        await c.publish("plain", "seen")
        assert (await next_of(plain, Message)).data == "seen"
    assert c.state is State.CLOSED


async def test_join_and_leave_events(single: Gateway) -> None:
    async with Client(single.url, token=token("ann")) as ann, Client(single.url) as anon:
        room = await ann.subscribe("room:1")
        assert await next_of(room, Join) == Join("room:1", "ann")
        other = await anon.subscribe("room:1")
        assert await next_of(room, Join, Leave) == Join("room:1", None)
        await other.unsubscribe()
        assert await next_of(room, Join, Leave) == Leave("room:1", None)


async def test_handler_receives_items_in_order(single: Gateway) -> None:
    seen: list[object] = []
    done = asyncio.Event()

    async def handler(item: object) -> None:
        seen.append(item)
        if isinstance(item, Message) and item.data == 2:
            done.set()

    async with Client(single.url) as c:
        await c.subscribe("plain:h", handler)
        for n in range(3):
            await c.publish("plain:h", n)
        await asyncio.wait_for(done.wait(), 20)
    assert [i.data for i in seen if isinstance(i, Message)] == [0, 1, 2]
    assert isinstance(seen[0], Subscribed)


async def test_errors_carry_the_protocol_codes(single: Gateway) -> None:
    async with Client(single.url, token=token("ann", tenant="acme")) as c:
        with pytest.raises(SwitchyardError) as bad:
            await c.subscribe("no spaces")
        assert bad.value.code == ErrorCode.INVALID_CHANNEL == "invalid_channel"
        assert "no spaces" not in c.subscriptions
        with pytest.raises(SwitchyardError) as bad:
            await c.publish("", 1)
        assert bad.value.code == "invalid_channel"

        # tenant-guard: another tenant's channel is refused, the own one is not.
        with pytest.raises(SwitchyardError) as refused:
            await c.subscribe("tenant:beta:x")
        assert refused.value.code == "forbidden"
        assert "belongs to tenant beta" in refused.value.message
        with pytest.raises(SwitchyardError) as refused:
            await c.publish("tenant:beta:x", 1)
        assert refused.value.code == "forbidden"
        await c.subscribe("tenant:acme:x")
        await c.publish("tenant:acme:x", 1)

        with pytest.raises(SwitchyardError) as missing:
            await c.history("room:1")
        assert missing.value.code == "no_history"
        with pytest.raises(SwitchyardError) as bad:
            await c.history("chat:1", limit=-1)
        assert bad.value.code == "invalid_field"

        with pytest.raises(SwitchyardError) as failed:
            await c.publish("hostile:x", 1)
        assert failed.value.code == "plugin_error"
        assert "on-publish" in failed.value.message

        with pytest.raises(SwitchyardError) as denied:
            await c.refresh(token("bob", tenant="acme"))
        assert denied.value.code == "unauthorized"
        assert "another user" in denied.value.message
        assert await c.refresh(token("ann", tenant="acme", ttl=600)) > 0

        # The connection outlived every refusal.
        assert c.state is State.CONNECTED
        assert (await c.publish("chat:ok", 1)).position is not None


async def test_an_anonymous_connection_has_nothing_to_refresh(single: Gateway) -> None:
    async with Client(single.url) as c:
        with pytest.raises(SwitchyardError) as denied:
            await c.refresh(token("ann"))
        assert denied.value.code == "unauthorized"


async def test_message_too_large_answers_the_right_request(make_gateway) -> None:
    gw = make_gateway("small", limits="max_message_bytes = 1024")
    async with Client(gw.url) as c:
        # Pipelined: the error (which has no id) must fail the big one, not its neighbours.
        results = await asyncio.gather(
            c.publish("plain", "a"),
            c.publish("plain", "x" * 2000),
            c.publish("plain", "b"),
            return_exceptions=True,
        )
        assert isinstance(results[1], SwitchyardError), results
        assert results[1].code == "message_too_large"
        assert [type(r).__name__ for r in (results[0], results[2])] == ["Published"] * 2


async def test_rate_limited(make_gateway) -> None:
    gw = make_gateway("rl", limits="publish_rate = 1\npublish_burst = 2")
    async with Client(gw.url) as c:
        results = await asyncio.gather(
            *(c.publish("plain", n) for n in range(10)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors, "ten publishes at once exceed a burst of two"
        assert all(isinstance(e, SwitchyardError) and e.code == "rate_limited" for e in errors)
        assert errors[0].retryable
        assert len(errors) < 10


async def test_too_many_subscriptions(make_gateway) -> None:
    gw = make_gateway("subs", limits="max_subscriptions = 2")
    async with Client(gw.url) as c:
        await c.subscribe("a")
        await c.subscribe("b")
        with pytest.raises(SwitchyardError) as full:
            await c.subscribe("c")
        assert full.value.code == "too_many_subscriptions"
        assert sorted(c.subscriptions) == ["a", "b"]


async def test_since_in_another_epoch_reports_a_gap(single: Gateway) -> None:
    async with Client(single.url) as c:
        await c.publish("chat:g", "one")
        sub = await c.subscribe("chat:g", since=Position(0, "not-the-epoch"))
        reply = await next_of(sub)
        assert isinstance(reply, Subscribed) and reply.recovered is False
        assert reply.position is not None and reply.position.offset == 1
        gap = await next_of(sub)
        assert gap == Gap("chat:g", "not_recovered", Position(0, "not-the-epoch"), reply.position)
        assert sub.recovered is False


async def test_a_refused_upgrade_is_not_retried(single: Gateway) -> None:
    forged = token("ann").rsplit(".", 1)[0] + ".forged-signature"
    c = Client(single.url, token=forged)
    events = c.events()
    with pytest.raises(AuthError) as refused:
        await c.connect()
    assert refused.value.status == 401
    assert "signature" in refused.value.reason
    assert isinstance(await next_of(events), Connecting)
    end = await next_of(events)
    assert isinstance(end, Disconnected) and end.reconnect is False
    assert [e async for e in events] == []  # no second attempt
    assert c.state is State.CLOSED
    assert await c.wait_closed() is refused.value
    with pytest.raises(AuthError):
        await c.publish("plain", 1)


async def test_a_request_times_out_when_the_gateway_does_not_answer(single: Gateway) -> None:
    async with Client(single.url, request_timeout=0.5) as c:
        single.pause()
        try:
            with pytest.raises(RequestTimeout) as late:
                await c.publish("chat:t", "late")
            assert isinstance(late.value, TimeoutError)
        finally:
            single.resume()
        # The late reply to the abandoned request does not answer the next one.
        c.request_timeout = 20
        assert (await c.publish("chat:t", "next")).position.offset == 2


async def test_a_request_cut_by_a_crash_raises_connection_closed(single: Gateway) -> None:
    c = Client(single.url)
    await c.connect()
    try:
        single.pause()
        publish = asyncio.ensure_future(c.publish("plain", "lost?"))
        await eventually("the publish to be written", lambda: c.in_flight == 1)
        single.kill()
        with pytest.raises(ConnectionClosed) as cut:
            await publish
        assert cut.value.code == 1006 and not cut.value.final
    finally:
        await c.close()


async def test_bounded_send_queue_makes_publishers_wait(single: Gateway) -> None:
    async with Client(single.url, send_queue_size=2, max_in_flight=1) as c:
        single.pause()
        try:
            tasks = [asyncio.ensure_future(c.publish("chat:bp", n)) for n in range(4)]
            await eventually(
                "one written, two queued, one waiting",
                lambda: (c.in_flight, c.queued, c.waiting_for_queue) == (1, 2, 1),
            )
            assert not any(t.done() for t in tasks)
        finally:
            single.resume()
        results = await asyncio.gather(*tasks)
        assert [r.position.offset for r in results] == [1, 2, 3, 4]


async def test_server_side_subscribe_and_unsubscribe(single: Gateway) -> None:
    c = Client(single.url, token=token("ann"))
    events = c.events()
    await c.connect()
    try:
        await eventually("presence to list ann", lambda: single.presence_count("ann") == 1)
        assert single.api("/api/subscribe", {"user": "ann", "channel": "chat:srv"}) == {
            "connections": 1
        }
        made = await next_of(events, ServerSubscribed)
        sub = made.subscription
        assert sub.channel == "chat:srv" and c.subscriptions == {"chat:srv": sub}
        reply = await next_of(sub)
        assert isinstance(reply, Subscribed) and reply.server and reply.position is not None
        await c.publish("chat:srv", "pushed")
        assert (await next_of(sub, Message)).data == "pushed"

        single.api("/api/unsubscribe", {"user": "ann", "channel": "chat:srv"})
        assert await next_of(sub, Unsubscribed) == Unsubscribed("chat:srv", server=True)
        assert [i async for i in sub] == [] and c.subscriptions == {}
    finally:
        await c.close()


async def test_close_codes_decide_whether_to_reconnect(single: Gateway) -> None:
    calls = 0

    def ann_token() -> str:
        nonlocal calls
        calls += 1
        return token("ann")

    ann = Client(single.url, token=ann_token)
    bob = Client(single.url, token=token("bob"))
    ann_events, bob_events = ann.events(), bob.events()
    await ann.connect()
    await bob.connect()
    try:
        await eventually("presence", lambda: single.presence_count("ann") == 1)
        single.api("/api/disconnect", {"user": "ann"})
        gone = await next_of(ann_events, Disconnected)
        assert (gone.code, gone.reason, gone.reconnect) == (4005, "disconnected by server", True)
        assert isinstance(await next_of(ann_events, Connected), Connected)
        assert calls == 2, "the token callback is called again for the new connection"

        await eventually("presence", lambda: single.presence_count("ann") == 1)
        single.api("/api/revoke", {"user": "ann"})
        revoked = await next_of(ann_events, Disconnected)
        assert (revoked.code, revoked.reconnect) == (4004, False)
        assert isinstance(await ann.wait_closed(), ConnectionClosed)

        await eventually("presence", lambda: single.presence_count("bob") == 1)
        single.api("/api/disconnect", {"user": "bob", "reconnect": False, "reason": "bye"})
        final = await next_of(bob_events, Disconnected)
        assert (final.code, final.reason, final.reconnect) == (4006, "bye", False)
        with pytest.raises(ConnectionClosed) as closed:
            await bob.publish("plain", 1)
        assert closed.value.final and closed.value.code == 4006
        assert bob.state is State.CLOSED
    finally:
        await ann.close()
        await bob.close()
