"""End to end: people talk in a mock WeChat, the real ``alarm-bot run`` answers.

The gateway (Node: wechaty-puppet-service over wechaty-puppet-mock) and the bot
talk gRPC over 127.0.0.1. Expected replies come from the real dispatcher with the
real knowledge base, so these tests check the whole way from a message in a room
to the text that reaches the gateway.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from gateway_harness import (
    ALARM_ROOM,
    AT,
    BOT_SELF,
    RANDOM_ROOM,
    BotProcess,
    Gateway,
    World,
    bot_environ,
    start_world,
    stop_world,
    wait_until,
)

from bot.channels.base import Incoming
from bot.dispatch import Dispatcher
from bot.render import split_message
from bot.settings import Settings

pytestmark = pytest.mark.e2e

# A real alarm's shape (invented appid and addresses): the reply is the diagnosis
ALARM = """Appid: wxa84bba07931db925
昵称: 某某出行助手
时间: 2020-06-12 14:49:00
内容: 微信服务器向公众号推送消息或事件后,得到的回应不合法
次数: 5分钟 93次
错误样例: [OpenID=oxEN-cNljiRkV71kDRuIr2jhTxs-][Stamp=1591944540][Event=Location Report][ip=198.51.*.*][response_length=7][response_content=success]"""  # noqa: E501

ANSWER_MS = 15_000


def expected_texts(reference: Dispatcher, incoming: Incoming) -> list[str]:
    """The messages the bot should post for ``incoming``, as they reach the gateway.

    Split as the outbox splits: it keeps room in the first part for the
    "@name " WeChat puts before it.
    """
    texts = []
    limit = Settings().outbox.message_bytes
    for reply in reference.dispatch(incoming):
        prefix = "".join(f"@{_name(m)} " for m in reply.mentions)
        overhead = sum(len(m.encode()) + 2 for m in reply.mentions)
        parts = split_message(reply.text, limit - overhead)
        texts += [prefix + parts[0], *parts[1:]]
    return texts


def _name(contact_id: str) -> str:
    return {"alice": "Alice", "bob": "Bob", "carol": "Carol"}[contact_id]


def room_incoming(
    text: str, *, sender_id: str = "alice", mentioned: bool = False
) -> Incoming:
    return Incoming(
        room="alarm-group",
        sender=_name(sender_id),
        text=text,
        mentions_bot=mentioned,
        sender_id=sender_id,
        room_id=ALARM_ROOM,
    )


def collect(
    gateway: Gateway, answer: dict[str, Any], count: int
) -> list[dict[str, Any]]:
    """The bot's first ``count`` messages in the conversation ``answer`` was said in."""
    return wait_until(
        lambda: (
            (s := gateway.sent(answer["seq"], answer["conversation"]))[count - 1 :]
            and s[:count]
        ),
        ANSWER_MS / 1000,
        f"{count} message(s) from the bot",
    )


def test_alarm_posted_by_member_gets_its_diagnosis_in_that_room(
    world: World, reference: Dispatcher
) -> None:
    expected = expected_texts(reference, room_incoming(ALARM, sender_id="bob"))

    answer = world.gateway.say("bob", ALARM, room="alarm-group", wait_ms=ANSWER_MS)
    sent = collect(world.gateway, answer, len(expected))

    assert [a.type for a in reference.diagnose_text(ALARM).alarms] == [
        "invalid_response"
    ]
    assert [m["text"] for m in sent] == expected, world.diagnostics()
    assert all(m["conversation"] == ALARM_ROOM for m in sent)
    assert sent[0]["mentions"] == []


def test_help_command_gets_the_help_text_mentioning_the_asker(
    world: World, reference: Dispatcher
) -> None:
    [expected] = expected_texts(reference, room_incoming("/help"))

    answer = world.gateway.say("alice", "/help", room="alarm-group", wait_ms=ANSWER_MS)

    assert answer["reply"] is not None, world.diagnostics()
    assert answer["reply"]["text"] == expected
    assert answer["reply"]["mentions"] == ["alice"]
    assert "/explain" in expected  # the real help text, not an echo


def test_at_question_gets_an_answer(world: World, reference: Dispatcher) -> None:
    question = "回应不合法是什么意思"
    expected = expected_texts(reference, room_incoming(question, mentioned=True))

    answer = world.gateway.say(
        "alice",
        f"@AlarmBot{AT}{question}",
        room="alarm-group",
        mention=(BOT_SELF,),
        wait_ms=ANSWER_MS,
    )
    sent = collect(world.gateway, answer, len(expected))

    assert [m["text"] for m in sent] == expected, world.diagnostics()
    assert sent[0]["mentions"] == ["alice"]


def test_message_in_unlisted_room_gets_nothing(world: World) -> None:
    start = world.gateway.events()[-1]["seq"]

    for text in (ALARM, f"@AlarmBot{AT}/help"):
        answer = world.gateway.say(
            "alice", text, room="random-chat", mention=(BOT_SELF,), wait_ms=1500
        )
        assert answer["reply"] is None, world.diagnostics()
    # the bot is alive and has read past those messages: it answers here
    answer = world.gateway.say("alice", "/help", room="alarm-group", wait_ms=ANSWER_MS)

    assert answer["reply"] is not None, world.diagnostics()
    assert world.gateway.sent(start, RANDOM_ROOM) == []


def test_direct_message_gets_a_direct_answer(
    world: World, reference: Dispatcher
) -> None:
    direct = Incoming(room=None, sender="Carol", text="/help", sender_id="carol")
    [expected] = [r.text for r in reference.dispatch(direct)]

    answer = world.gateway.say("carol", "/help", to=BOT_SELF, wait_ms=ANSWER_MS)

    assert answer["conversation"] == "carol"
    assert answer["reply"] is not None, world.diagnostics()
    assert answer["reply"]["text"] == expected


def test_invitation_to_listed_room_is_accepted_with_one_introduction(
    world: World, reference: Dispatcher
) -> None:
    start = world.gateway.events()[-1]["seq"]

    world.gateway.invite("lunch")
    world.gateway.invite("ops-oncall")
    [intro] = wait_until(
        lambda: world.gateway.sent(start, "oncall-room@chatroom"),
        ANSWER_MS / 1000,
        "the introduction",
    )
    time.sleep(0.5)  # time enough for a second introduction, were there one

    accepted = [
        e for e in world.gateway.events(start) if e["event"] == "invitation_accepted"
    ]
    assert [e["room"] for e in accepted] == ["oncall-room@chatroom"], (
        world.diagnostics()
    )
    assert intro["text"] == reference.renderer.render("intro")
    assert len(world.gateway.sent(start, "oncall-room@chatroom")) == 1


def test_bot_writes_nothing_in_its_working_directory(world: World) -> None:
    world.gateway.say("alice", "/help", room="alarm-group", wait_ms=ANSWER_MS)

    assert list(world.bot.cwd.iterdir()) == []


# ------------------------------------------------------- whole-process runs


@pytest.mark.usefixtures("prerequisites")
def test_bot_answers_again_soon_after_the_gateway_restarts(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    world = start_world(tmp_path)
    try:
        first = world.gateway.say(
            "alice", "/help", room="alarm-group", wait_ms=ANSWER_MS
        )
        assert first["reply"] is not None, world.diagnostics()

        world.gateway.restart()
        listening = time.monotonic()
        world.gateway.wait_subscribed(timeout=30)
        again = world.gateway.say(
            "alice", "/help", room="alarm-group", wait_ms=ANSWER_MS
        )
        answered_after = time.monotonic() - listening

        assert again["reply"] is not None, world.diagnostics()
        assert again["reply"]["text"] == first["reply"]["text"]
        assert world.bot.output().count("logged in as") == 2
        assert "already running" not in world.bot.output()  # one login per connection
        time.sleep(0.3)
        assert len(world.gateway.sent(again["seq"], ALARM_ROOM)) == 1
        assert answered_after < 10, world.diagnostics()
        with capsys.disabled():
            print(
                f"\n  answering again {answered_after:.2f} s after the gateway restart"
            )
        assert world.bot.stop() == 0, world.diagnostics()  # SIGTERM: a clean stop
    finally:
        stop_world(world)


@pytest.mark.usefixtures("prerequisites")
def test_wrong_token_ends_the_bot_with_a_clear_message_and_failure_status(
    tmp_path: Any,
) -> None:
    gateway = Gateway(tmp_path, token="insecure_right_token")
    gateway.start()
    bot = BotProcess(tmp_path, bot_environ(gateway, token="insecure_wrong_token"))
    try:
        bot.start()
        status = bot.wait(timeout=60)
    finally:
        bot.stop()
        gateway.stop()
    output = bot.output()

    assert status != 0, output
    assert "rejected the token" in output
    assert "WECHATY_PUPPET_SERVICE_TOKEN" in output
    assert "insecure_wrong_token" not in output  # never print a token
