"""nginx access and error log analysis around an alarm window.

nginx writes its logs in time order, so the window is found by a binary search
on byte offsets: a handful of seeks, then only the window is read, whatever the
size of the file. Gzip-rotated files cannot seek cheaply; they are read from
the start up to the end of the window, and the report says so.

Three access-log formats are understood: the guide's ``main`` format (with
``request_time`` and the upstream fields), nginx's default ``combined``, and
any ``log_format`` string given by the caller.
"""

from __future__ import annotations

import calendar
import collections
import dataclasses
import functools
import gzip
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

from bot.errors import BotError

MAIN_FORMAT = (
    '$remote_addr  - $remote_user [$time_local] "$request" '
    '$status $body_bytes_sent "$http_referer" '
    '"$http_user_agent" "$http_x_forwarded_for" "$host"  "$cookie_ssl_edition" '
    '"$upstream_addr"   "$upstream_status"  "$request_time"  '
    '"$upstream_response_time" '
)
"""The ``main`` format from the guide's nginx example."""

COMBINED_FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status '
    '$body_bytes_sent "$http_referer" "$http_user_agent"'
)
"""nginx's predefined ``combined`` format."""

NAMED_FORMATS = {"main": MAIN_FORMAT, "combined": COMBINED_FORMAT}

PLATFORM_TIMEOUT = 5.0
"""Seconds the platform waits for an answer before it gives up."""

STATUS_MEANINGS = {
    "200": "OK",
    "403": "forbidden: nginx access rules (allow/deny, a WAF) refuse the request",
    "404": "not found: the URL path configured on the platform does not exist here",
    "499": (
        "the client closed the connection before the answer: the platform hangs up "
        "after 5 s, so here it means answers slower than 5 s (the guide calls 499 "
        "rare, a matter for the WeChat team)"
    ),
    "500": "the application failed while handling the request",
    "502": "bad gateway: the backend is down or refused nginx's connection",
    "503": "service unavailable: the backend is overloaded, or a limit rejected it",
    "504": "gateway timeout: the backend did not answer nginx in time",
}
"""What the statuses mean for a callback URL (the guide's appendix 3)."""

ERROR_SIGNS = (
    ("connect_failed", "connect() failed"),
    ("refused", "Connection refused"),
    ("reset", "Connection reset by peer"),
    ("timed_out", "timed out"),
    ("worker_connections", "worker_connections are not enough"),
    ("open_files", "Too many open files"),
    ("no_live_upstreams", "no live upstreams"),
    ("prematurely_closed", "upstream prematurely closed"),
)
"""Error-log strings that matter for alarms, as (key, text) pairs."""

_TIME_FIELDS = ("time_local", "time_iso8601", "msec")
_RECORD_FIELDS = (
    "status",
    "upstream_status",
    "request_time",
    "upstream_response_time",
    "request",
    "upstream_addr",
)
_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_MULTI_VALUE = r"[^ ,]+(?:(?:, | : )[^ ,]+)*"
_QUERY = re.compile(r"\?[^\s\"]*")
_SEPARATORS = re.compile(r", | : ")
_ERROR_TIME = re.compile(rb"^(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) ")
_SEEK_BLOCK = 64 * 1024
_SLACK = 60.0


class LogScanError(BotError):
    """A log cannot be read or its format is not understood."""


# ---- formats


class AccessRecord(NamedTuple):
    """The fields of one access-log line that the report needs.

    NOTE: a NamedTuple rather than a frozen dataclass: a window can hold a
    hundred thousand of these, and a tuple is several times cheaper to build.

    Attributes:
        time: when nginx logged the request (its end), in epoch seconds.
        status: the HTTP status nginx answered, as text.
        upstream_status: the last upstream's status, or None.
        request_time: seconds nginx spent on the request, or None.
        upstream_time: seconds spent in upstreams (summed), or None.
        request: the request line as logged (see ``shown_request``).
        upstream_addr: the upstream address(es), or None.
    """

    time: float
    status: str
    upstream_status: str | None
    request_time: float | None
    upstream_time: float | None
    request: str
    upstream_addr: str | None

    @property
    def shown_request(self) -> str:
        """The request line without its query string, which may carry tokens."""
        text = self.request.encode("latin-1", errors="replace").decode(
            "utf-8", errors="replace"
        )
        return _QUERY.sub("?…", text)


@dataclass(frozen=True, slots=True)
class LogFormat:
    """A compiled nginx ``log_format``.

    Attributes:
        name: ``main``, ``combined`` or ``custom``.
        text: the ``log_format`` string.
        pattern: the regular expression for one line; it captures only the
            fields of ``AccessRecord``.
        fields: the variables the format has.
        time_field: the variable that gives each line's time.
        bracket_time: True when the time is ``[$time_local]``, which a slice
            finds faster than the regular expression.
    """

    name: str
    text: str
    pattern: re.Pattern[str]
    fields: frozenset[str]
    time_field: str
    bracket_time: bool

    @classmethod
    def compile(cls, text: str, name: str = "custom") -> LogFormat:
        """Compile a ``log_format`` string (quoted config pieces are joined).

        Raises:
            LogScanError: the format has no time variable or no ``$status``.
        """
        text = _unquote_config(text)
        captured = {*_TIME_FIELDS, *_RECORD_FIELDS}
        regex, seen = _format_regex(text, captured)
        time_field = next((f for f in _TIME_FIELDS if f in seen), None)
        if time_field is None or "status" not in seen:
            raise LogScanError(
                "the log format needs a time variable ($time_local, "
                f"$time_iso8601 or $msec) and $status: {text!r}"
            )
        # Fields the format lacks match empty, so parse() reads all in one call.
        regex += "".join(f"(?P<{f}>)" for f in _RECORD_FIELDS if f not in seen)
        return cls(
            name=name,
            text=text,
            pattern=re.compile(regex),
            fields=frozenset(seen),
            time_field=time_field,
            bracket_time=time_field == "time_local" and "[$time_local]" in text,
        )

    def parse(self, line: str) -> AccessRecord | None:
        """Parse one line; None if it does not match or has no valid time."""
        match = self.pattern.match(line)
        if match is None:
            return None
        stamp, status, upstream_status, request_time, upstream_time, request, addr = (
            match.group(self.time_field, *_RECORD_FIELDS)
        )
        moment = _parse_time(self.time_field, stamp)
        if moment is None:
            return None
        return AccessRecord(
            moment,
            status,
            _last_value(upstream_status),
            _number(request_time),
            _sum_values(upstream_time),
            request,
            _dash_none(addr),
        )

    def line_time(self, line: bytes) -> float | None:
        """Return the time of a raw line, or None if it has none."""
        if self.bracket_time:
            opening = line.find(b"[")
            closing = line.find(b"]", opening)
            if opening >= 0 and closing > opening:
                text = line[opening + 1 : closing].decode("latin-1")
                moment = _parse_time(self.time_field, text)
                if moment is not None:
                    return moment
        match = self.pattern.match(line.decode("latin-1"))
        if match is None:
            return None
        return _parse_time(self.time_field, match[self.time_field])


def _format_regex(text: str, capture: set[str]) -> tuple[str, set[str]]:
    """Return a regex for ``text`` capturing the ``capture`` variables, and all."""
    parts = _VARIABLE.split(text)
    regex = ["^"]
    seen: set[str] = set()
    # split() yields: literal, braced name, bare name, literal, ...
    for index in range(0, len(parts), 3):
        regex.append(_literal_regex(parts[index], is_last=index + 3 >= len(parts)))
        if index + 3 > len(parts):
            break
        variable = parts[index + 1] or parts[index + 2]
        after = parts[index + 3] if index + 3 < len(parts) else ""
        value = _value_regex(variable, after)
        if variable in seen or variable not in capture:
            regex.append(f"(?:{value})")
        else:
            regex.append(f"(?P<{variable}>{value})")
        seen.add(variable)
    return "".join(regex), seen


def resolve_format(spec: str | None, samples: Sequence[str]) -> LogFormat:
    """Pick the log format: by name, from a ``log_format`` string, or by sample.

    Args:
        spec: ``main``, ``combined``, a ``log_format`` string, or None to detect.
        samples: the first lines of the log, used to detect the format.

    Raises:
        LogScanError: no known format matches the samples.
    """
    if spec is not None:
        if spec in NAMED_FORMATS:
            return LogFormat.compile(NAMED_FORMATS[spec], spec)
        return LogFormat.compile(spec)
    lines = [line for line in samples if line.strip()]
    for name, text in NAMED_FORMATS.items():
        log_format = LogFormat.compile(text, name)
        if lines and sum(
            log_format.parse(line) is not None for line in lines
        ) * 2 > len(lines):
            return log_format
    raise LogScanError(
        "the access log is neither in the guide's main format nor in combined: "
        "pass its log_format with --format"
    )


def _unquote_config(text: str) -> str:
    # Accept a pasted config line: log_format main '...' '...';
    if "'" in text:
        return "".join(re.findall(r"'([^']*)'", text))
    return text


def _literal_regex(literal: str, *, is_last: bool) -> str:
    pieces = re.split(r"(\s+)", literal)
    out = [r"\s+" if piece.isspace() else re.escape(piece) for piece in pieces if piece]
    if is_last and out and out[-1] == r"\s+":
        out[-1] = r"\s*"
    return "".join(out)


def _value_regex(variable: str, after: str) -> str:
    if after and not after[0].isspace():
        return f"[^{re.escape(after[0])}]*"
    if variable == "time_local":
        return r"\S+ [+-]\d{4}"
    if variable.startswith("upstream_"):
        return _MULTI_VALUE
    return r"\S*"


@functools.lru_cache(maxsize=4096)
def _parse_time(field: str, text: str) -> float | None:
    # Lines of the same second share the text, so the cache does most of the work.
    try:
        if field == "msec":
            return float(text)
        if field == "time_iso8601":
            return datetime.fromisoformat(text).timestamp()
        # 01/Dec/2014:20:12:00 +0800
        day, month, year = int(text[0:2]), _MONTHS[text[3:6]], int(text[7:11])
        hour, minute, second = int(text[12:14]), int(text[15:17]), int(text[18:20])
        sign = -1 if text[21] == "-" else 1
        offset = sign * (int(text[22:24]) * 3600 + int(text[24:26]) * 60)
    except (ValueError, KeyError, IndexError):
        return None
    return calendar.timegm((year, month, day, hour, minute, second)) - offset


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _sum_values(text: str) -> float | None:
    # Several upstreams log "0.001, 0.500"; an internal redirect adds " : ".
    if "," not in text and ":" not in text:
        return _number(text)
    values = [_number(v) for v in _SEPARATORS.split(text)]
    numbers = [v for v in values if v is not None]
    return sum(numbers) if numbers else None


def _last_value(text: str) -> str | None:
    if "," in text or ":" in text:
        text = _SEPARATORS.split(text)[-1]
    return _dash_none(text)


def _dash_none(text: str) -> str | None:
    return None if text in ("-", "") else text


# ---- seeking


def seek_time(
    stream: BinaryIO,
    size: int,
    target: float,
    line_time: Callable[[bytes], float | None],
) -> int:
    """Return a line-start offset before which every line is older than ``target``.

    A binary search on byte offsets: each step reads the first line with a
    time after the middle. It stops when the range is one block wide; the
    caller reads on from the returned offset.
    """
    low, high = 0, size
    while high - low > _SEEK_BLOCK:
        middle = (low + high) // 2
        found = _first_timed_line(stream, middle, high, line_time)
        if found is None or found[1] >= target:
            high = middle
        else:
            low = found[0]
    return low


def _first_timed_line(
    stream: BinaryIO,
    position: int,
    limit: int,
    line_time: Callable[[bytes], float | None],
) -> tuple[int, float] | None:
    stream.seek(position)
    if position:
        stream.readline()  # the rest of a line that starts before ``position``
    while True:
        offset = stream.tell()
        line = stream.readline()
        if not line or offset >= limit:
            return None
        moment = line_time(line)
        if moment is not None:
            return offset, moment


def _open_at(
    path: Path,
    compressed: bool,
    target: float,
    line_time: Callable[[bytes], float | None],
) -> BinaryIO:
    if compressed:
        return cast(BinaryIO, gzip.open(path, "rb"))
    stream = path.open("rb")
    try:
        stream.seek(seek_time(stream, path.stat().st_size, target, line_time))
    except BaseException:
        stream.close()
        raise
    return stream


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class FileRead:
    """How one log file was read.

    Attributes:
        path: the file.
        compressed: gzip, read from the start (no seek).
        bytes_read: bytes read after the seek (uncompressed for gzip).
        seek_ms: time spent seeking.
        read_ms: time spent reading and parsing.
    """

    path: str
    compressed: bool
    bytes_read: int
    seek_ms: float
    read_ms: float


def read_lines(
    path: Path,
    start: float,
    end: float,
    line_time: Callable[[bytes], float | None],
) -> tuple[Iterator[bytes], Callable[[], FileRead]]:
    """Return the raw lines of ``path`` logged in about [start, end), and a report.

    Lines up to a minute out of order around the edges are included; callers
    filter by exact time. The report function is valid once the lines are
    consumed.
    """
    compressed = _is_gzip(path)
    counters = {"bytes": 0, "seek": 0.0, "read": 0.0}

    def lines() -> Iterator[bytes]:
        began = time.perf_counter()
        with _open_at(path, compressed, start - _SLACK, line_time) as stream:
            counters["seek"] = time.perf_counter() - began
            began = time.perf_counter()
            read = 0
            in_range = False
            try:
                for count, line in enumerate(stream):
                    read += len(line)
                    # Lines are in time order: once in range, checking every
                    # 64th line for the end costs little and saves most parsing.
                    if not in_range or not count % 64:
                        moment = line_time(line)
                        if moment is not None and moment >= end + _SLACK:
                            break
                        in_range = in_range or (
                            moment is not None and moment >= start - _SLACK
                        )
                    if in_range:
                        yield line
            finally:
                counters["bytes"] = read
                counters["read"] = time.perf_counter() - began

    def report() -> FileRead:
        return FileRead(
            str(path),
            compressed,
            int(counters["bytes"]),
            counters["seek"] * 1000,
            counters["read"] * 1000,
        )

    return lines(), report


# ---- statistics


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Nearest-rank percentiles of a list of seconds."""

    count: int
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles | None:
        """Return the percentiles of ``values``, or None if there are none."""
        if not values:
            return None
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50=nearest_rank(ordered, 50),
            p90=nearest_rank(ordered, 90),
            p95=nearest_rank(ordered, 95),
            p99=nearest_rank(ordered, 99),
            max=ordered[-1],
        )


def nearest_rank(ordered: Sequence[float], percent: float) -> float:
    """Return the nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class MinuteCount:
    """Requests of one minute: all, failed (4xx, 5xx, 499) and 5 s or slower."""

    minute: float
    requests: int
    failed: int
    slow: int


@dataclass(frozen=True, slots=True)
class WindowStats:
    """The access log's numbers for one time window.

    Attributes:
        start: window start, epoch seconds.
        end: window end (excluded), epoch seconds.
        requests: lines logged in the window.
        status: count per status.
        upstream_status: count per final upstream status (``-`` for none).
        request_time: percentiles of request_time, None without the field.
        upstream_time: percentiles of upstream_response_time.
        slow: requests that took the platform's 5 s or longer.
        slowest: the slowest requests, slowest first.
        per_minute: counts per minute.
    """

    start: float
    end: float
    requests: int
    status: dict[str, int]
    upstream_status: dict[str, int]
    request_time: Percentiles | None
    upstream_time: Percentiles | None
    slow: int
    slowest: tuple[AccessRecord, ...]
    per_minute: tuple[MinuteCount, ...]

    def count(self, *statuses: str) -> int:
        """Return how many requests got one of ``statuses``."""
        return sum(self.status.get(status, 0) for status in statuses)


def summarize(
    records: Iterable[AccessRecord], start: float, end: float, *, slowest: int = 5
) -> WindowStats:
    """Count and measure the records logged in [start, end)."""
    inside = [r for r in records if start <= r.time < end]
    status = collections.Counter(r.status for r in inside)
    upstream = collections.Counter(r.upstream_status or "-" for r in inside)
    times = [r.request_time for r in inside if r.request_time is not None]
    upstream_times = [r.upstream_time for r in inside if r.upstream_time is not None]
    ranked = sorted(
        (r for r in inside if r.request_time is not None),
        key=lambda r: r.request_time or 0.0,
        reverse=True,
    )
    return WindowStats(
        start=start,
        end=end,
        requests=len(inside),
        status=dict(sorted(status.items())),
        upstream_status=dict(sorted(upstream.items())),
        request_time=Percentiles.of(times),
        upstream_time=Percentiles.of(upstream_times),
        slow=sum(t >= PLATFORM_TIMEOUT for t in times),
        slowest=tuple(ranked[:slowest]),
        per_minute=_per_minute(inside),
    )


def _is_failure(record: AccessRecord) -> bool:
    return record.status >= "400" or record.status == "499"


def _per_minute(records: Sequence[AccessRecord]) -> tuple[MinuteCount, ...]:
    minutes: dict[float, list[int]] = {}
    for record in records:
        counts = minutes.setdefault(record.time // 60 * 60, [0, 0, 0])
        counts[0] += 1
        counts[1] += _is_failure(record)
        counts[2] += (record.request_time or 0.0) >= PLATFORM_TIMEOUT
    return tuple(MinuteCount(m, *counts) for m, counts in sorted(minutes.items()))


# ---- error log


@dataclass(frozen=True, slots=True)
class ErrorSummary:
    """The error-log lines that matter, in the window.

    Attributes:
        path: the error log.
        counts: lines per sign (keys of ``ERROR_SIGNS``).
        samples: a few matching lines, query strings removed.
        lines: all lines in the window.
    """

    path: str
    counts: dict[str, int]
    samples: tuple[str, ...]
    lines: int


def error_line_time(offset: float) -> Callable[[bytes], float | None]:
    """Return a parser for error-log times (local time, ``offset`` seconds east)."""

    def line_time(line: bytes) -> float | None:
        match = _ERROR_TIME.match(line)
        if match is None:
            return None
        fields = tuple(int(part) for part in match.groups())
        try:
            return calendar.timegm(fields) - offset
        except ValueError:
            return None

    return line_time


def summarize_errors(
    path: Path, lines: Iterable[bytes], start: float, end: float, offset: float
) -> ErrorSummary:
    """Count the error-log lines with the signs that matter in [start, end)."""
    line_time = error_line_time(offset)
    counts: collections.Counter[str] = collections.Counter()
    samples: list[str] = []
    total = 0
    for raw in lines:
        moment = line_time(raw)
        if moment is None or not start <= moment < end:
            continue
        total += 1
        text = raw.decode(errors="replace").rstrip()
        signs = [key for key, sign in ERROR_SIGNS if sign in text]
        counts.update(signs)
        if signs and len(samples) < 5:
            samples.append(_QUERY.sub("?…", text))
    ordered = {key: counts[key] for key, _ in ERROR_SIGNS if counts[key]}
    return ErrorSummary(str(path), ordered, tuple(samples), total)


# ---- the report


@dataclass(frozen=True, slots=True)
class LogReport:
    """Everything the logs say about an alarm window.

    Attributes:
        window: the numbers of the window.
        baseline: the same numbers for the window before it.
        log_format: the access-log format used.
        errors: the error log's summary, if one was given.
        files: how each file was read.
        utc_offset: the offset used to show times, in seconds east of UTC.
        conclusions: what the numbers support, the main one first.
        notes: caveats on how the logs were read.
        elapsed_ms: the whole analysis time.
    """

    window: WindowStats
    baseline: WindowStats
    log_format: str
    errors: ErrorSummary | None
    files: tuple[FileRead, ...]
    utc_offset: float
    conclusions: tuple[str, ...]
    notes: tuple[str, ...]
    elapsed_ms: float

    def to_json(self) -> dict[str, object]:
        """Return the ``--json`` object; ``reply`` is the human-readable text."""
        return {
            "window": _stats_json(self.window, self.utc_offset),
            "baseline": _stats_json(self.baseline, self.utc_offset),
            "format": self.log_format,
            "meanings": {
                code: STATUS_MEANINGS[code]
                for code in self.window.status
                if code in STATUS_MEANINGS and code != "200"
            },
            "errors": dataclasses.asdict(self.errors) if self.errors else None,
            "files": [dataclasses.asdict(read) for read in self.files],
            "conclusions": list(self.conclusions),
            "notes": list(self.notes),
            "elapsed_ms": round(self.elapsed_ms, 1),
            "reply": format_report(self),
        }


def scan_logs(
    access_logs: Sequence[Path],
    *,
    around: datetime,
    window: timedelta = timedelta(minutes=5),
    log_format: str | None = None,
    error_log: Path | None = None,
) -> LogReport:
    """Analyse the access (and error) logs for the window starting at ``around``.

    The alarm's time is the first failure of its counting window, so the
    window is [around, around + window); the window before it is the baseline.

    Args:
        access_logs: access logs, plain or gzip, in any order.
        around: the alarm's time; must carry a time zone.
        window: the alarm's counting window.
        log_format: ``main``, ``combined``, a ``log_format`` string, or None.
        error_log: nginx's error log, plain or gzip.

    Raises:
        LogScanError: a file cannot be read or its format is not understood.
        ValueError: ``around`` has no time zone.
    """
    if around.tzinfo is None:
        raise ValueError("around must carry a time zone")
    began = time.perf_counter()
    start = around.timestamp()
    end = start + window.total_seconds()
    base_start = start - window.total_seconds()
    try:
        fmt = resolve_format(log_format, _head(access_logs[0]))
        records: list[AccessRecord] = []
        files = []
        for path in access_logs:
            lines, report = read_lines(path, base_start, end, fmt.line_time)
            records += _parse_lines(fmt, lines)
            files.append(report())
        offset = _utc_offset(access_logs[0], fmt, around)
        errors = None
        if error_log is not None:
            err_lines, err_report = read_lines(
                error_log, start, end, error_line_time(offset)
            )
            errors = summarize_errors(error_log, err_lines, start, end, offset)
            files.append(err_report())
    except OSError as exc:
        raise LogScanError(f"cannot read {exc.filename}: {exc.strerror}") from exc

    stats = summarize(records, start, end)
    baseline = summarize(records, base_start, start)
    return LogReport(
        window=stats,
        baseline=baseline,
        log_format=fmt.name,
        errors=errors,
        files=tuple(files),
        utc_offset=offset,
        conclusions=conclude(stats, baseline, errors),
        notes=_read_notes(fmt, files),
        elapsed_ms=(time.perf_counter() - began) * 1000,
    )


def _head(path: Path, count: int = 20) -> list[str]:
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as stream:
        return [stream.readline().decode("latin-1") for _ in range(count)]


def _parse_lines(fmt: LogFormat, lines: Iterable[bytes]) -> Iterator[AccessRecord]:
    for line in lines:
        record = fmt.parse(line.decode("latin-1").rstrip("\r\n"))
        if record is not None:
            yield record


def _utc_offset(path: Path, fmt: LogFormat, around: datetime) -> float:
    # The error log has no zone: nginx writes it in the access log's local time.
    if fmt.time_field == "time_local":
        for line in _head(path):
            match = fmt.pattern.match(line)
            if match and re.search(r"[+-]\d{4}$", match["time_local"]):
                stamp = match["time_local"][-5:]
                sign = -1 if stamp[0] == "-" else 1
                return sign * (int(stamp[1:3]) * 3600 + int(stamp[3:5]) * 60)
    delta = around.utcoffset()
    return delta.total_seconds() if delta else 0.0


def _read_notes(fmt: LogFormat, files: Sequence[FileRead]) -> tuple[str, ...]:
    notes = []
    if "request_time" not in fmt.fields:
        notes.append(
            f"The {fmt.name} format has no $request_time: no timing percentiles; "
            "the guide's main format logs request_time and the upstream fields."
        )
    for read in files:
        if read.compressed:
            notes.append(
                f"{read.path} is gzip-compressed: it cannot seek, so "
                f"{read.bytes_read / 1e6:.1f} MB were read from the start."
            )
    return tuple(notes)


# ---- conclusions


def conclude(
    window: WindowStats, baseline: WindowStats, errors: ErrorSummary | None
) -> tuple[str, ...]:
    """Return what the numbers support, the main conclusion first."""
    minutes = round((window.end - window.start) / 60)
    if window.requests == 0:
        if baseline.requests:
            return (
                f"No request reached nginx in the window, after {baseline.requests} "
                f"in the {minutes} minutes before: the platform could not reach "
                "this server (DNS, network, firewall, a full accept queue), or "
                "nginx stopped logging.",
            )
        return (
            "No request in the window nor before it: is this the callback host's "
            "log, and is the time zone right (--tz)?",
        )
    signs = errors.counts if errors else {}
    found = [
        *_exhaustion(signs),
        *_timeouts(window),
        *_gateway(window, signs),
        *_client_errors(window),
    ]
    if found:
        return tuple(found)
    return (_all_clear(window, signs),)


def _significant(count: int, total: int) -> bool:
    # 1% of the window, or enough to trip an alarm on a busy account.
    return count >= 100 or (count >= 3 and count / total >= 0.01)


def _exhaustion(signs: dict[str, int]) -> list[str]:
    counted = [
        f"{signs[key]} '{text}'"
        for key, text in ERROR_SIGNS
        if key in ("worker_connections", "open_files") and signs.get(key)
    ]
    if not counted:
        return []
    return [
        f"nginx ran out of connections or file descriptors ({', '.join(counted)} "
        "lines): raise worker_connections and worker_rlimit_nofile, and check "
        "ulimit -n."
    ]


def _timeouts(window: WindowStats) -> list[str]:
    abandoned = window.count("499")
    if not _significant(window.slow + abandoned, window.requests):
        return []
    upstream = window.upstream_time
    where = ""
    if upstream is not None and upstream.p95 >= 1.0:
        where = (
            f"; the time goes to the backend (upstream_response_time p95 "
            f"{upstream.p95:.3f} s)"
        )
    elif upstream is not None:
        where = (
            f"; the backend answers fast (upstream_response_time p95 "
            f"{upstream.p95:.3f} s), so the time is lost in nginx or the network"
        )
    share = window.slow / window.requests
    return [
        f"{window.slow} requests ({share:.0%}) took 5 s or longer and {abandoned} "
        "ended in 499 (the client hung up first): the platform stops waiting "
        f"after 5 s, so these are request timeouts{where}."
    ]


def _gateway(window: WindowStats, signs: dict[str, int]) -> list[str]:
    found = []
    bad_gateway = window.count("502")
    if _significant(bad_gateway, window.requests):
        refused = max(signs.get("connect_failed", 0), signs.get("refused", 0))
        evidence = (
            f" and the error log has {refused} 'connect() failed' / 'Connection "
            "refused' lines"
            if refused
            else ""
        )
        found.append(
            f"{bad_gateway} requests got 502{evidence}: the backend was down or "
            "refused nginx's connections; the platform sees an invalid response."
        )
    timed_out = window.count("504")
    if _significant(timed_out, window.requests):
        found.append(
            f"{timed_out} requests got 504: the backend did not answer nginx in "
            "time; raise the backend's capacity or answer success at once."
        )
    for status in ("503", "500"):
        count = window.count(status)
        if _significant(count, window.requests):
            found.append(f"{count} requests got {status}: {STATUS_MEANINGS[status]}.")
    return found


def _client_errors(window: WindowStats) -> list[str]:
    found = []
    for status in ("404", "403"):
        count = window.count(status)
        if _significant(count, window.requests):
            found.append(f"{count} requests got {status}: {STATUS_MEANINGS[status]}.")
    return found


def _all_clear(window: WindowStats, signs: dict[str, int]) -> str:
    timing = ""
    if window.request_time is not None:
        timing = f" with request_time p99 {window.request_time.p99:.3f} s"
    reset = signs.get("reset", 0)
    extra = (
        f" The error log has {reset} 'Connection reset by peer' lines: clients "
        "hung up mid-request."
        if reset
        else ""
    )
    return (
        f"All {window.requests} requests were answered in time{timing}: nginx saw "
        "no fault in this window. A DNS failure or connect timeout happens before "
        "nginx, and an invalid response is in the body: probe the URL to see it."
        + extra
    )


# ---- text


def parse_window(text: str) -> timedelta:
    """Parse ``5m``, ``300s``, ``1h`` or a bare number of minutes.

    Raises:
        ValueError: not such a duration.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use 5m, 300s or 1h)")
    unit = {"s": 1, "m": 60, "h": 3600, "": 60}[match[2]]
    return timedelta(seconds=float(match[1]) * unit)


def parse_around(text: str, zone: str = "+08:00") -> datetime:
    """Parse the alarm time, e.g. ``2014-12-01 20:12:00``, in ``zone`` if naive.

    Raises:
        ValueError: not a time, or not a zone like ``+08:00``.
    """
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=parse_zone(zone))


def parse_zone(text: str) -> timezone:
    """Parse ``+08:00``, ``+0800``, ``-05:30`` or ``UTC``.

    Raises:
        ValueError: not such a zone.
    """
    if text.strip().upper() in ("UTC", "Z"):
        return UTC
    match = re.fullmatch(r"\s*([+-])(\d\d):?(\d\d)\s*", text)
    if match is None:
        raise ValueError(f"not a UTC offset: {text!r} (use +08:00)")
    sign = -1 if match[1] == "-" else 1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


def format_report(report: LogReport) -> str:
    """Return the human-readable report (English for now), conclusion last.

    NOTE: this is the one place of this text; it moves to knowledge/templates
    with the chat command.
    """
    zone = timezone(timedelta(seconds=report.utc_offset))
    w, b = report.window, report.baseline
    lines = [
        f"window: {_clock(w.start, zone, full=True)} to {_clock(w.end, zone)} "
        f"({report.log_format} format)",
        f"requests: {w.requests} (the window before: {b.requests})",
    ]
    if w.requests:
        lines += _stats_lines(w, b, zone)
    if report.errors is not None:
        lines += _error_lines(report.errors)
    lines += [f"note: {note}" for note in report.notes]
    read = ", ".join(
        f"{Path(f.path).name} {f.bytes_read / 1e6:.1f} MB "
        f"(seek {f.seek_ms:.0f} ms, read {f.read_ms:.0f} ms)"
        for f in report.files
    )
    lines.append(f"read: {read}; {report.elapsed_ms:.0f} ms in all")
    lines += [f"conclusion: {text}" for text in report.conclusions]
    return "\n".join(lines)


def _stats_lines(w: WindowStats, b: WindowStats, zone: timezone) -> list[str]:
    lines = ["status: " + _counts(w.status)]
    lines += [
        f"  {code}: {STATUS_MEANINGS[code]}"
        for code in w.status
        if code in STATUS_MEANINGS and code != "200"
    ]
    if any(code != "-" for code in w.upstream_status):
        lines.append("upstream status: " + _counts(w.upstream_status))
    for label, now, before in (
        ("request_time", w.request_time, b.request_time),
        ("upstream_response_time", w.upstream_time, b.upstream_time),
    ):
        if now is not None:
            was = f" (before: p95 {before.p95:.3f})" if before else ""
            lines.append(f"{label} s: {_percentiles(now)}{was}")
    if w.request_time is not None:
        lines.append(f"5 s or slower: {w.slow}")
    lines.append(
        "per minute (requests/failed/slow): "
        + ", ".join(
            f"{_clock(m.minute, zone)[:5]} {m.requests}/{m.failed}/{m.slow}"
            for m in w.per_minute
        )
    )
    if w.slowest:
        lines.append("slowest:")
        lines += [
            f"  {_clock(r.time, zone)} {r.request_time:.3f} s {r.status} upstream "
            f"{r.upstream_status or '-'} {r.shown_request}"
            for r in w.slowest
        ]
    return lines


def _error_lines(errors: ErrorSummary) -> list[str]:
    signs = dict(ERROR_SIGNS)
    counted = ", ".join(f"'{signs[key]}' {n}" for key, n in errors.counts.items())
    lines = [
        f"error log: {errors.lines} lines in the window; "
        + (counted or "none of the signs that matter")
    ]
    lines += [f"  {sample}" for sample in errors.samples]
    return lines


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items())


def _percentiles(p: Percentiles) -> str:
    return (
        f"p50 {p.p50:.3f}, p90 {p.p90:.3f}, p95 {p.p95:.3f}, p99 {p.p99:.3f}, "
        f"max {p.max:.3f}"
    )


def _clock(epoch: float, zone: timezone, *, full: bool = False) -> str:
    moment = datetime.fromtimestamp(epoch, zone)
    return moment.isoformat(sep=" ") if full else moment.strftime("%H:%M:%S")


def _stats_json(stats: WindowStats, offset: float) -> dict[str, object]:
    zone = timezone(timedelta(seconds=offset))
    return {
        "start": datetime.fromtimestamp(stats.start, zone).isoformat(),
        "end": datetime.fromtimestamp(stats.end, zone).isoformat(),
        "requests": stats.requests,
        "status": stats.status,
        "upstream_status": stats.upstream_status,
        "request_time": dataclasses.asdict(stats.request_time)
        if stats.request_time
        else None,
        "upstream_response_time": dataclasses.asdict(stats.upstream_time)
        if stats.upstream_time
        else None,
        "slow": stats.slow,
        "slowest": [
            {
                "time": datetime.fromtimestamp(r.time, zone).isoformat(),
                "request_time": r.request_time,
                "status": r.status,
                "upstream_status": r.upstream_status,
                "upstream_addr": r.upstream_addr,
                "request": r.shown_request,
            }
            for r in stats.slowest
        ],
        "per_minute": [
            {
                "minute": datetime.fromtimestamp(m.minute, zone).isoformat(),
                "requests": m.requests,
                "failed": m.failed,
                "slow": m.slow,
            }
            for m in stats.per_minute
        ],
    }
