"""The SDK natively: the adapter the component is built with (config parsing, refusals,
default hooks), decisions, log and clock through the test host."""

from pathlib import Path

import pytest

from switchyard_plugin import Accept, Allow, ConnectInfo, Deliver, Forward, GroupContext, Identity, Reject
from switchyard_plugin.testing import LogRecord, Refused, host, load

SHOUT = Path(__file__).parent / "fixtures" / "shout.py"


def test_hooks_left_out_keep_their_defaults():
    p = load(SHOUT)
    assert p.connect(ConnectInfo("127.0.0.1:1", [], "", Identity())) == Accept()
    assert p.subscribe(Identity("ann"), "c") == Allow()
    assert p.deliver(GroupContext("acme", "acme"), "c", {"a": 1}) == Deliver()


def test_config_arrives_parsed_and_init_errors_refuse_with_their_message():
    load(SHOUT, "")
    load(SHOUT, "null")
    with pytest.raises(Refused, match="^max_len must be an integer$"):
        load(SHOUT, {"max_len": "x"})
    with pytest.raises(Refused, match="^invalid config: "):
        load(SHOUT, "{nope")
    assert load(SHOUT, {"max_len": 3}).publish(Identity("ann"), "c", {"text": "long"}) == Reject("too long")


def test_log_and_clock_go_through_the_host():
    host.logs.clear()
    host.now = 1_700_000_000_000
    try:
        p = load(SHOUT)
        assert p.publish(Identity("ann"), "chat:1", {"text": "hi"}) == Forward(
            ("chat:1", {"text": "HI", "ts": 1_700_000_000_000})
        )
        assert host.logs == [LogRecord("info", "ann shouted on chat:1", [("len", "2")])]
    finally:
        host.now = None


def test_each_load_is_a_fresh_instance():
    strict = load(SHOUT, {"max_len": 3})
    load(SHOUT, {})
    assert strict.publish(Identity("ann"), "c", {"text": "long"}) == Reject("too long")
