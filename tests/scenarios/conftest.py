"""The ``bot`` fixture: the whole pipeline on a simulated clock, no chat network.

Push messages with ``bot.post`` (alarm text, commands, questions), move the
clock with ``bot.advance``, and read what the group would see with ``bot.pop``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.channels.base import Incoming, Reply
from bot.knowledge import Knowledge
from bot.pipeline import AlarmPipeline
from bot.policy import SimulatedClock
from bot.replay import drain, run_until
from bot.settings import Settings
from bot.store import AlarmStore

from .storm import START

ROOM = "ops"


@dataclass
class Said:
    """One message as the group saw it."""

    at: datetime
    room: str | None
    text: str
    mentions: tuple[str, ...]


@dataclass
class RecordingChannel:
    """Keeps every message, stamped with the simulated time."""

    clock: SimulatedClock
    said: list[Said] = field(default_factory=list)
    failures: int = 0

    async def say(self, reply: Reply) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("gateway unreachable")
        self.said.append(Said(self.clock.now(), reply.room, reply.text, reply.mentions))


class BotHarness:
    """Drives an ``AlarmPipeline`` on a simulated clock."""

    def __init__(
        self, pipeline: AlarmPipeline, clock: SimulatedClock, channel: RecordingChannel
    ) -> None:
        self.pipeline = pipeline
        self.clock = clock
        self.channel = channel
        self._seen = 0

    @property
    def store(self) -> AlarmStore:
        return self.pipeline.store

    async def post(
        self,
        text: str,
        *,
        sender: str = "platform",
        room: str | None = ROOM,
        mention: bool = False,
        after: float = 0.0,
    ) -> list[Said]:
        """Post a message ``after`` seconds from now; return what was said at once."""
        await self.advance(after)
        self.pipeline.handle(
            Incoming(
                room=room,
                sender=sender,
                text=text,
                mentions_bot=mention,
                at=self.clock.now(),
                sender_id=sender,
            )
        )
        await self.pipeline.outbox.flush()
        return self.pop()

    async def advance(self, seconds: float) -> list[Said]:
        """Let ``seconds`` pass, running the outbox and the timers."""
        await run_until(
            self.pipeline, self.clock, self.clock.now() + timedelta(seconds=seconds)
        )
        return self.pop()

    async def minutes(self, minutes: float) -> list[Said]:
        return await self.advance(minutes * 60)

    async def drain(self) -> list[Said]:
        await drain(self.pipeline, self.clock)
        return self.pop()

    def pop(self) -> list[Said]:
        """The messages said since the last pop."""
        fresh = self.channel.said[self._seen :]
        self._seen = len(self.channel.said)
        return fresh

    def dispositions(self) -> list[str]:
        rows = self.store._db.execute("SELECT disposition FROM alarms ORDER BY id")
        return [row[0] for row in rows]


def make_bot(
    knowledge: Knowledge,
    *,
    db_path: Path | None = None,
    start: datetime = START,
    **settings: Any,
) -> BotHarness:
    clock = SimulatedClock(start)
    channel = RecordingChannel(clock)
    values: dict[str, Any] = {"admins": ["admin"], "db_path": db_path, **settings}
    pipeline = AlarmPipeline.open(
        knowledge, Settings.model_validate(values), channel, clock=clock
    )
    return BotHarness(pipeline, clock, channel)


@pytest.fixture
async def bot(knowledge: Knowledge) -> AsyncIterator[BotHarness]:
    harness = make_bot(
        knowledge,
        owners={"wx00000000000000aa": ["alice"]},
        default_owners=["oncall"],
        platform_owners=["platform-team"],
    )
    yield harness
    harness.pipeline.close()
