"""The pipeline's wiring: knowledge editing, admin notices and the console run."""

from __future__ import annotations

import asyncio
import io
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import pytest

from bot.alarm import PLATFORM_TZ
from bot.channels.base import Incoming, Reply
from bot.kbcheck import load_checked
from bot.knowledge import Knowledge, default_root
from bot.pipeline import AlarmPipeline, chat_in_console, tell_admins
from bot.policy import SimulatedClock
from bot.replay import drain
from bot.settings import Settings

from .conftest import TIMEOUT_ALARM as ALARM
from .httpserver import Handler, HttpServer, Received, http_response

START = datetime(2024, 5, 1, 10, 0, tzinfo=PLATFORM_TZ)


class RecordingChannel:
    """Keeps every reply the outbox sends."""

    def __init__(self) -> None:
        self.said: list[Reply] = []

    async def say(self, reply: Reply) -> None:
        self.said.append(reply)


def open_pipeline(
    knowledge: Knowledge, tmp_path: Path, **values: object
) -> tuple[AlarmPipeline, RecordingChannel, SimulatedClock]:
    channel, clock = RecordingChannel(), SimulatedClock(START)
    settings = Settings.model_validate(
        {"kb_history_dir": tmp_path / "kb-history", **values}
    )
    pipeline = AlarmPipeline.open(knowledge, settings, channel, clock=clock)
    return pipeline, channel, clock


async def test_tell_admins_sends_each_admin_one_direct_notice_through_the_outbox(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    settings = Settings(admins=["alice", "bob", "alice"])
    pipeline, channel, clock = open_pipeline(
        knowledge, tmp_path, admins=settings.admins
    )

    await tell_admins(pipeline, settings)(["faq.yaml: broken"])
    await drain(pipeline, clock)

    text = pipeline.dispatcher.renderer.render(
        "reload_failed", problems=["faq.yaml: broken"]
    )
    assert channel.said == [
        Reply(room=None, text=text, to="alice", kind="notice"),
        Reply(room=None, text=text, to="bob", kind="notice"),
    ]
    assert pipeline.metrics.replies["notice"] == 2
    pipeline.close()


async def test_post_queues_a_reply_in_the_outbox(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    pipeline, channel, clock = open_pipeline(knowledge, tmp_path)

    await pipeline.post(Reply(room="ops", text="hello all", kind="notice"))
    assert channel.said == []  # queued, not sent yet
    await drain(pipeline, clock)

    assert channel.said == [Reply(room="ops", text="hello all", kind="notice")]
    pipeline.close()


async def test_open_lets_admins_edit_the_knowledge_and_audits_it_in_the_store(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    pipeline, channel, clock = open_pipeline(knowledge, tmp_path, admins=["admin"])
    editor = pipeline.dispatcher.editor

    pipeline.handle(Incoming(room="ops", sender="admin", text="/kb log"))
    await drain(pipeline, clock)

    assert editor is not None
    assert editor.history_dir == tmp_path / "kb-history"
    assert editor.audit_log is pipeline.store
    expected = pipeline.dispatcher.renderer.render("kb_log", changes=[], pending=[])
    assert [r.text for r in channel.said] == [expected]
    pipeline.close()


def test_open_for_a_replay_edits_nothing(knowledge: Knowledge, tmp_path: Path) -> None:
    channel, clock = RecordingChannel(), SimulatedClock(START)

    pipeline = AlarmPipeline.open(
        knowledge, Settings(), channel, clock=clock, editable=False
    )

    assert pipeline.dispatcher.editor is None
    pipeline.close()


async def test_console_chat_prints_a_failed_reload_for_the_admin(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "knowledge"
    shutil.copytree(default_root(), root)
    knowledge = load_checked(root)
    faq = root / "faq.yaml"
    faq.write_text(faq.read_text(encoding="utf-8") + "\n- id: [", encoding="utf-8")
    settings = Settings.model_validate(
        {
            "admins": ["you"],
            "knowledge_watch": False,
            "kb_history_dir": tmp_path / "kb-history",
        }
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("/reload\n"))

    await chat_in_console(knowledge, settings, sender="you", banner=None)

    out = capsys.readouterr().out
    headline = "知识库重载失败"
    assert out.count(headline) == 2, out  # the /reload reply and the notice
    assert f"[alarm-bot] @you {headline}" in out
    assert f"\n[alarm-bot] {headline}" in out


class CheckingChannel:
    """Notes, at each send, what another connection sees of the alarms."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.seen: list[list[str]] = []

    async def say(self, reply: Reply) -> None:
        reader = sqlite3.connect(self.db)
        try:
            rows = reader.execute("SELECT disposition FROM alarms ORDER BY id")
            self.seen.append([row[0] for row in rows])
        finally:
            reader.close()


async def test_the_reply_goes_out_before_its_bookkeeping_is_committed(
    knowledge: Knowledge, tmp_path: Path
) -> None:
    db = tmp_path / "bot.db"
    channel = CheckingChannel(db)
    settings = Settings.model_validate(
        {
            "db_path": db,
            "kb_history_dir": tmp_path / "kb-history",
            "outbox": {"room_gap_s": 0, "switch_gap_s": 0},
        }
    )
    pipeline = AlarmPipeline.open(knowledge, settings, channel)
    async with pipeline.running():
        pipeline.handle(Incoming(room="ops", sender="alice", text=ALARM))
        await pipeline.outbox.join()
        for _ in range(3):
            await asyncio.sleep(0)

    # recorded before the reply, decided in the store only after it
    assert channel.seen[0] == ["received"]
    assert pipeline.store.replies()[0]["status"] == "sent"
    assert [row.id for row, *_ in pipeline.store.undecided()] == []
    pipeline.close()


async def test_an_alarm_the_store_cannot_record_still_gets_its_diagnosis(
    knowledge: Knowledge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, channel, clock = open_pipeline(knowledge, tmp_path)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(pipeline.store, "record_alarms", full_disk)
    pipeline.handle(Incoming(room="ops", sender="platform", text=ALARM))
    await drain(pipeline, clock)

    (reply,) = channel.said
    assert reply.room == "ops"
    assert reply.kind == "alarm"
    assert reply.text == pipeline.dispatcher.diagnose_text(ALARM).reply
    pipeline.close()


@pytest.mark.parametrize(
    "line",
    [
        "时间: 0001-01-01 00:00:00",
        "时间: 9999-12-31 23:59:59",
        "次数: 5分钟 99999999999999999999次",
        "次数: 99999999999小时 3次",
    ],
)
async def test_an_impossible_time_or_count_is_answered_and_breaks_no_command(
    line: str, knowledge: Knowledge, tmp_path: Path
) -> None:
    # A tester's year-0001 alarm broke /stats and /history for the room.
    pipeline, channel, clock = open_pipeline(knowledge, tmp_path)
    label = line.split(":")[0]
    text = "\n".join(
        line if row.startswith(label) else row for row in ALARM.splitlines()
    )

    for message in (text, "/stats", "/history wx0123456789abcdef"):
        pipeline.handle(Incoming(room="ops", sender="platform", text=message))
        await drain(pipeline, clock)

    error = pipeline.dispatcher.renderer.render("error")
    assert len(channel.said) == 3
    assert "【请求超时】" in channel.said[0].text
    assert all(reply.text != error for reply in channel.said)
    pipeline.close()


async def test_console_chat_answers_a_probe_asked_just_before_the_input_ends(
    knowledge: Knowledge,
    tmp_path: Path,
    serve: Callable[[Handler], Awaitable[HttpServer]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Piped input ends at once; the probe's answer used to be dropped.
    async def slow_success(request: Received) -> bytes:
        await asyncio.sleep(0.3)
        return http_response(200, "success")

    server = await serve(slow_success)
    settings = Settings.model_validate(
        {
            "admins": ["you"],
            "knowledge_watch": False,
            "kb_history_dir": tmp_path / "kb-history",
            "probes": {"wx00000000000000ab": {"url": server.url(), "token": "tok3n"}},
            "probe_allow_private": True,
        }
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("/probe wx00000000000000ab\n"))

    await chat_in_console(knowledge, settings, sender="you", banner=None)

    out = capsys.readouterr().out
    assert f"🔎 探测 wx00000000000000ab：{server.url()}" in out, out
    assert "✅ 结论：正常" in out


async def test_an_unrecorded_alarm_of_a_muted_account_stays_quiet(
    knowledge: Knowledge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, channel, clock = open_pipeline(knowledge, tmp_path, admins=["admin"])
    pipeline.handle(
        Incoming(room="ops", sender="admin", text="/mute wx0123456789abcdef 2h")
    )
    await drain(pipeline, clock)
    muted = len(channel.said)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(pipeline.store, "record_alarms", full_disk)
    pipeline.handle(Incoming(room="ops", sender="platform", text=ALARM))
    await drain(pipeline, clock)

    assert len(channel.said) == muted  # no reply, no apology
    pipeline.close()
