"""tenant-guard-py's hooks natively."""

from pathlib import Path

import pytest

from switchyard_plugin import Allow, Deliver, Deny, GroupContext, Identity, Pass, Reject, Rewrite, Skip
from switchyard_plugin.testing import Refused, load

PLUGIN = Path(__file__).parent.parent / "tenant_guard.py"
ACME = Identity("ann", "acme")


def g(tenant):
    return GroupContext(tenant, tenant)


def test_tenant_channels_belong_to_their_tenant():
    p = load(PLUGIN)
    assert p.subscribe(ACME, "tenant:acme:orders") == Allow()
    assert p.subscribe(ACME, "tenant:beta:orders") == Deny("tenant:beta:orders belongs to tenant beta")
    assert p.publish(Identity(), "tenant:acme:x", {}) == Reject("tenant:acme:x belongs to tenant acme")
    assert p.publish(ACME, "news", {}) == Pass()


def test_shared_channels_deliver_a_tenants_messages_and_views_to_that_tenant_only():
    p = load(PLUGIN)
    assert p.deliver(g("acme"), "news", {"tenant": "acme", "n": 1}) == Deliver()
    assert p.deliver(g("beta"), "news", {"tenant": "acme", "n": 1}) == Skip()
    assert p.deliver(g("beta"), "news", {"n": 1}) == Deliver()
    assert p.deliver(g("acme"), "news", {"views": {"acme": {"a": 1}}}) == Rewrite({"a": 1})
    assert p.deliver(g("beta"), "news", {"views": {"acme": {"a": 1}}}) == Skip()


def test_config_prefix_and_refusals():
    assert load(PLUGIN, {"prefix": "t:"}).subscribe(ACME, "t:beta:x") == Deny("t:beta:x belongs to tenant beta")
    with pytest.raises(Refused, match="unknown field `prefx`"):
        load(PLUGIN, {"prefx": "t:"})
