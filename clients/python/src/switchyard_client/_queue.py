"""A bounded FIFO whose producers wait while it is full, and that can be failed at once."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SendQueue(Generic[T]):
    """Requests waiting for the socket; survives reconnects, so unsent requests go out later."""

    def __init__(self, maxsize: int) -> None:
        """``maxsize`` bounds the queue; ``put`` waits beyond it."""
        if maxsize < 1:
            raise ValueError("send queue size must be at least 1")
        self._maxsize = maxsize
        self._items: deque[T] = deque()
        # Requests of the current connection that go ahead of the rest (resubscribes),
        # outside the bound: the client itself makes them, one per subscription at most.
        self._urgent: deque[T] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None

    def __len__(self) -> int:
        """How many requests wait."""
        return len(self._items)

    @property
    def waiting_producers(self) -> int:
        """How many ``put`` calls wait for room."""
        return sum(1 for f in self._putters if not f.done())

    async def put(self, item: T) -> None:
        """Appends ``item``, waiting while the queue is full; raises once the queue failed."""
        while len(self._items) >= self._maxsize and self._failure is None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # A wake-up this producer can no longer use goes to the next one.
                if waiter.done() and not waiter.cancelled():
                    self._wake_putter()
                raise
            finally:
                if waiter in self._putters:
                    self._putters.remove(waiter)
        if self._failure is not None:
            raise self._failure
        self._items.append(item)
        self._wake_getter()

    def put_urgent(self, item: T) -> None:
        """Adds ``item`` to the lane served before the queue."""
        self._urgent.append(item)
        self._wake_getter()

    def clear_urgent(self) -> list[T]:
        """Removes and returns the urgent items (they belonged to a connection now gone)."""
        items = list(self._urgent)
        self._urgent.clear()
        return items

    async def get(self) -> T:
        """Takes the next item, urgent ones first, waiting for one (a single consumer)."""
        while not self._items and not self._urgent:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        if self._urgent:
            return self._urgent.popleft()
        item = self._items.popleft()
        self._wake_putter()
        return item

    def drain(self) -> list[T]:
        """Removes and returns every item, urgent ones included."""
        items = [*self._urgent, *self._items]
        self._urgent.clear()
        self._items.clear()
        while self._putters:
            self._wake_putter()
        return items

    def remove(self, item: T) -> bool:
        """Removes ``item`` if still queued."""
        try:
            self._items.remove(item)
        except ValueError:
            try:
                self._urgent.remove(item)
            except ValueError:
                return False
            return True
        self._wake_putter()
        return True

    def fail(self, error: BaseException) -> None:
        """From now on ``put`` raises ``error``; producers waiting for room are woken."""
        self._failure = error
        for waiter in self._putters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_getter(self) -> None:
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)

    def _wake_putter(self) -> None:
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
