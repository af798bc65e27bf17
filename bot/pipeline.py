"""This module wires the bot: Incoming → Dispatcher → store → policy → render → outbox.

``AlarmPipeline.handle`` takes one chat message. Commands and questions to the
bot go to the dispatcher as before and their replies to the outbox. Alarms are
parsed and written to the store first, then the policy decides about each one,
and what it decides to say is rendered (lazily: a reply folded into a digest is
never rendered) and queued in the outbox. ``tick`` runs the policy's timers
(recovery notes). The same object serves ``run``, ``chat`` and ``replay``; only
the channel and the clock differ. ``chat_in_console`` and ``serve_in_wechat`` run
it with its channel, live knowledge reloads and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from bot.alarm import Alarm, parse
from bot.autoprobe import ProbeWorker
from bot.channels.base import Channel, Incoming, Reply
from bot.channels.console import ConsoleChannel, run_console
from bot.commands import REGISTRY, AlarmDesk, CommandContext
from bot.diagnosis import diagnose
from bot.dispatch import Dispatcher, _Loaded
from bot.kbedit import editor_for, reload_loader
from bot.knowledge import Knowledge
from bot.metrics import Metrics, serving
from bot.notices import NoticeWriter
from bot.outbox import Outbox, OutboxLimits, Outgoing
from bot.policy import (
    Ack,
    Action,
    AlarmEvent,
    AlarmPolicy,
    Clock,
    Decision,
    PolicyRules,
    Recovery,
    Silence,
    SystemClock,
    account_of,
)
from bot.settings import Settings
from bot.store import AlarmStats, AlarmStore, StoredAlarm, WindowCount
from bot.watch import ReloadFailed, live_reload

logger = logging.getLogger(__name__)

TICK_S = 15.0
FORGET_EVERY = timedelta(hours=1)


class DeskDispatcher(Dispatcher):
    """The dispatcher, handing commands the room and the alarm desk."""

    desk: AlarmDesk | None = None

    def _context(self, incoming: Incoming, loaded: _Loaded) -> CommandContext:
        # NOTE: Dispatcher builds contexts without the desk; drop this override
        # once Dispatcher takes a desk itself.
        return replace(super()._context(incoming, loaded), desk=self.desk)


def policy_rules(settings: Settings) -> PolicyRules:
    """The policy's knobs from the settings."""
    interval = settings.repeat_interval_minutes
    return PolicyRules(
        repeat_interval=timedelta(minutes=interval) if interval else None,
        owners={k.lower(): tuple(v) for k, v in settings.owners.items()},
        default_owners=tuple(settings.default_owners),
        platform_owners=tuple(settings.platform_owners),
    )


def outbox_limits(settings: Settings) -> OutboxLimits:
    """The outbox's pacing from the settings."""
    pacing = settings.outbox
    return OutboxLimits(
        room_per_minute=pacing.room_per_minute,
        global_per_minute=pacing.global_per_minute,
        room_gap_s=pacing.room_gap_s,
        switch_gap_s=pacing.switch_gap_s,
        message_bytes=pacing.message_bytes,
        reserve=pacing.reserve,
        retry_attempts=pacing.retry_attempts,
    )


@dataclass(frozen=True, slots=True)
class _Handled:
    """One alarm of a message with what became of it."""

    alarm: Alarm
    row: StoredAlarm
    decision: Decision | None


class AlarmPipeline:
    """The bot between its channel and its history; also the commands' desk.

    Build one with ``AlarmPipeline.open``.
    """

    def __init__(
        self,
        dispatcher: DeskDispatcher,
        store: AlarmStore,
        policy: AlarmPolicy,
        outbox: Outbox,
        *,
        clock: Clock,
        metrics: Metrics,
        notices: NoticeWriter,
        prober: ProbeWorker | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.store = store
        self.policy = policy
        self.outbox = outbox
        self.clock = clock
        self.metrics = metrics
        self.notices = notices
        self.prober = prober
        self._forgot_at = clock.now()
        dispatcher.desk = self
        dispatcher.worker = prober

    @classmethod
    def open(
        cls,
        knowledge: Knowledge,
        settings: Settings,
        channel: Channel,
        *,
        clock: Clock | None = None,
        store: AlarmStore | None = None,
        metrics: Metrics | None = None,
        editable: bool = True,
    ) -> AlarmPipeline:
        """Build the pipeline and restore what the store remembers.

        Args:
            knowledge: the knowledge base.
            settings: rooms, admins, owners, pacing, the database path.
            channel: where messages go.
            clock: the time source; the wall clock by default.
            store: the history; by default ``settings.db_path`` (or memory).
            metrics: counters to bump; a fresh set by default.
            editable: whether admins may change the knowledge from the chat
                (``kb set`` …); a replay must not.
        """
        clock = clock or SystemClock()
        store = store or AlarmStore(settings.db_path)
        metrics = metrics or Metrics()
        root = knowledge.root
        dispatcher = DeskDispatcher(
            knowledge,
            lang=settings.lang,
            prefixes=tuple(settings.command_prefixes),
            admins=tuple(settings.admins),
            loader=reload_loader(root, settings),
            editor=editor_for(root, settings, audit=store) if editable else None,
        )
        rules = policy_rules(settings)
        now = clock.now()
        policy = AlarmPolicy(rules, store.load_state(now, rules.forget_after))
        notices = NoticeWriter(lambda: dispatcher.renderer)
        outbox = Outbox(
            channel,
            clock,
            outbox_limits(settings),
            texts=notices,
            journal=store,
            metrics=metrics,
        )
        for pending in store.pending_replies():
            outbox.restore(
                pending.id,
                room=pending.room,
                to=pending.recipient,
                kind=pending.kind,
                text=pending.text,
                mentions=pending.mentions,
                since=pending.queued_at,
                alarms=pending.alarms,
                appids=pending.appids,
                types=pending.types,
            )
        logger.info(
            "pipeline open store=%s groups=%d silences=%d acks=%d pending=%d",
            store.path,
            len(policy.state.groups),
            len(policy.state.silences),
            len(policy.state.acks),
            outbox.depth,
        )
        pipeline = cls(
            dispatcher,
            store,
            policy,
            outbox,
            clock=clock,
            metrics=metrics,
            notices=notices,
            prober=ProbeWorker.from_settings(
                settings, outbox, clock, lambda: dispatcher.renderer
            ),
        )
        pipeline.decide_undecided()
        return pipeline

    def decide_undecided(self) -> None:
        """Decide the alarms recorded just before the bot stopped, so none is
        left unanswered."""
        matcher = self.dispatcher.knowledge.matcher
        now = self.clock.now()
        for row, room, sender, raw in self.store.undecided():
            alarms = parse(raw, matcher)[:1]
            if not alarms:
                self.store.set_disposition(row.id, "unreadable")
                continue
            logger.info("deciding alarm=%d recorded before a restart", row.id)
            incoming = Incoming(room=room or None, sender=sender, text=raw)
            self._decide_all(incoming, alarms, [row], room, now)

    def close(self) -> None:
        """Stop probes in flight, then close the store they would write to."""
        if self.prober is not None:
            self.prober.cancel()
        self.store.close()

    async def post(self, reply: Reply) -> None:
        """Queue ``reply`` in the outbox, e.g. a channel's introduction."""
        self.outbox.submit(
            Outgoing(
                room=reply.room,
                kind=reply.kind,
                body=reply.text,
                mentions=reply.mentions,
                to=reply.to,
            )
        )

    # ------------------------------------------------------------ messages

    def dispatch(self, incoming: Incoming) -> list[Reply]:
        """Handle ``incoming``; the outbox posts the replies, so none are returned.

        This is the shape channels take (``Callable[[Incoming], list[Reply]]``).
        """
        self.handle(incoming)
        return []

    def handle(self, incoming: Incoming) -> None:
        """Record, decide and queue the replies for one chat message."""
        try:
            self._handle(incoming)
        except Exception:
            logger.exception(
                "pipeline crashed room=%s sender=%s", incoming.room, incoming.sender
            )
            self._apologise(incoming)

    def _handle(self, incoming: Incoming) -> None:
        text = incoming.text.strip()
        if not text:
            return
        now = self.clock.now()
        addressed = incoming.mentions_bot or incoming.room is None
        is_command = text.startswith(self.dispatcher.prefixes) or (
            addressed and REGISTRY.is_command_word(text)
        )
        if is_command or addressed:
            self._converse(incoming, text, now, is_command=is_command)
            return
        alarms = parse(text, self.dispatcher.knowledge.matcher)
        if alarms:
            self._on_alarms(incoming, alarms, now)

    def _converse(
        self, incoming: Incoming, text: str, now: datetime, *, is_command: bool
    ) -> None:
        """Commands and questions bypass grouping, but not the store or outbox."""
        if is_command:
            self.store.audit(
                now, incoming.room, incoming.sender, "command", text=text[:200]
            )
        else:
            alarms = parse(text, self.dispatcher.knowledge.matcher)
            if alarms:
                room = incoming.room or ""
                for row in self.store.record_alarms(room, incoming.sender, now, alarms):
                    asked = Action.DUPLICATE if row.is_duplicate else Action.ASKED
                    self.store.set_disposition(row.id, asked.value)
        for reply in self.dispatcher.dispatch(incoming):
            kind = "command" if reply.kind == "alarm" else reply.kind
            self.outbox.submit(
                Outgoing(
                    room=reply.room,
                    kind=kind,
                    body=reply.text,
                    mentions=reply.mentions,
                    to=reply.to,
                )
            )

    def _on_alarms(
        self, incoming: Incoming, alarms: list[Alarm], now: datetime
    ) -> None:
        room = incoming.room or ""
        # Recorded and committed before anything is decided.
        try:
            rows = self.store.record_alarms(room, incoming.sender, now, alarms)
        except Exception:
            # A store that cannot write (disk full, a value SQLite refuses)
            # must not cost the group its diagnosis: answered ungrouped.
            logger.exception(
                "could not record %d alarm(s) room=%s; answering without grouping",
                len(alarms),
                room,
            )
            self._answer_unrecorded(incoming, alarms, now)
            return
        self._decide_all(incoming, alarms, rows, room, now)

    def _answer_unrecorded(
        self, incoming: Incoming, alarms: list[Alarm], now: datetime
    ) -> None:
        # Without the store there is no grouping, but what the room asked for
        # still holds: a muted or acknowledged account stays quiet.
        room = incoming.room or ""
        answered = [
            alarm
            for alarm in alarms
            if self.policy.silence_for(room, account_of(alarm), alarm.type, now) is None
            and self.policy.ack_for(room, account_of(alarm), alarm.type, now) is None
        ]
        if not answered:
            return
        knowledge = self.dispatcher.knowledge
        diagnoses = [diagnose(alarm, knowledge) for alarm in answered]
        reply = self.dispatcher.renderer.alarm_reply(diagnoses)
        self.outbox.submit(
            Outgoing(room=incoming.room, kind="alarm", body=reply, alarms=len(answered))
        )

    def _decide_all(
        self,
        incoming: Incoming,
        alarms: list[Alarm],
        rows: list[StoredAlarm],
        room: str,
        now: datetime,
    ) -> None:
        with self.store.batch():
            handled = [
                self._decide(alarm, row, room, now)
                for alarm, row in zip(alarms, rows, strict=True)
            ]
            reply_id = self._queue_reply(incoming, handled)
            for item in handled:
                decision = item.decision
                action = decision.action if decision else Action.DUPLICATE
                carried = reply_id if action.is_posted else None
                self.store.set_disposition(item.row.id, action.value, carried)
        for item in handled:
            decision = item.decision
            logger.info(
                "alarm room=%s appid=%s type=%s fingerprint=%s decision=%s",
                room,
                account_of(item.alarm) or "-",
                item.alarm.type,
                item.row.fingerprint,
                decision.action.value if decision else Action.DUPLICATE.value,
            )
        if self.prober is not None:  # after the replies: the probes never delay them
            self.prober.on_decisions(i.decision for i in handled if i.decision)

    def _decide(
        self, alarm: Alarm, row: StoredAlarm, room: str, now: datetime
    ) -> _Handled:
        self.metrics.alarms[alarm.type] += 1
        if row.is_duplicate:
            self.metrics.suppressed["duplicate"] += 1
            return _Handled(alarm, row, None)
        decision = self.policy.decide(AlarmEvent.from_alarm(alarm, room, row.id), now)
        self.store.save_group(decision.group)
        if not decision.action.is_posted:
            self.metrics.suppressed[decision.action.value] += 1
        return _Handled(alarm, row, decision)

    def _queue_reply(self, incoming: Incoming, handled: list[_Handled]) -> int | None:
        posted = [
            (item.alarm, item.decision)
            for item in handled
            if item.decision is not None and item.decision.action.is_posted
        ]
        if not posted:
            return None
        mentions = dict.fromkeys(m for _, d in posted for m in d.mentions)
        is_full = any(d.action is Action.FULL for _, d in posted)
        return self.outbox.submit(
            Outgoing(
                room=incoming.room,
                kind="alarm" if is_full else "update",
                body=lambda: self.notices.alarm_reply(posted),
                mentions=tuple(mentions),
                alarms=len(posted),
                appids=tuple(d.group.appid for _, d in posted if d.group.appid),
                types=tuple(d.group.type for _, d in posted),
            )
        )

    def _apologise(self, incoming: Incoming) -> None:
        try:
            text = self.dispatcher.renderer.render("error")
        except Exception:
            logger.exception("the apology template failed too")
            text = "Sorry, something went wrong. / 抱歉，处理出错了。"
        mentions = (incoming.sender_id or incoming.sender,) if incoming.room else ()
        to = (
            None if incoming.room is not None else incoming.sender_id or incoming.sender
        )
        with contextlib.suppress(Exception):
            self.outbox.submit(
                Outgoing(incoming.room, "error", text, mentions=mentions, to=to)
            )

    # ---------------------------------------------------------------- time

    def tick(self) -> None:
        """Post the recovery notes that are due, and forget long-quiet groups."""
        now = self.clock.now()
        recoveries = self.policy.recover(now)
        if recoveries:
            with self.store.batch():
                for recovery in recoveries:
                    self._note_recovery(recovery, now)
        if now - self._forgot_at >= FORGET_EVERY:
            self._forgot_at = now
            forgotten = self.policy.forget(now)
            if forgotten:
                self.store.forget_groups(forgotten)

    def _note_recovery(self, recovery: Recovery, now: datetime) -> None:
        group = recovery.group
        self.store.save_group(group)
        if recovery.cleared:
            self.store.clear_acks(recovery.cleared, now)
        logger.info(
            "recovered room=%s appid=%s type=%s alarms=%d",
            group.room,
            group.appid or "-",
            group.type,
            group.alarms,
        )
        if self.policy.silence_for(group.room, group.appid, group.type, now):
            return  # muted: not a word, not even this one
        self.outbox.submit(
            Outgoing(
                room=group.room,
                kind="recovery",
                body=lambda: self.notices.recovery(recovery, now),
                appids=(group.appid,) if group.appid else (),
            )
        )

    def next_due(self) -> datetime | None:
        """When something is next due: a message to send or a timer."""
        dues = [self.outbox.next_due(), self.policy.next_due()]
        return min((due for due in dues if due is not None), default=None)

    async def run(self) -> None:
        """Send and keep time on the wall clock until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.outbox.run())
            tasks.create_task(self._keep_time())

    async def _keep_time(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                logger.exception("pipeline tick crashed; carrying on")
            await asyncio.sleep(TICK_S)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AlarmPipeline]:
        """Run the outbox and the timers in the background while inside."""
        task = asyncio.create_task(self.run())
        try:
            with self.store.writing_behind():
                yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---------------------------------------------------------------- desk

    def now(self) -> datetime:
        """The pipeline's current time."""
        return self.clock.now()

    def mute(
        self,
        room: str,
        by: str,
        appid: str | None,
        alarm_type: str | None,
        duration: timedelta,
    ) -> Silence:
        """Silence matching alarms in ``room`` for ``duration``."""
        now = self.clock.now()
        silence = Silence(0, room, appid, alarm_type, by, now, now + duration)
        with self.store.transaction():
            silence = self.store.add_silence(silence)
            self.store.audit(
                now,
                room,
                by,
                "mute",
                silence=silence.id,
                appid=appid,
                type=alarm_type,
                until=silence.expires_at.isoformat(),
            )
        self.policy.add_silence(silence)
        logger.info("muted room=%s appid=%s type=%s by=%s", room, appid, alarm_type, by)
        return silence

    def unmute(
        self, room: str, by: str, appid: str | None, alarm_type: str | None
    ) -> list[Silence]:
        """Lift the matching silences (all when both matchers are ``None``)."""
        now = self.clock.now()
        removed = self.policy.remove_silences(room, appid, alarm_type, now)
        with self.store.transaction():
            for silence in removed:
                self.store.remove_silence(silence.id, by, now)
            self.store.audit(now, room, by, "unmute", silences=[s.id for s in removed])
        return removed

    def silences(self, room: str) -> list[Silence]:
        """The room's active silences."""
        return self.policy.active_silences(room, self.clock.now())

    def ack(
        self, room: str, by: str, appid: str, alarm_type: str | None
    ) -> tuple[Ack, int]:
        """Record who handles an account; return the ack and its firing groups."""
        now = self.clock.now()
        ack = Ack(0, room, appid, alarm_type, by, now, now + self.policy.rules.ack_ttl)
        with self.store.transaction():
            ack = self.store.add_ack(ack)
            self.store.audit(now, room, by, "ack", appid=appid, type=alarm_type)
        groups = self.policy.acknowledge(ack, now)
        logger.info("acked room=%s appid=%s type=%s by=%s", room, appid, alarm_type, by)
        return ack, len(groups)

    def stats(
        self, room: str | None, appid: str | None, since: datetime
    ) -> tuple[AlarmStats, list[WindowCount]]:
        """Counts and the window-by-window trend since ``since``."""
        stats = self.store.stats(room=room, appid=appid, since=since)
        trend = self.store.trend(room=room, appid=appid, since=since)
        return stats, trend


async def chat_in_console(
    knowledge: Knowledge, settings: Settings, *, sender: str, banner: str | None
) -> None:
    """Run ``alarm-bot chat`` (and ``run`` without a gateway): the console channel
    behind the whole pipeline, until end of input."""
    channel = ConsoleChannel()
    pipeline = AlarmPipeline.open(knowledge, settings, channel)

    async def tell(problems: list[str]) -> None:
        text = pipeline.dispatcher.renderer.render("reload_failed", problems=problems)
        await channel.say(Reply(room=None, text=text, kind="notice"))

    async def converse() -> None:
        await run_console(
            pipeline.dispatch, sender=sender, banner=banner, out=channel.out
        )
        # At the end of input, what was asked is still answered: the probes in
        # flight (up to their 5 s limit), then every reply queued.
        if pipeline.prober is not None:
            await pipeline.prober.join()
        await pipeline.outbox.join()

    try:
        async with pipeline.running(), serving(pipeline.metrics, settings.http_listen):
            await _reloading(pipeline, settings, converse(), tell)
    finally:
        pipeline.close()


async def serve_in_wechat(knowledge: Knowledge, settings: Settings) -> None:
    """Run ``alarm-bot run`` on the configured Wechaty gateway until SIGTERM.

    The channel hands every message to the pipeline, whose outbox posts the
    replies and the introduction through the channel.

    Raises:
        GatewayError: no gateway is configured, or it rejected the token.
    """
    from bot.channels.wechaty import WechatyChannel, serve  # wechaty takes 1 s

    # NOTE: the channel and the pipeline need each other (messages in, the
    # outbox's sends out), so the channel reaches the pipeline through these
    # lambdas, which only run once both exist.
    pipeline: AlarmPipeline
    channel = WechatyChannel(
        lambda incoming: pipeline.dispatch(incoming),
        settings,
        introduction=lambda: pipeline.dispatcher.renderer.render("intro"),
        post=lambda reply: pipeline.post(reply),
    )
    pipeline = AlarmPipeline.open(knowledge, settings, channel)
    pipeline.metrics.connected = lambda: channel.is_logged_in
    try:
        async with pipeline.running(), serving(pipeline.metrics, settings.http_listen):
            bot = serve(channel, drain=pipeline.outbox.join)
            await _reloading(pipeline, settings, bot, tell_admins(pipeline, settings))
    finally:
        pipeline.close()


def tell_admins(pipeline: AlarmPipeline, settings: Settings) -> ReloadFailed:
    """A failed reload's problems as one direct message to each admin, through
    the outbox."""

    async def tell(problems: list[str]) -> None:
        text = pipeline.dispatcher.renderer.render("reload_failed", problems=problems)
        for admin in dict.fromkeys(settings.admins):
            await pipeline.post(Reply(room=None, to=admin, kind="notice", text=text))

    return tell


async def _reloading(
    pipeline: AlarmPipeline,
    settings: Settings,
    main: Coroutine[Any, Any, object],
    on_reload_failed: ReloadFailed,
) -> None:
    """Run ``main`` with the knowledge reloaded on edits and SIGHUP."""
    await live_reload(
        pipeline.dispatcher,
        main,
        on_reload_failed=on_reload_failed,
        watch=settings.knowledge_watch,
    )
