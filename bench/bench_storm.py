"""Benchmark: an alarm storm through the whole pipeline, on the simulated clock.

Feeds N alarms from M accounts over S seconds into one room through the real
dispatcher, store (a SQLite file in WAL mode), policy and outbox, exactly as
``alarm-bot replay`` does, and reports:

* alarms per second through the whole pipeline (parse, record, decide, render,
  pace), and the wall time of the run;
* peak memory: the process's peak RSS, and the Python heap the run itself
  allocated at its peak (tracemalloc, in a second, slower pass);
* the most messages to the room in any 60-second span, the longest message and
  when the first reply left;
* the wall time of ``alarm-bot replay`` on the 10,000-alarm storm of the tests,
  start-up included.

    .venv/bin/python bench/bench_storm.py                  # 100,000 alarms
    .venv/bin/python bench/bench_storm.py --alarms 20000 --appids 4000

Measured on the 2-core development machine, shared with other work (so the
rates vary by about a third from run to run):

    storm                              wall     alarms/s  msgs  max/60s  peak RSS
    10,000 alarms, 2,000 ids, 60 s     4.3-6.3 s  1.6-2.3k    19      18     74 MB
    100,000 alarms, 20,000 ids, 600 s  58 s        1.7k      188      18    186 MB

    `alarm-bot replay` of the 10,000-alarm storm, start-up included: 6.4-8.1 s.
    Python heap allocated by the 100,000-alarm run at its peak: 43 MB (the RSS
    also holds the 100,000 event lines the benchmark keeps in memory).

The first reply leaves at the first alarm's instant; every message fits 2,048
bytes. Most of the time goes to parsing (about 40%) and SQLite (about 30%:
two commits per message, so an alarm is on disk before anything is decided).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.knowledge import load_knowledge  # noqa: E402
from bot.replay import run_replay  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.store import AlarmStore  # noqa: E402
from tests.scenarios.storm import START, storm  # noqa: E402


def max_in_any_span(times: list[datetime], span: timedelta) -> int:
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > span:
            first += 1
        most = max(most, last - first + 1)
    return most


def run_storm(alarms: int, appids: int, seconds: float, db: Path) -> dict[str, object]:
    knowledge = load_knowledge()
    lines = list(storm(alarms, appids, seconds))
    out = io.StringIO()
    started = time.perf_counter()
    summary = asyncio.run(run_replay(lines, Settings(), knowledge, db_path=db, out=out))
    elapsed = time.perf_counter() - started
    messages = [json.loads(line) for line in out.getvalue().splitlines()]
    times = [datetime.fromisoformat(m["at"]) for m in messages]
    store = AlarmStore(db)
    recorded = store.count_alarms()
    store.close()
    return {
        "alarms": summary.events,
        "recorded": recorded,
        "seconds": round(elapsed, 2),
        "alarms_per_s": round(summary.events / elapsed),
        "messages": len(messages),
        "max_per_60s": max_in_any_span(times, timedelta(seconds=60)),
        "longest_bytes": max(len(m["text"].encode()) for m in messages),
        "first_reply_after_s": (times[0] - START).total_seconds(),
        "peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }


def traced_peak(alarms: int, appids: int, seconds: float, db: Path) -> float:
    """The Python heap the run allocated at its peak, in MB."""
    knowledge = load_knowledge()
    lines = list(storm(alarms, appids, seconds))
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    asyncio.run(run_replay(lines, Settings(), knowledge, db_path=db, out=io.StringIO()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return round((peak - base) / 2**20, 1)


def cli_replay(directory: Path) -> float:
    """Wall time of ``alarm-bot replay`` on the tests' 10,000-alarm storm."""
    events = directory / "storm.jsonl"
    events.write_text("\n".join(storm()) + "\n", encoding="utf-8")
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "replay",
            str(events),
            "--db",
            str(directory / "cli.db"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    return round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alarms", type=int, default=100_000)
    parser.add_argument("--appids", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--no-trace", action="store_true", help="skip tracemalloc")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        directory = Path(tmp)
        result = run_storm(args.alarms, args.appids, args.seconds, directory / "a.db")
        if not args.no_trace:
            result["heap_peak_mb"] = traced_peak(
                args.alarms, args.appids, args.seconds, directory / "b.db"
            )
        result["cli_replay_10k_s"] = cli_replay(directory)
    for key, value in result.items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
