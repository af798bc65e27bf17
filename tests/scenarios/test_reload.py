"""Reloading a live knowledge base: broken edits refused, good ones picked up.

Every kind of broken knowledge in ``tests/data/knowledge/bad-*.yaml`` is written
into the directory a running dispatcher serves: ``kb check`` rejects it with its
exact message, and a reload refuses it while the old knowledge keeps answering.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bot.channels.base import Incoming
from bot.cli import cli
from bot.dispatch import Dispatcher
from bot.kbcheck import load_checked
from bot.knowledge import Knowledge, default_root
from bot.watch import live_reload
from tests.test_kbcheck import blur

from ..conftest import DATA
from ..conftest import TIMEOUT_ALARM as ALARM

BAD = sorted((DATA / "knowledge").glob("bad-*.yaml"))
OLD_SUMMARY = "平台把消息或事件推给你之后，5 秒内没等到你的响应。"
NEW_SUMMARY = "平台推送后 5 秒内没收到响应：先看服务器负载和慢请求。"


def alarm_reply(dispatcher: Dispatcher) -> str:
    (reply,) = dispatcher.dispatch(Incoming(room="ops", sender="a", text=ALARM))
    return reply.text


def break_in_place(spec_path: Path, root: Path) -> str:
    """Break the knowledge in ``root`` as the spec says; return the message."""
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    target = root / spec["target"]
    if spec.get("delete"):
        target.unlink()
    elif spec.get("append"):
        before = target.read_text(encoding="utf-8").rstrip("\n") + "\n"
        items = len(next(iter(yaml.safe_load(before).values())))
        target.write_text(before + spec["content"], encoding="utf-8")
        line = before.count("\n") + spec["content"].rstrip("\n").count("\n") + 1
        return str(spec["expected"]).format(line=line, index=items)
    else:
        target.write_text(spec["content"], encoding="utf-8")
    return str(spec["expected"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    copy = tmp_path / "knowledge"
    shutil.copytree(default_root(), copy)
    return copy


@pytest.mark.parametrize("spec", BAD, ids=lambda p: p.stem)
def test_broken_knowledge_is_rejected_by_check_and_by_a_live_reload(
    spec: Path, root: Path, knowledge: Knowledge
) -> None:
    dispatcher = Dispatcher(
        knowledge, admins=("admin",), loader=lambda: load_checked(root)
    )
    before = alarm_reply(dispatcher)
    expected = break_in_place(spec, root)

    checked = CliRunner().invoke(cli, ["kb", "check", str(root)])
    assert checked.exit_code == 1
    assert blur(expected) in [blur(line) for line in checked.output.splitlines()]

    told: list[list[str]] = []
    dispatcher.on_reload = told.append
    (reply,) = dispatcher.dispatch(Incoming(room="ops", sender="admin", text="/reload"))
    assert blur(expected) in blur(reply.text)
    assert blur(expected) in [blur(p) for p in told[0]]
    assert dispatcher.knowledge is knowledge
    assert alarm_reply(dispatcher) == before


async def wait_for(condition: object, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_file_watch_reload_picks_up_a_good_edit_and_refuses_a_bad_one(
    root: Path,
) -> None:
    dispatcher = Dispatcher(load_checked(root), loader=lambda: load_checked(root))
    path = root / "alarms" / "request_timeout.yaml"
    original = path.read_text(encoding="utf-8")
    told: list[list[str]] = []

    async def tell_admins(problems: list[str]) -> None:
        told.append(problems)

    async def bot() -> None:
        await asyncio.sleep(0.5)  # the watch is in place
        assert OLD_SUMMARY in alarm_reply(dispatcher)
        path.write_text(original.replace(OLD_SUMMARY, NEW_SUMMARY), "utf-8")
        await wait_for(lambda: NEW_SUMMARY in alarm_reply(dispatcher))

        serving = dispatcher.knowledge
        for _ in range(2):  # saved twice while still broken: told once
            path.write_text(original.replace("severity:", "severty:"), "utf-8")
            await wait_for(lambda: told)
            await asyncio.sleep(0.5)
        assert dispatcher.knowledge is serving
        assert NEW_SUMMARY in alarm_reply(dispatcher)

        path.write_text(original, "utf-8")
        await wait_for(lambda: OLD_SUMMARY in alarm_reply(dispatcher))

    await live_reload(dispatcher, bot(), on_reload_failed=tell_admins, debounce_ms=200)
    assert len(told) == 1
    assert any("severty: unknown key 'severty'" in p for p in told[0])


def test_replies_during_reloads_are_never_mixed(root: Path) -> None:
    old = load_checked(root)
    path = root / "alarms" / "request_timeout.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(OLD_SUMMARY, NEW_SUMMARY), "utf-8")
    new = load_checked(root)
    versions = iter([new, old] * 20)
    dispatcher = Dispatcher(old, loader=lambda: next(versions))
    expected = {alarm_reply(Dispatcher(k)) for k in (old, new)}
    done = threading.Event()

    def reload_repeatedly() -> None:
        for _ in range(40):
            dispatcher.reload()
        done.set()

    thread = threading.Thread(target=reload_repeatedly)
    thread.start()
    seen = set()
    while not done.is_set():
        seen.add(alarm_reply(dispatcher))
    thread.join()
    assert seen <= expected
    assert len(expected) == 2


def test_sighup_reloads_a_running_bot(root: Path, tmp_path: Path) -> None:
    """``alarm-bot run`` in the console, file watching off: only SIGHUP reloads."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ALARM_BOT_", "WECHATY_"))
    }
    env |= {
        "ALARM_BOT_KNOWLEDGE_DIR": str(root),
        "ALARM_BOT_KNOWLEDGE_WATCH": "false",
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    assert process.stdin is not None

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()

    def read_until(word: str) -> str:
        seen = ""
        while word not in seen:
            seen += lines.get(timeout=30)
        return seen

    def send(text: str) -> None:
        assert process.stdin is not None
        process.stdin.write(text + "\n---\n")
        process.stdin.flush()

    try:
        send(ALARM)
        assert OLD_SUMMARY in read_until("/explain")
        path = root / "alarms" / "request_timeout.yaml"
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace(OLD_SUMMARY, NEW_SUMMARY), "utf-8")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        for attempt in itertools.count(1):
            # another account each time: the policy answers a repeat only briefly
            send(ALARM.replace("wx0123456789abcdef", f"wx{attempt:016x}"))
            if NEW_SUMMARY in read_until("/explain"):
                break
            assert time.monotonic() < deadline, "the running bot kept the old text"
            time.sleep(0.2)
        process.stdin.close()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
