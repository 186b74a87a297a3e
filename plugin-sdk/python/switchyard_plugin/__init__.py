"""Write Switchyard channel plugins in Python.

A plugin is a module defining any of ``init(config)``, ``on_connect(info)``,
``on_subscribe(who, channel)``, ``on_publish(who, channel, data)`` and
``on_deliver(group, channel, data)``; hooks it leaves out keep their defaults (accept, allow,
pass, deliver). ``python -m switchyard_plugin build`` turns it into a WebAssembly component of
the ``switchyard:plugin/plugin`` world (componentize-py, WASI stubbed);
``switchyard_plugin.testing`` runs its hooks natively under pytest.

Values follow the contract (plugin-sdk/wit/plugin.wit): ``data`` is JSON text, ``who`` an
:class:`Identity` (``claims`` parsed into a dict). Decisions are the small classes below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Identity", "ConnectInfo", "GroupContext",
    "Accept", "Enrich", "Refuse",
    "Allow", "AllowInGroup", "Deny",
    "Pass", "Forward", "Reject", "Drop",
    "Deliver", "Rewrite", "Skip",
    "log", "now_ms",
]


@dataclass(frozen=True)
class Identity:
    """Who is acting: user and tenant when authenticated, and the token's extra claims."""

    user: str | None = None
    tenant: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectInfo:
    """What the connect hook learns about a new connection."""

    remote_addr: str
    headers: list[tuple[str, str]]
    query: str
    identity: Identity


@dataclass(frozen=True)
class GroupContext:
    """The delivery group a message is about to reach: its key and tenant."""

    key: str = ""
    tenant: str | None = None


@dataclass(frozen=True)
class Accept:
    """Accept the connection as it is."""


@dataclass(frozen=True)
class Enrich:
    """Accept the connection with this identity instead."""

    identity: Identity


@dataclass(frozen=True)
class Refuse:
    """Refuse the connection with a reason."""

    reason: str


@dataclass(frozen=True)
class Allow:
    """Allow the subscribe, in the default delivery group."""


@dataclass(frozen=True)
class AllowInGroup:
    """Allow the subscribe, delivering to this subscriber as part of group ``key``."""

    key: str


@dataclass(frozen=True)
class Deny:
    """Refuse the subscribe; the client gets ``forbidden`` with the reason."""

    reason: str


@dataclass(frozen=True)
class Pass:
    """Publish the message unchanged to its own channel."""


@dataclass(frozen=True)
class Forward:
    """Publish these ``(channel, value)`` pairs instead (values serialised as JSON)."""

    messages: tuple[tuple[str, Any], ...]

    def __init__(self, *messages: tuple[str, Any]) -> None:
        object.__setattr__(self, "messages", tuple(messages))


@dataclass(frozen=True)
class Reject:
    """Refuse the publish; the publisher gets ``forbidden`` with the reason."""

    reason: str


@dataclass(frozen=True)
class Drop:
    """Discard the message; the publisher is acknowledged as if it had been published."""


@dataclass(frozen=True)
class Deliver:
    """Deliver the message unchanged to this group."""


@dataclass(frozen=True)
class Rewrite:
    """Deliver this value (serialised as JSON) to this group instead."""

    value: Any


@dataclass(frozen=True)
class Skip:
    """Do not deliver to this group."""


class Host(Protocol):
    """What the gateway provides: log records and its clock (a fake one in tests)."""

    def log(self, level: str, message: str, fields: list[tuple[str, str]]) -> None: ...

    def now_ms(self) -> int: ...


_host: Host | None = None


def _use(host: Host) -> None:
    """Installs the host the helpers below talk to (the component's, or a test's)."""
    global _host
    _host = host


class _Log:
    """Log records in the gateway's log with the plugin's name and version."""

    def _record(self, level: str, message: str, fields: dict[str, Any]) -> None:
        if _host is not None:
            _host.log(level, str(message), [(k, str(v)) for k, v in fields.items()])

    def trace(self, message: str, **fields: Any) -> None:
        self._record("trace", message, fields)

    def debug(self, message: str, **fields: Any) -> None:
        self._record("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._record("info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._record("warn", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._record("error", message, fields)


log = _Log()


def now_ms() -> int:
    """The gateway's clock, ms since the Unix epoch (``time.time()`` traps in a component)."""
    if _host is None:
        raise RuntimeError("no host: run inside the gateway or switchyard_plugin.testing")
    return _host.now_ms()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
