"""The chat side of probing: ``/probe``, ``/host`` and the follow-up after an alarm.

Real HTTP servers on 127.0.0.1 play the account's callback URL; the pipeline runs
on the simulated clock, and ``settle`` waits for the background work.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from bot.knowledge import Knowledge
from bot.probe import sign
from tests.httpserver import Handler, HttpServer, Received, http_response, replying

from ..test_probe import english_runs
from .conftest import BotHarness, Said, make_bot
from .storm import START, alarm_text

APPID = "wx00000000000000ab"
OTHER = "wx00000000000000cd"
TOKEN = "chatProbeT0kenS3cret"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def signed_success(token: str = TOKEN) -> Handler:
    """A correct server: checks the platform's signature, answers success."""

    async def handler(request: Received) -> bytes:
        q = request.query
        if q.get("signature") != sign(token, q["timestamp"], q["nonce"]):
            return http_response(403, "bad signature")
        return http_response(200, "success")

    return handler


def probing_bot(
    knowledge: Knowledge, server: HttpServer, **settings: Any
) -> BotHarness:
    values: dict[str, Any] = {
        "probes": {APPID: {"url": server.url(), "token": TOKEN}},
        "probe_allow_private": True,
        **settings,
    }
    return make_bot(knowledge, **values)


async def settle(bot: BotHarness) -> list[Said]:
    """Wait for the probes and snapshots in flight, then send what they queued."""
    assert bot.pipeline.prober is not None
    await bot.pipeline.prober.join()
    return await bot.advance(10)


async def ask(bot: BotHarness, command: str, sender: str = "admin") -> list[Said]:
    """Post a command; return what was said at once and after the work."""
    said = await bot.post(command, sender=sender)
    return said + await settle(bot)


# ---- /probe


async def test_probe_of_a_url_answering_quoted_success_reports_invalid_response(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(replying(body='"success"'))
    bot = probing_bot(knowledge, server)

    (reply,) = await ask(bot, f"/probe {APPID}")

    assert f"🔎 探测 {APPID}：{server.url()}（明文模式）" in reply.text
    assert "❌ 结论：回应失败" in reply.text
    assert '详情：回包是带双引号的 "success"（9 字节）' in reply.text
    assert "➜ 返回不带引号的 7 字节纯文本 success" in reply.text
    assert '回包：HTTP 200，9 字节："success"' in reply.text
    assert "总计 " in reply.text
    assert f"用的是 {server.port} 端口，平台只支持 80 和 443" in reply.text
    assert english_runs(reply.text, [server.url(), '"success"']) == []
    assert reply.mentions == ("admin",)
    assert len(server.received) == 1


async def test_probe_of_a_correct_url_is_ok_in_english(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(signed_success())
    bot = probing_bot(knowledge, server, lang="en")

    (reply,) = await ask(bot, f"/probe {APPID.upper()}")

    assert "✅ Verdict: ok, the platform would accept this answer." in reply.text
    assert "Detail: The URL answered success, which the platform accepts." in (
        reply.text
    )
    assert "Answer: HTTP 200, 7 bytes: success" in reply.text
    assert "Timings: " in reply.text


async def test_probe_sends_the_configured_mode_and_event(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(replying(body="success"))
    probes = {
        APPID: {
            "url": server.url(),
            "token": TOKEN,
            "aes_key": AES_KEY,
            "mode": "compatible",
            "event": "CLICK",
        }
    }
    bot = make_bot(knowledge, probes=probes, probe_allow_private=True)

    (reply,) = await ask(bot, f"/探测 {APPID}")

    assert "（兼容模式）" in reply.text
    (request,) = server.received
    assert request.query["encrypt_type"] == "aes"
    assert b"<Event><![CDATA[CLICK]]></Event>" in request.body


async def test_members_may_not_probe(knowledge: Knowledge, serve) -> None:
    server = await serve(replying(body="success"))
    bot = probing_bot(knowledge, server)

    (reply,) = await ask(bot, f"/probe {APPID}", sender="bob")

    assert reply.text == "抱歉，/probe 只有管理员能用，请找管理员 admin 操作。"
    assert server.received == []


async def test_an_unknown_appid_is_refused_with_the_configured_ones(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(replying(body="success"))
    bot = probing_bot(knowledge, server)

    (reply,) = await ask(bot, f"/probe {OTHER}")

    assert reply.text == (
        f"{OTHER} 没有配置回调 URL，没法探测。已配置的 appid：{APPID}。"
    )
    assert server.received == []


@pytest.mark.parametrize(
    "argument",
    ["{url}", "{host}", f"{APPID} {{url}}", "127.0.0.1"],
)
async def test_a_url_from_the_chat_is_never_probed(
    knowledge: Knowledge, serve, argument: str
) -> None:
    configured = await serve(replying(body="success"))
    elsewhere = await serve(replying(body="success"))
    bot = probing_bot(knowledge, configured)
    typed = argument.format(url=elsewhere.url(), host=f"127.0.0.1:{elsewhere.port}")

    (reply,) = await ask(bot, f"/probe {typed}")

    assert reply.text.startswith("为安全起见，我只探测设置里配置好的回调 URL")
    assert APPID in reply.text
    assert elsewhere.received == configured.received == []


async def test_probe_without_configured_urls_says_how_to_configure_them(
    knowledge: Knowledge,
) -> None:
    bot = make_bot(knowledge)

    (reply,) = await ask(bot, f"/probe {APPID}")

    assert "目前没有配置任何回调 URL（设置项 probes，或环境变量 ALARM_BOT_PROBES）" in (
        reply.text
    )


async def test_probe_without_an_appid_shows_the_usage(
    knowledge: Knowledge, serve
) -> None:
    bot = probing_bot(knowledge, await serve(replying(body="success")))

    (reply,) = await ask(bot, "/probe")

    assert reply.text.startswith("用法：/probe <appid>")


async def test_probes_are_rate_limited_per_appid(knowledge: Knowledge, serve) -> None:
    server = await serve(replying(body="success"))
    bot = probing_bot(knowledge, server, probe_per_minute=2)

    for _ in range(2):
        (reply,) = await ask(bot, f"/probe {APPID}")
        assert "✅ 结论：正常" in reply.text
    (refused,) = await ask(bot, f"/probe {APPID}")

    assert refused.text.startswith(f"{APPID} 刚刚探测过几次")
    assert "秒后再试" in refused.text
    assert len(server.received) == 2
    await bot.advance(60)
    (again,) = await ask(bot, f"/probe {APPID}")
    assert "✅ 结论：正常" in again.text


async def test_a_private_target_is_refused_without_the_setting(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(replying(body="success"))
    bot = probing_bot(knowledge, server, probe_allow_private=False)

    (reply,) = await ask(bot, f"/probe {APPID}")

    assert reply.text == (
        f"不探测 {APPID}：它的 URL 指向非公网地址（127.0.0.1 是回环地址），"
        "平台也推不到那里。如果确实是测试环境，可在设置里打开 probe_allow_private。"
    )
    assert server.received == []


async def test_a_configured_url_with_a_bad_port_is_refused_in_words(
    knowledge: Knowledge,
) -> None:
    probes = {APPID: {"url": "http://127.0.0.1:99999/wx", "token": TOKEN}}
    bot = make_bot(knowledge, probes=probes, probe_allow_private=True)

    (reply,) = await ask(bot, f"/probe {APPID}")

    assert reply.text == (
        f"不探测 {APPID}：设置里它的 URL 端口无效，请先改正设置项 probes。"
    )


async def test_secrets_never_reach_the_reply_or_the_logs(
    knowledge: Knowledge, serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def leaky(request: Received) -> bytes:
        # A debug page that prints the configured secrets back.
        return http_response(500, f"token mismatch: expected {TOKEN} key {AES_KEY}")

    server = await serve(leaky)
    probes = {
        APPID: {"url": server.url(), "token": TOKEN, "aes_key": AES_KEY},
    }
    bot = make_bot(knowledge, probes=probes, probe_allow_private=True)

    (reply,) = await ask(bot, f"/probe {APPID}")
    await bot.post(alarm_text(APPID, "invalid_response"))
    follow_up = await settle(bot)

    assert "HTTP 500" in reply.text
    assert "token mismatch: expected *** key ***" in reply.text
    for text in (reply.text, follow_up[0].text, caplog.text):
        assert TOKEN[:10] not in text
        assert AES_KEY[:10] not in text


# ---- the follow-up after an alarm


async def test_an_alarm_is_answered_at_once_then_followed_by_the_probe(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(replying(body='"success"'))
    bot = probing_bot(knowledge, server)
    sample = '[response_length=9][response_content="success"]'
    alarm = alarm_text(APPID, "invalid_response") + sample

    (diagnosis,) = await bot.post(alarm)
    (follow_up,) = await settle(bot)

    assert diagnosis.at - START < timedelta(seconds=1)
    assert "回应失败" in diagnosis.text
    assert follow_up.at > diagnosis.at
    assert follow_up.text.startswith(
        f"🔎【回应失败】{APPID} 自动探测：已复现（HTTP 200，9 字节，用时 "
    )
    # In the words of the alarm reply above it.
    words = '回包是带双引号的 "success"（9 字节），success 被当成 JSON 字符串输出了。'
    assert f"• {words}" in diagnosis.text
    assert follow_up.text.splitlines()[1].startswith(words)
    assert len(follow_up.text.splitlines()) == 2
    assert follow_up.room == "ops"
    assert follow_up.mentions == ()


async def test_the_follow_up_comes_once_per_group_and_window(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(replying(body='"success"'))
    bot = probing_bot(knowledge, server, repeat_interval_minutes=1)

    await bot.post(alarm_text(APPID, "invalid_response", count=10))
    assert len(await settle(bot)) == 1
    # Posted again (a sharp rise) in the same window: no second probe.
    (update,) = await bot.post(
        alarm_text(APPID, "invalid_response", count=5000), after=90
    )
    assert "明显上升" in update.text
    assert await settle(bot) == []
    # The next window's update is probed again.
    await bot.post(alarm_text(APPID, "invalid_response", count=90000), after=300)
    (again,) = await settle(bot)

    assert "自动探测：已复现" in again.text
    assert len(server.received) == 2


async def test_an_english_follow_up_says_what_was_reproduced(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(replying(body='"success"'))
    bot = probing_bot(knowledge, server, lang="en")

    await bot.post(alarm_text(APPID, "invalid_response"))
    (follow_up,) = await settle(bot)

    assert follow_up.text.startswith(
        f"🔎 [Invalid response] {APPID} probed: reproduced (HTTP 200, 9 bytes in "
    )
    assert follow_up.text.splitlines()[1].startswith(
        'The reply is "success" with double quotes (9 bytes)'
    )


async def test_alarms_of_accounts_without_a_url_are_not_probed(
    knowledge: Knowledge, serve
) -> None:
    server = await serve(replying(body="success"))
    bot = probing_bot(knowledge, server)

    assert len(await bot.post(alarm_text(OTHER, "invalid_response"))) == 1
    assert await settle(bot) == []
    assert server.received == []


async def test_a_muted_alarm_is_not_probed(knowledge: Knowledge, serve) -> None:
    server = await serve(replying(body="success"))
    bot = probing_bot(knowledge, server)
    await ask(bot, f"/mute {APPID} 1h")

    assert await bot.post(alarm_text(APPID, "invalid_response")) == []
    assert await settle(bot) == []
    assert server.received == []


# ---- /host


async def test_host_shows_the_snapshot_to_an_admin(knowledge: Knowledge) -> None:
    bot = make_bot(knowledge)

    (reply,) = await ask(bot, "/host")

    assert reply.text.startswith("🖥 本机状态（uptime、free、ulimit -n、netstat")
    assert "负载（1/5/15 分钟）：" in reply.text
    assert "内存：可用 " in reply.text
    assert "文件句柄：ulimit -n " in reply.text
    assert "TCP 连接：" in reply.text
    assert reply.mentions == ("admin",)


async def test_host_is_for_admins_only(knowledge: Knowledge) -> None:
    bot = make_bot(knowledge)

    (reply,) = await ask(bot, "/主机", sender="bob")

    assert reply.text == "抱歉，/host 只有管理员能用，请找管理员 admin 操作。"


async def test_help_lists_probe_and_host_for_admins_only(
    knowledge: Knowledge,
) -> None:
    bot = make_bot(knowledge)

    (for_admin,) = await ask(bot, "/help")
    (for_member,) = await ask(bot, "/help", sender="bob")

    assert "• /probe <appid> — 按平台的方式向该账号配置的回调 URL" in for_admin.text
    assert "• /host — 本机负载、内存、文件句柄和 TCP 连接状态" in for_admin.text
    assert "/probe" not in for_member.text
    assert "/host" not in for_member.text
