"""This module holds the chat commands: their names, permissions and handlers.

A command is written with a prefix (``/help``, ``#explain markfail``) or after an
@-mention of the bot (``@AlarmBot 帮助``). Handlers return reply text rendered from
``knowledge/templates``; the dispatcher wraps it into replies.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bot import __version__
from bot.knowledge import ALARM_TYPES, AlarmType, Knowledge, normalize
from bot.render import ReplyRenderer
from bot.search import KnowledgeSearch, Match

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a handler may use: the knowledge, its renderer and index, the asker."""

    knowledge: Knowledge
    renderer: ReplyRenderer
    search: KnowledgeSearch
    sender: str
    is_admin: bool
    reload: Callable[[], str]


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
    if entry is None:
        hits = [m for m in ctx.search.search(argument) if m.kind == "alarm"]
        entry = ctx.knowledge.alarms[hits[0].id] if hits else None
    if entry is None:
        return answer(ctx, argument)
    return ctx.renderer.render("explain", entry=entry)


def ask_command(ctx: CommandContext, argument: str) -> str:
    """Answer a question from the knowledge base."""
    if not argument:
        return ctx.renderer.render("usage", command="ask")
    return answer(ctx, argument)


def nginx_command(ctx: CommandContext, argument: str) -> str:
    """Explain an nginx upstream status or error-log string."""
    if not argument:
        return ctx.renderer.render("usage", command="nginx")
    wanted = normalize(argument)
    for table_id in ("nginx_status", "nginx_errors"):
        table = ctx.knowledge.table(table_id)
        for row in table.rows if table else []:
            names = {normalize(row.key), *(normalize(a) for a in row.aliases)}
            if wanted in names or (len(wanted) > 5 and any(wanted in n for n in names)):
                return ctx.renderer.render("table", table=table, row=row)
    table = ctx.knowledge.table("nginx_status")
    return ctx.renderer.render("nginx_unknown", argument=argument, table=table)


def version_command(ctx: CommandContext, argument: str) -> str:
    """Tell the bot's version and what its knowledge holds."""
    return ctx.renderer.render("version", version=__version__)


def reload_command(ctx: CommandContext, argument: str) -> str:
    """Reload the knowledge base from disk (admins only)."""
    return ctx.reload()


REGISTRY = CommandRegistry(
    [
        ChatCommand("help", ("帮助", "h", "?", "？"), help_command),
        ChatCommand("types", ("类型",), types_command),
        ChatCommand("explain", ("解释", "说明"), explain_command),
        ChatCommand("ask", ("问", "提问"), ask_command),
        ChatCommand("nginx", (), nginx_command),
        ChatCommand("version", ("版本",), version_command),
        ChatCommand("reload", ("重载",), reload_command, admin=True),
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
    """Render the best knowledge-base answer to ``question``."""
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
