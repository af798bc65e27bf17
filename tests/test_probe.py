"""Tests for bot.probe: real HTTP and DNS servers on 127.0.0.1 that misbehave."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
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

from bot.probe import (
    DEFAULT_ACCOUNT_ID,
    TEST_OPENID,
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
    Timings,
    Verdict,
    build_push,
    check_url,
    format_result,
    guard_addresses,
    judge_push,
    probe_url,
    refusal_reason,
    sign,
)
from tests.httpserver import Handler, HttpServer, Received, http_response, replying

TOKEN = "probe-token-s3cret"
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
    return await probe_url(target, allow_private=True, limits=limits)


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


# ---- the misbehaving servers of real alarms


async def test_quoted_success_is_invalid_and_reproduces_the_alarm(serve):
    server = await serve(replying(body='"success"'))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == 'answered "success" with quotes'
    assert result.status == 200
    assert result.response_length == 9
    assert result.summary("invalid_response").startswith(
        'reproduced: the URL answered "success" with quotes in '
    )
    assert result.summary("invalid_response").endswith(" ms")


async def test_html_error_page_is_invalid_with_its_title(serve):
    page = (
        "<!DOCTYPE html><html><head><title>Error 500: Internal</title></head>"
        "<body><h1>Whoops</h1></body></html>"
    )
    server = await serve(replying(body=page, content_type="text/html"))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "answered an HTML page (Error 500: Internal)"


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (404, "the path does not exist"),
        (405, "does not accept POST"),
        (500, "the application failed"),
    ],
)
async def test_http_error_status_is_invalid_with_the_code(serve, status, meaning):
    server = await serve(replying(status, "nope"))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.status == status
    assert result.findings[0].startswith(f"http code={status}: ")
    assert meaning in result.findings[0]


async def test_reply_with_to_and_from_not_swapped_is_invalid(serve):
    async def handler(request: Received) -> bytes:
        message = checked_push(request)
        assert not isinstance(message, str), message
        return http_response(200, text_reply(message, swap=False))

    server = await serve(handler)
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "answered a reply XML with To and From not swapped"


async def test_malformed_xml_is_invalid(serve):
    server = await serve(replying(body="<xml><ToUserName>oX</xml>"))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "answered malformed XML"
    assert "mismatched tag" in result.findings[0]


async def test_echo_of_the_request_is_invalid(serve):
    async def echo(request: Received) -> bytes:
        return http_response(200, request.body, content_type="text/xml")

    server = await serve(echo)
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "echoed the request back"


async def test_reply_encrypted_with_a_wrong_key_is_invalid(serve):
    server = await serve(correct_server(encrypt=True, key=OTHER_KEY))
    result = await run(safe_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "answered a reply that cannot be decrypted"
    assert "wrong key" in result.findings[0]


async def test_reply_signed_with_a_wrong_token_is_invalid(serve):
    server = await serve(correct_server(encrypt=True, token="another-token"))
    result = await run(safe_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "answered a reply with a wrong MsgSignature"


async def test_plain_reply_in_safe_mode_is_invalid(serve):
    server = await serve(correct_server(encrypt=False))
    result = await run(safe_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "answered a plain XML reply in safe mode"


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
    assert result.headline == "did not answer within 0.3 s"
    assert result.timings.connect is not None
    assert result.timings.first_byte is None
    assert 250 <= (result.timings.total or 0) < 600


async def test_six_second_sleep_times_out_at_the_platform_limit_of_5_s(serve):
    server = await serve(sleeping(6))
    started = time.monotonic()
    result = await probe_url(plain_target(server.url()), allow_private=True)
    elapsed = time.monotonic() - started
    assert result.verdict is Verdict.REQUEST_TIMEOUT
    assert result.summary("request_timeout") == (
        "reproduced: the URL did not answer within 5 s"
    )
    assert 4.9 <= elapsed < 5.8
    assert 4900 <= (result.timings.total or 0) < 5800


async def test_closed_port_is_a_connect_timeout_saying_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run(plain_target(f"http://127.0.0.1:{port}/wx"))
    assert result.verdict is Verdict.CONNECT_TIMEOUT
    assert result.headline == "refused the connection"
    assert "Connection refused" in result.findings[0]
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
    assert result.headline == "did not accept the connection within 0.3 s"
    assert "timed out" in result.findings[0]


async def test_connection_closed_without_answer_is_invalid(serve):
    async def hang_up(request: Received) -> None:
        return None

    server = await serve(hang_up)
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "broke the connection without a full HTTP answer"


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
    assert "does not follow redirects" in result.findings[0]
    assert [r.path for r in server.received] == ["/wx"]


async def test_long_answer_is_read_only_up_to_the_limit(serve):
    server = await serve(replying(body="x" * 200_000))
    limits = ProbeLimits(dns=0.5, connect=0.5, total=2.0, max_body=1000)
    result = await run(plain_target(server.url()), limits)
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert 1000 < (result.response_length or 0) < 200_000
    assert any("Only the first 1000 bytes" in f for f in result.findings)


# ---- correct servers


async def test_correct_plain_server_is_ok(serve):
    server = await serve(correct_server(encrypt=False))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.OK, result.findings
    assert result.headline == "answered a well-formed text reply"
    assert result.summary("invalid_response").startswith(
        "not reproduced: the URL answered a well-formed text reply in "
    )
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


@pytest.mark.parametrize("body", ["success", "", "success\n"])
async def test_success_and_empty_body_are_ok(serve, body):
    server = await serve(replying(body=body))
    result = await run(plain_target(server.url()))
    assert result.verdict is Verdict.OK
    notes = [f for f in result.findings if "only pushes to ports 80" not in f]
    assert bool(notes) == (body == "success\n")


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
        result = await probe_url(
            target, allow_private=True, limits=FAST, resolver=resolver
        )
    finally:
        await server.stop()
    assert result.verdict is Verdict.CONNECT_TIMEOUT
    assert result.headline == "failed the TLS handshake"
    assert "CERTIFICATE_VERIFY_FAILED" in result.findings[0]
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
    result = await check_url(plain_target(server.url()), allow_private=True)
    assert result.verdict is Verdict.OK
    assert result.check == "verify"
    assert server.received[0].method == "GET"


async def test_verification_with_a_trailing_newline_is_invalid(serve):
    server = await serve(echostr_server("\n"))
    result = await check_url(plain_target(server.url()), allow_private=True)
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "echoed the echostr with extra bytes around it"


async def test_verification_with_another_token_is_invalid(serve):
    server = await serve(echostr_server(token="other"))
    result = await check_url(plain_target(server.url()), allow_private=True)
    assert result.verdict is Verdict.INVALID_RESPONSE
    assert result.headline == "did not echo the echostr"
    assert "Token" in result.findings[0]


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
    result = await probe_url(target, allow_private=True, resolver=resolver)
    assert result.verdict is Verdict.DNS_FAILURE
    assert "NXDOMAIN" in result.headline
    assert result.timings.dns is not None
    assert result.timings.connect is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [("", "the name has no A or AAAA record"), ("SERVFAIL", "SERVFAIL")],
)
async def test_names_without_an_address_are_a_dns_failure(dns_server, answer, reason):
    resolver = await dns_server({"callback.example.test": answer})
    target = plain_target("http://callback.example.test/wx")
    result = await probe_url(target, limits=FAST, resolver=resolver)
    assert result.verdict is Verdict.DNS_FAILURE
    assert reason in result.headline


async def test_resolver_slower_than_the_limit_is_a_dns_failure(dns_server):
    resolver = await dns_server({}, silent=True, lifetime=5.0)
    target = plain_target("http://callback.example.test/wx")
    started = time.monotonic()
    result = await probe_url(target, limits=FAST, resolver=resolver)
    assert time.monotonic() - started < 1.5
    assert result.verdict is Verdict.DNS_FAILURE
    assert "took longer than 0.5 s" in result.findings[0]


async def test_resolved_name_is_probed_at_the_resolved_address(serve, dns_server):
    server = await serve(replying(body="success"))
    resolver = await dns_server({"callback.example.test": "127.0.0.1"})
    target = plain_target(f"http://callback.example.test:{server.port}/wx")
    result = await probe_url(target, allow_private=True, resolver=resolver)
    assert result.verdict is Verdict.OK
    assert result.address == "127.0.0.1"
    assert server.received[0].headers["host"] == f"callback.example.test:{server.port}"
    assert any("only pushes to ports 80" in f for f in result.findings)


async def test_public_resolver_nxdomain_is_a_dns_failure(serve, dns_server):
    server = await serve(replying(body="success"))
    system = await dns_server({"callback.example.test": "127.0.0.1"})
    public = await dns_server({})
    target = plain_target(f"http://callback.example.test:{server.port}/wx")
    result = await probe_url(
        target, allow_private=True, resolver=system, public_resolver=public
    )
    assert result.verdict is Verdict.DNS_FAILURE
    assert result.findings[0].startswith("The 127.0.0.1 resolver cannot resolve")
    assert server.received == []


async def test_public_resolver_with_another_answer_is_noted(serve, dns_server):
    server = await serve(replying(body="success"))
    system = await dns_server({"callback.example.test": "127.0.0.1"})
    public = await dns_server({"callback.example.test": "127.0.0.2"})
    target = plain_target(f"http://callback.example.test:{server.port}/wx")
    result = await probe_url(
        target, allow_private=True, resolver=system, public_resolver=public
    )
    assert result.verdict is Verdict.OK
    assert any(
        "answers 127.0.0.1 but" in f and "127.0.0.2" in f for f in result.findings
    )


async def test_unreachable_public_resolver_is_only_noted(serve, dns_server):
    server = await serve(replying(body="success"))
    system = await dns_server({"callback.example.test": "127.0.0.1"})
    public = await dns_server({}, silent=True, lifetime=0.3)
    target = plain_target(f"http://callback.example.test:{server.port}/wx")
    result = await probe_url(
        target, allow_private=True, resolver=system, public_resolver=public
    )
    assert result.verdict is Verdict.OK
    assert any("did not answer from here" in f for f in result.findings)


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
    with pytest.raises(TargetRefusedError, match=r"10\.0\.0\.1 is a private address"):
        guard_addresses(("203.205.140.29", "10.0.0.1"), allow_private=False)
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
    ("body", "verdict", "headline"),
    [
        (b"\xef\xbb\xbfsuccess", Verdict.INVALID_RESPONSE, "byte-order mark"),
        (b"SUCCESS", Verdict.INVALID_RESPONSE, "answered 'SUCCESS'"),
        (b"'success'", Verdict.INVALID_RESPONSE, "with quotes"),
        (b'{"errcode": 0}', Verdict.INVALID_RESPONSE, "answered JSON"),
        (b"Error 500:", Verdict.INVALID_RESPONSE, "answered 'Error 500:'"),
        (b"<root/>", Verdict.INVALID_RESPONSE, "root <root>"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><xml/>', Verdict.INVALID_RESPONSE, "DTD"),
        (b"  \n", Verdict.OK, "empty body"),
    ],
)
def test_judge_push_bodies(body, verdict, headline):
    push = build_push(plain_target("http://x/"))
    judgement = judge_push(push, 200, body)
    assert judgement.verdict is verdict
    assert headline in judgement.headline


def test_judge_push_rejects_an_unknown_msg_type():
    push = build_push(plain_target("http://x/"))
    reply = (
        f"<xml><ToUserName>{TEST_OPENID}</ToUserName>"
        f"<FromUserName>{DEFAULT_ACCOUNT_ID}</FromUserName>"
        "<MsgType>pong</MsgType></xml>"
    )
    judgement = judge_push(push, 200, reply.encode())
    assert judgement.verdict is Verdict.INVALID_RESPONSE
    assert "MsgType is 'pong'" in judgement.findings[0]


def test_judge_push_wants_all_parts_of_an_encrypted_reply():
    push = build_push(safe_target("http://x/"))
    reply = encrypted_reply("<xml/>").replace("<Nonce><![CDATA[777]]></Nonce>", "")
    judgement = judge_push(push, 200, reply.encode())
    assert judgement.headline == "answered an encrypted reply without Nonce"


def test_summary_names_another_failure_than_the_alarm():
    result = ProbeResult(
        verdict=Verdict.CONNECT_TIMEOUT,
        headline="refused the connection",
        findings=(),
        timings=Timings(dns=1, total=2),
        status=None,
        response_length=None,
        body=None,
        url="http://x/",
        address="203.205.140.29",
        check="push",
        mode=MessageMode.PLAIN,
    )
    assert result.summary("request_timeout") == (
        "not reproduced, found connect_timeout instead: the URL refused the connection"
    )
    assert result.summary() == "connect_timeout: the URL refused the connection"


def test_judge_push_flags_an_encrypted_reply_in_plain_mode():
    push = build_push(plain_target("http://x/"))
    judgement = judge_push(push, 200, encrypted_reply("<xml/>").encode())
    assert judgement.headline == "answered an encrypted reply"


# ---- secrets, results and rate limits


async def test_secrets_never_appear_in_results_or_logs(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="bot.probe")
    server = await serve(correct_server(encrypt=True, key=OTHER_KEY))
    target = safe_target(server.url())
    result = await run(target)
    texts = [
        repr(target),
        json.dumps(result.to_json()),
        format_result(result),
        result.summary(),
        caplog.text,
    ]
    for text in texts:
        assert TOKEN not in text
        assert AES_KEY not in text
    assert "verdict=invalid_response" in caplog.text


async def test_to_json_has_the_contract_keys(serve):
    server = await serve(replying(body="success"))
    data = (await run(plain_target(server.url() + "?tenant=7"))).to_json()
    assert data["verdict"] == "ok"
    assert set(data["timings_ms"]) == {"dns", "connect", "first_byte", "total"}
    assert data["status"] == 200
    assert data["response_length"] == 7
    assert data["findings"] == [f for f in data["findings"] if isinstance(f, str)]
    assert data["reply"].startswith("probe: POST of an event to http://127.0.0.1:")
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
