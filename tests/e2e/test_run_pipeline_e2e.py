"""End to end: ``alarm-bot run`` serves WeChat through the whole pipeline.

The bot runs with ``--http`` and ``--db``, a copy of the knowledge base and an
admin (carol), so these tests see what only the pipeline does: the policy's
one full diagnosis per alarm, the history on disk, ``/healthz`` and
``/metrics``, knowledge edits from the chat, and a failed reload told to the
admin in a direct message.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_harness import (
    ALARM_ROOM,
    HOST,
    World,
    fetch,
    free_port,
    start_world,
    stop_world,
    wait_until,
)

from bot.dispatch import Dispatcher
from bot.errors import KnowledgeError
from bot.kbcheck import load_checked
from bot.kbedit import reload_limits
from bot.knowledge import default_root
from bot.render import split_message
from bot.settings import Settings

pytestmark = pytest.mark.e2e

ANSWER_S = 15.0
ADMIN = "carol"
# The e2e alarm's shape; {appid}, {time} and {count} vary per test.
ALARM = """Appid: {appid}
昵称: 某某出行助手
时间: {time}
内容: 微信服务器向公众号推送消息或事件后,得到的回应不合法
次数: 5分钟 {count}次
错误样例: [OpenID=oxEN-cNljiRkV71kDRuIr2jhTxs-][Stamp=1591944540][Event=Location Report][ip=198.51.*.*][response_length=7][response_content=success]"""  # noqa: E501
OLD_SUMMARY = "平台把消息或事件推给你之后，5 秒内没等到你的响应。"
NEW_SUMMARY = "平台推送后 5 秒内没收到响应：先看服务器负载和慢请求。"


def alarm(appid: str, time: str = "2020-06-12 14:49:00", count: int = 93) -> str:
    return ALARM.format(appid=appid, time=time, count=count)


class Served:
    """The world plus where the bot keeps its history, knowledge and metrics."""

    def __init__(self, world: World, db: Path, root: Path, http: str) -> None:
        self.world, self.db, self.root, self.http = world, db, root, http
        self.gateway = world.gateway

    def get(self, path: str) -> tuple[int, str]:
        return fetch(f"http://{self.http}{path}")

    def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db) as db:
            return list(db.execute(sql, args))

    def dispositions(self, appid: str) -> list[str]:
        rows = self.rows(
            "SELECT disposition FROM alarms WHERE appid = ? ORDER BY id", appid
        )
        return [str(row[0]) for row in rows]

    def decided(self, appid: str, count: int) -> list[str]:
        """Wait until ``count`` alarms of ``appid`` are recorded and decided."""
        return wait_until(
            lambda: (
                (found := self.dispositions(appid))
                and len(found) == count
                and "received" not in found
                and found
            ),
            ANSWER_S,
            f"{count} decided alarm(s) of {appid}",
        )

    def outbox_empty(self) -> None:
        wait_until(
            lambda: "alarm_bot_outbox_queue_depth 0\n" in self.get("/metrics")[1],
            ANSWER_S,
            "an empty outbox",
        )

    def collect(self, since: int, conversation: str, count: int) -> list[str]:
        sent = wait_until(
            lambda: (
                (s := self.gateway.sent(since, conversation))[count - 1 :] and s[:count]
            ),
            ANSWER_S,
            f"{count} message(s) in {conversation}",
        )
        return [str(m["text"]) for m in sent]


@pytest.fixture(scope="module")
def served(
    prerequisites: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("e2e-run")
    root = workdir / "knowledge"
    shutil.copytree(default_root(), root)
    db = workdir / "history" / "bot.db"
    http = f"{HOST}:{free_port()}"
    world = start_world(
        workdir,
        args=("--db", str(db), "--http", http),
        env={"ALARM_BOT_KNOWLEDGE_DIR": str(root), "ALARM_BOT_ADMINS": ADMIN},
    )
    yield Served(world, db, root, http)
    stop_world(world)


def test_healthz_is_ok_once_logged_in(served: Served) -> None:
    status, body = served.get("/healthz")

    assert (status, body) == (200, "ok\n"), served.world.diagnostics()
    assert "alarm_bot_gateway_connected 1\n" in served.get("/metrics")[1]


def test_same_alarm_posted_twice_gets_one_full_diagnosis(
    served: Served, reference: Dispatcher
) -> None:
    text = alarm("wx00000000000000a1")
    diagnosis = split_message(reference.diagnose_text(text).reply)
    start = served.gateway.events()[-1]["seq"]

    served.gateway.say("bob", text, room="alarm-group")
    first = served.collect(start, ALARM_ROOM, len(diagnosis))
    served.gateway.say("bob", text, room="alarm-group")  # pasted again
    later = alarm("wx00000000000000a1", time="2020-06-12 14:54:00", count=95)
    served.gateway.say("alice", later, room="alarm-group")  # the next window
    decided = served.decided("wx00000000000000a1", 3)
    served.outbox_empty()

    assert first == diagnosis, served.world.diagnostics()
    assert decided == ["full", "duplicate", "folded"]
    assert len(served.gateway.sent(start, ALARM_ROOM)) == len(diagnosis)


def test_alarm_is_kept_in_the_db_given_by_option(served: Served) -> None:
    served.gateway.say("bob", alarm("wx00000000000000b2"), room="alarm-group")
    served.decided("wx00000000000000b2", 1)
    served.outbox_empty()

    rows = served.rows(
        "SELECT room, sender, type, count, disposition FROM alarms WHERE appid = ?",
        "wx00000000000000b2",
    )
    assert rows == [("alarm-group", "Bob", "invalid_response", 93, "full")]
    replies = served.rows(
        "SELECT r.kind, r.status FROM replies r JOIN alarms a ON a.reply_id = r.id"
        " WHERE a.appid = ?",
        "wx00000000000000b2",
    )
    assert replies == [("alarm", "sent")]


def test_metrics_count_the_alarms_and_replies(served: Served) -> None:
    served.gateway.say("bob", alarm("wx00000000000000c3"), room="alarm-group")
    served.decided("wx00000000000000c3", 1)
    served.outbox_empty()

    status, body = served.get("/metrics")

    assert status == 200
    found = re.search(
        r'^alarm_bot_alarms_total\{type="invalid_response"\} (\d+)$', body, re.M
    )
    assert found is not None, body
    assert int(found[1]) >= 1
    assert re.search(r'^alarm_bot_replies_sent_total\{kind="alarm"\} [1-9]', body, re.M)
    assert 'alarm_bot_alarms_suppressed_total{reason="duplicate"}' in body


def test_admin_edits_the_knowledge_from_the_room(
    served: Served, reference: Dispatcher
) -> None:
    path = served.root / "alarms" / "request_timeout.yaml"
    original = path.read_text(encoding="utf-8")
    edited = original.replace(OLD_SUMMARY, NEW_SUMMARY)

    proposed = served.gateway.say(
        ADMIN,
        f"/kb set request_timeout\n{edited}",
        room="alarm-group",
        wait_ms=int(ANSWER_S * 1000),
    )
    assert proposed["reply"] is not None, served.world.diagnostics()
    number = re.search(r"变更 ([0-9a-f]{4})", proposed["reply"]["text"])
    assert number is not None, proposed["reply"]["text"]
    confirmed = served.gateway.say(
        ADMIN,
        f"/kb confirm {number[1]}",
        room="alarm-group",
        wait_ms=int(ANSWER_S * 1000),
    )

    assert confirmed["reply"] is not None, served.world.diagnostics()
    assert (
        f"变更 {number[1]} 已写入 alarms/request_timeout.yaml"
        in (confirmed["reply"]["text"])
    )
    assert path.read_text(encoding="utf-8") == edited
    audited = served.rows(
        "SELECT actor, action FROM audit WHERE action LIKE 'kb.%' ORDER BY id"
    )
    assert audited == [("Carol", "kb.propose"), ("Carol", "kb.confirm")]


def test_failed_reload_is_told_to_the_admin_directly(
    served: Served, reference: Dispatcher
) -> None:
    path = served.root / "faq.yaml"
    original = path.read_text(encoding="utf-8")
    start = served.gateway.events()[-1]["seq"]
    reloads = served.world.bot.output().count("knowledge reloaded")

    path.write_text(original + "\n- id: [broken\n", encoding="utf-8")
    try:
        with pytest.raises(KnowledgeError) as refused:
            load_checked(served.root, reload_limits(Settings()))
        expected = split_message(
            reference.renderer.render("reload_failed", problems=refused.value.problems)
        )
        told = served.collect(start, ADMIN, len(expected))
    finally:
        path.write_text(original, encoding="utf-8")

    assert told == expected, served.world.diagnostics()
    wait_until(
        lambda: served.world.bot.output().count("knowledge reloaded") > reloads,
        ANSWER_S,
        "the repaired knowledge to reload",
    )
    time.sleep(0.5)
    assert served.gateway.sent(start, ALARM_ROOM) == []  # the room hears nothing


def test_healthz_fails_while_the_gateway_is_down(served: Served) -> None:
    served.gateway.stop()
    wait_until(lambda: served.get("/healthz")[0] == 503, ANSWER_S, "/healthz to fail")
    down = served.get("/metrics")[1]
    served.gateway.start()
    served.gateway.wait_subscribed(timeout=30)
    wait_until(lambda: served.get("/healthz")[0] == 200, ANSWER_S, "/healthz to heal")

    assert "alarm_bot_gateway_connected 0\n" in down
    assert "alarm_bot_gateway_connected 1\n" in served.get("/metrics")[1]
