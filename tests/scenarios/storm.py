"""Platform alarm texts and event streams for scenarios, storms and benchmarks."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta

from bot.alarm import PLATFORM_TZ

CONTENT = {
    "request_timeout": "微信服务器向公众号推送消息或事件后,开发者5秒内没有返回",
    "invalid_response": "微信服务器向公众号推送消息或事件后,得到的回应不合法",
    "connect_timeout": "微信服务器连接公众号开发者服务器时发生超时,超时时间为5秒",
    "dns_failure": "微信服务器向公众号推送消息或事件时,解析DNS失败",
    "markfail": (
        "微信服务器向公众号推送消息或事件发生多次失败后,暂时不推送消息,一分钟后解除屏蔽"
    ),
    "ticket_timeout": (
        "微信服务器向公众号服务开发者推送component_verify_ticket时,开发者5秒内没有返回"
    ),
}
START = datetime(2024, 5, 1, 12, 0, tzinfo=PLATFORM_TZ)


def appid_of(number: int) -> str:
    """A made-up app id: ``wx`` and 16 hex digits."""
    return f"wx{number:016x}"


def alarm_text(
    appid: str,
    alarm_type: str = "request_timeout",
    *,
    time: datetime = START,
    count: int = 120,
    nickname: str = "示例公众号",
) -> str:
    """One alarm as the platform posts it."""
    return (
        f"Appid: {appid}\n"
        f"昵称: {nickname}\n"
        f"时间: {time:%Y-%m-%d %H:%M:%S}\n"
        f"内容: {CONTENT[alarm_type]}\n"
        f"次数: 5分钟 {count}次\n"
        "错误样例: [OpenID=oxEN-cNljiRkV71kDRuIr2jhTxs-][Stamp=1591944540]"
        "[3rdUrl=http://wx.example.cn/wechat][Event=subscribe][ip=198.51.100.2]"
    )


def event(at: datetime, text: str, room: str = "ops", sender: str = "platform") -> str:
    """One replay event line."""
    return json.dumps(
        {
            "at": at.isoformat(),
            "room": room,
            "sender": sender,
            "text": text,
            "mentions_bot": False,
        },
        ensure_ascii=False,
    )


def storm(
    alarms: int = 10_000,
    appids: int = 2_000,
    seconds: float = 60.0,
    *,
    start: datetime = START,
    seed: int = 7,
) -> Iterator[str]:
    """Event lines: ``alarms`` alarms from ``appids`` accounts over ``seconds``.

    Every alarm is distinct (its count differs), so every one must be recorded.
    """
    rng = random.Random(seed)
    types = list(CONTENT)
    weights = [50, 20, 10, 5, 10, 5]
    for index in range(alarms):
        at = start + timedelta(seconds=seconds * index / alarms)
        number = rng.randrange(appids)
        alarm_type = rng.choices(types, weights)[0]
        text = alarm_text(appid_of(number), alarm_type, time=start, count=100 + index)
        yield event(at, text)
