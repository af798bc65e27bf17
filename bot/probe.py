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

# Cloud metadata services: link-local or private anyway, named for a precise reason.
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
_SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")
_URL_SAFE = "/?&=%:@!$'()*+,;~-._"

_STATUS_MEANINGS = {
    301: "a redirect: the platform does not follow redirects",
    302: "a redirect: the platform does not follow redirects",
    307: "a redirect: the platform does not follow redirects",
    308: "a redirect: the platform does not follow redirects",
    400: "the server rejected the request as malformed",
    401: "the server wants authentication the platform never sends",
    403: "access is forbidden: check allow/deny rules and the WAF for this path",
    404: "the path does not exist: check the URL configured on the platform",
    405: "the URL does not accept POST: the handler only serves GET",
    413: "the server refuses the request body size",
    500: "the application failed while handling the push",
    502: "the proxy could not reach the application (down or refusing)",
    503: "the service is unavailable (overloaded or in maintenance)",
    504: "the proxy timed out waiting for the application",
}


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
    """The target URL is not allowed: bad scheme, or a non-public address."""


class MessageCryptoError(BotError):
    """An encrypted message could not be decrypted or verified."""


class ResolutionError(BotError):
    """A resolver could not resolve a name.

    Attributes:
        unreachable: True when the resolver itself did not answer, as opposed
            to answering that the name does not exist.
    """

    def __init__(self, reason: str, *, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.unreachable = unreachable


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
            raise MessageCryptoError("the Encrypt value is not base64") from None
        if not data or len(data) % 16:
            raise MessageCryptoError("the Encrypt value is not whole AES blocks")
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        padding = plain[-1]
        if not 1 <= padding <= 32 or plain[-padding:] != bytes([padding]) * padding:
            raise MessageCryptoError("bad padding after decryption: wrong key?")
        content = plain[16:-padding]
        (length,) = struct.unpack(">I", content[:4]) if len(content) >= 4 else (-1,)
        if not 0 <= length <= len(content) - 4:
            raise MessageCryptoError("bad message length after decryption: wrong key?")
        appid = content[4 + length :]
        if appid != self._appid:
            shown = appid.decode(errors="replace")
            raise MessageCryptoError(f"encrypted for appid {shown!r}, not ours")
        try:
            return content[4 : 4 + length].decode()
        except UnicodeDecodeError:
            raise MessageCryptoError("the decrypted message is not UTF-8") from None

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))


# ---- the address guard


def refusal_reason(address: str) -> str | None:
    """Say why a probe must not connect to ``address``, or None if it may.

    Args:
        address: an IPv4 or IPv6 address as text.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside IPv6 (mapped, 6to4) reaches that IPv4 address.
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    kind = _address_kind(ip)
    return None if kind is None else f"{address} is a {kind} address"


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
        reason = refusal_reason(address)
        if reason is not None:
            raise TargetRefusedError(
                f"refused to probe: {reason} (allow private targets in settings)"
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
            raise ResolutionError(str(exc.strerror)) from None
        return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


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
            raise ResolutionError("NXDOMAIN: the name does not exist") from None
        except dns.resolver.NoAnswer:
            raise ResolutionError("the name has no A or AAAA record") from None
        except dns.resolver.NoNameservers:
            raise ResolutionError("the server failed to answer (SERVFAIL)") from None
        except dns.exception.Timeout:
            raise ResolutionError("no answer in time", unreachable=True) from None
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
            ValueError: a mode needs a key and appid that are missing, the key
                is malformed, or the event name is not a plain word.
        """
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
        headline: what the URL did, as a clause after "the URL".
        findings: the reasons and advice, one sentence each.
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
    headline: str
    findings: tuple[str, ...]
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

    def summary(self, alarm_type: str | None = None) -> str:
        """Return one line for an alarm reply.

        Args:
            alarm_type: the alarm's type; with it the line says whether the
                probe reproduced the alarm.

        Example: ``reproduced: the URL answered "success" with quotes in 38 ms``.
        """
        if alarm_type is None:
            lead = self.verdict.value
        elif self.verdict.value == alarm_type:
            lead = "reproduced"
        elif self.is_ok:
            lead = "not reproduced"
        else:
            lead = f"not reproduced, found {self.verdict.value} instead"
        return f"{lead}: {self.outcome}"

    @property
    def outcome(self) -> str:
        """What the URL did, with the time when it answered.

        Example: ``the URL answered "success" with quotes in 38 ms``.
        """
        took = ""
        if self.verdict in (Verdict.OK, Verdict.INVALID_RESPONSE):
            took = f" in {self.timings.total} ms" if self.timings.total else ""
        return f"the URL {self.headline}{took}"

    def to_json(self) -> dict[str, object]:
        """Return the ``--json`` object; ``reply`` is the text the bot would post."""
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
            "findings": list(self.findings),
            "reply": format_result(self),
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
        headline: what the URL did, as a clause after "the URL".
        findings: reasons and advice.
        body: the answer as text (decrypted in safe mode), shortened.
    """

    verdict: Verdict
    headline: str
    findings: tuple[str, ...] = ()
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
    if body.startswith(b"\xef\xbb\xbf"):
        return _invalid(
            "answered with a UTF-8 byte-order mark (BOM) before the body",
            "Save the source files without BOM: the platform sees the extra bytes.",
            body=shown,
        )
    if not stripped:
        extra = () if not text else ("The body is only whitespace.",)
        return Judgement(Verdict.OK, "answered an empty body", extra, shown)
    if stripped == "success":
        extra = ()
        if text != "success":
            extra = (
                f"The body is {text!r}: success with whitespace around it; "
                "send the bare word to be safe.",
            )
        return Judgement(Verdict.OK, 'answered "success"', extra, shown)
    if body == push.body:
        return _invalid(
            "echoed the request back",
            "The handler returns the pushed XML as is: answer success instead, "
            "or a reply with ToUserName and FromUserName swapped.",
            body=shown,
        )
    return _judge_text(push, stripped, shown)


def _judge_text(push: PushRequest, stripped: str, shown: str) -> Judgement:
    if stripped.strip("\"'") == "success":
        return _invalid(
            'answered "success" with quotes',
            f"The body is {stripped!r}: the platform wants the bare word success, "
            "not a JSON or quoted string.",
            body=shown,
        )
    if stripped.lower() == "success":
        return _invalid(
            f"answered {stripped!r}",
            "The platform wants success in lower case.",
            body=shown,
        )
    lowered = stripped[:200].lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<body" in lowered:
        title = re.search(r"<title[^>]*>([^<]*)</title>", stripped, re.IGNORECASE)
        named = f" ({title.group(1).strip()})" if title else ""
        return _invalid(
            f"answered an HTML page{named}",
            "An error page or a framework's default page came back instead of "
            "success or a reply XML.",
            body=shown,
        )
    if stripped.startswith("<"):
        return _judge_xml(push, stripped, shown)
    if stripped.startswith(("{", "[")):
        try:
            json.loads(stripped)
        except ValueError:
            pass
        else:
            return _invalid(
                "answered JSON",
                f"The body is JSON ({_excerpt(stripped, 60)!r}): the platform "
                "wants success or a reply XML.",
                body=shown,
            )
    return _invalid(
        f"answered {_excerpt(stripped, 60)!r}",
        "The body is neither success, empty, nor a reply XML.",
        body=shown,
    )


def _judge_xml(push: PushRequest, text: str, shown: str) -> Judgement:
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        return _invalid(
            "answered XML with a DTD",
            "Reply XML never has a DOCTYPE.",
            body=shown,
        )
    root = _parse_xml(text)
    if isinstance(root, str):
        return _invalid(
            "answered malformed XML", f"The XML does not parse: {root}.", body=shown
        )
    if root.tag != "xml":
        return _invalid(
            f"answered XML with root <{root.tag}>",
            "Reply XML must have the root <xml>.",
            body=shown,
        )
    if root.find("Encrypt") is not None:
        return _judge_encrypted(push, root, shown)
    if push.target.mode is MessageMode.SAFE:
        return _invalid(
            "answered a plain XML reply in safe mode",
            "In safe mode a reply must be encrypted (Encrypt, MsgSignature, "
            "TimeStamp, Nonce); only success and an empty body may stay plain.",
            body=shown,
        )
    return _judge_reply_fields(push.target, root, shown)


def _judge_encrypted(push: PushRequest, root: ET.Element, shown: str) -> Judgement:
    target = push.target
    crypto = target.crypto()
    if crypto is None:
        return _invalid(
            "answered an encrypted reply",
            "The account is set up in plain mode here, but the server encrypts: "
            "check the message mode and the EncodingAESKey.",
            body=shown,
        )
    values = {name: root.findtext(name) for name in ("Encrypt", "TimeStamp", "Nonce")}
    signature = root.findtext("MsgSignature")
    missing = [name for name, value in values.items() if not value]
    if missing or not signature:
        missing += [] if signature else ["MsgSignature"]
        return _invalid(
            "answered an encrypted reply without " + ", ".join(missing),
            "An encrypted reply needs Encrypt, MsgSignature, TimeStamp and Nonce.",
            body=shown,
        )
    encrypted = values["Encrypt"] or ""
    try:
        inner = crypto.decrypt(encrypted)
    except MessageCryptoError as exc:
        return _invalid(
            "answered a reply that cannot be decrypted",
            f"Decrypting with the configured EncodingAESKey failed ({exc}): the "
            "server uses another key or appid.",
            body=shown,
        )
    expected = sign(
        target.token, values["TimeStamp"] or "", values["Nonce"] or "", encrypted
    )
    if signature != expected:
        return _invalid(
            "answered a reply with a wrong MsgSignature",
            "The reply's MsgSignature does not match: the server signs with "
            "another Token.",
            body=_excerpt(inner),
        )
    inner_root = _parse_xml(inner)
    if isinstance(inner_root, str):
        return _invalid(
            "answered malformed XML inside the encryption",
            f"The decrypted XML does not parse: {inner_root}.",
            body=_excerpt(inner),
        )
    return _judge_reply_fields(target, inner_root, _excerpt(inner))


def _judge_reply_fields(target: ProbeTarget, root: ET.Element, shown: str) -> Judgement:
    to_user = root.findtext("ToUserName")
    from_user = root.findtext("FromUserName")
    msg_type = root.findtext("MsgType")
    if to_user == target.account_id and from_user == target.openid:
        if msg_type == "event":
            return _invalid(
                "echoed the request back",
                "The reply is the pushed event itself: answer success instead.",
                body=shown,
            )
        return _invalid(
            "answered a reply XML with To and From not swapped",
            f"ToUserName must be the sender ({target.openid}) and FromUserName "
            f"the account ({target.account_id}); the reply has them as received.",
            body=shown,
        )
    problems = []
    if to_user != target.openid:
        problems.append(
            f"ToUserName is {to_user!r}, not the sender's openid {target.openid!r}."
        )
    if from_user != target.account_id:
        problems.append(
            f"FromUserName is {from_user!r}, not the account {target.account_id!r}."
        )
    if msg_type not in REPLY_MSG_TYPES:
        problems.append(
            f"MsgType is {msg_type!r}, not one of " + ", ".join(sorted(REPLY_MSG_TYPES))
        )
    if problems:
        return _invalid(
            "answered a reply XML the platform rejects", *problems, body=shown
        )
    return Judgement(Verdict.OK, f"answered a well-formed {msg_type} reply", (), shown)


def judge_verification(push: PushRequest, status: int, body: bytes) -> Judgement:
    """Judge the answer to the URL-verification GET: exactly the echostr."""
    if status != 200:
        return _judge_status(status, body)
    text = body.decode(errors="replace")
    shown = _excerpt(text)
    if body == push.echostr.encode():
        return Judgement(Verdict.OK, "echoed the echostr", (), shown)
    if text.strip().lstrip("\ufeff") == push.echostr:
        return _invalid(
            "echoed the echostr with extra bytes around it",
            f"The body is {text!r}: the platform compares it byte for byte "
            "(watch for newlines and a UTF-8 BOM).",
            body=shown,
        )
    return _invalid(
        "did not echo the echostr",
        "The handler did not return echostr: the signature check failed (is the "
        "Token the same as on the platform?) or GET is not handled.",
        body=shown,
    )


def _judge_status(status: int, body: bytes) -> Judgement:
    meaning = _STATUS_MEANINGS.get(status, "the platform only accepts HTTP 200")
    return _invalid(
        f"answered HTTP {status}",
        f"http code={status}: {meaning}.",
        body=_excerpt(body.decode(errors="replace")),
    )


def _parse_xml(text: str) -> ET.Element | str:
    # NOTE: the stdlib parser is safe here: DTDs are refused before parsing (no
    # entity expansion), ElementTree never fetches external entities, and the
    # body is capped at ProbeLimits.max_body.
    try:
        return ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        return str(exc)


def _invalid(headline: str, *findings: str, body: str | None) -> Judgement:
    return Judgement(Verdict.INVALID_RESPONSE, headline, findings, body)


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
        raise TargetRefusedError("refused to probe: not an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefusedError("refused to probe: the URL has a bad port") from None
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
            failure = _invalid(
                "broke the connection without a full HTTP answer",
                f"Network error while reading the answer: {exc or type(exc).__name__}.",
                body=None,
            )
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
        return Judgement(
            Verdict.REQUEST_TIMEOUT,
            f"did not answer within {limits.total:g} s",
            (
                f"The connection was accepted but no full answer came within "
                f"{limits.total:g} s: the handler is too slow. Answer success at "
                "once and do the work asynchronously.",
            ),
        )
    return Judgement(
        Verdict.CONNECT_TIMEOUT,
        f"did not accept the connection within {limits.connect:g} s",
        (
            f"Connecting timed out after {limits.connect:g} s: the host is "
            "overloaded (full accept queue), a firewall drops the packets, or the "
            "IP is wrong.",
        ),
    )


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
        headline, finding = (
            "refused the connection",
            "Connection refused: nothing listens on that port (the web server is "
            "down, or the port is wrong).",
        )
    elif isinstance(cause, ssl.SSLError):
        headline, finding = (
            "failed the TLS handshake",
            f"TLS handshake failed: {cause.reason or cause}; check the certificate "
            "chain and that it matches the domain.",
        )
    elif isinstance(cause, OSError) and cause.errno is not None:
        headline, finding = (
            "was unreachable",
            f"Could not connect: {cause.strerror} (the network has no route to "
            "the host).",
        )
    else:
        headline, finding = ("could not be connected to", f"Could not connect: {exc}.")
    return Judgement(Verdict.CONNECT_TIMEOUT, headline, (finding,))


# ---- resolution


@dataclass(frozen=True, slots=True)
class _Resolution:
    addresses: tuple[str, ...]
    failure: Judgement | None
    notes: tuple[str, ...]
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
    notes: list[str] = []
    failure: Judgement | None = None
    if isinstance(primary, ResolutionError):
        failure = _dns_failure(host, resolver.name, primary, limit)
    public_name = public_resolver.name if public_resolver else ""
    if isinstance(public, ResolutionError) and public.unreachable:
        notes.append(
            f"The public resolver {public_name} did not answer from here, so only "
            "the system resolver was checked."
        )
    elif isinstance(public, ResolutionError):
        failure = failure or _dns_failure(host, public_name, public, limit)
    elif public and isinstance(primary, tuple) and set(public) != set(primary):
        notes.append(
            f"The system resolver answers {', '.join(primary)} but {public_name} "
            f"answers {', '.join(public)}: the platform may connect elsewhere; "
            "check the domain's records."
        )
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
        return ResolutionError(f"no answer within {limit:g} s", unreachable=True)
    except ResolutionError as exc:
        return exc
    logger.debug("resolved host=%s via=%s addresses=%s", host, resolver.name, addresses)
    return addresses


def _dns_failure(
    host: str, resolver: str, exc: ResolutionError, limit: float
) -> Judgement:
    finding = f"The {resolver} resolver cannot resolve {host}: {exc}."
    if exc.unreachable:
        finding = (
            f"Resolving {host} via {resolver} took longer than {limit:g} s (the "
            "platform's DNS timeout)."
        )
    return Judgement(
        Verdict.DNS_FAILURE,
        f"could not be resolved ({exc})",
        (finding, "Check the domain in the URL, and that it has not expired."),
    )


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
        judgement = exchange.failure or _invalid("gave no answer", body=None)
        result = _result(push, url, check, judgement, timings, None, address, notes)
        return _logged(result)

    judgement = judge(push, exchange.status, exchange.body)
    if exchange.truncated:
        notes += (f"Only the first {limits.max_body} bytes of the answer were read.",)
    length = len(exchange.body)
    result = _result(
        push, url, check, judgement, timings, length, address, notes, exchange.status
    )
    return _logged(result)


def _port_notes(url: _Url) -> tuple[str, ...]:
    if url.port in (80, 443):
        return ()
    return (
        f"The URL uses port {url.port}: the platform only pushes to ports 80 "
        "(http) and 443 (https).",
    )


def _result(
    push: PushRequest,
    url: _Url,
    check: str,
    judgement: Judgement,
    timings: Timings,
    length: int | None,
    address: str | None,
    notes: tuple[str, ...],
    status: int | None = None,
) -> ProbeResult:
    return ProbeResult(
        verdict=judgement.verdict,
        headline=judgement.headline,
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
        "probe check=%s url=%s verdict=%s status=%s total_ms=%s",
        result.check,
        result.url,
        result.verdict.value,
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


# ---- text


def format_result(result: ProbeResult) -> str:
    """Return the human-readable report of one probe (English for now).

    NOTE: this is the one place of this text; it moves to knowledge/templates
    with the chat command.
    """
    what = "POST of an event" if result.check == "push" else "verification GET"
    t = result.timings
    phases = [
        f"{name} {value} ms"
        for name, value in (
            ("dns", t.dns),
            ("connect", t.connect),
            ("first byte", t.first_byte),
            ("total", t.total),
        )
        if value is not None
    ]
    lines = [
        f"probe: {what} to {result.url} ({result.mode.value} mode)",
        f"verdict: {result.verdict.value}: {result.outcome}",
        "timings: " + (", ".join(phases) or "none"),
    ]
    if result.status is not None:
        lines.append(f"answer: HTTP {result.status}, {result.response_length} bytes")
    lines += [f"- {finding}" for finding in result.findings]
    if result.body:
        lines.append(f"body: {_excerpt(result.body, 200)!r}")
    return "\n".join(lines)
