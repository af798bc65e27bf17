"""Alarms per second through parse + diagnose + render, and peak memory.

Run on demand:  .venv/bin/python bench/bench_pipeline.py [--seconds 5] [--lang zh]
Target (issue 2): at least 5,000 alarms per second on one core.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import yaml

from bot.alarm import parse
from bot.diagnosis import diagnose
from bot.knowledge import load_knowledge
from bot.render import ReplyRenderer

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--lang", default="zh")
    args = parser.parse_args()

    knowledge = load_knowledge()
    renderer = ReplyRenderer(knowledge, args.lang)
    texts = [
        case["alarm_text"]
        for name in ("samples/alarms.yaml", "variants.yaml")
        for case in yaml.safe_load((DATA / name).read_text(encoding="utf-8"))
    ]
    messages = alarms = 0
    reply_bytes = 0
    started = time.perf_counter()
    deadline = started + args.seconds
    while time.perf_counter() < deadline:
        for text in texts:
            found = parse(text, knowledge.matcher)
            reply = renderer.alarm_reply([diagnose(a, knowledge) for a in found])
            reply_bytes += len(reply.encode())
            messages += 1
            alarms += len(found)
    elapsed = time.perf_counter() - started

    parse_started = time.perf_counter()
    parse_runs = 0
    while time.perf_counter() - parse_started < 1.0:
        for text in texts:
            parse(text, knowledge.matcher)
        parse_runs += len(texts)
    parse_rate = parse_runs / (time.perf_counter() - parse_started)

    big = ("闲聊 " * 1000 + "\n" + texts[0] + "\n") * 200
    big_started = time.perf_counter()
    parse(big, knowledge.matcher)
    big_ms = (time.perf_counter() - big_started) * 1000

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"messages: {messages:,}  alarms: {alarms:,}  in {elapsed:.2f} s")
    print(f"full pipeline: {alarms / elapsed:,.0f} alarms/s (parse+diagnose+render)")
    print(f"parse only:    {parse_rate:,.0f} messages/s")
    print(f"1 MB message:  {big_ms:.0f} ms ({len(big.encode()) / 1e6:.2f} MB)")
    print(f"mean reply:    {reply_bytes / max(messages, 1):,.0f} bytes")
    print(f"peak RSS:      {peak_mib:.1f} MiB")


if __name__ == "__main__":
    main()
