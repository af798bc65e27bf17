"""``alarm-bot replay`` and ``alarm-bot stats``: their contracts."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner

from bot.cli import cli

from .storm import START, alarm_text, event

A = "wx00000000000000aa"
B = "wx00000000000000bb"


def _run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, list(args), input=stdin)


def _events(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_replay_prints_each_message_as_a_json_line(tmp_path: Path) -> None:
    events = _events(
        tmp_path,
        [
            event(START, alarm_text(A, "request_timeout")),
            event(
                START + timedelta(seconds=30), alarm_text(A, "request_timeout", count=7)
            ),
            event(START + timedelta(seconds=40), alarm_text(A, "markfail")),
        ],
    )
    config = tmp_path / "bot.yaml"
    config.write_text(f"owners:\n  {A}: [alice]\n", encoding="utf-8")

    result = _run("replay", str(events), "--config", str(config))

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [set(line) for line in lines] == [{"at", "room", "text", "mentions"}] * 2
    assert lines[0]["at"] == "2024-05-01T12:00:00.000+08:00"
    assert lines[0]["room"] == "ops"
    assert "【请求超时】" in lines[0]["text"]
    assert lines[0]["mentions"] == []
    assert lines[1]["at"] == "2024-05-01T12:00:40.000+08:00"
    assert lines[1]["mentions"] == ["alice"]
    assert "replayed 3 events: 2 messages" in result.stderr


def test_replay_reads_stdin_and_runs_until_the_outbox_is_empty() -> None:
    lines = [event(START, f"/help {n}", sender="bob") for n in range(3)]

    result = _run("replay", "-", stdin="\n".join(lines))

    assert result.exit_code == 0, result.output
    times = [json.loads(line)["at"] for line in result.stdout.splitlines()]
    assert [t[11:23] for t in times] == ["12:00:00.000", "12:00:01.000", "12:00:02.000"]


def test_replay_names_a_bad_line(tmp_path: Path) -> None:
    events = _events(tmp_path, [event(START, "hi"), "{not json", event(START, "x")])

    result = _run("replay", str(events))

    assert result.exit_code == 1
    assert "line 2: not JSON" in result.output
    assert "Traceback" not in result.output


def test_replay_keeps_history_in_db_and_stats_reads_it(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    events = _events(
        tmp_path,
        [
            event(START, alarm_text(A)),
            event(START, alarm_text(A, count=5)),
            event(START, alarm_text(B, "markfail")),
        ],
    )
    assert _run("replay", str(events), "--db", str(db)).exit_code == 0

    result = _run("stats", "--db", str(db), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "total_alarms": 3,
        "by_type": {"request_timeout": 2, "markfail": 1},
        "top_appids": [[A, 2], [B, 1]],
    }
    human = _run("stats", "--db", str(db))
    assert "total alarms: 3 (2 accounts)" in human.stdout


def test_stats_needs_an_existing_database(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"

    assert "no database" in _run("stats").output
    assert "no such database" in _run("stats", "--db", str(missing)).output
    assert not missing.exists()


def test_chat_keeps_history_with_db(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    result = _run("chat", "--db", str(db), stdin=alarm_text(A) + "\n---\n/stats\n")

    assert result.exit_code == 0, result.output
    assert "【请求超时】" in result.output
    assert "共 1 条报警" in result.output
    assert (
        json.loads(_run("stats", "--db", str(db), "--json").stdout)["total_alarms"] == 1
    )
