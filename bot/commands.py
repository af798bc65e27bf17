"""This module holds the chat commands: their names, permissions and handlers.

A command is written with a prefix (``/help``, ``#explain markfail``) or after an
@-mention of the bot (``@AlarmBot 帮助``). Handlers return reply text rendered from
``knowledge/templates``; the dispatcher wraps it into replies.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from bot import __version__
from bot.alarm import APPID_RE, parse
from bot.channels.base import Reply
from bot.diagnosis import diagnose
from bot.kbedit import KnowledgeEditor, kb_command
from bot.knowledge import ALARM_TYPES, AlarmType, Knowledge, Row, Table, normalize
from bot.logscan import status_row
from bot.policy import DEFAULT_WINDOW_MINUTES, Ack, Silence, parse_duration
from bot.render import ReplyRenderer
from bot.search import KnowledgeSearch, Match
from bot.store import AlarmStats, WindowCount

logger = logging.getLogger(__name__)
_CONNECT_FAILED = "connect() failed"
_TIED = 0.9
"""Search scores within this share of the best count as equally good."""
# A status standing on its own in /nginx's words: not part of a longer number,
# an address or port ("10.0.0.5:502"), a decimal ("20.500"), a pid ("502#0")
# or a connection number ("*502"); "status:502" and "HTTP 502" are fine.
_BEFORE = r"(?<![\d*#/])(?<!\d[:.])"
_AFTER = r"(?![0-9a-z#]|[.:]\d)"
_STATUS_CODE = re.compile(_BEFORE + r"[1-5]\d\d" + _AFTER)


class AlarmDesk(Protocol):
    """What the alarm commands need from the running bot (``AlarmPipeline``)."""

    def now(self) -> datetime:
        """The bot's current time."""
        ...

    def mute(
        self,
        room: str,
        by: str,
        appid: str | None,
        alarm_type: str | None,
        duration: timedelta,
    ) -> Silence:
        """Silence matching alarms in ``room`` for ``duration``."""
        ...

    def unmute(
        self, room: str, by: str, appid: str | None, alarm_type: str | None
    ) -> list[Silence]:
        """Lift the matching silences (all when both matchers are ``None``)."""
        ...

    def silences(self, room: str) -> list[Silence]:
        """The room's active silences."""
        ...

    def ack(
        self, room: str, by: str, appid: str, alarm_type: str | None
    ) -> tuple[Ack, int]:
        """Record who handles an account; return the ack and its firing groups."""
        ...

    def stats(
        self, room: str | None, appid: str | None, since: datetime
    ) -> tuple[AlarmStats, list[WindowCount]]:
        """Counts and the window-by-window trend since ``since``."""
        ...


Work = Callable[[], Awaitable[str]]
"""A command's slow part: it waits on the network or the host, then says a text."""


class CommandWorker(Protocol):
    """What ``probe`` and ``host`` need from the running bot.

    ``bot.autoprobe.ProbeWorker`` is the one; one-shot tools have none.
    """

    @property
    def appids(self) -> tuple[str, ...]:
        """The appids whose callback URL is configured, sorted."""
        ...

    def acquire(self, appid: str) -> float:
        """Take a probe slot for ``appid``: 0.0, or the seconds until one frees."""
        ...

    async def probe_report(self, appid: str, renderer: ReplyRenderer) -> str:
        """Probe ``appid``'s configured URL and render the verdict."""
        ...

    async def host_report(self, renderer: ReplyRenderer) -> str:
        """Read this host's state and render it."""
        ...

    def later(self, work: Work, reply: Reply) -> None:
        """Run ``work`` off the dispatcher and post its text as ``reply``."""
        ...


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a handler may use: the knowledge, its renderer and index, the asker.

    ``room`` is where the command was typed (``None``: a direct message);
    ``desk`` is the running bot's alarm history, absent in one-shot tools;
    ``editor`` changes the knowledge from the chat (absent: read only);
    ``admins`` are the configured admins, named in refusals;
    ``worker`` runs the commands that wait on the network or the host, and
    ``later`` hands it this message's slow part: a handler that calls it
    returns ``""`` and the reply follows when the work is done.
    """

    knowledge: Knowledge
    renderer: ReplyRenderer
    search: KnowledgeSearch
    sender: str
    is_admin: bool
    reload: Callable[[], str]
    room: str | None = None
    desk: AlarmDesk | None = None
    editor: KnowledgeEditor | None = None
    admins: tuple[str, ...] = ()
    sender_id: str = ""
    worker: CommandWorker | None = None
    later: Callable[[Work], None] | None = None


Handler = Callable[[CommandContext, str], str]


@dataclass(frozen=True, slots=True)
class ChatCommand:
    """A command people can type."""

    name: str
    aliases: tuple[str, ...]
    handler: Handler
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Invocation:
    """A parsed command line: the command (or the unknown word) and its argument."""

    command: ChatCommand | None
    word: str
    argument: str


class CommandRegistry:
    """Finds commands by name or alias and lists what an asker may use."""

    def __init__(self, commands: list[ChatCommand]) -> None:
        self.commands = commands
        self._by_word = {
            word.casefold(): cmd
            for cmd in commands
            for word in (cmd.name, *cmd.aliases)
        }

    def parse(self, line: str) -> Invocation:
        """Split ``line`` (without its prefix) into command and argument."""
        word, _, argument = line.strip().partition(" ")
        if not word:
            return Invocation(self._by_word.get("help"), "help", "")
        found = self._by_word.get(word.casefold())
        if found is None:
            # Chinese aliases are often typed without a space: "解释markfail".
            for alias, cmd in self._by_word.items():
                if not alias.isascii() and word.startswith(alias):
                    rest = f"{word[len(alias) :]} {argument}".strip()
                    return Invocation(cmd, alias, rest)
        return Invocation(found, word, argument.strip())

    def is_command_word(self, line: str) -> bool:
        """Whether ``line`` starts with a known command word."""
        return self.parse(line).command is not None and bool(line.strip())

    def visible(self, is_admin: bool) -> list[ChatCommand]:
        """The commands an asker may use, for ``help``."""
        return [cmd for cmd in self.commands if is_admin or not cmd.admin]

    def suggest(self, word: str, is_admin: bool) -> list[str]:
        """The nearest command names to an unknown ``word`` ("did you mean")."""
        names = {
            w: cmd.name
            for cmd in self.visible(is_admin)
            for w in (cmd.name, *cmd.aliases)
        }
        close = difflib.get_close_matches(word.casefold(), names, n=3, cutoff=0.5)
        return list(dict.fromkeys(names[w] for w in close))


# ----------------------------------------------------------------- handlers


def help_command(ctx: CommandContext, argument: str) -> str:
    """List the commands the asker may use."""
    names = [cmd.name for cmd in REGISTRY.visible(ctx.is_admin)]
    return ctx.renderer.render("help", commands=names, is_admin=ctx.is_admin)


def types_command(ctx: CommandContext, argument: str) -> str:
    """List the alarm types with one line each."""
    entries = [
        ctx.knowledge.alarms[t] for t in ALARM_TYPES if t in ctx.knowledge.alarms
    ]
    return ctx.renderer.render("types", entries=entries)


def explain_command(ctx: CommandContext, argument: str) -> str:
    """Show the full runbook of a type, named by id, name, alias or words."""
    if not argument:
        return ctx.renderer.render("usage", command="explain")
    entry = find_type(ctx.knowledge, argument)
    if entry is not None:
        return ctx.renderer.render("explain", entry=entry)
    hits = ctx.search.search(argument, limit=len(ctx.knowledge.alarms) + 5)
    best = hits[0].score if hits else 0.0
    # Words that fit several types as well ("超时", "ticket") get the choice,
    # not whichever sorts first; words closer to a table or an FAQ entry than
    # to any type ("404") get the ordinary answer.
    tied = [
        ctx.knowledge.alarms[m.id]
        for m in hits
        if m.kind == "alarm" and m.score >= best * _TIED
    ]
    if not tied:
        return answer(ctx, argument)
    if len(tied) == 1:
        return ctx.renderer.render("explain", entry=tied[0])
    return ctx.renderer.render("explain_choices", argument=argument, entries=tied)


def ask_command(ctx: CommandContext, argument: str) -> str:
    """Answer a question from the knowledge base."""
    if not argument:
        return ctx.renderer.render("usage", command="ask")
    return answer(ctx, argument)


def nginx_command(ctx: CommandContext, argument: str) -> str:
    """Explain an nginx upstream status or error-log string."""
    if not argument:
        return ctx.renderer.render("usage", command="nginx")
    found = find_nginx_row(ctx.knowledge, argument)
    if found is not None:
        return ctx.renderer.render("table", table=found[0], row=found[1])
    statuses = ctx.knowledge.table("nginx_status")
    return ctx.renderer.render("nginx_unknown", argument=argument, table=statuses)


def find_nginx_row(knowledge: Knowledge, words: str) -> tuple[Table, Row] | None:
    """The nginx status or error-log row ``words`` names ("499 是什么", "HTTP 502")."""
    wanted = normalize(words)
    rows = [
        (table, row, {normalize(n) for n in (row.key, *row.aliases)} - {""})
        for table_id in ("nginx_status", "nginx_errors")
        if (table := knowledge.table(table_id)) is not None
        for row in table.rows
    ]
    for table, row, names in rows:
        if wanted in names:
            return table, row
    # Else an error-log message inside the words: the one found first, the
    # longest of those starting there, so "upstream timed out (110: Connection
    # timed out)" finds the message nginx leads with, not its cause. A
    # "connect() … failed" line is the exception: its row only says to read the
    # cause nginx adds ("Connection refused"), so that cause's row comes first.
    messages = [
        ((row.key == _CONNECT_FAILED, wanted.find(n), -len(n)), table, row)
        for table, row, names in rows
        for n in names
        if not n[:1].isdigit() and n in wanted
    ]
    if messages:
        _, table, row = min(messages, key=lambda item: item[0])
        return table, row
    # Else the status standing on its own that comes first ("499 是什么").
    folded = unicodedata.normalize("NFKC", words).casefold()
    statuses = [
        (found.start(), table, row)
        for table, row, names in rows
        for n in names
        if n[:1].isdigit()
        and (found := re.search(_BEFORE + re.escape(n) + _AFTER, folded))
    ]
    if statuses:
        _, table, row = min(statuses, key=lambda item: item[0])
        return table, row
    # A status without a row of its own ("501") is explained by its class (5xx).
    status = _STATUS_CODE.search(folded)
    table = knowledge.table("nginx_status")
    if status and table is not None:
        by_class = status_row(knowledge, status.group())
        if by_class is not None:
            return table, by_class
    return None


def version_command(ctx: CommandContext, argument: str) -> str:
    """Tell the bot's version and what its knowledge holds."""
    return ctx.renderer.render("version", version=__version__)


def reload_command(ctx: CommandContext, argument: str) -> str:
    """Reload the knowledge base from disk (admins only)."""
    return ctx.reload()


# ------------------------------------------------------- alarm desk handlers

DEFAULT_PERIOD = "24h"
_ALL = ("all", "全部", "所有")


def mute_command(ctx: CommandContext, argument: str) -> str:
    """Silence alarms by appid, type or both for a while (admins only)."""
    words = argument.split()

    def reply(error: str | None, word: str = "", silence: Silence | None = None) -> str:
        return ctx.renderer.render("mute", error=error, argument=word, silence=silence)

    if ctx.desk is None:
        return ctx.renderer.render("desk_off", command="mute")
    if ctx.room is None:
        return reply("room")
    if len(words) < 2:
        return reply("usage")
    duration = parse_duration(words[-1])
    if duration is None:
        return reply("duration", words[-1])
    appid, alarm_type, stray = read_matchers(ctx.knowledge, words[:-1])
    if stray is not None:
        return reply("matcher", stray)
    silence = ctx.desk.mute(ctx.room, ctx.sender, appid, alarm_type, duration)
    return reply(None, silence=silence)


def unmute_command(ctx: CommandContext, argument: str) -> str:
    """Lift silences early (admins only)."""
    words = argument.split()

    def reply(error: str | None, removed: list[Silence] | None = None) -> str:
        return ctx.renderer.render(
            "unmute", error=error, argument=argument, removed=removed or []
        )

    if ctx.desk is None:
        return ctx.renderer.render("desk_off", command="unmute")
    if ctx.room is None:
        return reply("room")
    if not words:
        return reply("usage")
    if len(words) == 1 and words[0].lower() in _ALL:
        return reply(None, ctx.desk.unmute(ctx.room, ctx.sender, None, None))
    appid, alarm_type, stray = read_matchers(ctx.knowledge, words)
    if stray is not None:
        return ctx.renderer.render(
            "unmute", error="matcher", argument=stray, removed=[]
        )
    return reply(None, ctx.desk.unmute(ctx.room, ctx.sender, appid, alarm_type))


def silences_command(ctx: CommandContext, argument: str) -> str:
    """List the room's active silences."""
    if ctx.desk is None:
        return ctx.renderer.render("desk_off", command="silences")
    if ctx.room is None:
        return ctx.renderer.render("silences", error="room", silences=[])
    return ctx.renderer.render(
        "silences", error=None, silences=ctx.desk.silences(ctx.room)
    )


def ack_command(ctx: CommandContext, argument: str) -> str:
    """Record that the asker handles an account's alarms; stops escalation."""
    words = argument.split()

    def reply(error: str | None, word: str = "") -> str:
        return ctx.renderer.render(
            "ack", error=error, argument=word, ack=None, groups=0
        )

    if ctx.desk is None:
        return ctx.renderer.render("desk_off", command="ack")
    if ctx.room is None:
        return reply("room")
    if not words or not is_account(words[0]):
        return reply("usage")
    alarm_type = None
    if len(words) > 1:
        entry = find_type(ctx.knowledge, " ".join(words[1:]))
        if entry is None:
            return reply("matcher", " ".join(words[1:]))
        alarm_type = entry.id
    ack, groups = ctx.desk.ack(ctx.room, ctx.sender, account(words[0]), alarm_type)
    return ctx.renderer.render("ack", error=None, argument="", ack=ack, groups=groups)


def stats_command(ctx: CommandContext, argument: str) -> str:
    """Count alarms by type and account, and show the trend by window."""
    if ctx.desk is None:
        return ctx.renderer.render("desk_off", command="stats")
    appid, period = None, DEFAULT_PERIOD
    for word in argument.split():
        if parse_duration(word) is not None:
            period = word
        else:
            appid = account(word)
    return _render_counts(ctx, "stats", appid, period)


def history_command(ctx: CommandContext, argument: str) -> str:
    """Show one account's alarms window by window."""
    if ctx.desk is None:
        return ctx.renderer.render("desk_off", command="history")
    words = argument.split()
    if not words or not is_account(words[0]):
        return ctx.renderer.render(
            "history",
            error="usage",
            stats=None,
            trend=[],
            appid=None,
            period=DEFAULT_PERIOD,
            window_minutes=DEFAULT_WINDOW_MINUTES,
        )
    period = next((w for w in words[1:] if parse_duration(w)), DEFAULT_PERIOD)
    return _render_counts(ctx, "history", account(words[0]), period)


def _render_counts(
    ctx: CommandContext, template: str, appid: str | None, period: str
) -> str:
    desk = ctx.desk
    if desk is None:  # callers check; this keeps the type checker informed
        return ctx.renderer.render("desk_off", command=template)
    since = desk.now() - (parse_duration(period) or timedelta(days=1))
    stats, trend = desk.stats(ctx.room, appid, since)
    return ctx.renderer.render(
        template,
        error=None,
        stats=stats,
        trend=trend,
        appid=appid,
        period=period,
        window_minutes=DEFAULT_WINDOW_MINUTES,
    )


# ------------------------------------------------------ probe and host handlers


def probe_command(ctx: CommandContext, argument: str) -> str:
    """Push a harmless event to an account's callback URL (admins only).

    Only URLs from the settings are probed: a URL typed in the chat is refused,
    so the bot cannot be pointed at arbitrary hosts.
    """
    worker, later = ctx.worker, ctx.later
    if worker is None or later is None:
        return ctx.renderer.render("desk_off", command="probe")
    words = argument.split()
    appids = list(worker.appids)

    def refuse(error: str, wait_s: int = 0) -> str:
        return ctx.renderer.render(
            "probe_refused",
            error=error,
            appid=words[0] if words else "",
            appids=appids,
            wait_s=wait_s,
            address="",
            kind="",
        )

    if any(_looks_like_url(word) for word in words):
        return refuse("url")
    if len(words) != 1:
        return refuse("usage")
    appid = account(words[0])
    if appid not in appids:
        return refuse("unknown")
    wait = worker.acquire(appid)
    if wait > 0:
        logger.info("probe rate-limited appid=%s wait_s=%.0f", appid, wait)
        return refuse("rate", math.ceil(wait))
    renderer = ctx.renderer
    later(lambda: worker.probe_report(appid, renderer))
    return ""


def host_command(ctx: CommandContext, argument: str) -> str:
    """Show this host's load, memory, open files and TCP states (admins only)."""
    worker, later = ctx.worker, ctx.later
    if worker is None or later is None:
        return ctx.renderer.render("desk_off", command="host")
    renderer = ctx.renderer
    later(lambda: worker.host_report(renderer))
    return ""


def _looks_like_url(word: str) -> bool:
    return any(char in word for char in "/:.")


def is_account(word: str) -> bool:
    """Whether ``word`` names an account: an app id, or a masked one (``wx30***``)."""
    return word.lower().startswith("wx")


def account(word: str) -> str:
    """The account key the policy groups by: app ids in lower case."""
    return word.lower() if APPID_RE.fullmatch(word) else word


def read_matchers(
    knowledge: Knowledge, words: list[str]
) -> tuple[str | None, str | None, str | None]:
    """Read an appid and/or an alarm type from ``words``.

    Returns:
        ``(appid, type, stray)``: ``stray`` is the first word that is neither.
    """
    appid = alarm_type = None
    for word in words:
        entry = find_type(knowledge, word)
        if entry is not None and alarm_type is None:
            alarm_type = entry.id
        elif appid is None and is_account(word):
            appid = account(word)
        else:
            return appid, alarm_type, word
    return appid, alarm_type, None


REGISTRY = CommandRegistry(
    [
        ChatCommand("help", ("帮助", "h", "?", "？"), help_command),
        ChatCommand("types", ("类型",), types_command),
        ChatCommand("explain", ("解释", "说明"), explain_command),
        ChatCommand("ask", ("问", "提问"), ask_command),
        ChatCommand("nginx", (), nginx_command),
        ChatCommand("version", ("版本",), version_command),
        ChatCommand("reload", ("重载",), reload_command, admin=True),
        ChatCommand("mute", ("静音",), mute_command, admin=True),
        ChatCommand("unmute", ("取消静音", "解除静音"), unmute_command, admin=True),
        ChatCommand("silences", ("静音列表",), silences_command),
        ChatCommand("ack", ("认领",), ack_command),
        ChatCommand("stats", ("统计",), stats_command),
        ChatCommand("history", ("历史",), history_command),
        ChatCommand("probe", ("探测", "拨测"), probe_command, admin=True),
        ChatCommand("host", ("主机",), host_command, admin=True),
        # NOTE: open to members; kb_command refuses the admin-only subcommands.
        ChatCommand("kb", ("知识库",), kb_command),
    ]
)


# ------------------------------------------------------------------ answers


def find_type(knowledge: Knowledge, words: str) -> AlarmType | None:
    """Return the alarm type named exactly by id, name or alias, if any."""
    wanted = normalize(words)
    for entry in knowledge.alarms.values():
        names = {entry.id, entry.names.zh, entry.names.en, *entry.aliases}
        if wanted in {normalize(n) for n in names}:
            return entry
    return None


def answer(ctx: CommandContext, question: str) -> str:
    """Render the best knowledge-base answer to ``question``.

    A question that carries an alarm ("帮我看下" + the alarm) gets the alarm's
    diagnosis: that is what the asker wants.
    """
    alarms = parse(question, ctx.knowledge.matcher)
    if alarms:
        return ctx.renderer.alarm_reply([diagnose(a, ctx.knowledge) for a in alarms])
    matches = ctx.search.search(question)
    if not matches:
        return ctx.renderer.render("no_answer", question=question)
    return render_answer(ctx.knowledge, ctx.renderer, matches)


def render_answer(
    knowledge: Knowledge, renderer: ReplyRenderer, matches: list[Match]
) -> str:
    """Render the top match in full and list the next ones as "see also"."""
    best = matches[0]
    # NOTE: weak hits only distract; "see also" lists those near the best.
    others = [m for m in matches[1:4] if m.score >= best.score * 0.5]
    see_also = [_title(knowledge, m, renderer.lang) for m in others]
    if best.kind == "alarm":
        body = renderer.render("explain", entry=knowledge.alarms[best.id])
    elif best.kind == "faq":
        body = renderer.render("faq", entry=knowledge.faq[best.id])
    else:
        table = knowledge.tables[best.id]
        row = next((r for r in table.rows if r.key == best.row), None)
        body = renderer.render("table", table=table, row=row)
    return renderer.render("answer", body=body, see_also=see_also)


def _title(knowledge: Knowledge, match: Match, lang: str) -> str:
    if match.kind == "alarm":
        return f"{knowledge.alarms[match.id].names.get(lang)} (/explain {match.id})"
    if match.kind == "faq":
        return knowledge.faq[match.id].question.get(lang)
    return knowledge.tables[match.id].title.get(lang)
