"""``alarm-bot run`` without a gateway: the console, and how to connect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(
    tmp_path: Path, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ALARM_BOT_", "WECHATY_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", "run", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environ | env,
        timeout=60,
        check=False,
    )


def test_run_without_gateway_answers_in_the_console_and_says_how_to_connect(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, stdin="/help\n")

    assert result.returncode == 0, result.stderr
    assert "WECHATY_PUPPET_SERVICE_ENDPOINT" in result.stderr
    assert "docs/connect-wechat.md" in result.stderr
    assert "/explain" in result.stdout  # the help text, answered in the console
    assert list(tmp_path.iterdir()) == []


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
