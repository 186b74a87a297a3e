"""Runs a plugin's hooks natively (no wasm), through the same adapter as the component.

    from switchyard_plugin import Forward, Identity
    from switchyard_plugin.testing import host, load

    def test_shouts():
        host.now = 1_700_000_000_000
        p = load("plugins/python/shout/shout.py", {"max_len": 100})
        assert p.publish(Identity("ann"), "chat:1", {"text": "hi"}) == Forward(("chat:1", {"text": "HI"}))
        assert host.logs[0].message == "ann shouted on chat:1"
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ConnectInfo, GroupContext, Identity, _use
from .adapter import Adapter, Refused

__all__ = ["host", "load", "Instance", "LogRecord", "Refused"]


@dataclass(frozen=True)
class LogRecord:
    """One record a plugin logged."""

    level: str
    message: str
    fields: list[tuple[str, str]]


class TestHost:
    """The gateway's host interface in tests: records logs; ``now`` fixes the clock."""

    def __init__(self) -> None:
        self.logs: list[LogRecord] = []
        self.now: int | None = None

    def log(self, level: str, message: str, fields: list[tuple[str, str]]) -> None:
        self.logs.append(LogRecord(level, message, fields))

    def now_ms(self) -> int:
        return self.now if self.now is not None else int(time.time() * 1000)


host = TestHost()
_use(host)
_loads = itertools.count()


def _text(data: Any) -> str:
    return data if isinstance(data, str) else json.dumps(data)


class Instance:
    """One loaded plugin instance: its hooks, ``data`` as JSON text or a value."""

    def __init__(self, hooks: Adapter) -> None:
        self._hooks = hooks

    def connect(self, info: ConnectInfo) -> Any:
        return self._hooks.on_connect(info)

    def subscribe(self, who: Identity, channel: str) -> Any:
        return self._hooks.on_subscribe(who, channel)

    def publish(self, who: Identity, channel: str, data: Any) -> Any:
        return self._hooks.on_publish(who, channel, _text(data))

    def deliver(self, group: GroupContext, channel: str, data: Any) -> Any:
        return self._hooks.on_deliver(group, channel, _text(data))


def load(path: str | Path, config: Any = None) -> Instance:
    """A fresh instance of the plugin module at ``path`` (as each component instance is),
    initialised with ``config`` (a value, or JSON text as the gateway passes it). Raises
    :class:`Refused` with the reason when ``init`` refuses."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"{path.stem}_{next(_loads)}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hooks = Adapter(module)
    hooks.init(_text({} if config is None else config))
    return Instance(hooks)
