"""Hot reload: the notifier, the file watcher and SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import pytest
from watchfiles import Change

from bot.channels.base import Incoming
from bot.dispatch import Dispatcher
from bot.errors import KnowledgeError
from bot.knowledge import Knowledge
from bot.watch import KnowledgeFilter, KnowledgeWatcher, ReloadNotifier, live_reload


async def until(condition: object, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (files events take a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_notifier_tells_each_problem_once_until_a_reload_succeeds() -> None:
    told: list[list[str]] = []

    async def send(problems: list[str]) -> None:
        told.append(problems)

    notifier = ReloadNotifier(send, asyncio.get_running_loop())
    notifier(["a: bad"])
    notifier(["a: bad"])  # the same file saved again, still broken
    notifier(["a: bad", "b: worse"])
    await asyncio.sleep(0)
    await notifier.drain()
    assert told == [["a: bad"], ["b: worse"]]

    notifier([])  # fixed
    notifier(["a: bad"])  # broken again: worth telling again
    await asyncio.sleep(0)
    await notifier.drain()
    assert told[-1] == ["a: bad"]


async def test_notifier_can_be_called_from_a_worker_thread() -> None:
    told: list[list[str]] = []

    async def send(problems: list[str]) -> None:
        told.append(problems)

    notifier = ReloadNotifier(send, asyncio.get_running_loop())
    thread = threading.Thread(target=notifier, args=(["x: broken"],))
    thread.start()
    thread.join()
    await until(lambda: told)
    assert told == [["x: broken"]]


async def test_a_failing_admin_message_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def send(problems: list[str]) -> None:
        raise ConnectionError("gateway down")

    notifier = ReloadNotifier(send, asyncio.get_running_loop())
    notifier(["x: broken"])
    await asyncio.sleep(0)
    await notifier.drain()
    assert "could not tell the admins" in caplog.text
    assert "knowledge reload refused: x: broken" in caplog.text


def test_dispatcher_reports_every_reload_outcome(knowledge: Knowledge) -> None:
    outcomes: list[list[str]] = []
    loads = iter([knowledge])

    def loader() -> Knowledge:
        try:
            return next(loads)
        except StopIteration:
            raise KnowledgeError(["knowledge/faq.yaml:3: broken"]) from None

    dispatcher = Dispatcher(knowledge, loader=loader, on_reload=outcomes.append)
    dispatcher.reload()
    dispatcher.reload()
    assert outcomes == [[], ["knowledge/faq.yaml:3: broken"]]


@pytest.mark.parametrize(
    ("name", "watched"),
    [
        ("faq.yaml", True),
        ("alarm.j2", True),
        ("notes.txt", False),
        (".faq.yaml.swp", False),
        (".faq.yaml.1234.tmp", False),
        ("faq.yaml~", False),
    ],
)
def test_filter_watches_knowledge_files_only(name: str, watched: bool) -> None:
    assert KnowledgeFilter()(Change.modified, f"/kb/{name}") is watched


async def test_watcher_reloads_once_after_a_burst_of_changes(tmp_path: Path) -> None:
    (tmp_path / "alarms").mkdir()
    path = tmp_path / "alarms" / "a.yaml"
    path.write_text("x: 1\n", encoding="utf-8")
    calls: list[int] = []
    watcher = KnowledgeWatcher(
        tmp_path, lambda: calls.append(1), debounce_ms=400, force_polling=False
    )
    watcher.start()
    await asyncio.wait_for(watcher.started(), 10)

    for value in range(5):
        path.write_text(f"x: {value}\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    await until(lambda: calls)
    await asyncio.sleep(0.6)
    await watcher.stop()

    assert calls == [1]
    assert watcher.reloads == 1


async def test_sighup_reloads_the_knowledge(knowledge: Knowledge) -> None:
    reloaded = asyncio.Event()
    loop = asyncio.get_running_loop()

    def loader() -> Knowledge:
        loop.call_soon_threadsafe(reloaded.set)
        return knowledge

    dispatcher = Dispatcher(knowledge, loader=loader)

    async def bot() -> str:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(reloaded.wait(), 10)
        return "done"

    assert await live_reload(dispatcher, bot(), watch=False) == "done"
    assert dispatcher.on_reload is not None


async def test_live_reload_tells_the_admins_about_a_broken_reload(
    knowledge: Knowledge,
) -> None:
    told: list[list[str]] = []

    async def tell(problems: list[str]) -> None:
        told.append(problems)

    def loader() -> Knowledge:
        raise KnowledgeError(["knowledge/faq.yaml:3: faq[0].id: bad"])

    dispatcher = Dispatcher(knowledge, admins=("boss",), loader=loader)

    async def bot() -> None:
        incoming = Incoming(room="ops", sender="boss", text="/reload")
        (reply,) = dispatcher.dispatch(incoming)
        assert "faq[0].id: bad" in reply.text
        await until(lambda: told)

    await live_reload(dispatcher, bot(), on_reload_failed=tell, watch=False)
    assert told == [["knowledge/faq.yaml:3: faq[0].id: bad"]]
    assert dispatcher.knowledge is knowledge
