"""This module draws a diagnosis from one alarm: its runbook and its findings.

A *finding* is a conclusion this alarm's own error sample supports, such as a
quoted ``"success"``, an HTML error page or ``http code=405``. The detectors here
only decide which findings hold and with which values; their wording lives in
``knowledge/findings.yaml``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from xml.etree import ElementTree

from bot.alarm import Alarm
from bot.knowledge import AlarmType, Knowledge, Step, normalize

logger = logging.getLogger(__name__)

SEVERITY_ORDER = ("info", "warning", "high", "critical")
ESCALATING_TYPES = frozenset({"markfail", "ticket_timeout", "ticket_failure"})


@dataclass(frozen=True, slots=True)
class Finding:
    """A conclusion from the error sample; ``values`` fill its wording."""

    id: str
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the failing pushes went, for the runbook's commands.

    Every field is checked to be what it claims (a host name, an address, a URL
    without quotes, digits) because the runbook pastes them into shell commands
    that people copy: a crafted alarm must not turn a step into ``dig a.com;rm``.
    ``shown_url`` and ``shown_ip`` keep what the alarm wrote, for display only.
    """

    domain: str | None = None
    ip: str | None = None
    url: str | None = None
    port: int | None = None
    stamp: str | None = None
    openid: str | None = None
    shown_url: str | None = None
    shown_ip: str | None = None


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Everything the reply to one alarm says."""

    alarm: Alarm
    entry: AlarmType
    findings: tuple[Finding, ...]
    steps: tuple[Step, ...]
    variants: tuple[str, ...]
    target: Target
    event: str | None
    escalate: bool

    @property
    def severity(self) -> str:
        """The entry's severity, raised by any finding that is worse."""
        return self.entry.severity


def warn_unmatched(alarms: list[Alarm]) -> None:
    """Log each alarm of no known type with a hint on how to teach it."""
    for alarm in alarms:
        if alarm.type == "unknown":
            logger.warning(
                "unmatched alarm content=%r: add a phrase group to `match` in "
                "knowledge/alarms/<type>.yaml (nearest: %s)",
                (alarm.content or "")[:80],
                ", ".join(alarm.nearest) or "none",
            )


def diagnose(alarm: Alarm, knowledge: Knowledge) -> Diagnosis:
    """Return the diagnosis of ``alarm`` from ``knowledge``."""
    entry = knowledge.alarm(alarm.type)
    variants = tuple(
        name
        for name, active in (
            ("pay_notify", alarm.pay_notify),
            ("third_party", alarm.third_party),
        )
        if active and name in entry.variants
    )
    steps = [*entry.steps]
    for name in variants:
        steps = [*entry.variants[name].steps, *steps]
    holding = conditions(alarm)
    steps = [step for step in steps if set(step.when) <= holding]
    findings = tuple(f for f in find_all(alarm) if f.id in knowledge.findings)
    return Diagnosis(
        alarm=alarm,
        entry=entry,
        findings=findings,
        steps=tuple(steps),
        variants=variants,
        target=find_target(alarm),
        event=event_name(alarm, knowledge),
        escalate=alarm.type in ESCALATING_TYPES,
    )


def conditions(alarm: Alarm) -> set[str]:
    """The step conditions (``Step.when``) that hold for ``alarm``."""
    body = _reply_body(alarm)
    has_body = bool(body and body.strip())
    holding = {"body"} if has_body else {"no_body"}
    if alarm.get("http code") or alarm.get("http_code"):
        holding.add("http_code")
    if any(normalize(flag) == "decryptfail" for flag in alarm.flags):
        holding.add("encrypted")
    if alarm.third_party:
        holding.add("third_party")
    if alarm.pay_notify:
        holding.add("pay_notify")
    return holding


_HOST_RE = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_URL_RE = re.compile(
    r"^https?://[A-Za-z0-9.-]+(?::\d{1,5})?(?:[/?#][\w.~!$&()*+,;=:@%/?#\[\]-]*)?$"
)
_OPENID_RE = re.compile(r"^[A-Za-z0-9_-]{10,64}$")


def find_target(alarm: Alarm) -> Target:
    """Read the callback URL, its domain and port, the server IP, Stamp and OpenID."""
    raw_url = (alarm.get("3rdUrl") or "").strip() or None
    url = (
        raw_url if raw_url and len(raw_url) <= 512 and _URL_RE.match(raw_url) else None
    )
    domain = port = None
    if url:
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port, url = None, None
        host = parts.hostname or ""
        domain = host if _HOST_RE.match(host) else None
    raw_ip = (alarm.get("ip") or "").strip() or None
    ip = _valid_ip(raw_ip or "")
    stamp = (alarm.get("Stamp") or "").strip()
    openid = (alarm.get("OpenID") or "").strip()
    return Target(
        domain=domain,
        ip=ip,
        url=url,
        port=port,
        stamp=stamp if stamp.isdigit() and len(stamp) <= 13 else None,
        openid=openid if _OPENID_RE.match(openid) else None,
        shown_url=raw_url,
        shown_ip=raw_ip,
    )


def _valid_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text)) if text else None
    except ValueError:
        return None


def event_name(alarm: Alarm, knowledge: Knowledge) -> str | None:
    """Return the push's event or message type as written, e.g. ``UnSubscribe``."""
    for key in ("Event", "Msg", "MsgType", "InfoType"):
        value = (alarm.get(key) or "").strip()
        if value and not value.isdigit():
            return value
    return None


def lookup_event(name: str, knowledge: Knowledge, lang: str) -> str | None:
    """Translate an event or message type with the ``push_events`` table."""
    row = knowledge.events.get(normalize(name))
    if row is None:
        return None
    # NOTE: a table note in brackets ("关注事件（扫码时…）") is too long for the
    # one-line push type of an alarm reply.
    return re.split(r"[（(]", row.meaning.get(lang), maxsplit=1)[0].strip()


# ----------------------------------------------------------------- findings

Detector = Callable[[Alarm], Iterator[Finding]]
_DETECTORS: list[Detector] = []
_HTML_RE = re.compile(r"<\s*(?:!doctype\s+html|html|head|body|title)\b", re.I)
_TITLE_RE = re.compile(r"<title[^>]*>(?P<title>.*?)</title>", re.I | re.S)
_ERROR_RE = re.compile(
    r"\berror\b|exception|traceback|fatal|stack trace|internal server|"
    r"bad gateway|not found|forbidden|unauthori[sz]ed|warning:",
    re.I,
)
_TAG_RE = re.compile(
    r"<(?P<tag>[A-Za-z]+)>\s*(?:<!\[CDATA\[(?P<cdata>.*?)\]\]>|(?P<text>[^<]*))</(?P=tag)>",
    re.S,
)


def detector(func: Detector) -> Detector:
    """Register a finding detector."""
    _DETECTORS.append(func)
    return func


def find_all(alarm: Alarm) -> list[Finding]:
    """Run every detector over ``alarm`` and return the findings in order."""
    found: list[Finding] = []
    for func in _DETECTORS:
        found.extend(func(alarm))
    return found


def _reply_body(alarm: Alarm) -> str | None:
    body = alarm.get("response_content")
    if body is None and alarm.pay_notify:
        body = alarm.get("resp")
    return body


def snippet(text: str, limit: int = 60) -> str:
    """The text on one line, cut to ``limit`` characters: a finding's ``snippet``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _xml_fields(body: str) -> dict[str, str]:
    return {
        m["tag"]: (m["cdata"] if m["cdata"] is not None else m["text"] or "").strip()
        for m in _TAG_RE.finditer(body)
    }


@detector
def _success_shape(alarm: Alarm) -> Iterator[Finding]:
    body = _reply_body(alarm)
    if body is None or alarm.type in {"ticket_failure", "ticket_timeout"}:
        return
    stripped = body.strip().lstrip("\ufeff")
    length = alarm.get("response_length") or str(len(body))
    if stripped in {'"success"', "'success'", '"SUCCESS"'}:
        yield Finding("quoted_success", {"content": stripped, "length": length})
    elif stripped.lower() == "success" and (body != stripped or length != "7"):
        yield Finding("success_padded", {"content": body, "length": length})


@detector
def _reply_xml(alarm: Alarm) -> Iterator[Finding]:
    body = _reply_body(alarm)
    if body is None or "<xml" not in body.lower() or alarm.pay_notify:
        return
    fields = _xml_fields(body)
    to_user, from_user = fields.get("ToUserName", ""), fields.get("FromUserName", "")
    msg_type = fields.get("MsgType", "").lower()
    if msg_type == "event" or "Event" in fields:
        yield Finding("echo_request")
    elif to_user.startswith("gh_"):
        yield Finding("reply_not_swapped", {"to_user": to_user, "from_user": from_user})
    if msg_type == "text" and fields.get("Content", "").strip().lower() == "success":
        yield Finding("success_in_text_reply", {"msg_type": msg_type})
    elif msg_type == "text" and "Content" in fields and not fields["Content"].strip():
        yield Finding("empty_text_content")
    create_time = fields.get("CreateTime", "")
    if create_time.isdigit() and len(create_time) >= 13:
        yield Finding("createtime_ms", {"create_time": create_time})
    error = _xml_error(body)
    if error and not _looks_cut(alarm, body):
        yield Finding("malformed_xml", {"error": error})


def _xml_error(body: str) -> str | None:
    try:
        # NOTE: the sample is a few hundred bytes and expat (>= 2.4.1, bundled
        # with CPython 3.11) refuses entity-expansion bombs; only syntax is read.
        ElementTree.fromstring(body.strip())  # noqa: S314
    except ElementTree.ParseError as exc:
        return str(exc)
    return None


def _looks_cut(alarm: Alarm, body: str) -> bool:
    """The platform truncates long samples; a cut body is not malformed."""
    length = alarm.get("response_length") or ""
    return length.isdigit() and int(length) > len(body.encode()) + 2


@detector
def _page_or_error(alarm: Alarm) -> Iterator[Finding]:
    body = _reply_body(alarm)
    if not body or not body.strip() or alarm.pay_notify:
        return
    stripped = body.strip()
    if _HTML_RE.search(stripped):
        title = _TITLE_RE.search(stripped)
        yield Finding("html_page", {"title": snippet(title["title"]) if title else ""})
    elif stripped.startswith(("{", "[")) and stripped.endswith(("}", "]")):
        yield Finding("json_body", {"snippet": snippet(stripped)})
    elif not stripped.startswith("<") and looks_like_error(stripped):
        yield Finding("error_text", {"snippet": snippet(stripped)})


def looks_like_error(text: str) -> bool:
    """True when ``text`` reads like an error message (exception, 500, ...)."""
    return _ERROR_RE.search(text) is not None


@detector
def _empty_reply(alarm: Alarm) -> Iterator[Finding]:
    if alarm.type != "invalid_response":
        return
    body = _reply_body(alarm)
    if alarm.pay_notify:
        resp = alarm.get("resp")
        if resp is not None and not resp.strip():
            yield Finding("pay_empty_ack")
        elif resp and "success" not in resp.lower():
            yield Finding("pay_bad_ack", {"snippet": snippet(resp)})
        return
    length = alarm.get("response_length")
    if (body is not None and not body.strip() and length in {None, "", "0"}) or (
        body is None and length == "0"
    ):
        yield Finding("network_error")


# NOTE: documentation ranges (192.0.2.0/24 …) are left out on purpose: redacted
# alarms shared in public use them in place of real, public addresses.
_INTERNAL_NETS = [
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
]
_HTTP_FINDINGS = {404: "http_not_found", 405: "http_method", 403: "http_forbidden"}


@detector
def _http_code(alarm: Alarm) -> Iterator[Finding]:
    raw = (alarm.get("http code") or alarm.get("http_code") or "").strip()
    finding = http_finding(int(raw)) if raw.isdigit() else None
    if finding is not None:
        yield finding


def http_finding(code: int) -> Finding | None:
    """The finding for an HTTP status other than 2xx, or None for 1xx and 2xx.

    The probe calls it too, so a status it sees reads as in an alarm reply.
    """
    values = {"code": str(code)}
    if code in _HTTP_FINDINGS:
        return Finding(_HTTP_FINDINGS[code], values)
    if 300 <= code < 400:
        return Finding("http_redirect", values)
    if 400 <= code < 500:
        return Finding("http_client_error", values)
    if code >= 500:
        return Finding("http_server_error", values)
    return None


@detector
def _crypto(alarm: Alarm) -> Iterator[Finding]:
    if any(normalize(flag) == "decryptfail" for flag in alarm.flags) or any(
        normalize(key) == "decryptfail" for key in alarm.sample
    ):
        yield Finding("decrypt_fail")


@detector
def _hosting(alarm: Alarm) -> Iterator[Finding]:
    platform = alarm.get("第三方平台")
    if platform is not None:
        yield Finding("third_party_platform", {"platform": platform.strip() or "?"})
    outer = (alarm.get("OuterIP") or "").strip()
    if outer and platform is None:
        yield Finding("outer_ip", {"outer_ip": outer})


@detector
def _address(alarm: Alarm) -> Iterator[Finding]:
    target = find_target(alarm)
    if target.ip:
        try:
            address = ipaddress.ip_address(target.ip)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in _INTERNAL_NETS):
            yield Finding("private_ip", {"ip": target.ip})
    if target.port is not None and target.port not in (80, 443):
        yield Finding(
            "url_bad_port", {"port": str(target.port), "url": target.url or ""}
        )


@detector
def _ticket_reply(alarm: Alarm) -> Iterator[Finding]:
    if alarm.type != "ticket_failure":
        return
    body = _reply_body(alarm)
    if body is not None and body.strip() != "success":
        yield Finding("ticket_reply", {"snippet": snippet(body) or '""'})


def worst(severities: list[str]) -> str:
    """Return the most severe of ``severities`` (``info`` when empty)."""
    return max(severities, key=SEVERITY_ORDER.index, default="info")
