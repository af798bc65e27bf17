"""Tests for bot.probe: real HTTP and DNS servers on 127.0.0.1 that misbehave."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import re
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot import host, probe
from bot.autoprobe import followup_context, probe_context, probe_json
from bot.diagnosis import Finding
from bot.knowledge import FINDING_VARIABLES, is_alarmless, load_knowledge
from bot.policy import GroupState
from bot.probe import (
    DEFAULT_ACCOUNT_ID,
    TEST_OPENID,
    HostResolver,
    MessageCrypto,
    MessageCryptoError,
    MessageMode,
    NameserverResolver,
    ProbeLimits,
    ProbeResult,
    ProbeTarget,
    RateLimiter,
    SystemResolver,
    TargetRefusedError,
    Verdict,
    build_push,
    check_url,
    guard_addresses,
    judge_push,
    probe_url,
    refusal_reason,
    sign,
)
from bot.render import ReplyRenderer
from tests.httpserver import Handler, HttpServer, Received, http_response, replying

TOKEN = "probeTokenS3cret"
APPID = "wxb11529c136998cb6"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OTHER_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
FAST = ProbeLimits(dns=0.5, connect=0.5, total=1.0)

# Produced by wechatpy 1.8.18 (an independent implementation) with the random
# prefix fixed to "aaaabbbbccccdddd", token "pamtest", nonce 1320562132 and
# timestamp 1409304348.
VECTOR_PLAIN = (
    "<xml><ToUserName><![CDATA[oAlarmBotProbeTestOpenId0000]]></ToUserName>"
    "<Content><![CDATA[\u4f60\u597d]]></Content></xml>"
)
VECTOR_ENCRYPT = (
    "jn1L23DB+6ELqJ+6bruv269BY80JNiSpfbwR6D08PuKDgtQlWCPZaHhBxS/s/PmCNa2ebs3IqA1GTy/"
    "PEVx8FoxbwregivZYETJIIZMEBtVS03PPdz/Q86uaoWBWa4BGrTMwCdEOBTtSyI7dINYtke2yC3qbN"
    "wD4JuO1PO0nbm4O4XB9lZFcLimkc2el3AB3j4xVP+NZS+sJvBt0IXOVQw=="
)
VECTOR_SIGNATURE = "65e4edf4f6a33d4c5680e34a8c5c297a653dfc36"


def plain_target(url: str, **kw: object) -> ProbeTarget:
    return ProbeTarget(url=url, token=TOKEN, **kw)  # type: ignore[arg-type]


def safe_target(url: str, mode: MessageMode = MessageMode.SAFE) -> ProbeTarget:
    return ProbeTarget(url=url, token=TOKEN, appid=APPID, aes_key=AES_KEY, mode=mode)


async def run(target: ProbeTarget, limits: ProbeLimits = FAST) -> ProbeResult:
    return checked(await probe_url(target, allow_private=True, limits=limits))


async def run_with(
    target: ProbeTarget,
    resolver: HostResolver,
    public_resolver: HostResolver | None = None,
    *,
    allow_private: bool = True,
) -> ProbeResult:
    result = await probe_url(
        target,
        allow_private=allow_private,
        limits=FAST,
        resolver=resolver,
        public_resolver=public_resolver,
    )
    return checked(result)


async def verify(target: ProbeTarget) -> ProbeResult:
    return checked(await check_url(target, allow_private=True))


# ---- every result, rendered in both languages

# Four or more English words in a row: a sentence, not a technical token. A word
# may hold dots, slashes and hyphens (text/plain, fs.file-max); a number, an
# option (-n) or any Chinese character ends the run.
_WORD = r"[A-Za-z][A-Za-z0-9_./'-]*"
ENGLISH_RUN = re.compile(rf"{_WORD}(?:[ ,:;]+{_WORD}){{3,}}")
# Strings people grep logs for, quoted as they are.
LOG_PHRASES = ("Connection reset by peer",)


@functools.cache
def renderers() -> dict[str, ReplyRenderer]:
    knowledge = load_knowledge()
    return {lang: ReplyRenderer(knowledge, lang) for lang in ("zh", "en")}


def english_runs(text: str, data: list[str]) -> list[str]:
    """The English sentences in ``text`` once the quoted data is taken out."""
    for value in sorted(data, key=len, reverse=True):
        if len(value) >= 3:
            text = text.replace(value, " ")
    for phrase in LOG_PHRASES:
        text = text.replace(phrase, " ")
    return ENGLISH_RUN.findall(text)


def rendered(result: ProbeResult, lang: str, appid: str | None = APPID) -> str:
    renderer = renderers()[lang]
    return renderer.render("probe", **probe_context(appid, result, renderer))


def checked(result: ProbeResult) -> ProbeResult:
    """Render ``result`` as /probe does, in zh and en; check the zh words.

    The values of the findings and the body are data (the server's own words,
    a parser's message), taken out before looking for English in Chinese.
    """
    assert all(is_alarmless(f.id) for f in result.findings), result.findings
    zh, en = renderers()["zh"], renderers()["en"]
    data = [result.url, *(v for f in result.findings for v in f.values.values())]
    context = probe_context(APPID, result, zh)
    data.append(str(context["body"] or ""))
    reply = rendered(result, "zh")
    outcome = zh.finding(result.outcome)
    assert str(outcome["text"]) in reply
    assert english_runs(reply, data) == [], reply
    assert en.finding(result.outcome)["text"] in rendered(result, "en")
    assert rendered(result, "zh", appid=None).startswith("🔎 探测：")
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    group = GroupState("ops", APPID, "invalid_response", at, at, at)
    follow_up = zh.render("probe_followup", **followup_context(group, result, zh))
    assert follow_up.splitlines()[1].startswith(str(outcome["text"]))
    assert english_runs(follow_up, data) == [], follow_up
    return result


# ---- a correct server, which also checks what the probe sends


def checked_push(request: Received, key: str = AES_KEY) -> ET.Element | str:
    """Return the pushed message, or why the platform would not have sent it."""
    q = request.query
    if request.method != "POST":
        return "not a POST"
    if q.get("signature") != sign(TOKEN, q["timestamp"], q["nonce"]):
        return "bad signature"
    if q.get("openid") != TEST_OPENID:
        return "no openid"
    root = ET.fromstring(request.body)
    encrypted = root.findtext("Encrypt")
    if encrypted is None:
        return root
    expected = sign(TOKEN, q["timestamp"], q["nonce"], encrypted)
    if q.get("encrypt_type") != "aes" or q.get("msg_signature") != expected:
        return "bad msg_signature"
    return ET.fromstring(MessageCrypto(key, APPID).decrypt(encrypted))


def text_reply(message: ET.Element, *, swap: bool = True) -> str:
    to_user = message.findtext("FromUserName" if swap else "ToUserName")
    from_user = message.findtext("ToUserName" if swap else "FromUserName")
    return (
        f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName>"
        f"<FromUserName><![CDATA[{from_user}]]></FromUserName>"
        "<CreateTime>1409304348</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        "<Content><![CDATA[pong]]></Content></xml>"
    )


def encrypted_reply(inner: str, key: str = AES_KEY, token: str = TOKEN) -> str:
    encrypted = MessageCrypto(key, APPID).encrypt(inner)
    signature = sign(token, "1409304349", "777", encrypted)
    return (
        f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt>"
        f"<MsgSignature><![CDATA[{signature}]]></MsgSignature>"
        "<TimeStamp>1409304349</TimeStamp><Nonce><![CDATA[777]]></Nonce></xml>"
    )


def correct_server(*, encrypt: bool, key: str = AES_KEY, token: str = TOKEN) -> Handler:
    async def handler(request: Received) -> bytes:
        message = checked_push(request)
        if isinstance(message, str):
            return http_response(403, message)
        if message.findtext("MsgType") != "event" or not message.findtext("Event"):
            return http_response(400, "not an event")
        reply = text_reply(message)
        body = encrypted_reply(reply, key, token) if encrypt else reply
        return http_response(200, body, content_type="text/xml")

    return handler


def test_every_finding_of_the_probe_and_host_is_worded_without_an_alarm():
    knowledge = load_knowledge()
    for module in (probe, host):
        source = Path(str(module.__file__)).read_text(encoding="utf-8")
        named = set(re.findall(r'"((?:probe|host)_[a-z_]+)"', source))
        assert named
        assert named <= set(FINDING_VARIABLES), named - set(FINDING_VARIABLES)
        given = named | set(re.findall(r'"([a-z_]+)"', source)) & set(FINDING_VARIABLES)
        for finding_id in given:
            assert is_alarmless(finding_id), finding_id
            assert finding_id in knowledge.findings
    assert all(is_alarmless(f) for f in FINDING_VARIABLES if f.startswith("http_"))


def test_zh_wording_of_every_probe_and_host_finding_is_chinese():
    zh = renderers()["zh"]
    for finding_id in zh.knowledge.findings:
        if is_alarmless(finding_id):
            values = {name: "1" for name in FINDING_VARIABLES[finding_id]}
            wording = zh.finding(Finding(finding_id, values))
            text = f"{wording['text']}\n{wording['fix']}"
            assert english_runs(text, []) == [], finding_id


# ---- the misbehaving servers of real alarms


async def test_quoted_success_is_invalid_and_reproduces_the_alarm(serve):
    server = await serve(replying(body='"success"'))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome == Finding(
        "quoted_success", {"content": '"success"', "length": "9"}
    )
    assert result.status == 200
    assert result.response_length == 9
    # The same words as the reply to an alarm whose sample shows "success".
    assert '详情：回包是带双引号的 "success"（9 字节）' in rendered(result, "zh")
    assert 'Detail: The reply is "success" with double quotes' in rendered(result, "en")


async def test_html_error_page_is_invalid_with_its_title(serve):
    page = (
        "<!DOCTYPE html><html><head><title>Error 500: Internal</title></head>"
        "<body><h1>Whoops</h1></body></html>"
    )
    server = await serve(replying(body=page, content_type="text/html"))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome == Finding("html_page", {"title": "Error 500: Internal"})
    assert "回包是一个 HTML 页面（标题：Error 500: Internal）" in rendered(result, "zh")


@pytest.mark.parametrize(
    ("status", "finding", "zh"),
    [
        (404, "http_not_found", "后台配置的 URL 路径不对"),
        (405, "http_method", "回调路由不接受 POST"),
        (401, "http_client_error", "平台推送从不带认证信息"),
        (500, "http_server_error", "程序处理推送时出了异常"),
        (502, "http_server_error", "代理连不上后端程序"),
        (504, "http_server_error", "代理等后端程序超时了"),
        (204, "probe_http_status", "平台只认 HTTP 200"),
    ],
)
async def test_http_error_status_is_invalid_with_the_code(serve, status, finding, zh):
    server = await serve(replying(status, "nope"))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.status == status
    assert result.outcome == Finding(finding, {"code": str(status)})
    assert f"服务器返回 HTTP {status}" in rendered(result, "zh")
    assert zh in rendered(result, "zh")


async def test_reply_with_to_and_from_not_swapped_is_invalid(serve):
    async def handler(request: Received) -> bytes:
        message = checked_push(request)
        assert not isinstance(message, str), message
        return http_response(200, text_reply(message, swap=False))

    server = await serve(handler)
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome == Finding(
        "reply_not_swapped", {"to_user": DEFAULT_ACCOUNT_ID, "from_user": TEST_OPENID}
    )


async def test_malformed_xml_is_invalid(serve):
    server = await serve(replying(body="<xml><ToUserName>oX</xml>"))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome.id == "malformed_xml"
    assert "mismatched tag" in result.outcome.values["error"]


async def test_echo_of_the_request_is_invalid(serve):
    async def echo(request: Received) -> bytes:
        return http_response(200, request.body, content_type="text/xml")

    server = await serve(echo)
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome == Finding("echo_request")


async def test_reply_encrypted_with_a_wrong_key_is_invalid(serve):
    server = await serve(correct_server(encrypt=True, key=OTHER_KEY))
    result = await run(safe_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome.id == "probe_undecryptable"
    assert result.outcome.values["reason"] in {"bad_padding", "bad_length"}
    assert "多半是密钥不对" in rendered(result, "zh")


async def test_reply_signed_with_a_wrong_token_is_invalid(serve):
    server = await serve(correct_server(encrypt=True, token="anotherToken"))
    result = await run(safe_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome == Finding("probe_msg_signature")


async def test_plain_reply_in_safe_mode_is_invalid(serve):
    server = await serve(correct_server(encrypt=False))
    result = await run(safe_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome == Finding("probe_plain_in_safe")


def sleeping(seconds: float) -> Handler:
    async def handler(request: Received) -> bytes:
        await asyncio.sleep(seconds)
        return http_response(200, "success")

    return handler


async def test_slow_server_is_a_request_timeout(serve):
    server = await serve(sleeping(0.6))
    limits = ProbeLimits(dns=0.5, connect=0.2, total=0.3)
    result = await run(plain_target(server.url()), limits)
    assert result.verdict is Verdict.REQUEST_TIMEOUT
    assert result.outcome == Finding("probe_request_timeout", {"limit": "0.3"})
    assert result.timings.connect is not None
    assert result.timings.first_byte is None
    assert 250 <= (result.timings.total or 0) < 600


async def test_six_second_sleep_times_out_at_the_platform_limit_of_5_s(serve):
    server = await serve(sleeping(6))
    started = time.monotonic()
    result = await probe_url(plain_target(server.url()), allow_private=True)
    elapsed = time.monotonic() - started
    checked(result)
    assert result.verdict is Verdict.REQUEST_TIMEOUT
    assert result.outcome == Finding("probe_request_timeout", {"limit": "5"})
    assert "连接建立了，但 5 秒内没收到完整回包" in rendered(result, "zh")
    assert 4.9 <= elapsed < 5.8
    assert 4900 <= (result.timings.total or 0) < 5800


async def test_closed_port_is_a_connect_timeout_saying_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run(plain_target(f"http://127.0.0.1:{port}/wx"))
    assert result.verdict is Verdict.CONNECT_TIMEOUT
    assert result.outcome == Finding("probe_connection_refused")
    assert "连接被拒绝" in rendered(result, "zh")
    assert result.status is None
    assert result.timings.connect is None


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: new connections hang, like SYN drops."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.2)
        fillers.append(filler)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            break
    else:
        pytest.fail("the accept queue never filled up")
    yield port
    for sock in [*fillers, listener]:
        sock.close()


async def test_unanswered_connect_is_a_connect_timeout_saying_timed_out(full_backlog):
    limits = ProbeLimits(dns=0.5, connect=0.3, total=1.0)
    result = await run(plain_target(f"http://127.0.0.1:{full_backlog}/wx"), limits)
    assert result.verdict is Verdict.CONNECT_TIMEOUT
    assert result.outcome == Finding("probe_connect_timeout", {"limit": "0.3"})


async def test_connection_closed_without_answer_is_invalid(serve):
    async def hang_up(request: Received) -> None:
        return None

    server = await serve(hang_up)
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome == Finding("network_error")


async def test_redirect_is_not_followed(serve):
    async def redirect(request: Received) -> bytes:
        if request.path == "/elsewhere":
            return http_response(200, "success")
        head = "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
        return head.encode()

    server = await serve(redirect)
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.status == 302
    assert result.outcome == Finding("http_redirect", {"code": "302"})
    assert "平台不会跟随跳转" in rendered(result, "zh")
    assert [r.path for r in server.received] == ["/wx"]


async def test_long_answer_is_read_only_up_to_the_limit(serve):
    server = await serve(replying(body="x" * 200_000))
    limits = ProbeLimits(dns=0.5, connect=0.5, total=2.0, max_body=1000)
    result = await run(plain_target(server.url()), limits)
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert 1000 < (result.response_length or 0) < 200_000
    assert Finding("probe_body_truncated", {"limit": "1000"}) in result.findings


# ---- correct servers


async def test_correct_plain_server_is_ok(serve):
    server = await serve(correct_server(encrypt=False))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.OK, result.findings
    assert result.outcome == Finding("probe_answered_reply", {"msg_type": "text"})
    assert "✅ 结论：正常" in rendered(result, "zh")
    sent = server.received[0]
    assert sent.headers["content-type"] == "text/xml"
    assert "accept-encoding" not in sent.headers or (
        sent.headers["accept-encoding"] == "identity"
    )
    assert sent.headers["host"] == f"127.0.0.1:{server.port}"
    timings = result.timings
    assert timings.dns == 0
    assert timings.connect is not None
    assert timings.first_byte is not None
    assert timings.total is not None
    assert timings.connect <= timings.first_byte <= timings.total


async def test_correct_safe_server_is_ok_and_the_reply_is_decrypted(serve):
    server = await serve(correct_server(encrypt=True))
    result = await run(safe_target(server.url()))
    assert result.verdict is Verdict.OK, result.findings
    assert result.body is not None
    assert f"<ToUserName><![CDATA[{TEST_OPENID}]]>" in result.body
    sent = ET.fromstring(server.received[0].body)
    assert sorted(child.tag for child in sent) == ["Encrypt", "ToUserName"]


async def test_compatible_mode_sends_plain_fields_and_accepts_a_plain_reply(serve):
    server = await serve(correct_server(encrypt=False))
    result = await run(safe_target(server.url(), MessageMode.COMPATIBLE))
    assert result.verdict is Verdict.OK, result.findings
    sent = ET.fromstring(server.received[0].body)
    assert sent.findtext("Event") == "VIEW"
    assert sent.findtext("Encrypt")


@pytest.mark.parametrize(
    ("body", "finding"),
    [
        ("success", "probe_answered_success"),
        ("", "probe_answered_empty"),
        (" \n", "probe_whitespace_body"),
        ("success\n", "success_padded"),
    ],
)
async def test_success_and_empty_body_are_ok(serve, body, finding):
    server = await serve(replying(body=body))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.OK
    port = Finding("url_bad_port", {"port": str(server.port), "url": server.url()})
    assert result.finding_ids == [finding, "url_bad_port"]
    assert result.findings[1] == port
    assert "平台只支持 80 和 443" in rendered(result, "zh")


async def test_event_is_sent_with_its_canonical_name(serve):
    server = await serve(replying(body="success"))
    await run(plain_target(server.url(), event="unSubscribe"))
    sent = ET.fromstring(server.received[0].body)
    assert sent.findtext("Event") == "unsubscribe"
    assert sent.findtext("ToUserName") == DEFAULT_ACCOUNT_ID
    assert sent.findtext("FromUserName") == TEST_OPENID


def self_signed(directory: Path, name: str) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


async def test_untrusted_certificate_fails_the_tls_handshake(tmp_path, dns_server):
    context = self_signed(tmp_path, "callback.example.test")
    server_names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    server = await HttpServer(replying(body="success")).start(tls=context)
    try:
        resolver = await dns_server({"callback.example.test": "127.0.0.1"})
        target = plain_target(f"https://callback.example.test:{server.port}/wx")
        result = await run_with(target, resolver)
    finally:
        await server.stop()
    assert result.verdict is Verdict.CONNECT_TIMEOUT
    assert result.outcome == Finding(
        "probe_tls_failed", {"error": "CERTIFICATE_VERIFY_FAILED"}
    )
    assert "TLS 握手失败（CERTIFICATE_VERIFY_FAILED）" in rendered(result, "zh")
    assert server_names == ["callback.example.test"]
    assert server.received == []


# ---- the URL verification (GET with echostr)


def echostr_server(extra: str = "", token: str = TOKEN) -> Handler:
    async def handler(request: Received) -> bytes:
        q = request.query
        if q.get("signature") != sign(token, q["timestamp"], q["nonce"]):
            return http_response(200, "")
        return http_response(200, q["echostr"] + extra)

    return handler


async def test_verification_echoing_echostr_is_ok(serve):
    server = await serve(echostr_server())
    result = await verify(plain_target(server.url()))
    assert result.verdict is Verdict.OK
    assert result.outcome == Finding("probe_echoed_echostr")
    assert result.check == "verify"
    assert "明文模式，接入校验 GET）" in rendered(result, "zh")
    assert server.received[0].method == "GET"


async def test_verification_with_a_trailing_newline_is_invalid(serve):
    server = await serve(echostr_server("\n"))
    result = await verify(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome.id == "probe_echostr_padded"
    expected = int(result.outcome.values["expected"])
    assert result.outcome.values == {
        "length": str(expected + 1),
        "expected": str(expected),
    }


async def test_verification_with_another_token_is_invalid(serve):
    server = await serve(echostr_server(token="other"))
    result = await verify(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.outcome == Finding("probe_echostr_missing")
    assert "核对服务器上的 Token" in rendered(result, "zh")


# ---- DNS, with fake DNS servers on 127.0.0.1


class FakeDns(asyncio.DatagramProtocol):
    def __init__(self, answers: dict[str, str], *, silent: bool = False) -> None:
        self.answers = answers
        self.silent = silent
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        self.queries.append(name)
        if self.silent or self.transport is None:
            return
        response = dns.message.make_response(query)
        if name not in self.answers:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif self.answers[name] == "SERVFAIL":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif not self.answers[name]:
            pass  # the name exists but has no address
        elif question.rdtype == dns.rdatatype.A:
            rrset = dns.rrset.from_text(
                question.name, 60, "IN", "A", self.answers[name]
            )
            response.answer.append(rrset)
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[Callable[..., Awaitable[NameserverResolver]]]:
    transports: list[asyncio.BaseTransport] = []

    async def start(answers: dict[str, str], *, silent: bool = False, lifetime=1.0):
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: FakeDns(answers, silent=silent), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        port = transport.get_extra_info("sockname")[1]
        return NameserverResolver("127.0.0.1", port=port, lifetime=lifetime)

    yield start
    for transport in transports:
        transport.close()


async def test_unknown_name_is_a_dns_failure(dns_server):
    resolver = await dns_server({})
    target = plain_target("http://callback.example.test/wx")
    result = await run_with(target, resolver)
    assert result.verdict is Verdict.DNS_FAILURE
    assert result.findings == (
        Finding(
            "probe_dns_failure",
            {
                "host": "callback.example.test",
                "resolver": "127.0.0.1",
                "reason": "nxdomain",
                "error": "",
            },
        ),
    )
    reply = rendered(result, "zh")
    assert "DNS 服务器 127.0.0.1 查不到 callback.example.test 的地址" in reply
    assert "域名不存在（NXDOMAIN）" in reply
    assert result.timings.dns is not None
    assert result.timings.connect is None


@pytest.mark.parametrize(
    ("answer", "reason", "zh"),
    [
        ("", "no_address", "域名没有 A 或 AAAA 记录"),
        ("SERVFAIL", "servfail", "DNS 服务器出错（SERVFAIL）"),
    ],
)
async def test_names_without_an_address_are_a_dns_failure(
    dns_server, answer, reason, zh
):
    resolver = await dns_server({"callback.example.test": answer})
    target = plain_target("http://callback.example.test/wx")
    result = await run_with(target, resolver, allow_private=False)
    assert result.verdict is Verdict.DNS_FAILURE
    assert result.outcome.id == "probe_dns_failure"
    assert result.outcome.values["reason"] == reason
    assert zh in rendered(result, "zh")


async def test_resolver_slower_than_the_limit_is_a_dns_failure(dns_server):
    resolver = await dns_server({}, silent=True, lifetime=5.0)
    target = plain_target("http://callback.example.test/wx")
    started = time.monotonic()
    result = await run_with(target, resolver, allow_private=False)
    assert time.monotonic() - started < 1.5
    assert result.verdict is Verdict.DNS_FAILURE
    assert result.outcome == Finding(
        "probe_dns_slow",
        {"host": "callback.example.test", "resolver": "127.0.0.1", "limit": "0.5"},
    )
    assert "超过 0.5 秒（平台的 DNS 超时时间）也没有结果" in rendered(result, "zh")


async def test_resolved_name_is_probed_at_the_resolved_address(serve, dns_server):
    server = await serve(replying(body="success"))
    resolver = await dns_server({"callback.example.test": "127.0.0.1"})
    target = plain_target(f"http://callback.example.test:{server.port}/wx")
    result = await run_with(target, resolver)
    assert result.verdict is Verdict.OK
    assert result.address == "127.0.0.1"
    assert server.received[0].headers["host"] == f"callback.example.test:{server.port}"
    assert result.finding_ids == ["probe_answered_success", "url_bad_port"]


async def test_public_resolver_nxdomain_is_a_dns_failure(serve, dns_server):
    server = await serve(replying(body="success"))
    system = await dns_server({"callback.example.test": "127.0.0.1"})
    public = await dns_server({})
    target = plain_target(f"http://callback.example.test:{server.port}/wx")
    result = await run_with(target, system, public)
    assert result.verdict is Verdict.DNS_FAILURE
    assert result.outcome.id == "probe_dns_failure"
    assert result.outcome.values["reason"] == "nxdomain"
    assert server.received == []


async def test_public_resolver_with_another_answer_is_noted(serve, dns_server):
    server = await serve(replying(body="success"))
    system = await dns_server({"callback.example.test": "127.0.0.1"})
    public = await dns_server({"callback.example.test": "127.0.0.2"})
    target = plain_target(f"http://callback.example.test:{server.port}/wx")
    result = await run_with(target, system, public)
    assert result.verdict is Verdict.OK
    assert (
        Finding(
            "probe_dns_mismatch",
            {
                "resolver": "127.0.0.1",
                "addresses": "127.0.0.1",
                "public_resolver": "127.0.0.1",
                "public_addresses": "127.0.0.2",
            },
        )
        in result.findings
    )
    assert "公共 DNS 127.0.0.1 却解析到 127.0.0.2" in rendered(result, "zh")


async def test_unreachable_public_resolver_is_only_noted(serve, dns_server):
    server = await serve(replying(body="success"))
    system = await dns_server({"callback.example.test": "127.0.0.1"})
    public = await dns_server({}, silent=True, lifetime=0.3)
    target = plain_target(f"http://callback.example.test:{server.port}/wx")
    result = await run_with(target, system, public)
    assert result.verdict is Verdict.OK
    silent = {"resolver": "127.0.0.1", "system": "127.0.0.1"}
    assert Finding("probe_public_dns_unreachable", silent) in result.findings


async def test_system_resolver_reads_the_hosts_file():
    assert "127.0.0.1" in await SystemResolver().resolve("localhost")


# ---- the SSRF guard


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "shared"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),
    ],
)
def test_refusal_reason_names_each_kind_of_address(address, kind):
    assert refusal_reason(address) == f"{address} is a {kind} address"


@pytest.mark.parametrize(
    "address", ["203.205.140.29", "58.248.9.218", "2400:da00::6666"]
)
def test_public_addresses_are_allowed(address):
    assert refusal_reason(address) is None


def test_guard_refuses_when_any_address_is_private():
    with pytest.raises(
        TargetRefusedError, match=r"10\.0\.0\.1 is a private address"
    ) as refused:
        guard_addresses(("203.205.140.29", "10.0.0.1"), allow_private=False)
    assert (refused.value.address, refused.value.kind) == ("10.0.0.1", "private")
    guard_addresses(("203.205.140.29", "10.0.0.1"), allow_private=True)


async def test_probe_refuses_loopback_without_sending_anything(serve):
    server = await serve(replying(body="success"))
    with pytest.raises(TargetRefusedError, match="loopback"):
        await probe_url(plain_target(server.url()), limits=FAST)
    assert server.received == []


async def test_probe_refuses_localhost_by_name():
    with pytest.raises(TargetRefusedError, match="loopback"):
        await probe_url(plain_target("http://localhost/wx"), limits=FAST)


async def test_name_resolving_to_metadata_is_refused(dns_server):
    resolver = await dns_server({"evil.example.test": "169.254.169.254"})
    with pytest.raises(TargetRefusedError, match="cloud metadata"):
        await probe_url(
            plain_target("http://evil.example.test/"), limits=FAST, resolver=resolver
        )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/?key=s3cret", "not an http"),
        ("file:///etc/passwd", "not an http"),
        ("wx", "not an http"),
        ("http://127.0.0.1:99999/?key=s3cret", "bad port"),
    ],
)
async def test_bad_urls_are_refused_without_echoing_them(url, reason):
    with pytest.raises(TargetRefusedError, match=reason) as raised:
        await probe_url(plain_target(url), allow_private=True)
    assert "s3cret" not in str(raised.value)


# ---- crypto


def test_crypto_decrypts_the_wechatpy_vector():
    crypto = MessageCrypto("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", APPID)
    assert crypto.decrypt(VECTOR_ENCRYPT) == VECTOR_PLAIN


def test_crypto_encrypts_like_wechatpy():
    crypto = MessageCrypto("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", APPID)
    assert crypto.encrypt(VECTOR_PLAIN, prefix=b"aaaabbbbccccdddd") == VECTOR_ENCRYPT
    signature = sign("pamtest", "1409304348", "1320562132", VECTOR_ENCRYPT)
    assert signature == VECTOR_SIGNATURE


def test_signature_is_sha1_of_the_sorted_parts():
    expected = hashlib.sha1(b"1409304348" + b"777" + b"tok").hexdigest()
    assert sign("tok", "1409304348", "777") == expected


def test_crypto_pads_to_32_bytes_with_random_prefix():
    crypto = MessageCrypto(AES_KEY, APPID)
    first, second = crypto.encrypt("<xml/>"), crypto.encrypt("<xml/>")
    assert first != second
    assert len(base64.b64decode(first)) % 32 == 0


def test_crypto_with_a_wrong_key_raises_a_crypto_error():
    encrypted = MessageCrypto(AES_KEY, APPID).encrypt(VECTOR_PLAIN)
    with pytest.raises(MessageCryptoError):
        MessageCrypto(OTHER_KEY, APPID).decrypt(encrypted)


@pytest.mark.parametrize(
    ("encrypted", "reason"),
    [
        ("not base64!", "not base64"),
        (base64.b64encode(b"12345").decode(), "not whole AES blocks"),
        (base64.b64encode(bytes(32)).decode(), "bad padding"),
    ],
)
def test_crypto_rejects_garbage(encrypted, reason):
    with pytest.raises(MessageCryptoError, match=reason):
        MessageCrypto(AES_KEY, APPID).decrypt(encrypted)


def test_crypto_for_another_appid_raises():
    encrypted = MessageCrypto(AES_KEY, APPID).encrypt(VECTOR_PLAIN)
    with pytest.raises(MessageCryptoError, match="appid 'wxb11529c136998cb6'"):
        MessageCrypto(AES_KEY, "wx0000000000000000").decrypt(encrypted)


@pytest.mark.parametrize("key", ["short", AES_KEY + "A", "!" * 43])
def test_crypto_rejects_a_malformed_key(key):
    with pytest.raises(ValueError, match="43 base64 characters"):
        MessageCrypto(key, APPID)


def test_safe_mode_needs_the_key_and_appid():
    with pytest.raises(ValueError, match="safe mode needs"):
        ProbeTarget(url="http://x/", token=TOKEN, mode=MessageMode.SAFE)


# ---- judging, without a server


@pytest.mark.parametrize(
    ("body", "finding"),
    [
        (b"\xef\xbb\xbfsuccess", Finding("probe_bom", {"length": "10"})),
        (b"SUCCESS", Finding("probe_success_case", {"content": "SUCCESS"})),
        (
            b"'success'",
            Finding("quoted_success", {"content": "'success'", "length": "9"}),
        ),
        (b'{"errcode": 0}', Finding("json_body", {"snippet": '{"errcode": 0}'})),
        (b"Error 500:", Finding("error_text", {"snippet": "Error 500:"})),
        (b"ok", Finding("probe_unexpected_body", {"snippet": "ok"})),
        (b"<root/>", Finding("probe_xml_root", {"root": "root"})),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><xml/>', Finding("probe_xml_dtd")),
    ],
)
def test_judge_push_invalid_bodies(body, finding):
    push = build_push(plain_target("http://x/"))
    judgement = judge_push(push, 200, body)
    assert judgement.verdict is Verdict.INVALID_RESPONSE
    assert judgement.findings == (finding,)


def test_judge_push_rejects_an_unknown_msg_type():
    push = build_push(plain_target("http://x/"))
    reply = (
        f"<xml><ToUserName>{TEST_OPENID}</ToUserName>"
        f"<FromUserName>{DEFAULT_ACCOUNT_ID}</FromUserName>"
        "<MsgType>pong</MsgType></xml>"
    )
    judgement = judge_push(push, 200, reply.encode())
    assert judgement.verdict is Verdict.INVALID_RESPONSE
    assert [f.id for f in judgement.findings] == ["probe_reply_type"]
    assert judgement.findings[0].values["msg_type"] == "pong"


def test_judge_push_names_each_wrong_reply_field():
    push = build_push(plain_target("http://x/"))
    reply = "<xml><ToUserName>oSomeoneElse</ToUserName><MsgType>text</MsgType></xml>"
    judgement = judge_push(push, 200, reply.encode())
    assert judgement.findings == (
        Finding("probe_reply_to", {"to_user": "oSomeoneElse", "openid": TEST_OPENID}),
        Finding(
            "probe_reply_from", {"from_user": "", "account_id": DEFAULT_ACCOUNT_ID}
        ),
    )
    zh = renderers()["zh"]
    assert zh.finding(judgement.findings[1])["text"] == (
        f"回复 XML 的 FromUserName 是空的，应为公众号的原始 ID {DEFAULT_ACCOUNT_ID}。"
    )


def test_judge_push_wants_all_parts_of_an_encrypted_reply():
    push = build_push(safe_target("http://x/"))
    reply = encrypted_reply("<xml/>").replace("<Nonce><![CDATA[777]]></Nonce>", "")
    judgement = judge_push(push, 200, reply.encode())
    assert judgement.findings == (
        Finding("probe_encrypt_fields", {"missing": "Nonce"}),
    )


def test_judge_push_reads_the_xml_inside_the_encryption():
    push = build_push(safe_target("http://x/"))
    judgement = judge_push(push, 200, encrypted_reply("<xml><a></xml>").encode())
    assert [f.id for f in judgement.findings] == ["probe_malformed_inner"]


def test_judge_push_names_the_appid_a_reply_was_encrypted_for():
    push = build_push(safe_target("http://x/"))
    other = MessageCrypto(AES_KEY, "wx0000000000000000").encrypt("<xml/>")
    reply = encrypted_reply("<xml/>").split("<MsgSignature>")[1]
    body = f"<xml><Encrypt>{other}</Encrypt><MsgSignature>{reply}"
    judgement = judge_push(push, 200, body.encode())
    failed = {"reason": "other_appid", "appid": "wx0000000000000000"}
    assert judgement.findings == (Finding("probe_undecryptable", failed),)
    assert "密文是给 AppID wx0000000000000000 的" in str(
        renderers()["zh"].finding(judgement.findings[0])["text"]
    )


def test_judge_push_flags_an_encrypted_reply_in_plain_mode():
    push = build_push(plain_target("http://x/"))
    judgement = judge_push(push, 200, encrypted_reply("<xml/>").encode())
    assert judgement.findings == (Finding("probe_encrypted_in_plain"),)


# ---- secrets, results and rate limits


async def test_secrets_never_appear_in_results_or_logs(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="bot.probe")
    server = await serve(correct_server(encrypt=True, key=OTHER_KEY))
    target = safe_target(server.url())
    result = await run(target)
    texts = [
        repr(target),
        json.dumps(probe_json(result, renderers()["zh"])),
        json.dumps(probe_json(result, renderers()["en"])),
        caplog.text,
    ]
    for text in texts:
        assert TOKEN not in text
        assert AES_KEY not in text
    assert "verdict=invalid_response" in caplog.text


async def test_to_json_has_the_contract_keys(serve):
    server = await serve(replying(body="success"))
    result = await run(plain_target(server.url() + "?tenant=7"))
    data = probe_json(result, renderers()["zh"])
    assert data["verdict"] == "ok"
    assert set(data["timings_ms"]) == {"dns", "connect", "first_byte", "total"}
    assert data["status"] == 200
    assert data["response_length"] == 7
    assert data["finding_ids"] == ["probe_answered_success", "url_bad_port"]
    assert data["findings"][0] == "URL 回了 success，平台会接受。"
    assert str(data["reply"]).startswith(f"🔎 探测：{server.url()}（明文模式）")
    assert probe_json(result, renderers()["en"])["findings"][0] == (
        "The URL answered success, which the platform accepts."
    )
    assert data["url"] == server.url()
    assert server.received[0].query["tenant"] == "7"


def test_rate_limiter_limits_per_key_and_overall():
    now = [0.0]
    limiter = RateLimiter(per_key=2, overall=3, period=60, clock=lambda: now[0])
    assert limiter.acquire("wx1") == 0.0
    now[0] = 10.0
    assert limiter.acquire("wx1") == 0.0
    assert limiter.acquire("wx1") == pytest.approx(50.0)
    assert limiter.acquire("wx2") == 0.0
    assert limiter.acquire("wx3") == pytest.approx(50.0)
    now[0] = 60.0
    assert limiter.acquire("wx1") == 0.0
    assert limiter.acquire("wx3") == pytest.approx(10.0)
    now[0] = 70.0
    assert limiter.acquire("wx3") == 0.0
