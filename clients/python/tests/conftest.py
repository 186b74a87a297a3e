"""Fixtures: real redis-server and gateway processes, all killed in teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import Gateway, Processes, Redis, gateway_config


@pytest.fixture
def procs() -> Iterator[Processes]:
    """The test's process registry; every process in it is killed when the test ends."""
    registry = Processes()
    try:
        yield registry
    finally:
        registry.kill_all()


@pytest.fixture
def redis(procs: Processes) -> Redis:
    """A private redis-server."""
    return Redis(procs)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(procs: Processes, tmp_path: Path) -> GatewayFactory:
    """Starts a node: ``make_gateway("a", redis_url=..., limits="...", auth="...")``."""

    def make(name: str, *, start: bool = True, **config: str) -> Gateway:
        gateway = Gateway(procs, tmp_path, gateway_config(node_id=name, **config), name)
        return gateway.start() if start else gateway

    return make


@pytest.fixture
def cluster(redis: Redis, make_gateway: GatewayFactory) -> tuple[Gateway, Gateway]:
    """Two nodes, a and b, sharing the test's Redis."""
    return make_gateway("a", redis_url=redis.url), make_gateway("b", redis_url=redis.url)


@pytest.fixture
def single(make_gateway: GatewayFactory) -> Gateway:
    """One node with its embedded broker."""
    return make_gateway("solo")
