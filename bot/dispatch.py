"""This module routes each incoming message to the alarm or command it carries.

The dispatcher is pure: it takes an ``Incoming`` and returns the ``Reply`` values
to post, touching no network or disk except through the knowledge loader it is
given for ``reload``. Every handler runs behind one boundary: a crash is logged
with its traceback and the group gets a one-line apology, never silence.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from bot.alarm import Alarm, parse
from bot.channels.base import Incoming, Reply
from bot.commands import REGISTRY, CommandContext, CommandWorker, Work, answer
from bot.diagnosis import Diagnosis, diagnose, warn_unmatched
from bot.errors import KnowledgeError
from bot.kbcheck import load_checked
from bot.kbedit import KnowledgeEditor
from bot.knowledge import Knowledge, paused_gc
from bot.render import ReplyRenderer
from bot.search import KnowledgeSearch

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One knowledge base with what is built from it; swapped whole on reload."""

    knowledge: Knowledge
    renderer: ReplyRenderer
    search: KnowledgeSearch


@dataclass(frozen=True, slots=True)
class AlarmResult:
    """The alarms of one message, their diagnoses and the reply text."""

    alarms: list[Alarm]
    diagnoses: list[Diagnosis]
    reply: str


class Dispatcher:
    """Turns incoming messages into replies.

    Args:
        knowledge: the validated knowledge base.
        lang: ``zh`` or ``en``.
        prefixes: the characters that start a command.
        admins: contact ids or names allowed to run admin commands.
        loader: loads the knowledge base again, for ``reload``.
        editor: changes the knowledge from the chat (``kb set`` …); none: read only.
        on_reload: told the problems after every reload attempt (none: success);
            ``bot.watch.ReloadNotifier`` tells the admins, once per problem.

    Attributes:
        worker: runs the commands that wait on I/O (``probe``, ``host``); the
            running bot sets it, and without one those commands say they
            need it.
    """

    worker: CommandWorker | None = None

    def __init__(
        self,
        knowledge: Knowledge,
        *,
        lang: str = "zh",
        prefixes: tuple[str, ...] = ("/", "#"),
        admins: tuple[str, ...] = (),
        loader: Callable[[], Knowledge] | None = None,
        editor: KnowledgeEditor | None = None,
        on_reload: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.lang = lang
        self.prefixes = tuple(p for p in prefixes if p)
        self.admins = {a.casefold() for a in admins}
        self.admin_names = tuple(admins)
        self.editor = editor
        self.on_reload = on_reload
        self._loader = loader or (lambda: load_checked(knowledge.root))
        self._lock = threading.Lock()
        self._loaded = self._build(knowledge)

    @property
    def knowledge(self) -> Knowledge:
        """The knowledge base now serving."""
        return self._loaded.knowledge

    @property
    def renderer(self) -> ReplyRenderer:
        """The renderer of the knowledge now serving."""
        return self._loaded.renderer

    def _build(self, knowledge: Knowledge) -> _Loaded:
        return _Loaded(
            knowledge, ReplyRenderer(knowledge, self.lang), KnowledgeSearch(knowledge)
        )

    def dispatch(self, incoming: Incoming) -> list[Reply]:
        """Return the replies ``incoming`` calls for (often none)."""
        loaded = self._loaded  # NOTE: one snapshot per message, even mid-reload
        try:
            return self._route(incoming, loaded)
        except Exception:
            logger.exception(
                "handler crashed room=%s sender=%s", incoming.room, incoming.sender
            )
            try:
                text = loaded.renderer.render("error")
            except Exception:
                logger.exception("the apology template failed too")
                text = "Sorry, something went wrong. / 抱歉，处理出错了。"
            return [self._reply(incoming, text, kind="error", mention=True)]

    def _route(self, incoming: Incoming, loaded: _Loaded) -> list[Reply]:
        text = incoming.text.strip()
        addressed = incoming.mentions_bot or incoming.room is None
        if not text and not incoming.mentions_bot:
            return []
        if not text:
            # "@bot" and nothing else: show what the bot can do.
            return [self._reply(incoming, self._command(incoming, "help", loaded))]
        command_line = self._command_line(text, addressed)
        if command_line is not None:
            said = self._command(incoming, command_line, loaded)
            # NOTE: no text means the handler handed its reply to the worker.
            return [self._reply(incoming, said)] if said else []

        result = self.diagnose_text(text, loaded)
        if result.alarms:
            logger.info(
                "alarm room=%s types=%s appids=%s",
                incoming.room,
                ",".join(a.type for a in result.alarms),
                ",".join(a.appid or "-" for a in result.alarms),
            )
            return [self._reply(incoming, result.reply, kind="alarm", mention=False)]
        if addressed:
            ctx = self._context(incoming, loaded)
            return [self._reply(incoming, answer(ctx, text))]
        logger.debug("ignored room=%s sender=%s", incoming.room, incoming.sender)
        return []

    def diagnose_text(self, text: str, loaded: _Loaded | None = None) -> AlarmResult:
        """Parse ``text`` and diagnose and render every alarm in it."""
        loaded = loaded or self._loaded
        alarms = parse(text, loaded.knowledge.matcher)
        diagnoses = [diagnose(alarm, loaded.knowledge) for alarm in alarms]
        warn_unmatched(alarms)
        reply = loaded.renderer.alarm_reply(diagnoses) if diagnoses else ""
        return AlarmResult(alarms, diagnoses, reply)

    def _command_line(self, text: str, addressed: bool) -> str | None:
        # NOTE: Chinese input methods type the full-width ／ and ＃.
        first = unicodedata.normalize("NFKC", text[:1])
        for prefix in self.prefixes:
            if text.startswith(prefix):
                return text[len(prefix) :]
            if len(prefix) == 1 and first == prefix:
                return text[1:]
        if addressed and REGISTRY.is_command_word(text):
            return text
        return None

    def _command(self, incoming: Incoming, line: str, loaded: _Loaded) -> str:
        ctx = self._context(incoming, loaded)
        invocation = REGISTRY.parse(line)
        command = invocation.command
        if command is None:
            suggestions = REGISTRY.suggest(invocation.word, ctx.is_admin)
            return loaded.renderer.render(
                "unknown_command", word=invocation.word, suggestions=suggestions
            )
        if command.admin and not ctx.is_admin:
            logger.info("refused command=%s sender=%s", command.name, incoming.sender)
            return loaded.renderer.render(
                "denied", command=command.name, admins=list(self.admin_names)
            )
        logger.debug("command=%s sender=%s", command.name, incoming.sender)
        return command.handler(ctx, invocation.argument)

    def _context(self, incoming: Incoming, loaded: _Loaded) -> CommandContext:
        return CommandContext(
            knowledge=loaded.knowledge,
            renderer=loaded.renderer,
            search=loaded.search,
            sender=incoming.sender,
            is_admin=self.is_admin(incoming),
            reload=self.reload,
            room=incoming.room,
            editor=self.editor,
            admins=self.admin_names,
            sender_id=incoming.sender_id,
            worker=self.worker,
            later=self._later(incoming),
        )

    def _later(self, incoming: Incoming) -> Callable[[Work], None] | None:
        worker = self.worker
        if worker is None:
            return None
        reply = self._reply(incoming, "")
        return lambda work: worker.later(work, reply)

    def is_admin(self, incoming: Incoming) -> bool:
        """Whether the sender is listed as an admin, by contact id or name."""
        names = {incoming.sender.casefold(), incoming.sender_id.casefold()} - {""}
        return bool(names & self.admins)

    def reload(self) -> str:
        """Load the knowledge base again; keep the old one if the new one fails."""
        with self._lock, paused_gc():
            try:
                fresh = self._loader()
            except KnowledgeError as exc:
                logger.error("reload refused: %d problems", len(exc.problems))
                self._tell_reload(exc.problems)
                return self._loaded.renderer.render(
                    "reload_failed", problems=exc.problems
                )
            self._loaded = self._build(fresh)
        logger.info("knowledge reloaded root=%s", fresh.root)
        self._tell_reload([])
        return self._loaded.renderer.render(
            "reloaded",
            alarms=len(fresh.alarms),
            faq=len(fresh.faq),
            tables=len(fresh.tables),
        )

    def _tell_reload(self, problems: list[str]) -> None:
        if self.on_reload is None:
            return
        try:
            self.on_reload(problems)
        except Exception:  # telling the admins must never break a reload
            logger.exception("reload listener failed")

    def _reply(
        self,
        incoming: Incoming,
        text: str,
        *,
        kind: str = "command",
        mention: bool = True,
    ) -> Reply:
        mentions: tuple[str, ...] = ()
        if mention and incoming.room is not None:
            mentions = (incoming.sender_id or incoming.sender,)
        return Reply(
            room=incoming.room,
            text=text,
            mentions=mentions,
            to=None
            if incoming.room is not None
            else (incoming.sender_id or incoming.sender),
            kind=kind,
        )
