"""A restart loses nothing and repeats nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bot.knowledge import Knowledge
from bot.replay import run_replay
from bot.settings import Settings
from bot.store import AlarmStore

from .conftest import make_bot
from .storm import START, alarm_text, storm

ROOT = Path(__file__).resolve().parents[2]
LOGGED = re.compile(r"alarm room=\S+ appid=\S+ type=\S+ fingerprint=(\w+) decision=")


async def replay(
    knowledge: Knowledge, lines: list[str], db: Path
) -> list[dict[str, object]]:
    out = io.StringIO()
    await run_replay(lines, Settings(), knowledge, db_path=db, out=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def dispositions(db: Path) -> list[str]:
    store = AlarmStore(db)
    try:
        return [
            row[0]
            for row in store._db.execute("SELECT disposition FROM alarms ORDER BY id")
        ]
    finally:
        store.close()


def answered_twice(db: Path) -> list[tuple[str, str, int]]:
    """Groups given the full diagnosis more than once."""
    store = AlarmStore(db)
    try:
        rows = store._db.execute(
            "SELECT account, type, COUNT(*) FROM alarms WHERE disposition = 'full'"
            " GROUP BY room, account, type HAVING COUNT(*) > 1"
        )
        return [tuple(row) for row in rows]
    finally:
        store.close()


async def test_a_storm_split_in_two_replays_answers_nothing_twice(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    lines = list(storm())
    whole, split = tmp_path / "whole.db", tmp_path / "split.db"
    await replay(knowledge, lines, whole)

    await replay(knowledge, lines[:5_000], split)
    await replay(knowledge, lines[5_000:], split)

    assert dispositions(split) == dispositions(whole)
    assert answered_twice(split) == []
    assert len(dispositions(split)) == 10_000


async def test_replaying_the_same_events_again_says_nothing(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    lines = list(storm(alarms=500, appids=100))
    db = tmp_path / "bot.db"
    first = await replay(knowledge, lines, db)

    again = await replay(knowledge, lines, db)

    assert first
    assert again == []
    assert dispositions(db)[500:] == ["duplicate"] * 500
    store = AlarmStore(db)
    assert store.stats().total == 500
    store.close()


async def test_grouping_silences_and_acks_come_back_after_a_restart(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    db = tmp_path / "bot.db"
    appid, muted = "wx00000000000000bb", "wx00000000000000cc"
    before = make_bot(knowledge, db_path=db, default_owners=["oncall"])
    await before.post(alarm_text(appid, count=100))
    await before.post(f"/mute {muted} 1h", sender="admin", after=1)
    await before.post(f"/ack {appid}", sender="张三", after=1)
    before.pipeline.close()

    after = make_bot(
        knowledge, db_path=db, start=before.clock.now(), default_owners=["oncall"]
    )
    assert await after.post(alarm_text(appid, count=101), after=60) == []  # folded
    assert await after.post(alarm_text(muted), after=1) == []  # still muted
    (update,) = await after.post(
        alarm_text(appid, time=START.replace(minute=5), count=110), after=240
    )

    assert "👤 张三 自 12:00:02 起在处理。" in update.text
    assert update.mentions == ()


async def test_a_reply_queued_at_a_crash_is_sent_after_the_restart(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    db = tmp_path / "bot.db"
    before = make_bot(knowledge, db_path=db)
    before.channel.failures = 100  # the gateway is down: nothing goes out
    await before.post(alarm_text("wx00000000000000bb"))
    before.pipeline.store.close()  # the process dies with the reply queued

    after = make_bot(knowledge, db_path=db, start=before.clock.now())
    said = await after.drain()

    assert len(said) == 1
    assert "【请求超时】wx00000000000000bb" in said[0].text
    assert after.store.replies("queued") == []


async def test_an_alarm_recorded_but_not_decided_is_decided_after_the_restart(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    from bot.alarm import parse

    db = tmp_path / "bot.db"
    store = AlarmStore(db)
    text = alarm_text("wx00000000000000bb")
    store.record_alarms("ops", "platform", START, parse(text, knowledge.matcher))
    store.close()  # killed between the record and the decision

    bot = make_bot(knowledge, db_path=db)
    said = await bot.drain()

    assert len(said) == 1
    assert dispositions(db) == ["full"]


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ALARM_BOT_", "WECHATY_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_sigkill_mid_storm_loses_no_alarm_received(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    lines = list(storm(alarms=3_000, appids=600))
    command = [sys.executable, "-m", "bot", "replay", "-", "--db", str(db), "-v"]
    bot = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(),
        cwd=tmp_path,
    )
    assert bot.stdin is not None
    assert bot.stdout is not None
    assert bot.stderr is not None
    logged: list[str] = []
    enough = threading.Event()

    def read_log() -> None:
        for line in bot.stderr:  # type: ignore[union-attr]
            match = LOGGED.search(line)
            if match:
                logged.append(match[1])
                if len(logged) >= 400:
                    enough.set()

    def feed() -> None:
        try:
            for line in lines:
                bot.stdin.write(line + "\n")  # type: ignore[union-attr]
                bot.stdin.flush()  # type: ignore[union-attr]
                time.sleep(0.002)
        except (BrokenPipeError, ValueError):
            pass  # killed

    readers = [
        threading.Thread(target=read_log, daemon=True),
        threading.Thread(target=bot.stdout.read, daemon=True),
        threading.Thread(target=feed, daemon=True),
    ]
    for thread in readers:
        thread.start()
    try:
        assert enough.wait(60), "the bot logged too few alarms"
    finally:
        bot.kill()  # SIGKILL: no chance to flush or close anything
        bot.wait(10)
        received = list(logged)
        for thread in readers:
            thread.join(10)
        for stream in (bot.stdin, bot.stdout, bot.stderr):
            with contextlib.suppress(OSError):
                stream.close()

    store = AlarmStore(db)
    recorded = store.count_alarms()
    assert set(received) <= store.fingerprints()
    assert len(received) <= recorded < len(lines)  # killed mid-storm
    store.close()

    rest = "\n".join(lines[recorded:]) + "\n"
    restarted = subprocess.run(
        [*command[:-1]],
        input=rest,
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert restarted.returncode == 0, restarted.stderr
    store = AlarmStore(db)
    assert store.count_alarms() == len(lines)
    assert store.undecided() == []
    store.close()
    assert answered_twice(db) == []
