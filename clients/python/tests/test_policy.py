"""The reconnect policy's pure parts: backoff bounds and which close codes end the client."""

from __future__ import annotations

from switchyard_client import Backoff, may_reconnect


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    top = Backoff(initial=0.5, maximum=8.0, random=lambda: 1.0)
    assert [top.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert Backoff(random=lambda: 0.0).delay(3) == 0.0
    assert Backoff(maximum=30.0).ceiling(10_000) == 30.0  # no overflow


def test_close_codes_that_end_the_client() -> None:
    for code in (4004, 4006, 4500, 4999):
        assert not may_reconnect(code), code
    for code in (None, 1000, 1001, 1006, 1009, 4001, 4002, 4003, 4005, 4100, 4499):
        assert may_reconnect(code), code
