from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import cli

from .test_alarm import SAMPLES, VARIANTS


def _run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, list(args), input=stdin)


@pytest.mark.parametrize("case", SAMPLES, ids=lambda c: c["id"])
def test_diagnose_json_contract_for_every_sample(case: dict) -> None:
    result = _run("diagnose", "-", "--json", stdin=case["alarm_text"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert set(payload) == {"alarms", "reply"}
    expected = case["expected"]
    expected = expected if isinstance(expected, list) else [expected]
    assert len(payload["alarms"]) == len(expected)
    for alarm, want in zip(payload["alarms"], expected, strict=True):
        assert set(alarm) == {
            "type",
            "appid",
            "nickname",
            "time",
            "count",
            "window_minutes",
            "sample",
            "third_party",
            "pay_notify",
        }
        assert alarm["type"] == want["type"]
        assert alarm["appid"] == want["appid"]
        assert alarm["count"] == want["count"]
        assert alarm["window_minutes"] == want["window_minutes"]
        want_time = want["time"].replace(" ", "T") + "+08:00" if want["time"] else None
        assert alarm["time"] == want_time
        assert {k.lower(): v for k, v in alarm["sample"].items()} == {
            k.lower(): v for k, v in want["sample"].items()
        }
    assert payload["reply"]


def test_diagnose_text_without_alarm() -> None:
    result = _run("diagnose", "-", "--json", stdin="服务器好像超时了")
    assert json.loads(result.output)["alarms"] == []


def test_diagnose_reads_a_file_and_english(tmp_path) -> None:
    path = tmp_path / "alarm.txt"
    path.write_text(VARIANTS[0]["alarm_text"], encoding="utf-8")
    result = _run("diagnose", str(path), "--lang", "en")
    assert result.exit_code == 0
    assert "Checks:" in result.output


def test_diagnose_missing_file_is_a_clear_error(tmp_path) -> None:
    result = _run("diagnose", str(tmp_path / "nope.txt"))
    assert result.exit_code != 0
    assert "cannot read" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("question", "best"),
    [
        ("回应失败是什么原因", "invalid_response"),
        ("nginx 499 是什么", "nginx_status"),
        ("access_token 怎么存", "access_token_storage"),
        ("MarkFail 是什么", "markfail"),
        ("component_verify_ticket 多久推送一次", "component_verify_ticket"),
        ("netstat TIME_WAIT 很多", "netstat_states"),
        ("连接超时怎么解决", "connect_timeout"),
    ],
)
def test_ask_json_best_match(question: str, best: str) -> None:
    result = _run("ask", question, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    ids = [m["id"] for m in payload["matches"]]
    assert best in ids[:2], ids
    scores = [m["score"] for m in payload["matches"]]
    assert scores == sorted(scores, reverse=True)
    assert all(m["kind"] in {"alarm", "faq", "reference"} for m in payload["matches"])
    assert payload["reply"]


def test_ask_nonsense_says_so() -> None:
    result = _run("ask", "qwxzz", "--json")
    payload = json.loads(result.output)
    assert payload["matches"] == []
    assert "qwxzz" in payload["reply"]


def test_kb_check_passes_on_shipped_knowledge() -> None:
    result = _run("kb", "check")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok:")


def test_chat_reads_stdin() -> None:
    result = _run("chat", stdin=VARIANTS[0]["alarm_text"] + "\n---\n/version\n")
    assert result.exit_code == 0, result.output
    assert "请求超时" in result.output
    assert "alarm-bot 0." in result.output


def test_chat_takes_the_settings_run_takes(tmp_path: Path) -> None:
    config = tmp_path / "bot.yaml"
    config.write_text("lang: en\nadmins: [boss]\n", encoding="utf-8")
    result = _run("chat", "--config", str(config), "--sender", "boss", stdin="/help\n")
    assert result.exit_code == 0, result.output
    assert "/kb show|set|suggest|confirm" in result.output  # boss is an admin
    assert "I am the alarm assistant" in result.output  # lang: en


def test_chat_with_a_broken_config_says_which(tmp_path: Path) -> None:
    config = tmp_path / "bot.yaml"
    config.write_text("colour: red\n", encoding="utf-8")
    result = _run("chat", "--config", str(config), stdin="/help\n")
    assert result.exit_code == 1
    assert "colour" in result.output


def test_ask_with_an_empty_question_shows_usage() -> None:
    result = _run("ask", "  ")
    assert result.exit_code == 2
    assert "QUESTION is empty" in result.output
