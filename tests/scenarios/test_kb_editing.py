"""Editing the knowledge from the chat: propose, review the diff, confirm, undo.

The dispatcher serves a copy of the shipped knowledge and validates every change
with ``load_checked``, exactly as the running bot does.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bot.channels.base import Incoming
from bot.dispatch import Dispatcher
from bot.kbcheck import load_checked
from bot.kbedit import KnowledgeEditor, MemoryAuditLog
from bot.knowledge import default_root

from ..conftest import TIMEOUT_ALARM as ALARM

ROOM = "ops"
OLD_SUMMARY = "平台把消息或事件推给你之后，5 秒内没等到你的响应。"
NEW_SUMMARY = "平台推送后 5 秒内没收到响应：先看服务器负载和慢请求。"


class Chat:
    """A room with an admin and a member talking to the dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def say(self, text: str, sender: str = "admin") -> str:
        incoming = Incoming(
            room=ROOM, sender=sender, sender_id=f"wxid_{sender}", text=text
        )
        replies = self.dispatcher.dispatch(incoming)
        assert len(replies) == 1, replies
        return replies[0].text


@pytest.fixture
def root(tmp_path: Path) -> Path:
    copy = tmp_path / "knowledge"
    shutil.copytree(default_root(), copy)
    return copy


@pytest.fixture
def audit() -> MemoryAuditLog:
    return MemoryAuditLog()


@pytest.fixture
def chat(root: Path, tmp_path: Path, audit: MemoryAuditLog) -> Chat:
    editor = KnowledgeEditor(root, tmp_path / "kb-history", audit=audit)
    dispatcher = Dispatcher(
        load_checked(root),
        admins=("admin", "老王"),
        loader=lambda: load_checked(root),
        editor=editor,
    )
    return Chat(dispatcher)


def change_id(reply: str) -> str:
    found = re.search(r"变更 ([0-9a-f]{4})", reply)
    assert found, reply
    return found.group(1)


def test_admin_edits_an_alarm_type_sees_the_reply_change_and_undoes_it(
    chat: Chat, root: Path, audit: MemoryAuditLog
) -> None:
    path = root / "alarms" / "request_timeout.yaml"
    original = path.read_text(encoding="utf-8")
    assert OLD_SUMMARY in chat.say(ALARM)

    shown = chat.say("/kb show request_timeout")
    assert "📄 request_timeout（alarms/request_timeout.yaml）" in shown
    assert "# 报警类型：请求超时" in shown  # comments come along
    edited = original.replace(OLD_SUMMARY, NEW_SUMMARY)

    proposed = chat.say(f"/kb set request_timeout\n{edited}")
    assert "校验整个知识库，全部通过" in proposed
    assert f"-  zh: {OLD_SUMMARY}" in proposed
    assert f"+  zh: {NEW_SUMMARY}" in proposed
    assert OLD_SUMMARY in chat.say(ALARM)  # nothing changes before confirm

    number = change_id(proposed)
    confirmed = chat.say(f"/kb confirm {number}")
    assert f"✅ 变更 {number} 已写入 alarms/request_timeout.yaml" in confirmed
    assert "知识库已重载" in confirmed
    assert NEW_SUMMARY in chat.say(ALARM)
    assert path.read_text(encoding="utf-8") == edited
    assert f"• {number} " in chat.say("/kb log")

    undone = chat.say("/kb undo")
    assert f"已撤销变更 {number}" in undone
    assert OLD_SUMMARY in chat.say(ALARM)
    assert path.read_text(encoding="utf-8") == original
    assert [r["action"] for r in audit.rows] == ["kb.propose", "kb.confirm", "kb.undo"]
    assert {r["actor"] for r in audit.rows} == {"admin"}


def test_member_suggests_an_faq_change_and_an_admin_confirms_it(
    chat: Chat, root: Path
) -> None:
    faq = root / "faq.yaml"
    before = faq.read_text(encoding="utf-8")
    shown = chat.say("/kb show alarm_setup", sender="mei")
    entry = shown.split("\n", 1)[1].split("\n\n要修改")[0]
    assert entry.startswith("id: alarm_setup\n")
    edited = entry.replace("把一个微信群绑定为报警群", "把值班群绑定为报警群")

    suggested = chat.say(f"/kb suggest alarm_setup\n{edited}", sender="mei")
    assert "mei 建议修改条目 alarm_setup（faq.yaml）" in suggested
    number = change_id(suggested)
    refused = chat.say(f"/kb confirm {number}", sender="mei")
    assert refused == (
        "抱歉，/kb confirm 只有管理员能用，请找管理员 admin、老王 操作。"
    )

    confirmed = chat.say(f"/kb confirm {number}", sender="老王")
    assert "mei 提出，老王 确认" in confirmed
    assert "把值班群绑定为报警群" in chat.say("/ask 接口报警在哪里设置", sender="mei")
    after = faq.read_text(encoding="utf-8")
    assert after.replace("把值班群绑定为报警群", "把一个微信群绑定为报警群") == before


def test_admin_rejects_a_suggestion_and_nothing_changes(chat: Chat, root: Path) -> None:
    before = (root / "faq.yaml").read_text(encoding="utf-8")
    entry = chat.say("/kb show alarm_setup").split("\n", 1)[1].split("\n\n要修改")[0]
    suggested = chat.say(
        f"/kb suggest alarm_setup\n{entry.replace('设置', '开启')}", sender="mei"
    )
    number = change_id(suggested)

    assert f"已放弃变更 {number}" in chat.say(f"/kb reject {number}")
    assert "没有待确认的变更" in chat.say(f"/kb confirm {number}")
    assert (root / "faq.yaml").read_text(encoding="utf-8") == before


def test_a_change_that_breaks_the_knowledge_is_refused_with_the_problem(
    chat: Chat, root: Path
) -> None:
    path = root / "alarms" / "markfail.yaml"
    original = path.read_text(encoding="utf-8")
    broken = original.replace("severity: critical", "severity: catastrophic")
    assert broken != original

    reply = chat.say(f"/kb set markfail\n{broken}")

    assert "改动没有通过校验，知识库保持原样" in reply
    line = broken.split("severity: catastrophic")[0].count("\n") + 1
    assert f"knowledge/alarms/markfail.yaml:{line}: severity: input should be" in reply
    assert "/kb confirm" not in reply
    assert path.read_text(encoding="utf-8") == original


@pytest.mark.parametrize(
    "command", ["set alarm_setup\nid: alarm_setup", "undo", "reject ab12"]
)
def test_members_are_refused_admin_subcommands_politely(
    chat: Chat, command: str
) -> None:
    word = command.split()[0]
    assert chat.say(f"/kb {command}", sender="mei") == (
        f"抱歉，/kb {word} 只有管理员能用，请找管理员 admin、老王 操作。"
    )


def test_help_shows_members_only_what_they_may_use(chat: Chat) -> None:
    member = chat.say("/help", sender="mei")
    admin = chat.say("/help")
    assert "/kb show|suggest|log" in member
    assert "confirm" not in member
    assert "/reload" not in member
    assert "/kb show|set|suggest|confirm|reject|log|undo" in admin


def test_kb_without_arguments_explains_itself(chat: Chat) -> None:
    assert "/kb show <条目id>" in chat.say("/kb")
    assert "知识库里没有条目 alarm_setpu。你要找的是不是：alarm_setup" in chat.say(
        "/kb show alarm_setpu"
    )


def test_a_suggestion_without_yaml_is_told_how_to_suggest(chat: Chat) -> None:
    # The hint named the admin-only "/kb set" to a member who asked to suggest.
    reply = chat.say("/kb suggest alarm_setup", sender="mei")
    assert "请在 /kb suggest alarm_setup 这一行之后换行" in reply
    assert "Tab" not in chat.say("/kb suggest alarm_setup\nid: [unclosed", sender="mei")
