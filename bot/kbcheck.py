"""This module checks a knowledge base beyond its schema: every text must render.

``load_knowledge`` validates shapes and references; this adds what only
rendering shows: template syntax, undefined variables, commands with unknown
placeholders and findings whose wording the detectors cannot fill.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bot.alarm import PLATFORM_TZ, Alarm
from bot.diagnosis import Diagnosis, Finding, Target, diagnose
from bot.errors import KnowledgeError, RenderError
from bot.knowledge import FINDING_VARIABLES, LANGS, Knowledge, load_knowledge
from bot.render import ReplyRenderer

TEMPLATES = (
    "alarm",
    "alarms_header",
    "help",
    "types",
    "usage",
    "explain",
    "faq",
    "table",
    "answer",
    "no_answer",
    "nginx_unknown",
    "version",
    "denied",
    "unknown_command",
    "error",
    "reload_failed",
    "reloaded",
    "intro",
)


def check_knowledge(root: Path | None = None) -> tuple[Knowledge | None, list[str]]:
    """Load ``root`` and render everything in it; return the problems found."""
    try:
        knowledge = load_knowledge(root)
    except KnowledgeError as exc:
        return None, exc.problems
    problems: list[str] = []
    prefix = knowledge.root.name
    for lang in LANGS:
        renderer = ReplyRenderer(knowledge, lang)
        problems += _check_templates(knowledge, renderer, prefix)
        problems += _check_alarm_render(knowledge, renderer, prefix)
    return knowledge, list(dict.fromkeys(problems))


def _attempt(
    problems: list[str],
    where: str,
    action: Callable[..., object],
    /,
    *args: object,
    **kwargs: object,
) -> None:
    try:
        action(*args, **kwargs)
    except RenderError as exc:
        problems.append(f"{where}: {exc.reason}")
    except Exception as exc:  # a template may raise anything while rendering
        problems.append(f"{where}: {type(exc).__name__}: {exc}")


def _check_templates(
    knowledge: Knowledge, renderer: ReplyRenderer, prefix: str
) -> list[str]:
    problems: list[str] = []
    lang = renderer.lang
    entry = next(iter(knowledge.alarms.values()))
    table = knowledge.table("nginx_status") or next(iter(knowledge.tables.values()))
    samples: dict[str, dict[str, object]] = {
        "alarms_header": {"count": 2},
        "help": {"commands": ["help", "reload"], "is_admin": True},
        "types": {"entries": list(knowledge.alarms.values())},
        "usage": {"command": "explain"},
        "answer": {"body": "body", "see_also": ["a", "b"]},
        "no_answer": {"question": "?"},
        "nginx_unknown": {"argument": "?", "table": table},
        "version": {"version": "0"},
        "denied": {"command": "reload"},
        "unknown_command": {"word": "hlep", "suggestions": ["help"]},
        "error": {},
        "reload_failed": {"problems": ["x"] * 12},
        "reloaded": {"alarms": 1, "faq": 1, "tables": 1},
        "intro": {},
        "explain": {"entry": entry},
    }
    for name in TEMPLATES:
        where = f"{prefix}/templates/{lang}/{name}.j2"
        if f"{lang}/{name}.j2" not in knowledge.templates:
            problems.append(f"{where}: template missing")
        elif name in samples:
            _attempt(problems, where, renderer.render, name, **samples[name])
    for alarm in knowledge.alarms.values():
        where = f"{prefix}/alarms/{alarm.id}.yaml"
        _attempt(problems, where, renderer.render, "explain", entry=alarm)
    for faq in knowledge.faq.values():
        where = f"{prefix}/faq.yaml: {faq.id}"
        _attempt(problems, where, renderer.render, "faq", entry=faq)
    for table in knowledge.tables.values():
        where = f"{prefix}/reference/{table.id}.yaml"
        _attempt(problems, where, renderer.render, "table", table=table, row=None)
        for row in table.rows:
            _attempt(problems, where, renderer.render, "table", table=table, row=row)
    return problems


def _check_alarm_render(
    knowledge: Knowledge, renderer: ReplyRenderer, prefix: str
) -> list[str]:
    """Render every type's alarm reply with every finding and variant in it."""
    problems: list[str] = []
    findings = tuple(
        Finding(fid, {name: "x" for name in FINDING_VARIABLES[fid]})
        for fid in knowledge.findings
    )
    target = Target(domain="example.com", ip="192.0.2.1", url="http://example.com/wx")
    for alarm_type, entry in knowledge.alarms.items():
        alarm = sample_alarm(alarm_type, entry.examples[0] if entry.examples else None)
        base = diagnose(alarm, knowledge)
        diagnosis = Diagnosis(
            alarm=alarm,
            entry=entry,
            findings=findings,
            steps=base.steps,
            variants=tuple(entry.variants),
            target=target,
            event="subscribe",
            escalate=base.escalate,
        )
        where = f"{prefix}/alarms/{alarm_type}.yaml"
        _attempt(problems, where, renderer.alarm_reply, [diagnosis, diagnosis])
    return problems


def sample_alarm(alarm_type: str, content: str | None = None) -> Alarm:
    """A made-up alarm of ``alarm_type``, for previews and render checks."""
    return Alarm(
        type=alarm_type,
        appid="wx0123456789abcdef",
        appid_raw="wx0123456789abcdef",
        nickname="示例公众号",
        time=datetime(2014, 12, 1, 20, 12, tzinfo=PLATFORM_TZ),
        time_text="2014-12-01 20:12:00",
        content=content,
        count=1272,
        window_minutes=5,
        sample={"IP": "192.0.2.1", "Event": "subscribe"},
        nearest=("request_timeout",) if alarm_type == "unknown" else (),
    )


def load_checked(root: Path | None = None) -> Knowledge:
    """Load ``root`` and render everything; the loader the bot starts and reloads with.

    Raises:
        KnowledgeError: listing every problem, as ``alarm-bot kb check`` prints them.
    """
    knowledge, problems = check_knowledge(root)
    if problems or knowledge is None:
        raise KnowledgeError(problems)
    return knowledge
