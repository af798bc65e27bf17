from __future__ import annotations

import pytest

from bot.channels.base import Incoming
from bot.commands import find_nginx_row
from bot.dispatch import Dispatcher
from bot.errors import KnowledgeError
from bot.knowledge import Knowledge

from .test_alarm import VARIANTS

ALARM = VARIANTS[0]["alarm_text"]


def _room(text: str, *, sender: str = "alice", mentions_bot: bool = False) -> Incoming:
    return Incoming(
        room="alarm-group",
        sender=sender,
        sender_id=f"id-{sender}",
        text=text,
        mentions_bot=mentions_bot,
    )


def test_alarm_in_room_gets_diagnosis_in_that_room(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room(ALARM))
    assert reply.room == "alarm-group"
    assert reply.kind == "alarm"
    assert "请求超时" in reply.text
    assert "取消关注" in reply.text
    assert "1,272" in reply.text


def test_chatter_is_ignored(dispatcher: Dispatcher) -> None:
    assert dispatcher.dispatch(_room("服务器又超时了")) == []
    assert dispatcher.dispatch(_room("   ")) == []


def test_help_command_mentions_the_asker(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room("/help"))
    assert reply.mentions == ("id-alice",)
    assert "/explain" in reply.text
    assert "/reload" not in reply.text


def test_help_for_admin_lists_admin_commands(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room("#help", sender="admin"))
    assert "/reload" in reply.text


@pytest.mark.parametrize("line", ["/帮助", "#help", "/HELP", "/"])
def test_help_aliases(line: str, dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room(line))
    assert "/types" in reply.text


def test_unknown_command_suggests_nearest(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room("/hepl"))
    assert "/help" in reply.text


def test_admin_command_refused_politely(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room("/reload"))
    assert "管理员" in reply.text


def test_explain_by_chinese_alias_without_space(
    dispatcher: Dispatcher, knowledge: Knowledge
) -> None:
    (reply,) = dispatcher.dispatch(_room("/解释请求超时"))
    for step in knowledge.alarms["request_timeout"].steps:
        assert step.title.zh in reply.text


def test_explain_every_type(dispatcher: Dispatcher, knowledge: Knowledge) -> None:
    for alarm_type, entry in knowledge.alarms.items():
        (reply,) = dispatcher.dispatch(_room(f"/explain {alarm_type}"))
        assert entry.names.zh in reply.text


def test_mention_with_question_is_answered(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room("回应失败是什么原因", mentions_bot=True))
    assert "回应" in reply.text
    assert reply.mentions == ("id-alice",)


def test_direct_message_gets_direct_answer(dispatcher: Dispatcher) -> None:
    incoming = Incoming(
        room=None, sender="bob", sender_id="id-bob", text="nginx 499 是什么"
    )
    (reply,) = dispatcher.dispatch(incoming)
    assert reply.room is None
    assert reply.to == "id-bob"
    assert "499" in reply.text


def test_nginx_command(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room("/nginx 502"))
    assert "502" in reply.text
    (reply,) = dispatcher.dispatch(_room("/nginx 999"))
    assert "499" in reply.text


def test_english_replies(knowledge: Knowledge) -> None:
    dispatcher = Dispatcher(knowledge, lang="en")
    (reply,) = dispatcher.dispatch(_room(ALARM))
    assert (
        "Request timeout" in reply.text
        or knowledge.alarms["request_timeout"].names.en in reply.text
    )


def test_crashing_handler_gets_apology_not_traceback(
    dispatcher: Dispatcher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("bot.dispatch.diagnose", explode)
    (reply,) = dispatcher.dispatch(_room(ALARM))
    assert reply.kind == "error"
    assert "Traceback" not in reply.text
    assert "boom" not in reply.text
    assert "handler crashed" in caplog.text


def test_reload_keeps_old_knowledge_when_new_is_broken(knowledge: Knowledge) -> None:
    def broken() -> Knowledge:
        raise KnowledgeError(
            ["knowledge/alarms/markfail.yaml:3: names: field required"]
        )

    dispatcher = Dispatcher(knowledge, admins=("admin",), loader=broken)
    (reply,) = dispatcher.dispatch(_room("/reload", sender="admin"))
    assert "markfail.yaml:3" in reply.text
    assert dispatcher.knowledge is knowledge
    (reply,) = dispatcher.dispatch(_room(ALARM))
    assert reply.kind == "alarm"


def test_reload_swaps_in_new_knowledge(knowledge: Knowledge) -> None:
    dispatcher = Dispatcher(knowledge, admins=("admin",), loader=lambda: knowledge)
    (reply,) = dispatcher.dispatch(_room("/reload", sender="admin"))
    assert str(len(knowledge.alarms)) in reply.text


@pytest.mark.parametrize("line", ["／help", "＃help"])
def test_full_width_prefixes_work(line: str, dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room(line))
    assert "/types" in reply.text


def test_bare_mention_gets_help(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room("", mentions_bot=True))
    assert "/explain" in reply.text


@pytest.mark.parametrize(
    "line", ["/nginx 499 是什么", "/nginx HTTP 502", "@bot nginx 499"]
)
def test_nginx_finds_the_status_inside_words(line: str, dispatcher: Dispatcher) -> None:
    text = line.removeprefix("@bot ")
    (reply,) = dispatcher.dispatch(_room(text, mentions_bot=line.startswith("@")))
    assert "没有" not in reply.text
    assert any(code in reply.text for code in ("499", "502"))


def test_ask_with_an_alarm_diagnoses_it(dispatcher: Dispatcher) -> None:
    (reply,) = dispatcher.dispatch(_room("/ask 帮我看下\n" + ALARM))
    assert "请求超时" in reply.text
    assert "1,272" in reply.text


def test_ask_by_entry_id_returns_that_entry(
    dispatcher: Dispatcher, knowledge: Knowledge
) -> None:
    (reply,) = dispatcher.dispatch(_room("/ask netstat_states"))
    assert knowledge.tables["netstat_states"].title.zh in reply.text


@pytest.mark.parametrize(
    ("line", "row"),
    [
        ("/nginx 501", "500"),
        ("/nginx 308 呢", "301"),
        ("/nginx 418", "4xx"),
        ("/nginx 4xx", "4xx"),
        ("/nginx 304", "304"),
        ("/nginx 429 是什么", "429"),
    ],
)
def test_nginx_explains_a_status_by_its_row_or_its_class(
    line: str, row: str, dispatcher: Dispatcher
) -> None:
    (reply,) = dispatcher.dispatch(_room(line))
    assert "已收录的状态码" not in reply.text
    assert f"{row}：" in reply.text


@pytest.mark.parametrize(
    ("words", "key"),
    [
        ("upstream timed out (110: Connection timed out)", "upstream timed out"),
        (
            "upstream timed out (110: Connection timed out) while reading response "
            "header from upstream",
            "upstream timed out",
        ),
        (
            "upstream timed out (110: Connection timed out) while connecting to "
            "upstream",
            "Connection timed out",
        ),
        ("connect() failed (111: Connection refused)", "Connection refused"),
        ("connect() failed", "connect() failed"),
        ("日志里有 Connection refused 是什么", "Connection refused"),
        (
            "2024/01/01 12:00:00 [error] 123#0: *1 upstream timed out (110: "
            "Connection timed out) while reading response header from upstream",
            "upstream timed out",
        ),
        (
            "2023/05/06 03:04:05 [crit] 502#0: *404 connect() to 10.0.0.1:8080 "
            "failed (11: Resource temporarily unavailable)",
            "Resource temporarily unavailable",
        ),
        (
            "2024/03/05 10:04:04 [crit] 502#502: *499 connect() to "
            "unix:/run/php.sock failed (2: No such file or directory)",
            "connect() failed",
        ),
        (
            "2024/03/15 09:08:07 [alert] 1#0: 1024 worker_connections are not enough",
            "worker_connections are not enough",
        ),
    ],
)
def test_nginx_finds_the_message_an_error_line_leads_with(
    words: str, key: str, knowledge: Knowledge
) -> None:
    found = find_nginx_row(knowledge, words)
    assert found is not None
    assert found[1].key == key


@pytest.mark.parametrize(
    ("words", "key"),
    [
        ("2024/03/15 12:00:00 [error] 502#0: *499 something odd", None),
        ('closed, upstream: "http://10.0.0.5:502/wx"', None),
        ('limiting requests, excess: 20.500 by zone "one"', None),
        ('too big header, upstream: "http://10.0.0.5:443/wx"', None),
        ("返回 502.", "502"),
        ("status:502", "502"),
        ("HTTP状态码:499", "499"),
        ("状态码：404", "404"),
        ("502ms", None),
        ("upstream 5xx", "500"),
        ("nginx499 是啥", "499"),
        ("HTTP/1.1 502 Bad Gateway", "502"),
        ("3xx", "301"),
    ],
)
def test_nginx_takes_a_status_only_where_it_stands_alone(
    words: str, key: str | None, knowledge: Knowledge
) -> None:
    found = find_nginx_row(knowledge, words)
    assert (found[1].key if found else None) == key


@pytest.mark.parametrize(
    ("line", "types"),
    [
        ("/explain 超时", {"request_timeout", "connect_timeout", "ticket_timeout"}),
        ("/explain ticket", {"ticket_failure", "ticket_timeout"}),
        ("/解释 dns", {"dns_failure", "dns_timeout"}),
    ],
)
def test_explain_offers_the_choice_when_words_fit_several_types(
    line: str, types: set[str], dispatcher: Dispatcher
) -> None:
    # "超时" used to open whichever timeout sorted first (a third-party one).
    (reply,) = dispatcher.dispatch(_room(line))
    assert "想看哪一种" in reply.text
    assert all(f"/explain {t}：" in reply.text for t in types)


def test_explain_of_a_status_gives_its_row_not_a_stray_type(
    dispatcher: Dispatcher,
) -> None:
    (reply,) = dispatcher.dispatch(_room("/explain 404"))
    assert "404：服务器上找不到这个 URL 路径" in reply.text
    assert "component_push_failure" not in reply.text
