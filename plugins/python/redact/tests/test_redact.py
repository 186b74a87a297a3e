"""redact-py's hooks natively, with the SDK's test harness."""

from pathlib import Path

import pytest

from switchyard_plugin import Forward, Identity, Pass, Reject
from switchyard_plugin.testing import Refused, load

REDACT = Path(__file__).parent.parent / "redact.py"
ANN = Identity("ann")


def test_masks_emails_and_cards_at_any_depth_keys_and_numbers_untouched():
    p = load(REDACT)
    data = {"text": "mail ann@example.com", "deep": [{"card": "4111 1111 1111 1111"}], "a@b.cd": 4111111111111111}
    assert p.publish(ANN, "support:1", data) == Forward(
        ("support:1", {"text": "mail [redacted]", "deep": [{"card": "[redacted]"}], "a@b.cd": 4111111111111111})
    )


def test_passes_messages_with_nothing_to_mask():
    p = load(REDACT)
    assert p.publish(ANN, "s", {"text": "hello"}) == Pass()
    assert p.publish(ANN, "s", {"text": "order 123456789012"}) == Pass()
    assert p.publish(ANN, "s", {"text": "x4111111111111111"}) == Pass()


def test_config_mask_and_luhn_and_refusals():
    p = load(REDACT, {"mask": "***", "luhn": True})
    assert p.publish(ANN, "s", {"c": "4111-1111-1111-1111"}) == Forward(("s", {"c": "***"}))
    assert p.publish(ANN, "s", {"c": "4111-1111-1111-1112"}) == Pass()
    with pytest.raises(Refused, match="unknown field `masc`"):
        load(REDACT, {"masc": "x"})
    with pytest.raises(Refused, match="`luhn` must be a boolean"):
        load(REDACT, {"luhn": "yes"})


def test_too_deep_is_refused_not_passed_unscanned():
    deep = "[" * 200 + '"a@b.cd"' + "]" * 200
    assert load(REDACT).publish(ANN, "s", deep) == Reject("cannot inspect message: recursion limit exceeded")
