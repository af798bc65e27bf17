"""Shared fixtures: the real knowledge base, a dispatcher, a clean environment and
HTTP servers on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from bot.dispatch import Dispatcher
from bot.knowledge import Knowledge, load_knowledge

from .httpserver import Handler, HttpServer

DATA = Path(__file__).parent / "data"
# The guide's request-timeout alarm, as the platform posts it.
TIMEOUT_ALARM = """Appid: wx0123456789abcdef
昵称: 示例公众号
时间: 2014-12-01 20:12:00
内容: 微信服务器向公众号推送消息或事件后,开发者5秒内没有返回
次数: 5分钟 1272次
错误样例: [IP=203.205.140.29][Event=UnSubscribe]"""


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's ALARM_BOT_* or WECHATY_* settings."""
    for name in list(os.environ):
        if name.startswith(("ALARM_BOT_", "WECHATY_")):
            monkeypatch.delenv(name)
    return


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return load_knowledge()


@pytest.fixture
def dispatcher(knowledge: Knowledge) -> Dispatcher:
    return Dispatcher(knowledge, admins=("admin",))


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[HttpServer]]]:
    """Start HTTP servers on 127.0.0.1 that answer with a handler; stop them after."""
    servers: list[HttpServer] = []

    async def start(handler: Handler) -> HttpServer:
        server = await HttpServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
