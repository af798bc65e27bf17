"""Tests for bot.logscan on generated nginx logs with a known fault window."""

from __future__ import annotations

import gzip
import importlib.util
import io
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from bot.knowledge import Knowledge, default_root, load_knowledge
from bot.logscan import (
    COMBINED_FORMAT,
    MAIN_FORMAT,
    MAX_LINE,
    SAMPLE_REMARKS,
    SKIPPED_LINE,
    AccessRecord,
    LogFormat,
    LogReport,
    LogScanError,
    Remark,
    WindowStats,
    conclude,
    error_line_time,
    error_row,
    format_report,
    is_time_ordered,
    nearest_rank,
    parse_around,
    parse_window,
    parse_zone,
    read_line,
    resolve_format,
    scan_logs,
    seek_time,
    status_row,
    summarize,
    summarize_errors,
)
from bot.render import ReplyRenderer

ROOT = Path(__file__).resolve().parent.parent


def load_bench() -> ModuleType:
    """The benchmark's generator, so the tests and the bench share one code path."""
    if "bench_logscan" in sys.modules:
        return sys.modules["bench_logscan"]
    spec = importlib.util.spec_from_file_location(
        "bench_logscan", ROOT / "bench" / "bench_logscan.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_logscan"] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def alarm_time(truth) -> datetime:
    return datetime.fromtimestamp(truth.fault_start, UTC).astimezone(bench.ZONE)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    directory = tmp_path_factory.mktemp("logs")
    return bench.write_logs(directory, size=4_000_000, rate=5)


@pytest.fixture
def zh(knowledge: Knowledge) -> ReplyRenderer:
    return ReplyRenderer(knowledge, "zh")


@pytest.fixture
def en(knowledge: Knowledge) -> ReplyRenderer:
    return ReplyRenderer(knowledge, "en")


# ---- the window, its counts and percentiles


def test_window_counts_and_percentiles_match_what_was_written(generated):
    access, errors, truth = generated
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    assert bench.check(report, truth) == []
    window = report.window
    assert window.requests == truth.requests == 5 * 300
    assert window.status["499"] == truth.status["499"] > 0
    assert window.status["502"] == truth.status["502"] > 0
    assert window.slow == truth.status["499"]
    assert window.request_time is not None
    assert window.request_time.max == max(truth.request_times)
    assert report.baseline.requests == truth.baseline_requests == 5 * 300
    assert report.errors is not None
    assert report.errors.counts["refused"] == truth.error_lines


def test_report_concludes_with_timeouts_and_the_refusing_backend(generated):
    access, errors, truth = generated
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    assert [c.id for c in report.conclusions] == ["timeouts", "bad_gateway"]
    timeouts = report.conclusions[0].values
    assert timeouts["slow"] == timeouts["abandoned"] == truth.status["499"]
    assert timeouts["slow_upstream"] is True
    assert report.conclusions[1].values == {
        "status": "502",
        "count": truth.status["502"],
        "refused": truth.error_lines,
    }


def test_report_text_is_chinese_with_the_conclusions_last(generated, zh):
    access, errors, truth = generated
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    text = format_report(report, zh)
    assert text.startswith("📜 nginx 日志：2014-12-01 20:12:00 至 20:17:00（UTC+08:00")
    assert "  499：客户端（微信服务器）在 nginx 返回前主动断开了连接" in text
    assert "  Connection refused：目标端口没有进程监听" in text
    assert "（定位 " in text
    _, conclusions = text.split("\n🔎 结论：\n")
    assert conclusions.startswith(f"• {truth.status['499']} 个请求（")
    assert "这些就是请求超时。时间花在后端" in conclusions
    assert f"• {truth.status['502']} 个请求返回 502，error log 里有" in conclusions
    assert "  ➜ 看 upstream_response_time 是否明显偏高" in conclusions


def test_report_header_gives_the_end_date_when_the_window_crosses_a_day(generated, zh):
    access, _, truth = generated
    around = alarm_time(truth)
    report = scan_logs([access], around=around, window=timedelta(days=1))
    end = around + timedelta(days=1)
    assert format_report(report, zh).startswith(
        f"📜 nginx 日志：{around:%Y-%m-%d %H:%M:%S} 至 {end:%Y-%m-%d %H:%M:%S}（"
    )


def test_report_text_in_english(generated, en):
    access, errors, truth = generated
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    text = format_report(report, en)
    assert text.startswith("📜 nginx logs: 2014-12-01 20:12:00 to 20:17:00 (UTC+08:00")
    assert "  499: The client (WeChat's server) closed the connection" in text
    _, conclusions = text.split("\n🔎 conclusions:\n")
    assert "so these are request timeouts. The time goes to the backend" in conclusions
    assert f"• {truth.status['502']} requests got 502 and the error log has" in text


def test_json_texts_follow_the_language_and_carry_the_ids(generated, zh, en):
    access, errors, truth = generated
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    chinese, english = report.to_json(zh), report.to_json(en)
    assert chinese["conclusion_ids"] == english["conclusion_ids"]
    assert chinese["conclusion_ids"] == ["timeouts", "bad_gateway"]
    assert str(chinese["conclusions"][0]).startswith(f"{truth.status['499']} 个请求")
    assert str(english["conclusions"][0]).startswith(f"{truth.status['499']} requests")
    assert chinese["meanings"] == {
        "499": "客户端（微信服务器）在 nginx 返回前主动断开了连接。这种情况少见。",
        "502": "网关错误：后端处理慢、挂了或拒绝连接（进程崩溃、端口没监听）。",
    }
    assert chinese["reply"] == format_report(report, zh)


def test_secrets_in_query_strings_are_not_shown(generated, zh):
    access, errors, truth = generated
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    text = format_report(report, zh) + str(report.to_json(zh))
    assert "signature=" not in text
    assert "openid=" not in text
    assert "POST /wx?… HTTP/1.1" in text


# ---- the words come from the knowledge


def test_meanings_are_read_from_the_knowledge_not_a_copy(generated, tmp_path):
    access, errors, truth = generated
    root = tmp_path / "knowledge"
    shutil.copytree(default_root(), root)
    table = root / "reference" / "nginx_status.yaml"
    old = "客户端（微信服务器）在 nginx 返回前主动断开了连接。这种情况少见。"
    assert old in table.read_text(encoding="utf-8")
    new = "平台等了 5 秒没等到回包，先挂断了。"
    table.write_text(table.read_text(encoding="utf-8").replace(old, new), "utf-8")
    renderer = ReplyRenderer(load_knowledge(root), "zh")
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    assert f"  499：{new}\n" in format_report(report, renderer)
    assert report.to_json(renderer)["meanings"]["499"] == new  # type: ignore[index]


def test_a_status_without_a_row_says_so(zh, en):
    # 2xx has no class row: only 200 is explained.
    window = stats([record(float(i), "207") for i in range(50)])
    report = replace_window(window)
    assert "  207：知识库里没有这个状态码的说明。" in format_report(report, zh)
    assert "  207: the knowledge base does not explain" in format_report(report, en)
    assert report.to_json(zh)["meanings"] == {"207": None}


def test_status_rows_by_key_alias_and_class(knowledge):
    def key(status: str, **options: bool) -> str | None:
        row = status_row(knowledge, status, **options)
        return row.key if row else None

    assert key("499") == "499"
    assert key("302") == "301"  # an alias
    assert key("303") == "301"  # the class: 3xx
    assert key("501") == "500"  # 5xx
    assert key("501", by_class=False) is None
    assert key("418") == "4xx"  # 4xx
    assert key("429") == "429"
    assert key("207") is None


def test_error_log_signs_map_to_their_rows(knowledge):
    row = error_row(knowledge, "connect() failed")
    assert row is not None
    assert row.key == "connect() failed"
    assert error_row(knowledge, "upstream timed out") is not None
    assert error_row(knowledge, "no live upstreams") is None


def test_every_remark_id_has_words_in_both_languages(zh, en):
    from bot.logscan import render_remark

    for remark in SAMPLE_REMARKS:
        assert render_remark(remark, zh), remark
        assert render_remark(remark, en), remark


class CountingReader(io.BufferedReader):
    read_bytes = 0
    seeks = 0

    def readline(self, size: int | None = -1, /) -> bytes:
        line = super().readline(size)
        self.read_bytes += len(line)
        return line

    def seek(self, target: int, whence: int = 0, /) -> int:
        self.seeks += 1
        return super().seek(target, whence)


def test_seek_time_finds_the_window_with_a_few_small_reads(generated):
    access, _, truth = generated
    fmt = LogFormat.compile(MAIN_FORMAT, "main")
    size = access.stat().st_size
    with CountingReader(io.FileIO(access)) as stream:
        offset = seek_time(stream, size, truth.fault_start, fmt.line_time)
        assert stream.seeks <= 10
        assert stream.read_bytes < 8 * 1024
    data = access.read_bytes()
    first = next(
        i
        for i, line in _line_starts(data)
        if (fmt.line_time(line) or 0) >= truth.fault_start
    )
    assert offset <= first < offset + 64 * 1024 + 1024
    assert offset == 0 or data[offset - 1 : offset] == b"\n"
    before = data[:offset].splitlines()
    assert all((fmt.line_time(line) or 0) < truth.fault_start for line in before[-3:])


def _line_starts(data: bytes):
    position = 0
    for line in data.splitlines(keepends=True):
        yield position, line
        position += len(line)


def test_only_the_window_is_read_from_a_plain_file(generated):
    access, _, truth = generated
    report = scan_logs([access], around=alarm_time(truth))
    read = report.files[0]
    assert not read.compressed
    # 5 min window + 5 min baseline + a minute either side, of a 43-minute log
    assert read.bytes_read < 0.35 * access.stat().st_size
    assert read.seek_ms < 100


def test_gzip_log_is_scanned_from_the_start_and_says_so(tmp_path):
    access, errors, truth = bench.write_logs(
        tmp_path, size=1_500_000, rate=5, compress=True
    )
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    assert bench.check(report, truth) == []
    assert report.files[0].compressed
    (note,) = report.notes
    assert note.id == "gzip"
    assert note.values["path"] == str(access)


def test_window_spread_over_two_rotated_files(generated, tmp_path):
    access, _, truth = generated
    lines = access.read_bytes().splitlines(keepends=True)
    middle = len(lines) * 3 // 5 + 17  # inside the fault window
    older, newer = tmp_path / "access.log.1.gz", tmp_path / "access.log"
    with gzip.open(older, "wb") as out:
        out.writelines(lines[:middle])
    newer.write_bytes(b"".join(lines[middle:]))
    report = scan_logs([older, newer], around=alarm_time(truth))
    assert report.window.requests == truth.requests
    assert report.window.status == dict(sorted(truth.status.items()))


def test_a_log_in_time_order_gets_no_warning(generated, zh):
    access, _, truth = generated
    report = scan_logs([access], around=alarm_time(truth))
    assert report.warnings == ()
    assert report.files[0].is_ordered
    assert "⚠️" not in format_report(report, zh)
    assert report.to_json(zh)["warnings"] == []


def test_a_concatenated_log_is_warned_about_in_text_and_json(generated, tmp_path, zh):
    # Two servers' logs of the same hours, one after the other: the seek finds
    # the window in one of them only, so half the requests are missed.
    access, _, truth = generated
    twice = tmp_path / "access.log"
    twice.write_bytes(access.read_bytes() * 2)
    report = scan_logs([twice], around=alarm_time(truth))
    assert report.window.requests < 2 * truth.requests
    assert report.warnings == (Remark("unordered", {"path": str(twice)}),)
    assert not report.files[0].is_ordered
    text = format_report(report, zh)
    assert f"\n⚠️ 注意：{twice} 不是按时间顺序写的" in text
    assert "上面的计数可能不全" in text
    data = report.to_json(zh)
    assert data["warning_ids"] == ["unordered"]
    assert "计数可能不全" in data["warnings"][0]  # type: ignore[index]
    assert data["files"][0]["is_ordered"] is False  # type: ignore[index]


def test_the_order_check_reads_a_sample_not_the_file(generated, tmp_path):
    access, _, _ = generated
    fmt = LogFormat.compile(MAIN_FORMAT, "main")
    twice = tmp_path / "access.log"
    twice.write_bytes(access.read_bytes() * 2)
    for path, expected in ((access, True), (twice, False)):
        size = path.stat().st_size
        with CountingReader(io.FileIO(path)) as stream:
            assert is_time_ordered(stream, size, fmt.line_time) is expected
            assert stream.seeks <= 17
            assert stream.read_bytes < 16 * 1024


def test_a_few_seconds_of_disorder_is_normal(tmp_path):
    # Workers finish requests out of order: a line may be logged a little
    # before an earlier one.
    start = bench.FAULT_AT
    seconds = [start - 600 + i + (7 if i % 5 == 0 else 0) for i in range(1200)]
    path = tmp_path / "access.log"
    path.write_text("".join(combined_line(second, "200") for second in seconds))
    report = scan_logs([path], around=alarm_time(bench.Truth(start, 300)))
    assert report.warnings == ()


def test_lines_read_out_of_order_are_warned_about_in_a_gzip_log(tmp_path):
    # gzip cannot be sampled: the lines read tell. A block of lines from an
    # hour earlier sits in the middle of the window.
    start = bench.FAULT_AT
    seconds = [start - 600 + i for i in range(1200)]
    seconds[700:800] = [second - 3600 for second in seconds[700:800]]
    path = tmp_path / "access.log.gz"
    with gzip.open(path, "wt") as out:
        out.writelines(combined_line(second, "200") for second in seconds)
    report = scan_logs([path], around=alarm_time(bench.Truth(start, 300)))
    assert [warning.id for warning in report.warnings] == ["unordered"]


def cut_gzip_log(directory: Path, *, first: int, kept: float) -> Path:
    """A gzip log of 5,000 one-a-second lines from FAULT_AT + ``first`` s, cut
    to the first ``kept`` share of its bytes, as a copy cut short would be."""
    path = directory / "access.log.1.gz"
    with gzip.open(path, "wt") as out:
        moments = range(bench.FAULT_AT + first, bench.FAULT_AT + first + 5000)
        out.writelines(combined_line(moment, "200") for moment in moments)
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * kept)])
    return path


def test_a_gzip_log_cut_short_reports_what_it_read_and_warns(tmp_path, zh):
    # A rotation still being written, or a copy cut short in the middle of the
    # window: what was read is reported, and the report says the rest is lost.
    # (A cut after the window is not seen: reading stops at the window's end.)
    path = cut_gzip_log(tmp_path, first=-600, kept=0.15)  # 750 of 5000 lines
    report = scan_logs([path], around=alarm_time(bench.Truth(bench.FAULT_AT, 300)))
    assert 0 < report.window.requests < 300
    assert not report.files[0].is_complete
    assert [warning.id for warning in report.warnings] == ["truncated"]
    assert f"⚠️ 注意：{path} 没读完：gzip 文件提前结束或已损坏" in format_report(
        report, zh
    )


def test_a_gzip_log_cut_before_the_window_concludes_nothing(tmp_path, zh):
    # No request after the cut is not "the platform could not reach you".
    path = cut_gzip_log(tmp_path, first=-900, kept=0.1)  # ends before the window
    report = scan_logs([path], around=alarm_time(bench.Truth(bench.FAULT_AT, 300)))
    assert report.window.requests == 0
    assert [c.id for c in report.conclusions] == ["cut_short"]
    assert "平台连不上" not in format_report(report, zh)
    assert f"{path} 在时间窗里就断了" in format_report(report, zh)


def test_an_older_rotation_cut_short_does_not_doubt_the_current_log(tmp_path):
    # The cut file ends hours before the window; the current log covers it.
    old = cut_gzip_log(tmp_path, first=-7200, kept=0.3)
    current = tmp_path / "access.log"
    moments = range(bench.FAULT_AT - 600, bench.FAULT_AT + 600)
    current.write_text("".join(combined_line(m, "200") for m in moments))
    report = scan_logs(
        [old, current], around=alarm_time(bench.Truth(bench.FAULT_AT, 300))
    )
    assert [w.id for w in report.warnings] == ["truncated"]
    assert [c.id for c in report.conclusions] == ["all_clear"]


def test_a_log_out_of_order_supports_no_conclusion_of_absence(tmp_path, zh):
    # An hour logged after the hour before it: the seek lands past the window.
    path = tmp_path / "access.log"
    later = range(bench.FAULT_AT - 1800, bench.FAULT_AT + 1800)
    earlier = range(bench.FAULT_AT - 9000, bench.FAULT_AT - 5400)
    path.write_text("".join(combined_line(m, "200") for m in [*later, *earlier]))
    report = scan_logs([path], around=alarm_time(bench.Truth(bench.FAULT_AT, 300)))
    assert [w.id for w in report.warnings] == ["unordered"]
    assert "no_traffic" not in [c.id for c in report.conclusions]
    assert "no_requests" not in [c.id for c in report.conclusions]


def test_a_gzip_log_with_no_readable_line_is_an_error(tmp_path):
    path = tmp_path / "access.log.gz"
    with gzip.open(path, "wt") as out:
        out.writelines(combined_line(bench.FAULT_AT + i, "200") for i in range(100))
    path.write_bytes(path.read_bytes()[:30])  # the header and hardly more
    with pytest.raises(LogScanError) as caught:
        scan_logs([path], around=alarm_time(bench.Truth(bench.FAULT_AT, 300)))
    assert str(caught.value).startswith(
        f"{path} is a damaged or incomplete gzip file, with no line that can be read"
    )


def test_a_format_that_does_not_match_the_file_is_an_error(generated):
    access, _, truth = generated
    with pytest.raises(LogScanError) as caught:
        scan_logs([access], around=alarm_time(truth), log_format="$msec $status")
    message = str(caught.value)
    assert message.startswith(
        f"the log format '$msec $status' does not match {access}: "
        "20 of its first 20 lines do not parse, the first of them: "
        "'203.205.140.29  - - [01/Dec/2014:"
    )
    assert "signature=" not in message  # the query string may carry secrets
    assert "POST /wx?… HTTP/1.1" in message
    assert "…' (pass the log_format of this file with --format" in message


def test_a_named_format_that_does_not_match_is_an_error(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("".join(combined_line(bench.FAULT_AT + i, "200") for i in range(9)))
    with pytest.raises(LogScanError, match="the log format main does not match"):
        scan_logs([path], around=alarm_time(bench.Truth(0, 300)), log_format="main")


def test_every_access_log_is_checked_against_the_format(generated, tmp_path):
    access, _, truth = generated
    other = tmp_path / "access.log.1"
    other.write_text("an application's own log\n" * 30)
    with pytest.raises(LogScanError, match=f"does not match {other}"):
        scan_logs([access, other], around=alarm_time(truth))


def test_an_empty_log_is_an_error_that_says_so(tmp_path):
    empty = tmp_path / "access.log"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.log"
    blank.write_text("\n\n")
    around = parse_around("2014-12-01 20:12:00")
    with pytest.raises(LogScanError, match=f"^nothing to scan: {empty} is empty$"):
        scan_logs([empty], around=around, log_format="main")
    with pytest.raises(LogScanError, match=f"{empty}, {blank} are empty$"):
        scan_logs([empty, blank], around=around)


def test_an_empty_log_beside_a_full_one_is_read_as_none(generated, tmp_path):
    # Just after a rotation the current log is empty; the window is in the
    # rotated one.
    access, _, truth = generated
    empty = tmp_path / "access.log"
    empty.write_bytes(b"")
    report = scan_logs([empty, access], around=alarm_time(truth))
    assert report.window.requests == truth.requests
    assert report.files[0].bytes_read == 0


def test_read_line_skips_a_long_line_in_bounded_reads():
    long = b"x" * (3 * MAX_LINE + 5) + b"\n"
    stream = io.BytesIO(long + b"short\n" + b"y" * MAX_LINE + b"\n" + b"z" * MAX_LINE)
    assert read_line(stream) is SKIPPED_LINE
    assert read_line(stream) == b"short\n"
    assert read_line(stream) is SKIPPED_LINE  # one byte over with its newline
    assert read_line(stream) is SKIPPED_LINE  # the last line has no newline
    assert read_line(stream) == b""
    exact = b"w" * (MAX_LINE - 1) + b"\n"
    assert read_line(io.BytesIO(exact)) == exact


def test_huge_lines_are_skipped_and_counted_as_unparsed(generated, tmp_path, en):
    access, _, truth = generated
    lines = access.read_bytes().splitlines(keepends=True)
    fault = next(i for i, line in enumerate(lines) if b"[01/Dec/2014:20:13:00" in line)
    # A request with a 5 MB query string in the window; without a newline
    # at the end of the file; and as the first line of all.
    huge = lines[fault].replace(b"/wx?", b"/wx?" + b"a" * 5_000_000 + b"&", 1)
    path = tmp_path / "access.log"
    path.write_bytes(
        huge + b"".join(lines[:fault]) + huge + b"".join(lines[fault:]) + huge[:-1]
    )
    report = scan_logs([path], around=alarm_time(truth))
    assert report.log_format == "main"
    assert report.window.requests == truth.requests
    assert Remark("unparsed", {"lines": 1, "long": 1}) in report.notes
    assert (
        "note: 1 line around the window did not match the log format and was left "
        "out, 1 of it over 64 KiB and skipped."
    ) in format_report(report, en)


def test_an_alarm_time_in_another_zone_gives_the_same_window(generated):
    access, _, truth = generated
    around = alarm_time(truth).astimezone(UTC)
    assert scan_logs([access], around=around).window.requests == truth.requests


def test_naive_alarm_time_is_refused(generated):
    access, _, _ = generated
    with pytest.raises(ValueError, match="time zone"):
        scan_logs([access], around=datetime(2014, 12, 1, 20, 12))  # noqa: DTZ001


# ---- formats


def combined_line(second: int, status: str) -> str:
    moment = datetime.fromtimestamp(second, UTC).astimezone(bench.ZONE)
    stamp = moment.strftime("%d/%b/%Y:%H:%M:%S %z")
    return (
        f'203.205.140.29 - - [{stamp}] "POST /wx?openid=oX HTTP/1.1" {status} 7 '
        '"-" "Mozilla/4.0"\n'
    )


def test_combined_format_is_detected_and_counted(tmp_path):
    start = bench.FAULT_AT
    lines = [
        combined_line(start - 600 + i, "404" if 600 <= i < 660 else "200")
        for i in range(1200)
    ]
    path = tmp_path / "access.log"
    path.write_text("".join(lines))
    report = scan_logs([path], around=alarm_time(bench.Truth(start, 300)))
    assert report.log_format == "combined"
    assert report.window.requests == 300
    assert report.window.status == {"200": 240, "404": 60}
    assert report.window.request_time is None
    assert report.notes == (Remark("no_request_time", {"format": "combined"}),)
    assert report.conclusions == (Remark("status", {"status": "404", "count": 60}),)


def test_custom_log_format_with_iso_time(tmp_path):
    fmt = '$time_iso8601 $status $request_time "$request" $upstream_response_time'
    base = datetime(2014, 12, 1, 20, 12, tzinfo=bench.ZONE)
    lines = []
    for i in range(600):
        moment = (base + timedelta(seconds=i - 300)).isoformat()
        time_taken = (i % 100) / 10
        lines.append(f'{moment} 200 {time_taken:.3f} "POST /wx HTTP/1.1" 0.010, 0.5\n')
    path = tmp_path / "access.log"
    path.write_text("".join(lines))
    report = scan_logs([path], around=base, log_format=fmt)
    times = sorted((i % 100) / 10 for i in range(300, 600))
    assert report.window.requests == 300
    assert report.window.request_time is not None
    assert report.window.request_time.p95 == nearest_rank(times, 95)
    assert report.window.slow == sum(t >= 5 for t in times)
    assert report.window.upstream_time is not None
    assert report.window.upstream_time.max == pytest.approx(0.51)


def test_pasted_config_compiles_like_the_plain_format():
    pasted = (
        "log_format  main  '$remote_addr  - $remote_user [$time_local] \"$request\" '\n"
        "    '$status $body_bytes_sent \"$http_referer\" '\n"
        '    \'"$http_user_agent" "$http_x_forwarded_for" "$host"  '
        '"$cookie_ssl_edition" \'\n'
        '    \'"$upstream_addr"   "$upstream_status"  "$request_time"  \'\n'
        "    '\"$upstream_response_time\" ';"
    )
    compiled = LogFormat.compile(pasted)
    assert compiled.pattern.pattern == LogFormat.compile(MAIN_FORMAT).pattern.pattern


def test_main_format_line_with_several_upstreams():
    line = (
        '1.2.3.4  - - [01/Dec/2014:20:12:03 +0800] "POST /wx?signature=abc HTTP/1.1" '
        '200 7 "-" "Mozilla/4.0" "-" "mp.example.com"  "-" '
        '"10.0.0.1:80, 10.0.0.2:80"   "502, 200"  "0.600"  "0.100, 0.499" '
    )
    record = LogFormat.compile(MAIN_FORMAT, "main").parse(line)
    assert record is not None
    assert record.time == datetime(2014, 12, 1, 12, 12, 3, tzinfo=UTC).timestamp()
    assert record.status == "200"
    assert record.upstream_status == "200"
    assert record.upstream_time == pytest.approx(0.599)
    assert record.request_time == 0.6
    assert record.shown_request == "POST /wx?… HTTP/1.1"


def test_format_without_time_or_status_is_refused():
    with pytest.raises(LogScanError, match="needs a time variable"):
        LogFormat.compile('$remote_addr "$request" $status')
    with pytest.raises(LogScanError, match="needs a time variable"):
        LogFormat.compile("[$time_local] $request_time")


def test_unknown_log_is_refused_with_a_hint():
    with pytest.raises(LogScanError, match="--format"):
        resolve_format(None, ["hello world\n", "not nginx\n"])


def test_main_is_preferred_over_combined_for_guide_lines(generated):
    access, _, _ = generated
    head = access.read_text().splitlines(keepends=True)[:5]
    assert resolve_format(None, head).name == "main"
    assert resolve_format("combined", head).text == COMBINED_FORMAT


def test_missing_file_is_a_log_scan_error(tmp_path):
    with pytest.raises(LogScanError, match="cannot read"):
        scan_logs([tmp_path / "nope.log"], around=parse_around("2014-12-01 20:12:00"))


# ---- the error log


def test_error_log_signs_are_counted_in_the_window():
    offset = 8 * 3600
    lines = [
        b"2014/12/01 20:11:59 [error] 1#0: connect() failed (111: Connection refused)",
        b"2014/12/01 20:12:01 [alert] 1#0: 1024 worker_connections are not enough",
        b"2014/12/01 20:12:02 [crit] 1#0: accept4() failed (24: Too many open files)",
        b"2014/12/01 20:12:03 [error] 1#0: recv() failed (104: Connection reset by "
        b'peer), request: "POST /wx?token=abc HTTP/1.1"',
        b"    a continuation line without a time",
        b"2014/12/01 20:17:00 [error] 1#0: connect() failed (111: Connection refused)",
    ]
    start = error_line_time(offset)(b"2014/12/01 20:12:00 ") or 0.0
    summary = summarize_errors(Path("error.log"), lines, start, start + 300, offset)
    assert summary.counts == {"reset": 1, "worker_connections": 1, "open_files": 1}
    assert summary.lines == 3
    assert all("token=abc" not in sample for sample in summary.samples)


def test_an_upstream_timeout_is_not_also_a_connect_timeout():
    lines = [
        b"2014/12/01 20:12:01 [error] 1#0: *1 upstream timed out (110: Connection "
        b"timed out) while reading response header from upstream",
        b"2014/12/01 20:12:02 [error] 1#0: *2 connect() failed (110: Connection "
        b"timed out) while connecting to upstream",
    ]
    start = error_line_time(0)(b"2014/12/01 20:12:00 ") or 0.0
    summary = summarize_errors(Path("error.log"), lines, start, start + 300, 0)
    assert summary.counts == {
        "connect_failed": 1,
        "timed_out": 1,
        "upstream_timed_out": 1,
    }


# ---- conclusions


def record(second: float, status: str = "200", took: float = 0.05) -> AccessRecord:
    return AccessRecord(second, status, status, took, took, "POST /wx", None)


def stats(records: list[AccessRecord], start: float = 0.0) -> WindowStats:
    return summarize(records, start, start + 300)


def replace_window(window: WindowStats) -> LogReport:
    return LogReport(
        window=window,
        baseline=stats([], -300),
        log_format="main",
        errors=None,
        files=(),
        utc_offset=8 * 3600,
        conclusions=conclude(window, stats([], -300), None),
        notes=(),
        elapsed_ms=1.0,
    )


def test_conclusion_without_requests_after_traffic_before():
    baseline = stats([record(-100.0)], -300.0)
    found = conclude(stats([]), baseline, None)
    assert found == (Remark("no_requests", {"baseline": 1, "minutes": 5}),)


def test_conclusion_without_any_request_asks_about_the_log():
    assert conclude(stats([]), stats([], -300), None) == (Remark("no_traffic"),)


def test_conclusion_when_all_is_well_points_to_the_probe(zh):
    window = stats([record(float(i)) for i in range(200)])
    found = conclude(window, stats([], -300), None)
    assert found == (
        Remark("all_clear", {"requests": 200, "not_ok": 0, "p99": 0.05, "reset": 0}),
    )
    text = format_report(replace_window(window), zh)
    assert text.endswith(
        "• 窗口内 200 个请求都按时回应了（request_time p99 0.050 秒），nginx 这一侧"
        "没看到故障。DNS 失败和连接超时发生在请求到达 nginx 之前，回应失败的原因在"
        "回包内容里：用 alarm-bot probe 探测回调 URL，看实际回包。"
    )


def test_conclusion_names_exhausted_connections_first():
    window = stats([record(float(i)) for i in range(200)])
    errors = summarize_errors(
        Path("e"),
        [b"1970/01/01 00:00:05 [alert] 1#0: 512 worker_connections are not enough"],
        0.0,
        300.0,
        0.0,
    )
    found = conclude(window, stats([], -300), errors)
    assert found[0] == Remark("exhausted", {"worker_connections": 1, "open_files": 0})


def test_slow_backend_with_fast_nginx_is_told_apart():
    records = [record(float(i)) for i in range(100)]
    records += [
        AccessRecord(float(i), "200", "200", 5.5, 0.01, "POST /wx", None)
        for i in range(100, 110)
    ]
    (found,) = conclude(stats(records), stats([], -300), None)
    assert found.id == "timeouts"
    assert found.values["slow"] == 10
    assert found.values["share"] == pytest.approx(10 / 110)
    assert found.values["slow_upstream"] is False


def test_a_few_stray_404s_are_not_a_conclusion_but_are_not_hidden():
    records = [record(float(i)) for i in range(1000)] + [record(5.0, "404")]
    (found,) = conclude(stats(records), stats([]), None)
    assert found.id == "all_clear"
    assert found.values["not_ok"] == 1


def test_server_and_client_errors_are_concluded_in_order():
    records = [record(float(i)) for i in range(100)]
    for status in ("403", "500", "503", "504"):
        records += [record(float(i), status) for i in range(10)]
    found = conclude(stats(records), stats([]), None)
    assert [c.values["status"] for c in found] == ["504", "503", "500", "403"]
    assert {c.id for c in found} == {"status"}


def test_any_status_but_200_is_concluded_with_its_meaning(zh, en):
    # The platform takes only 200: 405s, redirects and 304s fail pushes too.
    records = [record(float(i)) for i in range(54)]
    for status, count in (("405", 48), ("301", 24), ("304", 24)):
        records += [record(float(i), status) for i in range(count)]
    window = stats(records)
    found = conclude(window, stats([], -300), None)
    assert found == (
        Remark("status", {"status": "405", "count": 48}),
        Remark("status", {"status": "301", "count": 24}),
        Remark("status", {"status": "304", "count": 24}),
    )
    text = format_report(replace_window(window), zh)
    _, conclusions = text.split("\n🔎 结论：\n")
    assert conclusions.startswith(
        "• 48 个请求返回 405：方法不被允许：回调路由不接受 POST"
    )
    assert "\n  ➜ 平台不跟随跳转，跳转就算失败。" in conclusions
    assert "• 24 个请求返回 304：未修改" in conclusions
    english = format_report(replace_window(window), en)
    assert "• 48 requests got 405: Method not allowed: the callback route" in english


def test_the_most_common_failing_status_is_concluded_first():
    records = [record(float(i)) for i in range(100)]
    records += [record(float(i), "404") for i in range(10)]
    records += [record(float(i), "405") for i in range(40)]
    found = conclude(stats(records), stats([]), None)
    assert [c.values["status"] for c in found] == ["405", "404"]


def test_a_status_the_knowledge_does_not_explain_still_fails_the_push(zh, en):
    records = [record(float(i)) for i in range(90)]
    records += [record(float(i), "207") for i in range(10)]
    window = stats(records)
    found = conclude(window, stats([], -300), None)
    assert found == (Remark("status", {"status": "207", "count": 10}),)
    assert (
        "• 10 个请求返回 207：平台只认 200，其他状态码的回应都算推送失败。"
        "知识库里还没有 207 的说明（reference/nginx_status.yaml）。"
    ) in format_report(replace_window(window), zh)
    assert (
        "• 10 requests got 207: The platform accepts only 200: any other answer "
        "fails the push."
    ) in format_report(replace_window(window), en)


def test_rare_statuses_that_add_up_are_concluded_together(zh):
    records = [record(float(i)) for i in range(1000)]
    for status in ("401", "429", "204", "302", "418", "499"):
        records += [record(float(i), status) for i in range(2)]
    records.append(record(3.0, "301"))
    window = stats(records)
    found = conclude(window, stats([], -300), None)
    assert found == (
        Remark(
            "other_statuses",
            {
                "count": 13,
                "statuses": "204 ×2, 302 ×2, 401 ×2, 418 ×2, 429 ×2, 499 ×2, 301 ×1",
            },
        ),
    )
    assert (
        "• 另有 13 个请求返回了 200 以外的状态码（204 ×2，302 ×2，401 ×2，418 ×2，"
        "429 ×2，499 ×2，301 ×1），每种都不多，合起来不可忽视："
    ) in format_report(replace_window(window), zh)


def test_statuses_already_concluded_are_not_counted_again():
    records = [record(float(i)) for i in range(300)]
    records += [record(float(i), "502") for i in range(30)]
    records += [record(float(i), "401") for i in range(2)]
    found = conclude(stats(records), stats([]), None)
    assert [c.id for c in found] == ["bad_gateway"]


def test_per_minute_failures_count_every_status_but_200():
    statuses = ("200", "200", "301", "304", "405", "499", "500", "204")
    window = stats([record(float(i), status) for i, status in enumerate(statuses)])
    (minute,) = window.per_minute
    assert (minute.requests, minute.failed) == (8, 6)


def test_every_concluded_id_has_a_sample_for_kb_check(generated):
    access, errors, truth = generated
    report = scan_logs([access], around=alarm_time(truth), error_log=errors)
    sampled = {remark.id for remark in SAMPLE_REMARKS}
    produced = [*report.conclusions, *report.notes]
    produced += conclude(stats([]), stats([record(-9.0)], -300), None)
    produced += conclude(stats([]), stats([], -300), None)
    produced += conclude(stats([record(1.0)]), stats([]), None)
    assert {remark.id for remark in produced} <= sampled


# ---- parsing the command-line values


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300),
        ("300s", 300),
        ("1h", 3600),
        ("10", 600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("5分钟", 300),
        ("2小时", 7200),
    ],
)
def test_parse_window(text, seconds):
    assert parse_window(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["five minutes", "5x", "5m garbage", "", "m"])
def test_parse_window_refuses_nonsense(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_window(text)


@pytest.mark.parametrize("text", ["0", "0s", "0.0m", "745h", "99999999h", "9" * 400])
def test_parse_window_refuses_a_window_out_of_range(text):
    with pytest.raises(ValueError, match=r"at most 31 days \(744h\)$"):
        parse_window(text)


def test_parse_window_takes_up_to_31_days():
    assert parse_window("744h") == timedelta(days=31)


def test_parse_around_takes_a_stamp_and_the_error_log_date():
    # The Stamp of an alarm's error sample, and a time copied from error.log.
    assert parse_around("1417435920") == parse_around("2014-12-01 20:12:00")
    assert parse_around("2014/12/01 20:12:00") == parse_around("2014-12-01 20:12:00")


@pytest.mark.parametrize(
    "text", ["9999-12-31 23:59:00", "0001-01-01 00:00:00", "1969-12-31T23:59:59Z"]
)
def test_parse_around_refuses_a_time_out_of_range(text):
    with pytest.raises(ValueError, match="is out of range: the alarm time must be"):
        parse_around(text)


@pytest.mark.parametrize("text", ["yesterday", "2014-12-01 20:12:00+25:00"])
def test_parse_around_says_what_a_time_looks_like(text):
    with pytest.raises(ValueError, match=r"^not a time: .* \(use 2014-12-01 20:12:00"):
        parse_around(text)


@pytest.mark.parametrize("text", ["+25:00", "-24:00", "+08:60", "Mars"])
def test_parse_zone_says_which_offsets_it_takes(text):
    with pytest.raises(ValueError, match=r"from -23:59 to \+23:59, e\.g\. \+08:00"):
        parse_zone(text)


def test_scan_logs_refuses_a_window_out_of_range(generated):
    access, _, truth = generated
    around = alarm_time(truth)
    with pytest.raises(ValueError, match="a window must be longer than 0"):
        scan_logs([access], around=around, window=timedelta(0))
    with pytest.raises(ValueError, match="at most 31 days"):
        scan_logs([access], around=around, window=timedelta(days=32))
    with pytest.raises(ValueError, match="the alarm time must be"):
        scan_logs([access], around=datetime(9999, 6, 1, tzinfo=UTC))


def test_parse_around_uses_the_zone_when_naive():
    moment = parse_around("2014-12-01 20:12:00")
    assert moment.utcoffset() == timedelta(hours=8)
    assert parse_around("2014-12-01T12:12:00+00:00") == moment
    assert parse_around("2014-12-01 12:12:00", "UTC") == moment
    assert parse_zone("-0530").utcoffset(None) == -timedelta(hours=5, minutes=30)


def test_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 50) == 50
    assert nearest_rank(values, 95) == 95
    assert nearest_rank(values, 99) == 99
    assert nearest_rank([3.0], 50) == 3.0
