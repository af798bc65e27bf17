"""Round trip in WeChat: a member posts an alarm, the bot's reply reaches the gateway.

One local gateway (gateway/gateway.mjs: wechaty-puppet-service over
wechaty-puppet-mock, 127.0.0.1 only) and two bots taking turns on it, in the same
run: ``alarm-bot run`` and ``bench/echo_bot.py``, a trivial python-wechaty bot that
repeats each message. Alice posts real alarm texts (tests/data/samples) into the
room one at a time; the gateway times each from the mock posting the message to
the bot's first reply message reaching it. The bots alternate in short turns, so
drift in the machine's load hits both alike, and alarms come 50 ms after the
previous reply has fully arrived (real alarms are minutes apart; ``--gap-ms 0``
posts them back to back).

alarm-bot answers through its whole pipeline (store, policy, render, outbox), so
each alarm posted is of an account of its own: the policy gives the first alarm
of an account the full diagnosis and folds repeats, which would leave nothing to
time. The outbox's pacing (a second between messages, 20 a minute per room) is
switched off by a settings file, since it is a deliberate wait, not latency.

    .venv/bin/python bench/bench_roundtrip.py [--alarms 100] [--rounds 6] [--gap-ms 50]

Target (issue 3): alarm-bot's p99 within 1.2x of the echo bot's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from gateway_harness import (  # noqa: E402
    ALARM_ROOM,
    BotProcess,
    Gateway,
    missing_prerequisites,
    wait_until,
)

from bot.alarm import parse  # noqa: E402
from bot.channels.base import Incoming, Reply  # noqa: E402
from bot.knowledge import Knowledge, load_knowledge  # noqa: E402
from bot.pipeline import AlarmPipeline  # noqa: E402
from bot.policy import SimulatedClock, SystemClock, account_of  # noqa: E402
from bot.render import split_message  # noqa: E402
from bot.replay import drain  # noqa: E402
from bot.settings import Settings, load_settings  # noqa: E402

SAMPLES = REPO / "tests" / "data" / "samples" / "alarms.yaml"
TARGET_RATIO = 1.2
# No pacing: every reply may go as soon as it is ready. A turn sends about 150
# messages; higher caps only make the outbox count more of its past sends.
SETTINGS = {
    "rooms": ["alarm-group"],
    "outbox": {
        "room_per_minute": 1000,
        "global_per_minute": 1000,
        "room_gap_s": 0,
        "switch_gap_s": 0,
    },
}
_APPID_LINE = re.compile(r"^(Appid\s*[:：]\s*)\S+", re.MULTILINE)


def as_account(text: str, appid: str) -> str:
    """The alarm ``text`` about the account ``appid``."""
    if _APPID_LINE.search(text):
        return _APPID_LINE.sub(lambda m: m[1] + appid, text, count=1)
    return f"Appid: {appid}\n{text}"


def load_samples(knowledge: Knowledge) -> list[str]:
    """The sample alarms that still parse as one alarm when their account changes."""
    texts = []
    for sample in yaml.safe_load(SAMPLES.read_text(encoding="utf-8")):
        text = as_account(sample["alarm_text"], "wx00000000000000ff")
        alarms = parse(text, knowledge.matcher)
        if len(alarms) == 1 and account_of(alarms[0]) == "wx00000000000000ff":
            texts.append(sample["alarm_text"])
    return texts


class _Counter:
    """A channel that only counts what it is given."""

    def __init__(self) -> None:
        self.messages = 0

    async def say(self, reply: Reply) -> None:
        self.messages += 1


async def count_replies(
    knowledge: Knowledge, settings: Settings, texts: list[str]
) -> list[int]:
    """How many messages alarm-bot answers each of ``texts`` with, in turn."""
    channel = _Counter()
    clock = SimulatedClock(SystemClock().now())
    pipeline = AlarmPipeline.open(
        knowledge, settings, channel, clock=clock, editable=False
    )
    counts = []
    try:
        for text in texts:
            before = channel.messages
            pipeline.handle(Incoming(room="alarm-group", sender="Alice", text=text))
            await drain(pipeline, clock)
            counts.append(channel.messages - before)
    finally:
        pipeline.close()
    return counts


def load_alarms(
    settings: Settings, rounds: int, per_turn: int
) -> dict[str, list[list[tuple[str, int]]]]:
    """Each bot's alarms for each of its turns, with how many messages answer each.

    Every alarm is of an account of its own (see the module docstring).
    """
    knowledge = load_knowledge()
    samples = load_samples(knowledge)
    texts = [
        as_account(samples[index % len(samples)], f"wx{index + 1:016x}")
        for index in range(rounds * per_turn)
    ]
    counts = asyncio.run(count_replies(knowledge, settings, texts))
    if 0 in counts:
        raise RuntimeError(f"alarm-bot would not answer {texts[counts.index(0)]!r}")
    turns: dict[str, list[list[tuple[str, int]]]] = {"alarm-bot": [], "echo": []}
    for turn in range(rounds):
        chunk = slice(turn * per_turn, (turn + 1) * per_turn)
        turns["alarm-bot"].append(list(zip(texts[chunk], counts[chunk], strict=True)))
        echoed = [(text, len(split_message(text))) for text in texts[chunk]]
        turns["echo"].append(echoed)
    return turns


def measure(
    gateway: Gateway,
    bot: BotProcess,
    alarms: list[tuple[str, int]],
    count: int,
    gap: float,
) -> list[float]:
    """Start ``bot``, post ``count`` alarms one by one, and return the round trips."""
    bot.start()
    try:
        bot.wait_logged_in()
        gateway.wait_subscribed()
        rtts = []
        for index in range(count):
            text, parts = alarms[index]
            answer = gateway.say("alice", text, room="alarm-group", wait_ms=10_000)
            reply = answer["reply"]
            if reply is None or reply["reply_to"] != answer["seq"]:
                raise RuntimeError(
                    f"no reply to alarm #{index}:\n{bot.output()[-3000:]}"
                )
            rtts.append(float(reply["rtt_ms"]))
            # a reply in several messages: let it finish before the next alarm
            wait_until(
                lambda seq=answer["seq"], n=parts: (
                    len(gateway.sent(seq, ALARM_ROOM)) >= n
                ),
                10,
                "the rest of the reply",
            )
            time.sleep(gap)
        return rtts
    finally:
        status = bot.stop()
        if status not in (0, None):
            print(f"warning: {bot.command} ended with status {status}", file=sys.stderr)


def summary(rtts: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(rtts, n=100, method="inclusive")
    return {
        "n": len(rtts),
        "p50": cuts[49],
        "p90": cuts[89],
        "p99": cuts[98],
        "max": max(rtts),
        "mean": statistics.fmean(rtts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=100, help="alarms per turn")
    parser.add_argument("--rounds", type=int, default=6, help="turns of each bot")
    parser.add_argument("--warmup", type=int, default=10, help="alarms not counted")
    parser.add_argument(
        "--gap-ms", type=float, default=50, help="pause after each reply (ms)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    problem = missing_prerequisites()
    if problem:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-roundtrip-"))
    config = workdir / "alarm-bot.yaml"
    config.write_text(yaml.safe_dump(SETTINGS), encoding="utf-8")
    count = args.warmup + args.alarms
    alarms = load_alarms(load_settings(config, environ={}), args.rounds, count)
    gateway = Gateway(workdir, token="insecure_bench")
    env = {
        "WECHATY_PUPPET_SERVICE_ENDPOINT": gateway.endpoint,
        "WECHATY_PUPPET_SERVICE_TOKEN": gateway.token,
        "ALARM_BOT_CONFIG": str(config),
    }
    bots = {
        "alarm-bot": BotProcess(workdir / "alarm-bot", env),
        "echo": BotProcess(
            workdir / "echo", env, [sys.executable, str(REPO / "bench" / "echo_bot.py")]
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in bots}
    started = time.monotonic()
    try:
        gateway.start()
        for turn in range(args.rounds):
            order = list(bots) if turn % 2 == 0 else list(bots)[::-1]
            for name in order:
                rtts = measure(
                    gateway, bots[name], alarms[name][turn], count, args.gap_ms / 1000
                )
                results[name] += rtts[args.warmup :]
                row = summary(rtts[args.warmup :])
                print(
                    f"round {turn + 1} {name:<9}: "
                    f"p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms"
                )
    finally:
        gateway.stop()

    table = {name: summary(rtts) for name, rtts in results.items()}
    ratio = table["alarm-bot"]["p99"] / table["echo"]["p99"]
    elapsed = time.monotonic() - started
    print(f"\n{len(alarms['echo'][0])} alarms per turn, {elapsed:.0f} s in all")
    print(f"{'bot':<10} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}  (ms)")
    for name, row in table.items():
        print(
            f"{name:<10} {row['n']:>5.0f} {row['p50']:>8.1f} {row['p90']:>8.1f} "
            f"{row['p99']:>8.1f} {row['max']:>8.1f}"
        )
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(
        f"p99 ratio alarm-bot/echo: {ratio:.2f} ({verdict} the {TARGET_RATIO}x target)"
    )
    if args.json:
        args.json.write_text(json.dumps({"bots": table, "p99_ratio": ratio}, indent=2))
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
