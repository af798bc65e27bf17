"""The terminal channel: a one-room group chat in the console, the embedded default.

Lines typed or pasted together form one message, as a paste into WeChat does: the
channel waits a moment after each line and sends what has gathered once input
pauses. A line holding only ``---`` also ends a message, so a file of several
messages can be piped in.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from bot.alarm import PLATFORM_TZ
from bot.channels.base import Incoming, Reply
from bot.render import split_message

logger = logging.getLogger(__name__)

PASTE_PAUSE_S = 0.15
SEPARATOR = "---"
ROOM = "console"
MENTION_RE = re.compile(
    r"^@(?:alarm-?bot|bot|报警助手)[\s\u2005:：,，]*", re.IGNORECASE
)


class ConsoleChannel:
    """Prints replies as the group would see them, one message per block."""

    def __init__(self, out: TextIO | None = None, limit: int = 2048) -> None:
        self.out = out or sys.stdout
        self.limit = limit

    async def say(self, reply: Reply) -> None:
        """Print ``reply``, split into messages as they would be posted."""
        mentions = "".join(f"@{m} " for m in reply.mentions)
        for index, message in enumerate(split_message(reply.text, self.limit)):
            prefix = mentions if index == 0 else ""
            self.out.write(f"\n[alarm-bot] {prefix}{message}\n")
        self.out.flush()


async def run_console(
    dispatch: Callable[[Incoming], list[Reply]],
    *,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    sender: str = "you",
    banner: str | None = None,
) -> int:
    """Run the console chat until end of input; return the number of messages.

    Args:
        dispatch: turns one incoming message into replies.
        stdin: where messages are read (standard input by default).
        out: where replies are written (standard output by default).
        sender: the name the console user speaks as.
        banner: a line printed first, e.g. how to connect to WeChat.
    """
    source = stdin or sys.stdin
    channel = ConsoleChannel(out)
    if banner:
        channel.out.write(banner + "\n")
        channel.out.flush()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    reader = loop.run_in_executor(None, _pump, source, lines, loop)
    handled = 0
    buffer: list[str] = []
    while True:
        timeout = PASTE_PAUSE_S if buffer else None
        try:
            line = await asyncio.wait_for(lines.get(), timeout)
        except TimeoutError:
            line = SEPARATOR
        if line is not None and line.strip() != SEPARATOR:
            buffer.append(line)
            continue
        text = "\n".join(buffer).strip()
        buffer = []
        if text:
            handled += 1
            incoming = to_incoming(text, sender)
            for reply in dispatch(incoming):
                await channel.say(reply)
        if line is None:
            break
    await reader
    return handled


def to_incoming(text: str, sender: str) -> Incoming:
    """Make a console line an incoming room message; ``@bot …`` mentions the bot."""
    mentioned = MENTION_RE.match(text)
    if mentioned:
        text = text[mentioned.end() :]
    return Incoming(
        room=ROOM,
        sender=sender,
        text=text,
        mentions_bot=mentioned is not None,
        at=datetime.now(PLATFORM_TZ),
        sender_id=sender,
    )


def _pump(
    source: TextIO, lines: asyncio.Queue[str | None], loop: asyncio.AbstractEventLoop
) -> None:
    """Read lines in a worker thread and hand them to the event loop."""
    try:
        for line in source:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
    finally:
        loop.call_soon_threadsafe(lines.put_nowait, None)
