"""Shared fixtures: the real knowledge base, a dispatcher and a clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.dispatch import Dispatcher
from bot.knowledge import Knowledge, load_knowledge

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's ALARM_BOT_* or WECHATY_* settings."""
    for name in list(os.environ):
        if name.startswith(("ALARM_BOT_", "WECHATY_")):
            monkeypatch.delenv(name)
    return


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return load_knowledge()


@pytest.fixture
def dispatcher(knowledge: Knowledge) -> Dispatcher:
    return Dispatcher(knowledge, admins=("admin",))
