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
from bot.diagnosis import FINDING_VARIABLES, Diagnosis, Finding, Target, diagnose
from bot.errors import BotError, KnowledgeError
from bot.knowledge import LANGS, Knowledge, load_knowledge
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
    for lang in LANGS:
        renderer = ReplyRenderer(knowledge, lang)
        problems += _check_templates(knowledge, renderer)
        problems += _check_findings(knowledge, renderer)
        problems += _check_alarms(knowledge, renderer)
    return knowledge, list(dict.fromkeys(problems))


def _attempt(
    problems: list[str], where: str, action: Callable[..., object], *args: object, **kwargs: object
) -> None:
    try:
        action(*args, **kwargs)
    except BotError as exc:
        problems.append(f"{where}: {exc}")
    except Exception as exc:  # a template may raise anything while rendering
        problems.append(f"{where}: {type(exc).__name__}: {exc}")


def _check_templates(knowledge: Knowledge, renderer: ReplyRenderer) -> list[str]:
    problems: list[str] = []
    lang = renderer.lang
    for name in TEMPLATES:
        if f"{lang}/{name}.j2" not in knowledge.templates:
            problems.append(f"templates/{lang}/{name}.j2: template missing")
    entry = next(iter(knowledge.alarms.values()))
    samples: dict[str, dict[str, object]] = {
        "alarms_header": {"count": 2},
        "help": {"commands": ["help", "reload"], "is_admin": True},
        "types": {"entries": list(knowledge.alarms.values())},
        "usage": {"command": "explain"},
        "answer": {"body": "body", "see_also": ["a", "b"]},
        "no_answer": {"question": "?"},
        "version": {"version": "0"},
        "denied": {"command": "reload"},
        "unknown_command": {"word": "hlep", "suggestions": ["help"]},
        "error": {},
        "reload_failed": {"problems": ["x"] * 12},
        "reloaded": {"alarms": 1, "faq": 1, "tables": 1},
        "intro": {},
        "explain": {"entry": entry},
    }
    for name, context in samples.items():
        _attempt(problems, f"templates/{lang}/{name}.j2", renderer.render, name, **context)
    for alarm in knowledge.alarms.values():
        where = f"alarms/{alarm.id}.yaml"
        _attempt(problems, where, renderer.render, "explain", entry=alarm)
    for faq in knowledge.faq.values():
        _attempt(problems, f"faq.yaml: {faq.id}", renderer.render, "faq", entry=faq)
    for table in knowledge.tables.values():
        where = f"reference/{table.id}.yaml"
        _attempt(problems, where, renderer.render, "table", table=table, row=None)
        for row in table.rows:
            _attempt(problems, where, renderer.render, "table", table=table, row=row)
        if table.id == "nginx_status":
            _attempt(
                problems,
                f"templates/{lang}/nginx_unknown.j2",
                renderer.render, "nginx_unknown", argument="?", table=table,
            )
    return problems


def _check_findings(knowledge: Knowledge, renderer: ReplyRenderer) -> list[str]:
    problems = [
        f"findings.yaml: no wording for finding {finding_id!r}"
        for finding_id in FINDING_VARIABLES
        if finding_id not in knowledge.findings
    ]
    problems += [
        f"findings.yaml: {finding_id}: unknown finding id {finding_id!r}"
        for finding_id in knowledge.findings
        if finding_id not in FINDING_VARIABLES
    ]
    return problems + _check_alarm_render(knowledge, renderer, all_findings=True)


def _check_alarms(knowledge: Knowledge, renderer: ReplyRenderer) -> list[str]:
    return _check_alarm_render(knowledge, renderer, all_findings=False)


def _check_alarm_render(
    knowledge: Knowledge, renderer: ReplyRenderer, *, all_findings: bool
) -> list[str]:
    problems: list[str] = []
    findings = tuple(
        Finding(fid, {name: "x" for name in FINDING_VARIABLES[fid]})
        for fid in knowledge.findings
        if fid in FINDING_VARIABLES
    )
    for alarm_type, entry in knowledge.alarms.items():
        alarm = sample_alarm(alarm_type, entry.examples[0] if entry.examples else None)
        base = diagnose(alarm, knowledge)
        diagnosis = Diagnosis(
            alarm=alarm,
            entry=entry,
            findings=findings if all_findings else base.findings,
            steps=base.steps,
            variants=tuple(entry.variants),
            target=Target(domain="example.com", ip="192.0.2.1", url="http://example.com/wx"),
            event="subscribe",
            escalate=base.escalate,
        )
        where = "findings.yaml" if all_findings else f"alarms/{alarm_type}.yaml"
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
