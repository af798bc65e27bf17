"""This module replays chat events through the real pipeline on a simulated clock.

Each input line is one message::

    {"at": "2024-05-01T12:00:00+08:00", "room": "ops", "sender": "platform",
     "text": "Appid: wx…", "mentions_bot": false}

The clock moves to each event's time, running the outbox and the policy's timers
on the way; after the last event it runs on until the outbox is empty. Every
message the bot would send is printed as one JSON line:
``{"at": …, "room": …, "text": …, "mentions": [...]}``. Operators use it to see
what a day of alarms would have produced under a new setting.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from bot.alarm import PLATFORM_TZ
from bot.channels.base import Incoming, Reply
from bot.errors import BotError
from bot.knowledge import Knowledge
from bot.pipeline import AlarmPipeline
from bot.policy import SimulatedClock
from bot.settings import Settings
from bot.store import AlarmStore

logger = logging.getLogger(__name__)


class ReplayError(BotError):
    """An events file has a line that is not an event."""


@dataclass(frozen=True, slots=True)
class ReplayEvent:
    """One message of a replay."""

    at: datetime
    room: str | None
    sender: str
    text: str
    mentions_bot: bool = False

    def to_incoming(self) -> Incoming:
        """The message as a channel would hand it over."""
        return Incoming(
            room=self.room,
            sender=self.sender,
            text=self.text,
            mentions_bot=self.mentions_bot,
            at=self.at,
            sender_id=self.sender,
        )


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """How many events went in and messages came out."""

    events: int
    messages: int


def read_events(lines: Iterable[str]) -> Iterator[ReplayEvent]:
    """Read events from JSON lines, lazily; blank lines are skipped.

    Raises:
        ReplayError: a line is not an event; the message names the line.
    """
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield _event(number, line)


def _event(number: int, line: str) -> ReplayEvent:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ReplayError(f"line {number}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ReplayError(f"line {number}: expected an object, got {line.strip()[:40]}")
    missing = [key for key in ("at", "text") if key not in data]
    if missing:
        raise ReplayError(f"line {number}: missing {', '.join(missing)}")
    try:
        at = datetime.fromisoformat(str(data["at"]))
    except ValueError:
        raise ReplayError(
            f'line {number}: "at" is not an ISO time: {data["at"]!r}'
        ) from None
    room = data.get("room")
    return ReplayEvent(
        at=at if at.tzinfo is not None else at.replace(tzinfo=PLATFORM_TZ),
        room=str(room) if room is not None else None,
        sender=str(data.get("sender") or "someone"),
        text=str(data["text"]),
        mentions_bot=bool(data.get("mentions_bot", False)),
    )


class PrintChannel:
    """A channel that prints each message as a JSON line, stamped by the clock."""

    def __init__(self, clock: SimulatedClock, out: TextIO) -> None:
        self.clock = clock
        self.out = out
        self.messages = 0

    async def say(self, reply: Reply) -> None:
        """Print one message."""
        line = {
            "at": self.clock.now().isoformat(timespec="milliseconds"),
            "room": reply.room if reply.room is not None else reply.to,
            "text": reply.text,
            "mentions": list(reply.mentions),
        }
        self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.out.flush()
        self.messages += 1


async def replay(
    events: Iterable[ReplayEvent], pipeline: AlarmPipeline, clock: SimulatedClock
) -> int:
    """Feed ``events`` through ``pipeline`` on ``clock``; return how many."""
    count = 0
    for event in events:
        await run_until(pipeline, clock, event.at)
        pipeline.handle(event.to_incoming())
        await pipeline.outbox.flush()
        count += 1
    await drain(pipeline, clock)
    return count


async def run_until(
    pipeline: AlarmPipeline, clock: SimulatedClock, when: datetime
) -> None:
    """Run the outbox and the timers up to ``when``, then move the clock there."""
    while (due := pipeline.next_due()) is not None and due <= when:
        clock.set(due)
        pipeline.tick()
        await pipeline.outbox.flush()
    clock.set(when)


async def drain(pipeline: AlarmPipeline, clock: SimulatedClock) -> None:
    """Run on until the outbox is empty."""
    while (due := pipeline.outbox.next_due()) is not None:
        clock.set(due)
        pipeline.tick()
        await pipeline.outbox.flush()


async def run_replay(
    lines: Iterable[str],
    settings: Settings,
    knowledge: Knowledge,
    *,
    db_path: Path | None,
    out: TextIO,
) -> ReplaySummary:
    """Replay the events in ``lines`` and print what the bot would send.

    Args:
        lines: JSON lines, read lazily (a pipe works).
        settings: the settings to replay under.
        knowledge: the knowledge base.
        db_path: the history to use and keep; ``None`` keeps it in memory.
        out: where the messages are printed.
    """
    events = read_events(lines)
    first = next(events, None)
    if first is None:
        return ReplaySummary(0, 0)
    clock = SimulatedClock(first.at)
    channel = PrintChannel(clock, out)
    store = AlarmStore(db_path)
    # A replay answers what the bot would have said; it never probes real URLs.
    settings = settings.model_copy(update={"probes": {}})
    pipeline = AlarmPipeline.open(
        knowledge, settings, channel, clock=clock, store=store, editable=False
    )
    try:
        count = await replay(itertools.chain([first], events), pipeline, clock)
    finally:
        pipeline.close()
    return ReplaySummary(count, channel.messages)
