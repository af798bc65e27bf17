"""This module is the outbox: the one queue every outgoing message goes through.

It paces what the bot says so WeChat never sees a flood from it:

* at most ``room_per_minute`` messages to a room and ``global_per_minute`` in all
  within any ``period_s``; at least ``room_gap_s`` between two messages and
  ``switch_gap_s`` when the next one goes to another room;
* every message fits in ``message_bytes``, split on line boundaries (the
  @-mentions WeChat prepends count too);
* when a room's budget is spent, alarm replies waiting for it collapse into one
  digest per room ("37 more alarms for 12 accounts ..."), which goes out at the
  next free slot and at most once per ``digest_interval_s``: never dropped;
* a failed (or hung, ``send_timeout_s``) send is retried with backoff; one that
  keeps failing is recorded and reported at the top of the room's next message.

Commands and error replies are never collapsed and go first. The outbox keeps
time through a ``Clock``, so a replay runs it on a simulated one: ``next_due``
says when the next message may go and ``flush`` sends what is due now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from bot.channels.base import Channel, Reply
from bot.metrics import Metrics
from bot.policy import Clock
from bot.render import MESSAGE_LIMIT, split_message

logger = logging.getLogger(__name__)

COLLAPSIBLE_KINDS = frozenset({"alarm", "update", "recovery", "probe"})
# NOTE: a send scheduled exactly one period after the one it must follow would
# put both ends on a closed 60-second span; one millisecond keeps them apart.
_EPSILON = timedelta(milliseconds=1)
_PREVIEW_CHARS = 60


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """How fast and how much the bot may say; see the module docstring."""

    room_per_minute: int = 20
    global_per_minute: int = 40
    period_s: float = 60.0
    room_gap_s: float = 1.0
    switch_gap_s: float = 3.0
    message_bytes: int = MESSAGE_LIMIT
    reserve: int = 3
    digest_interval_s: float = 60.0
    retry_attempts: int = 5
    retry_first_s: float = 1.0
    retry_cap_s: float = 60.0
    send_timeout_s: float = 30.0

    def backoff(self, attempts: int) -> timedelta:
        """The wait before retry number ``attempts`` (1-based)."""
        seconds = self.retry_first_s * 2 ** (attempts - 1)
        return timedelta(seconds=min(seconds, self.retry_cap_s))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to post, before pacing and splitting.

    ``body`` is the text, or a function that renders it: rendering a full
    diagnosis is costly, and a reply folded into a digest is never rendered.
    ``alarms``, ``appids`` and ``types`` describe the alarms it answers, for the
    digest it may collapse into.
    """

    room: str | None
    kind: str
    body: str | Callable[[], str]
    mentions: tuple[str, ...] = ()
    to: str | None = None
    alarms: int = 0
    appids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    @property
    def is_collapsible(self) -> bool:
        """Whether the outbox may fold this into a digest when pressed."""
        return self.kind in COLLAPSIBLE_KINDS and self.room is not None

    def text(self) -> str:
        """Render the body."""
        return self.body if isinstance(self.body, str) else self.body()


@dataclass(slots=True)
class Digest:
    """The alarm replies of one room that waited too long, counted together."""

    room: str
    since: datetime
    reply_id: int | None = None
    alarms: int = 0
    replies: int = 0
    appids: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    mentions: dict[str, None] = field(default_factory=dict)

    def add(self, item: Outgoing) -> None:
        """Count ``item`` in."""
        self.replies += 1
        self.alarms += item.alarms
        self.appids.update(item.appids)
        self.types.update(item.types)
        self.mentions.update(dict.fromkeys(item.mentions))


@dataclass(frozen=True, slots=True)
class SendFailure:
    """A message the outbox gave up on."""

    at: datetime
    room: str | None
    kind: str
    error: str
    preview: str
    reply_id: int | None


class OutboxTexts(Protocol):
    """Renders the texts the outbox writes itself."""

    def digest(self, digest: Digest) -> str:
        """The digest message of one room."""
        ...

    def failures(self, failures: Sequence[SendFailure]) -> str:
        """The report of messages that could not be sent."""
        ...


class OutboxJournal(Protocol):
    """Where the outbox records replies (``AlarmStore`` is one)."""

    def add_reply(
        self,
        *,
        room: str | None,
        recipient: str | None,
        kind: str,
        text: str | None,
        mentions: Sequence[str],
        alarms: int,
        appids: Sequence[str],
        types: Sequence[str],
        at: datetime,
    ) -> int:
        """Record a queued reply; return its id."""
        ...

    def finish_reply(
        self,
        reply_id: int,
        status: str,
        at: datetime,
        *,
        text: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record that a reply was sent or given up on."""
        ...


@dataclass(slots=True)
class _Queued:
    """A message in a room's queue, possibly part-sent or waiting to retry."""

    seq: int
    room: str | None
    to: str | None
    kind: str
    priority: int
    mentions: tuple[str, ...]
    reply_id: int | None
    text: str = ""
    parts: list[str] = field(default_factory=list)
    digest: Digest | None = None
    sent_parts: int = 0
    attempts: int = 0
    not_before: datetime | None = None
    carried: list[SendFailure] = field(default_factory=list)

    @property
    def parts_left(self) -> int:
        return (
            1
            if self.digest is not None and not self.parts
            else (len(self.parts) - self.sent_parts)
        )


def _recent(sent: deque[datetime], since: datetime) -> int:
    """How many sends in ``sent`` (oldest first) came after ``since``; the older
    ones are dropped, so counting costs nothing per message."""
    while sent and sent[0] <= since:
        sent.popleft()
    return len(sent)


@dataclass(slots=True)
class _Room:
    """The queue and the send history of one room (or one direct contact)."""

    sent: deque[datetime]
    queue: list[_Queued] = field(default_factory=list)
    current: _Queued | None = None
    last_at: datetime | None = None
    digest: Digest | None = None
    last_digest_at: datetime | None = None
    failures: list[SendFailure] = field(default_factory=list)

    def head(self) -> _Queued | None:
        if self.current is not None:
            return self.current
        return min(self.queue, key=lambda q: (q.priority, q.seq), default=None)

    def used(self, now: datetime, period: timedelta) -> int:
        return _recent(self.sent, now - period)

    def queued_parts(self) -> int:
        pending = [*self.queue, self.current] if self.current else self.queue
        return sum(q.parts_left for q in pending)


class Outbox:
    """Paces, splits, digests and retries every message the bot posts.

    Args:
        channel: where messages go (anything with ``async say(Reply)``).
        clock: the time source.
        limits: the pacing rules.
        texts: renders digests and failure reports.
        journal: records every reply; ``None`` records nothing.
        metrics: counters to bump; ``None`` keeps a private set.
    """

    def __init__(
        self,
        channel: Channel,
        clock: Clock,
        limits: OutboxLimits,
        *,
        texts: OutboxTexts,
        journal: OutboxJournal | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.channel = channel
        self.clock = clock
        self.limits = limits
        self.texts = texts
        self.journal = journal
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth = lambda: self.depth
        self._period = timedelta(seconds=limits.period_s)
        self._rooms: dict[str, _Room] = {}
        self._sent: deque[datetime] = deque(maxlen=limits.global_per_minute)
        self._last_key: str | None = None
        self._last_at: datetime | None = None
        self._seq = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def depth(self) -> int:
        """Messages waiting to be sent (a digest counts once)."""
        return sum(
            len(room.queue) + (room.current is not None)
            for room in self._rooms.values()
        )

    # ------------------------------------------------------------ queueing

    def submit(self, item: Outgoing) -> int | None:
        """Queue ``item``, or fold it into its room's digest when the room's budget
        is spent; return the id of the reply that will carry it."""
        now = self.clock.now()
        key = _room_key(item.room, item.to)
        room = self._room(key)
        if item.is_collapsible and not self._admits(room, now):
            return self._fold(room, item, now)
        text = item.text()
        queued = self._queue(room, item.room, item.to, item.kind, item.mentions, text)
        if queued is None:
            return None
        if self.journal is not None:
            queued.reply_id = self.journal.add_reply(
                room=item.room,
                recipient=item.to,
                kind=item.kind,
                text=text,
                mentions=item.mentions,
                alarms=item.alarms,
                appids=item.appids,
                types=item.types,
                at=now,
            )
        return queued.reply_id

    def restore(
        self,
        reply_id: int,
        *,
        room: str | None,
        to: str | None,
        kind: str,
        text: str | None,
        mentions: tuple[str, ...],
        since: datetime,
        alarms: int = 0,
        appids: dict[str, int] | None = None,
        types: dict[str, int] | None = None,
    ) -> None:
        """Queue again a reply recorded as queued before a restart."""
        target = self._room(_room_key(room, to))
        if kind == "digest" and room is not None:
            digest = Digest(room, since, reply_id, alarms=alarms, replies=alarms)
            digest.appids.update(appids or {})
            digest.types.update(types or {})
            digest.mentions.update(dict.fromkeys(mentions))
            self._queue_digest(target, digest)
            return
        queued = self._queue(target, room, to, kind, mentions, text or "")
        if queued is not None:
            queued.reply_id = reply_id

    def _queue(
        self,
        room: _Room,
        room_name: str | None,
        to: str | None,
        kind: str,
        mentions: tuple[str, ...],
        text: str,
    ) -> _Queued | None:
        parts = self._split(text, mentions)
        if not parts:
            return None
        self._seq += 1
        queued = _Queued(
            seq=self._seq,
            room=room_name,
            to=to,
            kind=kind,
            priority=_priority(kind, mentions),
            mentions=mentions,
            reply_id=None,
            text=text,
            parts=parts,
        )
        room.queue.append(queued)
        self._woken()
        return queued

    def _fold(self, room: _Room, item: Outgoing, now: datetime) -> int | None:
        digest = room.digest
        if digest is None:
            digest = Digest(room=item.room or "", since=now)
            if self.journal is not None:
                digest.reply_id = self.journal.add_reply(
                    room=item.room,
                    recipient=None,
                    kind="digest",
                    text=None,
                    mentions=(),
                    alarms=0,
                    appids=(),
                    types=(),
                    at=now,
                )
            self._queue_digest(room, digest)
        digest.add(item)
        self.metrics.suppressed["digested"] += item.alarms
        return digest.reply_id

    def _queue_digest(self, room: _Room, digest: Digest) -> None:
        self._seq += 1
        room.digest = digest
        room.queue.append(
            _Queued(
                seq=self._seq,
                room=digest.room,
                to=None,
                kind="digest",
                priority=3,
                mentions=(),
                reply_id=digest.reply_id,
                digest=digest,
            )
        )
        self._woken()

    def _admits(self, room: _Room, now: datetime) -> bool:
        """Whether a collapsible message fits the budget, keeping ``reserve``
        slots free for commands and the digest."""
        limits = self.limits
        in_room = room.used(now, self._period) + room.queued_parts() + 1
        if in_room > limits.room_per_minute - limits.reserve:
            return False
        everywhere = _recent(self._sent, now - self._period)
        everywhere += sum(r.queued_parts() for r in self._rooms.values()) + 1
        return everywhere <= limits.global_per_minute - limits.reserve

    def _split(self, text: str, mentions: tuple[str, ...]) -> list[str]:
        # WeChat prepends "@name " for every mention to the first part.
        overhead = sum(len(m.encode()) + 2 for m in mentions)
        return split_message(text, max(self.limits.message_bytes - overhead, 64))

    def _room(self, key: str) -> _Room:
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = _Room(
                sent=deque(maxlen=self.limits.room_per_minute)
            )
        return room

    def _woken(self) -> None:
        self._idle.clear()
        self._wake.set()

    # ------------------------------------------------------------- sending

    def next_due(self) -> datetime | None:
        """When the next message may go, or ``None`` when nothing waits."""
        now = self.clock.now()
        dues = [self._due(key, room, now) for key, room in self._rooms.items()]
        return min((due for due, _ in dues if due is not None), default=None)

    def _due(self, key: str, room: _Room, now: datetime) -> tuple[datetime | None, int]:
        head = room.head()
        if head is None:
            return None, 0
        due = self._slot(key, room, now)
        if head.not_before is not None:
            due = max(due, head.not_before)
        if head.digest is not None and room.last_digest_at is not None:
            interval = timedelta(seconds=self.limits.digest_interval_s)
            due = max(due, room.last_digest_at + interval)
        return due, head.priority

    def _slot(self, key: str, room: _Room, now: datetime) -> datetime:
        """The earliest time the pacing rules let a message go to ``room``."""
        limits = self.limits
        due = now
        if self._last_at is not None:
            gap = limits.room_gap_s if key == self._last_key else limits.switch_gap_s
            due = max(due, self._last_at + timedelta(seconds=gap))
        if room.last_at is not None:
            due = max(due, room.last_at + timedelta(seconds=limits.room_gap_s))
        # The deques hold the last cap sends: the oldest must be a period back.
        if len(room.sent) == room.sent.maxlen:
            due = max(due, room.sent[0] + self._period + _EPSILON)
        if len(self._sent) == self._sent.maxlen:
            due = max(due, self._sent[0] + self._period + _EPSILON)
        return due

    async def flush(self) -> int:
        """Send every message that is due now; return how many were sent."""
        sent = 0
        while True:
            now = self.clock.now()
            pick = self._pick(now)
            if pick is None:
                break
            if await self._send_one(*pick, now):
                sent += 1
        if self.depth == 0:
            self._idle.set()
        return sent

    def _pick(self, now: datetime) -> tuple[str, _Room, _Queued] | None:
        best: tuple[datetime, int, int, str] | None = None
        for key, room in self._rooms.items():
            due, priority = self._due(key, room, now)
            head = room.head()
            if due is None or head is None or due > now:
                continue
            rank = (due, priority, head.seq, key)
            if best is None or rank < best:
                best = rank
        if best is None:
            return None
        room = self._rooms[best[3]]
        head = room.head()
        return (best[3], room, head) if head is not None else None

    async def _send_one(
        self, key: str, room: _Room, queued: _Queued, now: datetime
    ) -> bool:
        if room.current is None:
            room.queue.remove(queued)
            room.current = queued
        if queued.digest is not None and not queued.parts:
            self._close_digest(room, queued, queued.digest, now)
        self._carry_failures(room, queued)
        index = queued.sent_parts
        reply = Reply(
            room=queued.room,
            text=queued.parts[index],
            mentions=queued.mentions if index == 0 else (),
            to=queued.to,
            kind=queued.kind,
        )
        try:
            # A hung gateway must not stall every room: a send that takes too
            # long counts as failed (and is retried).
            # NOTE: asyncio.timeout, not wait_for: on 3.11 wait_for wraps the send
            # in a task of its own, a loop turn more on every message.
            async with asyncio.timeout(self.limits.send_timeout_s):
                await self.channel.say(reply)
        except Exception as exc:  # any transport failure is worth a retry
            self._note_send(key, room, now)
            self._retry_or_give_up(room, queued, now, exc)
            return False
        self._note_send(key, room, now)
        queued.attempts, queued.not_before = 0, None
        queued.sent_parts += 1
        if queued.sent_parts == len(queued.parts):
            self._finish(room, queued, now)
        return True

    def _close_digest(
        self, room: _Room, queued: _Queued, digest: Digest, now: datetime
    ) -> None:
        """Render the digest; alarms folded from now on start the next one."""
        if room.digest is digest:
            room.digest = None
        room.last_digest_at = now
        queued.mentions = tuple(digest.mentions)
        queued.text = self.texts.digest(digest)
        queued.parts = self._split(queued.text, queued.mentions)

    def _carry_failures(self, room: _Room, queued: _Queued) -> None:
        """Put the report of failed messages at the top of this one."""
        if not room.failures or queued.carried:
            return
        report = self.texts.failures(room.failures)
        index = queued.sent_parts
        combined = f"{report}\n\n{queued.parts[index]}"
        queued.parts[index : index + 1] = self._split(combined, queued.mentions)
        queued.carried, room.failures = room.failures, []

    def _note_send(self, key: str, room: _Room, now: datetime) -> None:
        # NOTE: failed attempts count too: WeChat may have seen them.
        room.sent.append(now)
        room.last_at = now
        self._sent.append(now)
        self._last_key, self._last_at = key, now

    def _retry_or_give_up(
        self, room: _Room, queued: _Queued, now: datetime, exc: Exception
    ) -> None:
        queued.attempts += 1
        error = f"{type(exc).__name__}: {exc}"[:200]
        if queued.attempts < self.limits.retry_attempts:
            queued.not_before = now + self.limits.backoff(queued.attempts)
            logger.warning(
                "send failed reply=%s room=%s attempt=%d, retrying at %s: %s",
                queued.reply_id,
                queued.room,
                queued.attempts,
                queued.not_before.isoformat(),
                error,
            )
            return
        logger.error(
            "send failed reply=%s room=%s kind=%s: giving up after %d attempts: %s",
            queued.reply_id,
            queued.room,
            queued.kind,
            queued.attempts,
            error,
        )
        preview = " ".join(queued.text.split())[:_PREVIEW_CHARS]
        failure = SendFailure(
            now, queued.room, queued.kind, error, preview, queued.reply_id
        )
        room.failures = [*queued.carried, *room.failures, failure]
        room.current = None
        self.metrics.send_failures += 1
        if self.journal is not None and queued.reply_id is not None:
            self.journal.finish_reply(queued.reply_id, "failed", now, error=error)

    def _finish(self, room: _Room, queued: _Queued, now: datetime) -> None:
        room.current = None
        self.metrics.replies[queued.kind] += 1
        if self.journal is not None and queued.reply_id is not None:
            self.journal.finish_reply(queued.reply_id, "sent", now, text=queued.text)

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Send on the wall clock until cancelled."""
        while True:
            try:
                await self.flush()
            except Exception:
                logger.exception("outbox flush crashed; carrying on")
            due = self.next_due()
            self._wake.clear()
            timeout = None
            if due is not None:
                timeout = max(0.0, (due - self.clock.now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def join(self) -> None:
        """Wait until every queued message is sent or given up on (needs ``run``)."""
        await self._idle.wait()


def _room_key(room: str | None, to: str | None) -> str:
    return f"#{room}" if room is not None else f"@{to or ''}"


def _priority(kind: str, mentions: tuple[str, ...]) -> int:
    """Commands and errors first, then escalations, then the rest."""
    if kind not in COLLAPSIBLE_KINDS:
        return 0
    return 1 if mentions else 2
