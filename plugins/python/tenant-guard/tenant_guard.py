"""tenant-guard, in Python: the same behaviour as plugins/tenant-guard (Rust).

- Channels ``<prefix><tenant>:...`` (default prefix ``tenant:``) may be subscribed and
  published only by connections whose identity has that tenant; others are refused.
- On every other channel, a message whose data is an object with a string ``tenant`` field is
  delivered only to that tenant's subscribers (the deliver hook runs once per tenant group).
- There, a message with an object ``views`` field gives each tenant's subscribers only their
  view (as the whole message); tenants without a view receive nothing.

Config (optional): ``{"prefix": "tenant:"}``.
"""

import json

from switchyard_plugin import Allow, Deliver, Deny, Pass, Reject, Rewrite, Skip

prefix = "tenant:"


def init(config):
    global prefix
    unknown = [k for k in config if k != "prefix"]
    if unknown:
        raise ValueError(f"invalid config: unknown field `{unknown[0]}`, expected `prefix`")
    if not isinstance(config.get("prefix", ""), str):
        raise ValueError("invalid config: `prefix` must be a string")
    prefix = config.get("prefix", "tenant:")


def owner(channel):
    """The tenant owning ``channel``, if it is a tenant channel."""
    return channel[len(prefix):].split(":")[0] if channel.startswith(prefix) else None


def refusal(who, channel):
    o = owner(channel)
    return f"{channel} belongs to tenant {o}" if o is not None and who.tenant != o else None


def on_subscribe(who, channel):
    why = refusal(who, channel)
    return Deny(why) if why else Allow()


def on_publish(who, channel, data):
    why = refusal(who, channel)
    return Reject(why) if why else Pass()


def on_deliver(group, channel, data):
    if owner(channel) is not None or not ('"tenant"' in data or '"views"' in data):
        return Deliver()
    try:
        msg = json.loads(data)
    except ValueError:
        return Deliver()
    if not isinstance(msg, dict):
        return Deliver()
    views = msg.get("views")
    if isinstance(views, dict):
        view = views.get(group.tenant) if group.tenant is not None else None
        return Skip() if view is None and group.tenant not in views else Rewrite(view)
    tenant = msg.get("tenant")
    if isinstance(tenant, str) and group.tenant != tenant:
        return Skip()
    return Deliver()
