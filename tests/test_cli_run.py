"""``alarm-bot run`` without a gateway: the console, and how to connect."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ALARM = (
    "Appid：wx0123456789abcdef\n时间：2024-05-01 10:00:00\n内容：第三方回调域名解析失败"
)
# Requests to the bot must never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def environ(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """This environment without bot settings, its data dir in ``tmp_path/data``."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ALARM_BOT_", "WECHATY_"))
    }
    return clean | {"XDG_DATA_HOME": str(tmp_path / "data")} | env


def workdir(tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return cwd


def run(
    tmp_path: Path, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "run", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=workdir(tmp_path),
        env=environ(tmp_path, env),
        timeout=60,
        check=False,
    )


def alarms_in(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT room, type, disposition FROM alarms")
        return [tuple(row) for row in rows]


def test_run_without_gateway_answers_in_the_console_and_says_how_to_connect(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, stdin="/help\n")

    assert result.returncode == 0, result.stderr
    assert "WECHATY_PUPPET_SERVICE_ENDPOINT" in result.stderr
    assert "'Connect to WeChat' in README.md" in result.stderr
    assert "/explain" in result.stdout  # the help text, answered in the console
    assert list((tmp_path / "cwd").iterdir()) == []


def test_run_with_bad_setting_exits_nonzero_naming_it(tmp_path: Path) -> None:
    result = run(tmp_path, ALARM_BOT_LANG="fr")

    assert result.returncode != 0
    assert "ALARM_BOT_LANG: input should be 'zh' or 'en', got \"fr\"" in result.stderr


def test_run_reads_config_file_option(tmp_path: Path) -> None:
    config = tmp_path / "bot.yaml"
    config.write_text("lang: klingon\n", encoding="utf-8")

    result = run(tmp_path, "--config", str(config))

    assert result.returncode != 0
    assert f"{config}: lang: input should be 'zh' or 'en'" in result.stderr


def test_run_keeps_its_history_in_the_user_data_dir_by_default(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, stdin=ALARM)

    assert result.returncode == 0, result.stderr
    db = tmp_path / "data" / "alarm-bot" / "alarm-bot.db"
    assert alarms_in(db) == [("console", "dns_failure", "full")]
    assert list((tmp_path / "cwd").iterdir()) == []


def test_run_keeps_its_history_in_the_db_option(tmp_path: Path) -> None:
    db = tmp_path / "history" / "bot.db"

    first = run(tmp_path, "--db", str(db), stdin=ALARM)
    again = run(tmp_path, "--db", str(db), stdin=ALARM)  # the same alarm, restarted

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert alarms_in(db) == [
        ("console", "dns_failure", "full"),
        ("console", "dns_failure", "duplicate"),
    ]
    assert "[alarm-bot]" in first.stdout
    assert "[alarm-bot]" not in again.stdout  # said once, not after the restart
    assert not (tmp_path / "data").exists()


def test_run_with_memory_db_writes_no_history(tmp_path: Path) -> None:
    result = run(tmp_path, "--db", ":memory:", stdin=ALARM)

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "data").exists()
    assert list((tmp_path / "cwd").iterdir()) == []


def test_run_with_bad_http_option_exits_nonzero_naming_it(tmp_path: Path) -> None:
    result = run(tmp_path, "--http", "9108")

    assert result.returncode != 0
    assert "--http: expected host:port, e.g. 127.0.0.1:9108, got '9108'" in (
        result.stderr
    )


def test_run_in_console_serves_healthz_and_metrics(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{_free_port()}"

    with _running(tmp_path, "--http", listen, "--db", ":memory:") as bot:
        healthy = _wait_for(lambda: _get(listen, "/healthz"), lambda got: got[0] == 200)
        assert bot.stdin is not None
        bot.stdin.write(ALARM + "\n---\n")
        bot.stdin.flush()
        counted = 'alarm_bot_alarms_total{type="dns_failure"} 1\n'
        metrics = _wait_for(
            lambda: _get(listen, "/metrics"), lambda got: counted in got[1]
        )

    assert healthy == (200, "ok\n")
    assert "alarm_bot_gateway_connected 1\n" in metrics[1]
    assert bot.returncode == 0


@contextmanager
def _running(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``alarm-bot run`` in the console until its input ends."""
    bot = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=workdir(tmp_path),
        env=environ(tmp_path, {}),
    )
    try:
        yield bot
    finally:
        if bot.stdin is not None:
            bot.stdin.close()
        try:
            bot.wait(30)
        except subprocess.TimeoutExpired:
            bot.kill()
            bot.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(listen: str, path: str) -> tuple[int, str]:
    try:
        with _OPENER.open(f"http://{listen}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _wait_for(
    get: Callable[[], tuple[int, str]],
    done: Callable[[tuple[int, str]], bool],
    timeout: float = 30,
) -> tuple[int, str]:
    """Call ``get`` until ``done`` with what it returns, or until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = get()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)
