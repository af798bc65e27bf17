"""Imitates the platform's push against a callback URL and judges the answer.

The probe does what the WeChat server does when it pushes a message, with the
platform's limits (see the troubleshooting guide): resolve the domain, connect
within 3 s, send a signed POST of a harmless event from a test openid (plain,
compatible or safe mode), wait 5 s in all for the answer, and judge it as the
platform would. ``check_url`` sends the GET with ``echostr`` that the platform
uses to verify a URL.

This is the only module of alarm-bot that touches the network. Targets that
resolve to loopback, private, link-local, shared (CGNAT), reserved, multicast
or cloud-metadata addresses are refused unless the caller allows them, and the
connection goes to the very address that was checked, so a second DNS answer
cannot redirect it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import enum
import errno
import functools
import hashlib
import ipaddress
import json
import logging
import re
import secrets
import socket
import ssl
import struct
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bot.diagnosis import Finding, http_finding, looks_like_error, snippet
from bot.errors import BotError

logger = logging.getLogger(__name__)

PUBLIC_RESOLVER = "182.254.116.116"
"""The public resolver the guide asks developers to test with (``dig @...``)."""

TEST_OPENID = "oAlarmBotProbeTestOpenId0000"
"""The sender of every probe: shaped like an openid (28 characters), never real."""

DEFAULT_ACCOUNT_ID = "gh_a1a2b0e0c0de"
"""The account's original id (``gh_...``) sent as ``ToUserName`` by default."""

DEFAULT_EVENT = "VIEW"
"""A menu-link click: servers log it and answer ``success``; nobody gets a message."""

REPLY_MSG_TYPES = frozenset(
    {"text", "image", "voice", "video", "music", "news", "transfer_customer_service"}
)

_EVENT_NAMES = {
    name.lower(): name
    for name in (
        "subscribe",
        "unsubscribe",
        "SCAN",
        "LOCATION",
        "CLICK",
        "VIEW",
        "TEMPLATESENDJOBFINISH",
        "MASSSENDJOBFINISH",
    )
}
_EVENT_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "CLICK": (("EventKey", "ALARM_BOT_PROBE"),),
    "VIEW": (("EventKey", "https://example.com/alarm-bot-probe"),),
    "SCAN": (("EventKey", "ALARM_BOT_PROBE"), ("Ticket", "ALARM_BOT_PROBE")),
    "LOCATION": (("Latitude", "0"), ("Longitude", "0"), ("Precision", "0")),
    "TEMPLATESENDJOBFINISH": (("MsgID", "0"), ("Status", "success")),
}
_EVENT_NAME_RE = re.compile(r"[A-Za-z_]{1,40}")
# The platform's form takes a Token of 3 to 32 letters or digits, nothing else.
_TOKEN_RE = re.compile(r"[A-Za-z0-9]{3,32}")

# Cloud metadata services: link-local or private anyway, named for a precise reason.
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
_SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")
ADDRESS_KINDS = (
    "unspecified",
    "loopback",
    "cloud metadata",
    "link-local",
    "shared",
    "multicast",
    "reserved",
    "private",
    "not globally routable",
)
"""The kinds of address a probe refuses; ``probe_refused`` words each."""
_URL_SAFE = "/?&=%:@!$'()*+,;~-._"


class Verdict(enum.StrEnum):
    """How the platform would judge the push; the values match the alarm types."""

    OK = "ok"
    DNS_FAILURE = "dns_failure"
    CONNECT_TIMEOUT = "connect_timeout"
    REQUEST_TIMEOUT = "request_timeout"
    INVALID_RESPONSE = "invalid_response"


class MessageMode(enum.StrEnum):
    """The account's message encryption mode (消息加解密方式)."""

    PLAIN = "plain"
    COMPATIBLE = "compatible"
    SAFE = "safe"


class TargetRefusedError(BotError):
    """The target URL is not allowed: bad scheme, or a non-public address.

    Attributes:
        address: the refused address, or "" when the URL itself is refused.
        kind: what the address is (see ``ADDRESS_KINDS``), or why the URL is
            refused: ``not_http`` or ``bad_port``.
    """

    def __init__(self, message: str, *, address: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.address = address
        self.kind = kind


class MessageCryptoError(BotError):
    """An encrypted message could not be decrypted or verified.

    Attributes:
        code: why, for findings: ``not_base64``, ``not_blocks``, ``bad_padding``,
            ``bad_length``, ``other_appid`` or ``not_utf8``.
        appid: the appid the message was encrypted for (``other_appid``), else "".
    """

    def __init__(self, message: str, code: str, appid: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.appid = appid


_RESOLUTION_REASONS = {
    "nxdomain": "NXDOMAIN: the name does not exist",
    "no_address": "the name has no A or AAAA record",
    "servfail": "the server failed to answer (SERVFAIL)",
    "again": "a temporary failure (EAI_AGAIN)",
    "timeout": "no answer in time",
    "error": "the resolver failed",
}


class ResolutionError(BotError):
    """A resolver could not resolve a name.

    Attributes:
        code: why, for findings: ``nxdomain``, ``no_address``, ``servfail``,
            ``again`` (a temporary failure), ``timeout`` (the resolver did not
            answer) or ``error``.
        detail: the system's error name (``EAI_...``) for ``error``, else "".
    """

    def __init__(self, code: str, detail: str = "") -> None:
        reason = _RESOLUTION_REASONS[code] + (f" ({detail})" if detail else "")
        super().__init__(reason)
        self.code = code
        self.detail = detail

    @property
    def unreachable(self) -> bool:
        """True when the resolver did not answer, rather than saying no."""
        return self.code == "timeout"


# ---- message crypto


def sign(*parts: str) -> str:
    """Return the platform's signature: SHA-1 of the sorted, joined parts.

    With ``token, timestamp, nonce`` this is ``signature``; adding the
    ``Encrypt`` value gives ``msg_signature``.
    """
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324


class MessageCrypto:
    """The platform's message encryption (AES-256-CBC, PKCS#7 to 32 bytes).

    NOTE: wechatpy implements this too, but its last release is from 2021, it
    pulls requests, six, xmltodict, optionaldict and python-dateutil into the
    bot for sixty lines of crypto, it is untyped, and a wrong key surfaces as
    whatever builtin error the garbage triggers (UnicodeDecodeError,
    struct.error) because it checks neither the padding nor the length. This
    class keeps the same wire format on ``cryptography`` and fails with
    ``MessageCryptoError``; tests pin it to a vector wechatpy produced.
    """

    def __init__(self, encoding_aes_key: str, appid: str) -> None:
        """Build the cipher from the 43-character EncodingAESKey.

        Raises:
            ValueError: the key is not 43 base64 characters.
        """
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error:
            key = b""
        if len(encoding_aes_key) != 43 or len(key) != 32:
            raise ValueError("EncodingAESKey must be 43 base64 characters")
        self._key = key
        self._appid = appid.encode()

    def encrypt(self, message: str, *, prefix: bytes | None = None) -> str:
        """Return the base64 ``Encrypt`` value for ``message``.

        Args:
            message: the XML to encrypt.
            prefix: the 16 random bytes that open the plaintext; tests fix it.
        """
        raw = message.encode()
        prefix = secrets.token_bytes(16) if prefix is None else prefix
        plain = prefix + struct.pack(">I", len(raw)) + raw + self._appid
        padding = 32 - len(plain) % 32
        plain += bytes([padding]) * padding
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

    def decrypt(self, encrypted: str) -> str:
        """Return the XML inside an ``Encrypt`` value.

        Raises:
            MessageCryptoError: not base64, bad padding or length (wrong key),
                or encrypted for another appid.
        """
        try:
            data = base64.b64decode(encrypted, validate=True)
        except binascii.Error:
            raise MessageCryptoError(
                "the Encrypt value is not base64", "not_base64"
            ) from None
        if not data or len(data) % 16:
            raise MessageCryptoError(
                "the Encrypt value is not whole AES blocks", "not_blocks"
            )
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        padding = plain[-1]
        if not 1 <= padding <= 32 or plain[-padding:] != bytes([padding]) * padding:
            raise MessageCryptoError(
                "bad padding after decryption: wrong key?", "bad_padding"
            )
        content = plain[16:-padding]
        (length,) = struct.unpack(">I", content[:4]) if len(content) >= 4 else (-1,)
        if not 0 <= length <= len(content) - 4:
            raise MessageCryptoError(
                "bad message length after decryption: wrong key?", "bad_length"
            )
        appid = content[4 + length :]
        if appid != self._appid:
            shown = appid.decode(errors="replace")[:40]
            raise MessageCryptoError(
                f"encrypted for appid {shown!r}, not ours", "other_appid", shown
            )
        try:
            return content[4 : 4 + length].decode()
        except UnicodeDecodeError:
            raise MessageCryptoError(
                "the decrypted message is not UTF-8", "not_utf8"
            ) from None

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))


# ---- the address guard


def refusal_reason(address: str) -> str | None:
    """Say why a probe must not connect to ``address``, or None if it may.

    Args:
        address: an IPv4 or IPv6 address as text.
    """
    kind = refusal_kind(address)
    return None if kind is None else f"{address} is a {kind} address"


def refusal_kind(address: str) -> str | None:
    """What kind of non-public address ``address`` is, or None if it is public.

    The kinds: ``unspecified``, ``loopback``, ``cloud metadata``,
    ``link-local``, ``shared``, ``multicast``, ``reserved``, ``private`` and
    ``not globally routable``; the probe templates word each.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside IPv6 (mapped, 6to4) reaches that IPv4 address.
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    return _address_kind(ip)


def _address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip in _METADATA_ADDRESSES, "cloud metadata"),
        (ip.is_link_local, "link-local"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_NETWORK, "shared"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
    )
    for refused, kind in checks:
        if refused:
            return kind
    return None if ip.is_global else "not globally routable"


def guard_addresses(addresses: tuple[str, ...], *, allow_private: bool) -> None:
    """Refuse the target if any of its addresses is not public.

    Raises:
        TargetRefusedError: one of the addresses is refused.
    """
    if allow_private:
        return
    for address in addresses:
        kind = refusal_kind(address)
        if kind is not None:
            raise TargetRefusedError(
                f"refused to probe: {address} is a {kind} address "
                "(allow private targets in settings)",
                address=address,
                kind=kind,
            )


# ---- resolvers


class HostResolver(Protocol):
    """Resolves a host name to addresses."""

    @property
    def name(self) -> str:
        """A short name for findings, e.g. ``system`` or ``182.254.116.116``."""
        ...

    async def resolve(self, host: str) -> tuple[str, ...]:
        """Return the addresses of ``host``; raise ``ResolutionError`` if none."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``: hosts file, then DNS)."""

    @property
    def name(self) -> str:
        """See ``HostResolver``."""
        return "system"

    async def resolve(self, host: str) -> tuple[str, ...]:
        """See ``HostResolver``."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            code = _GAI_CODES.get(exc.errno or 0, "error")
            detail = "" if code != "error" else _gai_name(exc.errno)
            raise ResolutionError(code, detail) from None
        return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


_GAI_CODES = {
    socket.EAI_NONAME: "nxdomain",
    socket.EAI_AGAIN: "again",
    socket.EAI_FAIL: "servfail",
}
_EAI_NODATA = getattr(socket, "EAI_NODATA", None)  # glibc: a name without address
if _EAI_NODATA is not None:
    _GAI_CODES[_EAI_NODATA] = "no_address"


def _gai_name(number: int | None) -> str:
    names = [n for n in dir(socket) if n.startswith("EAI_")]
    return next((n for n in names if getattr(socket, n) == number), f"EAI {number}")


class NameserverResolver:
    """Asks one DNS server directly, like ``dig @server name`` (dnspython)."""

    def __init__(self, server: str, *, port: int = 53, lifetime: float = 5.0) -> None:
        """Use ``server:port``, giving up after ``lifetime`` seconds."""
        self._server = server
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [server]
        self._resolver.port = port
        self._resolver.lifetime = lifetime

    @property
    def name(self) -> str:
        """See ``HostResolver``."""
        return self._server

    async def resolve(self, host: str) -> tuple[str, ...]:
        """See ``HostResolver``."""
        try:
            answer = await self._resolver.resolve_name(host)
        except dns.resolver.NXDOMAIN:
            raise ResolutionError("nxdomain") from None
        except dns.resolver.NoAnswer:
            raise ResolutionError("no_address") from None
        except dns.resolver.NoNameservers:
            raise ResolutionError("servfail") from None
        except dns.exception.Timeout:
            raise ResolutionError("timeout") from None
        return tuple(answer.addresses())


# ---- values


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A callback URL with the account's settings; secrets stay out of repr.

    Attributes:
        url: the callback URL configured on the platform.
        token: the Token configured on the platform.
        appid: the account's appid; needed in compatible and safe mode.
        aes_key: the 43-character EncodingAESKey; needed in compatible and safe.
        mode: the message encryption mode.
        event: the event pushed (``VIEW`` by default, case-insensitive).
        account_id: the original id sent as ``ToUserName``.
        openid: the test sender sent as ``FromUserName``.
    """

    url: str
    token: str = field(repr=False)
    appid: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    mode: MessageMode = MessageMode.PLAIN
    event: str = DEFAULT_EVENT
    account_id: str = DEFAULT_ACCOUNT_ID
    openid: str = TEST_OPENID

    def __post_init__(self) -> None:
        """Check that the settings fit together.

        Raises:
            ValueError: the token is not what the platform takes, a mode needs
                a key and appid that are missing, the key is malformed, or the
                event name is not a plain word.
        """
        if not _TOKEN_RE.fullmatch(self.token):
            raise ValueError(
                "the token must be 3 to 32 letters or digits, as the platform takes it"
            )
        if self.mode is not MessageMode.PLAIN and not (self.aes_key and self.appid):
            raise ValueError(f"{self.mode} mode needs the appid and EncodingAESKey")
        if self.aes_key:
            MessageCrypto(self.aes_key, self.appid or "")  # checks the key's shape
        if not _EVENT_NAME_RE.fullmatch(self.event):
            raise ValueError(f"event must be a plain word, got {self.event!r}")

    def crypto(self) -> MessageCrypto | None:
        """Return the message crypto, or None without a key and appid."""
        if not (self.aes_key and self.appid):
            return None
        return MessageCrypto(self.aes_key, self.appid)


@dataclass(frozen=True, slots=True)
class ProbeLimits:
    """The platform's limits, in seconds; tests shrink them.

    Attributes:
        dns: how long a name may take to resolve.
        connect: how long the TCP (and TLS) connection may take.
        total: how long the whole exchange may take, from the connect on.
        max_body: how many bytes of the answer are read.
    """

    dns: float = 5.0
    connect: float = 3.0
    total: float = 5.0
    max_body: int = 64 * 1024


DEFAULT_LIMITS = ProbeLimits()


@dataclass(frozen=True, slots=True)
class Timings:
    """Milliseconds since the probe started, like curl's ``-w`` times.

    A phase that was not reached is None.
    """

    dns: int | None = None
    connect: int | None = None
    first_byte: int | None = None
    total: int | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the probe saw and how the platform would judge it.

    Attributes:
        verdict: the platform's judgement.
        findings: what the URL did (always first, see ``outcome``), then the
            reasons and notes; worded in ``knowledge/findings.yaml``.
        timings: the phase times.
        status: the HTTP status, or None without an answer.
        response_length: the body length in bytes, or None without an answer.
        body: the answer (decrypted in safe mode), shortened; None without one.
        url: the URL without its query, safe to show.
        address: the address connected to, or None before connecting.
        check: ``push`` (POST of an event) or ``verify`` (GET with echostr).
        mode: the message mode used.
    """

    verdict: Verdict
    findings: tuple[Finding, ...]
    timings: Timings
    status: int | None
    response_length: int | None
    body: str | None
    url: str
    address: str | None
    check: str
    mode: MessageMode

    @property
    def is_ok(self) -> bool:
        """True when the platform would accept the answer."""
        return self.verdict is Verdict.OK

    @property
    def outcome(self) -> Finding:
        """What the URL did: the first finding, the headline of a reply."""
        return self.findings[0]

    @property
    def finding_ids(self) -> list[str]:
        """The ids of the findings, in order: the codes for machines."""
        return [finding.id for finding in self.findings]

    def to_json(self) -> dict[str, object]:
        """Return the data of the ``--json`` object, without the texts.

        ``bot.autoprobe.probe_json`` adds ``findings`` and ``reply``, rendered
        in a language.
        """
        return {
            "verdict": self.verdict.value,
            "timings_ms": {
                "dns": self.timings.dns,
                "connect": self.timings.connect,
                "first_byte": self.timings.first_byte,
                "total": self.timings.total,
            },
            "status": self.status,
            "response_length": self.response_length,
            "finding_ids": self.finding_ids,
            "body": self.body,
            "url": self.url,
            "address": self.address,
            "check": self.check,
            "mode": self.mode.value,
        }


@dataclass(frozen=True, slots=True)
class PushRequest:
    """One signed request as the platform sends it.

    Attributes:
        method: ``POST`` for a push, ``GET`` for the URL verification.
        params: the query parameters added to the URL.
        body: the request body.
        target: the target it was built for.
        echostr: the value the verification expects back; empty for a push.
    """

    method: str
    params: tuple[tuple[str, str], ...]
    body: bytes
    target: ProbeTarget
    echostr: str = ""


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdict on one answer.

    Attributes:
        verdict: the platform's judgement.
        findings: what the URL did first, then the reasons; never empty.
        body: the answer as text (decrypted in safe mode), shortened.
    """

    verdict: Verdict
    findings: tuple[Finding, ...]
    body: str | None = None


# ---- building requests


def build_push(
    target: ProbeTarget, *, timestamp: int | None = None, nonce: str | None = None
) -> PushRequest:
    """Build the signed POST of ``target.event`` that the platform would send."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = str(secrets.randbelow(10**10)) if nonce is None else nonce
    event = _EVENT_NAMES.get(target.event.lower(), target.event)
    fields: list[tuple[str, str]] = [
        ("ToUserName", target.account_id),
        ("FromUserName", target.openid),
        ("CreateTime", ts),
        ("MsgType", "event"),
        ("Event", event),
        *_EVENT_FIELDS.get(event, ()),
    ]
    params = [
        ("signature", sign(target.token, ts, nonce)),
        ("timestamp", ts),
        ("nonce", nonce),
        ("openid", target.openid),
    ]
    crypto = target.crypto()
    if target.mode is MessageMode.PLAIN or crypto is None:
        return PushRequest("POST", tuple(params), _xml(fields).encode(), target)

    encrypted = crypto.encrypt(_xml(fields))
    params += [
        ("encrypt_type", "aes"),
        ("msg_signature", sign(target.token, ts, nonce, encrypted)),
    ]
    if target.mode is MessageMode.SAFE:
        fields = [("ToUserName", target.account_id)]
    body = _xml([*fields, ("Encrypt", encrypted)])
    return PushRequest("POST", tuple(params), body.encode(), target)


def build_verification(
    target: ProbeTarget, *, timestamp: int | None = None, nonce: str | None = None
) -> PushRequest:
    """Build the GET with ``echostr`` that the platform sends to verify a URL."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = str(secrets.randbelow(10**10)) if nonce is None else nonce
    echostr = str(secrets.randbelow(10**18))
    params = (
        ("signature", sign(target.token, ts, nonce)),
        ("echostr", echostr),
        ("timestamp", ts),
        ("nonce", nonce),
    )
    return PushRequest("GET", params, b"", target, echostr=echostr)


def _xml(fields: list[tuple[str, str]]) -> str:
    lines = [
        f"<{name}>{value}</{name}>"
        if value.isdigit()
        else f"<{name}><![CDATA[{value}]]></{name}>"
        for name, value in fields
    ]
    return "<xml>" + "\n".join(lines) + "\n</xml>"


# ---- judging answers
#
# Each judgement gives findings, never sentences: an id and its values, worded
# in knowledge/findings.yaml. Where the probe sees what an alarm's error sample
# shows, it uses the same finding (``quoted_success``, ``http_not_found``, ...),
# so a reproduced alarm reads the same in the follow-up as in the alarm reply.


def judge_push(push: PushRequest, status: int, body: bytes) -> Judgement:
    """Judge the answer to a push as the platform would.

    Fine: a bare ``success``, an empty body, or a well-formed reply XML
    addressed back to the sender (encrypted and signed in safe mode).
    Anything else is an invalid response, with the reason.
    """
    if status != 200:
        return _judge_status(status, body)
    text = body.decode(errors="replace")
    stripped = text.strip()
    shown = _excerpt(text)
    length = str(len(body))
    if body.startswith(b"\xef\xbb\xbf"):
        return _invalid(Finding("probe_bom", {"length": length}), body=shown)
    if not stripped:
        if text:
            return _ok(Finding("probe_whitespace_body", {"length": length}), shown)
        return _ok(Finding("probe_answered_empty"), shown)
    if stripped == "success":
        if text != "success":
            padded = {"content": text, "length": length}
            return _ok(Finding("success_padded", padded), shown)
        return _ok(Finding("probe_answered_success"), shown)
    if body == push.body:
        return _invalid(Finding("echo_request"), body=shown)
    return _judge_text(push, stripped, shown, length)


def _judge_text(push: PushRequest, stripped: str, shown: str, length: str) -> Judgement:
    if stripped.strip("\"'") == "success":
        quoted = {"content": stripped, "length": length}
        return _invalid(Finding("quoted_success", quoted), body=shown)
    if stripped.lower() == "success":
        return _invalid(
            Finding("probe_success_case", {"content": stripped}), body=shown
        )
    lowered = stripped[:200].lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<body" in lowered:
        title = re.search(r"<title[^>]*>([^<]*)</title>", stripped, re.IGNORECASE)
        named = snippet(title.group(1)) if title else ""
        return _invalid(Finding("html_page", {"title": named}), body=shown)
    if stripped.startswith("<"):
        return _judge_xml(push, stripped, shown)
    if stripped.startswith(("{", "[")):
        try:
            json.loads(stripped)
        except ValueError:
            pass
        else:
            json_body = Finding("json_body", {"snippet": snippet(stripped)})
            return _invalid(json_body, body=shown)
    kind = "error_text" if looks_like_error(stripped) else "probe_unexpected_body"
    return _invalid(Finding(kind, {"snippet": snippet(stripped)}), body=shown)


def _judge_xml(push: PushRequest, text: str, shown: str) -> Judgement:
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        return _invalid(Finding("probe_xml_dtd"), body=shown)
    root = _parse_xml(text)
    if isinstance(root, str):
        return _invalid(Finding("malformed_xml", {"error": root}), body=shown)
    if root.tag != "xml":
        return _invalid(Finding("probe_xml_root", {"root": root.tag}), body=shown)
    if root.find("Encrypt") is not None:
        return _judge_encrypted(push, root, shown)
    if push.target.mode is MessageMode.SAFE:
        return _invalid(Finding("probe_plain_in_safe"), body=shown)
    return _judge_reply_fields(push.target, root, shown)


def _judge_encrypted(push: PushRequest, root: ET.Element, shown: str) -> Judgement:
    target = push.target
    crypto = target.crypto()
    if crypto is None:
        return _invalid(Finding("probe_encrypted_in_plain"), body=shown)
    values = {name: root.findtext(name) for name in ("Encrypt", "TimeStamp", "Nonce")}
    signature = root.findtext("MsgSignature")
    missing = [name for name, value in values.items() if not value]
    if missing or not signature:
        missing += [] if signature else ["MsgSignature"]
        fields = Finding("probe_encrypt_fields", {"missing": ", ".join(missing)})
        return _invalid(fields, body=shown)
    encrypted = values["Encrypt"] or ""
    try:
        inner = crypto.decrypt(encrypted)
    except MessageCryptoError as exc:
        failed = {"reason": exc.code, "appid": exc.appid}
        return _invalid(Finding("probe_undecryptable", failed), body=shown)
    expected = sign(
        target.token, values["TimeStamp"] or "", values["Nonce"] or "", encrypted
    )
    if signature != expected:
        return _invalid(Finding("probe_msg_signature"), body=_excerpt(inner))
    inner_root = _parse_xml(inner)
    if isinstance(inner_root, str):
        malformed = Finding("probe_malformed_inner", {"error": inner_root})
        return _invalid(malformed, body=_excerpt(inner))
    return _judge_reply_fields(target, inner_root, _excerpt(inner))


def _judge_reply_fields(target: ProbeTarget, root: ET.Element, shown: str) -> Judgement:
    to_user = root.findtext("ToUserName") or ""
    from_user = root.findtext("FromUserName") or ""
    msg_type = root.findtext("MsgType") or ""
    if to_user == target.account_id and from_user == target.openid:
        if msg_type == "event":
            return _invalid(Finding("echo_request"), body=shown)
        users = {"to_user": to_user, "from_user": from_user}
        return _invalid(Finding("reply_not_swapped", users), body=shown)
    problems = []
    if to_user != target.openid:
        to = {"to_user": to_user, "openid": target.openid}
        problems.append(Finding("probe_reply_to", to))
    if from_user != target.account_id:
        sender = {"from_user": from_user, "account_id": target.account_id}
        problems.append(Finding("probe_reply_from", sender))
    if msg_type not in REPLY_MSG_TYPES:
        types = {"msg_type": msg_type, "types": ", ".join(sorted(REPLY_MSG_TYPES))}
        problems.append(Finding("probe_reply_type", types))
    if problems:
        return _invalid(*problems, body=shown)
    return _ok(Finding("probe_answered_reply", {"msg_type": msg_type}), shown)


def judge_verification(push: PushRequest, status: int, body: bytes) -> Judgement:
    """Judge the answer to the URL-verification GET: exactly the echostr."""
    if status != 200:
        return _judge_status(status, body)
    text = body.decode(errors="replace")
    shown = _excerpt(text)
    if body == push.echostr.encode():
        return _ok(Finding("probe_echoed_echostr"), shown)
    if text.strip().lstrip("\ufeff") == push.echostr:
        sizes = {"length": str(len(body)), "expected": str(len(push.echostr))}
        return _invalid(Finding("probe_echostr_padded", sizes), body=shown)
    return _invalid(Finding("probe_echostr_missing"), body=shown)


def _judge_status(status: int, body: bytes) -> Judgement:
    # The same findings as an alarm's ``http code``; 1xx and 2xx other than
    # 200 have none there, since the platform only accepts 200.
    finding = http_finding(status) or Finding(
        "probe_http_status", {"code": str(status)}
    )
    return _invalid(finding, body=_excerpt(body.decode(errors="replace")))


def _parse_xml(text: str) -> ET.Element | str:
    # NOTE: the stdlib parser is safe here: DTDs are refused before parsing (no
    # entity expansion), ElementTree never fetches external entities, and the
    # body is capped at ProbeLimits.max_body.
    try:
        return ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        return str(exc)


def _ok(finding: Finding, body: str) -> Judgement:
    return Judgement(Verdict.OK, (finding,), body)


def _invalid(*findings: Finding, body: str | None) -> Judgement:
    return Judgement(Verdict.INVALID_RESPONSE, findings, body)


def _excerpt(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---- the exchange


@dataclass(frozen=True, slots=True)
class _Url:
    scheme: str
    host: str
    port: int
    path: str
    query: str
    netloc: str

    @property
    def shown(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


@dataclass(frozen=True, slots=True)
class _Exchange:
    status: int | None
    body: bytes
    truncated: bool
    failure: Judgement | None
    timings: Timings
    address: str


def _parse_url(url: str) -> _Url:
    parts = urllib.parse.urlsplit(url)
    # The messages leave the URL out: a configured URL may carry a secret.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefusedError(
            "refused to probe: not an http(s) URL with a host", kind="not_http"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefusedError(
            "refused to probe: the URL has a bad port", kind="bad_port"
        ) from None
    netloc = parts.netloc.rpartition("@")[2]
    return _Url(
        parts.scheme, parts.hostname, port, parts.path or "/", parts.query, netloc
    )


async def _exchange(
    push: PushRequest, url: _Url, address: str, limits: ProbeLimits, offset_ms: int
) -> _Exchange:
    """Send ``push`` to ``address``; times count from ``offset_ms`` (the DNS)."""
    marks: dict[str, float] = {}

    async def trace(name: str, info: Mapping[str, object]) -> None:
        marks.setdefault(name, time.perf_counter())

    query = urllib.parse.urlencode(push.params)
    target = f"{url.path}?{url.query}&{query}" if url.query else f"{url.path}?{query}"
    raw_path = urllib.parse.quote(target, safe=_URL_SAFE).encode("ascii")
    extensions: dict[str, object] = {"trace": trace}
    if url.scheme == "https":
        extensions["sni_hostname"] = url.host
    request = httpx.Request(
        push.method,
        httpx.URL(scheme=url.scheme, host=address, port=url.port, raw_path=raw_path),
        headers=_push_headers(url, push),
        content=push.body or None,
        extensions=extensions,
    )
    status: int | None = None
    body = bytearray()
    failure: Judgement | None = None
    timeout = httpx.Timeout(limits.total, connect=limits.connect)
    # trust_env=False: a proxy from the environment must not carry the probe.
    async with httpx.AsyncClient(
        trust_env=False, timeout=timeout, verify=_tls_context()
    ) as client:
        began = time.perf_counter()
        try:
            async with asyncio.timeout(limits.total):
                status = await _send(client, request, limits, body)
        except TimeoutError:
            connected = "connection.connect_tcp.complete" in marks
            failure = _timeout_failure(connected, limits)
        except httpx.TimeoutException as exc:
            connected = not isinstance(exc, httpx.ConnectTimeout)
            failure = _timeout_failure(connected, limits)
        except httpx.ConnectError as exc:
            failure = _connect_failure(exc)
        except httpx.TransportError as exc:
            logger.debug("probe read failed: %r", exc)
            failure = _invalid(Finding("network_error"), body=None)
        ended = time.perf_counter()

    # Count from the connect itself: the first probe in a process also loads
    # the network backend, which the platform never waits for.
    began = marks.get("connection.connect_tcp.started", began)

    def ms(mark: float | None) -> int | None:
        return None if mark is None else offset_ms + round((mark - began) * 1000)

    tls = marks.get("connection.start_tls.complete")
    timings = Timings(
        connect=ms(tls or marks.get("connection.connect_tcp.complete")),
        first_byte=ms(marks.get("http11.receive_response_headers.complete")),
        total=ms(ended),
    )
    truncated = len(body) > limits.max_body
    return _Exchange(status, bytes(body), truncated, failure, timings, address)


async def _send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    limits: ProbeLimits,
    body: bytearray,
) -> int:
    response = await client.send(request, stream=True)
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > limits.max_body:
                break
    finally:
        await response.aclose()
    return response.status_code


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle takes tens of milliseconds, which
    # would otherwise count as connect time.
    return httpx.create_ssl_context(trust_env=False)


def _push_headers(url: _Url, push: PushRequest) -> dict[str, str]:
    # What the platform's pusher sends; no Accept-Encoding, so no compression.
    headers = {
        "Host": url.netloc,
        "User-Agent": "Mozilla/4.0",
        "Accept": "*/*",
        "Accept-Encoding": "identity",
        "Pragma": "no-cache",
        "Connection": "close",
    }
    if push.method == "POST":
        headers["Content-Type"] = "text/xml"
    return headers


def _timeout_failure(connected: bool, limits: ProbeLimits) -> Judgement:
    if connected:
        waited = Finding("probe_request_timeout", {"limit": f"{limits.total:g}"})
        return Judgement(Verdict.REQUEST_TIMEOUT, (waited,))
    connecting = Finding("probe_connect_timeout", {"limit": f"{limits.connect:g}"})
    return Judgement(Verdict.CONNECT_TIMEOUT, (connecting,))


def _connect_failure(exc: httpx.ConnectError) -> Judgement:
    # anyio wraps the socket error in OSError("All connection attempts failed"):
    # the first error in the chain that carries an errno is the real one.
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(chain) < 10:
        chain.append(link)
        link = link.__cause__ or link.__context__
    cause = next(
        (e for e in chain if isinstance(e, OSError) and e.errno is not None), None
    )
    if isinstance(cause, ConnectionRefusedError):
        finding = Finding("probe_connection_refused")
    elif isinstance(cause, ssl.SSLError):
        reason = cause.reason or type(cause).__name__
        finding = Finding("probe_tls_failed", {"error": reason})
    elif isinstance(cause, OSError) and cause.errno is not None:
        name = errno.errorcode.get(cause.errno, str(cause.errno))
        finding = Finding("probe_unreachable", {"error": name})
    else:
        logger.debug("probe connect failed: %r", exc)
        finding = Finding("probe_connect_failed", {"error": type(chain[-1]).__name__})
    return Judgement(Verdict.CONNECT_TIMEOUT, (finding,))


# ---- resolution


@dataclass(frozen=True, slots=True)
class _Resolution:
    addresses: tuple[str, ...]
    failure: Judgement | None
    notes: tuple[Finding, ...]
    elapsed_ms: int


async def _resolve(
    host: str,
    resolver: HostResolver,
    public_resolver: HostResolver | None,
    limit: float,
) -> _Resolution:
    started = time.perf_counter()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return _Resolution((host,), None, (), 0)

    primary, public = await asyncio.gather(
        _resolve_one(resolver, host, limit),
        _resolve_one(public_resolver, host, limit),
    )
    elapsed = round((time.perf_counter() - started) * 1000)
    notes: list[Finding] = []
    failure: Judgement | None = None
    if isinstance(primary, ResolutionError):
        failure = _dns_failure(host, resolver.name, primary, limit)
    public_name = public_resolver.name if public_resolver else ""
    if isinstance(public, ResolutionError) and public.unreachable:
        silent = {"resolver": public_name, "system": resolver.name}
        notes.append(Finding("probe_public_dns_unreachable", silent))
    elif isinstance(public, ResolutionError):
        failure = failure or _dns_failure(host, public_name, public, limit)
    elif public and isinstance(primary, tuple) and set(public) != set(primary):
        answers = {
            "resolver": resolver.name,
            "addresses": ", ".join(primary),
            "public_resolver": public_name,
            "public_addresses": ", ".join(public),
        }
        notes.append(Finding("probe_dns_mismatch", answers))
    addresses = primary if isinstance(primary, tuple) else ()
    return _Resolution(addresses, failure, tuple(notes), elapsed)


async def _resolve_one(
    resolver: HostResolver | None, host: str, limit: float
) -> tuple[str, ...] | ResolutionError | None:
    if resolver is None:
        return None
    try:
        async with asyncio.timeout(limit):
            addresses = await resolver.resolve(host)
    except TimeoutError:
        return ResolutionError("timeout")
    except ResolutionError as exc:
        return exc
    logger.debug("resolved host=%s via=%s addresses=%s", host, resolver.name, addresses)
    return addresses


def _dns_failure(
    host: str, resolver: str, exc: ResolutionError, limit: float
) -> Judgement:
    if exc.unreachable:
        slow = {"host": host, "resolver": resolver, "limit": f"{limit:g}"}
        return Judgement(Verdict.DNS_FAILURE, (Finding("probe_dns_slow", slow),))
    failed = {
        "host": host,
        "resolver": resolver,
        "reason": exc.code,
        "error": exc.detail,
    }
    return Judgement(Verdict.DNS_FAILURE, (Finding("probe_dns_failure", failed),))


# ---- public API


async def probe_url(
    target: ProbeTarget,
    *,
    allow_private: bool = False,
    limits: ProbeLimits = DEFAULT_LIMITS,
    resolver: HostResolver | None = None,
    public_resolver: HostResolver | None = None,
) -> ProbeResult:
    """Push a harmless event to ``target`` as the platform would, and judge it.

    Args:
        target: the URL and the account's settings.
        allow_private: probe loopback and private addresses too (tests, labs).
        limits: the platform's time limits.
        resolver: the resolver that picks the address; the system's by default.
        public_resolver: a second resolver to compare with, e.g.
            ``NameserverResolver(PUBLIC_RESOLVER)``; None skips the comparison.

    Raises:
        TargetRefusedError: not an http(s) URL, or an address that is refused.
    """
    return await _run(
        build_push(target),
        judge_push,
        allow_private=allow_private,
        limits=limits,
        resolver=resolver,
        public_resolver=public_resolver,
    )


async def check_url(
    target: ProbeTarget,
    *,
    allow_private: bool = False,
    limits: ProbeLimits = DEFAULT_LIMITS,
    resolver: HostResolver | None = None,
    public_resolver: HostResolver | None = None,
) -> ProbeResult:
    """Send the platform's URL verification (GET with echostr) and judge it.

    The arguments and errors are those of ``probe_url``.
    """
    return await _run(
        build_verification(target),
        judge_verification,
        allow_private=allow_private,
        limits=limits,
        resolver=resolver,
        public_resolver=public_resolver,
    )


async def _run(
    push: PushRequest,
    judge: Callable[[PushRequest, int, bytes], Judgement],
    *,
    allow_private: bool,
    limits: ProbeLimits,
    resolver: HostResolver | None,
    public_resolver: HostResolver | None,
) -> ProbeResult:
    url = _parse_url(push.target.url)
    check = "push" if push.method == "POST" else "verify"
    resolution = await _resolve(
        url.host, resolver or SystemResolver(), public_resolver, limits.dns
    )
    notes = resolution.notes + _port_notes(url)
    if resolution.failure is not None:
        timings = Timings(dns=resolution.elapsed_ms, total=resolution.elapsed_ms)
        judgement = resolution.failure
        result = _result(push, url, check, judgement, timings, None, None, notes)
        return _logged(result)

    try:
        guard_addresses(resolution.addresses, allow_private=allow_private)
    except TargetRefusedError as exc:
        logger.warning("probe refused url=%s reason=%s", url.shown, exc)
        raise
    address = resolution.addresses[0]
    exchange = await _exchange(push, url, address, limits, resolution.elapsed_ms)
    timings = Timings(
        dns=resolution.elapsed_ms,
        connect=exchange.timings.connect,
        first_byte=exchange.timings.first_byte,
        total=exchange.timings.total,
    )
    if exchange.failure is not None or exchange.status is None:
        judgement = exchange.failure or _invalid(Finding("network_error"), body=None)
        result = _result(push, url, check, judgement, timings, None, address, notes)
        return _logged(result)

    judgement = judge(push, exchange.status, exchange.body)
    if exchange.truncated:
        read = {"limit": str(limits.max_body)}
        notes += (Finding("probe_body_truncated", read),)
    length = len(exchange.body)
    result = _result(
        push, url, check, judgement, timings, length, address, notes, exchange.status
    )
    return _logged(result)


def _port_notes(url: _Url) -> tuple[Finding, ...]:
    # The same finding as a 3rdUrl with another port in an alarm.
    if url.port in (80, 443):
        return ()
    return (Finding("url_bad_port", {"port": str(url.port), "url": url.shown}),)


def _result(
    push: PushRequest,
    url: _Url,
    check: str,
    judgement: Judgement,
    timings: Timings,
    length: int | None,
    address: str | None,
    notes: tuple[Finding, ...],
    status: int | None = None,
) -> ProbeResult:
    return ProbeResult(
        verdict=judgement.verdict,
        findings=judgement.findings + notes,
        timings=timings,
        status=status,
        response_length=length,
        body=judgement.body,
        url=url.shown,
        address=address,
        check=check,
        mode=push.target.mode,
    )


def _logged(result: ProbeResult) -> ProbeResult:
    logger.info(
        "probe check=%s url=%s verdict=%s findings=%s status=%s total_ms=%s",
        result.check,
        result.url,
        result.verdict.value,
        ",".join(result.finding_ids),
        result.status,
        result.timings.total,
    )
    return result


# ---- rate limiting


class RateLimiter:
    """Allows at most ``per_key`` probes per key and ``overall`` in all per period.

    The chat command keys it by appid; the clock is injectable for tests.
    """

    def __init__(
        self,
        *,
        per_key: int = 3,
        overall: int = 20,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Set the limits; ``period`` is in seconds."""
        self._per_key = per_key
        self._overall = overall
        self._period = period
        self._clock = clock
        self._calls: dict[str, collections.deque[float]] = {}
        self._all: collections.deque[float] = collections.deque()

    def acquire(self, key: str) -> float:
        """Take a slot for ``key``.

        Returns:
            0.0 when the probe may run (the slot is taken), else the seconds
            until a slot frees up.
        """
        now = self._clock()
        calls = self._calls.setdefault(key, collections.deque())
        waits = [
            self._wait(queue, limit, now)
            for queue, limit in ((calls, self._per_key), (self._all, self._overall))
        ]
        if max(waits) > 0:
            return max(waits)
        calls.append(now)
        self._all.append(now)
        return 0.0

    def _wait(self, queue: collections.deque[float], limit: int, now: float) -> float:
        while queue and queue[0] <= now - self._period:
            queue.popleft()
        if len(queue) < limit:
            return 0.0
        return queue[0] + self._period - now
