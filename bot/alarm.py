"""This module turns a chat message into the platform alarms it carries.

A platform alarm is a block of labelled fields::

    Appid: wx…            昵称: …              时间: 2014-12-01 20:12:00
    内容: <what failed>   次数: 5分钟 1272次   错误样例: [IP=…][Event=…]

Real messages bend this shape in every way: fields on one line or spread over
blank lines, full-width colons, a chat sentence around the alarm, ``> `` quoting,
fields missing, several alarms in one message, and error samples whose values hold
brackets, ``=`` and whole XML documents. ``parse`` copes with all of it and never
raises: text it cannot read as an alarm simply yields no alarm.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

logger = logging.getLogger(__name__)

# NOTE: China has had no daylight saving since 1991, so a fixed offset is exact
# and spares the bot a tzdata dependency in slim images.
PLATFORM_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")

APPID_RE = re.compile(r"wx[0-9a-f]{16}", re.IGNORECASE)
_FIELDS = ("appid", "nickname", "time", "content", "count", "sample", "trailer")
_LABELS = {
    "appid": 0,
    "昵称": 1,
    "时间": 2,
    "内容": 3,
    "次数": 4,
    "错误样例": 5,
}
# A label starts a line or follows spacing or punctuation; the colon may be
# half- or full-width. The trailer ("报警排查指引,请见: <link>") ends an alarm.
_LABEL_RE = re.compile(
    r"(?:^|(?<=[\s>\]】」\"“”,，。;；|:：(（]))"
    r"(?P<label>app\s?id|昵称|时间|内容|次数|错误样例|报警排查指引[,，]?\s*请见)"
    r"[ \t]*[:：]",
    re.IGNORECASE | re.MULTILINE,
)
_QUOTE_RE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.MULTILINE)
# Zero-width characters vanish; WeChat's mention space and NBSP become spaces.
_INVISIBLE = (("\u200b", ""), ("\ufeff", ""), ("\u2005", " "), ("\xa0", " "))
_TIME_RE = re.compile(
    r"(?P<y>\d{4})[-/.年](?P<mo>\d{1,2})[-/.月](?P<d>\d{1,2})日?"
    r"[ T\t]*(?P<h>\d{1,2})[:：时](?P<mi>\d{1,2})(?:[:：分](?P<s>\d{1,2}))?"
)
_WINDOW_RE = re.compile(
    r"(?P<n>\d+)\s*(?P<unit>分钟|分|min(?:ute)?s?|小时|h(?:ours?)?)(?![a-z])",
    re.IGNORECASE,
)
_COUNT_RE = re.compile(r"(?P<n>\d[\d,，]*)\s*次")
_NUMBER_RE = re.compile(r"^\s*(?P<n>\d[\d,，]*)\s*$")
_MAX_KEY = 40
EARLIEST_YEAR = 2000
"""A 时间 before this year, or over a day ahead, is kept as text only (the
platform began in 2012)."""
MAX_COUNT = 10**12
"""A 次数 above this is taken for a typo and dropped."""
MAX_WINDOW_MINUTES = 7 * 24 * 60
"""A window over a week is taken for a typo and dropped (the platform's is 5 min)."""
_MAX_DIGITS = len(str(MAX_COUNT))
_QUOTE_CLOSERS = "」』”"
_PAY_KEYS = ("transaction_id", "out_trade_no")
_THIRD_PARTY_KEYS = ("第三方平台", "outerip")


@dataclass(frozen=True, slots=True)
class Classification:
    """What the content sentence says failed."""

    type: str
    score: float = 0.0
    nearest: tuple[str, ...] = ()
    third_party: bool = False


class Classifier(Protocol):
    """Tells the alarm type from the 内容 sentence (see ``knowledge.TypeMatcher``)."""

    def classify(self, content: str) -> Classification:
        """Return the type the content describes, or ``unknown``."""
        ...


@dataclass(frozen=True, slots=True, eq=True)
class Alarm:
    """One platform alarm.

    ``sample`` holds the error-sample groups in their order, keys in their case;
    ``flags`` the groups without a value (``[decrypt fail]``). ``appid`` is set only
    when the Appid has the shape of an app id; ``appid_raw`` keeps what was written.
    """

    type: str
    appid: str | None = None
    appid_raw: str | None = None
    nickname: str | None = None
    time: datetime | None = None
    time_text: str | None = None
    content: str | None = None
    count: int | None = None
    window_minutes: int | None = None
    sample: dict[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    third_party: bool = False
    pay_notify: bool = False
    nearest: tuple[str, ...] = ()
    raw: str = ""
    _folded: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Sample keys vary in case ("IP", "ip"); index them once, first one wins.
        folded: dict[str, str] = {}
        for name, value in self.sample.items():
            folded.setdefault(_fold_key(name), value)
        object.__setattr__(self, "_folded", folded)

    def get(self, key: str) -> str | None:
        """Return a sample value by key, ignoring case and spacing."""
        return self._folded.get(_fold_key(key))

    @property
    def window_end(self) -> datetime | None:
        """The end of the counting window that starts at ``time``."""
        if self.time is None or self.window_minutes is None:
            return None
        return self.time + timedelta(minutes=self.window_minutes)

    @property
    def rate_per_second(self) -> float | None:
        """Failures per second over the window."""
        if self.count is None or not self.window_minutes:
            return None
        return self.count / (self.window_minutes * 60)

    def to_json(self) -> dict[str, object]:
        """Return the alarm in the JSON contract's shape."""
        return {
            "type": self.type,
            "appid": self.appid,
            "nickname": self.nickname,
            "time": self.time.isoformat() if self.time else None,
            "count": self.count,
            "window_minutes": self.window_minutes,
            # A flag group ("[decrypt fail]") is a group of the sample without value.
            "sample": {**self.sample, **dict.fromkeys(self.flags, "")},
            "third_party": self.third_party,
            "pay_notify": self.pay_notify,
        }


@dataclass(slots=True)
class _Block:
    """The fields of one alarm while it is being read."""

    start: int
    lead: str = ""
    values: dict[str, str] = field(default_factory=dict)
    sample: list[tuple[str, str]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    last: int = -1
    end: int = 0


def parse(text: str, classifier: Classifier) -> list[Alarm]:
    """Return every alarm in ``text``, in order; never raises.

    Args:
        text: a chat message, as pasted or posted.
        classifier: tells the type from the 内容 sentence.

    Returns:
        The alarms found; an empty list for text that holds none.
    """
    try:
        cleaned, blocks = _read_blocks(text)
        return [_to_alarm(block, cleaned, classifier) for block in blocks]
    except Exception:  # NOTE: a parser bug must not silence the bot
        logger.exception("alarm parser failed on a %d-character message", len(text))
        return []


def clean(text: str) -> str:
    """Normalise line ends, invisible characters and ``> `` quoting."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for char, replacement in _INVISIBLE:
        if char in text:
            text = text.replace(char, replacement)
    return _QUOTE_RE.sub("", text) if ">" in text else text


def _read_blocks(raw: str) -> tuple[str, list[_Block]]:
    text = clean(raw)
    blocks: list[_Block] = []
    current: _Block | None = None
    labels = list(_LABEL_RE.finditer(text))
    skip_until = 0
    for index, match in enumerate(labels):
        if match.start() < skip_until:
            continue
        name = _label_name(match.group("label"))
        order = _FIELDS.index(name)
        if current is not None and (
            name in current.values
            or (order <= current.last and _starts_alarm(labels, index, current))
        ):
            blocks.append(current)
            current = None
        if name == "trailer":
            # The guide link closes the alarm it follows, unless the fields
            # after it are that alarm's own, typed out below the link.
            if current is not None and _closes(labels, index + 1, current):
                current.end = _line_end(text, match.end())
                blocks.append(current)
                current = None
            continue
        if current is None:
            current = _Block(start=match.start(), lead=name)
        current.last = max(current.last, order)
        next_start = _next_label_start(labels, index, len(text))
        if name == "sample":
            sample, flags, end = parse_sample(text, match.end(), next_start)
            current.sample, current.flags = sample, flags
            current.values[name] = ""
            current.end = skip_until = end
        else:
            current.values[name] = text[match.end() : next_start]
            current.end = next_start
    if current is not None:
        blocks.append(current)
    return text, [block for block in blocks if _looks_like_alarm(block)]


def _starts_alarm(labels: list[re.Match[str]], index: int, current: _Block) -> bool:
    """Whether a field out of the usual order begins the next alarm.

    The platform writes Appid, 昵称, 时间, 内容, 次数, 错误样例 in that order, so
    a field that goes back usually starts another alarm, as when the second of
    two pasted alarms has a 昵称 line the first lacks. People type the fields
    in orders of their own, though, and then each alarm starts with the same
    field as the first. So the field starts an alarm only when the current one
    has its 内容 line, and the fields from it on keep the platform's order up
    to a 内容 line without passing the field the current alarm started with
    (there, at the repeat, the next alarm starts instead).
    """
    if "content" not in current.values:
        return False
    last = -1
    for match in labels[index:]:
        name = _label_name(match.group("label"))
        if name in ("trailer", current.lead):
            return False
        order = _FIELDS.index(name)
        if order <= last:
            return False
        if name == "content":
            return last >= 0
        last = order
    return False


def _closes(labels: list[re.Match[str]], index: int, current: _Block) -> bool:
    """Whether the guide line before ``labels[index]`` ends the ``current`` alarm.

    It does unless every field after it, up to the end or the next guide line,
    is one the alarm lacks and none is a 内容 line (which would start another).
    """
    for match in labels[index:]:
        name = _label_name(match.group("label"))
        if name == "trailer":
            return False
        if name == "content" or name in current.values:
            return True
    return index >= len(labels)


def _label_name(label: str) -> str:
    folded = label.replace(" ", "").lower()
    if folded == "appid":
        return "appid"
    if folded.startswith("报警排查指引"):
        return "trailer"
    return _FIELDS[_LABELS[folded]]


def _next_label_start(labels: list[re.Match[str]], index: int, default: int) -> int:
    return labels[index + 1].start() if index + 1 < len(labels) else default


def _looks_like_alarm(block: _Block) -> bool:
    """A block is an alarm when it has at least two fields, one of them telling."""
    core = [name for name in block.values if name != "trailer"]
    if len(core) < 2:
        return False
    return (
        "content" in block.values
        or _parse_count(block.values.get("count", ""))[0] is not None
        or bool(block.sample or block.flags)
        or APPID_RE.search(block.values.get("appid", "")) is not None
    )


def _to_alarm(block: _Block, cleaned: str, classifier: Classifier) -> Alarm:
    values = block.values
    appid_raw = _first_line(values.get("appid", "")).split(" ")[0] or None
    appid = appid_raw.lower() if appid_raw and APPID_RE.fullmatch(appid_raw) else None
    content = _first_line(values.get("content", "")) or None
    count, window = _parse_count(values.get("count", ""))
    time_text, when = _parse_time(values.get("time", ""))
    sample = dict(_unique(block.sample))

    verdict = (
        classifier.classify(content) if content else Classification(type="unknown")
    )
    alarm_type = verdict.type
    if alarm_type == "unknown" and not content:
        alarm_type = _type_from_sample(sample)
    folded_keys = {_fold_key(key) for key in sample}
    return Alarm(
        type=alarm_type,
        appid=appid,
        appid_raw=appid_raw,
        nickname=_first_line(values.get("nickname", "")) or None,
        time=when,
        time_text=time_text,
        content=content,
        count=count,
        window_minutes=window,
        sample=sample,
        flags=tuple(block.flags),
        third_party=verdict.third_party
        or any(key in folded_keys for key in _THIRD_PARTY_KEYS),
        pay_notify=_is_pay(content, folded_keys),
        nearest=verdict.nearest if alarm_type == "unknown" else (),
        raw=cleaned[block.start : block.end].strip(),
    )


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _first_line(value: str) -> str:
    for line in value.split("\n"):
        if line.strip():
            return " ".join(line.split())
    return ""


def _parse_count(value: str) -> tuple[int | None, int | None]:
    line = _first_line(value)
    window_match = _WINDOW_RE.search(line)
    window = None
    if window_match:
        # Leading zeros go first; past nine digits it is over the cap anyway.
        window = int(window_match["n"].lstrip("0")[:9] or "0")
        if window_match["unit"].lower().startswith(("小时", "h")):
            window *= 60
    count_match = _COUNT_RE.search(line) or _NUMBER_RE.match(line)
    count = None
    if count_match:
        digits = re.sub(r"[,，]", "", count_match["n"]).lstrip("0") or "0"
        count = int(digits[: _MAX_DIGITS + 1])
    # Numbers no platform window can hold are typos or forgeries: dropped,
    # so they never reach SQLite (64-bit integers) or date arithmetic.
    if count is not None and count > MAX_COUNT:
        count = None
    if window is not None and not 0 < window <= MAX_WINDOW_MINUTES:
        window = None
    return count, window


def _parse_time(value: str) -> tuple[str | None, datetime | None]:
    line = _first_line(value)
    match = _TIME_RE.search(line)
    if not match:
        return (line or None), None
    try:
        when = datetime(
            int(match["y"]),
            int(match["mo"]),
            int(match["d"]),
            int(match["h"]),
            int(match["mi"]),
            int(match["s"] or 0),
            tzinfo=PLATFORM_TZ,
        )
    except ValueError:
        return match.group(0), None
    if when.year < EARLIEST_YEAR or when > _latest_trusted():
        # A typo'd or forged year ("0001", "9999") would reach date arithmetic
        # and SQLite unchecked, and a time in the future would hold its group's
        # window open for years; such a 时间 is kept as text, not as a time.
        return match.group(0), None
    return match.group(0), when


def _latest_trusted() -> datetime:
    # A day's slack for clocks that are off; the platform never dates ahead.
    return datetime.now(PLATFORM_TZ) + timedelta(days=1)


def _type_from_sample(sample: dict[str, str]) -> str:
    """Without a 内容 line, a reply sample still tells an invalid response."""
    keys = {_fold_key(key) for key in sample}
    if keys & {"responsecontent", "responselength", "httpcode", "resp"}:
        return "invalid_response"
    return "unknown"


def _is_pay(content: str | None, folded_keys: set[str]) -> bool:
    if content and "支付" in content:
        return True
    return any(_fold_key(key) in folded_keys for key in _PAY_KEYS)


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for key, value in pairs:
        if key not in seen:
            seen.add(key)
            out.append((key, value))
    return out


@functools.lru_cache(maxsize=4096)
def _fold_key(key: str) -> str:
    return "".join(ch for ch in key.casefold() if ch.isalnum())


# ------------------------------------------------------------ error sample


def parse_sample(
    text: str, start: int, limit: int | None = None
) -> tuple[list[tuple[str, str]], list[str], int]:
    """Read the bracket groups of an error sample.

    A group closes at a ``]`` followed by another group, the end of a line, the
    end of the text or the next field, so values may hold ``]``, ``=`` and whole
    XML documents across lines. A group cut off with no closing bracket runs to
    the end of its line (or, for markup, up to the next field).

    Args:
        text: the cleaned message.
        start: where the sample begins (after ``错误样例:``).
        limit: where the next field label begins, if any.

    Returns:
        ``(groups, flags, end)``: the key/value groups, the groups without a
        value, and the offset just after the last group.
    """
    size = len(text)
    groups: list[tuple[str, str]] = []
    flags: list[str] = []
    pos = _skip_blank(text, start, size, newlines=False)
    while pos < size and text[pos] == "[":
        close = _find_close(text, pos + 1, size)
        if close is None:
            body, pos = _cut_off_body(text, pos + 1, size, limit)
            _add_group(body, groups, flags)
            break
        _add_group(text[pos + 1 : close], groups, flags)
        pos = close + 1
        following = _skip_blank(text, pos, size, newlines=True)
        if following < size and text[following] == "[":
            pos = following
        else:
            break
    return groups, flags, pos


def _skip_blank(text: str, pos: int, size: int, *, newlines: bool) -> int:
    blanks = " \t\n" if newlines else " \t"
    while pos < size and text[pos] in blanks:
        pos += 1
    return pos


def _find_close(text: str, pos: int, size: int) -> int | None:
    while True:
        close = text.find("]", pos)
        if close < 0:
            return None
        after = _skip_blank(text, close + 1, size, newlines=False)
        # WeChat's quote of a message ends it with 」: "「Alice：…[Event=Click]」".
        while after < size and text[after] in _QUOTE_CLOSERS:
            after = _skip_blank(text, after + 1, size, newlines=False)
        if after >= size or text[after] in "\n[" or _LABEL_RE.match(text, after):
            return close
        pos = close + 1


def _cut_off_body(text: str, pos: int, size: int, limit: int | None) -> tuple[str, int]:
    line_end = text.find("\n", pos)
    line_end = size if line_end < 0 else line_end
    if text[pos:line_end].split("=", 1)[-1].lstrip().startswith("<"):
        end = limit if limit is not None and limit > pos else size
        return text[pos:end].rstrip(), end
    return text[pos:line_end].rstrip(), line_end


def _add_group(body: str, groups: list[tuple[str, str]], flags: list[str]) -> None:
    equals = body.find("=")
    colon = min((i for i in (body.find(":"), body.find("：")) if i >= 0), default=-1)
    if equals >= 0 and (colon < 0 or equals < colon):
        key, value = body[:equals], body[equals + 1 :]
    elif colon >= 0:
        key, value = body[:colon], body[colon + 1 :].strip()
    else:
        flag = " ".join(body.split())
        if flag:
            flags.append(flag)
        return
    key = " ".join(key.split())
    if key and len(key) <= _MAX_KEY and "<" not in key:
        groups.append((key, value))
    elif body.strip():
        flags.append(" ".join(body.split())[:_MAX_KEY])
