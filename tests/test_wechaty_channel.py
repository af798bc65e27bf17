"""The Wechaty channel, driven in-process through wechaty's own FakePuppet.

No gateway and no gRPC: a FakePuppet subclass plays the puppet, events go through
the real Wechaty event bridge, and the tests read what reached the puppet's send.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.channels import wechaty as channel_module
from bot.channels.base import Incoming, Reply
from bot.channels.wechaty import Backoff, WechatyChannel
from bot.errors import GatewayError
from bot.settings import Settings

# wechaty imports come after the channel module, which makes them importable
from grpclib.const import Status  # isort: skip
from grpclib.exceptions import GRPCError  # isort: skip
from wechaty.fake_puppet import FakePuppet  # isort: skip
from wechaty_puppet import (  # isort: skip
    ContactPayload,
    EventLoginPayload,
    EventLogoutPayload,
    EventMessagePayload,
    EventRoomInvitePayload,
    EventRoomJoinPayload,
    EventRoomTopicPayload,
    MessagePayload,
    MessageType,
    PuppetOptions,
    RoomInvitationPayload,
    RoomPayload,
)

SELF = "bot-self"
ALARM_ROOM = "alarm-room@chatroom"
RANDOM_ROOM = "random-room@chatroom"
ONCALL_ROOM = "oncall-room@chatroom"
AT = "\u2005"  # WeChat's separator after an @name
ALARM = (
    "Appid：wx0123456789abcdef\n时间：2024-05-01 10:00:00\n内容：第三方回调域名解析失败"
)

# wechaty remembers every message id it has seen in a process-wide set
_ids = itertools.count()


def _message_id() -> str:
    return f"m-{os.getpid()}-{next(_ids)}"


class RecordingPuppet(FakePuppet):
    """A FakePuppet that records what the bot sends, as a puppet would post it."""

    def __init__(self) -> None:
        super().__init__(PuppetOptions())
        self.login_user_id = SELF
        self.sent: list[tuple[str, str, list[str] | None]] = []
        self.accepted: list[str] = []
        self.invitations: dict[str, str] = {}
        for contact_id, name in [
            (SELF, "AlarmBot"),
            ("alice", "Alice"),
            ("bob", "Bob"),
        ]:
            self.add_fake_contact(ContactPayload(id=contact_id, name=name))
        for room_id, topic, members in [
            (ALARM_ROOM, "alarm-group", [SELF, "alice", "bob"]),
            (RANDOM_ROOM, "random-chat", [SELF, "alice"]),
            (ONCALL_ROOM, "ops-oncall", ["alice"]),
        ]:
            self.add_fake_room(
                RoomPayload(
                    id=room_id, topic=topic, owner_id="alice", member_ids=members
                )
            )

    async def message_send_text(
        self, conversation_id: str, message: str, mention_ids: list[str] | None = None
    ) -> str:
        self.sent.append((conversation_id, message, mention_ids))
        return self.post(SELF, conversation_id, message)

    def post(
        self,
        talker: str,
        conversation: str,
        text: str,
        mentions: tuple[str, ...] = (),
        *,
        kind: Any = MessageType.MESSAGE_TYPE_TEXT,
        timestamp: float | None = None,
    ) -> str:
        """Put a message into a room (``...@chatroom``) or a direct chat."""
        message_id = _message_id()
        in_room = conversation.endswith("@chatroom")
        self.add_fake_message(
            MessagePayload(
                id=message_id,
                from_id=talker,
                room_id=conversation if in_room else "",
                to_id="" if in_room else conversation,
                text=text,
                type=kind,
                mention_ids=list(mentions),
                timestamp=int((time.time() if timestamp is None else timestamp) * 1000),
            )
        )
        self.emitter.emit("message", EventMessagePayload(message_id=message_id))
        return message_id

    async def room_invitation_payload(
        self, room_invitation_id: str, payload: Any = None
    ) -> Any:
        topic = self.invitations[room_invitation_id]
        return RoomInvitationPayload(id=room_invitation_id, topic=topic)

    async def room_invitation_accept(self, room_invitation_id: str) -> None:
        self.accepted.append(room_invitation_id)

    async def stop(self) -> None:
        self.emitter.remove_all_listeners()


class Recorder:
    """A dispatch function that records what it is given and answers by rule."""

    def __init__(self, answer: Callable[[Incoming], list[Reply]] | None = None) -> None:
        self.seen: list[Incoming] = []
        self.answer = answer or _echo

    def __call__(self, incoming: Incoming) -> list[Reply]:
        self.seen.append(incoming)
        return self.answer(incoming)


def _echo(incoming: Incoming) -> list[Reply]:
    """Answer like the dispatcher: mention the asker where the bot was asked."""
    mentions = (incoming.sender_id,) if incoming.mentions_bot and incoming.room else ()
    to = None if incoming.room else incoming.sender_id
    return [
        Reply(room=incoming.room, text=f"re: {incoming.text}", mentions=mentions, to=to)
    ]


class Harness:
    """A channel wired to a RecordingPuppet, logged in and ready for events."""

    def __init__(
        self, channel: WechatyChannel, puppet: RecordingPuppet, dispatch: Recorder
    ):
        self.channel, self.puppet, self.dispatch = channel, puppet, dispatch

    async def say(
        self, talker: str, conversation: str, text: str, **kwargs: Any
    ) -> None:
        """Post a message, then wait for the bot's answer, or 50 ms for none."""
        sent = len(self.puppet.sent)
        self.puppet.post(talker, conversation, text, **kwargs)
        await self.settle(lambda: len(self.puppet.sent) > sent)

    async def settle(self, done: Callable[[], bool] = lambda: False) -> None:
        """Let the event handlers run: until ``done()``, or about 50 ms quiet."""
        for _ in range(50):
            await asyncio.sleep(0.001)
            if done():
                break
        for _ in range(20):  # and whatever else they still had to do
            await asyncio.sleep(0.001)


async def _harness(
    settings: Settings | None = None,
    answer: Callable[[Incoming], list[Reply]] | None = None,
    introduction: Callable[[], str] | None = None,
    post: Callable[[Reply], Awaitable[None]] | None = None,
) -> Harness:
    puppet = RecordingPuppet()
    dispatch = Recorder(answer)
    channel = WechatyChannel(
        dispatch,
        settings or Settings(rooms=["alarm-group"]),
        introduction=introduction,
        post=post,
        puppet=puppet,
    )
    await channel.open()
    puppet.emitter.emit("login", EventLoginPayload(contact_id=SELF))
    harness = Harness(channel, puppet, dispatch)
    await harness.settle()
    return harness


# ------------------------------------------------------------------ messages


async def test_room_message_mentioning_bot_is_answered_in_room_with_mention() -> None:
    h = await _harness()

    await h.say("alice", ALARM_ROOM, f"@AlarmBot{AT}/help", mentions=(SELF,))

    [incoming] = h.dispatch.seen
    assert incoming.room == "alarm-group"
    assert incoming.room_id == ALARM_ROOM
    assert (incoming.sender, incoming.sender_id) == ("Alice", "alice")
    assert incoming.mentions_bot is True
    assert incoming.text == "/help"
    assert incoming.at is not None
    assert incoming.at.utcoffset() is not None
    assert h.puppet.sent == [(ALARM_ROOM, "@Alice re: /help", ["alice"])]


async def test_alarm_without_mention_keeps_text_and_replies_without_mention() -> None:
    h = await _harness()

    await h.say("bob", ALARM_ROOM, ALARM)

    [incoming] = h.dispatch.seen
    assert incoming.mentions_bot is False
    assert incoming.text == ALARM
    assert h.puppet.sent == [(ALARM_ROOM, f"re: {ALARM}", None)]


async def test_typed_at_name_without_mention_ids_counts_as_mention() -> None:
    h = await _harness()

    await h.say("alice", ALARM_ROOM, "@AlarmBot what is a MarkFail?")

    [incoming] = h.dispatch.seen
    assert incoming.mentions_bot is True
    assert incoming.text == "what is a MarkFail?"


async def test_bot_name_setting_is_recognised_as_mention() -> None:
    h = await _harness(Settings(rooms=["alarm-group"], bot_name="报警助手"))

    await h.say("alice", ALARM_ROOM, f"@报警助手{AT}怎么处理超时")

    [incoming] = h.dispatch.seen
    assert (incoming.mentions_bot, incoming.text) == (True, "怎么处理超时")


async def test_mention_of_someone_else_is_not_a_mention_of_the_bot() -> None:
    h = await _harness()

    await h.say("alice", ALARM_ROOM, f"@Bob{AT}look at this", mentions=("bob",))

    [incoming] = h.dispatch.seen
    assert incoming.mentions_bot is False
    assert incoming.text == f"@Bob{AT}look at this"


async def test_unlisted_room_is_ignored_entirely() -> None:
    h = await _harness()

    await h.say("alice", RANDOM_ROOM, f"@AlarmBot{AT}/help", mentions=(SELF,))
    await h.say("alice", RANDOM_ROOM, ALARM)

    assert h.dispatch.seen == []
    assert h.puppet.sent == []


async def test_room_can_be_listed_by_id() -> None:
    h = await _harness(Settings(rooms=[RANDOM_ROOM]))

    await h.say("alice", RANDOM_ROOM, ALARM)
    await h.say("alice", ALARM_ROOM, ALARM)

    assert [i.room_id for i in h.dispatch.seen] == [RANDOM_ROOM]


async def test_empty_room_list_serves_every_room() -> None:
    h = await _harness(Settings())

    await h.say("alice", RANDOM_ROOM, ALARM)
    await h.say("alice", ALARM_ROOM, ALARM)

    assert [i.room for i in h.dispatch.seen] == ["random-chat", "alarm-group"]


async def test_bot_ignores_its_own_messages() -> None:
    h = await _harness()

    await h.say(SELF, ALARM_ROOM, ALARM)

    assert h.dispatch.seen == []


async def test_non_text_message_is_ignored() -> None:
    h = await _harness()

    await h.say("alice", ALARM_ROOM, "", kind=MessageType.MESSAGE_TYPE_IMAGE)

    assert h.dispatch.seen == []


async def test_replayed_old_message_is_ignored() -> None:
    h = await _harness()

    await h.say("alice", ALARM_ROOM, ALARM, timestamp=time.time() - 3600)
    await h.say("alice", ALARM_ROOM, ALARM, timestamp=time.time() - 60)

    assert len(h.dispatch.seen) == 1


async def test_direct_message_gets_a_direct_answer() -> None:
    h = await _harness()

    await h.say("alice", SELF, "  /help  ")

    [incoming] = h.dispatch.seen
    assert incoming.room is None
    assert incoming.mentions_bot is True
    assert incoming.text == "/help"
    assert h.puppet.sent == [("alice", "re: /help", None)]


async def test_long_reply_is_split_and_mentions_only_in_first_part() -> None:
    paragraphs = "\n\n".join(f"{n:02d} " + "x" * 900 for n in range(4))

    def long_answer(incoming: Incoming) -> list[Reply]:
        return [Reply(room=incoming.room, text=paragraphs, mentions=("alice",))]

    h = await _harness(answer=long_answer)

    await h.say("alice", ALARM_ROOM, "/explain dns")
    await h.settle(lambda: len(h.puppet.sent) >= 2)

    assert len(h.puppet.sent) >= 2
    assert h.puppet.sent[0][2] == ["alice"]
    assert all(mentions is None for _, _, mentions in h.puppet.sent[1:])
    posted = "".join(text for _, text, _ in h.puppet.sent)
    assert all(f"{n:02d} " in posted for n in range(4))


async def test_mention_by_display_name_resolves_to_contact_id() -> None:
    def answer(incoming: Incoming) -> list[Reply]:
        return [Reply(room=incoming.room, text="on it", mentions=("Alice",))]

    h = await _harness(answer=answer)

    await h.say("alice", ALARM_ROOM, ALARM)

    assert h.puppet.sent == [(ALARM_ROOM, "@Alice on it", ["alice"])]


async def test_crashing_dispatch_is_logged_and_next_message_still_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = itertools.count()

    def flaky(incoming: Incoming) -> list[Reply]:
        if next(calls) == 0:
            raise RuntimeError("boom")
        return _echo(incoming)

    h = await _harness(answer=flaky)

    await h.say("alice", ALARM_ROOM, "first")
    await h.say("alice", ALARM_ROOM, "second")

    assert "handling failed" in caplog.text
    assert h.puppet.sent == [(ALARM_ROOM, "re: second", None)]


async def test_say_to_a_room_by_topic_without_a_message_first() -> None:
    h = await _harness()

    await h.channel.say(Reply(room="alarm-group", text="heads up", kind="notice"))

    assert h.puppet.sent == [(ALARM_ROOM, "heads up", None)]


# ------------------------------------------------------- invitations, joining


async def test_invitation_to_listed_room_is_accepted() -> None:
    h = await _harness(Settings(rooms=["alarm-group", "ops-oncall"]))
    h.puppet.invitations.update({"inv-1": "ops-oncall", "inv-2": "lunch"})

    h.puppet.emitter.emit(
        "room-invite", EventRoomInvitePayload(room_invitation_id="inv-1")
    )
    h.puppet.emitter.emit(
        "room-invite", EventRoomInvitePayload(room_invitation_id="inv-2")
    )
    await h.settle(lambda: bool(h.puppet.accepted))

    assert h.puppet.accepted == ["inv-1"]


async def test_joining_listed_room_posts_one_introduction() -> None:
    h = await _harness(
        Settings(rooms=["alarm-group", "ops-oncall"]), introduction=lambda: "hello all"
    )
    joined = EventRoomJoinPayload(
        room_id=ONCALL_ROOM, invited_ids=[SELF], inviter_id="alice", timestamp=0
    )

    h.puppet.emitter.emit("room-join", joined)
    await h.settle(lambda: bool(h.puppet.sent))
    h.puppet.emitter.emit("room-join", joined)
    await h.settle()

    assert h.puppet.sent == [(ONCALL_ROOM, "hello all", None)]


async def test_joining_unlisted_room_or_someone_else_joining_says_nothing() -> None:
    h = await _harness(introduction=lambda: "hello all")

    h.puppet.emitter.emit(
        "room-join",
        EventRoomJoinPayload(
            room_id=ONCALL_ROOM, invited_ids=[SELF], inviter_id="alice", timestamp=0
        ),
    )
    h.puppet.emitter.emit(
        "room-join",
        EventRoomJoinPayload(
            room_id=ALARM_ROOM, invited_ids=["bob"], inviter_id="alice", timestamp=0
        ),
    )
    await h.settle()

    assert h.puppet.sent == []


async def test_replies_and_introduction_go_to_post_when_given() -> None:
    posted: list[Reply] = []

    async def post(reply: Reply) -> None:
        posted.append(reply)

    h = await _harness(
        Settings(rooms=["alarm-group", "ops-oncall"]),
        introduction=lambda: "hello all",
        post=post,
    )
    await h.say("alice", ALARM_ROOM, "/help")
    h.puppet.emitter.emit(
        "room-join",
        EventRoomJoinPayload(
            room_id=ONCALL_ROOM, invited_ids=[SELF], inviter_id="alice", timestamp=0
        ),
    )
    await h.settle(lambda: len(posted) == 2)

    assert posted == [
        Reply(room="alarm-group", text="re: /help"),
        Reply(room="ops-oncall", text="hello all", kind="notice"),
    ]
    assert h.puppet.sent == []  # the outbox behind post does the sending


async def test_is_logged_in_from_login_until_logout_or_close() -> None:
    puppet = RecordingPuppet()
    channel = WechatyChannel(Recorder(), Settings(), puppet=puppet)
    await channel.open()
    h = Harness(channel, puppet, Recorder())
    before = channel.is_logged_in

    puppet.emitter.emit("login", EventLoginPayload(contact_id=SELF))
    await h.settle(lambda: channel.is_logged_in)
    after_login = channel.is_logged_in
    puppet.emitter.emit("logout", EventLogoutPayload(contact_id=SELF, data=""))
    await h.settle(lambda: not channel.is_logged_in)
    after_logout = channel.is_logged_in
    puppet.emitter.emit("login", EventLoginPayload(contact_id=SELF))
    await h.settle(lambda: channel.is_logged_in)
    await channel.close()

    assert (before, after_login, after_logout) == (False, True, False)
    assert not channel.is_logged_in


async def test_renamed_room_is_served_by_its_new_topic() -> None:
    h = await _harness()
    await h.say("alice", ALARM_ROOM, ALARM)  # the room's payload is cached now

    # the puppet knows the new topic; wechaty's cached room still has the old one
    h.puppet.add_fake_room(
        RoomPayload(
            id=ALARM_ROOM,
            topic="old-alarms",
            owner_id="alice",
            member_ids=[SELF, "alice", "bob"],
        )
    )
    h.puppet.emitter.emit(
        "room-topic",
        EventRoomTopicPayload(
            room_id=ALARM_ROOM,
            new_topic="old-alarms",
            old_topic="alarm-group",
            changer_id="alice",
            timestamp=0,
        ),
    )
    await h.settle()
    await h.say("alice", ALARM_ROOM, ALARM)

    assert [i.room for i in h.dispatch.seen] == ["alarm-group"]


# ------------------------------------------------------------ connect loop


class ScriptedPuppet(RecordingPuppet):
    """A puppet whose connections go as scripted: each entry is one start()."""

    def __init__(self, script: list[BaseException | str]) -> None:
        super().__init__()
        self.script = script
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        step = self.script.pop(0) if self.script else "serve"
        if isinstance(step, BaseException):
            raise step
        self.emitter.emit("login", EventLoginPayload(contact_id=SELF))
        if step == "serve":
            await asyncio.Event().wait()
        # "drop": the event stream ends


def test_backoff_doubles_up_to_cap() -> None:
    delays = Backoff(first=0.25, cap=1.0).delays()

    assert [next(delays) for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]


async def test_rejected_token_ends_run_with_gateway_error_naming_the_variable() -> None:
    puppet = ScriptedPuppet(
        [GRPCError(Status.UNAUTHENTICATED, 'Invalid Wechaty TOKEN "s3cret"')]
    )
    channel = WechatyChannel(
        Recorder(), Settings(), puppet=puppet, backoff=Backoff(first=0.001)
    )

    with pytest.raises(GatewayError, match="WECHATY_PUPPET_SERVICE_TOKEN") as caught:
        await asyncio.wait_for(channel.run(), 5)

    assert "s3cret" not in str(caught.value)
    assert puppet.starts == 1


async def test_run_reconnects_after_failures_and_logs_in_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.channels.wechaty")
    puppet = ScriptedPuppet(
        [ConnectionRefusedError(111, "Connection refused"), "drop", "serve"]
    )
    channel = WechatyChannel(
        Recorder(), Settings(), puppet=puppet, backoff=Backoff(first=0.001)
    )
    runner = asyncio.create_task(channel.run())

    for _ in range(500):
        await asyncio.sleep(0.002)
        if caplog.text.count("logged in as") == 2:
            break
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner

    assert puppet.starts == 3
    assert caplog.text.count("logged in as AlarmBot") == 2
    assert "unreachable (Connection refused); reconnecting" in caplog.text
    assert "the gateway closed the connection; reconnecting" in caplog.text


# ------------------------------------------------------------- workarounds


async def test_serve_without_a_gateway_refuses_to_start() -> None:
    channel = WechatyChannel(Recorder(), Settings())

    with pytest.raises(GatewayError, match="WECHATY_PUPPET_SERVICE_ENDPOINT"):
        await channel_module.serve(channel)


async def test_serve_stops_on_sigterm_after_draining_what_is_left_to_say() -> None:
    token = "insecure-sigterm-test-token"
    settings = Settings(puppet_endpoint="127.0.0.1:9", puppet_token=token)
    channel = WechatyChannel(Recorder(), settings, puppet=ScriptedPuppet(["serve"]))
    drained: list[bool] = []

    async def drain() -> None:
        drained.append(channel.is_logged_in)

    serving = asyncio.create_task(channel_module.serve(channel, drain=drain))
    try:
        for _ in range(500):
            await asyncio.sleep(0.002)
            if channel.is_logged_in:
                break
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 5)
    finally:
        gc.unfreeze()
        channel_module._REDACTOR.secrets.discard(token)

    assert drained == [True]  # while still connected
    assert not channel.is_logged_in


def test_wechaty_loggers_go_through_app_logging_with_token_blanked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from wechaty_puppet import get_logger

    noisy = get_logger("WechatyTestNoisy")  # as every wechaty module makes its own
    channel_module._tame_wechaty_loggers("s3cret-token")

    noisy.info("receive message <some private chat>")
    noisy.error("there are endpoint<127.0.0.1:1> and token<s3cret-token>")

    assert noisy.propagate is True
    assert noisy.handlers == []
    assert "private chat" not in caplog.text
    assert "token<<token>>" in caplog.text
    assert "s3cret-token" not in caplog.text


def test_importing_the_channel_writes_nothing_in_the_working_directory(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CACHE_DIR"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    subprocess.run(
        [sys.executable, "-W", "error", "-c", "import bot.channels.wechaty"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=60,
    )

    assert list(tmp_path.iterdir()) == []
