"""Benchmark: find a 5-minute alarm window in a multi-GB nginx access log.

Writes a log in the guide's ``main`` format (2 GB by default) with a known
fault window (request timeouts and 502s), plus an error log, then runs
``bot.logscan.scan_logs`` on it and checks the counts and percentiles against
what was written. The file is freshly written, so it sits in the page cache:
the times are those of a warm cache.

    .venv/bin/python bench/bench_logscan.py            # 2 GB in a temp dir
    .venv/bin/python bench/bench_logscan.py --size 10G --keep

The tests import ``write_logs`` to make a few-MB log with the same shape.

Measured on the 2-core development machine (warm cache, three runs each; the
window lookup is the binary search, the rest is reading and parsing the
window, the 5 minutes before it and a minute of slack either side):

    log                          lookup    read+parse        scan_logs total
    2.1 GB, 100 lines/s          0.2 ms    20.7 MB, 323-508 ms   418-668 ms
    10.5 GB, 100 lines/s         0.2 ms    20.7 MB, 357-610 ms   501-748 ms
    2.1 GB, 1000 lines/s         0.3 ms    207 MB, 4.2-4.8 s     5.3-6.2 s
    200 MB gzip, 100 lines/s     no seek   136 MB, 0.87-0.97 s   0.96-1.09 s

The lookup does not grow with the file; the rest grows with the lines in the
window (about 7 us a line), so a log ten times as dense takes ten times as long.
"""

from __future__ import annotations

import argparse
import calendar
import gzip
import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

ZONE = timezone(timedelta(hours=8))
FAULT_AT = calendar.timegm((2014, 12, 1, 20, 12, 0)) - 8 * 3600  # the guide's alarm
WINDOW = 300

LINE = (
    '%s  - - [%s] "POST /wx?signature=5f0e8c1d9a7b3c2e4f6a8b0c1d2e3f4a5b6c7d8e'
    "&timestamp=1417436000&nonce=1234567890&openid=oAbCdEfGhIjKlMnOpQrStUvWxYz0 "
    'HTTP/1.1" %s %d "-" "Mozilla/4.0" "-" "mp.example.com"  "-" '
    '"%s"   "%s"  "%.3f"  "%s" \n'
)
ERROR_LINE = (
    "%s [error] 2841#0: *%d connect() failed (111: Connection refused) while "
    'connecting to upstream, client: %s, server: mp.example.com, request: "POST '
    '/wx?signature=5f0e&timestamp=1417436000 HTTP/1.1", upstream: '
    '"http://10.0.0.12:8080/wx", host: "mp.example.com"\n'
)
CLIENTS = ("203.205.140.29", "58.248.9.218", "180.150.190.135", "101.226.103.59")
UPSTREAM = "10.0.0.12:8080"


@dataclass
class Truth:
    """What was written into the window and the window before it."""

    fault_start: float
    window: int
    lines: int = 0
    bytes: int = 0
    requests: int = 0
    baseline_requests: int = 0
    status: Counter[str] = field(default_factory=Counter)
    upstream_status: Counter[str] = field(default_factory=Counter)
    request_times: list[float] = field(default_factory=list)
    upstream_times: list[float] = field(default_factory=list)
    error_lines: int = 0

    def percentile(self, values: list[float], percent: float) -> float:
        ordered = sorted(values)
        return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]


def _normal(rng: random.Random) -> tuple[str, int, str, str, float, str]:
    upstream = round(rng.uniform(0.001, 0.25), 3)
    request_time = round(upstream + rng.uniform(0.0, 0.01), 3)
    status = "404" if rng.random() < 0.001 else "200"
    return status, 7, UPSTREAM, status, request_time, f"{upstream:.3f}"


def _faulty(rng: random.Random) -> tuple[str, int, str, str, float, str]:
    roll = rng.random()
    if roll < 0.3:  # the backend is slow: the platform hangs up after 5 s
        upstream = round(rng.uniform(5.0, 7.0), 3)
        return "499", 0, UPSTREAM, "-", upstream, f"{upstream:.3f}"
    if roll < 0.4:  # the backend refuses: nginx answers 502 at once
        return "502", 157, UPSTREAM, "502", 0.001, "0.000"
    return _normal(rng)


def write_logs(
    directory: Path,
    *,
    size: int,
    rate: int = 100,
    fault_start: float = FAULT_AT,
    seed: int = 6,
    compress: bool = False,
) -> tuple[Path, Path, Truth]:
    """Write ``access.log`` of about ``size`` bytes and ``error.log``.

    ``rate`` lines are logged per second; the log starts so that the fault
    window [fault_start, fault_start + 5 min) lies at 60% of it. The window
    has request timeouts (499 after 5-7 s) and 502s, with connect() failed
    lines in the error log.
    """
    rng = random.Random(seed)
    seconds = max(1, size // (len(LINE) + 40) // rate)
    log_start = int(fault_start - seconds * 0.6)
    truth = Truth(fault_start, WINDOW)
    access = directory / ("access.log.gz" if compress else "access.log")
    errors = directory / "error.log"
    pool = [_normal(rng) for _ in range(4096)]
    opener = gzip.open if compress else open
    with opener(access, "wt") as out, errors.open("w") as err:
        for second in range(log_start, log_start + seconds):
            stamp = time.strftime(
                "%d/%b/%Y:%H:%M:%S +0800", time.gmtime(second + 28800)
            )
            in_window = fault_start <= second < fault_start + WINDOW
            if in_window:
                rows = [_faulty(rng) for _ in range(rate)]
            else:
                rows = rng.choices(pool, k=rate)
            chunk = "".join(
                LINE % (CLIENTS[i % 4], stamp, *row) for i, row in enumerate(rows)
            )
            out.write(chunk)
            truth.lines += rate
            truth.bytes += len(chunk)
            if in_window:
                _record(truth, rows, err, second, rng)
            elif fault_start - WINDOW <= second < fault_start:
                truth.baseline_requests += rate
            elif second % 600 == 0:
                err.write(_error_time(second) + " [warn] 2841#0: noise outside\n")
    return access, errors, truth


def _record(
    truth: Truth,
    rows: list[tuple[str, int, str, str, float, str]],
    err: object,
    second: int,
    rng: random.Random,
) -> None:
    for status, _, _, upstream_status, request_time, upstream_time in rows:
        truth.requests += 1
        truth.status[status] += 1
        truth.upstream_status[upstream_status] += 1
        truth.request_times.append(request_time)
        truth.upstream_times.append(float(upstream_time))
        if status == "502":
            truth.error_lines += 1
            line = ERROR_LINE % (_error_time(second), rng.randrange(10**6), CLIENTS[0])
            err.write(line)  # type: ignore[attr-defined]


def _error_time(second: int) -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(second + 28800))


def _parse_size(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    text = text.strip().upper()
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def check(report: object, truth: Truth) -> list[str]:
    """Return the differences between the report and what was written."""
    from bot.logscan import LogReport

    assert isinstance(report, LogReport)
    w = report.window
    problems = []
    expected = {
        "requests": (w.requests, truth.requests),
        "baseline": (report.baseline.requests, truth.baseline_requests),
        "status": (w.status, dict(sorted(truth.status.items()))),
        "upstream_status": (
            w.upstream_status,
            dict(sorted(truth.upstream_status.items())),
        ),
        "error lines": (
            report.errors.counts.get("connect_failed") if report.errors else None,
            truth.error_lines,
        ),
    }
    for percent in (50, 90, 95, 99):
        got = getattr(w.request_time, f"p{percent}", None)
        expected[f"request_time p{percent}"] = (
            got,
            truth.percentile(truth.request_times, percent),
        )
        got = getattr(w.upstream_time, f"p{percent}", None)
        expected[f"upstream p{percent}"] = (
            got,
            truth.percentile(truth.upstream_times, percent),
        )
    for name, (got, want) in expected.items():
        if got != want:
            problems.append(f"{name}: got {got}, want {want}")
    return problems


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bot.knowledge import load_knowledge
    from bot.logscan import format_report, scan_logs
    from bot.render import ReplyRenderer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G", help="log size, e.g. 200M, 2G, 10G")
    parser.add_argument("--rate", type=int, default=100, help="lines per second")
    parser.add_argument("--gzip", action="store_true", help="write access.log.gz")
    parser.add_argument("--dir", type=Path, help="where to write (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--repeat", type=int, default=3, help="scans to time")
    parser.add_argument("--lang", choices=("zh", "en"), default="zh", help="report")
    args = parser.parse_args()

    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench-logscan-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        access, errors, truth = write_logs(
            directory, size=_parse_size(args.size), rate=args.rate, compress=args.gzip
        )
        written = time.perf_counter() - began
        around = datetime.fromtimestamp(truth.fault_start, UTC).astimezone(ZONE)
        size = access.stat().st_size
        print(
            f"log: {access} {size / 1e6:.1f} MB on disk, {truth.bytes / 1e6:.1f} MB "
            f"of text, {truth.lines} lines"
        )
        print(f"written in {written:.1f} s; window {around.isoformat()} + 5 min")
        for run in range(1, args.repeat + 1):
            began = time.perf_counter()
            report = scan_logs([access], around=around, error_log=errors)
            total = time.perf_counter() - began
            read = report.files[0]
            print(
                f"run {run}: window lookup (seek) {read.seek_ms:.1f} ms; read+parse "
                f"{read.bytes_read / 1e6:.1f} MB in {read.read_ms:.0f} ms; "
                f"scan_logs total {total * 1000:.0f} ms"
            )
        problems = check(report, truth)
        print(f"window requests {report.window.requests}, checks: ", end="")
        print("all counts and percentiles match" if not problems else "MISMATCH")
        for problem in problems:
            print("  " + problem)
        print("---")
        print(format_report(report, ReplyRenderer(load_knowledge(), args.lang)))
        return 1 if problems else 0
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
