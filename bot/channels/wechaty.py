"""This module runs the bot in WeChat groups through a Wechaty gateway.

It is the only module that imports wechaty. It turns Wechaty events into the
dispatcher's ``Incoming`` values and posts the replies with ``room.say``: in the
room the message came from, mentioning the asker where the dispatcher says so, or
directly to the sender of a direct message. Rooms outside ``Settings.rooms`` are
ignored entirely. ``alarm-bot run`` puts the pipeline's outbox in front of
``say`` (see ``bot.pipeline.serve_in_wechat``).

python-wechaty 0.10.7 is the last release. Each of its faults that this module
works around is marked ``WORKAROUND`` where it is handled:

* importing it fails on Python 3.11 and later, warns on 3.11-3.12 and fails
  again on 3.13;
* importing it creates ``./.wechaty`` in the working directory;
* it logs every message's text at INFO and the gateway token at WARNING;
* ``Wechaty.start()`` returns, so the process exits 0, when the gateway is down
  or rejects the token; after a dropped stream it sleeps 60 s and then never
  fires ``login`` again. ``WechatyChannel.run`` is the connect loop instead;
* its plugin web server wants port 5000, and login fails when that is taken;
* room invitations can be neither read nor accepted through ``RoomInvitation``;
* contacts and rooms outlive a reconnect bound to the old connection.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import types
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.alarm import PLATFORM_TZ
from bot.channels.base import Incoming, Reply
from bot.errors import GatewayError
from bot.render import split_message
from bot.settings import ENDPOINT_VAR, TOKEN_VAR, Settings

logger = logging.getLogger(__name__)

# Messages older than this are history a gateway replays, not something to answer.
STALE_AFTER = timedelta(minutes=10)
# How long closing a connection may take before it is abandoned.
CLOSE_TIMEOUT_S = 2.0


def _prepare_import() -> None:
    """Make ``import wechaty`` work, and leave the working directory alone."""
    # WORKAROUND: wechaty computes a default job store path at import time, which
    # creates $CACHE_DIR, or ./.wechaty without it; point it at a private dir.
    if "CACHE_DIR" not in os.environ:
        cache_dir = tempfile.mkdtemp(prefix="alarm-bot-wechaty-")
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
        os.environ["CACHE_DIR"] = cache_dir

    # WORKAROUND: wechaty imports telnetlib, deprecated (with a warning) in 3.11
    # and removed in 3.13, only to probe that a port accepts connections.
    if "telnetlib" not in sys.modules:
        module = types.ModuleType("telnetlib")
        module.__dict__["Telnet"] = _PortProbe
        sys.modules["telnetlib"] = module

    # WORKAROUND: Python 3.11 rejects WechatyOptions' dataclass default
    # ``PuppetOptions()`` as a mutable default because it has no __hash__; give it
    # one. Every WechatyOptions below gets its own PuppetOptions regardless.
    from wechaty_puppet.schemas import puppet as puppet_schemas

    if puppet_schemas.PuppetOptions.__hash__ is None:
        puppet_schemas.PuppetOptions.__hash__ = object.__hash__


class _PortProbe:
    """The part of ``telnetlib.Telnet`` wechaty uses: connect, then close."""

    def __init__(
        self, host: str | None = None, port: int = 0, timeout: float = 10
    ) -> None:
        self.sock: socket.socket | None = None
        if host is not None:
            self.open(host, port, timeout)

    def open(self, host: str, port: int = 0, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


_prepare_import()

# These imports must follow _prepare_import() above.
from grpclib.const import Status  # noqa: E402
from grpclib.exceptions import GRPCError, StreamTerminatedError  # noqa: E402
from wechaty import Contact, Room, Tag, Wechaty, WechatyOptions  # noqa: E402
from wechaty_puppet import MessageType, PuppetOptions  # noqa: E402
from wechaty_puppet_service import PuppetService  # noqa: E402

# The format wechaty_puppet.get_logger gives the stderr handler it adds.
_WECHATY_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class _Redactor(logging.Filter):
    """Blanks out the secrets it is given in every record that passes."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = message
        for secret in self.secrets:
            hidden = hidden.replace(secret, "<token>")
        if hidden != message:
            record.msg, record.args = hidden, ()
        return True


_REDACTOR = _Redactor()


def _tame_wechaty_loggers(secret: str | None = None) -> None:
    """Route wechaty's loggers through the application's logging, quietly.

    WORKAROUND: wechaty_puppet.get_logger gives every wechaty module a logger of
    its own that bypasses the application's handlers and logs at INFO, including
    the text of every message, and the token (WARNING) whenever it connects.
    Unless this module logs at DEBUG, only their errors pass, with the token
    blanked out.
    """
    if secret:
        _REDACTOR.secrets.add(secret)
    level = logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.ERROR
    # the plugin scheduler says at INFO that it starts and stops on each connection
    logging.getLogger("apscheduler").setLevel(min(level, logging.WARNING))
    for candidate in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(candidate, logging.Logger):
            continue
        if _REDACTOR in candidate.filters:
            candidate.setLevel(level)
            continue
        formats = {getattr(h.formatter, "_fmt", None) for h in candidate.handlers}
        if not candidate.propagate and _WECHATY_LOG_FORMAT in formats:
            candidate.handlers = []
            candidate.propagate = True
            candidate.setLevel(level)
            candidate.addFilter(_REDACTOR)


_tame_wechaty_loggers()


@dataclass(frozen=True, slots=True)
class Backoff:
    """The waits between connection attempts: doubling from ``first`` to ``cap``."""

    first: float = 0.25
    cap: float = 10.0

    def delays(self) -> Iterator[float]:
        """Yield the wait before each next attempt, forever."""
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.cap)


class WechatyChannel:
    """The bot on a Wechaty gateway: events in, replies out.

    Args:
        dispatch: turns one incoming message into the replies to post.
        settings: the rooms to serve, the bot's name and the gateway.
        introduction: the text posted once on joining a served room.
        post: where the replies and the introduction go, e.g. the outbox;
            by default straight to ``say``.
        puppet: a puppet to use instead of the gateway (tests pass a FakePuppet).
        backoff: the waits between connection attempts.
    """

    def __init__(
        self,
        dispatch: Callable[[Incoming], list[Reply]],
        settings: Settings,
        *,
        introduction: Callable[[], str] | None = None,
        post: Callable[[Reply], Awaitable[None]] | None = None,
        puppet: Any = None,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._dispatch = dispatch
        self._settings = settings
        self._introduction = introduction
        self._post = post or self.say
        self._puppet = puppet
        self._backoff = backoff
        self._bot: Any = None
        self._has_logged_in = False  # during this connection attempt
        self._is_logged_in = False  # right now
        self._mention: tuple[str, re.Pattern[str]] | None = None
        self._room_ids: dict[str, str] = {}  # topic or id -> room id
        self._contact_ids: dict[str, str] = {}  # display name or id -> contact id
        self._introduced: set[str] = set()
        self._in_flight: set[asyncio.Task[Any]] = set()

    @property
    def endpoint(self) -> str:
        """Where the gateway is, for messages."""
        return self._settings.puppet_endpoint or "the puppet"

    @property
    def settings(self) -> Settings:
        """The settings the channel serves by."""
        return self._settings

    @property
    def is_logged_in(self) -> bool:
        """Whether the bot is connected to the gateway and logged in right now."""
        return self._is_logged_in

    async def run(self) -> None:
        """Connect to the gateway and serve until cancelled, reconnecting as needed.

        Raises:
            GatewayError: the gateway rejected the token; retrying cannot help.
        """
        delays = self._backoff.delays()
        while True:
            self._has_logged_in = False
            try:
                await self.open()
                await self._bot.puppet.start()  # returns when the event stream ends
                reason = "the gateway closed the connection"
            except GRPCError as exc:
                if exc.status is Status.UNAUTHENTICATED:
                    raise GatewayError(
                        f"the gateway at {self.endpoint} rejected the token: set "
                        f"{TOKEN_VAR} to the token the gateway was started with"
                    ) from None
                reason = f"gRPC status {exc.status.name}"
            except Exception as exc:  # any failure of the library is worth a retry
                reason = _failure(exc)
            finally:
                await self.close()
            if self._has_logged_in:
                delays = self._backoff.delays()
            delay = next(delays)
            logger.warning(
                "gateway %s: %s; reconnecting in %.2f s", self.endpoint, reason, delay
            )
            await asyncio.sleep(delay)

    async def open(self) -> None:
        """Make a fresh puppet and wire its events here, without connecting yet."""
        if self._bot is None:
            self._bot = Wechaty(self._options())
            self._bot.on("login", self._on_login)
            self._bot.on("logout", self._on_logout)
            self._bot.on("message", self._on_message)
            self._bot.on("room-invite", self._on_room_invite)
            self._bot.on("room-join", self._on_room_join)
            self._bot.on("room-topic", self._on_room_topic)
        # WORKAROUND: init_puppet() means to make a fresh puppet per connection,
        # but Wechaty() swapped the puppet it made into its options, so it would
        # hand back that one, with the state of the last connection; name it again.
        self._bot._options.puppet = self._puppet or "wechaty-puppet-service"
        await self._bot.init_puppet()
        # WORKAROUND: Contact, Room and Tag cache their instances in one dict per
        # process that init_puppet() keeps, so after a reconnect they would hand
        # out objects bound to the previous connection's puppet.
        for cached in (Contact, Room, Tag):
            cached._pool.clear()
        await self._bot.init_puppet_event_bridge(self._bot.puppet)
        token = self._settings.puppet_token
        _tame_wechaty_loggers(token.get_secret_value() if token else None)

    def _options(self) -> Any:
        token = self._settings.puppet_token
        return WechatyOptions(
            puppet=self._puppet or "wechaty-puppet-service",
            # WORKAROUND: with the 3.11 fix above, WechatyOptions' default
            # PuppetOptions is one instance shared by every WechatyOptions.
            puppet_options=PuppetOptions(
                token=token.get_secret_value() if token else None,
                end_point=self._settings.puppet_endpoint,
            ),
            # WORKAROUND: the plugin web server (unused: it serves only plugins'
            # blueprints) defaults to port 5000, and login fails when it is taken.
            host="127.0.0.1",
            port=0,
        )

    async def close(self) -> None:
        """Drop the connection to the gateway, if any."""
        self._is_logged_in = False
        if self._bot is None or self._bot._puppet is None:
            return
        puppet = self._bot.puppet
        if isinstance(puppet, PuppetService):
            # NOTE: PuppetService.stop() first asks the gateway to stop its puppet
            # and raises when the gateway is gone, before it closes the channel.
            events = puppet._event_stream
            events.remove_all_listeners()
            # an event still being handled fails once the channel closes; pyee
            # raises any error that nothing listens for
            events.on("error", _note_late_failure)
            if puppet.channel is not None:
                puppet.channel.close()
                puppet.channel = None
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(puppet.stop(), CLOSE_TIMEOUT_S)
        # WORKAROUND: every login starts the plugin scheduler, and the next login
        # fails with "Scheduler is already running" unless it is stopped between.
        scheduler = self._bot._plugin_manager.scheduler
        if scheduler.running:
            scheduler.shutdown(wait=False)

    async def say(self, reply: Reply) -> None:
        """Post ``reply``, split into messages the size WeChat takes."""
        parts = split_message(reply.text)
        if reply.room is None:
            contact = self._bot.Contact.load(self._contact_id(reply.to or ""))
            await contact.ready()
            for part in parts:
                await contact.say(part)
            return
        room = await self._find_room(reply.room)
        if room is None:
            logger.error("no room %r to post a %s reply in", reply.room, reply.kind)
            return
        mention_ids = [self._contact_id(name) for name in reply.mentions] or None
        for index, part in enumerate(parts):
            await room.say(part, mention_ids=mention_ids if index == 0 else None)

    def _contact_id(self, name_or_id: str) -> str:
        return self._contact_ids.get(name_or_id, name_or_id)

    async def _find_room(self, key: str) -> Any:
        room_id = self._room_ids.get(key)
        if room_id is None:
            room = await self._bot.Room.find(
                lambda r: key in (r.room_id, r.payload.topic if r.payload else None)
            )
            if room is None:
                return None
            room_id = self._room_ids[key] = room.room_id
        room = self._bot.Room.load(room_id)
        await room.ready()
        return room

    # ---------------------------------------------------------------- events

    async def _on_login(self, contact: Any) -> None:
        self._has_logged_in = self._is_logged_in = True
        logger.info(
            "logged in as %s (%s) at %s",
            contact.name,
            contact.contact_id,
            self.endpoint,
        )

    async def _on_logout(self, contact: Any) -> None:
        self._is_logged_in = False
        logger.warning("logged out of %s at %s", contact.contact_id, self.endpoint)

    async def _on_message(self, message: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            incoming = await self.to_incoming(message)
            if incoming is None:
                return
            for reply in self._dispatch(incoming):
                await self._post(reply)
        except (StreamTerminatedError, ConnectionError) as exc:
            logger.warning("message %s: connection lost (%s)", message.message_id, exc)
        except Exception:
            logger.exception("message %s: handling failed", message.message_id)
        finally:
            self._in_flight.discard(task)

    async def drain(self, timeout: float) -> None:
        """Give the messages being handled up to ``timeout`` seconds to finish."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)

    async def to_incoming(self, message: Any) -> Incoming | None:
        """Turn a Wechaty message into an ``Incoming``, or ``None`` to ignore it."""
        if message.is_self() or message.type() != MessageType.MESSAGE_TYPE_TEXT:
            return None
        at = _sent_at(message.payload.timestamp)
        if at is not None and datetime.now(PLATFORM_TZ) - at > STALE_AFTER:
            logger.debug("ignored a stale message sent %s", at.isoformat())
            return None
        talker, room = message.talker(), message.room()
        self._contact_ids[talker.name] = talker.contact_id
        if room is None:
            return Incoming(
                room=None,
                sender=talker.name,
                text=message.text().strip(),
                mentions_bot=True,
                at=at,
                sender_id=talker.contact_id,
            )

        topic = await room.topic()
        if not self._settings.serves_room(topic, room.room_id):
            logger.debug("ignored room=%s: not in the rooms to serve", room.room_id)
            return None
        key = topic or room.room_id
        self._room_ids[key] = room.room_id
        mentioned, text = await self._strip_self_mention(message)
        return Incoming(
            room=key,
            sender=talker.name,
            text=text,
            mentions_bot=mentioned,
            at=at,
            sender_id=talker.contact_id,
            room_id=room.room_id,
        )

    async def _strip_self_mention(self, message: Any) -> tuple[bool, str]:
        """Tell whether the bot is @-mentioned, and remove that @name from the text."""
        self_id = self._bot.puppet.self_id()
        pattern = await self._mention_pattern(self_id)
        text, count = pattern.subn("", message.text(), count=1)
        mentioned = self_id in (message.payload.mention_ids or []) or count > 0
        return mentioned, text.strip()

    async def _mention_pattern(self, self_id: str) -> re.Pattern[str]:
        if self._mention is None or self._mention[0] != self_id:
            contact = self._bot.Contact.load(self_id)
            await contact.ready()
            names = {contact.name, self._settings.bot_name} - {None, ""}
            alternatives = "|".join(re.escape(n) for n in sorted(names, key=len)[::-1])
            # WeChat ends an @name with U+2005 (four-per-em space), people with a space
            pattern = re.compile(rf"@(?:{alternatives})(?:[\u2005\s]+|$)")
            self._mention = (self_id, pattern)
        return self._mention[1]

    async def _on_room_invite(self, invitation: Any) -> None:
        invitation_id = invitation.invitation_id
        try:
            topic = await self._invitation_topic(invitation_id)
            if not self._settings.serves_room(topic):
                logger.info(
                    "ignored the invitation to room %r: not one to serve", topic
                )
                return
            # WORKAROUND: RoomInvitation.accept() fails as its topic() does (see
            # _invitation_topic), so ask the puppet directly.
            await self._bot.puppet.room_invitation_accept(invitation_id)
            logger.info("accepted the invitation to room %r", topic)
        except Exception:
            logger.exception("invitation %s: handling failed", invitation_id)

    async def _invitation_topic(self, invitation_id: str) -> str:
        puppet = self._bot.puppet
        # WORKAROUND: the RoomInvitation wechaty hands over is bound to no puppet
        # ("puppet not set"), and PuppetService.room_invitation_payload() builds
        # its result from a camelCase dict that the payload class does not take;
        # the gRPC response itself holds the topic.
        if isinstance(puppet, PuppetService):
            response = await puppet.puppet_stub.room_invitation_payload(
                id=invitation_id
            )
            return str(response.topic)
        payload = await puppet.room_invitation_payload(invitation_id)
        return str(payload.topic)

    async def _on_room_join(
        self, room: Any, invitees: list[Any], inviter: Any, date: Any
    ) -> None:
        try:
            self_id = self._bot.puppet.self_id()
            if self_id not in {contact.contact_id for contact in invitees}:
                return
            topic = await room.topic()
            if not self._settings.serves_room(topic, room.room_id):
                logger.info("joined room %r, which is not one to serve", topic)
                return
            logger.info("joined room %r (%s)", topic, room.room_id)
            if self._introduction is None or room.room_id in self._introduced:
                return
            self._introduced.add(room.room_id)
            key = topic or room.room_id
            self._room_ids[key] = room.room_id
            await self._post(Reply(room=key, text=self._introduction(), kind="notice"))
        except Exception:
            logger.exception("room-join %s: handling failed", room.room_id)

    async def _on_room_topic(
        self, room: Any, new_topic: str, old_topic: str, changer: Any, date: Any
    ) -> None:
        # WORKAROUND: wechaty reports the new topic but keeps the room's cached
        # payload, so the room would go on being served (or not) by its old name.
        if room.payload is not None:
            room.payload.topic = new_topic
        self._room_ids.pop(old_topic, None)
        logger.info("room %s renamed from %r to %r", room.room_id, old_topic, new_topic)


def _note_late_failure(exc: BaseException) -> None:
    logger.debug("an event of a closed connection failed: %r", exc)


def _sent_at(timestamp: int | float | None) -> datetime | None:
    """The time a message was sent; puppets give seconds or milliseconds."""
    if not timestamp:
        return None
    seconds = timestamp / 1000 if timestamp > 10_000_000_000 else timestamp
    return datetime.fromtimestamp(seconds, PLATFORM_TZ)


def _failure(exc: Exception) -> str:
    """Say in a few words why a connection failed."""
    if isinstance(exc, StreamTerminatedError):
        return "connection lost"
    if isinstance(exc, OSError):
        return f"unreachable ({exc.strerror or exc})"
    if "ping endpoint" in str(exc):  # PuppetService's probe found no listener
        return "unreachable"
    return f"{type(exc).__name__}: {exc}"


async def serve(
    channel: WechatyChannel,
    *,
    drain: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Run ``channel`` on its gateway until SIGINT or SIGTERM.

    Args:
        channel: the channel to run, wired to the bot.
        drain: waits until what the bot still has to say is sent (the outbox's
            ``join``); given up to ``CLOSE_TIMEOUT_S`` on a stop, before the
            connection closes.

    Raises:
        GatewayError: no gateway is configured, or it rejected the token.
    """
    if not channel.settings.has_gateway:
        raise GatewayError(f"no gateway: set {ENDPOINT_VAR} and {TOKEN_VAR}")
    # NOTE: the knowledge base, its templates and wechaty's modules are 100k+
    # objects that live as long as the process; a full collection walking them
    # stalls a reply by 20-30 ms. Freezing them leaves them out of every pass
    # (the cost: the cycles among them, as in a knowledge base that /reload
    # replaces, are never collected).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = asyncio.create_task(channel.run())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            await channel.drain(CLOSE_TIMEOUT_S)
            if drain is not None and channel.is_logged_in:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drain(), CLOSE_TIMEOUT_S)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        stopper.cancel()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner  # re-raises GatewayError when that is why it ended
    logger.info("stopped")
