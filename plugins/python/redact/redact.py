"""redact, in Python: the same behaviour as plugins/redact (Rust) and plugins/js/redact.

Masks e-mail addresses and card-like numbers in every string value of a published message (at
any depth; object keys and numbers are left alone) and forwards the redacted message to its
own channel; a message with nothing to mask passes unchanged, and is not even parsed when its
raw text cannot hold a match.

Config (all optional): ``{"mask": "[redacted]", "luhn": false}``; with ``luhn`` only digit
runs passing the Luhn checksum count as card numbers.
"""

import json
import re

from switchyard_plugin import Forward, Pass, Reject

DEFAULTS = {"mask": "[redacted]", "luhn": False}
#: Deeper JSON is refused rather than passed unscanned (as the Rust SDK's parser does).
MAX_DEPTH = 128

# local@domain.tld: local part [A-Za-z0-9._%+-], dot-separated [A-Za-z0-9-] labels, the last
# 2+ letters; not glued to more address characters on either side.
EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)
# 13-19 digits, optionally split by single spaces or dashes, not glued to letters or digits.
CARD = re.compile(r"(?<![A-Za-z0-9])[0-9](?:[ -]?[0-9]){12,18}(?![A-Za-z0-9])")
DIGIT = re.compile(r"[0-9]")

config = dict(DEFAULTS)


def init(given):
    global config
    unknown = [k for k in given if k not in DEFAULTS]
    if unknown:
        raise ValueError(f"invalid config: unknown field `{unknown[0]}`, expected `mask` or `luhn`")
    if not isinstance(given.get("mask", ""), str):
        raise ValueError("invalid config: `mask` must be a string")
    if not isinstance(given.get("luhn", False), bool):
        raise ValueError("invalid config: `luhn` must be a boolean")
    config = {**DEFAULTS, **given}


def on_publish(who, channel, data):
    if not may_contain_match(data):
        return Pass()
    try:
        value = json.loads(data)
        if depth(value) > MAX_DEPTH:
            raise ValueError("recursion limit exceeded")
    except (ValueError, RecursionError) as e:
        return Reject(f"cannot inspect message: {e}")
    redacted, changed = redact_value(value)
    return Forward((channel, redacted)) if changed else Pass()


def may_contain_match(data):
    """Cheap test on the raw JSON text: ``\\u`` escapes could spell ``@`` or digits."""
    return "@" in data or "\\u" in data or len(DIGIT.findall(data)) >= 13


def depth(v):
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    return 0


def redact_value(v):
    """``(v with every string redacted, whether anything changed)``."""
    if isinstance(v, str):
        r = redact_string(v)
        return r, r != v
    if isinstance(v, list):
        out = [redact_value(x) for x in v]
        return [x for x, _ in out], any(c for _, c in out)
    if isinstance(v, dict):
        out = {k: redact_value(x) for k, x in v.items()}
        return {k: x for k, (x, _) in out.items()}, any(c for _, c in out.values())
    return v, False


def redact_string(text):
    masked = EMAIL.sub(config["mask"], text)

    def card(m):
        digits = re.sub(r"[^0-9]", "", m.group(0))
        return config["mask"] if not config["luhn"] or luhn(digits) else m.group(0)

    return CARD.sub(card, masked)


def luhn(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0
