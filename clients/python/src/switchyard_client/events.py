"""Typed values the client hands out: results, subscription items and connection events."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:
    from .errors import SwitchyardError
    from .subscription import Subscription

__all__ = [
    "ClientEvent",
    "Connected",
    "Connecting",
    "Disconnected",
    "Expiring",
    "Gap",
    "History",
    "HistoryMessage",
    "Join",
    "Leave",
    "Message",
    "Position",
    "Published",
    "RefreshFailed",
    "Refreshed",
    "ServerSubscribed",
    "State",
    "Subscribed",
    "SubscriptionError",
    "SubscriptionItem",
    "UnmatchedError",
    "Unsubscribed",
]


@dataclass(frozen=True)
class Position:
    """A place in a channel's history: an offset means something only with its epoch."""

    offset: int
    epoch: str

    def to_json(self) -> dict[str, Any]:
        """The ``since`` object of the protocol."""
        return {"offset": self.offset, "epoch": self.epoch}


def _position(frame: dict[str, Any]) -> Position | None:
    offset, epoch = frame.get("offset"), frame.get("epoch")
    if isinstance(offset, int) and isinstance(epoch, str):
        return Position(offset, epoch)
    return None


# ---- results of requests ----


@dataclass(frozen=True)
class Published:
    """The broker accepted a publish; ``position`` is set on channels with history."""

    channel: str
    position: Position | None


@dataclass(frozen=True)
class HistoryMessage:
    """One stored message."""

    offset: int
    data: Any


@dataclass(frozen=True)
class History:
    """A ``history`` reply: the channel's position, its oldest stored offset and messages."""

    channel: str
    position: Position | None
    first: int | None
    messages: list[HistoryMessage]
    limit: int | None
    clamped: bool
    recovered: bool | None


# ---- items of a subscription ----


@dataclass(frozen=True)
class Message:
    """A delivery; ``position`` is set on channels with history."""

    channel: str
    data: Any
    position: Position | None = None


@dataclass(frozen=True)
class Join:
    """A connection subscribed to the channel (``user`` is None for anonymous ones)."""

    channel: str
    user: str | None
    info: Any = None


@dataclass(frozen=True)
class Leave:
    """A connection's subscription to the channel ended."""

    channel: str
    user: str | None
    info: Any = None


@dataclass(frozen=True)
class Subscribed:
    """The gateway confirmed the subscription, first or again after a reconnect.

    ``recovered`` is None when no ``since`` was sent, else the reply's flag; ``resubscribed``
    is true after a reconnect; ``server`` is true for a subscription made by the backend API.
    """

    channel: str
    position: Position | None
    recovered: bool | None = None
    resubscribed: bool = False
    server: bool = False


@dataclass(frozen=True)
class Gap:
    """Messages may have been lost: reload the channel's state by other means.

    ``reason``: ``not_recovered`` (the reply said ``recovered:false``), ``epoch_changed`` (a
    live message came in a new epoch: the channel's history was lost) or ``no_history`` (a
    resubscribe after a reconnect on a channel without history, which cannot be recovered).
    ``since`` is the last position seen, ``position`` where delivery continues.
    """

    channel: str
    reason: Literal["not_recovered", "epoch_changed", "no_history"]
    since: Position | None
    position: Position | None


@dataclass(frozen=True)
class SubscriptionError:
    """A resubscribe was refused; ``final`` tells that the subscription ended because of it."""

    channel: str
    error: SwitchyardError
    final: bool


@dataclass(frozen=True)
class Unsubscribed:
    """The subscription ended: by ``unsubscribe()`` or by the backend API (``server``)."""

    channel: str
    server: bool = False


SubscriptionItem = Union[Message, Join, Leave, Subscribed, Gap, SubscriptionError, Unsubscribed]


# ---- connection events ----


class State(str, Enum):
    """Where the client's connection is."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True)
class Connecting:
    """An attempt to open a connection to ``url`` starts (``attempt`` counts from 1)."""

    url: str
    attempt: int


@dataclass(frozen=True)
class Connected:
    """The upgrade succeeded; subscriptions are being renewed."""

    url: str


@dataclass(frozen=True)
class Disconnected:
    """A connection or an attempt ended.

    ``code``/``reason`` are the close frame's (1006 and "" when the socket dropped, None when
    no connection was made); ``error`` is what failed an attempt; ``reconnect`` tells whether
    another attempt follows after ``delay`` seconds.
    """

    code: int | None
    reason: str
    reconnect: bool
    delay: float | None = None
    error: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Expiring:
    """The gateway warned that the connection's token expires at ``expires_at`` (Unix s)."""

    expires_at: int
    in_secs: int


@dataclass(frozen=True)
class Refreshed:
    """A refresh was accepted: the connection now lasts until ``expires_at`` (Unix s)."""

    expires_at: int


@dataclass(frozen=True)
class RefreshFailed:
    """An automatic refresh failed (token callback raised, or the gateway refused it)."""

    error: BaseException = field(compare=False)


@dataclass(frozen=True)
class ServerSubscribed:
    """The backend API subscribed this connection to a channel it did not hold."""

    subscription: Subscription = field(compare=False)


@dataclass(frozen=True)
class UnmatchedError:
    """An error frame that no outstanding request could be matched to."""

    error: SwitchyardError = field(compare=False)


ClientEvent = Union[
    Connecting,
    Connected,
    Disconnected,
    Expiring,
    Refreshed,
    RefreshFailed,
    ServerSubscribed,
    UnmatchedError,
]
