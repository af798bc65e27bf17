"""Fixtures for the end-to-end tests: the Node gateway and the real ``alarm-bot run``.

These tests fail, never skip, when Node or the gateway's ``node_modules`` is
missing: a machine that lost its ``scripts/gateway-install`` step must not pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_harness import World, missing_prerequisites, start_world, stop_world

from bot.dispatch import Dispatcher
from bot.knowledge import load_knowledge


@pytest.fixture(scope="session")
def prerequisites() -> None:
    """Fail every end-to-end test when the gateway cannot run here."""
    problem = missing_prerequisites()
    if problem is not None:
        pytest.fail(f"end-to-end tests cannot run: {problem}", pytrace=False)


@pytest.fixture(scope="module")
def world(
    prerequisites: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One gateway and one bot shared by a module's tests."""
    started = start_world(tmp_path_factory.mktemp("e2e"))
    yield started
    stop_world(started)


@pytest.fixture(scope="module")
def reference() -> Dispatcher:
    """The real dispatcher, set up as the bot under test is, to compute replies."""
    return Dispatcher(load_knowledge())
