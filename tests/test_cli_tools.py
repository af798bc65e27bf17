"""Tests for the diagnostics commands: ``probe``, ``logs`` and ``host``."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from bot.cli import cli
from bot.probe import MessageCrypto, sign

from .test_logscan import load_bench

TOKEN = "cliTokenS3cret"
APPID = "wxb11529c136998cb6"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

Answer = Callable[[str, dict[str, str], bytes], tuple[int, bytes]]


class Server:
    """A threaded HTTP server on 127.0.0.1 (the commands run their own loop)."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self._reply(self.rfile.read(length))

            def _reply(self, body: bytes) -> None:
                query = dict(
                    urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)
                )
                outer.requests.append((self.command, query, body))
                status, data = answer(self.command, query, body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/wx"


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], Server]]:
    servers: list[Server] = []

    def start(answer: Answer) -> Server:
        server = Server(answer)
        server.thread.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def probe_args(url: str, *extra: str) -> list[str]:
    return [
        "probe",
        url,
        "--token",
        TOKEN,
        "--allow-private",
        "--no-public-dns",
        *extra,
    ]


def correct(method: str, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
    if query.get("signature") != sign(TOKEN, query["timestamp"], query["nonce"]):
        return 403, b"bad signature"
    if method == "GET":
        return 200, query["echostr"].encode()
    message = ET.fromstring(body)
    crypto = MessageCrypto(AES_KEY, APPID)
    encrypted = message.findtext("Encrypt")
    if encrypted:
        message = ET.fromstring(crypto.decrypt(encrypted))
    reply = (
        f"<xml><ToUserName>{message.findtext('FromUserName')}</ToUserName>"
        f"<FromUserName>{message.findtext('ToUserName')}</FromUserName>"
        "<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content></xml>"
    )
    if not encrypted:
        return 200, reply.encode()
    inner = crypto.encrypt(reply)
    signature = sign(TOKEN, "2", "3", inner)
    wrapped = (
        f"<xml><Encrypt>{inner}</Encrypt><MsgSignature>{signature}</MsgSignature>"
        "<TimeStamp>2</TimeStamp><Nonce>3</Nonce></xml>"
    )
    return 200, wrapped.encode()


# ---- probe


def test_probe_json_reports_quoted_success_and_exits_1(serve):
    server = serve(lambda method, query, body: (200, b'"success"'))
    result = invoke(*probe_args(server.url, "--json"))
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["verdict"] == "invalid_response"
    assert data["status"] == 200
    assert data["response_length"] == 9
    assert set(data["timings_ms"]) == {"dns", "connect", "first_byte", "total"}
    assert data["finding_ids"] == ["quoted_success", "url_bad_port"]
    assert data["findings"][0] == (
        '回包是带双引号的 "success"（9 字节），success 被当成 JSON 字符串输出了。'
    )
    assert data["reply"].startswith(f"🔎 探测：{server.url}（明文模式）\n❌ 结论：")
    assert f"详情：{data['findings'][0]}" in data["reply"]


def test_probe_json_in_english_keeps_the_ids(serve):
    server = serve(lambda method, query, body: (200, b'"success"'))
    result = invoke(*probe_args(server.url, "--json", "--lang", "en"))
    data = json.loads(result.stdout)
    assert data["finding_ids"] == ["quoted_success", "url_bad_port"]
    assert data["findings"][0].startswith('The reply is "success" with double quotes')
    assert data["reply"].startswith(f"🔎 Probe: {server.url} (plain mode)")


def test_probe_text_on_a_correct_server_exits_0(serve):
    server = serve(correct)
    result = invoke(*probe_args(server.url))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"🔎 探测：{server.url}（明文模式）\n")
    assert "✅ 结论：正常，平台会接受这个回包。" in result.stdout
    assert "详情：URL 回了一条格式正确的 text 回复 XML，平台会接受。" in result.stdout
    assert TOKEN not in result.output


def test_probe_scrubs_a_token_the_server_echoes_back(serve):
    # A misconfigured server may print its settings in the error page; the
    # output is pasted into chats, so the token must not show.
    page = f"<html>bad signature, expected token {TOKEN}</html>".encode()
    server = serve(lambda method, query, body: (500, page))
    for extra in ((), ("--json",)):
        result = invoke(*probe_args(server.url, *extra))
        assert result.exit_code == 1, result.output
        assert "expected token ***" in result.output
        assert TOKEN not in result.output


@pytest.mark.parametrize("token", ["ab", "x" * 33, "with-dash", "空格 token"])
def test_probe_refuses_a_token_the_platform_would_not_take(token):
    result = invoke("probe", "http://example.invalid/wx", "--token", token)
    assert result.exit_code == 2
    assert "the token must be 3 to 32 letters or digits" in result.output


def test_probe_language_comes_from_the_environment(serve):
    server = serve(correct)
    result = invoke(*probe_args(server.url), env={"ALARM_BOT_LANG": "en"})
    assert result.exit_code == 0, result.output
    assert "Detail: The URL answered a well-formed text reply XML" in result.stdout


def test_probe_safe_mode_with_the_key_from_the_environment(serve):
    server = serve(correct)
    env = {"ALARM_BOT_PROBE_AES_KEY": AES_KEY, "ALARM_BOT_PROBE_TOKEN": TOKEN}
    args = ["probe", server.url, "--appid", APPID, "--allow-private", "--json"]
    result = invoke(*args, env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "safe"
    assert data["verdict"] == "ok"
    assert server.requests[0][1]["encrypt_type"] == "aes"
    assert AES_KEY not in result.output
    assert TOKEN not in result.output


def test_probe_verify_sends_the_echostr_get(serve):
    server = serve(correct)
    result = invoke(*probe_args(server.url, "--verify", "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["check"] == "verify"
    assert data["finding_ids"][0] == "probe_echoed_echostr"
    assert "（明文模式，接入校验 GET）" in data["reply"]
    assert server.requests[0][0] == "GET"


def test_probe_refuses_loopback_without_allow_private(serve):
    server = serve(correct)
    result = invoke("probe", server.url, "--token", TOKEN, "--no-public-dns")
    assert result.exit_code == 1
    assert "refused to probe: 127.0.0.1 is a loopback address" in result.output
    assert server.requests == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--aes-key", "short", "--appid", APPID], "43 base64 characters"),
        (["--mode", "safe"], "safe mode needs the appid"),
        (["--event", "a b"], "event must be a plain word"),
    ],
)
def test_probe_bad_settings_are_usage_errors(extra, message):
    result = invoke(*probe_args("http://127.0.0.1:9/wx", *extra))
    assert result.exit_code == 2
    assert message in result.output


# ---- logs


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    bench = load_bench()
    return bench.write_logs(tmp_path_factory.mktemp("cli-logs"), size=1_000_000, rate=2)


def test_logs_json_counts_the_window(logs):
    access, errors, truth = logs
    result = invoke(
        "logs",
        str(access),
        "--error-log",
        str(errors),
        "--around",
        "2014-12-01 20:12:00",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["window"]["requests"] == truth.requests == 600
    assert data["window"]["status"] == dict(sorted(truth.status.items()))
    assert data["window"]["start"] == "2014-12-01T20:12:00+08:00"
    assert data["errors"]["counts"]["connect_failed"] == truth.error_lines
    assert data["files"][0]["seek_ms"] >= 0
    assert data["conclusion_ids"] == ["timeouts", "bad_gateway"]
    assert "这些就是请求超时" in data["conclusions"][0]
    assert data["meanings"]["404"].startswith("服务器上找不到这个 URL 路径")
    assert data["reply"].endswith(data["conclusions"][-1])


def test_logs_text_with_a_window_and_zone(logs):
    access = logs[0]
    args = ["logs", str(access), "--around", "2014-12-01 12:12:00", "--tz", "UTC"]
    result = invoke(*args, "--window", "10m", "--format", "main", "--lang", "en")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "📜 nginx logs: 2014-12-01 20:12:00 to 20:22:00 (UTC+08:00, main format)"
    )
    assert "\n🔎 conclusions:\n• " in result.stdout


def test_logs_reads_the_meanings_from_the_knowledge_given(logs, tmp_path):
    from bot.knowledge import default_root

    root = tmp_path / "knowledge"
    shutil.copytree(default_root(), root)
    table = root / "reference" / "nginx_status.yaml"
    text = table.read_text(encoding="utf-8")
    old = "网关错误：后端处理慢、挂了或拒绝连接（进程崩溃、端口没监听）。"
    table.write_text(text.replace(old, "后端没接住 nginx 的连接。"), "utf-8")
    args = ["logs", str(logs[0]), "--around", "2014-12-01 20:12:00"]
    result = invoke(*args, "--knowledge", str(root))
    assert result.exit_code == 0, result.output
    assert "  502：后端没接住 nginx 的连接。\n" in result.stdout
    assert old not in result.stdout


AROUND = "2014-12-01 20:12:00"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--around", "yesterday"],
            "Invalid value for '--around': not a time: 'yesterday' "
            "(use 2014-12-01 20:12:00, 2014-12-01T20:12:00+08:00 with a UTC offset, "
            "or a Unix Stamp)",
        ),
        (
            ["--around", "9999-12-31 23:59:00"],
            "Invalid value for '--around': '9999-12-31 23:59:00' is out of range: "
            "the alarm time must be from 1970-01-01 to before 9999-01-01 (UTC)",
        ),
        (["--around", "0001-01-01 00:00:00"], "'0001-01-01 00:00:00' is out of range"),
        (["--around", AROUND, "--window", "soon"], "not a duration"),
        (
            ["--around", AROUND, "--window", "99999999h"],
            "Invalid value for '--window': '99999999h' is out of range: a window "
            "must be longer than 0 and at most 31 days (744h)",
        ),
        (["--around", AROUND, "--window", "0"], "'0' is out of range"),
        (["--around", AROUND, "--tz", "Mars"], "not a UTC offset"),
        (
            ["--around", AROUND, "--tz", "+25:00"],
            "Invalid value for '--tz': not a UTC offset: '+25:00' (use UTC, or "
            "+HH:MM or +HHMM from -23:59 to +23:59, e.g. +08:00)",
        ),
    ],
)
def test_logs_bad_values_are_one_line_usage_errors(logs, extra, message):
    result = invoke("logs", str(logs[0]), *extra)
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # not a traceback
    *_, last = result.output.splitlines()
    assert last.startswith("Error: Invalid value for '--")
    assert message in last


def test_logs_unknown_format_is_an_error(tmp_path):
    path = tmp_path / "odd.log"
    path.write_text("not an nginx line\n")
    result = invoke("logs", str(path), "--around", AROUND)
    assert result.exit_code == 1
    assert "pass its log_format with --format" in result.output


def test_logs_format_that_does_not_match_is_an_error(logs):
    result = invoke("logs", str(logs[0]), "--around", AROUND, "--format", "combined")
    assert result.exit_code == 0, result.output  # main lines start like combined
    result = invoke(
        "logs", str(logs[0]), "--around", AROUND, "--format", "$msec $status"
    )
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(
        f"Error: the log format '$msec $status' does not match {logs[0]}: "
        "20 of its first 20 lines do not parse, the first of them: '"
    )


def test_logs_empty_file_is_an_error(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b"")
    result = invoke("logs", str(path), "--around", AROUND, "--json")
    assert result.exit_code == 1
    assert result.output == f"Error: nothing to scan: {path} is empty\n"


def test_logs_json_warns_about_a_log_out_of_time_order(logs, tmp_path):
    twice = tmp_path / "access.log"
    twice.write_bytes(logs[0].read_bytes() * 2)
    result = invoke("logs", str(twice), "--around", AROUND, "--json", "--lang", "en")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["warning_ids"] == ["unordered"]
    assert data["warnings"][0].startswith(f"{twice} is not in time order")
    assert "\n⚠️ warning: " in data["reply"]


# ---- host


def test_host_json_and_text():
    result = invoke("host", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["cpu_count"] >= 1
    assert "tcp_states" in data
    assert len(data["findings"]) == len(data["finding_ids"])
    assert data["reply"].startswith("🖥 本机状态（uptime、free、ulimit -n、netstat")
    text = invoke("host", "--process", "python")
    assert text.exit_code == 0
    assert text.stdout.startswith("🖥 本机状态")
    assert "负载（1/5/15 分钟）：" in text.stdout
    assert ("值得注意：" in text.stdout) != ("没有明显异常。" in text.stdout)
    english = invoke("host", "--lang", "en")
    assert english.stdout.startswith("🖥 This host (uptime, free, ulimit -n")


def test_help_lists_the_tools():
    result = invoke("--help")
    for name in ("probe", "logs", "host"):
        assert f"  {name} " in result.stdout
