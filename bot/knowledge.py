"""This module loads and validates the knowledge base in ``knowledge/``.

The knowledge base is data a non-programmer edits: one YAML file per alarm type,
the FAQ, reference tables, the findings' wording and the reply templates. Loading
validates all of it at once and reports every problem with its file, line, key and
value, so a broken file fails at start-up rather than at the first alarm.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
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


# What a step's ``when`` may name; an alarm reply lists a step only when all hold
# (``explain`` always shows every step). See ``diagnosis.conditions``.
Condition = Literal[
    "body", "no_body", "http_code", "encrypted", "third_party", "pay_notify"
]


class Step(Entry):
    """One check of a runbook."""

    id: str = Field(pattern=ID_PATTERN)
    title: Text
    detail: Text | None = None
    commands: list[Command] = []
    when: list[Condition] = []


class Variant(Entry):
    """Extra knowledge for an alarm in a context (third party, pay notification).

    ``escalation`` and ``contact_platform``, when given, replace the type's own
    in an alarm reply: advice for ordinary pushes can be wrong for a payment.
    """

    summary: Text
    steps: list[Step] = []
    escalation: Text | None = None
    contact_platform: Text | None = None


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
    events: dict[str, Row] = field(default_factory=dict)

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


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a knowledge base is built.

    Loading a big knowledge base allocates hundreds of thousands of objects that
    all live on, and each automatic collection walks every live object: with a
    1,000-entry base that was over half of a reload's time. Reference counting
    still frees what is dropped; the collector runs again afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# NOTE: cached: a reload's search index normalises the same phrases again.
@functools.lru_cache(maxsize=65536)
def normalize(text: str) -> str:
    """Fold width and case and drop spacing and punctuation, for phrase matching."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


# ---------------------------------------------------------------- loading

# The values each finding's wording may use, as ``f.<name>``; the detectors in
# ``diagnosis.py``, the probe (``probe.py``) and the host check (``host.py``)
# fill exactly these.
FINDING_VARIABLES: dict[str, tuple[str, ...]] = {
    "quoted_success": ("content", "length"),
    "success_padded": ("content", "length"),
    "success_in_text_reply": ("msg_type",),
    "reply_not_swapped": ("to_user", "from_user"),
    "echo_request": (),
    "empty_text_content": (),
    "createtime_ms": ("create_time",),
    "malformed_xml": ("error",),
    "html_page": ("title",),
    "error_text": ("snippet",),
    "json_body": ("snippet",),
    "network_error": (),
    "http_not_found": ("code",),
    "http_method": ("code",),
    "http_forbidden": ("code",),
    "http_client_error": ("code",),
    "http_server_error": ("code",),
    "http_redirect": ("code",),
    "pay_empty_ack": (),
    "pay_bad_ack": ("snippet",),
    "decrypt_fail": (),
    "third_party_platform": ("platform",),
    "outer_ip": ("outer_ip",),
    "private_ip": ("ip",),
    "url_bad_port": ("port", "url"),
    "ticket_reply": ("snippet",),
    # What the probe saw: the first finding of a probe is what the URL did.
    "probe_answered_success": (),
    "probe_answered_empty": (),
    "probe_whitespace_body": ("length",),
    "probe_answered_reply": ("msg_type",),
    "probe_echoed_echostr": (),
    "probe_bom": ("length",),
    "probe_success_case": ("content",),
    "probe_unexpected_body": ("snippet",),
    "probe_http_status": ("code",),
    "probe_xml_dtd": (),
    "probe_xml_root": ("root",),
    "probe_plain_in_safe": (),
    "probe_encrypted_in_plain": (),
    "probe_encrypt_fields": ("missing",),
    "probe_undecryptable": ("reason", "appid"),
    "probe_msg_signature": (),
    "probe_malformed_inner": ("error",),
    "probe_reply_to": ("to_user", "openid"),
    "probe_reply_from": ("from_user", "account_id"),
    "probe_reply_type": ("msg_type", "types"),
    "probe_echostr_padded": ("length", "expected"),
    "probe_echostr_missing": (),
    "probe_request_timeout": ("limit",),
    "probe_connect_timeout": ("limit",),
    "probe_connection_refused": (),
    "probe_tls_failed": ("error",),
    "probe_unreachable": ("error",),
    "probe_connect_failed": ("error",),
    "probe_dns_failure": ("host", "resolver", "reason", "error"),
    "probe_dns_slow": ("host", "resolver", "limit"),
    "probe_public_dns_unreachable": ("resolver", "system"),
    "probe_dns_mismatch": (
        "resolver",
        "addresses",
        "public_resolver",
        "public_addresses",
    ),
    "probe_body_truncated": ("limit",),
    # What stands out on the bot's host (``/host``).
    "host_load_high": ("load", "cores"),
    "host_memory_low": ("percent", "swap_used"),
    "host_files_system": ("used", "maximum"),
    "host_files_process": ("name", "pid", "open_files", "limit"),
    "host_nofile_small": ("soft", "guide"),
    "host_syn_recv": ("count",),
    "host_close_wait": ("count",),
    "host_time_wait": ("count",),
}
# The findings the probe and the host check give where there is no alarm: their
# wording may not use ``alarm``. Those shared with the error-sample detectors
# are listed; every ``probe_*`` and ``host_*`` finding counts too.
SHARED_WITH_PROBE = frozenset(
    {
        "quoted_success",
        "success_padded",
        "reply_not_swapped",
        "echo_request",
        "malformed_xml",
        "html_page",
        "json_body",
        "error_text",
        "network_error",
        "http_not_found",
        "http_method",
        "http_forbidden",
        "http_client_error",
        "http_server_error",
        "http_redirect",
        "url_bad_port",
    }
)


def is_alarmless(finding_id: str) -> bool:
    """True when ``finding_id`` is also shown without an alarm (probe, host)."""
    return finding_id in SHARED_WITH_PROBE or finding_id.startswith(("probe_", "host_"))


COMMAND_PLACEHOLDERS = frozenset({"domain", "ip", "url", "port", "stamp", "openid"})
_EMPTY = object()
# libyaml's parser when PyYAML was built with it (the wheels are): ten times faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Problems:
    """Collects every problem found while loading, each with file and line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.items: list[str] = []
        self.broken: set[Path] = set()

    def add(self, path: Path, line: int | None, message: str) -> None:
        """Record ``message`` about ``path`` (at ``line`` when known)."""
        where = self.where(path)
        self.items.append(
            f"{where}:{line}: {message}" if line else f"{where}: {message}"
        )

    def where(self, path: Path) -> str:
        """Name ``path`` from the knowledge directory, e.g. ``knowledge/faq.yaml``."""
        try:
            return str(Path(self.root.name) / path.relative_to(self.root))
        except ValueError:
            return str(path)


def _read_yaml(path: Path, problems: Problems) -> tuple[object, yaml.Node | None]:
    text = _read_text(path, problems)
    return (None, None) if text is None else _parse_yaml(text, path, problems)


def _read_text(path: Path, problems: Problems) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, None, f"cannot read file: {exc}")
        return None


def _parse_yaml(
    text: str, path: Path, problems: Problems
) -> tuple[object, yaml.Node | None]:
    try:
        node, data, found = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        problems.add(path, line, f"invalid YAML: {reason}")
        return None, None
    for line, message in found:
        problems.add(path, line, message)
    if found:
        return None, None
    return (_EMPTY if data is None else data), node


def load_yaml(text: str) -> tuple[yaml.Node | None, object, list[tuple[int, str]]]:
    """Parse ``text`` once into its node tree and data, refusing what YAML hides.

    Returns the node (for line numbers), the data, and ``(line, problem)`` for
    each repeated key or alias; when there are problems the data is not built.
    Raises ``yaml.YAMLError`` when ``text`` is not YAML at all.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        found = sorted(structure_problems(node))  # in the order of the text
        if found or node is None:
            return node, None, found
        return node, loader.construct_document(node), []
    finally:
        loader.dispose()


def structure_problems(node: yaml.Node | None) -> Iterator[tuple[int, str]]:
    """Yield ``(line, problem)`` for each repeated key and each YAML alias.

    YAML keeps the last of two equal keys silently, so an edit would vanish.
    An alias (``*name``) shares its anchor's node: a few lines of them can
    stand for billions of values (the "billion laughs"), and a knowledge entry
    has no need of them. The walk visits each node once, so it stays linear in
    the text however the aliases nest.
    """
    seen: set[int] = set()
    aliased: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if id(current) in seen:
            if id(current) not in aliased:
                aliased.add(id(current))
                yield current.start_mark.line + 1, _ALIAS_PROBLEM
            continue
        seen.add(id(current))
        children: list[yaml.Node] = []
        if isinstance(current, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        yield key.start_mark.line + 1, f"duplicate key {key.value!r}"
                    keys.add(key.value)
                else:
                    children.append(key)
                children.append(value)
        elif isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        stack += reversed(children)


_ALIAS_PROBLEM = (
    "YAML anchors and aliases (&name, *name) are not allowed here: write the value out"
)


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Follow a key path through the YAML node tree to its line number."""
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


def format_loc(loc: tuple[int | str, ...]) -> str:
    """Write a key path as ``steps[2].commands[0].run``."""
    out = ""
    for part in loc:
        out += (
            f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        )
    return out or "(top)"


class _ValidCache:
    """The last clean validations, by model and file text.

    A reload re-reads every file but parses and validates only those whose text
    changed. Entries are immutable (frozen models, node trees nobody changes), so
    one serves every directory holding the same text, like the editor's copies.
    A file's older version (by file name) is dropped when a new one is cached:
    keeping every version of a big file keeps its node trees alive, and the
    garbage collector walks them all. Reloads run in a worker thread: the lock.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.items: OrderedDict[tuple[type[BaseModel], str], _Valid] = OrderedDict()
        self.texts: dict[tuple[type[BaseModel], str], str] = {}
        self.lock = threading.Lock()

    def get(self, model: type[M], text: str) -> tuple[M, yaml.Node | None] | None:
        with self.lock:
            found = self.items.get((model, text))
            if found is not None:
                self.items.move_to_end((model, text))
        return found  # type: ignore[return-value]

    def put(
        self, model: type[M], path: Path, text: str, value: M, node: yaml.Node | None
    ) -> None:
        with self.lock:
            old = self.texts.get((model, path.name))
            if old is not None and old != text:
                self.items.pop((model, old), None)
            if len(self.texts) > 16 * self.size:
                self.texts.clear()
            self.texts[(model, path.name)] = text
            self.items[(model, text)] = (value, node)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_Valid = tuple[BaseModel, "yaml.Node | None"]
_VALID = _ValidCache()


def _validate(
    model: type[M], path: Path, problems: Problems
) -> tuple[M | None, yaml.Node | None]:
    text = _read_text(path, problems)
    if text is None:
        problems.broken.add(path)
        return None, None
    cached = _VALID.get(model, text)
    if cached is not None:
        return cached
    data, node = _parse_yaml(text, path, problems)
    if data is None:
        problems.broken.add(path)
        return None, None
    if data is _EMPTY:
        problems.add(path, None, "the file is empty")
        problems.broken.add(path)
        return None, None
    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        problems.broken.add(path)
        for error in exc.errors():
            loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
            problems.add(path, line_of(node, loc), _describe(loc, error))
        return None, node
    _VALID.put(model, path, text, value, node)
    return value, node


def _describe(loc: tuple[int | str, ...], error: Mapping[str, Any]) -> str:
    key = format_loc(loc)
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key {str(loc[-1])!r}"
    if error["type"] == "missing":
        return f"{key}: required key missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    shown = (
        ""
        if isinstance(value, dict | list) or repr(value) in message
        else f" (got {value!r})"
    )
    return f"{key}: {message[0].lower()}{message[1:]}{shown}"


def _check_row_names(
    table: Table, path: Path, node: yaml.Node | None, problems: Problems
) -> None:
    """A key or alias names one row: a second row of the same name is never found.

    Names are compared as written: names that differ only in case or spacing
    may be meant (push_events has the event LOCATION and the message location,
    and says which one a lookup finds).
    """
    owner: dict[str, str] = {}
    for index, row in enumerate(table.rows):
        for name in dict.fromkeys(n.strip() for n in (row.key, *row.aliases)):
            if name and name in owner:
                line = line_of(node, ("rows", index, "key"))
                problems.add(
                    path,
                    line,
                    f"rows[{index}]: {row.key!r} names the same thing as row "
                    f"{owner[name]!r}, which is found first",
                )
            owner.setdefault(name, row.key)


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
    problems = Problems(root)
    if not root.is_dir():
        raise KnowledgeError([f"{root}: knowledge directory not found"])

    alarms = _load_alarms(root, problems)
    faq: dict[str, FaqEntry] = {}
    faq_path = root / "faq.yaml"
    faq_file, faq_node = _validate(FaqFile, faq_path, problems)
    for index, item in enumerate(faq_file.faq if faq_file else []):
        if item.id in faq:
            line = line_of(faq_node, ("faq", index, "id"))
            problems.add(faq_path, line, f"faq[{index}].id: duplicate id {item.id!r}")
        faq[item.id] = item
        _check_steps(item.steps, ("faq", index, "steps"), faq_path, faq_node, problems)

    tables: dict[str, Table] = {}
    for path in sorted((root / "reference").glob("*.yaml")):
        table, node = _validate(Table, path, problems)
        if table is None:
            continue
        if table.id in tables:
            problems.add(path, 1, f"id: duplicate reference table {table.id!r}")
        tables[table.id] = table
        _check_row_names(table, path, node, problems)

    findings = _load_findings(root / "findings.yaml", problems)
    templates = _load_templates(root, problems)
    knowledge = Knowledge(
        root,
        alarms,
        faq,
        tables,
        findings,
        templates,
        TypeMatcher(alarms),
        _event_index(tables.get("push_events")),
    )
    if not problems.items:
        # NOTE: only on an otherwise clean load: an entry that failed to load
        # would make every link to it an error too and bury the real one.
        _check_completeness(knowledge, problems)
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


def _event_index(table: Table | None) -> dict[str, Row]:
    """Push event names by normalised key and alias; the first row wins."""
    index: dict[str, Row] = {}
    for row in table.rows if table else []:
        for name in (row.key, *row.aliases):
            index.setdefault(normalize(name), row)
    return index


def _load_alarms(root: Path, problems: Problems) -> dict[str, AlarmType]:
    alarms: dict[str, AlarmType] = {}
    for path in sorted((root / "alarms").glob("*.yaml")):
        entry, node = _validate(AlarmType, path, problems)
        if entry is None:
            continue
        line = line_of(node, ("id",))
        if entry.id != path.stem:
            message = f"id: {entry.id!r} does not match the file name {path.name!r}"
            problems.add(path, line, message)
            continue
        if entry.id in alarms:
            problems.add(path, line, f"id: duplicate alarm type {entry.id!r}")
            continue
        alarms[entry.id] = entry
        _check_steps(entry.steps, ("steps",), path, node, problems)
        for name, variant in entry.variants.items():
            where = ("variants", name, "steps")
            _check_steps(variant.steps, where, path, node, problems)
    return alarms


def _check_steps(
    steps: list[Step],
    where: tuple[int | str, ...],
    path: Path,
    node: yaml.Node | None,
    problems: Problems,
) -> None:
    """Commands may use only the placeholders the bot fills."""
    for i, step in enumerate(steps):
        for j, command in enumerate(step.commands):
            loc = (*where, i, "commands", j, "run")
            messages = _template_problems(command.run, COMMAND_PLACEHOLDERS, set())
            if "{{ url }}" in command.run and "'{{ url }}'" not in command.run:
                # A URL may hold & or ; and must reach the shell as one word.
                messages.append("{{ url }} must stand in single quotes: '{{ url }}'")
            for message in messages:
                problems.add(path, line_of(node, loc), f"{format_loc(loc)}: {message}")


def _load_findings(path: Path, problems: Problems) -> dict[str, FindingText]:
    findings: dict[str, FindingText] = {}
    findings_file, node = _validate(FindingsFile, path, problems)
    for index, finding in enumerate(findings_file.findings if findings_file else []):
        loc: tuple[int | str, ...] = ("findings", index, "id")
        if finding.id in findings:
            message = f"findings[{index}].id: duplicate id {finding.id!r}"
            problems.add(path, line_of(node, loc), message)
        if finding.id not in FINDING_VARIABLES:
            known = ", ".join(FINDING_VARIABLES)
            message = (
                f"findings[{index}].id: unknown finding {finding.id!r} (known: {known})"
            )
            problems.add(path, line_of(node, loc), message)
            continue
        findings[finding.id] = finding
        allowed = set(FINDING_VARIABLES[finding.id])
        alarmless = is_alarmless(finding.id)
        names = {"f"} if alarmless else {"f", "alarm"}
        for field_name in ("text", "fix"):
            for lang in LANGS:
                source = getattr(getattr(finding, field_name), lang)
                loc = ("findings", index, field_name, lang)
                for message in _template_problems(source, names, allowed):
                    if alarmless and message == _ALARM_PLACEHOLDER:
                        message = _ALARMLESS_MESSAGE
                    problems.add(
                        path, line_of(node, loc), f"{format_loc(loc)}: {message}"
                    )
    return findings


_ALARM_PLACEHOLDER = 'unknown placeholder "{{ alarm }}"'
_ALARMLESS_MESSAGE = (
    '"{{ alarm }}" is not available here: the probe and /host show this '
    "finding without an alarm"
)


def _template_problems(
    source: str, names: set[str] | frozenset[str], f_keys: set[str]
) -> list[str]:
    """Syntax errors and unknown variables in a template string from the YAML."""
    return list(_source_problems(source, frozenset(names), frozenset(f_keys)))


# NOTE: parsing the same strings again was most of a reload's load time; a
# template string's problems depend on nothing but the arguments.
@functools.lru_cache(maxsize=8192)
def _source_problems(
    source: str, names: frozenset[str], f_keys: frozenset[str]
) -> tuple[str, ...]:
    try:
        tree = _PARSER.parse(source)
    except TemplateSyntaxError as exc:
        return (f"template syntax: {exc.message}",)
    out = [
        f'unknown placeholder "{{{{ {name} }}}}"'
        for name in sorted(meta.find_undeclared_variables(tree) - set(names))
    ]
    for node in tree.find_all(nodes.Getattr):
        is_f = isinstance(node.node, nodes.Name) and node.node.name == "f"
        if is_f and node.attr not in f_keys:
            allowed = ", ".join(sorted(f_keys)) or "none"
            out.append(f'unknown value "f.{node.attr}" (this finding has: {allowed})')
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _syntax_error(source: str) -> tuple[int, str] | None:
    """The line and message of a template's syntax error, if it has one."""
    try:
        _PARSER.parse(source)
    except TemplateSyntaxError as exc:
        return exc.lineno, str(exc.message)
    return None


def _load_templates(root: Path, problems: Problems) -> dict[str, str]:
    templates: dict[str, str] = {}
    for path in sorted((root / "templates").glob("*/*.j2")):
        try:
            source = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(path, None, f"cannot read template: {exc}")
            continue
        error = _syntax_error(source)
        if error is not None:
            problems.add(path, error[0], f"template syntax: {error[1]}")
            continue
        templates[f"{path.parent.name}/{path.name}"] = source
    return templates


def _check_completeness(knowledge: Knowledge, problems: Problems) -> None:
    root = knowledge.root
    missing = [t for t in ALARM_TYPES if t not in knowledge.alarms]
    if missing:
        problems.add(
            root / "alarms", None, f"missing alarm types: {', '.join(missing)}"
        )
    absent = [f for f in FINDING_VARIABLES if f not in knowledge.findings]
    if absent:
        message = f"findings: no wording for {', '.join(absent)}"
        problems.add(root / "findings.yaml", None, message)
    known = {entry_id for _, entry_id in knowledge.ids()}
    sources: list[tuple[Path | str, tuple[int | str, ...], list[str]]] = [
        (root / "alarms" / f"{a.id}.yaml", (), a.related)
        for a in knowledge.alarms.values()
    ]
    sources += [
        (root / "faq.yaml", ("faq", index), f.related)
        for index, f in enumerate(knowledge.faq.values())
    ]
    # NOTE: a table's file is named freely; it is looked up only on a problem.
    sources += [(t.id, (), t.related) for t in knowledge.tables.values()]
    for source, prefix, related in sources:
        for index, target in enumerate(related):
            if target in known:
                continue
            path = source if isinstance(source, Path) else table_path(root, source)
            loc = (*prefix, "related", index)
            node = _read_yaml(path, Problems(root))[1]
            message = f"{format_loc(loc)}: unknown entry {target!r}"
            problems.add(path, line_of(node, loc), message)


def table_path(root: Path, table_id: str) -> Path:
    """The reference file that holds table ``table_id``."""
    for path in sorted((root / "reference").glob("*.yaml")):
        data = _read_yaml(path, Problems(root))[0]
        if isinstance(data, dict) and data.get("id") == table_id:
            return path
    return root / "reference" / f"{table_id}.yaml"


_PARSER = SandboxedEnvironment()


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
        # The platform words its alarms in a handful of sentences, so a storm
        # repeats the same few contents: remember each verdict (bounded).
        self._seen: dict[str, Classification] = {}

    def classify(self, content: str) -> Classification:
        """Return the best type for ``content``, or ``unknown`` with the nearest."""
        verdict = self._seen.get(content)
        if verdict is None:
            verdict = self._classify(content)
            if len(self._seen) >= 2048:
                self._seen.clear()
            self._seen[content] = verdict
        return verdict

    def _classify(self, content: str) -> Classification:
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
