"""This module edits the knowledge base from the chat: propose, review, confirm, undo.

A change is the new YAML of one entry, sent with ``kb set <id>`` (admins) or
``kb suggest <id>`` (members). The editor applies it to a copy of the knowledge,
validates the whole copy exactly as a reload would, and keeps it as a proposal
with a short diff and a change id; ``kb confirm <change id>`` writes it.

Writes replace the file atomically (a temporary file, then ``os.replace``). An
alarm type or reference table is a file of its own and is written as the author
gave it, comments included; an entry of ``faq.yaml`` is spliced in by its lines,
so every other byte of that file stays as it was.

Every confirmed change is journaled in ``changes.jsonl`` in the history directory,
with a copy of the file before and after it, so ``kb undo`` can put the old text
back. When the knowledge directory is a git repository of its own, each change is
also a commit authored by the person who proposed it.

Proposals waiting for review are kept in ``pending.json`` beside the journal, so
a restart does not drop them before their 24 hours are up.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import textwrap
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml

from bot.alarm import PLATFORM_TZ
from bot.errors import KnowledgeEditError, KnowledgeError
from bot.knowledge import ALARM_TYPES, ID_PATTERN, Knowledge, load_yaml

if TYPE_CHECKING:
    from bot.commands import CommandContext
    from bot.kbcheck import ReplyLimits
    from bot.settings import Settings

logger = logging.getLogger(__name__)

EntryKind = Literal["alarm", "faq", "reference"]
# A proposal nobody confirms is dropped after this long, and at most this many wait.
PROPOSAL_TTL = timedelta(hours=24)
MAX_PENDING = 50
DIFF_LINES = 30
JOURNAL = "changes.jsonl"
PENDING = "pending.json"
# WeChat turns pasted indentation into these; YAML only accepts plain spaces.
_ODD_SPACES = str.maketrans({"\u00a0": " ", "\u2005": " ", "\u3000": " "})
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ID_RE = re.compile(ID_PATTERN)


class AuditLog(Protocol):
    """Where admin actions are recorded; ``bot.store.AlarmStore`` is one."""

    def audit(
        self, at: datetime, room: str | None, actor: str, action: str, **detail: object
    ) -> None:
        """Record that ``actor`` did ``action`` at ``at``."""
        ...


@dataclass
class MemoryAuditLog:
    """An audit log kept in memory, for tests and a bot without a store."""

    rows: list[dict[str, object]] = field(default_factory=list)

    def audit(
        self, at: datetime, room: str | None, actor: str, action: str, **detail: object
    ) -> None:
        """Record one action."""
        self.rows.append(
            {"at": at, "room": room, "actor": actor, "action": action, **detail}
        )


@dataclass(frozen=True, slots=True)
class Author:
    """Who asks for a change: display name, contact id and the room asked in."""

    name: str
    contact_id: str = ""
    room: str | None = None


# ------------------------------------------------------------- entry spans


@dataclass(frozen=True, slots=True)
class EntrySpan:
    """Where one entry's YAML sits: a whole file, or a list item in a shared file.

    ``start`` and ``end`` are character offsets of the entry's lines in ``text``;
    ``indent`` is the column of the item's ``-``, or ``-1`` for a whole file.
    """

    kind: EntryKind
    entry_id: str
    path: Path
    text: str
    start: int
    end: int
    indent: int = -1

    @property
    def is_whole_file(self) -> bool:
        """Whether the entry is its file."""
        return self.indent < 0

    def entry_text(self) -> str:
        """The entry's YAML as an editor writes it: no list dash, no indentation."""
        region = self.text[self.start : self.end]
        if self.is_whole_file:
            return region
        cut = self.indent + 2
        lines = region.split("\n")
        out = [lines[0][cut:]]
        for line in lines[1:]:
            spaces = len(line) - len(line.lstrip(" "))
            out.append(line[min(cut, spaces) :])
        return "\n".join(out)

    def replaced(self, entry_yaml: str) -> str:
        """The file's text with this entry replaced by ``entry_yaml``."""
        body = normalize_yaml(entry_yaml)
        if self.is_whole_file:
            return body
        lines = body.split("\n")[:-1]
        head = " " * self.indent
        out: list[str] = []
        # Comments above the entry go above its dash, where YAML keeps them.
        while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
            out.append(head + lines.pop(0).strip() if lines[0].strip() else "")
        pad = head + "  "
        out.append(f"{head}- {lines[0]}")
        out += [pad + line if line.strip() else "" for line in lines[1:]]
        item = "\n".join(out) + "\n"
        before = self.text[: self.start]
        if self.start == len(self.text) and before and not before.endswith("\n\n"):
            item = ("\n" if before.endswith("\n") else "\n\n") + item
        return before + item + self.text[self.end :]


def normalize_yaml(text: str) -> str:
    """Tidy pasted YAML: plain spaces, no common indentation, one final newline."""
    lines = []
    for line in text.split("\n"):
        stripped = line.lstrip(" \t\u00a0\u2005\u3000")
        indent = line[: len(line) - len(stripped)].translate(_ODD_SPACES)
        lines.append((indent + stripped).rstrip())
    body = textwrap.dedent("\n".join(lines)).strip("\n")
    if body.startswith("- "):
        # Pasted as a list item ("- id: …"): the dash is the file's business.
        body = textwrap.dedent("  " + body[2:])
    return body + "\n"


def locate_entry(root: Path, entry_id: str) -> EntrySpan | None:
    """Find the entry ``entry_id``: an alarm type, an FAQ entry or a table."""
    if not is_entry_id(entry_id):
        return None
    path = root / "alarms" / f"{entry_id}.yaml"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        return EntrySpan("alarm", entry_id, path, text, 0, len(text))
    faq = root / "faq.yaml"
    if faq.is_file():
        span = _faq_span(faq, entry_id)
        if span is not None:
            return span
    for path in sorted((root / "reference").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        data = _safe_load(text)
        if isinstance(data, dict) and data.get("id") == entry_id:
            return EntrySpan("reference", entry_id, path, text, 0, len(text))
    return None


def new_entry_span(root: Path, entry_id: str, data: dict[str, object]) -> EntrySpan:
    """Where a new entry goes: its own file, or the end of ``faq.yaml``.

    Raises:
        KnowledgeEditError: the YAML looks like no kind of entry.
    """
    if entry_id in ALARM_TYPES:
        path = root / "alarms" / f"{entry_id}.yaml"
        return EntrySpan("alarm", entry_id, path, "", 0, 0)
    if "rows" in data:
        path = root / "reference" / f"{entry_id}.yaml"
        return EntrySpan("reference", entry_id, path, "", 0, 0)
    if "question" in data:
        faq = root / "faq.yaml"
        text = faq.read_text(encoding="utf-8")
        indent = _faq_indent(text)
        return EntrySpan("faq", entry_id, faq, text, len(text), len(text), indent)
    raise KnowledgeEditError("unknown_kind", entry_id=entry_id)


def is_entry_id(entry_id: str) -> bool:
    """Whether ``entry_id`` has the shape of an id (and so names no other path)."""
    return _ID_RE.fullmatch(entry_id) is not None


def _safe_load(text: str) -> object:
    try:
        return load_yaml(text)[1]
    except yaml.YAMLError:
        return None


def _faq_sequence(text: str) -> yaml.SequenceNode | None:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if key.value == "faq" and isinstance(value, yaml.SequenceNode):
            return value
    return None


def _faq_indent(text: str) -> int:
    sequence = _faq_sequence(text)
    if sequence is None or not sequence.value:
        return 2
    return _dash(text, sequence.value[0].start_mark.index)[1]


def _faq_span(path: Path, entry_id: str) -> EntrySpan | None:
    text = path.read_text(encoding="utf-8")
    sequence = _faq_sequence(text)
    if sequence is None:
        return None
    items = sequence.value
    for index, item in enumerate(items):
        if not isinstance(item, yaml.MappingNode):
            continue
        ids = [v.value for k, v in item.value if k.value == "id"]
        if ids != [entry_id]:
            continue
        start, indent = _dash(text, item.start_mark.index)
        if index + 1 < len(items):
            end = _dash(text, items[index + 1].start_mark.index)[0]
        else:
            end = _line_start(text, sequence.end_mark.index)
        end = _trim_tail(text, start, end, indent)
        return EntrySpan("faq", entry_id, path, text, start, end, indent)
    return None


def _dash(text: str, index: int) -> tuple[int, int]:
    """The start of the line holding an item's ``-``, and the dash's column."""
    pos = index - 1
    while pos >= 0 and text[pos] in " \n":
        pos -= 1
    if pos < 0 or text[pos] != "-":
        raise KnowledgeEditError("layout")
    line_start = text.rfind("\n", 0, pos) + 1
    return line_start, pos - line_start


def _line_start(text: str, index: int) -> int:
    if index >= len(text):
        return len(text)
    return text.rfind("\n", 0, index) + 1


def _trim_tail(text: str, start: int, end: int, indent: int) -> int:
    """Leave trailing blank lines and section comments to what follows."""
    lines = text[start:end].split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    while len(lines) > 1:
        last = lines[-1]
        spaces = len(last) - len(last.lstrip(" "))
        if last.strip() and not (last.lstrip().startswith("#") and spaces <= indent):
            break
        lines.pop()
    return start + sum(len(line) + 1 for line in lines)


# -------------------------------------------------------- proposals, changes


@dataclass(frozen=True, slots=True)
class Proposal:
    """A validated change waiting for an admin's ``kb confirm``."""

    change_id: str
    entry_id: str
    kind: EntryKind
    path: str
    base_text: str
    new_text: str
    author: Author
    created_at: datetime
    is_suggestion: bool
    is_new: bool
    diff: tuple[str, ...]
    diff_more: int

    def to_json(self) -> dict[str, object]:
        """The proposal as ``pending.json`` keeps it."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Proposal:
        """Read a proposal back from ``pending.json``."""
        values = dict(data)
        values["author"] = Author(**values["author"])
        values["created_at"] = datetime.fromisoformat(values["created_at"])
        values["diff"] = tuple(values["diff"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One confirmed change (or undo) as the journal keeps it."""

    change_id: str
    action: Literal["set", "undo"]
    entry_id: str
    path: str
    author: str
    confirmed_by: str
    at: datetime
    root: str
    is_suggestion: bool = False
    reverts: str | None = None
    commit: str | None = None
    before_sha: str | None = None
    after_sha: str | None = None

    def to_json(self) -> dict[str, object]:
        """The journal line."""
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ChangeRecord:
        """Read one journal line back."""
        values = dict(data)
        values["at"] = datetime.fromisoformat(str(values["at"]))
        return cls(**values)  # type: ignore[arg-type]


def short_diff(
    before: str, after: str, path: str, limit: int = DIFF_LINES
) -> tuple[tuple[str, ...], int]:
    """A unified diff with one line of context, cut to ``limit`` lines.

    Returns:
        The lines shown and how many more were left out.
    """
    lines = list(
        difflib.unified_diff(
            before.splitlines(),
            after.splitlines(),
            f"a/{path}",
            f"b/{path}",
            n=1,
            lineterm="",
        )
    )[2:]
    return tuple(lines[:limit]), max(len(lines) - limit, 0)


def _sha(text: str | None) -> str | None:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text is not None else None


# ------------------------------------------------------------------ editor


class KnowledgeEditor:
    """Proposes, validates, writes, journals and undoes knowledge changes.

    Args:
        root: the knowledge directory the bot serves.
        history_dir: where the journal and the before/after copies are kept.
        loader: validates a knowledge directory as a reload would.
        audit: where every change is recorded, e.g. the bot's store.
        clock: the time source.
    """

    def __init__(
        self,
        root: Path,
        history_dir: Path,
        *,
        loader: Callable[[Path], Knowledge] | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.history_dir = history_dir
        self.audit_log = audit
        self._loader = loader or _default_loader
        self._clock = clock or (lambda: datetime.now(PLATFORM_TZ))
        self._lock = threading.RLock()
        self._pending: dict[str, Proposal] = self._load_pending()
        self._expire()  # what expired while the bot was down

    @property
    def is_git(self) -> bool:
        """Whether the knowledge directory is a git repository of its own."""
        return git_toplevel(self.root) == self.root

    def show(self, entry_id: str) -> EntrySpan:
        """Return where ``entry_id`` is and its YAML.

        Raises:
            KnowledgeEditError: there is no such entry.
        """
        span = locate_entry(self.root, entry_id)
        if span is None:
            raise KnowledgeEditError(
                "unknown_entry", entry_id=entry_id, suggestions=self.nearest(entry_id)
            )
        return span

    def nearest(self, entry_id: str) -> list[str]:
        """The entry ids closest to a mistyped one."""
        ids = [p.stem for p in (self.root / "alarms").glob("*.yaml")]
        sequence = _faq_sequence(_read(self.root / "faq.yaml") or "")
        for item in sequence.value if sequence else []:
            if isinstance(item, yaml.MappingNode):
                ids += [v.value for k, v in item.value if k.value == "id"]
        for path in (self.root / "reference").glob("*.yaml"):
            data = _safe_load(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                ids.append(data["id"])
        return difflib.get_close_matches(entry_id, ids, n=3, cutoff=0.5)

    def propose(
        self, entry_id: str, entry_yaml: str, author: Author, *, is_suggestion: bool
    ) -> Proposal:
        """Validate a new version of ``entry_id`` and keep it for review.

        Raises:
            KnowledgeEditError: the YAML is missing or invalid, names another id,
                changes nothing, or the knowledge base would not load with it.
        """
        data = _entry_data(entry_id, entry_yaml)
        with self._lock:
            span = locate_entry(self.root, entry_id)
            is_new = span is None
            if span is None:
                span = new_entry_span(self.root, entry_id, data)
            new_text = span.replaced(entry_yaml)
            if new_text == span.text:
                raise KnowledgeEditError("no_change", entry_id=entry_id)
            rel = self._rel(span.path)
            self._validate({rel: new_text})
            diff, more = short_diff(span.text, new_text, rel)
            proposal = Proposal(
                change_id=self._new_change_id(),
                entry_id=entry_id,
                kind=span.kind,
                path=rel,
                base_text=span.text,
                new_text=new_text,
                author=author,
                created_at=self._clock(),
                is_suggestion=is_suggestion,
                is_new=is_new,
                diff=diff,
                diff_more=more,
            )
            self._expire(save=False)
            self._pending[proposal.change_id] = proposal
            self._save_pending()
        action = "kb.suggest" if is_suggestion else "kb.propose"
        self._audit(author, action, proposal.change_id, entry=entry_id, path=rel)
        logger.info(
            "kb change proposed change=%s entry=%s by=%s suggestion=%s",
            proposal.change_id,
            entry_id,
            author.name,
            is_suggestion,
        )
        return proposal

    def pending(self) -> list[Proposal]:
        """The proposals waiting for review, oldest first."""
        with self._lock:
            self._expire()
            return sorted(self._pending.values(), key=lambda p: p.created_at)

    def reject(self, change_id: str, by: Author) -> Proposal:
        """Drop a pending proposal.

        Raises:
            KnowledgeEditError: no such pending change.
        """
        with self._lock:
            proposal = self._take(change_id)
        self._audit(by, "kb.reject", change_id, entry=proposal.entry_id)
        logger.info("kb change rejected change=%s by=%s", change_id, by.name)
        return proposal

    def confirm(self, change_id: str, by: Author) -> ChangeRecord:
        """Write a pending proposal, journal it and commit it.

        Raises:
            KnowledgeEditError: no such pending change, the file changed since it
                was proposed, or the knowledge no longer validates with it.
        """
        with self._lock:
            self._expire()
            proposal = self._pending.get(change_id.strip().lower())
            if proposal is None:
                raise KnowledgeEditError("unknown_change", change_id=change_id)
            path = self.root / proposal.path
            current = _read(path) or ""
            if current != proposal.base_text:
                del self._pending[proposal.change_id]
                self._save_pending()
                raise KnowledgeEditError(
                    "stale", change_id=change_id, path=proposal.path
                )
            self._validate({proposal.path: proposal.new_text})
            del self._pending[proposal.change_id]
            self._save_pending()
            before = None if proposal.is_new and proposal.kind != "faq" else current
            record = ChangeRecord(
                change_id=proposal.change_id,
                action="set",
                entry_id=proposal.entry_id,
                path=proposal.path,
                author=proposal.author.name,
                confirmed_by=by.name,
                at=self._clock(),
                root=str(self.root),
                is_suggestion=proposal.is_suggestion,
                before_sha=_sha(before),
                after_sha=_sha(proposal.new_text),
            )
            record = self._apply(record, before, proposal.new_text, proposal.author)
        self._audit(by, "kb.confirm", record.change_id, entry=record.entry_id)
        return record

    def log(self, limit: int = 10) -> list[ChangeRecord]:
        """The latest confirmed changes of this knowledge directory, newest first."""
        return list(reversed(self._journal()))[:limit]

    def undo(self, by: Author) -> ChangeRecord:
        """Put back the file as it was before the latest change not yet undone.

        Raises:
            KnowledgeEditError: nothing to undo, the file was edited since, or the
                knowledge would not validate with the old text.
        """
        with self._lock:
            target = self._last_undoable()
            path = self.root / target.path
            current = _read(path)
            if _sha(current) != target.after_sha:
                raise KnowledgeEditError(
                    "edited_since", change_id=target.change_id, path=target.path
                )
            old = self._backup(target.change_id, "before", target.path)
            self._validate({target.path: old})
            record = ChangeRecord(
                change_id=self._new_change_id(),
                action="undo",
                entry_id=target.entry_id,
                path=target.path,
                author=by.name,
                confirmed_by=by.name,
                at=self._clock(),
                root=str(self.root),
                reverts=target.change_id,
                before_sha=target.after_sha,
                after_sha=_sha(old),
            )
            record = self._apply(record, current, old, by)
        self._audit(by, "kb.undo", record.change_id, reverts=target.change_id)
        return record

    # -------------------------------------------------------------- helpers

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _validate(self, changes: dict[str, str | None]) -> None:
        """Load a copy of the knowledge with ``changes`` applied, as a reload would."""
        with tempfile.TemporaryDirectory(prefix="alarm-bot-kb-") as tmp:
            copy = Path(tmp) / self.root.name
            shutil.copytree(self.root, copy, ignore=shutil.ignore_patterns(".*"))
            for rel, text in changes.items():
                target = copy / rel
                if text is None:
                    target.unlink(missing_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            try:
                self._loader(copy)
            except KnowledgeError as exc:
                raise KnowledgeEditError("invalid", problems=exc.problems) from None

    def _apply(
        self, record: ChangeRecord, before: str | None, after: str | None, who: Author
    ) -> ChangeRecord:
        """Back up, write, commit and journal one change."""
        self._save_backup(record.change_id, "before", record.path, before)
        self._save_backup(record.change_id, "after", record.path, after)
        path = self.root / record.path
        if after is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, after)
        if self.is_git:
            record = replace(record, commit=self._commit(record, who))
        self.history_dir.mkdir(parents=True, exist_ok=True)
        with (self.history_dir / JOURNAL).open("a", encoding="utf-8") as journal:
            journal.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        logger.info(
            "kb change written change=%s action=%s entry=%s path=%s by=%s commit=%s",
            record.change_id,
            record.action,
            record.entry_id,
            record.path,
            record.confirmed_by,
            record.commit or "-",
        )
        return record

    def _save_backup(
        self, change_id: str, side: str, rel: str, text: str | None
    ) -> None:
        if text is None:
            return
        target = self.history_dir / change_id / side / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def _backup(self, change_id: str, side: str, rel: str) -> str | None:
        return _read(self.history_dir / change_id / side / rel)

    def _commit(self, record: ChangeRecord, who: Author) -> str | None:
        verb = "undo" if record.action == "undo" else "set"
        subject = f"kb {verb} {record.entry_id} ({record.change_id})"
        lines = [subject, ""]
        if record.reverts:
            lines.append(f"Reverts: {record.reverts}")
        lines += [
            f"Proposed-by: {record.author}",
            f"Confirmed-by: {record.confirmed_by}",
        ]
        try:
            return git_commit(self.root, record.path, "\n".join(lines), who)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("kb change %s written but not committed: %s", subject, exc)
            return None

    def _journal(self) -> list[ChangeRecord]:
        text = _read(self.history_dir / JOURNAL) or ""
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = ChangeRecord.from_json(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning(
                    "%s:%d: unreadable journal line: %s", JOURNAL, number, exc
                )
                continue
            if record.root == str(self.root):
                records.append(record)
        return records

    def _last_undoable(self) -> ChangeRecord:
        records = self._journal()
        undone = {r.reverts for r in records if r.reverts}
        for record in reversed(records):
            if record.action == "set" and record.change_id not in undone:
                return record
        raise KnowledgeEditError("nothing_to_undo")

    def _take(self, change_id: str) -> Proposal:
        self._expire()
        proposal = self._pending.pop(change_id.strip().lower(), None)
        if proposal is None:
            raise KnowledgeEditError("unknown_change", change_id=change_id)
        self._save_pending()
        return proposal

    def _expire(self, *, save: bool = True) -> None:
        oldest = self._clock() - PROPOSAL_TTL
        before = len(self._pending)
        for change_id, proposal in list(self._pending.items()):
            if proposal.created_at < oldest:
                del self._pending[change_id]
        while len(self._pending) >= MAX_PENDING:
            first = min(self._pending.values(), key=lambda p: p.created_at)
            del self._pending[first.change_id]
        if save and len(self._pending) != before:
            self._save_pending()

    def _load_pending(self) -> dict[str, Proposal]:
        """This directory's proposals kept by an earlier run, expired ones too."""
        try:
            text = _read(self.history_dir / PENDING)
            kept = json.loads(text) if text else {}
            rows = kept.get(str(self.root), []) if isinstance(kept, dict) else []
            proposals = [Proposal.from_json(row) for row in rows]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # Proposals are a convenience: an unreadable file costs them, not the bot.
            logger.warning(
                "%s: unreadable, pending proposals dropped: %s", PENDING, exc
            )
            return {}
        return {p.change_id: p for p in proposals}

    def _save_pending(self) -> None:
        """Write this directory's proposals to ``pending.json``, keeping others'."""
        path = self.history_dir / PENDING
        try:
            kept = json.loads(_read(path) or "{}")
        except (OSError, ValueError):
            kept = {}
        if not isinstance(kept, dict):
            kept = {}
        kept[str(self.root)] = [p.to_json() for p in self._pending.values()]
        try:
            write_atomic(path, json.dumps(kept, ensure_ascii=False, indent=1))
        except OSError as exc:  # in memory they stand; only a restart loses them
            logger.warning("cannot keep pending proposals in %s: %s", path, exc)

    def _new_change_id(self) -> str:
        taken = set(self._pending) | {r.change_id for r in self._journal()}
        while True:
            change_id = secrets.token_hex(2)
            if change_id not in taken:
                return change_id

    def _audit(
        self, who: Author, action: str, change_id: str, **detail: object
    ) -> None:
        if self.audit_log is None:
            return
        try:
            self.audit_log.audit(
                self._clock(), who.room, who.name, action, change=change_id, **detail
            )
        except Exception:  # the change is made; a failed audit must not undo that
            logger.exception("audit failed action=%s change=%s", action, change_id)


def _entry_data(entry_id: str, entry_yaml: str) -> dict[str, object]:
    """Parse the YAML an author sent and check it is the entry it claims to be."""
    if not is_entry_id(entry_id):
        raise KnowledgeEditError("bad_id", entry_id=entry_id)
    if not entry_yaml.strip():
        raise KnowledgeEditError("no_yaml", entry_id=entry_id)
    body = normalize_yaml(entry_yaml)
    try:
        _, data, found = load_yaml(body)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        # WeChat pastes turn indentation into tabs more often than not.
        lines = body.splitlines()
        has_tab = line is not None and "\t" in lines[min(line, len(lines)) - 1]
        raise KnowledgeEditError(
            "bad_yaml", line=line, problem=problem, has_tab=has_tab
        ) from None
    if found:
        line, problem = min(found)
        raise KnowledgeEditError("bad_yaml", line=line, problem=problem, has_tab=False)
    if not isinstance(data, dict):
        raise KnowledgeEditError("not_mapping", entry_id=entry_id)
    if data.get("id") != entry_id:
        raise KnowledgeEditError("id_mismatch", entry_id=entry_id, got=data.get("id"))
    return data


def _default_loader(root: Path) -> Knowledge:
    # NOTE: imported here: kbcheck renders this module's values in its samples.
    from bot.kbcheck import load_checked

    return load_checked(root)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------- git

_GIT_TIMEOUT_S = 30
_EMAIL_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        # The bot commits; the person who proposed the change is the author.
        "GIT_COMMITTER_NAME": "alarm-bot",
        "GIT_COMMITTER_EMAIL": "alarm-bot@localhost",
    }
    return subprocess.run(  # noqa: S603 (fixed git arguments, no shell)
        ["git", "-C", str(root), *args],  # noqa: S607 (git from PATH)
        capture_output=True,
        text=True,
        timeout=_GIT_TIMEOUT_S,
        env=env,
        check=False,
    )


def git_toplevel(root: Path) -> Path | None:
    """The top of the git work tree holding ``root``, if any."""
    try:
        result = _git(root, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return Path(result.stdout.strip()).resolve()


def git_commit(root: Path, rel: str, message: str, author: Author) -> str | None:
    """Commit the file ``rel`` alone, authored by ``author``; return the commit id."""
    name = re.sub(r"[<>\n]", "", author.name).strip() or "unknown"
    email = _EMAIL_UNSAFE.sub("", author.contact_id or author.name) or "unknown"
    who = f"--author={name} <{email}@wechat>"
    steps = (
        ("add", "--all", "--", rel),
        ("commit", "--quiet", who, "-m", message, "--", rel),
    )
    for args in steps:
        result = _git(root, *args)
        if result.returncode != 0:
            raise subprocess.SubprocessError(
                f"git {args[0]} failed: {result.stderr.strip()}"
            )
    head = _git(root, "rev-parse", "--short", "HEAD")
    return head.stdout.strip() or None


def default_history_dir(db_path: Path | None) -> Path:
    """Where versioned backups go: ``kb-history/`` beside the store, else XDG data."""
    if db_path is not None:
        return db_path.parent / "kb-history"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "alarm-bot" / "kb-history"


# ------------------------------------------------------------ chat command

# Subcommand words, English and Chinese, and those only admins may use.
KB_WORDS = {
    "show": "show",
    "查看": "show",
    "set": "set",
    "修改": "set",
    "suggest": "suggest",
    "建议": "suggest",
    "confirm": "confirm",
    "确认": "confirm",
    "reject": "reject",
    "拒绝": "reject",
    "log": "log",
    "记录": "log",
    "undo": "undo",
    "撤销": "undo",
}
KB_ADMIN_ONLY = frozenset({"set", "confirm", "reject", "undo"})


def kb_command(ctx: CommandContext, argument: str) -> str:
    """Show, change and review knowledge entries from the chat.

    ``kb show|log|suggest`` are open to members; ``kb set|confirm|reject|undo``
    are for admins. The YAML of ``set`` and ``suggest`` follows on the next lines.
    """
    head, _, body = argument.partition("\n")
    word, _, rest = head.strip().partition(" ")
    sub = KB_WORDS.get(word.casefold())
    if sub is None:
        return ctx.renderer.render("kb_error", code="usage", details={})
    if sub in KB_ADMIN_ONLY and not ctx.is_admin:
        logger.info("refused command=kb %s sender=%s", sub, ctx.sender)
        return ctx.renderer.render(
            "denied", command=f"kb {sub}", admins=list(ctx.admins)
        )
    who = Author(ctx.sender, ctx.sender_id, ctx.room)
    target = rest.strip().split(" ")[0] if rest.strip() else ""
    try:
        return _run_kb(ctx, sub, target, body, who)
    except KnowledgeEditError as exc:
        # The wording names the command asked (set or suggest), not a fixed one.
        details = {"command": sub, **exc.details}
        return ctx.renderer.render("kb_error", code=exc.code, details=details)


def _run_kb(ctx: CommandContext, sub: str, target: str, body: str, who: Author) -> str:
    render = ctx.renderer.render
    if sub in ("show", "set", "suggest", "confirm", "reject") and not target:
        raise KnowledgeEditError("usage")
    if sub == "show":
        span = locate_entry(ctx.knowledge.root, target)
        if span is None:
            ids = [entry_id for _, entry_id in ctx.knowledge.ids()]
            close = difflib.get_close_matches(target, ids, n=3, cutoff=0.5)
            raise KnowledgeEditError(
                "unknown_entry", entry_id=target, suggestions=close
            )
        rel = span.path.relative_to(ctx.knowledge.root).as_posix()
        return render("kb_show", entry_id=target, path=rel, text=span.entry_text())
    editor = ctx.editor
    if editor is None:
        raise KnowledgeEditError("not_enabled")
    if sub in ("set", "suggest"):
        proposal = editor.propose(target, body, who, is_suggestion=sub == "suggest")
        return render("kb_proposed", proposal=proposal)
    if sub == "confirm":
        record = editor.confirm(target, who)
        return render("kb_confirmed", record=record, reload=ctx.reload())
    if sub == "reject":
        return render("kb_rejected", proposal=editor.reject(target, who), by=who.name)
    if sub == "undo":
        record = editor.undo(who)
        return render("kb_undone", record=record, reload=ctx.reload())
    return render("kb_log", changes=editor.log(), pending=editor.pending())


# ----------------------------------------------------------------- wiring


def reload_limits(settings: Settings) -> ReplyLimits:
    """The reply-size limits a reload checks, from the settings."""
    from bot.kbcheck import ReplyLimits

    return ReplyLimits(
        alarm=settings.reply_limit_alarm,
        explain=settings.reply_limit_explain,
        message_bytes=settings.outbox.message_bytes,
    )


def reload_loader(root: Path, settings: Settings) -> Callable[[], Knowledge]:
    """The dispatcher's ``loader``: the whole check, with the settings' limits."""
    from bot.kbcheck import load_checked

    limits = reload_limits(settings)
    return lambda: load_checked(root, limits)


def editor_for(
    root: Path, settings: Settings, audit: AuditLog | None = None
) -> KnowledgeEditor:
    """The chat editor of ``root``, validating as the reloads do.

    Args:
        root: the knowledge directory the bot serves.
        settings: where the history goes and the reply-size limits.
        audit: where changes are recorded, e.g. the bot's ``AlarmStore``.
    """
    from bot.kbcheck import load_checked

    history = settings.kb_history_dir or default_history_dir(settings.db_path)
    limits = reload_limits(settings)
    return KnowledgeEditor(
        root, history, loader=lambda path: load_checked(path, limits), audit=audit
    )
