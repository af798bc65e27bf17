"""A trivial python-wechaty bot, the baseline of ``bench_roundtrip.py``.

It repeats every room message back into its room: the same python-wechaty stack,
gateway and gRPC path as alarm-bot, with nothing of alarm-bot's own in between.
Reads WECHATY_PUPPET_SERVICE_ENDPOINT and WECHATY_PUPPET_SERVICE_TOKEN.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

# python-wechaty 0.10.7 needs the import fixes this module makes (see its docstring)
import bot.channels.wechaty  # noqa: F401  # isort: skip
from wechaty import Wechaty, WechatyOptions  # isort: skip
from wechaty_puppet import PuppetOptions  # isort: skip


async def main() -> None:
    options = WechatyOptions(
        puppet_options=PuppetOptions(
            token=os.environ["WECHATY_PUPPET_SERVICE_TOKEN"],
            end_point=os.environ["WECHATY_PUPPET_SERVICE_ENDPOINT"],
        ),
        host="127.0.0.1",
        port=0,
    )
    echo = Wechaty(options)

    async def on_login(contact: Any) -> None:
        print(f"logged in as {contact.name}", flush=True)

    async def on_message(message: Any) -> None:
        room = message.room()
        if room is not None and not message.is_self():
            await room.say(message.text())

    echo.on("login", on_login)
    echo.on("message", on_message)
    await echo.init_puppet()
    await echo.init_puppet_event_bridge(echo.puppet)
    await echo.puppet.start()


if __name__ == "__main__":
    # The bench stops each bot with SIGTERM between turns: that is the end of
    # its job, not a failure, so it exits 0 (there is nothing to clean up).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(main())
