"""{{name}}: upper-cases the ``text`` of every message published to the channels it is bound to
(a starting point: edit on_publish, or define on_subscribe, on_deliver, on_connect)."""

import json

from switchyard_plugin import Forward, Pass


def on_publish(who, channel, data):
    msg = json.loads(data)
    if not isinstance(msg, dict) or not isinstance(msg.get("text"), str):
        return Pass()
    return Forward((channel, {**msg, "text": msg["text"].upper()}))
