"""A channel subscription: an async iterator of typed items that survives reconnects."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Union

from .errors import ConnectionClosed, SwitchyardError
from .events import (
    Gap,
    Join,
    Leave,
    Message,
    Position,
    Subscribed,
    SubscriptionError,
    SubscriptionItem,
    Unsubscribed,
    _position,
)

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Handler", "Subscription"]

log = logging.getLogger("switchyard_client")

Handler = Callable[[SubscriptionItem], Union[None, Awaitable[None]]]


class _End:
    """Marks the end of a subscription's items."""


_END = _End()


class Subscription:
    """One channel held by a :class:`Client`, renewed on every reconnect.

    Iterate it (``async for item in sub``) for every item in order: :class:`Message`,
    :class:`Join`, :class:`Leave`, :class:`Subscribed` (each (re)subscribe), :class:`Gap`,
    :class:`SubscriptionError` and a final :class:`Unsubscribed`; or :meth:`messages` for the
    messages alone; or give ``handler`` to :meth:`Client.subscribe` instead of iterating.
    Items are buffered without bound until read: a consumer that stops reading for good
    should unsubscribe.
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        since: Position | None = None,
        handler: Handler | None = None,
    ) -> None:
        """Made by :meth:`Client.subscribe` or by a server-side subscribe, not directly."""
        self.channel = channel
        self.position: Position | None = since
        self.recovered: bool | None = None
        self.error: BaseException | None = None
        self._client = client
        self._items: asyncio.Queue[SubscriptionItem | _End] = asyncio.Queue()
        self._closed = False
        self._active = False
        self._ever_subscribed = False
        # The subscribe request in the send queue or on the wire, if any.
        self._request: Any = None
        self._first: asyncio.Future[Subscribed] = asyncio.get_running_loop().create_future()
        self._handler_task: asyncio.Task[None] | None = None
        if handler is not None:
            self._handler_task = asyncio.create_task(self._run_handler(handler))

    def __repr__(self) -> str:
        """Shows the channel and where the subscription stands."""
        state = "closed" if self._closed else ("active" if self._active else "pending")
        return f"<Subscription {self.channel!r} {state} position={self.position}>"

    @property
    def active(self) -> bool:
        """Whether the gateway confirmed the subscription on the current connection."""
        return self._active and not self._closed

    @property
    def closed(self) -> bool:
        """Whether the subscription ended (no more items after those buffered)."""
        return self._closed

    def __aiter__(self) -> Subscription:
        """The subscription is its own iterator."""
        return self

    async def __anext__(self) -> SubscriptionItem:
        """The next item; stops after the subscription ended and its items were read."""
        item = await self._items.get()
        if isinstance(item, _End):
            # Leave the marker for any other reader of the same subscription.
            self._items.put_nowait(item)
            raise StopAsyncIteration
        return item

    async def messages(self) -> AsyncIterator[Message]:
        """The messages alone (other items are dropped)."""
        async for item in self:
            if isinstance(item, Message):
                yield item

    async def unsubscribe(self) -> None:
        """Ends the subscription; the gateway is told when connected."""
        await self._client._unsubscribe(self)

    # ---- fed by the client ----

    def _push(self, item: SubscriptionItem) -> None:
        if not self._closed:
            self._items.put_nowait(item)

    def _on_message(self, frame: dict[str, Any]) -> None:
        position = _position(frame)
        if position is not None and self.position is not None:
            if position.epoch != self.position.epoch:
                self._push(Gap(self.channel, "epoch_changed", self.position, position))
            elif position.offset <= self.position.offset:
                # Already delivered (offsets only grow within an epoch).
                return
        if position is not None:
            self.position = position
        self._push(Message(self.channel, frame.get("data"), position))

    def _on_event(self, frame: dict[str, Any]) -> None:
        kind = Join if frame.get("type") == "join" else Leave
        self._push(kind(self.channel, frame.get("user"), frame.get("info")))

    def _on_subscribed(
        self, frame: dict[str, Any], since: Position | None, *, server: bool = False
    ) -> None:
        position = _position(frame)
        resubscribed = self._ever_subscribed and not server
        flag = frame.get("recovered")
        recovered: bool | None = flag if isinstance(flag, bool) and since is not None else None
        if resubscribed and since is None:
            # Nothing to recover from: whatever was published meanwhile is gone.
            recovered = False
        self.recovered = recovered
        if position is not None:
            self.position = position
        self._active = True
        self._ever_subscribed = True
        item = Subscribed(self.channel, position, recovered, resubscribed, server)
        self._push(item)
        if since is not None and recovered is False:
            self._push(Gap(self.channel, "not_recovered", since, position))
        elif resubscribed and since is None:
            self._push(Gap(self.channel, "no_history", None, position))
        if not self._first.done():
            self._first.set_result(item)

    def _on_error(self, error: SwitchyardError, *, final: bool) -> None:
        if not self._first.done():
            self._first.set_exception(error)
            # Nobody iterates a subscription whose subscribe() raised: end it quietly.
            self._end(error, None)
            return
        self._push(SubscriptionError(self.channel, error, final))
        if final:
            self._end(error, None)

    def _end(self, error: BaseException | None, last: SubscriptionItem | None) -> None:
        if self._closed:
            return
        if last is not None:
            self._items.put_nowait(last)
        self._closed = True
        self._active = False
        self.error = error
        self._items.put_nowait(_END)
        if not self._first.done():
            self._first.set_exception(error or ConnectionClosed(None, "unsubscribed"))
            # The exception is raised to subscribe()'s caller if it still waits; else unused.
            self._first.exception()

    async def _run_handler(self, handler: Handler) -> None:
        async for item in self:
            try:
                result = handler(item)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("subscription handler for %r failed", self.channel)
