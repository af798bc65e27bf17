from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.alarm import PLATFORM_TZ, Alarm
from bot.policy import Ack, GroupState, Silence
from bot.store import MIGRATIONS, AlarmStore, fingerprint

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=PLATFORM_TZ)
A = "wx00000000000000aa"
B = "wx00000000000000bb"


def alarm(
    appid: str | None = A,
    alarm_type: str = "request_timeout",
    *,
    count: int | None = 100,
    time_text: str | None = "2024-05-01 12:00:00",
    raw: str = "Appid: …",
) -> Alarm:
    return Alarm(
        type=alarm_type,
        appid=appid,
        appid_raw=appid,
        nickname="号",
        time=T0 if time_text else None,
        time_text=time_text,
        content="内容",
        count=count,
        window_minutes=5,
        sample={"IP": "192.0.2.1", "Event": "subscribe"},
        raw=raw,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlarmStore]:
    opened = AlarmStore(tmp_path / "bot.db")
    yield opened
    opened.close()


def test_file_store_is_wal_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "bot.db"
    store = AlarmStore(path)

    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    assert AlarmStore(path).schema_version == len(MIGRATIONS)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")

    with pytest.raises(RuntimeError, match="schema version 99 is newer"):
        AlarmStore(path)


def test_memory_store_works_without_a_path() -> None:
    store = AlarmStore()

    store.record_alarms("ops", "platform", T0, [alarm()])

    assert store.count_alarms() == 1


def test_alarms_are_recorded_with_raw_text_fields_room_and_time(
    store: AlarmStore,
) -> None:
    (row,) = store.record_alarms("ops", "platform", T0, [alarm(raw="原文")])

    record = dict(store._db.execute("SELECT * FROM alarms").fetchone())
    assert record["raw"] == "原文"
    assert record["room"] == "ops"
    assert record["received_at"] == T0.isoformat()
    assert record["appid"] == A
    assert record["type"] == "request_timeout"
    assert record["count"] == 100
    assert record["sample"] == '{"IP": "192.0.2.1", "Event": "subscribe"}'
    assert record["disposition"] == "received"
    assert row.fingerprint == record["fingerprint"]
    assert not row.is_duplicate


def test_the_same_alarm_again_is_a_duplicate(store: AlarmStore) -> None:
    store.record_alarms("ops", "p", T0, [alarm()])

    (again,) = store.record_alarms("ops", "p", T0, [alarm()])
    (other,) = store.record_alarms("ops", "p", T0, [alarm(count=101)])

    assert again.is_duplicate
    assert not other.is_duplicate
    assert store.count_alarms() == 3


@pytest.mark.parametrize(
    "changed",
    [
        {"room": "elsewhere"},
        {"appid": B},
        {"alarm_type": "markfail"},
        {"count": 7},
        {"time_text": "2024-05-01 12:05:00"},
    ],
)
def test_fingerprint_tells_alarms_apart(changed: dict[str, object]) -> None:
    room = str(changed.pop("room", "ops"))
    base = fingerprint("ops", alarm())

    assert fingerprint(room, alarm(**changed)) != base  # type: ignore[arg-type]


def test_fragments_without_time_or_count_differ_by_text() -> None:
    one = alarm(count=None, time_text=None, raw="a")
    two = alarm(count=None, time_text=None, raw="b")

    assert fingerprint("ops", one) != fingerprint("ops", two)


def test_a_failed_transaction_writes_nothing(store: AlarmStore) -> None:
    def record_then_fail() -> None:
        with store.transaction():
            store.record_alarms("ops", "p", T0, [alarm()])
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        record_then_fail()

    assert store.count_alarms() == 0


def test_replies_are_queued_then_sent_or_failed(store: AlarmStore) -> None:
    sent = store.add_reply(
        room="ops",
        recipient=None,
        kind="alarm",
        text="hi",
        mentions=["alice"],
        alarms=1,
        appids=[A],
        types=["markfail"],
        at=T0,
    )
    failed = store.add_reply(
        room="ops",
        recipient=None,
        kind="command",
        text="x",
        mentions=[],
        alarms=0,
        appids=[],
        types=[],
        at=T0,
    )
    store.finish_reply(sent, "sent", T0)
    store.finish_reply(failed, "failed", T0, error="boom")

    rows = {row["id"]: row for row in store.replies()}
    assert rows[sent]["status"] == "sent"
    assert rows[sent]["text"] == "hi"
    assert rows[failed]["error"] == "boom"
    assert store.pending_replies() == []


def test_pending_digest_counts_come_from_its_alarms(store: AlarmStore) -> None:
    digest = store.add_reply(
        room="ops",
        recipient=None,
        kind="digest",
        text=None,
        mentions=[],
        alarms=0,
        appids=[],
        types=[],
        at=T0,
    )
    rows = store.record_alarms(
        "ops", "p", T0, [alarm(A), alarm(A, count=5), alarm(B, "markfail")]
    )
    for row in rows:
        store.set_disposition(row.id, "full", digest)

    (pending,) = store.pending_replies()

    assert pending.kind == "digest"
    assert pending.alarms == 3
    assert pending.appids == {A: 2, B: 1}
    assert pending.types == {"request_timeout": 2, "markfail": 1}
    assert pending.queued_at == T0


def test_groups_silences_and_acks_round_trip(store: AlarmStore) -> None:
    group = GroupState(
        room="ops",
        appid=A,
        type="markfail",
        first_at=T0,
        last_at=T0 + timedelta(minutes=5),
        window_start=T0,
        windows=2,
        count=9,
        notified_at=T0,
        escalated_at=T0,
    )
    store.save_group(group)
    store.save_group(group)
    silence = store.add_silence(
        Silence(0, "ops", B, None, "admin", T0, T0 + timedelta(hours=1))
    )
    expired = store.add_silence(
        Silence(0, "ops", A, None, "admin", T0, T0 + timedelta(minutes=1))
    )
    lifted = store.add_silence(
        Silence(0, "ops", None, "markfail", "admin", T0, T0 + timedelta(hours=1))
    )
    store.remove_silence(lifted.id, "admin", T0)
    ack = store.add_ack(Ack(0, "ops", A, None, "张三", T0, T0 + timedelta(days=1)))
    cleared = store.add_ack(Ack(0, "ops", B, None, "李四", T0, T0 + timedelta(days=1)))
    store.clear_acks([cleared], T0)

    state = store.load_state(T0 + timedelta(minutes=10), keep=timedelta(hours=1))

    assert state.groups == {group.key: group}
    assert state.silences == [silence]
    assert silence.id != expired.id
    assert state.acks == [ack]
    assert (
        store.load_state(T0 + timedelta(days=2), keep=timedelta(hours=1)).groups == {}
    )


def test_forget_groups(store: AlarmStore) -> None:
    group = GroupState("ops", A, "markfail", T0, T0, T0)
    store.save_group(group)

    store.forget_groups([group])

    assert store.load_state(T0, keep=timedelta(days=1)).groups == {}


def test_stats_count_by_type_and_account_without_duplicates(store: AlarmStore) -> None:
    store.record_alarms(
        "ops", "p", T0, [alarm(A), alarm(A, count=2), alarm(B, "markfail")]
    )
    (dup,) = store.record_alarms("ops", "p", T0, [alarm(A)])
    store.set_disposition(dup.id, "duplicate")
    store.record_alarms("other", "p", T0 + timedelta(hours=2), [alarm(B)])

    everything = store.stats()
    in_ops = store.stats(room="ops")
    one = store.stats(appid=A)
    recent = store.stats(since=T0 + timedelta(hours=1))

    assert everything.to_json() == {
        "total_alarms": 4,
        "by_type": {"request_timeout": 3, "markfail": 1},
        "top_appids": [[A, 2], [B, 2]],
    }
    assert in_ops.total == 3
    assert in_ops.accounts == 2
    assert one.by_type == {"request_timeout": 2}
    assert recent.total == 1


def test_trend_counts_window_by_window(store: AlarmStore) -> None:
    for minutes, count in ((0, 100), (1, 150), (5, 1840), (12, 7)):
        late = Alarm(
            type="request_timeout",
            appid=A,
            time=T0 + timedelta(minutes=minutes),
            time_text=f"t{minutes}",
            count=count,
        )
        store.record_alarms("ops", "p", T0, [late])

    trend = store.trend(appid=A)

    assert [(w.start, w.alarms, w.max_count) for w in trend] == [
        (T0, 2, 150),
        (T0 + timedelta(minutes=5), 1, 1840),
        (T0 + timedelta(minutes=10), 1, 7),
    ]
    assert trend[0].types == ("request_timeout",)
    assert len(store.trend(appid=A, limit=2)) == 2


def test_undecided_alarms_are_found(store: AlarmStore) -> None:
    first, second = store.record_alarms("ops", "p", T0, [alarm(A), alarm(A)])
    store.set_disposition(first.id, "full")

    (left,) = store.undecided()

    assert left[0].id == second.id
    assert left[0].is_duplicate
    assert left[1:] == ("ops", "p", "Appid: …")


def test_audit_log(store: AlarmStore) -> None:
    store.audit(T0, "ops", "admin", "mute", silence=1)

    (row,) = store.audit_log()

    assert row["action"] == "mute"
    assert row["detail"] == '{"silence":1}'


def test_a_killed_writer_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    writer = AlarmStore(path)
    writer.record_alarms("ops", "p", T0, [alarm()])

    # A second connection sees the commit while the writer is still open,
    # and the WAL holds it without a checkpoint.
    reader = AlarmStore(path)
    assert reader.count_alarms() == 1
    assert (tmp_path / "bot.db-wal").exists()
    reader.close()
    writer.close()


def _raw_dispositions(path: Path) -> list[str]:
    """What another connection sees committed: no pending writes flushed."""
    reader = sqlite3.connect(path)
    try:
        return [row[0] for row in reader.execute("SELECT disposition FROM alarms")]
    finally:
        reader.close()


async def test_writing_behind_commits_two_loop_turns_later(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    store = AlarmStore(path)
    with store.writing_behind():
        (row,) = store.record_alarms("ops", "p", T0, [alarm()])
        store.set_disposition(row.id, "full")
        # the alarm itself is committed at once; what became of it waits
        assert _raw_dispositions(path) == ["received"]
        await asyncio.sleep(0)
        assert _raw_dispositions(path) == ["received"]
        await asyncio.sleep(0)
        assert _raw_dispositions(path) == ["full"]
    store.close()


async def test_reads_and_writes_see_the_pending_writes_in_order(
    tmp_path: Path,
) -> None:
    store = AlarmStore(tmp_path / "bot.db")
    with store.writing_behind():
        reply = store.add_reply(
            room="ops",
            recipient=None,
            kind="alarm",
            text="hi",
            mentions=[],
            alarms=1,
            appids=[A],
            types=["markfail"],
            at=T0,
        )
        store.finish_reply(reply, "sent", T0)
        store.audit(T0, "ops", "admin", "ack")

        # a read commits what waits, in the order it was written
        assert [(r["id"], r["status"]) for r in store.replies()] == [(reply, "sent")]
        assert store.audit_log()[0]["action"] == "ack"
    store.close()


async def test_reply_ids_follow_those_already_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    first = AlarmStore(path)
    kept = [first.add_reply(**_REPLY) for _ in range(2)]
    first.close()

    again = AlarmStore(path)
    with again.writing_behind():
        later = again.add_reply(**_REPLY)
    again.close()

    assert kept == [1, 2]
    assert later == 3


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    store = AlarmStore(path)
    with store.writing_behind():
        (row,) = store.record_alarms("ops", "p", T0, [alarm()])
        store.set_disposition(row.id, "full")
        store.close()

    assert _raw_dispositions(path) == ["full"]


async def test_a_failing_deferred_write_is_logged_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bot.db"
    store = AlarmStore(path)
    with store.writing_behind():
        (row,) = store.record_alarms("ops", "p", T0, [alarm()])
        store.add_reply(**_REPLY)
        store._last_reply_id -= 1  # the next reply takes a used id and fails
        store.add_reply(**_REPLY)
        store.set_disposition(row.id, "full")
        store.flush()
    store.close()

    assert "a deferred write failed" in caplog.text
    assert _raw_dispositions(path) == ["full"]


def test_without_a_running_loop_writes_happen_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    store = AlarmStore(path)
    with store.writing_behind():
        (row,) = store.record_alarms("ops", "p", T0, [alarm()])
        store.set_disposition(row.id, "full")
        assert _raw_dispositions(path) == ["full"]
    store.close()


_REPLY: dict[str, Any] = {
    "room": "ops",
    "recipient": None,
    "kind": "alarm",
    "text": "hi",
    "mentions": [],
    "alarms": 1,
    "appids": [A],
    "types": ["markfail"],
    "at": T0,
}
