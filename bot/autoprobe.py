"""This module runs the bot's probes: ``probe``, ``host`` and the alarm follow-ups.

The dispatcher is synchronous and pure, so the commands that wait on the network
or the host hand their slow part to ``ProbeWorker.later``: it runs on the event
loop (the host snapshot in a thread) and its reply goes through the outbox like
any other.

When an alarm is posted for an account whose callback URL is configured, the
worker probes that URL the way the platform pushes, once per ``(room, appid,
type)`` group and window, and posts the verdict as a short follow-up. The
diagnosis never waits for it: it is in the outbox before the probe starts.

Only configured URLs are probed, targets on non-public addresses are refused
unless ``probe_allow_private`` is set, probes are rate-limited per appid, and
the configured secrets are scrubbed from every text the worker posts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from bot.alarm import PLATFORM_TZ
from bot.channels.base import Reply
from bot.commands import Work
from bot.diagnosis import Finding
from bot.host import HostSnapshot, ProcessFiles, assess, take_snapshot
from bot.knowledge import FINDING_VARIABLES, AlarmType, Knowledge, is_alarmless
from bot.outbox import Outgoing
from bot.policy import Clock, Decision, GroupState
from bot.probe import (
    ADDRESS_KINDS,
    DEFAULT_LIMITS,
    MessageMode,
    ProbeLimits,
    ProbeResult,
    ProbeTarget,
    RateLimiter,
    TargetRefusedError,
    Timings,
    Verdict,
    probe_url,
)
from bot.render import ReplyRenderer
from bot.settings import Settings

logger = logging.getLogger(__name__)

PROBED_TYPES = frozenset(
    {
        "request_timeout",
        "invalid_response",
        "connect_timeout",
        "dns_failure",
        "dns_timeout",
        "markfail",
    }
)
"""The alarms about pushes to the account's own URL; only these are probed."""

REPRODUCED_BY = {
    "request_timeout": Verdict.REQUEST_TIMEOUT,
    "invalid_response": Verdict.INVALID_RESPONSE,
    "connect_timeout": Verdict.CONNECT_TIMEOUT,
    "dns_failure": Verdict.DNS_FAILURE,
    "dns_timeout": Verdict.DNS_FAILURE,
}
"""The verdict that reproduces each alarm type; MarkFail has none of its own."""

SHARE_FOR = timedelta(seconds=60)
"""A follow-up probe serves every group of its account that asks this soon."""

PROBE_OVERALL = 20
"""Probes in all per minute, whatever ``probe_per_minute`` allows per appid."""

BODY_CHARS = 80
_FORGET_AFTER = timedelta(hours=1)
_REDACTED = "***"
_ANYWHERE = 8
"""Secrets this long are scrubbed even inside other text."""


class ReplyQueue(Protocol):
    """Where the worker's texts go: ``bot.outbox.Outbox``."""

    def submit(self, item: Outgoing) -> int | None:
        """Queue ``item``; return the id of the reply that carries it."""
        ...


class ProbeWorker:
    """Runs probes and host snapshots off the dispatcher; posts through the outbox.

    Args:
        targets: the configured callback URLs by appid (lower case).
        outbox: where replies and follow-ups go.
        clock: the pipeline's clock; it also paces the rate limit.
        renderer: returns the renderer now serving (it changes on reload).
        allow_private: probe targets on loopback and private addresses too.
        per_minute: probes per appid within 60 seconds.
        limits: the platform's time limits; tests shrink them.
    """

    def __init__(
        self,
        targets: Mapping[str, ProbeTarget],
        outbox: ReplyQueue,
        clock: Clock,
        renderer: Callable[[], ReplyRenderer],
        *,
        allow_private: bool = False,
        per_minute: int = 3,
        limits: ProbeLimits = DEFAULT_LIMITS,
    ) -> None:
        self._targets = dict(targets)
        self._outbox = outbox
        self._clock = clock
        self._renderer = renderer
        self._allow_private = allow_private
        self._limits = limits
        self._limiter = RateLimiter(
            per_key=per_minute,
            overall=max(per_minute, PROBE_OVERALL),
            clock=lambda: clock.now().timestamp(),
        )
        self._secrets = secret_pattern(
            s for t in targets.values() for s in (t.token, t.aes_key) if s
        )
        self._probed: dict[tuple[str, str, str], datetime] = {}
        self._shared: dict[str, tuple[datetime, asyncio.Task[ProbeResult]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        outbox: ReplyQueue,
        clock: Clock,
        renderer: Callable[[], ReplyRenderer],
    ) -> ProbeWorker:
        """Build the worker from the ``probes`` and ``probe_*`` settings."""
        return cls(
            {appid: entry.target(appid) for appid, entry in settings.probes.items()},
            outbox,
            clock,
            renderer,
            allow_private=settings.probe_allow_private,
            per_minute=settings.probe_per_minute,
        )

    # ------------------------------------------------------------ commands

    @property
    def appids(self) -> tuple[str, ...]:
        """The appids whose callback URL is configured, sorted."""
        return tuple(sorted(self._targets))

    def acquire(self, appid: str) -> float:
        """Take a probe slot for ``appid``: 0.0, or the seconds until one frees."""
        return self._limiter.acquire(appid)

    async def probe(self, appid: str) -> ProbeResult:
        """Probe ``appid``'s configured URL now; the caller took a slot.

        Raises:
            KeyError: no URL is configured for ``appid``.
            TargetRefusedError: the URL resolves to a refused address.
        """
        return await probe_url(
            self._targets[appid],
            allow_private=self._allow_private,
            limits=self._limits,
        )

    async def probe_report(self, appid: str, renderer: ReplyRenderer) -> str:
        """Probe ``appid``'s configured URL and render the verdict (``probe``)."""
        try:
            result = await self.probe(appid)
        except TargetRefusedError as exc:
            return renderer.render(
                "probe_refused",
                error="private",
                appid=appid,
                appids=list(self.appids),
                wait_s=0,
                address=exc.address,
                kind=exc.kind,
            )
        return renderer.render("probe", **probe_context(appid, result, renderer))

    async def host_report(self, renderer: ReplyRenderer) -> str:
        """Read this host's state in a thread and render it (``host``)."""
        snapshot = await asyncio.to_thread(take_snapshot)
        return renderer.render("host", **host_context(snapshot, renderer))

    def later(self, work: Work, reply: Reply) -> None:
        """Run ``work`` on the event loop and post its text as ``reply``."""
        self._spawn(lambda: self._answer(work, reply), "command")

    async def _answer(self, work: Work, reply: Reply) -> None:
        try:
            text = await work()
        except Exception:
            logger.exception("command crashed room=%s", reply.room)
            text = self._apology()
        self._post(
            Outgoing(
                room=reply.room,
                kind=reply.kind,
                body=self.redact(text),
                mentions=reply.mentions,
                to=reply.to,
            )
        )

    # ------------------------------------------------------------ alarms

    def on_decisions(self, decisions: Iterable[Decision]) -> None:
        """Probe the accounts of the alarms just posted: the pipeline's hook.

        Never raises and never waits: the probes run in the background and
        their verdicts follow the replies already queued.
        """
        if not self._targets:
            return
        try:
            for decision in decisions:
                self._consider(decision)
        except Exception:
            logger.exception("autoprobe could not start")

    def _consider(self, decision: Decision) -> None:
        group = decision.group
        if (
            not decision.action.is_posted
            or group.type not in PROBED_TYPES
            or group.appid not in self._targets
        ):
            return
        now = self._clock.now()
        last = self._probed.get(group.key)
        if last is not None and now - last < group.window:
            logger.debug("autoprobe done this window appid=%s", group.appid)
            return
        if self._spawn(lambda: self._follow_up(group), "follow-up"):
            self._probed[group.key] = now
            self._forget(now)

    async def _follow_up(self, group: GroupState) -> None:
        try:
            result = await self._shared_probe(group.appid)
        except TargetRefusedError:
            return  # the probe logged why; a refusal each window is only noise
        if result is None:
            logger.info("autoprobe rate-limited appid=%s", group.appid)
            return
        renderer = self._renderer()
        text = renderer.render(
            "probe_followup", **followup_context(group, result, renderer)
        )
        logger.info(
            "autoprobe room=%s appid=%s type=%s verdict=%s total_ms=%s",
            group.room,
            group.appid,
            group.type,
            result.verdict.value,
            result.timings.total,
        )
        self._post(
            Outgoing(
                room=group.room,
                kind="probe",
                body=self.redact(text),
                appids=(group.appid,),
                types=(group.type,),
            )
        )

    async def _shared_probe(self, appid: str) -> ProbeResult | None:
        now = self._clock.now()
        shared = self._shared.get(appid)
        if shared is None or now - shared[0] > SHARE_FOR:
            if self._limiter.acquire(appid) > 0:
                return None
            task = asyncio.get_running_loop().create_task(self.probe(appid))
            self._track(task)
            shared = self._shared[appid] = (now, task)
        # NOTE: shielded: one waiter cancelled must not cancel the others' probe.
        return await asyncio.shield(shared[1])

    def _forget(self, now: datetime) -> None:
        if len(self._probed) > 256:
            self._probed = {
                key: at for key, at in self._probed.items() if now - at < _FORGET_AFTER
            }

    # ------------------------------------------------------------ plumbing

    def redact(self, text: str) -> str:
        """Replace every configured token and key in ``text`` with ``***``.

        A misconfigured server may echo its token in an error page; the probe's
        findings quote the body, so the scrub runs on every text posted.
        """
        if self._secrets is None:
            return text
        return self._secrets.sub(_REDACTED, text)

    async def join(self) -> None:
        """Wait until every probe, snapshot and follow-up running now is done."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        """Stop the work in flight (at shutdown); nothing more is posted."""
        for task in self._tasks:
            task.cancel()

    def _spawn(self, start: Callable[[], Coroutine[Any, Any, None]], what: str) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.warning("no event loop: %s skipped", what)
            return False
        self._track(loop.create_task(self._guarded(start(), what)))
        return True

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await work
        except Exception:
            logger.exception("%s crashed", what)

    def _post(self, item: Outgoing) -> None:
        try:
            self._outbox.submit(item)
        except Exception:
            logger.exception("could not queue reply room=%s", item.room)

    def _apology(self) -> str:
        try:
            return self._renderer().render("error")
        except Exception:
            logger.exception("the apology template failed too")
            return "Sorry, something went wrong. / 抱歉，处理出错了。"


def secret_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern for ``secrets`` in texts, also where a quote was cut short.

    The probe quotes an answer only up to a length and marks the cut with an
    ellipsis, so a secret near the end may show as a prefix before ``...``,
    ``…`` or the end of a line: such prefixes of 4 characters or more match too.
    A short secret inside a longer word (``abc`` in ``abcdef``) is left alone.
    """
    # Longest first, so a secret that contains another is matched whole.
    ordered = sorted(set(secrets), key=len, reverse=True)
    if not ordered:
        return None
    # A short token may be a piece of a common word ("TTP" of "HTTP"): it is
    # scrubbed only where it stands alone. A longer one is scrubbed wherever it
    # is, glued to other text too: servers echo WeChat's signature input, the
    # timestamp, nonce and token joined without a separator.
    alone = r"(?<![A-Za-z0-9])"
    whole = [
        re.escape(secret)
        if len(secret) >= _ANYWHERE
        else alone + re.escape(secret) + r"(?![A-Za-z0-9])"
        for secret in ordered
    ]
    cut = [alone + _prefixes(secret, 4) + r"(?=\.\.\.|…|$)" for secret in ordered]
    return re.compile("|".join(whole + cut), re.MULTILINE)


def _prefixes(secret: str, least: int) -> str:
    tail = ""
    for char in reversed(secret[least:]):
        tail = f"(?:{re.escape(char)}{tail})?"
    return re.escape(secret[:least]) + tail


# -------------------------------------------------------------- contexts


def probe_context(
    appid: str | None, result: ProbeResult, renderer: ReplyRenderer
) -> dict[str, object]:
    """The context of ``probe``: the verdict, timings, answer and findings.

    ``appid`` is None when the probe was not of a configured account (the
    command line). ``outcome`` is the first finding, what the URL did;
    ``findings`` are the others; both rendered in the renderer's language.
    """
    rendered = [renderer.finding(finding) for finding in result.findings]
    return {
        "appid": appid,
        "result": result,
        "verdict": _verdict_entry(result, renderer.knowledge),
        "body": shorten(result.body),
        "outcome": rendered[0],
        "findings": rendered[1:],
    }


def followup_context(
    group: GroupState, result: ProbeResult, renderer: ReplyRenderer
) -> dict[str, object]:
    """The context of ``probe_followup``: whether the probe reproduced the alarm."""
    expected = REPRODUCED_BY.get(group.type)
    return {
        "appid": group.appid,
        "entry": renderer.knowledge.alarm(group.type),
        "result": result,
        "verdict": _verdict_entry(result, renderer.knowledge),
        "reproduced": None if expected is None else result.verdict is expected,
        "outcome": renderer.finding(result.outcome),
        "body": shorten(result.body),
    }


def host_context(snapshot: HostSnapshot, renderer: ReplyRenderer) -> dict[str, object]:
    """The context of ``host``: the snapshot, sizes in GiB and what stands out."""
    return {
        "snapshot": snapshot,
        "gib": {
            name: f"{getattr(snapshot, name) / 2**30:.1f}"
            for name in (
                "memory_total",
                "memory_available",
                "swap_total",
                "swap_used",
            )
        },
        "findings": [renderer.finding(finding) for finding in assess(snapshot)],
    }


def probe_json(
    result: ProbeResult, renderer: ReplyRenderer, appid: str | None = None
) -> dict[str, object]:
    """The ``probe --json`` object: the data, the findings and the reply as text.

    ``findings`` holds the findings' texts in the renderer's language, what the
    URL did first; ``finding_ids`` their ids, for machines.
    """
    data = result.to_json()
    data["findings"] = [str(renderer.finding(f)["text"]) for f in result.findings]
    data["reply"] = renderer.render("probe", **probe_context(appid, result, renderer))
    return data


def host_json(snapshot: HostSnapshot, renderer: ReplyRenderer) -> dict[str, object]:
    """The ``host --json`` object: the snapshot, its findings and the reply."""
    data = snapshot.to_json()
    data["findings"] = [str(renderer.finding(f)["text"]) for f in assess(snapshot)]
    data["reply"] = renderer.render("host", **host_context(snapshot, renderer))
    return data


def shorten(body: str | None, limit: int = BODY_CHARS) -> str | None:
    """The answer on one line, cut to ``limit`` characters for the chat."""
    if body is None:
        return None
    line = " ".join(body.split())
    return line if len(line) <= limit else line[:limit] + "…"


def _verdict_entry(result: ProbeResult, knowledge: Knowledge) -> AlarmType | None:
    # The verdicts other than ok are alarm types: their names are in the knowledge.
    return None if result.is_ok else knowledge.alarm(result.verdict.value)


def sample_contexts(renderer: ReplyRenderer) -> dict[str, list[dict[str, object]]]:
    """Made-up contexts for each template here, one per branch, for ``kb check``.

    One probe result carries every finding the probe and ``host`` may show, so
    each wording is rendered the way those replies render it, without an alarm.
    """
    appid = "wx0123456789abcdef"
    port = Finding("url_bad_port", {"port": "8080", "url": "https://wx.example.com"})
    invalid = ProbeResult(
        verdict=Verdict.INVALID_RESPONSE,
        findings=(
            Finding("quoted_success", {"content": '"success"', "length": "9"}),
            port,
        ),
        timings=Timings(dns=12, connect=20, first_byte=37, total=38),
        status=200,
        response_length=9,
        body='"success"',
        url="https://wx.example.com:8080/wechat",
        address="203.0.113.7",
        check="push",
        mode=MessageMode.SAFE,
    )
    ok = dataclasses.replace(
        invalid,
        verdict=Verdict.OK,
        findings=(Finding("probe_answered_success"),),
        check="verify",
    )
    silent = dataclasses.replace(
        invalid,
        verdict=Verdict.CONNECT_TIMEOUT,
        findings=(Finding("probe_connect_timeout", {"limit": "3"}), port),
        timings=Timings(dns=12, total=3012),
        status=None,
        response_length=None,
        body=None,
    )
    knowledge = renderer.knowledge
    every = dataclasses.replace(
        invalid,
        findings=tuple(
            Finding(fid, {name: "x" for name in FINDING_VARIABLES[fid]})
            for fid in knowledge.findings
            if is_alarmless(fid)
        ),
    )
    at = datetime(2014, 12, 1, 20, 12, tzinfo=PLATFORM_TZ)
    groups = [
        GroupState("ops", appid, alarm_type, at, at, at)
        for alarm_type in ("invalid_response", "request_timeout", "markfail")
    ]
    snapshot = HostSnapshot(
        taken_at=at.timestamp(),
        cpu_count=4,
        load=(6.2, 3.1, 1.5),
        memory_total=8 * 2**30,
        memory_available=2**29,
        swap_total=2**31,
        swap_used=2**28,
        system_files=(2400, 800000),
        fd_limit=(1024, 4096),
        processes=(ProcessFiles("nginx", 1201, 1000, 1024),),
        tcp_states={"ESTABLISHED": 180, "TIME_WAIT": 25000, "SYN_RECV": 150},
        tcp_error=None,
    )
    quiet = dataclasses.replace(
        snapshot,
        load=(0.1, 0.1, 0.1),
        memory_available=6 * 2**30,
        system_files=None,
        fd_limit=(65535, 65535),
        processes=(ProcessFiles("nginx", 1201, None, None),),
        tcp_states={},
        tcp_error="AccessDenied",
    )
    refused = {
        "appid": appid,
        "appids": [appid],
        "wait_s": 42,
        "address": "",
        "kind": "",
    }
    return {
        "probe": [
            probe_context(name, result, renderer)
            for name in (appid, None)
            for result in (invalid, ok, silent, every)
        ],
        "probe_followup": [
            followup_context(group, result, renderer)
            for group in groups
            for result in (invalid, ok, silent)
        ],
        "probe_refused": [
            {**refused, "error": "usage"},
            {**refused, "error": "url"},
            {**refused, "error": "unknown"},
            {**refused, "error": "unknown", "appids": []},
            {**refused, "error": "rate"},
            *(
                {**refused, "error": "private", "address": "10.0.0.5", "kind": kind}
                for kind in ADDRESS_KINDS
            ),
            {**refused, "error": "private", "kind": "bad_port"},
            {**refused, "error": "private", "kind": "not_http"},
        ],
        "host": [host_context(snapshot, renderer), host_context(quiet, renderer)],
    }
