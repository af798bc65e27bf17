"""Tests for bot.autoprobe: the worker behind /probe, /host and the follow-ups.

The callback URLs are real HTTP servers on 127.0.0.1; the outbox is a list.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from bot.alarm import PLATFORM_TZ
from bot.autoprobe import (
    ProbeWorker,
    followup_context,
    secret_pattern,
    shorten,
)
from bot.channels.base import Incoming, Reply
from bot.diagnosis import Finding
from bot.dispatch import Dispatcher
from bot.knowledge import Knowledge
from bot.outbox import Outgoing
from bot.policy import Action, Decision, GroupState, SimulatedClock
from bot.probe import MessageMode, ProbeResult, ProbeTarget, Timings, Verdict
from bot.render import ReplyRenderer
from tests.httpserver import HttpServer, Received, http_response, replying

START = datetime(2024, 5, 1, 12, 0, tzinfo=PLATFORM_TZ)
APPID = "wx00000000000000ab"
TOKEN = "autoprobeT0kenS3cret"


@dataclass
class ListOutbox:
    """Keeps what the worker queues."""

    items: list[Outgoing] = field(default_factory=list)

    def submit(self, item: Outgoing) -> int | None:
        self.items.append(item)
        return None

    @property
    def texts(self) -> list[str]:
        return [item.text() for item in self.items]


@pytest.fixture
def outbox() -> ListOutbox:
    return ListOutbox()


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


def make_worker(
    knowledge: Knowledge,
    outbox: ListOutbox,
    clock: SimulatedClock,
    server: HttpServer | None,
    *,
    allow_private: bool = True,
    per_minute: int = 3,
) -> ProbeWorker:
    targets = {}
    if server is not None:
        targets[APPID] = ProbeTarget(url=server.url(), token=TOKEN, appid=APPID)
    renderer = ReplyRenderer(knowledge, "zh")
    return ProbeWorker(
        targets,
        outbox,
        clock,
        lambda: renderer,
        allow_private=allow_private,
        per_minute=per_minute,
    )


def posted(
    alarm_type: str = "invalid_response",
    appid: str = APPID,
    action: Action = Action.FULL,
) -> Decision:
    return Decision(
        action, GroupState("ops", appid, alarm_type, START, START, START), "first"
    )


# ---- follow-ups


async def test_one_probe_serves_every_group_of_an_account(
    knowledge, outbox, clock, serve
) -> None:
    server = await serve(replying(body='"success"'))
    worker = make_worker(knowledge, outbox, clock, server)

    worker.on_decisions([posted("invalid_response"), posted("request_timeout")])
    await worker.join()

    assert len(server.received) == 1
    first, second = outbox.items
    assert (first.room, first.kind, first.appids, first.types) == (
        "ops",
        "probe",
        (APPID,),
        ("invalid_response",),
    )
    assert "自动探测：已复现" in first.text()
    assert second.types == ("request_timeout",)
    assert "自动探测：未复现，但发现了回应失败" in second.text()
    # The alarm reply's own words for a quoted "success", on the second line.
    for item in (first, second):
        line = item.text().splitlines()[1]
        assert line.startswith('回包是带双引号的 "success"（9 字节）')
        assert line.endswith(f"完整结果：/probe {APPID}")


async def test_a_later_window_probes_again(knowledge, outbox, clock, serve) -> None:
    server = await serve(replying(body="success"))
    worker = make_worker(knowledge, outbox, clock, server)

    worker.on_decisions([posted()])
    await worker.join()
    clock.advance(60)
    worker.on_decisions([posted()])
    await worker.join()
    clock.advance(300)
    worker.on_decisions([posted()])
    await worker.join()

    assert len(outbox.items) == 2
    assert len(server.received) == 2


@pytest.mark.parametrize(
    "decision",
    [
        posted(action=Action.FOLD),
        posted(action=Action.SILENCED),
        posted(action=Action.INHIBITED),
        posted("ticket_timeout"),
        posted("unknown"),
        posted(appid="wx00000000000000cd"),
    ],
    ids=["folded", "silenced", "inhibited", "ticket", "unknown", "unconfigured"],
)
async def test_alarms_not_posted_or_not_about_the_url_are_not_probed(
    knowledge, outbox, clock, serve, decision
) -> None:
    server = await serve(replying(body="success"))
    worker = make_worker(knowledge, outbox, clock, server)

    worker.on_decisions([decision])
    await worker.join()

    assert outbox.items == []
    assert server.received == []


def test_without_an_event_loop_the_hook_starts_nothing(
    knowledge, outbox, clock, caplog
) -> None:
    worker = ProbeWorker(
        {APPID: ProbeTarget(url="http://127.0.0.1:9/wx", token=TOKEN)},
        outbox,
        clock,
        lambda: ReplyRenderer(knowledge),
    )

    worker.on_decisions([posted()])

    assert outbox.items == []
    assert "no event loop: follow-up skipped" in caplog.text


async def test_a_refused_target_gets_no_follow_up(
    knowledge, outbox, clock, serve, caplog
) -> None:
    server = await serve(replying(body="success"))
    worker = make_worker(knowledge, outbox, clock, server, allow_private=False)

    worker.on_decisions([posted()])
    await worker.join()

    assert outbox.items == []
    assert server.received == []
    assert "probe refused url=" in caplog.text


async def test_a_rate_limited_account_gets_no_follow_up(
    knowledge, outbox, clock, serve, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="bot.autoprobe")
    server = await serve(replying(body="success"))
    worker = make_worker(knowledge, outbox, clock, server, per_minute=1)
    assert worker.acquire(APPID) == 0.0

    worker.on_decisions([posted()])
    await worker.join()

    assert outbox.items == []
    assert f"autoprobe rate-limited appid={APPID}" in caplog.text


# ---- commands


async def test_a_crashing_command_is_answered_with_the_apology(
    knowledge, outbox, clock, caplog
) -> None:
    worker = make_worker(knowledge, outbox, clock, None)

    async def broken() -> str:
        raise RuntimeError("boom")

    worker.later(broken, Reply(room="ops", text="", mentions=("admin",)))
    await worker.join()

    (item,) = outbox.items
    assert item.text() == ReplyRenderer(knowledge).render("error")
    assert item.mentions == ("admin",)
    assert item.kind == "command"
    assert "command crashed room=ops" in caplog.text


async def test_cancel_stops_the_work_in_flight(knowledge, outbox, clock, serve) -> None:
    async def silent(request: Received) -> bytes:
        await asyncio.sleep(30)
        return http_response(200, "success")

    server = await serve(silent)
    worker = make_worker(knowledge, outbox, clock, server)
    worker.later(
        lambda: worker.probe_report(APPID, ReplyRenderer(knowledge)),
        Reply(room="ops", text=""),
    )
    while not server.received:
        await asyncio.sleep(0.01)

    worker.cancel()
    await worker.join()

    assert outbox.items == []


@pytest.mark.parametrize("command", ["/probe wx00000000000000ab", "/host"])
def test_probe_and_host_need_the_running_bot(
    knowledge: Knowledge, command: str
) -> None:
    dispatcher = Dispatcher(knowledge, admins=("admin",))

    (reply,) = dispatcher.dispatch(Incoming(room="ops", sender="admin", text=command))

    assert "只在机器人运行时可用" in reply.text


# ---- texts


def test_secret_pattern_matches_whole_and_cut_secrets() -> None:
    pattern = secret_pattern([TOKEN, "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"])
    assert pattern is not None

    def scrub(text: str) -> str:
        return pattern.sub("***", text)

    assert scrub(f"token {TOKEN}!") == "token ***!"
    assert scrub("answered 'expected autoprobeT0...'") == "answered 'expected ***...'"
    assert scrub("key abcdefghijklmnop…") == "key ***…"
    assert scrub("ends with autoprob\nnext") == "ends with ***\nnext"
    assert scrub("a short abc…") == "a short abc…"
    assert scrub("autoprobe is a word here") == "autoprobe is a word here"
    assert secret_pattern([]) is None


def test_a_short_token_is_scrubbed_only_where_it_stands_alone() -> None:
    # A three-letter token is also a piece of many words: "HTTP" must not
    # become "H***P" when the token is "TTP".
    pattern = secret_pattern(["TTP"])
    assert pattern is not None
    scrubbed = pattern.sub("***", "HTTP 500, token=TTP, TTP.")
    assert scrubbed == "HTTP 500, token=***, ***."


def test_a_long_token_glued_to_other_text_is_scrubbed() -> None:
    # A debugging server echoes the signature input: timestamp, nonce, token.
    pattern = secret_pattern(["mytoken123"])
    assert pattern is not None
    assert (
        pattern.sub("***", "tmpStr=1409659589263875mytoken123")
        == "tmpStr=1409659589263875***"
    )


def test_shorten_keeps_one_line_and_cuts_long_bodies() -> None:
    assert shorten(None) is None
    assert shorten(' "success"\n') == '"success"'
    assert shorten("x" * 100, 10) == "x" * 10 + "…"


@pytest.mark.parametrize(
    ("alarm_type", "verdict", "reproduced", "zh"),
    [
        ("invalid_response", Verdict.INVALID_RESPONSE, True, "自动探测：已复现（"),
        ("dns_timeout", Verdict.DNS_FAILURE, True, "自动探测：已复现（"),
        ("request_timeout", Verdict.OK, False, "未复现，URL 现在回应正常（"),
        (
            "connect_timeout",
            Verdict.REQUEST_TIMEOUT,
            False,
            "未复现，但发现了请求超时（",
        ),
        ("markfail", Verdict.INVALID_RESPONSE, None, "自动探测：结论是回应失败（"),
        ("markfail", Verdict.OK, None, "自动探测：URL 现在回应正常（"),
    ],
)
def test_the_follow_up_says_whether_the_verdict_reproduces_the_alarm(
    knowledge: Knowledge,
    alarm_type: str,
    verdict: Verdict,
    reproduced: bool | None,
    zh: str,
) -> None:
    group = GroupState("ops", APPID, alarm_type, START, START, START)
    result = ProbeResult(
        verdict=verdict,
        findings=(Finding("probe_answered_success"),),
        timings=Timings(total=5),
        status=200,
        response_length=7,
        body="success",
        url="http://x/",
        address="203.0.113.1",
        check="push",
        mode=MessageMode.PLAIN,
    )

    renderer = ReplyRenderer(knowledge, "zh")
    context = followup_context(group, result, renderer)
    text = renderer.render("probe_followup", **context)

    assert context["reproduced"] is reproduced
    assert zh in text
    assert (
        text.splitlines()[1]
        == f"URL 回了 success，平台会接受。完整结果：/probe {APPID}"
    )
    english = ReplyRenderer(knowledge, "en")
    english.render("probe_followup", **followup_context(group, result, english))
