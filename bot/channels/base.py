"""The values that cross the channel boundary, and the channel protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Incoming:
    """One chat message as the dispatcher sees it.

    ``room`` is the room topic or id, or ``None`` for a direct message.
    ``sender`` is the sender's display name and ``sender_id`` its contact id.
    """

    room: str | None
    sender: str
    text: str
    mentions_bot: bool = False
    at: datetime | None = None
    sender_id: str = ""
    room_id: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """One message the bot wants to post.

    ``room`` is where it goes (``None``: a direct message to ``to``);
    ``mentions`` holds contact ids (or names) to @-mention; ``kind`` tells the
    outbox what it is (``alarm``, ``command``, ``error``, ``notice``).
    """

    room: str | None
    text: str
    mentions: tuple[str, ...] = ()
    to: str | None = None
    kind: str = "command"
    meta: dict[str, str] = field(default_factory=dict, compare=False)


class Channel(Protocol):
    """A chat transport the bot runs on."""

    async def say(self, reply: Reply) -> None:
        """Deliver one reply."""
        ...
