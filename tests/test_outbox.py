from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from bot.alarm import PLATFORM_TZ
from bot.channels.base import Reply
from bot.metrics import Metrics
from bot.outbox import Digest, Outbox, OutboxLimits, Outgoing, SendFailure
from bot.policy import SimulatedClock, SystemClock
from bot.store import AlarmStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=PLATFORM_TZ)


class Texts:
    def digest(self, digest: Digest) -> str:
        appids = ",".join(sorted(digest.appids))
        return f"DIGEST {digest.alarms} alarms {len(digest.appids)} accounts {appids}"

    def failures(self, failures: Sequence[SendFailure]) -> str:
        return f"FAILED {len(failures)}: " + "; ".join(f.preview for f in failures)


class Channel:
    def __init__(self, clock: SimulatedClock) -> None:
        self.clock = clock
        self.sent: list[tuple[datetime, Reply]] = []
        self.failures = 0

    async def say(self, reply: Reply) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("down")
        self.sent.append((self.clock.now(), reply))

    @property
    def texts(self) -> list[str]:
        return [reply.text for _, reply in self.sent]

    @property
    def times(self) -> list[float]:
        return [(at - T0).total_seconds() for at, _ in self.sent]


class Harness:
    def __init__(self, limits: OutboxLimits | None = None, journal=None) -> None:
        limits = limits or OutboxLimits()
        self.clock = SimulatedClock(T0)
        self.channel = Channel(self.clock)
        self.metrics = Metrics()
        self.outbox = Outbox(
            self.channel,
            self.clock,
            limits,
            texts=Texts(),
            journal=journal,
            metrics=self.metrics,
        )

    async def run(self, until: float | None = None) -> None:
        """Send everything (or up to ``until`` seconds) on the simulated clock."""
        await self.outbox.flush()
        while (due := self.outbox.next_due()) is not None:
            if until is not None and due > T0 + timedelta(seconds=until):
                break
            self.clock.set(due)
            await self.outbox.flush()


def alarm(room: str = "ops", text: str = "reply", appid: str = "wx1", **kw) -> Outgoing:
    return Outgoing(
        room, "alarm", text, alarms=1, appids=(appid,), types=("markfail",), **kw
    )


def command(room: str = "ops", text: str = "answer") -> Outgoing:
    return Outgoing(room, "command", text, mentions=("bob",))


def most_in_a_minute(times: list[float]) -> int:
    return max(sum(1 for u in times if t <= u <= t + 60) for t in times)


async def test_first_message_leaves_at_once_then_one_a_second() -> None:
    bot = Harness()
    for _ in range(3):
        bot.outbox.submit(command())

    await bot.run()

    assert bot.channel.times == [0, 1, 2]


async def test_switching_rooms_waits_three_seconds() -> None:
    bot = Harness()
    bot.outbox.submit(command("a"))
    bot.outbox.submit(command("b"))
    bot.outbox.submit(command("b"))

    await bot.run()

    assert bot.channel.times == [0, 3, 4]


async def test_per_room_cap_holds_in_every_minute() -> None:
    bot = Harness()
    for n in range(45):
        bot.outbox.submit(command(text=f"c{n}"))

    await bot.run()

    assert len(bot.channel.sent) == 45  # commands are never collapsed
    assert most_in_a_minute(bot.channel.times) == 20
    assert bot.channel.texts == [f"c{n}" for n in range(45)]


async def test_global_cap_holds_across_rooms() -> None:
    limits = OutboxLimits(room_per_minute=20, global_per_minute=30, switch_gap_s=0)
    bot = Harness(limits)
    for n in range(60):
        bot.outbox.submit(command(room=f"r{n % 3}"))

    await bot.run()

    assert most_in_a_minute(bot.channel.times) == 30


async def test_long_text_is_split_on_lines_and_mentions_ride_the_first_part() -> None:
    bot = Harness(OutboxLimits(message_bytes=300))
    text = "\n".join(f"第 {n} 行：一些很长的说明文字" for n in range(40))
    bot.outbox.submit(Outgoing("ops", "command", text, mentions=("alice", "bob")))

    await bot.run()

    parts = [reply for _, reply in bot.channel.sent]
    assert len(parts) > 3
    assert all(len(p.text.encode()) + len("alice  bob  ") <= 300 for p in parts)
    assert "\n".join(p.text for p in parts) == text
    assert [p.mentions for p in parts[:2]] == [("alice", "bob"), ()]


async def test_when_the_budget_is_spent_alarm_replies_collapse_into_a_digest() -> None:
    bot = Harness()
    rendered: list[int] = []

    def lazy(n: int) -> Outgoing:
        def body() -> str:
            rendered.append(n)
            return f"reply {n}"

        return Outgoing("ops", "alarm", body, alarms=1, appids=(f"wx{n % 7}",))

    ids = [bot.outbox.submit(lazy(n)) for n in range(100)]
    await bot.run()

    assert rendered == list(range(17))  # 20 per minute, 3 kept in reserve
    assert bot.channel.texts[:17] == [f"reply {n}" for n in range(17)]
    assert bot.channel.texts[17:] == [
        "DIGEST 83 alarms 7 accounts wx0,wx1,wx2,wx3,wx4,wx5,wx6"
    ]
    assert ids[17:] == [None] * 83  # no journal, no ids
    assert bot.metrics.suppressed["digested"] == 83


async def test_digest_carries_the_mentions_of_what_it_folded() -> None:
    bot = Harness(OutboxLimits(room_per_minute=5, reserve=4))
    bot.outbox.submit(alarm())
    bot.outbox.submit(alarm(mentions=("alice",)))
    bot.outbox.submit(alarm(mentions=("alice", "bob")))

    await bot.run()

    assert [r.mentions for _, r in bot.channel.sent] == [(), ("alice", "bob")]


async def test_commands_jump_the_queue_and_are_never_folded() -> None:
    bot = Harness()
    bot.outbox.submit(alarm())
    await bot.outbox.flush()  # the first one is out at once
    for _ in range(16):
        bot.outbox.submit(alarm())
    bot.outbox.submit(alarm(text="folded"))
    bot.outbox.submit(command(text="urgent"))

    await bot.run()

    assert bot.channel.texts[1] == "urgent"
    assert bot.channel.texts[-1].startswith("DIGEST 1 alarms")


async def test_a_second_digest_waits_a_minute_after_the_first() -> None:
    bot = Harness(OutboxLimits(room_per_minute=4, reserve=3))
    bot.outbox.submit(alarm(text="full"))
    bot.outbox.submit(alarm(appid="wx2"))
    await bot.run(until=5)
    bot.outbox.submit(alarm(appid="wx3"))

    await bot.run()

    assert bot.channel.texts == [
        "full",
        "DIGEST 1 alarms 1 accounts wx2",
        "DIGEST 1 alarms 1 accounts wx3",
    ]
    assert bot.channel.times == [0, 1, 61]


async def test_a_failed_send_is_retried_with_backoff() -> None:
    bot = Harness()
    bot.channel.failures = 2
    bot.outbox.submit(command(text="hello"))

    await bot.run()

    assert bot.channel.texts == ["hello"]
    assert bot.channel.times == [3]  # tried at 0, 1 (+1 s), 3 (+2 s)
    assert bot.metrics.replies["command"] == 1


async def test_a_message_that_keeps_failing_is_recorded_and_reported_next(
    tmp_path,
) -> None:
    store = AlarmStore(tmp_path / "bot.db")
    bot = Harness(OutboxLimits(retry_attempts=3), journal=store)
    bot.channel.failures = 3
    lost = bot.outbox.submit(command(text="lost words"))
    await bot.run()
    assert bot.channel.sent == []

    bot.outbox.submit(command(text="next"))
    await bot.run()

    assert bot.channel.texts == ["FAILED 1: lost words\n\nnext"]
    assert bot.metrics.send_failures == 1
    rows = {row["id"]: row for row in store.replies()}
    assert rows[lost]["status"] == "failed"
    assert rows[lost]["error"] == "ConnectionError: down"
    store.close()


async def test_journal_records_every_reply_and_the_digest(tmp_path) -> None:
    store = AlarmStore(tmp_path / "bot.db")
    bot = Harness(OutboxLimits(room_per_minute=5, reserve=4), journal=store)

    first = bot.outbox.submit(alarm(text="full"))
    digest = bot.outbox.submit(alarm(appid="wx2"))
    assert bot.outbox.submit(alarm(appid="wx3")) == digest
    await bot.run()

    rows = store.replies()
    assert [(r["id"], r["kind"], r["status"]) for r in rows] == [
        (first, "alarm", "sent"),
        (digest, "digest", "sent"),
    ]
    assert rows[1]["text"] == "DIGEST 2 alarms 2 accounts wx2,wx3"
    store.close()


async def test_restored_replies_and_digests_are_sent() -> None:
    bot = Harness()
    bot.outbox.restore(
        7, room="ops", to=None, kind="alarm", text="from before", mentions=(), since=T0
    )
    bot.outbox.restore(
        8,
        room="ops",
        to=None,
        kind="digest",
        text=None,
        mentions=("alice",),
        since=T0,
        alarms=3,
        appids={"wx1": 2, "wx2": 1},
        types={"markfail": 3},
    )

    await bot.run()

    assert bot.channel.texts == ["from before", "DIGEST 3 alarms 2 accounts wx1,wx2"]
    assert bot.channel.sent[1][1].mentions == ("alice",)


async def test_direct_messages_are_paced_but_never_folded() -> None:
    bot = Harness(OutboxLimits(room_per_minute=2, reserve=1))
    for _ in range(3):
        bot.outbox.submit(Outgoing(None, "alarm", "dm", to="bob"))

    await bot.run()

    assert bot.channel.texts == ["dm", "dm", "dm"]
    assert bot.channel.sent[0][1].to == "bob"


async def test_depth_and_queue_metric() -> None:
    bot = Harness()
    bot.outbox.submit(command())
    bot.outbox.submit(command())

    assert bot.outbox.depth == 2
    assert bot.metrics.queue_depth() == 2
    await bot.run()
    assert bot.outbox.depth == 0


async def test_run_sends_on_the_wall_clock_and_join_waits() -> None:
    limits = OutboxLimits(room_gap_s=0.01, switch_gap_s=0.01)
    clock = SystemClock()
    sent: list[str] = []

    class Quick:
        async def say(self, reply: Reply) -> None:
            sent.append(reply.text)

    outbox = Outbox(Quick(), clock, limits, texts=Texts())
    runner = asyncio.create_task(outbox.run())
    outbox.submit(command(text="one"))
    outbox.submit(command(text="two"))

    await asyncio.wait_for(outbox.join(), 5)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner

    assert sent == ["one", "two"]


def test_backoff_doubles_up_to_the_cap() -> None:
    limits = OutboxLimits(retry_first_s=1, retry_cap_s=5)

    assert [limits.backoff(n).total_seconds() for n in range(1, 6)] == [1, 2, 4, 5, 5]


async def test_a_hung_send_times_out_and_is_retried() -> None:
    clock = SystemClock()
    calls: list[str] = []

    class Hangs:
        async def say(self, reply: Reply) -> None:
            calls.append(reply.text)
            if len(calls) == 1:
                await asyncio.sleep(10)

    limits = OutboxLimits(send_timeout_s=0.05, retry_first_s=0.01, room_gap_s=0)
    outbox = Outbox(Hangs(), clock, limits, texts=Texts())
    runner = asyncio.create_task(outbox.run())
    outbox.submit(command(text="hello"))

    await asyncio.wait_for(outbox.join(), 5)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner

    assert calls == ["hello", "hello"]
