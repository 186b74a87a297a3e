"""The component side of a Python plugin: converts between the contract's generated types
(``wit_world``, only present inside a component built by componentize-py) and the SDK's, and
gives the SDK's helpers the gateway's host. Not importable natively."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import wit_world
from componentize_py_types import Err
from wit_world.imports import host as wit_host
from wit_world.imports import types as t

from . import (
    Accept, Allow, AllowInGroup, ConnectInfo, Deliver, Deny, Drop, Enrich, Forward,
    GroupContext, Identity, Pass, Refuse, Reject, Rewrite, Skip, _dumps, _use,
)
from .adapter import Adapter, Refused

_LEVELS = {
    "trace": t.Level.TRACE,
    "debug": t.Level.DEBUG,
    "info": t.Level.INFO,
    "warn": t.Level.WARN,
    "error": t.Level.ERROR,
}


class _GatewayHost:
    def log(self, level: str, message: str, fields: list[tuple[str, str]]) -> None:
        wit_host.log(_LEVELS[level], message, fields)

    def now_ms(self) -> int:
        return wit_host.now_ms()


def _identity(who: t.Identity) -> Identity:
    return Identity(who.user, who.tenant, json.loads(who.claims or "{}"))


def _connect(d: Any) -> Any:
    if isinstance(d, Accept):
        return t.ConnectDecision_Accept()
    if isinstance(d, Enrich):
        i = d.identity
        return t.ConnectDecision_Enrich(t.Identity(i.user, i.tenant, _dumps(i.claims)))
    if isinstance(d, Refuse):
        return t.ConnectDecision_Reject(d.reason)
    raise TypeError(f"on_connect returned {d!r}: use Accept, Enrich or Refuse")


def _subscribe(d: Any) -> Any:
    if isinstance(d, Allow):
        return t.SubscribeDecision_Allow()
    if isinstance(d, AllowInGroup):
        return t.SubscribeDecision_AllowInGroup(d.key)
    if isinstance(d, Deny):
        return t.SubscribeDecision_Deny(d.reason)
    raise TypeError(f"on_subscribe returned {d!r}: use Allow, AllowInGroup or Deny")


def _publish(d: Any) -> Any:
    if isinstance(d, Pass):
        return t.PublishDecision_Pass()
    if isinstance(d, Forward):
        return t.PublishDecision_Forward([t.Outgoing(c, _dumps(v)) for c, v in d.messages])
    if isinstance(d, Reject):
        return t.PublishDecision_Reject(d.reason)
    if isinstance(d, Drop):
        return t.PublishDecision_Drop()
    raise TypeError(f"on_publish returned {d!r}: use Pass, Forward, Reject or Drop")


def _deliver(d: Any) -> Any:
    if isinstance(d, Deliver):
        return t.DeliverDecision_Deliver()
    if isinstance(d, Rewrite):
        return t.DeliverDecision_Rewrite(_dumps(d.value))
    if isinstance(d, Skip):
        return t.DeliverDecision_Skip()
    raise TypeError(f"on_deliver returned {d!r}: use Deliver, Rewrite or Skip")


def world(module: ModuleType) -> type:
    """The ``WitWorld`` class componentize-py exports, running ``module``'s hooks."""
    _use(_GatewayHost())
    hooks = Adapter(module)

    class WitWorld(wit_world.WitWorld):
        def init(self, config: str) -> None:
            try:
                hooks.init(config)
            except Refused as e:
                raise Err(str(e)) from None

        def on_connect(self, info: t.ConnectInfo) -> Any:
            mine = ConnectInfo(info.remote_addr, list(info.headers), info.query, _identity(info.identity))
            return _connect(hooks.on_connect(mine))

        def on_subscribe(self, who: t.Identity, channel: str) -> Any:
            return _subscribe(hooks.on_subscribe(_identity(who), channel))

        def on_publish(self, who: t.Identity, channel: str, data: str) -> Any:
            return _publish(hooks.on_publish(_identity(who), channel, data))

        def on_deliver(self, group: t.GroupContext, channel: str, data: str) -> Any:
            return _deliver(hooks.on_deliver(GroupContext(group.key, group.tenant), channel, data))

    return WitWorld
