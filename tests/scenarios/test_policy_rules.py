"""Each policy rule, end to end through the pipeline on the simulated clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.knowledge import Knowledge

from .conftest import BotHarness, make_bot
from .storm import START, alarm_text

A = "wx00000000000000aa"  # owners: alice
B = "wx00000000000000bb"  # default owners: oncall
MINUTE = timedelta(minutes=1)


def window(n: int) -> timedelta:
    """The platform time of the n-th five-minute window (1-based)."""
    return (n - 1) * 5 * MINUTE


# ------------------------------------------------------------------ grouping


async def test_first_alarm_gets_the_full_diagnosis_at_once(bot: BotHarness) -> None:
    (reply,) = await bot.post(alarm_text(B, count=310))

    assert reply.at == START
    assert reply.room == "ops"
    assert "【请求超时】wx00000000000000bb" in reply.text
    assert "排查步骤" in reply.text
    assert reply.mentions == ()


async def test_repeats_within_the_interval_are_folded_in(bot: BotHarness) -> None:
    await bot.post(alarm_text(B, count=310))

    assert await bot.post(alarm_text(B, count=320), after=60) == []
    assert await bot.post(alarm_text(B, count=330), after=60) == []
    assert bot.dispositions() == ["full", "folded", "folded"]


async def test_update_after_the_interval_is_short_and_counts_the_folded(
    bot: BotHarness,
) -> None:
    await bot.post(alarm_text(B, count=310))
    await bot.post(alarm_text(B, count=320), after=60)
    await bot.post(alarm_text(B, count=330), after=60)

    (update,) = await bot.post(
        alarm_text(B, time=START + window(2), count=400), after=180
    )

    assert update.text.startswith("🔁【请求超时】wx00000000000000bb")
    assert "仍在失败：第 2 个时间窗，400 次/5 分钟（上次 310 次），其间又收到 2 条" in (
        update.text
    )
    assert "排查步骤见上文" in update.text
    assert len(update.text.splitlines()) == 1
    assert bot.dispositions()[-1] == "update"


async def test_sharp_rise_posts_an_update_before_the_interval(
    knowledge: Knowledge,
) -> None:
    bot = make_bot(knowledge, repeat_interval_minutes=15, default_owners=["oncall"])
    await bot.post(alarm_text(B, count=310))
    assert (
        await bot.post(alarm_text(B, time=START + window(2), count=320), after=300)
        == []
    )

    (update,) = await bot.post(
        alarm_text(B, time=START + window(3), count=1840), after=300
    )

    assert "明显上升：第 3 个时间窗，1,840 次/5 分钟（上次 310 次）" in update.text
    assert "其间又收到 1 条" in update.text


async def test_small_rise_is_folded(knowledge: Knowledge) -> None:
    bot = make_bot(knowledge, repeat_interval_minutes=15)
    await bot.post(alarm_text(B, count=310))

    assert await bot.post(alarm_text(B, count=500), after=60) == []


async def test_english_update(knowledge: Knowledge) -> None:
    bot = make_bot(knowledge, lang="en")
    await bot.post(alarm_text(B, count=310))

    (update,) = await bot.post(
        alarm_text(B, time=START + window(2), count=1840), after=300
    )

    assert "still failing and rising, 2nd window, 1,840/5 min, up from 310" in (
        update.text
    )
    assert "steps above" in update.text


async def test_other_accounts_and_types_are_groups_of_their_own(
    bot: BotHarness,
) -> None:
    await bot.post(alarm_text(B))

    assert len(await bot.post(alarm_text(B, "invalid_response"), after=1)) == 1
    assert len(await bot.post(alarm_text("wx00000000000000cc"), after=1)) == 1
    assert await bot.post(alarm_text(B), room="other-room", after=1) == []
    (elsewhere,) = await bot.advance(2)  # 3 s after the last message: another room
    assert elsewhere.room == "other-room"


async def test_the_same_alarm_posted_again_is_recorded_but_not_answered(
    bot: BotHarness,
) -> None:
    await bot.post(alarm_text(B, count=310))

    assert await bot.post(alarm_text(B, count=310), after=30) == []
    assert bot.dispositions() == ["full", "duplicate"]
    assert bot.pipeline.metrics.suppressed["duplicate"] == 1


async def test_an_alarm_put_to_the_bot_is_answered_in_full_every_time(
    bot: BotHarness,
) -> None:
    await bot.post(alarm_text(B, count=310))

    (answer,) = await bot.post(
        alarm_text(B, count=310), sender="bob", mention=True, after=30
    )

    assert "排查步骤" in answer.text
    assert bot.dispositions() == ["full", "duplicate"]


async def test_a_return_after_recovery_gets_a_short_update(bot: BotHarness) -> None:
    await bot.post(alarm_text(B, count=310))

    (again,) = await bot.post(
        alarm_text(B, time=START + 30 * MINUTE, count=90), after=30 * 60
    )

    assert "又出现了" in again.text
    assert "12:00:00 已给出完整排查步骤" in again.text


# ---------------------------------------------------------------- inhibition


async def test_markfail_covers_the_accounts_other_alarms_in_one_message(
    bot: BotHarness,
) -> None:
    await bot.post(alarm_text(A, "request_timeout"))
    await bot.post(alarm_text(A, "connect_timeout"), after=20)

    (markfail,) = await bot.post(alarm_text(A, "markfail"), after=40)

    assert "【MarkFail（自动屏蔽）】wx00000000000000aa" in markfail.text
    assert (
        "也涵盖 wx00000000000000aa 此前的报警：请求超时 1 条（12:00:00 起）、"
        "连接超时 1 条（12:00:20 起）"
    ) in markfail.text
    assert "原因多半就在 12:00:00 那条请求超时报警的回复里" in markfail.text


async def test_while_markfail_fires_the_accounts_lesser_alarms_are_inhibited(
    bot: BotHarness,
) -> None:
    await bot.post(alarm_text(A, "request_timeout"))
    await bot.post(alarm_text(A, "markfail"), after=60)

    assert (
        await bot.post(
            alarm_text(A, "request_timeout", time=START + window(2)), after=300
        )
        == []
    )
    assert await bot.post(alarm_text(A, "invalid_response"), after=10) == []
    assert bot.dispositions() == ["full", "full", "inhibited", "inhibited"]
    assert len(await bot.post(alarm_text(B), after=1)) == 1  # another account


# ------------------------------------------------------------------ silences


async def test_mute_is_for_admins_only(bot: BotHarness) -> None:
    (reply,) = await bot.post(f"/mute {B} 1h", sender="bob")

    assert "/mute 只有管理员能用" in reply.text
    assert bot.pipeline.policy.state.silences == []


async def test_muted_alarms_are_recorded_and_counted_but_not_answered(
    bot: BotHarness,
) -> None:
    (muted,) = await bot.post(f"/mute {B} 1h", sender="admin")
    assert "🔕 已静音 wx00000000000000bb，至 2024-05-01 13:00:00" in muted.text

    assert await bot.post(alarm_text(B), after=5) == []
    assert await bot.post(alarm_text(B, "markfail"), after=5) == []
    assert len(await bot.post(alarm_text(A), after=5)) == 1

    assert bot.dispositions() == ["silenced", "silenced", "full"]
    assert bot.pipeline.metrics.suppressed["silenced"] == 2
    (stats,) = await bot.post("/stats", after=2)
    assert "共 3 条报警" in stats.text


async def test_mute_by_type_and_by_appid_and_type(bot: BotHarness) -> None:
    await bot.post("/mute markfail 30m", sender="admin")
    await bot.post(f"/mute {B} request_timeout 30m", sender="admin", after=1)

    assert await bot.post(alarm_text(A, "markfail"), after=1) == []
    assert await bot.post(alarm_text(B), after=1) == []
    assert len(await bot.post(alarm_text(B, "invalid_response"), after=1)) == 1


async def test_silences_lists_and_unmute_lifts(bot: BotHarness) -> None:
    await bot.post(f"/静音 {B} 2小时", sender="admin")
    await bot.post(alarm_text(B), after=1)

    (listing,) = await bot.post("/silences", after=1)
    assert "• 编号 1：wx00000000000000bb，至 2024-05-01 14:00:00（admin 设置）" in (
        listing.text
    )
    (lifted,) = await bot.post(f"/unmute {B}", sender="admin", after=1)
    assert "已解除 1 个静音" in lifted.text

    (first,) = await bot.post(alarm_text(B, count=999), after=1)
    assert "排查步骤" in first.text  # its first word, in full
    (none,) = await bot.post("/silences", after=1)
    assert "没有生效的静音" in none.text


async def test_a_silence_expires(bot: BotHarness) -> None:
    await bot.post("/mute markfail 30m", sender="admin")
    assert await bot.post(alarm_text(A, "markfail"), after=60) == []

    (reply,) = await bot.post(
        alarm_text(A, "markfail", time=START + 31 * MINUTE), after=30 * 60
    )

    assert "MarkFail" in reply.text


async def test_mute_explains_its_mistakes(bot: BotHarness) -> None:
    (usage,) = await bot.post("/mute", sender="admin")
    (duration,) = await bot.post(f"/mute {B} forever", sender="admin", after=1)
    (matcher,) = await bot.post("/mute nonsense 1h", sender="admin", after=1)

    assert usage.text.startswith("用法：/mute")
    assert "看不懂时长“forever”" in duration.text
    assert "“nonsense”既不是 Appid 也不是报警类型" in matcher.text


# ------------------------------------------------------- ack and escalation


async def test_markfail_mentions_the_accounts_owners_at_once(bot: BotHarness) -> None:
    (reply,) = await bot.post(alarm_text(A, "markfail"))

    assert reply.mentions == ("alice",)
    assert "🚨 wx00000000000000aa 出现MarkFail（自动屏蔽），需要立即处理" in reply.text
    assert "/ack wx00000000000000aa" in reply.text
    (repeat,) = await bot.post(
        alarm_text(A, "markfail", time=START + window(2)), after=300
    )
    assert repeat.mentions == ()


async def test_ticket_alarms_mention_the_platform_owners(bot: BotHarness) -> None:
    (reply,) = await bot.post(alarm_text(B, "ticket_timeout"))

    assert reply.mentions == ("platform-team",)


async def test_an_alarm_persisting_three_windows_mentions_owners_once(
    bot: BotHarness,
) -> None:
    (first,) = await bot.post(alarm_text(B, count=100))
    (second,) = await bot.post(
        alarm_text(B, time=START + window(2), count=110), after=300
    )
    (third,) = await bot.post(
        alarm_text(B, time=START + window(3), count=120), after=300
    )
    (fourth,) = await bot.post(
        alarm_text(B, time=START + window(4), count=130), after=300
    )

    assert [m.mentions for m in (first, second, third, fourth)] == [
        (),
        (),
        ("oncall",),
        (),
    ]
    assert "已连续 3 个时间窗报警，还没有人认领" in third.text


async def test_ack_records_who_and_stops_escalation(bot: BotHarness) -> None:
    await bot.post(alarm_text(B, count=100))
    (acked,) = await bot.post(f"/ack {B}", sender="张三", after=30)
    assert "已记录：张三 正在处理 wx00000000000000bb（全部类型）" in acked.text
    assert "现有 1 组报警不再升级提醒" in acked.text

    (second,) = await bot.post(
        alarm_text(B, time=START + window(2), count=110), after=270
    )
    (third,) = await bot.post(
        alarm_text(B, time=START + window(3), count=120), after=300
    )

    assert "👤 张三 自 12:00:30 起在处理。" in second.text
    assert third.mentions == ()
    assert "🚨" not in third.text
    assert bot.store.audit_log()[-1]["action"] == "ack"


async def test_ack_of_one_type_leaves_the_others(bot: BotHarness) -> None:
    await bot.post(f"/ack {A} markfail", sender="张三")

    (other,) = await bot.post(alarm_text(A, "ticket_timeout"), after=1)
    (reply,) = await bot.post(alarm_text(A, "markfail"), after=1)

    assert other.mentions == ("alice",)
    assert reply.mentions == ()
    assert "🚨" not in reply.text


async def test_ack_needs_an_appid(bot: BotHarness) -> None:
    (reply,) = await bot.post("/ack markfail")

    assert reply.text.startswith("用法：/ack")


# ------------------------------------------------------------------ recovery


async def test_an_escalated_group_gone_quiet_gets_a_recovery_note(
    bot: BotHarness,
) -> None:
    await bot.post(alarm_text(A, "markfail"))

    assert await bot.minutes(9) == []
    (note,) = await bot.minutes(2)

    assert note.at == START + 10 * MINUTE
    assert note.text == (
        "✅【MarkFail（自动屏蔽）】wx00000000000000aa 看起来已恢复："
        "已 10 分钟没有新报警（12:00:00–12:00:00 共 1 条）。"
    )
    assert await bot.minutes(30) == []


async def test_an_acknowledged_group_gets_a_recovery_note_naming_the_handler(
    bot: BotHarness,
) -> None:
    await bot.post(alarm_text(B))
    await bot.post(f"/ack {B}", sender="张三", after=10)

    (note,) = await bot.minutes(15)

    assert "看起来已恢复" in note.text
    assert "由 张三 处理" in note.text
    assert bot.pipeline.policy.state.acks == []


async def test_a_plain_group_recovers_silently(bot: BotHarness) -> None:
    await bot.post(alarm_text(B))

    assert await bot.minutes(60) == []


# -------------------------------------------------------------------- counts


async def test_stats_and_history(bot: BotHarness) -> None:
    await bot.post(alarm_text(B, count=100))
    await bot.post(alarm_text(B, time=START + window(2), count=1840), after=300)
    await bot.post(alarm_text(A, "markfail"), after=10)

    (stats,) = await bot.post("/stats", after=5)
    (history,) = await bot.post(f"/history {B}", after=5)
    (mine,) = await bot.post(f"/统计 {B} 1h", after=5)

    assert "📊 最近 24h：共 3 条报警，2 个账号。" in stats.text
    assert "最多的账号：wx00000000000000bb 2 条、wx00000000000000aa 1 条" in stats.text
    assert "🕘 wx00000000000000bb 最近 24h 共 2 条报警：请求超时 2" in history.text
    assert "2024-05-01 12:00:00  1 条，100 次：请求超时" in history.text
    assert "2024-05-01 12:05:00  1 条，1,840 次：请求超时" in history.text
    assert "📊 wx00000000000000bb 最近 1h：共 2 条报警" in mine.text


async def test_commands_go_through_the_outbox_too(bot: BotHarness) -> None:
    await bot.post("/help")
    await bot.post("/version")

    said = await bot.advance(5)
    assert len(said) == 1
    assert said[0].at == START + timedelta(seconds=1)
    assert bot.store.replies("sent")[-1]["kind"] == "command"


async def test_a_muted_group_recovers_without_a_word(bot: BotHarness) -> None:
    await bot.post(alarm_text(A, "markfail"))
    await bot.post("/mute markfail 1h", sender="admin", after=1)

    assert await bot.minutes(15) == []


async def test_a_crash_gets_an_apology_not_silence(
    bot: BotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the policy")

    monkeypatch.setattr(bot.pipeline.policy, "decide", broken)

    (apology,) = await bot.post(alarm_text(B), sender="bob")

    assert "抱歉" in apology.text
    assert apology.mentions == ("bob",)
