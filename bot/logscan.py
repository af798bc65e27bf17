"""nginx access and error log analysis around an alarm window.

nginx writes its logs in time order, so the window is found by a binary search
on byte offsets: a handful of seeks, then only the window is read, whatever the
size of the file. Gzip-rotated files cannot seek cheaply; they are read from
the start up to the end of the window, and the report says so. A log that is
not in time order (two files concatenated, a sorted-by-something-else export)
defeats the search: a few evenly spaced lines and the lines read are checked
for order, and the report warns when they are not. No line is read whole past
``MAX_LINE`` bytes, so one huge line cannot fill the memory.

Three access-log formats are understood: the guide's ``main`` format (with
``request_time`` and the upstream fields), nginx's default ``combined``, and
any ``log_format`` string given by the caller.

The analysis speaks in codes: conclusions and notes are ``Remark`` ids with
values. The words come from the knowledge base: what a status or an error-log
line means from the ``nginx_status`` and ``nginx_errors`` tables, the rest from
the ``logs`` and ``logs_item`` templates, in the reader's language.
"""

from __future__ import annotations

import calendar
import collections
import dataclasses
import functools
import gzip
import itertools
import math
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, cast

from bot.errors import BotError
from bot.knowledge import Knowledge, Row, normalize
from bot.policy import duration_seconds

if TYPE_CHECKING:
    from bot.render import ReplyRenderer

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

SLOW_UPSTREAM = 1.0
"""upstream_response_time p95, in seconds, from which the backend is the slow part."""

MAX_WINDOW = timedelta(days=31)
"""The longest window ``--window`` takes."""

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
"""Alarm times outside [EARLIEST, LATEST) are refused: the window, its
baseline and their display must stay within what ``datetime`` can hold."""

MAX_LINE = 64 * 1024
"""Bytes of one line read at most; a longer line is skipped, not parsed."""

SKIPPED_LINE = b"<line over 64 KiB skipped>\n"
"""What a line over ``MAX_LINE`` reads as: it matches no format."""

REPORTED_STATUSES = ("403", "404", "499", "500", "502", "503", "504")
"""Statuses the conclusions explain from the ``nginx_status`` table; kb check
requires a row (key or alias) for each."""

ERROR_SIGNS = (
    ("connect_failed", "connect() failed"),
    ("refused", "Connection refused"),
    ("reset", "Connection reset by peer"),
    ("timed_out", "Connection timed out"),
    ("upstream_timed_out", "upstream timed out"),
    ("worker_connections", "worker_connections are not enough"),
    ("open_files", "Too many open files"),
    ("no_live_upstreams", "no live upstreams"),
    ("prematurely_closed", "upstream prematurely closed"),
)
"""Error-log strings that matter for alarms, as (key, text) pairs; a text that
is a key or alias of an ``nginx_errors`` row is explained by that row."""

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
_ORDER_PROBES = 16
_HEAD_LINES = 20
_WINDOW_RANGE = (
    f"a window must be longer than 0 and at most {MAX_WINDOW.days} days "
    f"({MAX_WINDOW.days * 24}h)"
)
_AROUND_RANGE = (
    f"the alarm time must be from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} (UTC)"
)


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


def check_format(log_format: LogFormat, path: Path, head: Sequence[str]) -> None:
    """Refuse a format that most of the first lines of ``path`` do not match.

    Without this check a wrong ``--format`` reads as a window without requests.

    Raises:
        LogScanError: more than half of ``head`` does not parse; the message
            shows the first such line, shortened and without its query string.
    """
    lines = [line.rstrip("\r\n") for line in head if line.strip()]
    failed = [line for line in lines if log_format.parse(line) is None]
    if len(failed) * 2 <= len(lines):
        return
    name = log_format.name if log_format.name != "custom" else repr(log_format.text)
    raise LogScanError(
        f"the log format {name} does not match {path}: {len(failed)} of its first "
        f"{len(lines)} lines do not parse, the first of them: {_shown_line(failed[0])}"
        " (pass the log_format of this file with --format: main, combined or "
        "the string from nginx.conf)"
    )


def _shown_line(line: str, limit: int = 160) -> str:
    # Lines are decoded as latin-1 to keep every byte; show them as UTF-8.
    text = line.encode("latin-1", errors="replace").decode("utf-8", errors="replace")
    text = _QUERY.sub("?…", text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


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


def read_line(stream: BinaryIO) -> bytes:
    """Read one line, b"" at the end; a line over ``MAX_LINE`` as ``SKIPPED_LINE``.

    The rest of a long line is read past in ``MAX_LINE`` blocks, so memory stays
    bounded however long the line.
    """
    line = stream.readline(MAX_LINE)
    if len(line) < MAX_LINE or line.endswith(b"\n"):
        return line
    while True:
        rest = stream.readline(MAX_LINE)
        if not rest or rest.endswith(b"\n"):
            return SKIPPED_LINE


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    return iter(functools.partial(read_line, stream), b"")


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


def is_time_ordered(
    stream: BinaryIO, size: int, line_time: Callable[[bytes], float | None]
) -> bool:
    """Return False if lines spread over the file go back in time.

    Reads the first timed line after each of ``_ORDER_PROBES`` evenly spaced
    offsets and near the end (a block each at most), not the whole file. Steps
    back up to a minute are normal (see ``read_lines``).
    """
    offsets = {size * index // _ORDER_PROBES for index in range(_ORDER_PROBES)}
    offsets.add(max(0, size - 4096))
    times = []
    for offset in sorted(offsets):
        found = _first_timed_line(
            stream, offset, min(size, offset + _SEEK_BLOCK), line_time
        )
        if found is not None:
            times.append(found[1])
    return _is_ordered(times)


def _is_ordered(times: Iterable[float]) -> bool:
    latest = -math.inf
    for moment in times:
        if moment < latest - _SLACK:
            return False
        latest = max(latest, moment)
    return True


def _first_timed_line(
    stream: BinaryIO,
    position: int,
    limit: int,
    line_time: Callable[[bytes], float | None],
) -> tuple[int, float] | None:
    stream.seek(position)
    if position:
        read_line(stream)  # the rest of a line that starts before ``position``
    while True:
        offset = stream.tell()
        line = read_line(stream)
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
) -> tuple[BinaryIO, bool]:
    # Returns the stream and whether a sample of its lines is in time order;
    # a gzip stream cannot be sampled, so only the lines read tell.
    if compressed:
        return cast(BinaryIO, gzip.open(path, "rb")), True
    stream = path.open("rb")
    try:
        size = path.stat().st_size
        is_ordered = is_time_ordered(stream, size, line_time)
        stream.seek(seek_time(stream, size, target, line_time))
    except BaseException:
        stream.close()
        raise
    return stream, is_ordered


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
        is_ordered: False when lines went back in time by more than a
            minute, in a sample of the file or in the lines read: the seek
            and the stop at the window's end may then have missed lines.
        is_complete: False when a gzip file ended early or was damaged (a
            rotation still being written, a cut copy): reading stopped there.
        reached_end: True when a line after the window was read, so the
            window was read to its end.
    """

    path: str
    compressed: bool
    bytes_read: int
    seek_ms: float
    read_ms: float
    is_ordered: bool = True
    is_complete: bool = True
    reached_end: bool = False


@dataclass(slots=True)
class _Progress:
    bytes: int = 0
    seek: float = 0.0
    read: float = 0.0
    is_ordered: bool = True
    is_complete: bool = True
    reached_end: bool = False


def read_lines(
    path: Path,
    start: float,
    end: float,
    line_time: Callable[[bytes], float | None],
) -> tuple[Iterator[bytes], Callable[[], FileRead]]:
    """Return the raw lines of ``path`` logged in about [start, end), and a report.

    Lines up to a minute out of order around the edges are included; callers
    filter by exact time. A line over ``MAX_LINE`` reads as ``SKIPPED_LINE``.
    The report function is valid once the lines are consumed.
    """
    compressed = _is_gzip(path)
    progress = _Progress()

    def lines() -> Iterator[bytes]:
        began = time.perf_counter()
        stream, progress.is_ordered = _open_at(
            path, compressed, start - _SLACK, line_time
        )
        with stream:
            progress.seek = time.perf_counter() - began
            began = time.perf_counter()
            first = stream.tell()
            latest = -math.inf
            in_range = False
            try:
                for count, line in enumerate(_lines(stream)):
                    # Lines are in time order: once in range, checking every
                    # 64th line for the end costs little and saves most parsing.
                    if not in_range or not count % 64:
                        moment = line_time(line)
                        if moment is not None:
                            if moment >= end + _SLACK:
                                progress.reached_end = True
                                break
                            in_range = in_range or moment >= start - _SLACK
                            if moment < latest - _SLACK:
                                progress.is_ordered = False
                            latest = max(latest, moment)
                    if in_range:
                        yield line
            except (EOFError, zlib.error, gzip.BadGzipFile):
                # The lines read so far stand; the report says the rest is lost.
                progress.is_complete = False
            finally:
                progress.bytes = stream.tell() - first
                progress.read = time.perf_counter() - began

    def report() -> FileRead:
        return FileRead(
            str(path),
            compressed,
            progress.bytes,
            progress.seek * 1000,
            progress.read * 1000,
            progress.is_ordered,
            progress.is_complete,
            progress.reached_end,
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
    """Requests of one minute: all, failed and 5 s or slower.

    Failed is every status but 200: the platform takes no other answer.
    """

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


def _per_minute(records: Sequence[AccessRecord]) -> tuple[MinuteCount, ...]:
    minutes: dict[float, list[int]] = {}
    for record in records:
        counts = minutes.setdefault(record.time // 60 * 60, [0, 0, 0])
        counts[0] += 1
        counts[1] += record.status != "200"
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
        if "upstream_timed_out" in signs and "timed_out" in signs:
            # NOTE: nginx writes "upstream timed out (110: Connection timed
            # out)": one fault, the upstream's, not a connect timeout as well.
            signs.remove("timed_out")
        counts.update(signs)
        if signs and len(samples) < 5:
            samples.append(_QUERY.sub("?…", text))
    ordered = {key: counts[key] for key, _ in ERROR_SIGNS if counts[key]}
    return ErrorSummary(str(path), ordered, tuple(samples), total)


# ---- the report

RemarkValue = int | float | str | bool | None


@dataclass(frozen=True, slots=True)
class Remark:
    """A conclusion or a note of the report, as a code and the values it names.

    The wording is in the ``logs_item`` template, chosen by ``id``; the ids and
    their values are listed in ``SAMPLE_REMARKS``.

    Attributes:
        id: what is concluded, e.g. ``timeouts`` or ``bad_gateway``.
        values: the numbers and names the wording uses.
    """

    id: str
    values: dict[str, RemarkValue] = dataclasses.field(default_factory=dict)


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
        warnings: reasons the counts may be incomplete, e.g. a log that is
            not in time order.
    """

    window: WindowStats
    baseline: WindowStats
    log_format: str
    errors: ErrorSummary | None
    files: tuple[FileRead, ...]
    utc_offset: float
    conclusions: tuple[Remark, ...]
    notes: tuple[Remark, ...]
    elapsed_ms: float
    warnings: tuple[Remark, ...] = ()

    def to_json(self, renderer: ReplyRenderer) -> dict[str, object]:
        """Return the ``--json`` object, its texts in ``renderer``'s language.

        ``meanings`` maps each status other than 200 to its meaning in the
        knowledge, or null when the knowledge has no row for it; ``reply`` is
        the text report.
        """
        knowledge, lang = renderer.knowledge, renderer.lang
        meanings = {
            code: row.meaning.get(lang) if row else None
            for code, row in _status_rows(knowledge, self.window).items()
        }
        return {
            "window": _stats_json(self.window, self.utc_offset),
            "baseline": _stats_json(self.baseline, self.utc_offset),
            "format": self.log_format,
            "meanings": meanings,
            "errors": dataclasses.asdict(self.errors) if self.errors else None,
            "files": [dataclasses.asdict(read) for read in self.files],
            "conclusions": render_remarks(self.conclusions, renderer),
            "conclusion_ids": [remark.id for remark in self.conclusions],
            "notes": render_remarks(self.notes, renderer),
            "warnings": render_remarks(self.warnings, renderer),
            "warning_ids": [remark.id for remark in self.warnings],
            "elapsed_ms": round(self.elapsed_ms, 1),
            "reply": format_report(self, renderer),
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
        LogScanError: a file cannot be read, every access log is empty, or
            the format is not understood or does not match a file.
        ValueError: ``around`` has no time zone or is out of range, or the
            window is not positive or longer than ``MAX_WINDOW``.
    """
    if around.tzinfo is None:
        raise ValueError("around must carry a time zone")
    if not EARLIEST <= around < LATEST:
        raise ValueError(f"{around} is out of range: {_AROUND_RANGE}")
    if not timedelta(0) < window <= MAX_WINDOW:
        raise ValueError(f"a window of {window} is out of range: {_WINDOW_RANGE}")
    began = time.perf_counter()
    start = around.timestamp()
    end = start + window.total_seconds()
    base_start = start - window.total_seconds()
    try:
        fmt, head = _access_format(access_logs, log_format)
        records: list[AccessRecord] = []
        unparsed: collections.Counter[str] = collections.Counter()
        files = []
        for path in access_logs:
            lines, report = read_lines(path, base_start, end, fmt.line_time)
            records += _parse_lines(fmt, lines, unparsed)
            files.append(report())
        offset = _utc_offset(head, fmt, around)
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
        conclusions=_trusted(
            conclude(stats, baseline, errors), files[: len(access_logs)]
        ),
        notes=_read_notes(fmt, files, unparsed),
        elapsed_ms=(time.perf_counter() - began) * 1000,
        warnings=_warnings(files),
    )


def _access_format(
    access_logs: Sequence[Path], log_format: str | None
) -> tuple[LogFormat, list[str]]:
    # Returns the format and the first lines of the first access log with any.
    heads = [(path, _head(path)) for path in access_logs]
    filled = [(path, head) for path, head in heads if head]
    if not filled:
        names = ", ".join(map(str, access_logs))
        raise LogScanError(
            f"nothing to scan: {names} {'is' if len(heads) == 1 else 'are'} empty"
        )
    fmt = resolve_format(log_format, filled[0][1])
    for path, head in filled:
        check_format(fmt, path, head)
    return fmt, filled[0][1]


def _warnings(reads: Sequence[FileRead]) -> tuple[Remark, ...]:
    """What the report must say about how the files were read."""
    unordered = (
        Remark("unordered", {"path": r.path}) for r in reads if not r.is_ordered
    )
    cut = (Remark("truncated", {"path": r.path}) for r in reads if not r.is_complete)
    return (*unordered, *cut)


_ABSENCE = frozenset({"no_requests", "no_traffic", "all_clear"})
"""Conclusions that stand on what the log does not show."""


def _trusted(
    conclusions: tuple[Remark, ...], reads: list[FileRead]
) -> tuple[Remark, ...]:
    """Drop what the logs as read cannot support: no request is not no traffic.

    A file cut short counts only when no file was read past the window (an
    older rotation cut short does not matter when the current log covers the
    window); a file out of time order always does, since the seek misses lines.
    """
    cut = [r.path for r in reads if not r.is_complete]
    if cut and any(r.reached_end for r in reads):
        cut = []
    unordered = [r.path for r in reads if not r.is_ordered]
    if not cut and not unordered:
        return conclusions
    kept = tuple(c for c in conclusions if c.id not in _ABSENCE)
    if kept:
        return kept
    if cut:
        return (Remark("cut_short", {"path": cut[0]}),)
    return (Remark("unordered_counts", {"path": unordered[0]}),)


def _head(path: Path, count: int = _HEAD_LINES) -> list[str]:
    # The first lines that are not blank, of the first thousand.
    lines = []
    with _open_log(path) as stream:
        try:
            for line in itertools.islice(_lines(stream), 1000):
                if line.strip():
                    lines.append(line.decode("latin-1"))
                if len(lines) == count:
                    break
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            if not lines:
                raise LogScanError(
                    f"{path} is a damaged or incomplete gzip file, with no line "
                    f"that can be read ({exc or type(exc).__name__})"
                ) from None
    return lines


def _open_log(path: Path) -> BinaryIO:
    if _is_gzip(path):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def _parse_lines(
    fmt: LogFormat, lines: Iterable[bytes], unparsed: collections.Counter[str]
) -> Iterator[AccessRecord]:
    # Counts in ``unparsed`` the lines that do not parse, and the long ones.
    for line in lines:
        record = fmt.parse(line.decode("latin-1").rstrip("\r\n"))
        if record is not None:
            yield record
        elif line is SKIPPED_LINE:
            unparsed.update(("lines", "long"))
        elif line.strip():
            unparsed["lines"] += 1


def _utc_offset(head: Sequence[str], fmt: LogFormat, around: datetime) -> float:
    # The error log has no zone: nginx writes it in the access log's local time.
    if fmt.time_field == "time_local":
        for line in head:
            match = fmt.pattern.match(line)
            if match and re.search(r"[+-]\d{4}$", match["time_local"]):
                stamp = match["time_local"][-5:]
                sign = -1 if stamp[0] == "-" else 1
                return sign * (int(stamp[1:3]) * 3600 + int(stamp[3:5]) * 60)
    delta = around.utcoffset()
    return delta.total_seconds() if delta else 0.0


def _read_notes(
    fmt: LogFormat, files: Sequence[FileRead], unparsed: collections.Counter[str]
) -> tuple[Remark, ...]:
    notes = []
    if "request_time" not in fmt.fields:
        notes.append(Remark("no_request_time", {"format": fmt.name}))
    if unparsed["lines"]:
        values: dict[str, RemarkValue] = {
            "lines": unparsed["lines"],
            "long": unparsed["long"],
        }
        notes.append(Remark("unparsed", values))
    for read in files:
        if read.compressed:
            megabytes = round(read.bytes_read / 1e6, 1)
            notes.append(Remark("gzip", {"path": read.path, "megabytes": megabytes}))
    return tuple(notes)


# ---- conclusions


def conclude(
    window: WindowStats, baseline: WindowStats, errors: ErrorSummary | None
) -> tuple[Remark, ...]:
    """Return what the numbers support, the main conclusion first."""
    if window.requests == 0:
        if baseline.requests:
            minutes = round((window.end - window.start) / 60)
            values: dict[str, RemarkValue] = {
                "baseline": baseline.requests,
                "minutes": minutes,
            }
            return (Remark("no_requests", values),)
        return (Remark("no_traffic"),)
    signs = errors.counts if errors else {}
    causes = [*_exhaustion(signs), *_timeouts(window)]
    answers = [*_gateway(window, signs), *_client_errors(window)]
    covered = {str(remark.values["status"]) for remark in answers}
    if any(remark.id == "timeouts" for remark in causes):
        covered.add("499")
    answers += _other_statuses(window, covered)
    # The status most requests got leads; sort() keeps ties in the order above.
    answers.sort(key=lambda remark: -int(remark.values["count"] or 0))
    found = causes + answers + _rest_statuses(window, covered)
    if found:
        return tuple(found)
    return (_all_clear(window, signs),)


def _significant(count: int, total: int) -> bool:
    # 1% of the window, or enough to trip an alarm on a busy account.
    return count >= 100 or (count >= 3 and count / total >= 0.01)


def _exhaustion(signs: dict[str, int]) -> list[Remark]:
    connections, files = signs.get("worker_connections", 0), signs.get("open_files", 0)
    if not connections and not files:
        return []
    values: dict[str, RemarkValue] = {
        "worker_connections": connections,
        "open_files": files,
    }
    return [Remark("exhausted", values)]


def _timeouts(window: WindowStats) -> list[Remark]:
    abandoned = window.count("499")
    if not _significant(window.slow + abandoned, window.requests):
        return []
    upstream = window.upstream_time
    values: dict[str, RemarkValue] = {
        "slow": window.slow,
        "share": window.slow / window.requests,
        "abandoned": abandoned,
        "upstream_p95": upstream.p95 if upstream else None,
        "slow_upstream": upstream.p95 >= SLOW_UPSTREAM if upstream else None,
    }
    return [Remark("timeouts", values)]


def _gateway(window: WindowStats, signs: dict[str, int]) -> list[Remark]:
    found = []
    bad_gateway = window.count("502")
    if _significant(bad_gateway, window.requests):
        refused = max(signs.get("connect_failed", 0), signs.get("refused", 0))
        values: dict[str, RemarkValue] = {
            "status": "502",
            "count": bad_gateway,
            "refused": refused,
        }
        found.append(Remark("bad_gateway", values))
    return found + _statuses(window, ("504", "503", "500"))


def _client_errors(window: WindowStats) -> list[Remark]:
    return _statuses(window, ("404", "403"))


def _statuses(window: WindowStats, statuses: Sequence[str]) -> list[Remark]:
    return [
        Remark("status", {"status": status, "count": window.count(status)})
        for status in statuses
        if _significant(window.count(status), window.requests)
    ]


def _uncovered(window: WindowStats, covered: set[str]) -> dict[str, int]:
    # 200 is the one answer the platform accepts: every other one fails a push.
    return {
        code: count
        for code, count in window.status.items()
        if code != "200" and code not in covered
    }


def _other_statuses(window: WindowStats, covered: set[str]) -> list[Remark]:
    return _statuses(window, tuple(_uncovered(window, covered)))


def _rest_statuses(window: WindowStats, covered: set[str]) -> list[Remark]:
    # Statuses each too rare to conclude from, but together a share that is not.
    rest = {
        code: count
        for code, count in _uncovered(window, covered).items()
        if not _significant(count, window.requests)
    }
    total = sum(rest.values())
    if not _significant(total, window.requests):
        return []
    ranked = sorted(rest.items(), key=lambda item: -item[1])
    values: dict[str, RemarkValue] = {
        "count": total,
        "statuses": ", ".join(f"{code} ×{count}" for code, count in ranked),
    }
    return [Remark("other_statuses", values)]


def _all_clear(window: WindowStats, signs: dict[str, int]) -> Remark:
    timing = window.request_time
    values: dict[str, RemarkValue] = {
        "requests": window.requests,
        # too few to be a finding, but not "all answered" either
        "not_ok": window.requests - window.count("200"),
        "p99": timing.p99 if timing else None,
        "reset": signs.get("reset", 0),
    }
    return Remark("all_clear", values)


# ---- text


def parse_window(text: str) -> timedelta:
    """Parse ``5m``, ``300s``, ``1h``, ``1d``, ``1h30m``, ``5分钟`` or minutes.

    Durations read as in the chat commands (``bot.policy.duration_seconds``).

    Raises:
        ValueError: not such a duration, or not in (0, ``MAX_WINDOW``].
    """
    seconds = duration_seconds(text.strip())
    if seconds is None:
        raise ValueError(f"not a duration: {text!r} (use 5m, 300s, 1h30m or 1d)")
    # Compared as a float first: timedelta() overflows on absurd values.
    if not 0 < seconds <= MAX_WINDOW.total_seconds():
        raise ValueError(f"{text.strip()!r} is out of range: {_WINDOW_RANGE}")
    return timedelta(seconds=seconds)


_STAMP = re.compile(r"\d{9,11}")


def parse_around(text: str, zone: str | tzinfo = "+08:00") -> datetime:
    """Parse the alarm time, e.g. ``2014-12-01 20:12:00``, in ``zone`` if naive.

    Raises:
        ValueError: not a time, not in [``EARLIEST``, ``LATEST``), or not a
            zone like ``+08:00``.
    """
    written = text.strip()
    try:
        if _STAMP.fullmatch(written):  # the Stamp of an alarm's error sample
            moment = datetime.fromtimestamp(int(written), UTC)
        else:  # error.log writes dates with slashes
            moment = datetime.fromisoformat(
                re.sub(r"^(\d{4})/(\d\d)/", r"\1-\2-", written)
            )
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use 2014-12-01 20:12:00, "
            "2014-12-01T20:12:00+08:00 with a UTC offset, or a Unix Stamp)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(
            tzinfo=parse_zone(zone) if isinstance(zone, str) else zone
        )
    if not EARLIEST <= moment < LATEST:
        raise ValueError(f"{text.strip()!r} is out of range: {_AROUND_RANGE}")
    return moment


def parse_zone(text: str) -> timezone:
    """Parse ``+08:00``, ``+0800``, ``-05:30`` or ``UTC``.

    Raises:
        ValueError: not such a zone, or more than 23:59 from UTC.
    """
    if text.strip().upper() in ("UTC", "Z"):
        return UTC
    match = re.fullmatch(r"\s*([+-])(\d\d):?(\d\d)\s*", text)
    if match is None or int(match[2]) > 23 or int(match[3]) > 59:
        raise ValueError(
            f"not a UTC offset: {text!r} (use UTC, or +HH:MM or +HHMM from "
            "-23:59 to +23:59, e.g. +08:00)"
        )
    sign = -1 if match[1] == "-" else 1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


# ---- the words: the knowledge's rows and the logs templates


def status_row(
    knowledge: Knowledge, status: str, *, by_class: bool = True
) -> Row | None:
    """Return the ``nginx_status`` row that explains ``status``, or None.

    A row names its statuses by key and aliases; with ``by_class``, a status
    without a row of its own takes its class's (an alias ``3xx`` or ``5xx``).
    """
    names = (status, f"{status[:1]}xx") if by_class else (status,)
    return _find_row(knowledge, "nginx_status", names)


def error_row(knowledge: Knowledge, text: str) -> Row | None:
    """Return the ``nginx_errors`` row whose key or alias is ``text``, or None."""
    return _find_row(knowledge, "nginx_errors", (text,))


def _find_row(knowledge: Knowledge, table_id: str, names: Sequence[str]) -> Row | None:
    table = knowledge.table(table_id)
    if table is None:
        return None
    for name in filter(None, map(normalize, names)):
        for row in table.rows:
            if name in {normalize(n) for n in (row.key, *row.aliases)}:
                return row
    return None


def _status_rows(knowledge: Knowledge, stats: WindowStats) -> dict[str, Row | None]:
    # 200 is the one answer the platform accepts: every other status is told.
    return {code: status_row(knowledge, code) for code in stats.status if code != "200"}


def render_remark(remark: Remark, renderer: ReplyRenderer) -> str:
    """Return the wording of one conclusion or note (empty if it has none).

    A remark with a ``status`` value gets that status's row as ``row``.
    """
    status = remark.values.get("status")
    row = status_row(renderer.knowledge, str(status)) if status else None
    return renderer.render("logs_item", item=remark, row=row)


def render_remarks(remarks: Iterable[Remark], renderer: ReplyRenderer) -> list[str]:
    """Return the wording of each remark; its id where the template has none."""
    # NOTE: kb check fails a template without words for an id, so the id shows
    # only with a knowledge base that was never checked.
    return [render_remark(remark, renderer) or remark.id for remark in remarks]


def format_report(report: LogReport, renderer: ReplyRenderer) -> str:
    """Return the text report in ``renderer``'s language, the conclusions last."""
    return renderer.render("logs", **report_context(report, renderer))


def report_context(report: LogReport, renderer: ReplyRenderer) -> dict[str, object]:
    """Return the ``logs`` template's variables for ``report``."""
    knowledge = renderer.knowledge
    zone = timezone(timedelta(seconds=report.utc_offset))
    statuses = _status_rows(knowledge, report.window)
    return {
        "window": _stats_view(report.window, zone),
        "baseline": _stats_view(report.baseline, zone),
        "zone": _zone_name(report.utc_offset),
        "log_format": report.log_format,
        "statuses": [
            {"status": code, "count": report.window.status[code], "row": row}
            for code, row in statuses.items()
        ],
        "errors": _errors_view(report.errors, knowledge) if report.errors else None,
        "files": [
            {
                "name": Path(read.path).name,
                "megabytes": read.bytes_read / 1e6,
                "compressed": read.compressed,
                "seek_ms": read.seek_ms,
                "read_ms": read.read_ms,
            }
            for read in report.files
        ],
        "elapsed_ms": report.elapsed_ms,
        "notes": render_remarks(report.notes, renderer),
        "warnings": render_remarks(report.warnings, renderer),
        "conclusions": render_remarks(report.conclusions, renderer),
    }


def _stats_view(stats: WindowStats, zone: timezone) -> dict[str, object]:
    def moment(epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, zone)

    return {
        "start": moment(stats.start),
        "end": moment(stats.end),
        "requests": stats.requests,
        "status": stats.status,
        "upstream_status": stats.upstream_status,
        "has_upstream": any(code != "-" for code in stats.upstream_status),
        "request_time": stats.request_time,
        "upstream_time": stats.upstream_time,
        "slow": stats.slow,
        "slowest": [
            {
                "time": moment(r.time),
                "request_time": r.request_time,
                "status": r.status,
                "upstream_status": r.upstream_status,
                "request": r.shown_request,
            }
            for r in stats.slowest
        ],
        "per_minute": [
            {
                "minute": moment(m.minute),
                "requests": m.requests,
                "failed": m.failed,
                "slow": m.slow,
            }
            for m in stats.per_minute
        ],
    }


def _errors_view(errors: ErrorSummary, knowledge: Knowledge) -> dict[str, object]:
    texts = dict(ERROR_SIGNS)
    return {
        "path": errors.path,
        "lines": errors.lines,
        "signs": [
            {
                "key": key,
                "text": texts[key],
                "count": count,
                "row": error_row(knowledge, texts[key]),
            }
            for key, count in errors.counts.items()
        ],
        "samples": errors.samples,
    }


def _zone_name(offset: float) -> str:
    minutes = round(offset / 60)
    hours, minutes = divmod(abs(minutes), 60)
    return f"UTC{'-' if offset < 0 else '+'}{hours:02d}:{minutes:02d}"


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


# ---- samples, for kb check


SAMPLE_REMARKS: tuple[Remark, ...] = (
    Remark("no_requests", {"baseline": 1500, "minutes": 5}),
    Remark("no_traffic"),
    Remark("exhausted", {"worker_connections": 12, "open_files": 0}),
    Remark("exhausted", {"worker_connections": 0, "open_files": 3}),
    *(
        Remark(
            "timeouts",
            {
                "slow": 90,
                "share": 0.15,
                "abandoned": 88,
                "upstream_p95": p95,
                "slow_upstream": None if p95 is None else p95 >= SLOW_UPSTREAM,
            },
        )
        for p95 in (6.1, 0.02, None)
    ),
    Remark("bad_gateway", {"status": "502", "count": 30, "refused": 30}),
    Remark("bad_gateway", {"status": "502", "count": 30, "refused": 0}),
    *(
        Remark("status", {"status": status, "count": 12})
        for status in (*REPORTED_STATUSES, "405", "304", "418")
    ),
    Remark("other_statuses", {"count": 9, "statuses": "401 ×4, 429 ×3, 204 ×2"}),
    Remark("all_clear", {"requests": 200, "not_ok": 0, "p99": 0.05, "reset": 2}),
    Remark("all_clear", {"requests": 200, "not_ok": 2, "p99": None, "reset": 0}),
    Remark("no_request_time", {"format": "combined"}),
    Remark("gzip", {"path": "/var/log/nginx/access.log.1.gz", "megabytes": 136.2}),
    Remark("unparsed", {"lines": 3, "long": 1}),
    Remark("unparsed", {"lines": 2, "long": 0}),
    Remark("unordered", {"path": "/var/log/nginx/access.log"}),
    Remark("truncated", {"path": "/var/log/nginx/access.log.1.gz"}),
    Remark("cut_short", {"path": "/var/log/nginx/access.log.1.gz"}),
    Remark("unordered_counts", {"path": "/var/log/nginx/access.log"}),
)
"""Every conclusion, note and warning id, with values for each branch of its
wording."""


def sample_reports() -> tuple[LogReport, ...]:
    """A busy and an empty made-up report, for kb check to render ``logs`` with.

    The busy one has every section: a status with its own row, one with its
    class's (303), one with none (418), every error-log sign, every note and
    a warning.
    """
    start = calendar.timegm((2014, 12, 1, 12, 12, 0))
    # (status, upstream status, seconds); None: no upstream answered
    shapes: list[tuple[str, str | None, float]] = [
        ("200", "200", 0.05),
        ("499", None, 5.2),
        ("502", "502", 0.001),
        ("303", "303", 0.01),
        ("418", "418", 0.01),
        ("504", "504", 3.0),
    ]
    records = [
        AccessRecord(
            start - 150 + 10 * i,
            status,
            upstream,
            took,
            took,
            "POST /wx?signature=x HTTP/1.1",
            "10.0.0.12:8080",
        )
        for i in range(45)
        for status, upstream, took in [shapes[i % len(shapes)]]
    ]
    errors = ErrorSummary(
        "error.log",
        {key: 2 for key, _ in ERROR_SIGNS},
        ("2014/12/01 20:12:01 [error] 1#0: *1 connect() failed (111: refused)",),
        40,
    )
    busy = LogReport(
        window=summarize(records, start, start + 300),
        baseline=summarize(records, start - 300, start),
        log_format="main",
        errors=errors,
        files=(
            FileRead("/var/log/nginx/access.log", False, 20_700_000, 0.2, 323.0),
            FileRead("/var/log/nginx/error.log.1.gz", True, 136_000, 0.0, 9.0),
        ),
        utc_offset=8 * 3600,
        conclusions=SAMPLE_REMARKS[4:6],
        notes=tuple(
            r for r in SAMPLE_REMARKS if r.id in ("no_request_time", "gzip", "unparsed")
        ),
        elapsed_ms=418.0,
        warnings=tuple(r for r in SAMPLE_REMARKS if r.id in ("unordered", "truncated")),
    )
    quiet = summarize([], start, start + 300)
    empty = LogReport(
        window=quiet,
        baseline=summarize([], start - 300, start),
        log_format="combined",
        errors=None,
        files=(FileRead("access.log", False, 0, 0.1, 0.1),),
        utc_offset=0,
        conclusions=(Remark("no_traffic"),),
        notes=(),
        elapsed_ms=0.3,
    )
    return busy, empty
