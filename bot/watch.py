"""This module reloads the knowledge base while the bot runs: on edits and on SIGHUP.

``KnowledgeWatcher`` watches the knowledge directory (watchfiles: inotify on
Linux, debounced, so an editor's burst of writes is one reload) and calls the
dispatcher's ``reload``, which validates the whole new knowledge base before it
swaps it in; a broken edit leaves the old knowledge serving. ``ReloadNotifier``
is the dispatcher's ``on_reload`` hook: it logs each problem and hands it to the
admins (``on_reload_failed``) once, not again on every save until it is fixed.
``live_reload`` runs a coroutine (the bot) with both, plus a SIGHUP handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from watchfiles import Change, DefaultFilter, awatch

from bot.knowledge import Knowledge

logger = logging.getLogger(__name__)

T = TypeVar("T")
ReloadFailed = Callable[[list[str]], Awaitable[None]]
DEBOUNCE_MS = 800
RETRY_S = 5.0
WATCHED_SUFFIXES = (".yaml", ".yml", ".j2")


class Reloadable(Protocol):
    """What the watcher reloads: the dispatcher."""

    on_reload: Callable[[list[str]], None] | None

    @property
    def knowledge(self) -> Knowledge:
        """The knowledge now serving."""
        ...

    def reload(self) -> str:
        """Load the knowledge again; keep the old one if the new one fails."""
        ...


class KnowledgeFilter(DefaultFilter):
    """Knowledge files only: YAML and templates, no editor swap or backup files."""

    def __call__(self, change: Change, path: str) -> bool:
        """Whether a change to ``path`` should trigger a reload."""
        name = Path(path).name
        return (
            super().__call__(change, path)
            and not name.startswith(".")
            and name.endswith(WATCHED_SUFFIXES)
        )


class ReloadNotifier:
    """Logs reload problems and tells the admins, once per distinct problem.

    Use it as the dispatcher's ``on_reload``: it may be called from any thread.
    A successful reload forgets what was told, so a problem that comes back is
    told again.

    Args:
        on_reload_failed: sends the new problems to the admins (a direct message).
        loop: the event loop ``on_reload_failed`` runs on.
    """

    def __init__(
        self,
        on_reload_failed: ReloadFailed | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._send = on_reload_failed
        self._loop = loop
        self._told: set[str] = set()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, problems: list[str]) -> None:
        """Take the outcome of one reload: its problems, or none on success."""
        with self._lock:
            if not problems:
                self._told.clear()
                return
            new = [p for p in dict.fromkeys(problems) if p not in self._told]
            self._told.update(new)
        if not new:
            logger.debug("reload refused again, problems already told")
            return
        for problem in new:
            logger.error("knowledge reload refused: %s", problem)
        if self._send is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn, self._send, new)

    def _spawn(self, send: ReloadFailed, problems: list[str]) -> None:
        task = asyncio.ensure_future(self._deliver(send(problems)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, sending: Awaitable[None]) -> None:
        try:
            await sending
        except Exception:
            logger.exception("could not tell the admins about a failed reload")

    async def drain(self) -> None:
        """Wait for the notifications under way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class KnowledgeWatcher:
    """Reloads the knowledge after its files change, debounced.

    Args:
        root: the knowledge directory.
        reload: the dispatcher's ``reload``; run in a worker thread, since
            validating the knowledge takes a few hundred milliseconds.
        debounce_ms: how long changes gather before one reload.
        force_polling: poll instead of inotify (network file systems).
    """

    def __init__(
        self,
        root: Path,
        reload: Callable[[], object],
        *,
        debounce_ms: int = DEBOUNCE_MS,
        force_polling: bool | None = None,
    ) -> None:
        self.root = root
        self.reloads = 0
        self._reload = reload
        self._debounce_ms = debounce_ms
        self._force_polling = force_polling
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching in a task of the running loop."""
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="knowledge-watcher")

    async def started(self) -> None:
        """Wait until the watch is in place (changes from now on are seen)."""
        await self._ready.wait()

    async def stop(self) -> None:
        """Stop watching and wait for a reload under way to finish."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._watch()
            except Exception:
                logger.exception("watching %s failed; retrying", self.root)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RETRY_S)

    async def _watch(self) -> None:
        logger.info("watching knowledge root=%s", self.root)
        watch = awatch(
            self.root,
            watch_filter=KnowledgeFilter(),
            debounce=self._debounce_ms,
            step=50,
            stop_event=self._stop,
            force_polling=self._force_polling,
            yield_on_timeout=True,
            rust_timeout=200,
        )
        async for changes in watch:
            self._ready.set()
            if not changes:
                continue
            names = sorted({Path(path).name for _, path in changes})
            logger.info("knowledge changed files=%s: reloading", ",".join(names))
            await asyncio.to_thread(self._reload)
            self.reloads += 1


async def live_reload(
    dispatcher: Reloadable,
    main: Coroutine[Any, Any, T],
    *,
    on_reload_failed: ReloadFailed | None = None,
    watch: bool = True,
    debounce_ms: int = DEBOUNCE_MS,
) -> T:
    """Run ``main`` (the bot) with hot reload: file watching, SIGHUP, admin notes.

    Args:
        dispatcher: what is reloaded; its ``on_reload`` is set here.
        main: the bot's coroutine; the watcher stops when it ends.
        on_reload_failed: sends new reload problems to the admins.
        watch: whether to watch the knowledge files (SIGHUP works either way).
        debounce_ms: how long file changes gather before one reload.

    Returns:
        What ``main`` returns.
    """
    loop = asyncio.get_running_loop()
    notifier = ReloadNotifier(on_reload_failed, loop)
    dispatcher.on_reload = notifier
    watcher = None
    if watch:
        watcher = KnowledgeWatcher(
            dispatcher.knowledge.root, dispatcher.reload, debounce_ms=debounce_ms
        )
        watcher.start()
    hangups: set[asyncio.Future[str]] = set()

    def on_hangup() -> None:
        logger.info("SIGHUP: reloading the knowledge")
        future = asyncio.ensure_future(asyncio.to_thread(dispatcher.reload))
        hangups.add(future)
        future.add_done_callback(hangups.discard)

    has_signal = _add_signal_handler(loop, on_hangup)
    try:
        return await main
    finally:
        if has_signal:
            loop.remove_signal_handler(signal.SIGHUP)
        if watcher is not None:
            await watcher.stop()
        if hangups:
            await asyncio.gather(*hangups, return_exceptions=True)
        await notifier.drain()


def _add_signal_handler(
    loop: asyncio.AbstractEventLoop, handler: Callable[[], None]
) -> bool:
    try:
        loop.add_signal_handler(signal.SIGHUP, handler)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):
        # No SIGHUP on Windows; no handlers outside the main thread.
        logger.debug("no SIGHUP reload here")
        return False
    return True
