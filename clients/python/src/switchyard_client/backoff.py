"""Reconnect delays: exponential backoff with full jitter and a cap."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "NO_RECONNECT_CODES", "may_reconnect"]

# Close codes after which the protocol says not to reconnect (4500-4999 too, see below).
NO_RECONNECT_CODES = frozenset({4004, 4006})


def may_reconnect(code: int | None) -> bool:
    """Whether a connection closed with ``code`` may be opened again (protocol close codes)."""
    if code is None:
        return True
    return code not in NO_RECONNECT_CODES and not 4500 <= code <= 4999


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): uniform in [0, min(maximum, initial*factor**n)].

    Full jitter spreads a crowd of clients that lost the same node over the whole window,
    instead of bringing them back in synchronized waves.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    # A connection that lasted this long resets the attempt count; a shorter one does not,
    # so a server that accepts and at once closes is not hammered at the initial delay.
    reset_after: float = 5.0
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before attempt ``attempt``."""
        # Bound the exponent so huge attempt counts cannot overflow a float.
        return min(self.maximum, self.initial * self.factor ** min(attempt, 64))

    def delay(self, attempt: int) -> float:
        """A random delay for attempt ``attempt``."""
        return self.random() * self.ceiling(attempt)
