"""This module loads and validates the knowledge base in ``knowledge/``.

The knowledge base is data a non-programmer edits: one YAML file per alarm type,
the FAQ, reference tables, the findings' wording and the reply templates. Loading
validates all of it at once and reports every problem with its file, line, key and
value, so a broken file fails at start-up rather than at the first alarm.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.alarm import Classification
from bot.errors import KnowledgeError

logger = logging.getLogger(__name__)

ALARM_TYPES: tuple[str, ...] = (
    "dns_failure",
    "dns_timeout",
    "connect_timeout",
    "request_timeout",
    "invalid_response",
    "markfail",
    "ticket_timeout",
    "ticket_failure",
    "component_push_timeout",
    "component_push_failure",
    "unknown",
)
Severity = Literal["info", "warning", "high", "critical"]
Lang = Literal["zh", "en"]
LANGS: tuple[Lang, ...] = ("zh", "en")
ID_PATTERN = r"^[a-z0-9][a-z0-9_\-]*$"


M = TypeVar("M", bound=BaseModel)


class Entry(BaseModel):
    """Base of every knowledge model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(Entry):
    """A text in both languages; Chinese is the default."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)

    def get(self, lang: str) -> str:
        """Return the text in ``lang``, falling back to Chinese."""
        return self.en if lang == "en" else self.zh


class Command(Entry):
    """A shell command to run; may use ``{{ domain }}``, ``{{ ip }}``, ``{{ url }}``."""

    run: str = Field(min_length=1)
    note: Text | None = None


class Step(Entry):
    """One check of a runbook."""

    id: str = Field(pattern=ID_PATTERN)
    title: Text
    detail: Text | None = None
    commands: list[Command] = []


class Variant(Entry):
    """Extra knowledge for an alarm in a context (third party, pay notification)."""

    summary: Text
    steps: list[Step] = []


class AlarmType(Entry):
    """Everything the bot knows about one alarm type."""

    id: str
    names: Text
    aliases: list[str] = []
    category: Literal["general", "third_party"]
    severity: Severity
    summary: Text
    platform_action: Text
    limit: Text | None = None
    match: list[list[str]] = []
    examples: list[str] = []
    steps: list[Step] = Field(min_length=1)
    contact_platform: Text | None = None
    escalation: Text | None = None
    variants: dict[Literal["third_party", "pay_notify"], Variant] = {}
    related: list[str] = []

    @field_validator("id")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in ALARM_TYPES:
            raise ValueError(f"unknown alarm type {value!r}")
        return value


class FaqEntry(Entry):
    """A question people ask, with its answer."""

    id: str = Field(pattern=ID_PATTERN)
    question: Text
    keywords: list[str] = []
    answer: Text
    steps: list[Step] = []
    related: list[str] = []


class Row(Entry):
    """One row of a reference table."""

    key: str = Field(min_length=1)
    aliases: list[str] = []
    meaning: Text
    action: Text | None = None
    command: str | None = None


class Table(Entry):
    """A reference table (nginx statuses, netstat states, push events …)."""

    id: str = Field(pattern=ID_PATTERN)
    title: Text
    keywords: list[str] = []
    intro: Text | None = None
    rows: list[Row] = Field(min_length=1)
    related: list[str] = []


class FindingText(Entry):
    """The wording of a finding; ``text`` and ``fix`` are jinja templates."""

    id: str = Field(pattern=ID_PATTERN)
    severity: Severity
    text: Text
    fix: Text


class FindingsFile(Entry):
    """``knowledge/findings.yaml``."""

    findings: list[FindingText]


class FaqFile(Entry):
    """``knowledge/faq.yaml``."""

    faq: list[FaqEntry]


@dataclass(frozen=True, slots=True)
class Knowledge:
    """The validated knowledge base; immutable, swapped whole on reload."""

    root: Path
    alarms: dict[str, AlarmType]
    faq: dict[str, FaqEntry]
    tables: dict[str, Table]
    findings: dict[str, FindingText]
    templates: dict[str, str]
    matcher: TypeMatcher

    def alarm(self, alarm_type: str) -> AlarmType:
        """Return the entry of ``alarm_type``, or the ``unknown`` entry."""
        return self.alarms.get(alarm_type) or self.alarms["unknown"]

    def table(self, table_id: str) -> Table | None:
        """Return the reference table ``table_id`` if it exists."""
        return self.tables.get(table_id)

    def ids(self) -> Iterator[tuple[str, str]]:
        """Yield ``(kind, id)`` for every searchable entry."""
        for alarm_id in self.alarms:
            yield "alarm", alarm_id
        for faq_id in self.faq:
            yield "faq", faq_id
        for table_id in self.tables:
            yield "reference", table_id


def default_root() -> Path:
    """Return the knowledge directory shipped with the bot."""
    packaged = Path(__file__).parent / "knowledge_default"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "knowledge"


def normalize(text: str) -> str:
    """Fold width and case and drop spacing and punctuation, for phrase matching."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


# ---------------------------------------------------------------- loading


class _Problems:
    """Collects every problem found while loading, each with file and line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.items: list[str] = []

    def add(self, path: Path, line: int | None, message: str) -> None:
        where = self._relative(path)
        self.items.append(f"{where}:{line}: {message}" if line else f"{where}: {message}")

    def _relative(self, path: Path) -> str:
        try:
            return str(Path(self.root.name) / path.relative_to(self.root))
        except ValueError:
            return str(path)


def _read_yaml(path: Path, problems: _Problems) -> tuple[object, yaml.Node | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, None, f"cannot read file: {exc}")
        return None, None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        problems.add(path, line, f"invalid YAML: {reason}")
        return None, None
    return data, node


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree to a line."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == part]
            if not match:
                key_nodes = [k for k, _ in node.value]
                return key_nodes[0].start_mark.line + 1 if key_nodes else line
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def _validate(model: type[M], path: Path, problems: _Problems) -> M | None:
    data, node = _read_yaml(path, problems)
    if data is None and node is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
            key = _format_loc(loc)
            value = error.get("input")
            shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
            if error["type"] == "extra_forbidden":
                message = f"{key}: unknown key {str(loc[-1])!r}"
            else:
                message = f"{key}: {error['msg'].lower()}{shown}"
            problems.add(path, _line_of(node, loc), message)
        return None


def load_knowledge(root: Path | None = None) -> Knowledge:
    """Load and validate the whole knowledge base.

    Args:
        root: the knowledge directory; the shipped one by default.

    Returns:
        The validated knowledge.

    Raises:
        KnowledgeError: listing every problem found, each naming its file.
    """
    root = (root or default_root()).resolve()
    problems = _Problems(root)
    if not root.is_dir():
        raise KnowledgeError([f"{root}: knowledge directory not found"])

    alarms: dict[str, AlarmType] = {}
    for path in sorted((root / "alarms").glob("*.yaml")):
        entry = _validate(AlarmType, path, problems)
        if entry is None:
            continue
        if entry.id != path.stem:
            problems.add(path, 1, f"id: {entry.id!r} does not match the file name")
        if entry.id in alarms:
            problems.add(path, 1, f"id: duplicate alarm type {entry.id!r}")
        alarms[entry.id] = entry
    missing = [t for t in ALARM_TYPES if t not in alarms]
    if missing and not problems.items:
        problems.add(root / "alarms", None, f"missing alarm types: {', '.join(missing)}")

    faq: dict[str, FaqEntry] = {}
    faq_path = root / "faq.yaml"
    faq_file = _validate(FaqFile, faq_path, problems) if faq_path.exists() else None
    for item in faq_file.faq if faq_file else []:
        if item.id in faq:
            problems.add(faq_path, None, f"faq: duplicate id {item.id!r}")
        faq[item.id] = item

    tables: dict[str, Table] = {}
    for path in sorted((root / "reference").glob("*.yaml")):
        table = _validate(Table, path, problems)
        if table is None:
            continue
        if table.id in tables:
            problems.add(path, 1, f"id: duplicate reference table {table.id!r}")
        tables[table.id] = table

    findings: dict[str, FindingText] = {}
    findings_path = root / "findings.yaml"
    findings_file = (
        _validate(FindingsFile, findings_path, problems)
        if findings_path.exists()
        else None
    )
    for finding in findings_file.findings if findings_file else []:
        if finding.id in findings:
            problems.add(findings_path, None, f"findings: duplicate id {finding.id!r}")
        findings[finding.id] = finding

    templates = _load_templates(root, problems)
    knowledge = Knowledge(
        root, alarms, faq, tables, findings, templates, TypeMatcher(alarms)
    )
    _check_references(knowledge, problems)
    if problems.items:
        raise KnowledgeError(problems.items)
    logger.debug(
        "knowledge loaded root=%s alarms=%d faq=%d tables=%d",
        root,
        len(alarms),
        len(faq),
        len(tables),
    )
    return knowledge


def _load_templates(root: Path, problems: _Problems) -> dict[str, str]:
    templates: dict[str, str] = {}
    for path in sorted((root / "templates").glob("*/*.j2")):
        try:
            templates[f"{path.parent.name}/{path.name}"] = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(path, None, f"cannot read template: {exc}")
    return templates


def _check_references(knowledge: Knowledge, problems: _Problems) -> None:
    known = {entry_id for _, entry_id in knowledge.ids()}
    sources: list[tuple[Path, str, list[str]]] = [
        (knowledge.root / "alarms" / f"{a.id}.yaml", a.id, a.related)
        for a in knowledge.alarms.values()
    ]
    sources += [(knowledge.root / "faq.yaml", f.id, f.related) for f in knowledge.faq.values()]
    sources += [
        (knowledge.root / "reference" / f"{t.id}.yaml", t.id, t.related)
        for t in knowledge.tables.values()
    ]
    for path, owner, related in sources:
        for target in related:
            if target not in known:
                problems.add(path, None, f"{owner}.related: unknown entry {target!r}")



# ---------------------------------------------------------- classification


class TypeMatcher:
    """Tells the alarm type from a 内容 sentence by the types' ``match`` phrases.

    A phrase group matches when all of its phrases occur in the normalised
    content; the type with the longest matching group wins, so a specific group
    ("component_verify_ticket" + "没有返回success") beats a generic one ("没有返回").
    """

    def __init__(self, alarms: dict[str, AlarmType]) -> None:
        self._groups = [
            (alarm.id, tuple(normalize(p) for p in group))
            for alarm in alarms.values()
            for group in alarm.match
        ]
        self._examples = [
            (alarm.id, normalize(example))
            for alarm in alarms.values()
            for example in alarm.examples
        ]
        self._third_party = {
            a.id for a in alarms.values() if a.category == "third_party"
        }

    def classify(self, content: str) -> Classification:
        """Return the best type for ``content``, or ``unknown`` with the nearest."""
        text = normalize(content)
        best, score = "unknown", 0
        for alarm_type, group in self._groups:
            if all(phrase in text for phrase in group):
                length = sum(len(phrase) for phrase in group)
                if length > score:
                    best, score = alarm_type, length
        if best == "unknown":
            return Classification("unknown", 0.0, self.nearest(text))
        third_party = best in self._third_party or "第三方平台" in text
        return Classification(best, float(score), (), third_party)

    def nearest(self, normalized: str, limit: int = 3) -> tuple[str, ...]:
        """Return up to ``limit`` types whose example sentences look most alike."""
        scores: dict[str, float] = {}
        for alarm_type, example in self._examples:
            ratio = SequenceMatcher(None, normalized[:400], example).ratio()
            scores[alarm_type] = max(scores.get(alarm_type, 0.0), ratio)
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        return tuple(t for t, ratio in ranked[:limit] if ratio > 0.2)
