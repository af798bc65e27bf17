"""This module decides what the group hears about each alarm.

The platform posts the same alarm every window for every failing account, so the
policy answers like an on-call engineer who has seen it before:

* alarms are grouped by ``(room, appid, type)``; the first of a group gets the full
  diagnosis, repeats are folded in, and a short update follows only when the count
  rises sharply, the repeat interval has passed, or the group persists unanswered;
* a firing MarkFail for an account inhibits that account's lesser alarms, and its
  own reply points back at the alarms that explain it;
* silences mute by appid, type or both until they expire; acknowledgements record
  who is on it and stop escalation;
* MarkFail and ticket alarms @-mention their owners at once; an alarm that persists
  unacknowledged for ``persist_windows`` windows @-mentions them once;
* an escalated or acknowledged group that goes quiet for ``recover_windows``
  windows gets a one-line recovery note.

Everything here is a pure decision over plain values and the ``PolicyState`` it is
given; the pipeline records the results. Time comes from a ``Clock``: the system
clock when serving, a ``SimulatedClock`` when replaying.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from bot.alarm import PLATFORM_TZ, Alarm
from bot.diagnosis import ESCALATING_TYPES
from bot.knowledge import ALARM_TYPES

logger = logging.getLogger(__name__)

GroupKey = tuple[str, str, str]
INHIBITING_TYPE = "markfail"
# Alarms about a third-party platform itself, which its own owners handle.
PLATFORM_TYPES = frozenset(
    {
        "ticket_timeout",
        "ticket_failure",
        "component_push_timeout",
        "component_push_failure",
    }
)
DEFAULT_WINDOW_MINUTES = 5
# NOTE: the platform posts "every five minutes" with a few seconds of jitter, so an
# interval counts as passed a little early rather than a whole window late.
INTERVAL_SLACK = 0.1
_DURATION_PART = re.compile(
    r"\s*(?P<n>\d+(?:\.\d+)?)\s*"
    r"(?P<unit>seconds?|secs?|s|秒|minutes?|mins?|m|分钟|分|"
    r"hours?|hrs?|h|小时|时|days?|d|天|weeks?|w|周|)(?![a-z])\s*",
    re.IGNORECASE,
)
MAX_DURATION = timedelta(days=366)
"""The longest duration ``parse_duration`` reads (silences, stats periods)."""
# Seconds per unit, keyed by the unit's first character.
_UNIT_SECONDS = (
    dict.fromkeys("s秒", 1)
    | dict.fromkeys("m分", 60)
    | dict.fromkeys("h小时", 3600)
    | dict.fromkeys("d天", 86400)
    | dict.fromkeys("w周", 604800)
)


# -------------------------------------------------------------------- clock


class Clock(Protocol):
    """Tells the time; the seam between serving and replaying."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware."""
        ...


class SystemClock:
    """The wall clock, in the platform's timezone."""

    def now(self) -> datetime:
        """Return the current wall-clock time."""
        return datetime.now(PLATFORM_TZ)


class SimulatedClock:
    """A clock that moves only when told to, and never backwards."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        """Return the simulated time."""
        return self._now

    def set(self, when: datetime) -> None:
        """Move to ``when``, unless that is in the past."""
        if when > self._now:
            self._now = when

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``."""
        self._now += timedelta(seconds=seconds)


def parse_duration(text: str) -> timedelta | None:
    """Read ``30m``, ``1h30m``, ``1d``, ``90`` (minutes) or ``2小时``, else ``None``.

    Durations over ``MAX_DURATION`` are ``None`` too: a silence or a period of
    centuries is a typo, and would overflow the date arithmetic.
    """
    value = duration_seconds(text)
    if value is None or not 0 < value <= MAX_DURATION.total_seconds():
        return None
    return timedelta(seconds=value)


def duration_seconds(text: str) -> float | None:
    """Seconds in ``5m``, ``1h30m``, ``2小时``, ``1d`` or ``90`` (minutes), else None.

    The one reading of durations for every command and option; callers check
    the range they accept (a number too long for a float reads as ``inf``,
    which every range refuses as out of range).
    """
    parts = list(_DURATION_PART.finditer(text))
    if not parts or "".join(p.group() for p in parts) != text:
        return None
    if len(parts) > 1 and not all(p["unit"] for p in parts):
        return None  # "1h30" is ambiguous: the bare number only stands alone
    return sum(
        float(p["n"]) * _UNIT_SECONDS[(p["unit"] or "m")[0].lower()] for p in parts
    )


# ------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """The facts of one recorded alarm that the policy decides on.

    ``appid`` is the app id, else the Appid text as written, else the
    account's nickname, else ``""``;
    ``time`` is the platform's 时间, which places the alarm in its window.
    """

    room: str
    appid: str
    type: str
    alarm_id: int
    count: int | None = None
    window_minutes: int = DEFAULT_WINDOW_MINUTES
    time: datetime | None = None

    @classmethod
    def from_alarm(cls, alarm: Alarm, room: str, alarm_id: int) -> AlarmEvent:
        """Take the facts the policy needs from a parsed alarm."""
        return cls(
            room=room,
            appid=account_of(alarm),
            type=alarm.type,
            alarm_id=alarm_id,
            count=alarm.count,
            window_minutes=alarm.window_minutes or DEFAULT_WINDOW_MINUTES,
            time=alarm.time,
        )

    @property
    def key(self) -> GroupKey:
        """The group this alarm belongs to."""
        return (self.room, self.appid, self.type)


def account_of(alarm: Alarm) -> str:
    """The account an alarm is about: its app id, else its Appid text, else ``""``.

    An alarm without an Appid line still names its account when it has a
    nickname (公众号名称), and two such accounts must not share a group.
    """
    return alarm.appid or alarm.appid_raw or alarm.nickname or ""


@dataclass(frozen=True, slots=True)
class GroupState:
    """One ``(room, appid, type)`` group: an episode of the same alarm repeating.

    Arrival times (``first_at``, ``last_at``, ``notified_at``) are the bot's
    clock; ``window_start`` is the platform's time of the current window.
    """

    room: str
    appid: str
    type: str
    first_at: datetime
    last_at: datetime
    window_start: datetime
    window_minutes: int = DEFAULT_WINDOW_MINUTES
    windows: int = 1
    count: int | None = None
    alarms: int = 1
    first_alarm_id: int = 0
    last_alarm_id: int = 0
    notified_at: datetime | None = None
    notified_count: int | None = None
    full_at: datetime | None = None
    escalated_at: datetime | None = None
    resolved_at: datetime | None = None
    folded: int = 0

    @property
    def key(self) -> GroupKey:
        """``(room, appid, type)``."""
        return (self.room, self.appid, self.type)

    @property
    def window(self) -> timedelta:
        """The length of one counting window."""
        return timedelta(minutes=self.window_minutes)

    def is_firing(self, now: datetime, recover_windows: int) -> bool:
        """Whether the group still counts as failing at ``now``."""
        if self.resolved_at is not None:
            return False
        return now - self.last_at < self.window * recover_windows


@dataclass(frozen=True, slots=True)
class Silence:
    """A time-boxed mute in one room; an unset matcher matches everything."""

    id: int
    room: str
    appid: str | None
    type: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime

    def matches(self, room: str, appid: str, alarm_type: str) -> bool:
        """Whether this silence covers an alarm of ``appid`` and ``alarm_type``."""
        return (
            self.room == room
            and (self.appid is None or self.appid == appid)
            and (self.type is None or self.type == alarm_type)
        )

    def is_active(self, now: datetime) -> bool:
        """Whether the silence has not expired at ``now``."""
        return now < self.expires_at


@dataclass(frozen=True, slots=True)
class Ack:
    """Someone said they are handling an account's alarms (one type, or all)."""

    id: int
    room: str
    appid: str
    type: str | None
    by: str
    at: datetime
    expires_at: datetime

    def covers(self, room: str, appid: str, alarm_type: str) -> bool:
        """Whether this acknowledgement covers the group ``(room, appid, type)``."""
        return (
            self.room == room
            and self.appid == appid
            and (self.type is None or self.type == alarm_type)
        )


class Action(StrEnum):
    """What to do about one alarm."""

    FULL = "full"
    UPDATE = "update"
    FOLD = "folded"
    SILENCED = "silenced"
    INHIBITED = "inhibited"
    DUPLICATE = "duplicate"
    ASKED = "asked"

    @property
    def is_posted(self) -> bool:
        """Whether the alarm gets words of its own in the room."""
        return self in (Action.FULL, Action.UPDATE)


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict on one alarm, with what the reply needs to say.

    ``reason`` is why the group is posted about (``first``, ``reopened``,
    ``rise``, ``interval``, ``persisting``) or why not (``folded``, ``silenced``,
    ``inhibited``). ``covers`` lists the account's other firing groups a MarkFail
    inhibits; ``inhibitor`` is the MarkFail group that inhibits this alarm;
    ``folded`` counts the group's alarms left unsaid since its last post.
    """

    action: Action
    group: GroupState
    reason: str
    previous_count: int | None = None
    escalation: str | None = None
    mentions: tuple[str, ...] = ()
    ack: Ack | None = None
    covers: tuple[GroupState, ...] = ()
    inhibitor: GroupState | None = None
    silence: Silence | None = None
    folded: int = 0


@dataclass(frozen=True, slots=True)
class Recovery:
    """A group that went quiet after being escalated or acknowledged."""

    group: GroupState
    ack: Ack | None
    cleared: tuple[Ack, ...]


@dataclass(frozen=True, slots=True)
class PolicyRules:
    """The knobs of the policy.

    Attributes:
        repeat_interval: how long repeats are folded before an update; ``None``
            uses each alarm's own window.
        rise_factor: a window count this many times the last posted one is a
            sharp rise ...
        rise_min: ... provided it grew by at least this much.
        persist_windows: windows an unacknowledged group may persist before its
            owners are @-mentioned.
        recover_windows: quiet windows after which a group counts as recovered.
        forget_after: how long a recovered group's full diagnosis still counts
            as said (a return within it gets a short update).
        ack_ttl: how long an acknowledgement lasts at most.
        owners: contacts per appid.
        default_owners: contacts for accounts not in ``owners``.
        platform_owners: contacts for third-party ticket and platform-message
            alarms.
    """

    repeat_interval: timedelta | None = None
    rise_factor: float = 2.0
    rise_min: int = 50
    persist_windows: int = 3
    recover_windows: int = 2
    forget_after: timedelta = timedelta(hours=24)
    ack_ttl: timedelta = timedelta(hours=24)
    owners: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_owners: tuple[str, ...] = ()
    platform_owners: tuple[str, ...] = ()

    def owners_for(self, appid: str, alarm_type: str) -> tuple[str, ...]:
        """The contacts to @-mention about ``appid``'s ``alarm_type`` alarms."""
        listed = self.owners.get(appid.lower(), ())
        if listed:
            return listed
        if alarm_type in PLATFORM_TYPES and self.platform_owners:
            return self.platform_owners
        return self.default_owners


@dataclass(slots=True)
class PolicyState:
    """What the policy remembers; restored from the store after a restart."""

    groups: dict[GroupKey, GroupState] = field(default_factory=dict)
    silences: list[Silence] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)


# ------------------------------------------------------------------- policy


class AlarmPolicy:
    """Decides, alarm by alarm, what to post; keeps the state it decides on.

    Args:
        rules: the knobs.
        state: what to start from (restored from the store), or a blank state.
    """

    def __init__(self, rules: PolicyRules, state: PolicyState | None = None) -> None:
        self.rules = rules
        self.state = state or PolicyState()
        # (due, key): when an escalated or acknowledged group is next checked for
        # recovery; stale entries are skipped when they come up.
        self._timers: list[tuple[datetime, GroupKey]] = []
        for group in self.state.groups.values():
            self._arm(group)

    # ------------------------------------------------------------- deciding

    def decide(self, event: AlarmEvent, now: datetime) -> Decision:
        """Decide about one alarm at ``now`` and remember it."""
        old = self.state.groups.get(event.key)
        if old is None or not old.is_firing(now, self.rules.recover_windows):
            group = self._open(event, now, old)
            decision = self._first(group, event, now, reopened=old is not None)
        else:
            group = self._repeat(old, event, now)
            decision = self._next(group, event, now)
        self._keep(decision.group)
        return decision

    def _open(
        self, event: AlarmEvent, now: datetime, old: GroupState | None
    ) -> GroupState:
        full_at = None
        # A return soon after a full diagnosis gets a short update, not a repeat.
        if old is not None and old.full_at is not None:
            is_recent = now - old.full_at < self.rules.forget_after
            full_at = old.full_at if is_recent else None
        return GroupState(
            room=event.room,
            appid=event.appid,
            type=event.type,
            first_at=now,
            last_at=now,
            window_start=event.time or now,
            window_minutes=event.window_minutes,
            count=event.count,
            first_alarm_id=event.alarm_id,
            last_alarm_id=event.alarm_id,
            full_at=full_at,
        )

    def _repeat(self, old: GroupState, event: AlarmEvent, now: datetime) -> GroupState:
        when = event.time or now
        is_new_window = when - old.window_start >= old.window * 0.5
        if is_new_window:
            return replace(
                old,
                last_at=now,
                window_start=when,
                windows=old.windows + 1,
                count=event.count,
                alarms=old.alarms + 1,
                last_alarm_id=event.alarm_id,
            )
        count = old.count
        if event.count is not None:
            count = max(event.count, count or 0)
        return replace(
            old,
            last_at=now,
            count=count,
            alarms=old.alarms + 1,
            last_alarm_id=event.alarm_id,
        )

    def _quiet(
        self, group: GroupState, event: AlarmEvent, now: datetime
    ) -> Decision | None:
        """Silence or inhibition, which win over everything else."""
        silence = self.silence_for(event.room, event.appid, event.type, now)
        if silence is not None:
            folded = replace(group, folded=group.folded + 1)
            return Decision(Action.SILENCED, folded, "silenced", silence=silence)
        inhibitor = self._inhibitor(event, now)
        if inhibitor is not None:
            folded = replace(group, folded=group.folded + 1)
            return Decision(Action.INHIBITED, folded, "inhibited", inhibitor=inhibitor)
        return None

    def _first(
        self, group: GroupState, event: AlarmEvent, now: datetime, *, reopened: bool
    ) -> Decision:
        quiet = self._quiet(group, event, now)
        if quiet is not None:
            return quiet
        ack = self.ack_for(event.room, event.appid, event.type, now)
        said_before = group.full_at is not None
        action = Action.UPDATE if said_before else Action.FULL
        reason = "reopened" if reopened and said_before else "first"
        return self._post(group, now, action, reason, ack)

    def _next(self, group: GroupState, event: AlarmEvent, now: datetime) -> Decision:
        quiet = self._quiet(group, event, now)
        if quiet is not None:
            return quiet
        ack = self.ack_for(event.room, event.appid, event.type, now)
        if group.notified_at is None:
            # Silenced or inhibited until now: this is its first word.
            action = Action.UPDATE if group.full_at is not None else Action.FULL
            return self._post(group, now, action, "first", ack)
        is_persisting = group.windows >= self.rules.persist_windows
        interval = self.rules.repeat_interval or group.window
        if self._has_risen(group):
            reason = "rise"
        elif now - group.notified_at >= interval * (1 - INTERVAL_SLACK):
            reason = "interval"
        elif is_persisting and ack is None and group.escalated_at is None:
            reason = "persisting"
        else:
            return Decision(
                Action.FOLD, replace(group, folded=group.folded + 1), "folded"
            )
        return self._post(
            group, now, Action.UPDATE, reason, ack, is_persisting=is_persisting
        )

    def _has_risen(self, group: GroupState) -> bool:
        before, count = group.notified_count, group.count
        if before is None or count is None:
            return False
        return count >= before * self.rules.rise_factor and (
            count - before >= self.rules.rise_min
        )

    def _post(
        self,
        group: GroupState,
        now: datetime,
        action: Action,
        reason: str,
        ack: Ack | None,
        *,
        is_persisting: bool = False,
    ) -> Decision:
        """Post about ``group``; escalate once per episode unless acknowledged:
        at once for a severe type, else when it has persisted."""
        escalation = None
        if ack is None and group.escalated_at is None:
            if group.type in ESCALATING_TYPES:
                escalation = "severe"
            elif is_persisting:
                escalation = "persisting"
        posted = replace(
            group,
            notified_at=now,
            notified_count=group.count,
            full_at=now if action is Action.FULL else group.full_at,
            escalated_at=now if escalation else group.escalated_at,
            folded=0,
        )
        covers: tuple[GroupState, ...] = ()
        if group.type == INHIBITING_TYPE and reason in ("first", "reopened"):
            covers = self._covered(group, now)
        mentions = self.rules.owners_for(group.appid, group.type) if escalation else ()
        return Decision(
            action,
            posted,
            reason,
            previous_count=group.notified_count,
            escalation=escalation,
            mentions=mentions,
            ack=ack,
            covers=covers,
            folded=group.folded,
        )

    def _inhibitor(self, event: AlarmEvent, now: datetime) -> GroupState | None:
        if event.type == INHIBITING_TYPE or not event.appid:
            return None
        source = self.state.groups.get((event.room, event.appid, INHIBITING_TYPE))
        if source is None or not source.is_firing(now, self.rules.recover_windows):
            return None
        return source

    def _covered(self, group: GroupState, now: datetime) -> tuple[GroupState, ...]:
        """The account's other firing groups, oldest first, that a MarkFail covers."""
        if not group.appid:
            return ()
        found = [
            other
            for other in self.groups_of(group.room, group.appid)
            if other.type != INHIBITING_TYPE
            and other.is_firing(now, self.rules.recover_windows)
        ]
        return tuple(sorted(found, key=lambda g: g.first_at))

    # ------------------------------------------------------------- recovery

    def next_due(self) -> datetime | None:
        """When the next recovery check is due, if any."""
        while self._timers:
            due, key = self._timers[0]
            if self._due(key) == due:
                return due
            heapq.heappop(self._timers)
        return None

    def recover(self, now: datetime) -> list[Recovery]:
        """Close the escalated or acknowledged groups that have gone quiet."""
        found: list[Recovery] = []
        while self._timers and self._timers[0][0] <= now:
            due, key = heapq.heappop(self._timers)
            if self._due(key) != due:
                continue
            group = self.state.groups[key]
            ack = self.ack_for(group.room, group.appid, group.type, now)
            resolved = replace(group, resolved_at=now)
            self.state.groups[key] = resolved
            found.append(Recovery(resolved, ack, self._clear_acks(resolved, now)))
        return found

    def _due(self, key: GroupKey) -> datetime | None:
        group = self.state.groups.get(key)
        if group is None or group.resolved_at is not None:
            return None
        if group.escalated_at is None and not self._has_ack(group):
            return None
        return group.last_at + group.window * self.rules.recover_windows

    def _has_ack(self, group: GroupState) -> bool:
        return any(
            a.covers(group.room, group.appid, group.type) for a in self.state.acks
        )

    def _arm(self, group: GroupState) -> None:
        due = self._due(group.key)
        if due is not None:
            heapq.heappush(self._timers, (due, group.key))

    def _keep(self, group: GroupState) -> None:
        self.state.groups[group.key] = group
        self._arm(group)

    def _clear_acks(self, group: GroupState, now: datetime) -> tuple[Ack, ...]:
        """Drop the acks this recovery ends: the type's own, or the account's
        when none of its groups is still firing."""
        still_firing = any(
            g.is_firing(now, self.rules.recover_windows)
            for g in self.groups_of(group.room, group.appid)
            if g.type != group.type
        )
        cleared = tuple(
            a
            for a in self.state.acks
            if a.covers(group.room, group.appid, group.type)
            and (a.type is not None or not still_firing)
        )
        self.state.acks = [a for a in self.state.acks if a not in cleared]
        return cleared

    def forget(self, now: datetime) -> list[GroupState]:
        """Drop groups quiet for longer than ``forget_after``; return them."""
        horizon = now - self.rules.forget_after
        stale = [g for g in self.state.groups.values() if g.last_at < horizon]
        for group in stale:
            del self.state.groups[group.key]
        return stale

    # ------------------------------------------------------ silences, acks

    def silence_for(
        self, room: str, appid: str, alarm_type: str, now: datetime
    ) -> Silence | None:
        """The active silence covering an alarm, if any."""
        for silence in self.state.silences:
            if silence.is_active(now) and silence.matches(room, appid, alarm_type):
                return silence
        return None

    def active_silences(self, room: str, now: datetime) -> list[Silence]:
        """The room's silences that have not expired, soonest to end first."""
        active = [s for s in self.state.silences if s.room == room and s.is_active(now)]
        self.state.silences = [s for s in self.state.silences if s.is_active(now)]
        return sorted(active, key=lambda s: s.expires_at)

    def add_silence(self, silence: Silence) -> None:
        """Start honouring ``silence``."""
        self.state.silences.append(silence)

    def remove_silences(
        self, room: str, appid: str | None, alarm_type: str | None, now: datetime
    ) -> list[Silence]:
        """End the room's active silences with exactly these matchers (all if both
        are ``None``); return them."""
        removed = [
            s
            for s in self.active_silences(room, now)
            if (appid is None and alarm_type is None)
            or (s.appid == appid and s.type == alarm_type)
        ]
        self.state.silences = [s for s in self.state.silences if s not in removed]
        return removed

    def ack_for(
        self, room: str, appid: str, alarm_type: str, now: datetime
    ) -> Ack | None:
        """The acknowledgement covering a group, if any."""
        for ack in self.state.acks:
            if now < ack.expires_at and ack.covers(room, appid, alarm_type):
                return ack
        return None

    def acknowledge(self, ack: Ack, now: datetime) -> list[GroupState]:
        """Record ``ack``; return the firing groups it covers."""
        same = (ack.room, ack.appid, ack.type)
        self.state.acks = [
            a
            for a in self.state.acks
            if now < a.expires_at and (a.room, a.appid, a.type) != same
        ]
        self.state.acks.append(ack)
        covered = [
            g
            for g in self.groups_of(ack.room, ack.appid)
            if ack.covers(g.room, g.appid, g.type)
            and g.is_firing(now, self.rules.recover_windows)
        ]
        for group in covered:
            self._arm(group)
        return covered

    def groups_of(self, room: str, appid: str) -> Iterable[GroupState]:
        """The groups known for one account in one room."""
        for alarm_type in ALARM_TYPES:
            group = self.state.groups.get((room, appid, alarm_type))
            if group is not None:
                yield group
