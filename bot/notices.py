"""This module writes what the pipeline posts besides a diagnosis.

Short updates, the MarkFail note that covers an account's other alarms,
escalation lines, recovery notes, digests and send-failure reports are all
rendered here from ``knowledge/templates``; this module only builds their
contexts. ``sample_contexts`` gives ``kb check`` one context per template.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from bot.alarm import PLATFORM_TZ, Alarm
from bot.diagnosis import diagnose, warn_unmatched
from bot.knowledge import Knowledge
from bot.outbox import Digest, SendFailure
from bot.policy import Ack, Action, Decision, GroupState, Recovery, Silence
from bot.render import ReplyRenderer
from bot.store import AlarmStats, WindowCount

logger = logging.getLogger(__name__)

TEMPLATES = (
    "update",
    "inhibited",
    "escalation",
    "recovered",
    "digest",
    "send_failures",
    "mute",
    "unmute",
    "silences",
    "ack",
    "stats",
    "history",
    "desk_off",
)
DIGEST_TOP = 5


class NoticeWriter:
    """Renders the pipeline's texts with whichever knowledge is serving.

    Args:
        renderer: returns the renderer now serving (it changes on reload).
    """

    def __init__(self, renderer: Callable[[], ReplyRenderer]) -> None:
        self._renderer = renderer

    def alarm_reply(self, posted: Sequence[tuple[Alarm, Decision]]) -> str:
        """The reply to one message: full diagnoses, then notes and updates."""
        renderer = self._renderer()
        knowledge = renderer.knowledge
        full = [a for a, d in posted if d.action is Action.FULL]
        sections = []
        if full:
            warn_unmatched(full)
            sections.append(
                renderer.alarm_reply([diagnose(a, knowledge) for a in full])
            )
        for alarm, decision in posted:
            if decision.covers:
                sections.append(
                    renderer.render(
                        "inhibited", **inhibited_context(decision, knowledge)
                    )
                )
            if decision.action is Action.UPDATE:
                context = update_context(alarm, decision, knowledge)
                sections.append(renderer.render("update", **context))
            if decision.escalation:
                context = escalation_context(decision, knowledge)
                sections.append(renderer.render("escalation", **context))
        return "\n\n".join(sections)

    def recovery(self, recovery: Recovery, now: datetime) -> str:
        """The one-line note that a group looks recovered."""
        renderer = self._renderer()
        group = recovery.group
        return renderer.render(
            "recovered",
            entry=renderer.knowledge.alarm(group.type),
            appid=group.appid or "?",
            first_at=group.first_at,
            last_at=group.last_at,
            alarms=group.alarms,
            quiet_minutes=int((now - group.last_at).total_seconds() // 60),
            ack=recovery.ack,
        )

    def digest(self, digest: Digest) -> str:
        """The digest of a room's collapsed replies."""
        renderer = self._renderer()
        return renderer.render("digest", **digest_context(digest, renderer.knowledge))

    def failures(self, failures: Sequence[SendFailure]) -> str:
        """The report of messages that could not be sent."""
        return self._renderer().render("send_failures", failures=list(failures))


def update_context(
    alarm: Alarm, decision: Decision, knowledge: Knowledge
) -> dict[str, object]:
    """The context of ``update``: a short word on a group already answered."""
    group = decision.group
    return {
        "entry": knowledge.alarm(group.type),
        "appid": group.appid or "?",
        "nickname": alarm.nickname,
        "reason": decision.reason,
        "window": group.windows,
        "count": group.count,
        "window_minutes": group.window_minutes,
        "previous": decision.previous_count,
        "folded": decision.folded,
        "alarms": group.alarms,
        "first_at": group.first_at,
        "full_at": group.full_at,
        "ack": decision.ack,
    }


def inhibited_context(decision: Decision, knowledge: Knowledge) -> dict[str, object]:
    """The context of ``inhibited``: what a MarkFail covers, oldest first."""
    covers = [
        {"entry": knowledge.alarm(g.type), "alarms": g.alarms, "first_at": g.first_at}
        for g in decision.covers
    ]
    return {
        "entry": knowledge.alarm(decision.group.type),
        "appid": decision.group.appid or "?",
        "covers": covers,
        "first": covers[0],
    }


def escalation_context(decision: Decision, knowledge: Knowledge) -> dict[str, object]:
    """The context of ``escalation``: whom it calls and why."""
    group = decision.group
    return {
        "reason": decision.escalation,
        "entry": knowledge.alarm(group.type),
        "appid": group.appid or "?",
        "owners": list(decision.mentions),
        "windows": group.windows,
    }


def digest_context(digest: Digest, knowledge: Knowledge) -> dict[str, object]:
    """The context of ``digest``: counts by type and the busiest accounts."""
    return {
        "alarms": digest.alarms,
        "replies": digest.replies,
        "accounts": len(digest.appids),
        "since": digest.since,
        "types": [(knowledge.alarm(t), n) for t, n in digest.types.most_common()],
        "top": digest.appids.most_common(DIGEST_TOP),
        "more": max(len(digest.appids) - DIGEST_TOP, 0),
    }


def sample_contexts(knowledge: Knowledge) -> dict[str, dict[str, object]]:
    """One made-up context per template here, for ``kb check``."""
    at = datetime(2014, 12, 1, 20, 12, tzinfo=PLATFORM_TZ)
    appid = "wx0123456789abcdef"
    group = GroupState(
        room="ops",
        appid=appid,
        type="request_timeout",
        first_at=at,
        last_at=at + timedelta(minutes=10),
        window_start=at,
        windows=3,
        count=1840,
        alarms=4,
        full_at=at,
    )
    ack = Ack(1, "ops", appid, None, "张三", at, at + timedelta(days=1))
    silence = Silence(1, "ops", appid, "markfail", "admin", at, at + timedelta(hours=2))
    markfail = GroupState(
        room="ops",
        appid=appid,
        type="markfail",
        first_at=at,
        last_at=at,
        window_start=at,
        full_at=at,
    )
    update = Decision(
        Action.UPDATE, group, "rise", previous_count=310, folded=2, ack=ack
    )
    escalated = Decision(
        Action.FULL, markfail, "first", escalation="severe", mentions=("张三",)
    )
    covering = Decision(Action.FULL, markfail, "first", covers=(group,))
    digest = Digest("ops", at, alarms=37, replies=30)
    digest.appids.update({appid: 5, "wx1123456789abcdef": 3})
    digest.types.update({"request_timeout": 30, "markfail": 7})
    stats = AlarmStats(
        total=37,
        accounts=2,
        by_type={"request_timeout": 30, "markfail": 7},
        top_appids=[(appid, 30), ("wx1123456789abcdef", 7)],
    )
    trend = [WindowCount(at, 37, 2, 1840, ("markfail", "request_timeout"))]
    entry = knowledge.alarm("markfail")
    failure = SendFailure(at, "ops", "alarm", "TimeoutError: ", "🟠【请求超时】…", 3)
    alarm = Alarm(type="request_timeout", appid=appid, nickname="示例公众号")
    return {
        "update": update_context(alarm, update, knowledge),
        "inhibited": inhibited_context(covering, knowledge),
        "escalation": escalation_context(escalated, knowledge),
        "recovered": {
            "entry": entry,
            "appid": appid,
            "first_at": at,
            "last_at": at,
            "alarms": 3,
            "quiet_minutes": 10,
            "ack": ack,
        },
        "digest": digest_context(digest, knowledge),
        "send_failures": {"failures": [failure, failure]},
        "mute": {"error": None, "argument": "", "silence": silence},
        "unmute": {"error": None, "argument": "all", "removed": [silence]},
        "silences": {"error": None, "silences": [silence]},
        "ack": {"error": None, "argument": appid, "ack": ack, "groups": 2},
        "stats": {
            "stats": stats,
            "trend": trend,
            "appid": None,
            "period": "24h",
            "window_minutes": 5,
        },
        "history": {
            "error": None,
            "stats": stats,
            "trend": trend,
            "appid": appid,
            "period": "24h",
            "window_minutes": 5,
        },
        "desk_off": {"command": "mute"},
    }
