"""This module checks a knowledge base beyond its schema: every text must render.

``load_knowledge`` validates shapes and references; this adds what only
rendering shows: template syntax, undefined variables, commands with unknown
placeholders, findings whose wording the detectors cannot fill, and replies too
long for the chat (more messages of ``MESSAGE_LIMIT`` bytes than ``ReplyLimits``
allows).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import yaml

from bot.alarm import PLATFORM_TZ, Alarm
from bot.diagnosis import Diagnosis, Finding, Target, diagnose
from bot.errors import KnowledgeError, RenderError
from bot.kbedit import Author, ChangeRecord, Proposal
from bot.knowledge import (
    FINDING_VARIABLES,
    LANGS,
    AlarmType,
    FaqEntry,
    Knowledge,
    Table,
    line_of,
    load_knowledge,
    paused_gc,
    table_path,
)
from bot.notices import TEMPLATES as NOTICE_TEMPLATES
from bot.notices import sample_contexts
from bot.render import MESSAGE_LIMIT, ReplyRenderer, split_message

TEMPLATES = (
    "alarm",
    "alarms_header",
    "help",
    "types",
    "usage",
    "explain",
    "explain_choices",
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
    *NOTICE_TEMPLATES,
    "kb_show",
    "kb_proposed",
    "kb_confirmed",
    "kb_rejected",
    "kb_undone",
    "kb_log",
    "kb_error",
    "probe",
    "probe_refused",
    "probe_followup",
    "host",
    "logs_item",
    "logs",
)
T = TypeVar("T")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """How many chat messages one reply may take.

    Attributes:
        alarm: the reply to one alarm of a type, with its variants.
        explain: an ``explain``, FAQ or reference-table reply.
        message_bytes: the size of one chat message.
    """

    alarm: int = 2
    explain: int = 6
    message_bytes: int = MESSAGE_LIMIT


def check_knowledge(
    root: Path | None = None, limits: ReplyLimits | None = None
) -> tuple[Knowledge | None, list[str]]:
    """Load ``root`` and render everything in it; return the problems found."""
    with paused_gc():
        return _check_knowledge(root, limits or ReplyLimits())


def _check_knowledge(
    root: Path | None, limits: ReplyLimits
) -> tuple[Knowledge | None, list[str]]:
    try:
        knowledge = load_knowledge(root)
    except KnowledgeError as exc:
        return None, exc.problems
    problems: list[str] = _check_log_rows(knowledge)
    prefix = knowledge.root.name
    for lang in LANGS:
        renderer = ReplyRenderer(knowledge, lang)
        problems += _check_templates(knowledge, renderer, prefix, limits)
        problems += _check_alarm_render(knowledge, renderer, prefix, limits)
    return knowledge, list(dict.fromkeys(problems))


def _attempt(
    problems: list[str],
    where: str,
    action: Callable[..., T],
    /,
    *args: object,
    **kwargs: object,
) -> T | None:
    try:
        return action(*args, **kwargs)
    except RenderError as exc:
        problems.append(f"{where}: {exc.reason}")
    except Exception as exc:  # a template may raise anything while rendering
        problems.append(f"{where}: {type(exc).__name__}: {exc}")
    return None


def _check_size(
    problems: list[str],
    where: str | Callable[[], str],
    what: str,
    text: str | None,
    limit: int,
    limits: ReplyLimits,
) -> None:
    """Flag a reply that takes more than ``limit`` chat messages.

    ``where`` may be a function: finding a line means parsing the file again,
    which is done only for a reply that is too long.
    """
    if text is None or len(text.encode()) <= limit * limits.message_bytes // 2:
        return  # NOTE: this short always fits, however the lines split
    messages = split_message(text, limits.message_bytes)
    if len(messages) > limit:
        place = where if isinstance(where, str) else where()
        problems.append(
            f"{place}: {what} is {len(text.encode())} bytes in {len(messages)} "
            f"messages of {limits.message_bytes} bytes, over the limit of {limit}"
        )


def _check_templates(
    knowledge: Knowledge, renderer: ReplyRenderer, prefix: str, limits: ReplyLimits
) -> list[str]:
    problems: list[str] = []
    lang = renderer.lang
    entry = next(iter(knowledge.alarms.values()))
    table = knowledge.table("nginx_status") or next(iter(knowledge.tables.values()))
    samples: dict[str, dict[str, object]] = {
        "alarms_header": {"count": 2},
        "help": {"commands": ["help", "reload", "probe", "host"], "is_admin": True},
        "types": {"entries": list(knowledge.alarms.values())},
        "explain_choices": {
            "argument": "超时",
            "entries": list(knowledge.alarms.values())[:4],
        },
        "usage": {"command": "explain"},
        "answer": {"body": "body", "see_also": ["a", "b"]},
        "no_answer": {"question": "?"},
        "nginx_unknown": {"argument": "?", "table": table},
        "version": {"version": "0"},
        "denied": {"command": "reload", "admins": ["alice", "bob"]},
        "unknown_command": {"word": "hlep", "suggestions": ["help"]},
        "error": {},
        "reload_failed": {"problems": ["x"] * 12},
        "reloaded": {"alarms": 1, "faq": 1, "tables": 1},
        "intro": {},
        "explain": {"entry": entry},
        **sample_contexts(knowledge),
        **_kb_samples(),
    }
    # The probe's contexts render the findings' wording: one that fails is
    # named here, and the probe templates are then left unchecked.
    where = f"{prefix}/findings.yaml"
    probe_samples = _attempt(problems, where, _probe_samples, renderer) or {}
    for name in TEMPLATES:
        where = f"{prefix}/templates/{lang}/{name}.j2"
        if f"{lang}/{name}.j2" not in knowledge.templates:
            problems.append(f"{where}: template missing")
        elif name in samples:
            _attempt(problems, where, renderer.render, name, **samples[name])
        elif name == "kb_error":
            for details in KB_ERROR_SAMPLES:
                _attempt(problems, where, renderer.render, name, **details)
        elif name == "logs":
            # NOTE: rechecked only when a template or a table it reads changes.
            tables = tuple(map(knowledge.table, ("nginx_status", "nginx_errors")))
            log_units = _Units(knowledge, renderer, limits)
            problems += log_units.run(("logs",), tables, _check_logs)
        elif name == "logs_item":
            continue  # with "logs", which shows its texts
        else:
            for details in probe_samples.get(name, ()):
                _attempt(problems, where, renderer.render, name, **details)
    units = _Units(knowledge, renderer, limits)
    for alarm in knowledge.alarms.values():
        problems += units.run(("explain", alarm.id), (alarm,), _check_explain, alarm)
    for index, faq in enumerate(knowledge.faq.values()):
        problems += units.run(("faq", faq.id), (faq,), _check_faq, faq, index)
    for table in knowledge.tables.values():
        problems += units.run(("table", table.id), (table,), _check_table, table)
    return problems


def _check_logs(units: _Units) -> list[str]:
    """Every conclusion and note of ``alarm-bot logs`` has words; reports render."""
    from bot import logscan

    problems: list[str] = []
    renderer, prefix = units.renderer, units.prefix
    where = f"{prefix}/templates/{renderer.lang}/logs_item.j2"
    for remark in logscan.SAMPLE_REMARKS:
        text = _attempt(problems, where, logscan.render_remark, remark, renderer)
        if text == "":
            problems.append(f"{where}: no words for {remark.id!r}")
    if problems:
        # NOTE: the report shows these texts, so it would fail the same way.
        return list(dict.fromkeys(problems))
    where = f"{prefix}/templates/{renderer.lang}/logs.j2"
    for report in logscan.sample_reports():
        _attempt(problems, where, logscan.format_report, report, renderer)
    return problems


def _check_log_rows(knowledge: Knowledge) -> list[str]:
    """The statuses ``alarm-bot logs`` explains each have a ``nginx_status`` row."""
    from bot.logscan import REPORTED_STATUSES, status_row

    reason = "alarm-bot logs explains them from this table"
    table = knowledge.table("nginx_status")
    if table is None:
        where = _where(knowledge, knowledge.root / "reference")
        return [f"{where}: no nginx_status table ({reason})"]
    missing = [
        status
        for status in REPORTED_STATUSES
        if status_row(knowledge, status, by_class=False) is None
    ]
    if not missing:
        return []
    path = table_path(knowledge.root, table.id)
    node = yaml.compose(path.read_text(encoding="utf-8"), Loader=_Loader)
    line = line_of(node, ("rows",))
    return [
        f"{_where(knowledge, path)}:{line}: rows: no row for "
        f"{', '.join(missing)} ({reason})"
    ]


def _probe_samples(renderer: ReplyRenderer) -> dict[str, list[dict[str, object]]]:
    # NOTE: imported here: the probe pulls in httpx, dnspython, cryptography and
    # psutil, which the other commands that check the knowledge never need.
    from bot.autoprobe import sample_contexts as probe_sample_contexts

    return probe_sample_contexts(renderer)


class _Units:
    """Runs the render check of one entry, or reuses its last result.

    A result is reused while the entry is the very same object (the loader
    hands back the same objects for an unchanged file), the templates are the
    same and so are the limits. NOTE: the explain, FAQ and table templates are
    assumed to render their own entry only, not others through ``knowledge``.
    """

    def __init__(
        self, knowledge: Knowledge, renderer: ReplyRenderer, limits: ReplyLimits
    ) -> None:
        self.knowledge = knowledge
        self.renderer = renderer
        self.limits = limits
        self.prefix = knowledge.root.name
        self.key = (renderer.lang, limits, _digest(knowledge.templates))

    def run(
        self,
        key: tuple[object, ...],
        deps: tuple[object, ...],
        check: Callable[..., list[str]],
        *args: object,
    ) -> list[str]:
        full = (*self.key, *key)
        with _RESULTS_LOCK:
            found = _RESULTS.get(full)
        if found is not None and _same(found[0], deps):
            return list(found[1])
        problems = check(self, *args)
        with _RESULTS_LOCK:
            if len(_RESULTS) > 20_000:
                _RESULTS.clear()
            _RESULTS[full] = (deps, tuple(problems))
        return problems


# The last render-check result of each entry, and what it depended on.
_RESULTS: dict[tuple[object, ...], tuple[tuple[object, ...], tuple[str, ...]]] = {}
_RESULTS_LOCK = threading.Lock()


def _same(old: tuple[object, ...], new: tuple[object, ...]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


@functools.lru_cache(maxsize=16)
def _digest_of(items: frozenset[tuple[str, str]]) -> int:
    return hash(items)


def _digest(templates: dict[str, str]) -> int:
    return _digest_of(frozenset(templates.items()))


def _check_explain(units: _Units, alarm: AlarmType) -> list[str]:
    problems: list[str] = []
    where = f"{units.prefix}/alarms/{alarm.id}.yaml"
    text = _attempt(problems, where, units.renderer.render, "explain", entry=alarm)
    what = f"explain reply ({units.renderer.lang})"
    _check_size(problems, where, what, text, units.limits.explain, units.limits)
    return problems


def _check_faq(units: _Units, faq: FaqEntry, index: int) -> list[str]:
    problems: list[str] = []
    where = f"{units.prefix}/faq.yaml: {faq.id}"
    text = _attempt(problems, where, units.renderer.render, "faq", entry=faq)
    lazy = functools.partial(_faq_where, units.knowledge, index)
    what = f"faq reply ({units.renderer.lang})"
    _check_size(problems, lazy, what, text, units.limits.explain, units.limits)
    return problems


def _check_table(units: _Units, table: Table) -> list[str]:
    problems: list[str] = []
    render = units.renderer.render
    where = f"{units.prefix}/reference/{table.id}.yaml"
    text = _attempt(problems, where, render, "table", table=table, row=None)
    # NOTE: the whole table renders every row's fields; one row of each shape
    # is enough for the template's one-row branch.
    commands = [r for r in table.rows[1:] if r.command]
    for row in [table.rows[0], *commands[:1]]:
        _attempt(problems, where, render, "table", table=table, row=row)
    lazy = functools.partial(_table_where, units.knowledge, table.id)
    what = f"table reply ({units.renderer.lang})"
    _check_size(problems, lazy, what, text, units.limits.explain, units.limits)
    return problems


def _table_where(knowledge: Knowledge, table_id: str) -> str:
    return _where(knowledge, table_path(knowledge.root, table_id))


def _where(knowledge: Knowledge, path: Path) -> str:
    return str(Path(knowledge.root.name) / path.relative_to(knowledge.root))


def _faq_where(knowledge: Knowledge, index: int) -> str:
    """``knowledge/faq.yaml:LINE: faq[INDEX]``; parsed again only when asked."""
    path = knowledge.root / "faq.yaml"
    node = yaml.compose(path.read_text(encoding="utf-8"), Loader=_Loader)
    line = line_of(node, ("faq", index))
    return f"{_where(knowledge, path)}:{line}: faq[{index}]"


def _check_alarm_render(
    knowledge: Knowledge, renderer: ReplyRenderer, prefix: str, limits: ReplyLimits
) -> list[str]:
    """Render every type's alarm reply with every finding and variant in it.

    The size is checked on a sample alarm of the type with its own findings and
    every variant: all findings at once make a render test, not a real reply.
    """
    problems: list[str] = []
    units = _Units(knowledge, renderer, limits)
    # An alarm reply also shows the findings' wording and event names from the
    # reference tables; the unknown type's reply names the nearest other types.
    shared = (*knowledge.findings.values(), *knowledge.tables.values())
    for alarm_type, entry in knowledge.alarms.items():
        others = tuple(knowledge.alarms.values()) if alarm_type == "unknown" else ()
        deps = (entry, *shared, *others)
        problems += units.run(("alarm", alarm_type), deps, _check_alarm, entry)
    return problems


def _check_alarm(units: _Units, entry: AlarmType) -> list[str]:
    problems: list[str] = []
    knowledge, renderer, limits = units.knowledge, units.renderer, units.limits
    findings = tuple(
        Finding(fid, {name: "x" for name in FINDING_VARIABLES[fid]})
        for fid in knowledge.findings
    )
    target = Target(domain="example.com", ip="192.0.2.1", url="http://example.com/wx")
    alarm = sample_alarm(entry.id, entry.examples[0] if entry.examples else None)
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
    where = f"{units.prefix}/alarms/{entry.id}.yaml"
    _attempt(problems, where, renderer.alarm_reply, [diagnosis])
    sample = replace(base, variants=tuple(entry.variants), target=target)
    text = _attempt(problems, where, renderer.alarm_reply, [sample])
    what = f"alarm reply ({renderer.lang})"
    _check_size(problems, where, what, text, limits.alarm, limits)
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


def load_checked(
    root: Path | None = None, limits: ReplyLimits | None = None
) -> Knowledge:
    """Load ``root`` and render everything; the loader the bot starts and reloads with.

    Raises:
        KnowledgeError: listing every problem, as ``alarm-bot kb check`` prints them.
    """
    knowledge, problems = check_knowledge(root, limits)
    if problems or knowledge is None:
        raise KnowledgeError(problems)
    return knowledge


# ------------------------------------------------- samples for kb_* replies

_AT = datetime(2014, 12, 1, 20, 12, tzinfo=PLATFORM_TZ)
KB_ERROR_SAMPLES: tuple[dict[str, object], ...] = tuple(
    {"code": code, "details": details}
    for code, details in (
        ("usage", {}),
        ("not_enabled", {}),
        ("unknown_entry", {"entry_id": "faq_x", "suggestions": ["faq_y"]}),
        ("unknown_entry", {"entry_id": "faq_x", "suggestions": []}),
        ("unknown_kind", {"entry_id": "x"}),
        ("bad_id", {"entry_id": "../x"}),
        ("no_yaml", {"entry_id": "x", "command": "suggest"}),
        ("bad_yaml", {"line": 3, "problem": "found a tab", "has_tab": True}),
        ("bad_yaml", {"line": None, "problem": "duplicate key 'a'", "has_tab": False}),
        ("not_mapping", {"entry_id": "x"}),
        ("id_mismatch", {"entry_id": "x", "got": "y"}),
        ("id_mismatch", {"entry_id": "x", "got": None}),
        ("no_change", {"entry_id": "x"}),
        ("invalid", {"problems": ["knowledge/faq.yaml:3: faq[0].id: bad"] * 12}),
        ("unknown_change", {"change_id": "ab12"}),
        ("stale", {"change_id": "ab12", "path": "faq.yaml"}),
        ("nothing_to_undo", {}),
        ("edited_since", {"change_id": "ab12", "path": "faq.yaml"}),
        ("layout", {}),
    )
)


def _kb_samples() -> dict[str, dict[str, object]]:
    """Contexts for the ``kb`` command's replies."""
    proposal = Proposal(
        change_id="ab12",
        entry_id="alarm_setup",
        kind="faq",
        path="faq.yaml",
        base_text="a\n",
        new_text="b\n",
        author=Author("alice", "wxid_alice", "ops"),
        created_at=_AT,
        is_suggestion=True,
        is_new=False,
        diff=("@@ -1 +1 @@", "-a", "+b"),
        diff_more=3,
    )
    record = ChangeRecord(
        change_id="ab12",
        action="set",
        entry_id="alarm_setup",
        path="faq.yaml",
        author="alice",
        confirmed_by="bob",
        at=_AT,
        root="knowledge",
        is_suggestion=True,
        commit="1a2b3c4",
    )
    undo = replace(
        record, change_id="cd34", action="undo", author="bob", reverts="ab12"
    )
    return {
        "kb_show": {
            "entry_id": "markfail",
            "path": "alarms/markfail.yaml",
            "text": "x",
        },
        "kb_proposed": {"proposal": proposal},
        "kb_confirmed": {"record": record, "reload": "ok"},
        "kb_rejected": {"proposal": proposal, "by": "bob"},
        "kb_undone": {"record": undo, "reload": "ok"},
        "kb_log": {"changes": [record, undo], "pending": [proposal]},
    }
