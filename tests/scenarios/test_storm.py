"""A storm: 10,000 alarms from 2,000 accounts in one minute, into one room."""

from __future__ import annotations

import io
import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.knowledge import Knowledge
from bot.replay import run_replay
from bot.settings import Settings
from bot.store import AlarmStore

from .storm import START, storm

LIMIT = 2048


def max_in_any_span(times: list[datetime], span: timedelta) -> int:
    """The most messages within any closed span of ``span``."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > span:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.fixture(scope="module")
def storm_run(
    knowledge: Knowledge, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, object]]]:
    import asyncio

    db = tmp_path_factory.mktemp("storm") / "storm.db"
    out = io.StringIO()
    summary = asyncio.run(
        run_replay(storm(), Settings(), knowledge, db_path=db, out=out)
    )
    assert summary.events == 10_000
    return db, [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_alarm_of_the_storm_is_in_the_store(storm_run) -> None:
    db, _ = storm_run
    store = AlarmStore(db)

    assert store.count_alarms() == 10_000
    assert len(store.fingerprints()) == 10_000
    assert store.stats().total == 10_000
    assert store.undecided() == []


def test_the_room_hears_at_most_20_messages_in_any_minute(storm_run) -> None:
    _, messages = storm_run
    times = [datetime.fromisoformat(str(m["at"])) for m in messages]

    assert times == sorted(times)
    assert max_in_any_span(times, timedelta(seconds=60)) <= 20
    assert all(b - a >= timedelta(seconds=1) for a, b in itertools.pairwise(times))
    assert {m["room"] for m in messages} == {"ops"}


def test_no_message_is_longer_than_2048_bytes(storm_run) -> None:
    _, messages = storm_run

    for message in messages:
        mentions = sum(len(str(m).encode()) + 2 for m in message["mentions"])
        assert len(str(message["text"]).encode()) + mentions <= LIMIT


def test_the_first_reply_leaves_within_a_second(storm_run) -> None:
    _, messages = storm_run

    first = datetime.fromisoformat(str(messages[0]["at"]))
    assert first - START <= timedelta(seconds=1)
    assert "排查步骤" in str(messages[0]["text"])


def test_nothing_is_dropped_the_rest_is_in_digests(storm_run) -> None:
    db, messages = storm_run
    store = AlarmStore(db)

    # Every alarm the policy wanted to post rode on a reply that was sent, in
    # full or in a digest; none is left queued.
    unsent = store._db.execute(
        "SELECT COUNT(*) FROM alarms a LEFT JOIN replies r ON r.id = a.reply_id"
        " WHERE a.disposition IN ('full', 'update')"
        " AND (r.status IS NULL OR r.status != 'sent')"
    ).fetchone()[0]
    assert unsent == 0
    assert store.replies("queued") == []
    digests = [m for m in messages if str(m["text"]).startswith("📦")]
    assert digests
    digested = store._db.execute(
        "SELECT COUNT(*) FROM alarms a JOIN replies r ON r.id = a.reply_id"
        " WHERE r.kind = 'digest'"
    ).fetchone()[0]
    said = sum(int(str(d["text"]).split("还有 ")[1].split(" 条")[0]) for d in digests)
    assert said == digested > 0
    posted, answered_alone = store._db.execute(
        "SELECT COUNT(*), SUM(r.kind != 'digest') FROM alarms a"
        " JOIN replies r ON r.id = a.reply_id WHERE a.disposition IN ('full', 'update')"
    ).fetchone()
    assert posted == digested + answered_alone
    # The rest the policy folded, inhibited or silenced on purpose.
    assert store.stats().by_disposition.keys() <= {
        "full",
        "update",
        "folded",
        "inhibited",
        "silenced",
    }
