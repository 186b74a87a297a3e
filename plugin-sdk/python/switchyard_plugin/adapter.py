"""The plugin module seen through the contract: config parsed before ``init``, an exception
from ``init`` as the refusal, defaults for missing hooks. The component's entry (built by
``switchyard_plugin.build``) and the test harness both go through it."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any, Callable

from . import Accept, Allow, Deliver, Pass


class Refused(Exception):
    """``init`` refused the plugin; the message is the reason the gateway reports."""


class Adapter:
    """A plugin module's hooks with the SDK's defaults and config handling."""

    def __init__(self, module: ModuleType) -> None:
        def hook(name: str, default: Callable[..., Any]) -> Callable[..., Any]:
            fn = getattr(module, name, None)
            return fn if callable(fn) else default

        self._init = getattr(module, "init", None)
        self.on_connect = hook("on_connect", lambda info: Accept())
        self.on_subscribe = hook("on_subscribe", lambda who, channel: Allow())
        self.on_publish = hook("on_publish", lambda who, channel, data: Pass())
        self.on_deliver = hook("on_deliver", lambda group, channel, data: Deliver())

    def init(self, config_text: str) -> None:
        try:
            config = json.loads(config_text) if config_text and config_text != "null" else {}
        except ValueError as e:
            raise Refused(f"invalid config: {e}") from None
        if callable(self._init):
            try:
                self._init(config)
            except Exception as e:  # the plugin's refusal, whatever it raised
                raise Refused(str(e)) from None
