from __future__ import annotations

import io

from bot.channels.base import Incoming, Reply
from bot.channels.console import ConsoleChannel, run_console, to_incoming
from bot.dispatch import Dispatcher

from .test_alarm import SAMPLES


async def test_console_reads_a_multiline_paste_as_one_message(
    dispatcher: Dispatcher,
) -> None:
    alarm = next(c for c in SAMPLES if c["id"] == "wx-01")["alarm_text"]
    stdin = io.StringIO(alarm + "\n---\n/help\n")
    out = io.StringIO()
    handled = await run_console(dispatcher.dispatch, stdin=stdin, out=out)
    assert handled == 2
    text = out.getvalue()
    assert text.count("[alarm-bot]") >= 2
    assert "回应失败" in text
    assert "/explain" in text


async def test_console_ignores_chatter_and_answers_mentions(
    dispatcher: Dispatcher,
) -> None:
    out = io.StringIO()
    stdin = io.StringIO("今天天气不错\n---\n@bot nginx 499 是什么\n")
    await run_console(dispatcher.dispatch, stdin=stdin, out=out)
    assert out.getvalue().count("[alarm-bot]") == 1
    assert "499" in out.getvalue()


def test_mention_prefix_sets_mentions_bot() -> None:
    incoming = to_incoming("@alarm-bot 帮助", "you")
    assert incoming.mentions_bot
    assert incoming.text == "帮助"
    assert not to_incoming("hello", "you").mentions_bot


async def test_console_channel_splits_long_replies() -> None:
    out = io.StringIO()
    await ConsoleChannel(out, limit=100).say(Reply(room="console", text="行\n" * 200))
    assert out.getvalue().count("[alarm-bot]") > 1


async def test_console_handles_empty_input() -> None:
    def never(incoming: Incoming) -> list[Reply]:
        raise AssertionError("nothing to dispatch")

    assert await run_console(never, stdin=io.StringIO(""), out=io.StringIO()) == 0
