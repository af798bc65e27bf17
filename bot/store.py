"""This module keeps the bot's history in SQLite: the only module that touches it.

Every alarm is written, with its raw text, parsed fields, room and arrival time,
before any reply is decided; every reply, silence, acknowledgement and admin
action follows. The policy's group state is kept here too, so a restart picks up
where the bot stopped: nothing lost, nothing answered twice.

The database runs in WAL mode with ``synchronous=NORMAL``: a committed write
survives the process being killed (only a power cut can lose the last few). The
schema version is SQLite's ``user_version``; ``MIGRATIONS`` brings an older file
up to date on open.

In the running bot the store writes behind (``AlarmStore.writing_behind``): the
bookkeeping of a decision (the group's state, the reply's record, what became of
the alarm) is committed one event-loop turn later, in one batch, so the reply is
on its way first. Alarms are always committed before anything is decided, and
every read sees the pending writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from bot.alarm import PLATFORM_TZ, Alarm
from bot.policy import Ack, GroupState, PolicyState, Silence, account_of

logger = logging.getLogger(__name__)

MEMORY = ":memory:"
_Keyed = TypeVar("_Keyed", Silence, Ack)
# Each entry upgrades the schema by one version; never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE alarms (
        id INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        room TEXT NOT NULL,
        sender TEXT NOT NULL,
        received_at TEXT NOT NULL,
        received_ts REAL NOT NULL,
        appid TEXT,
        appid_raw TEXT,
        account TEXT NOT NULL,
        type TEXT NOT NULL,
        nickname TEXT,
        content TEXT,
        time_text TEXT,
        alarm_ts REAL,
        count INTEGER,
        window_minutes INTEGER,
        sample TEXT NOT NULL,
        third_party INTEGER NOT NULL,
        pay_notify INTEGER NOT NULL,
        raw TEXT NOT NULL,
        disposition TEXT NOT NULL DEFAULT 'received',
        reply_id INTEGER
    );
    CREATE INDEX alarms_fingerprint ON alarms (fingerprint);
    CREATE INDEX alarms_received ON alarms (received_ts);
    CREATE INDEX alarms_account ON alarms (account, received_ts);
    CREATE INDEX alarms_reply ON alarms (reply_id);
    CREATE TABLE replies (
        id INTEGER PRIMARY KEY,
        room TEXT,
        recipient TEXT,
        kind TEXT NOT NULL,
        text TEXT,
        mentions TEXT NOT NULL,
        alarms INTEGER NOT NULL,
        appids TEXT NOT NULL,
        types TEXT NOT NULL,
        status TEXT NOT NULL,
        queued_at TEXT NOT NULL,
        done_at TEXT,
        error TEXT
    );
    CREATE INDEX replies_status ON replies (status);
    CREATE TABLE groups (
        room TEXT NOT NULL,
        account TEXT NOT NULL,
        type TEXT NOT NULL,
        last_ts REAL NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (room, account, type)
    );
    CREATE TABLE silences (
        id INTEGER PRIMARY KEY,
        room TEXT NOT NULL,
        appid TEXT,
        type TEXT,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        expires_ts REAL NOT NULL,
        removed_by TEXT,
        removed_at TEXT
    );
    CREATE TABLE acks (
        id INTEGER PRIMARY KEY,
        room TEXT NOT NULL,
        appid TEXT NOT NULL,
        type TEXT,
        acked_by TEXT NOT NULL,
        acked_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        expires_ts REAL NOT NULL,
        cleared_at TEXT
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        room TEXT,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
)
# Dispositions that are not a new alarm: left out of counts.
_NOT_COUNTED = ("duplicate",)


def default_db_path() -> Path:
    """Where ``alarm-bot run`` keeps its history unless told: the user's data dir.

    ``$XDG_DATA_HOME/alarm-bot/alarm-bot.db``, else
    ``~/.local/share/alarm-bot/alarm-bot.db``; never the working directory.
    """
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "alarm-bot" / "alarm-bot.db"


def fingerprint(room: str, alarm: Alarm) -> str:
    """The identity of one alarm, so the same alarm posted again is recognised.

    Built from the room, the account, the type, the 时间 text and the count; an
    alarm with neither time nor count (a hand-pasted fragment) adds its text.
    """
    parts = [
        room,
        account_of(alarm),
        alarm.type,
        alarm.time_text or "",
        str(alarm.count),
    ]
    if alarm.time_text is None and alarm.count is None:
        parts.append(alarm.raw)
    return hashlib.sha1("\x1f".join(parts).encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredAlarm:
    """One recorded alarm: its row id, fingerprint and whether it was seen before."""

    id: int
    fingerprint: str
    is_duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredReply:
    """A reply that was queued but not yet sent when the bot stopped."""

    id: int
    room: str | None
    recipient: str | None
    kind: str
    text: str | None
    mentions: tuple[str, ...]
    alarms: int
    appids: dict[str, int]
    types: dict[str, int]
    queued_at: datetime


@dataclass(frozen=True, slots=True)
class AlarmStats:
    """Alarm counts over a period: in total, by type, by account."""

    total: int
    accounts: int
    by_type: dict[str, int]
    top_appids: list[tuple[str, int]]
    by_disposition: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """Return the ``alarm-bot stats --json`` contract."""
        return {
            "total_alarms": self.total,
            "by_type": self.by_type,
            "top_appids": [[appid, n] for appid, n in self.top_appids],
        }


@dataclass(frozen=True, slots=True)
class WindowCount:
    """One counting window of a trend: its start, alarms, and the worst count."""

    start: datetime
    alarms: int
    accounts: int
    max_count: int | None
    types: tuple[str, ...]


class AlarmStore:
    """The SQLite history of one bot.

    Args:
        path: the database file, created if missing; ``None`` keeps it in memory.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = str(path) if path is not None else MEMORY
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # NOTE: isolation_level=None hands transactions to us (BEGIN ... COMMIT),
        # so several writes can share one commit.
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._depth = 0
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # NOTE: a storm writes a few MB a second; a bigger cache and fewer WAL
        # checkpoints (about 40 MB of WAL between them) make it about 25% faster.
        self._db.execute("PRAGMA cache_size=-16000")
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        self._pending: list[Callable[[], object]] = []
        self._behind = False
        self._flush_due = False
        self._migrate()
        # Reply ids are handed out here, so a reply written behind has its id now.
        self._last_reply_id = int(
            self._db.execute("SELECT COALESCE(MAX(id), 0) FROM replies").fetchone()[0]
        )

    def close(self) -> None:
        """Write what is pending, then close the database."""
        self.flush()
        self._behind = False
        self._db.close()

    @contextmanager
    def writing_behind(self) -> Iterator[None]:
        """Within, bookkeeping writes wait for the next event-loop turns.

        ``save_group``, ``add_reply``, ``set_disposition``, ``finish_reply`` and
        ``audit`` queue their write and return at once; two loop turns later
        (after whatever the caller's turn woke, such as the outbox sending a
        reply) the queue is committed in one transaction. Any other write or read
        commits the queue first, so the order of writes and what reads see are
        as without it. A crash can lose the queue, never a recorded alarm: an
        alarm without its disposition is decided again on the next start.
        Needs a running event loop; without one, writes happen at once.
        """
        self._behind = True
        try:
            yield
        finally:
            self._behind = False
            self.flush()

    def flush(self) -> None:
        """Commit the writes waiting behind, if any."""
        self._flush_due = False
        if not self._pending:
            return
        if self._depth:
            self._write_pending()
            return
        with self.transaction():  # which writes what is pending
            pass

    def _later(self, write: Callable[[], object]) -> None:
        """Run ``write`` in a transaction: now, or batched later when behind."""
        if self._behind:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._pending.append(write)
                if not self._flush_due:
                    self._flush_due = True
                    # NOTE: two hops, so what this turn woke (the outbox worker
                    # with the reply) runs before the flush.
                    loop.call_soon(loop.call_soon, self.flush)
                return
        with self.transaction():
            write()

    def _write_pending(self) -> None:
        while self._pending:
            writes, self._pending = self._pending, []
            for write in writes:
                try:
                    write()
                except (sqlite3.Error, ValueError, TypeError):
                    # the decision stands in memory; only its record is lost
                    logger.exception("a deferred write failed and was dropped")

    def _read(self) -> sqlite3.Connection:
        """The connection, once the writes waiting behind are in."""
        if self._pending:
            self.flush()
        return self._db

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this bot "
                f"knows ({len(MIGRATIONS)}); upgrade alarm-bot"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction():
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number}")
            logger.info("store %s migrated to schema %d", self.path, number)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group the writes inside into one commit; nests."""
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        if self._depth == 1 and self._pending:
            self._write_pending()
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("COMMIT")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes inside into one commit; when behind, the flush does."""
        if self._behind:
            yield
            return
        with self.transaction():
            yield

    # --------------------------------------------------------------- alarms

    def record_alarms(
        self, room: str, sender: str, at: datetime, alarms: Sequence[Alarm]
    ) -> list[StoredAlarm]:
        """Write the alarms of one message and commit; tell which were seen before."""
        stored = []
        with self.transaction():
            for alarm in alarms:
                print_ = fingerprint(room, alarm)
                seen = self._db.execute(
                    "SELECT 1 FROM alarms WHERE fingerprint = ? AND disposition != ? "
                    "LIMIT 1",
                    (print_, "duplicate"),
                ).fetchone()
                row_id = self._insert_alarm(room, sender, at, alarm, print_)
                stored.append(StoredAlarm(row_id, print_, seen is not None))
        return stored

    def _insert_alarm(
        self, room: str, sender: str, at: datetime, alarm: Alarm, print_: str
    ) -> int:
        cursor = self._db.execute(
            "INSERT INTO alarms (fingerprint, room, sender, received_at, received_ts,"
            " appid, appid_raw, account, type, nickname, content, time_text, alarm_ts,"
            " count, window_minutes, sample, third_party, pay_notify, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                print_,
                room,
                sender,
                at.isoformat(),
                at.timestamp(),
                alarm.appid,
                alarm.appid_raw,
                account_of(alarm),
                alarm.type,
                alarm.nickname,
                alarm.content,
                alarm.time_text,
                alarm.time.timestamp() if alarm.time else None,
                alarm.count,
                alarm.window_minutes,
                json.dumps(alarm.sample, ensure_ascii=False),
                alarm.third_party,
                alarm.pay_notify,
                alarm.raw,
            ),
        )
        return int(cursor.lastrowid or 0)

    def set_disposition(
        self, alarm_id: int, disposition: str, reply_id: int | None = None
    ) -> None:
        """Record what became of an alarm, and the reply that carries it."""
        self._later(
            lambda: self._db.execute(
                "UPDATE alarms SET disposition = ?, reply_id = ? WHERE id = ?",
                (disposition, reply_id, alarm_id),
            )
        )

    def undecided(self) -> list[tuple[StoredAlarm, str, str, str]]:
        """Alarms recorded but never decided (the bot stopped in between), as
        ``(alarm, room, sender, raw text)``, oldest first."""
        rows = self._read().execute(
            "SELECT a.id, a.fingerprint, a.room, a.sender, a.raw, EXISTS ("
            " SELECT 1 FROM alarms b WHERE b.fingerprint = a.fingerprint"
            " AND b.id < a.id AND b.disposition != 'duplicate')"
            " FROM alarms a WHERE a.disposition = 'received' ORDER BY a.id"
        )
        return [
            (StoredAlarm(row[0], row[1], bool(row[5])), row[2], row[3], row[4])
            for row in rows
        ]

    def fingerprints(self) -> set[str]:
        """Every recorded fingerprint (for tests and audits)."""
        return {
            row[0] for row in self._read().execute("SELECT fingerprint FROM alarms")
        }

    def count_alarms(self) -> int:
        """How many alarm rows there are, duplicates included."""
        return int(self._read().execute("SELECT COUNT(*) FROM alarms").fetchone()[0])

    # -------------------------------------------------------------- replies

    def add_reply(
        self,
        *,
        room: str | None,
        recipient: str | None,
        kind: str,
        text: str | None,
        mentions: Sequence[str],
        alarms: int,
        appids: Sequence[str],
        types: Sequence[str],
        at: datetime,
    ) -> int:
        """Record a reply as queued; return its id."""
        self._last_reply_id += 1
        values = (
            self._last_reply_id,
            room,
            recipient,
            kind,
            text,
            _dumps(list(mentions)),
            alarms,
            _dumps(_tally(appids)),
            _dumps(_tally(types)),
            "queued",
            at.isoformat(),
        )
        self._later(
            lambda: self._db.execute(
                "INSERT INTO replies (id, room, recipient, kind, text, mentions,"
                " alarms, appids, types, status, queued_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        )
        return self._last_reply_id

    def finish_reply(
        self,
        reply_id: int,
        status: str,
        at: datetime,
        *,
        text: str | None = None,
        error: str | None = None,
    ) -> None:
        """Mark a reply ``sent`` or ``failed``."""
        self._later(
            lambda: self._db.execute(
                "UPDATE replies SET status = ?, done_at = ?, error = ?,"
                " text = COALESCE(?, text) WHERE id = ?",
                (status, at.isoformat(), error, text, reply_id),
            )
        )

    def pending_replies(self) -> list[StoredReply]:
        """The replies queued but never sent or failed, oldest first.

        A digest's counts are rebuilt from the alarms it carries.
        """
        rows = (
            self._read()
            .execute("SELECT * FROM replies WHERE status = 'queued' ORDER BY id")
            .fetchall()
        )
        pending = []
        for row in rows:
            alarms, appids, types = (
                row["alarms"],
                _loads(row["appids"]),
                _loads(row["types"]),
            )
            if row["kind"] == "digest":
                alarms, appids, types = self._digest_counts(row["id"])
            pending.append(
                StoredReply(
                    id=row["id"],
                    room=row["room"],
                    recipient=row["recipient"],
                    kind=row["kind"],
                    text=row["text"],
                    mentions=tuple(_loads(row["mentions"])),
                    alarms=alarms,
                    appids=appids,
                    types=types,
                    queued_at=datetime.fromisoformat(row["queued_at"]),
                )
            )
        return pending

    def _digest_counts(
        self, reply_id: int
    ) -> tuple[int, dict[str, int], dict[str, int]]:
        rows = self._db.execute(
            "SELECT account, type FROM alarms WHERE reply_id = ?", (reply_id,)
        ).fetchall()
        appids = _tally([r["account"] for r in rows if r["account"]])
        return len(rows), appids, _tally([r["type"] for r in rows])

    def replies(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every reply row as a dict (for tests and audits)."""
        sql, args = "SELECT * FROM replies", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [dict(row) for row in self._read().execute(sql + " ORDER BY id", args)]

    # ------------------------------------------------- groups, silences, acks

    def save_group(self, group: GroupState) -> None:
        """Keep one group's state (as it is when written, when behind)."""
        self._later(
            lambda: self._db.execute(
                "INSERT INTO groups (room, account, type, last_ts, state)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room, account, type)"
                " DO UPDATE SET last_ts = excluded.last_ts, state = excluded.state",
                (
                    group.room,
                    group.appid,
                    group.type,
                    group.last_at.timestamp(),
                    _dumps(_group_to_json(group)),
                ),
            )
        )

    def forget_groups(self, groups: Sequence[GroupState]) -> None:
        """Drop groups the policy no longer keeps."""
        with self.transaction():
            self._db.executemany(
                "DELETE FROM groups WHERE room = ? AND account = ? AND type = ?",
                [g.key for g in groups],
            )

    def add_silence(self, silence: Silence) -> Silence:
        """Record a silence; return it with its id."""
        with self.transaction():
            cursor = self._db.execute(
                "INSERT INTO silences (room, appid, type, created_by, created_at,"
                " expires_at, expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    silence.room,
                    silence.appid,
                    silence.type,
                    silence.created_by,
                    silence.created_at.isoformat(),
                    silence.expires_at.isoformat(),
                    silence.expires_at.timestamp(),
                ),
            )
        return _with_id(silence, cursor.lastrowid)

    def remove_silence(self, silence_id: int, by: str, at: datetime) -> None:
        """Record that a silence was lifted early."""
        with self.transaction():
            self._db.execute(
                "UPDATE silences SET removed_by = ?, removed_at = ? WHERE id = ?",
                (by, at.isoformat(), silence_id),
            )

    def add_ack(self, ack: Ack) -> Ack:
        """Record an acknowledgement; return it with its id."""
        with self.transaction():
            cursor = self._db.execute(
                "INSERT INTO acks (room, appid, type, acked_by, acked_at, expires_at,"
                " expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    ack.room,
                    ack.appid,
                    ack.type,
                    ack.by,
                    ack.at.isoformat(),
                    ack.expires_at.isoformat(),
                    ack.expires_at.timestamp(),
                ),
            )
        return _with_id(ack, cursor.lastrowid)

    def clear_acks(self, acks: Sequence[Ack], at: datetime) -> None:
        """Record that acknowledgements ended (their alarms recovered)."""
        with self.transaction():
            self._db.executemany(
                "UPDATE acks SET cleared_at = ? WHERE id = ?",
                [(at.isoformat(), ack.id) for ack in acks],
            )

    def load_state(self, now: datetime, keep: timedelta) -> PolicyState:
        """Rebuild the policy's state: groups seen within ``keep``, live silences
        and acknowledgements."""
        groups = {}
        horizon = (now - keep).timestamp()
        for row in self._read().execute(
            "SELECT state FROM groups WHERE last_ts >= ?", (horizon,)
        ):
            group = _group_from_json(_loads(row[0]))
            groups[group.key] = group
        silences = [
            Silence(
                id=row["id"],
                room=row["room"],
                appid=row["appid"],
                type=row["type"],
                created_by=row["created_by"],
                created_at=datetime.fromisoformat(row["created_at"]),
                expires_at=datetime.fromisoformat(row["expires_at"]),
            )
            for row in self._db.execute(
                "SELECT * FROM silences WHERE removed_at IS NULL AND expires_ts > ?"
                " ORDER BY id",
                (now.timestamp(),),
            )
        ]
        acks = [
            Ack(
                id=row["id"],
                room=row["room"],
                appid=row["appid"],
                type=row["type"],
                by=row["acked_by"],
                at=datetime.fromisoformat(row["acked_at"]),
                expires_at=datetime.fromisoformat(row["expires_at"]),
            )
            for row in self._db.execute(
                "SELECT * FROM acks WHERE cleared_at IS NULL AND expires_ts > ?"
                " ORDER BY id",
                (now.timestamp(),),
            )
        ]
        return PolicyState(groups=groups, silences=silences, acks=acks)

    def audit(
        self, at: datetime, room: str | None, actor: str, action: str, **detail: object
    ) -> None:
        """Record an action someone took (a command, a mute, an ack)."""
        values = (at.isoformat(), room, actor, action, _dumps(detail))
        self._later(
            lambda: self._db.execute(
                "INSERT INTO audit (at, room, actor, action, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                values,
            )
        )

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit row as a dict, oldest first."""
        return [
            dict(row) for row in self._read().execute("SELECT * FROM audit ORDER BY id")
        ]

    # ---------------------------------------------------------------- stats

    def stats(
        self,
        *,
        room: str | None = None,
        appid: str | None = None,
        since: datetime | None = None,
        top: int = 10,
    ) -> AlarmStats:
        """Count the alarms matching the filters, by type and by account."""
        where, args = _filters(room, appid, since)
        by_type = {
            row[0]: row[1]
            for row in self._read().execute(
                f"SELECT type, COUNT(*) FROM alarms {where} GROUP BY type"  # noqa: S608
                " ORDER BY COUNT(*) DESC, type",
                args,
            )
        }
        by_disposition = {
            row[0]: row[1]
            for row in self._db.execute(
                f"SELECT disposition, COUNT(*) FROM alarms {where}"  # noqa: S608
                " GROUP BY disposition ORDER BY COUNT(*) DESC",
                args,
            )
        }
        account_rows = self._db.execute(
            f"SELECT account, COUNT(*) AS n FROM alarms {where}"  # noqa: S608
            " AND account != '' GROUP BY account ORDER BY n DESC, account",
            args,
        ).fetchall()
        return AlarmStats(
            total=sum(by_type.values()),
            accounts=len(account_rows),
            by_type=by_type,
            top_appids=[(row[0], row[1]) for row in account_rows[:top]],
            by_disposition=by_disposition,
        )

    def trend(
        self,
        *,
        room: str | None = None,
        appid: str | None = None,
        since: datetime | None = None,
        window_minutes: int = 5,
        limit: int = 12,
    ) -> list[WindowCount]:
        """The latest ``limit`` windows with alarms, oldest first.

        Alarms fall in windows by their platform time, else their arrival.
        """
        where, args = _filters(room, appid, since)
        width = window_minutes * 60
        rows = (
            self._read()
            .execute(
                "SELECT CAST(COALESCE(alarm_ts, received_ts) / ? AS INTEGER) AS b,"  # noqa: S608
                " COUNT(*), COUNT(DISTINCT account), MAX(count),"
                f" GROUP_CONCAT(DISTINCT type) FROM alarms {where}"
                " GROUP BY b ORDER BY b DESC LIMIT ?",
                (width, *args, limit),
            )
            .fetchall()
        )
        return [
            WindowCount(
                start=datetime.fromtimestamp(row[0] * width, PLATFORM_TZ),
                alarms=row[1],
                accounts=row[2],
                max_count=row[3],
                types=tuple(sorted((row[4] or "").split(","))),
            )
            for row in reversed(rows)
        ]


def _filters(
    room: str | None, appid: str | None, since: datetime | None
) -> tuple[str, tuple[object, ...]]:
    # NOTE: the clauses are constants; every value goes in as a parameter, so the
    # f-strings that splice them into queries above are safe (hence the noqa).
    marks = ",".join("?" * len(_NOT_COUNTED))
    clauses = [f"disposition NOT IN ({marks})"]
    args: list[object] = list(_NOT_COUNTED)
    if room is not None:
        clauses.append("room = ?")
        args.append(room)
    if appid is not None:
        clauses.append("account = ?")
        args.append(appid)
    if since is not None:
        clauses.append("received_ts >= ?")
        args.append(since.timestamp())
    return "WHERE " + " AND ".join(clauses), tuple(args)


def _tally(items: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str) -> Any:
    return json.loads(text)


_GROUP_TIMES = (
    "first_at",
    "last_at",
    "window_start",
    "notified_at",
    "full_at",
    "escalated_at",
    "resolved_at",
)


_GROUP_FIELDS = tuple(f.name for f in fields(GroupState))


def _group_to_json(group: GroupState) -> dict[str, object]:
    # NOTE: not dataclasses.asdict, which deep-copies every value: this runs for
    # every alarm.
    data: dict[str, object] = {name: getattr(group, name) for name in _GROUP_FIELDS}
    for name in _GROUP_TIMES:
        value = getattr(group, name)
        data[name] = value.isoformat() if value is not None else None
    return data


def _group_from_json(data: dict[str, Any]) -> GroupState:
    for name in _GROUP_TIMES:
        if data.get(name) is not None:
            data[name] = datetime.fromisoformat(data[name])
    return GroupState(**data)


def _with_id(value: _Keyed, row_id: int | None) -> _Keyed:
    return replace(value, id=int(row_id or 0))
