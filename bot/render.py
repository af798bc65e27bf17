"""This module renders replies from the templates in ``knowledge/templates``.

Templates run in jinja2's sandbox with ``StrictUndefined``, so a template that
names a missing field fails loudly in ``kb check`` and the tests instead of
printing a blank in the group. Replies are plain text: autoescape is off.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from types import CodeType
from typing import Any

from jinja2 import (
    BytecodeCache,
    DictLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    UndefinedError,
)
from jinja2.bccache import Bucket
from jinja2.sandbox import SandboxedEnvironment

from bot.alarm import Alarm
from bot.diagnosis import Diagnosis, Finding, Target, lookup_event, worst
from bot.errors import RenderError
from bot.knowledge import (
    AlarmType,
    Command,
    FaqEntry,
    Knowledge,
    Row,
    Step,
    Table,
    Text,
    Variant,
)

logger = logging.getLogger(__name__)

MESSAGE_LIMIT = 2048
# An alarm reply lists the first checks only; /explain shows the whole runbook.
ALARM_STEPS = 6
# Failures per second at which any alarm is at least "high": most users hit.
BUSY_RATE = 10.0
PLACEHOLDERS = {
    "zh": {
        "domain": "<你的域名>",
        "ip": "<服务器IP>",
        "url": "<服务器URL>",
        "port": "<端口>",
        "stamp": "<Stamp>",
        "openid": "<OpenID>",
    },
    "en": {
        "domain": "<your-domain>",
        "ip": "<server-ip>",
        "url": "<server-url>",
        "port": "<port>",
        "stamp": "<Stamp>",
        "openid": "<OpenID>",
    },
}


_MISSING = object()
_VALUE_TYPES = frozenset(
    {Alarm, Target, Text, AlarmType, Step, Command, Variant, FaqEntry, Table, Row}
)


class ReplyRenderer:
    """Renders every user-facing text in one language."""

    def __init__(self, knowledge: Knowledge, lang: str = "zh") -> None:
        self.knowledge = knowledge
        self.lang = lang if lang in PLACEHOLDERS else "zh"
        self.env = _environment(knowledge, self.lang)
        # Findings and commands are small templates from the YAML; compile once.
        self._compiled: dict[str, Template] = {}
        self._commands: dict[tuple[str, ...], str] = {}
        self.env.filters["cmd"] = lambda run: self.commands(
            [Command(run=run)], Target()
        )[0]

    def render(self, name: str, **context: object) -> str:
        """Render template ``name`` (without language or suffix) with ``context``.

        Raises:
            RenderError: the template is missing or failed.
        """
        path = f"{self.lang}/{name}.j2"
        try:
            template = self.env.get_template(path)
            text = template.render(knowledge=self.knowledge, lang=self.lang, **context)
        except TemplateError as exc:
            raise RenderError(f"templates/{path}", _reason(exc)) from exc
        return tidy(text)

    def render_text(self, source: str, **context: object) -> str:
        """Render a template string from the knowledge base (a finding, a command)."""
        try:
            template = self._compiled.get(source)
            if template is None:
                code = _CODE.get(source)
                if code is None:
                    code = _CODE[source] = self.env.compile(source)
                template = self._compiled[source] = self.env.template_class.from_code(
                    self.env, code, self.env.make_globals(None)
                )
            return template.render(**context)
        except TemplateError as exc:
            raise RenderError(repr(source[:60]), _reason(exc)) from exc

    def alarm_reply(self, diagnoses: list[Diagnosis]) -> str:
        """Render the reply to a message carrying ``diagnoses``."""
        parts = [self.render("alarm", **self.alarm_context(d)) for d in diagnoses]
        if len(parts) > 1:
            header = self.render("alarms_header", count=len(parts))
            return "\n\n".join([header, *parts])
        return parts[0] if parts else ""

    def alarm_context(self, diagnosis: Diagnosis) -> dict[str, object]:
        """Return the template context for one diagnosis."""
        alarm, entry = diagnosis.alarm, diagnosis.entry
        findings = [self.finding(f, diagnosis) for f in diagnosis.findings]
        severity = worst([entry.severity, *(str(f["severity"]) for f in findings)])
        if (alarm.rate_per_second or 0) >= BUSY_RATE:
            severity = worst([severity, "high"])
        event = diagnosis.event
        variants = [v for k, v in entry.variants.items() if k in diagnosis.variants]
        values = self._values(diagnosis.target)
        return {
            "alarm": alarm,
            "entry": entry,
            "diagnosis": diagnosis,
            "severity": severity,
            "event": event,
            "event_name": lookup_event(event, self.knowledge, self.lang)
            if event
            else None,
            "findings": findings,
            "steps": [
                {
                    "step": step,
                    "commands": self._fill(step.commands, values),
                }
                for step in diagnosis.steps[:ALARM_STEPS]
            ],
            "more_steps": max(len(diagnosis.steps) - ALARM_STEPS, 0),
            "variants": variants,
            "escalation": next(
                (v.escalation for v in variants if v.escalation), entry.escalation
            ),
            "contact_platform": next(
                (v.contact_platform for v in variants if v.contact_platform),
                entry.contact_platform,
            ),
            "window_end": alarm.window_end,
            "rate": alarm.rate_per_second,
            "target": diagnosis.target,
        }

    def finding(
        self, finding: Finding, diagnosis: Diagnosis | None = None
    ) -> dict[str, object]:
        """Render one finding's text and fix.

        Without ``diagnosis`` (the probe, ``host``) the wording has no alarm;
        ``kb check`` makes sure such findings do not use it.
        """
        wording = self.knowledge.findings[finding.id]
        alarm = diagnosis.alarm if diagnosis is not None else None
        context = {"f": finding.values, "alarm": alarm}
        return {
            "id": finding.id,
            "severity": wording.severity,
            "text": self.render_text(wording.text.get(self.lang), **context).strip(),
            "fix": self.render_text(wording.fix.get(self.lang), **context).strip(),
        }

    def commands(self, commands: list[Command], target: Target) -> list[str]:
        """Fill the runbook commands with this alarm's checked target values."""
        return self._fill(commands, self._values(target))

    def _values(self, target: Target) -> dict[str, str]:
        blanks = PLACEHOLDERS[self.lang]
        given = {
            "domain": target.domain,
            "ip": target.ip,
            "url": target.url,
            "port": str(target.port) if target.port else None,
            "stamp": target.stamp,
            "openid": target.openid,
        }
        return {name: value or blanks[name] for name, value in given.items()}

    def _fill(self, commands: list[Command], values: dict[str, str]) -> list[str]:
        key = tuple(values.values())
        out = []
        for command in commands:
            # The same few commands recur with the same target: render once.
            cached = self._commands.get((command.run, *key))
            if cached is None:
                cached = self.render_text(command.run, **values)
                if len(self._commands) > 4096:
                    self._commands.clear()
                self._commands[(command.run, *key)] = cached
            out.append(cached)
        return out


def _reason(exc: TemplateError) -> str:
    if isinstance(exc, UndefinedError):
        name = re.search(r"'([^']+)' is undefined", exc.message or "")
        return f"undefined variable {name.group(1)!r}" if name else str(exc.message)
    if isinstance(exc, TemplateNotFound):
        return "template missing"
    return f"{type(exc).__name__}: {exc.message}"


class _CodeCache(BytecodeCache):
    """Compiled templates shared by every renderer, keyed by name and source.

    A reload builds new renderers for the whole knowledge base; compiling the
    templates again was most of its time. Every environment here has the same
    options, so code compiled by one serves all; a changed source gets a new key.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.codes: dict[tuple[str, str], CodeType | None] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self.codes.get((bucket.key, bucket.checksum))
        if code is not None:
            bucket.code = code

    def dump_bytecode(self, bucket: Bucket) -> None:
        if len(self.codes) >= self.size:
            self.codes.clear()
        self.codes[(bucket.key, bucket.checksum)] = bucket.code


class _SourceCodes(dict[str, CodeType]):
    """Compiled finding and command templates, by source; cleared when full."""

    def __setitem__(self, key: str, value: CodeType) -> None:
        if len(self) >= 4096:
            self.clear()
        super().__setitem__(key, value)


_TEMPLATE_CODES = _CodeCache()
_CODE = _SourceCodes()


class ReplySandbox(SandboxedEnvironment):
    """The sandbox, with a fast path for the bot's own value types.

    Templates read dozens of fields of alarms and knowledge entries per reply, and
    the sandbox's checks were half the cost of rendering. Public data attributes
    of these frozen value types are safe to read; everything else, and anything
    reached through them (methods included), still goes through the full checks.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Read ``obj.attribute`` as the template asked."""
        kind = type(obj)
        if kind in _VALUE_TYPES and not attribute.startswith("_"):
            value = getattr(obj, attribute, _MISSING)
            if value is not _MISSING and not callable(value):
                return value
        elif kind is dict and attribute in obj and not hasattr(dict, attribute):
            # NOTE: jinja would first raise and catch AttributeError here.
            return obj[attribute]
        return super().getattr(obj, attribute)


def _environment(knowledge: Knowledge, lang: str) -> SandboxedEnvironment:
    env = ReplySandbox(
        loader=DictLoader(knowledge.templates),
        bytecode_cache=_TEMPLATE_CODES,
        # A reload builds a new renderer, so templates never change under one.
        auto_reload=False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
    env.filters["t"] = lambda text: _pick(text, lang)
    env.filters["num"] = _number
    env.filters["clock"] = _clock
    env.filters["rate"] = _rate
    return env


def _pick(text: Text | Mapping[str, str] | str | None, lang: str) -> str:
    if text is None:
        return ""
    if isinstance(text, Text):
        return text.get(lang)
    if isinstance(text, Mapping):
        return str(text.get(lang) or text.get("zh") or "")
    return str(text)


def _number(value: int | float | None) -> str:
    return "?" if value is None else f"{value:,}"


def _clock(value: datetime | None, with_date: bool = True) -> str:
    if value is None:
        return "?"
    return value.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _rate(value: float | None) -> str:
    if value is None:
        return "?"
    if 0 < value < 0.01:
        return "<0.01"
    return f"{value:.1f}" if value >= 0.1 else f"{value:.2f}"


def tidy(text: str) -> str:
    """Drop trailing spaces and runs of more than one blank line."""
    lines = [line.rstrip() for line in text.strip().split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split ``text`` into messages of at most ``limit`` UTF-8 bytes.

    Whole paragraphs (blank-line separated) stay together where they fit; a
    longer paragraph splits on line ends, and a single line longer than the
    limit is cut at a character boundary.
    """
    if len(text.encode()) <= limit:
        return [text] if text.strip() else []
    messages: list[str] = []
    current = ""
    for paragraph in _pieces(text, limit):
        joined = f"{current}\n\n{paragraph}" if current else paragraph
        if len(joined.encode()) <= limit:
            current = joined
            continue
        if current:
            messages.append(current)
        current = paragraph
    if current:
        messages.append(current)
    return [m.strip("\n") for m in messages if m.strip()]


def _pieces(text: str, limit: int) -> list[str]:
    """Paragraphs no longer than ``limit``, splitting the long ones by lines."""
    pieces: list[str] = []
    for paragraph in text.split("\n\n"):
        if len(paragraph.encode()) <= limit:
            pieces.append(paragraph)
            continue
        chunk = ""
        for line in _fit_lines(paragraph.split("\n"), limit):
            joined = f"{chunk}\n{line}" if chunk else line
            if len(joined.encode()) > limit:
                pieces.append(chunk)
                joined = line
            chunk = joined
        pieces.append(chunk)
    return pieces


def _fit_lines(lines: list[str], limit: int) -> list[str]:
    out: list[str] = []
    for line in lines:
        data = line.encode()
        while len(data) > limit:
            # Cutting bytes may split a character; "ignore" drops the partial
            # tail and the loop resumes right after what was kept.
            head = data[:limit].decode("utf-8", "ignore")
            out.append(head)
            data = data[len(head.encode()) :]
        out.append(data.decode())
    return out
