"""This module holds the bot's typed settings, read from YAML and the environment.

Settings come from an optional YAML file (``--config PATH``) and from ``ALARM_BOT_*``
environment variables; a variable that is set wins over the file, even when empty.
List settings take a YAML list or a comma-separated string. The Wechaty gateway's
address and token come only from ``WECHATY_PUPPET_SERVICE_ENDPOINT`` and
``WECHATY_PUPPET_SERVICE_TOKEN``, the names every Wechaty tool uses, so a token
never sits in a settings file.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.errors import SettingsError

if TYPE_CHECKING:
    from bot.probe import ProbeTarget

logger = logging.getLogger(__name__)

ENV_PREFIX = "ALARM_BOT_"
ENDPOINT_VAR = "WECHATY_PUPPET_SERVICE_ENDPOINT"
TOKEN_VAR = "WECHATY_PUPPET_SERVICE_TOKEN"  # noqa: S105 (a variable name)
# NOTE: read by click for ``--config``, so it is not a setting of its own.
CONFIG_VAR = "ALARM_BOT_CONFIG"
FILE_FIELDS = (
    "rooms",
    "admins",
    "lang",
    "command_prefixes",
    "bot_name",
    "knowledge_dir",
    "db_path",
    "owners",
    "default_owners",
    "platform_owners",
    "repeat_interval_minutes",
    "outbox",
    "http_listen",
    "knowledge_watch",
    "kb_history_dir",
    "reply_limit_alarm",
    "reply_limit_explain",
    "probes",
    "probe_allow_private",
    "probe_per_minute",
)
# Settings whose values are never quoted in an error message: they hold secrets.
SECRET_FIELDS = frozenset({"puppet_token", "probes"})
_APPID_RE = re.compile(r"wx[0-9a-f]{16}")


class OutboxSettings(BaseModel):
    """How fast and how much the bot may post (the ``outbox`` mapping).

    Attributes:
        room_per_minute: messages to one room per 60 seconds.
        global_per_minute: messages to all rooms per 60 seconds.
        room_gap_s: seconds between two messages.
        switch_gap_s: seconds between messages to different rooms.
        message_bytes: the longest message; longer ones split on lines.
        reserve: per-minute slots kept for commands and the digest in a storm.
        retry_attempts: tries before a failed message is given up and reported.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    room_per_minute: PositiveInt = 20
    global_per_minute: PositiveInt = 40
    room_gap_s: NonNegativeFloat = 1.0
    switch_gap_s: NonNegativeFloat = 3.0
    message_bytes: int = Field(default=2048, ge=256)
    reserve: NonNegativeInt = 3
    retry_attempts: PositiveInt = 5

    @model_validator(mode="after")
    def _reserve_leaves_room(self) -> OutboxSettings:
        if self.reserve >= min(self.room_per_minute, self.global_per_minute):
            raise ValueError("reserve must be smaller than the per-minute caps")
        return self


class ProbeSettings(BaseModel):
    """One account's callback URL, probed by ``probe`` and after its alarms.

    An entry of the ``probes`` mapping, keyed by appid. The secrets never show
    in a reply, a log line or an error message.

    Attributes:
        url: the callback URL configured on the platform (http or https).
        token: the Token configured on the platform.
        aes_key: the 43-character EncodingAESKey; needed in compatible and safe
            mode.
        mode: the message mode (``plain``, ``compatible`` or ``safe``); unset:
            ``safe`` with an ``aes_key``, else ``plain``.
        event: the event pushed; unset: a menu-link click (``VIEW``), which
            makes no server send anyone a message.
        account_id: the account's original id (``gh_...``), sent as
            ``ToUserName``; unset: a made-up one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    token: SecretStr
    aes_key: SecretStr | None = None
    mode: Literal["plain", "compatible", "safe"] | None = None
    event: str | None = None
    account_id: str | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http(s) URL with a host")
        return value.strip()

    def target(self, appid: str) -> ProbeTarget:
        """The probe's view of this entry.

        Raises:
            ValueError: the mode needs an ``aes_key`` that is missing, the key
                is not 43 base64 characters, or the event is not a plain word.
        """
        # NOTE: imported here: the probe pulls in httpx, dnspython and
        # cryptography, which only a bot with probes needs.
        from bot.probe import (
            DEFAULT_ACCOUNT_ID,
            DEFAULT_EVENT,
            MessageMode,
            ProbeTarget,
        )

        aes_key = self.aes_key.get_secret_value() if self.aes_key else None
        return ProbeTarget(
            url=self.url,
            token=self.token.get_secret_value(),
            appid=appid,
            aes_key=aes_key,
            mode=MessageMode(self.mode or ("safe" if aes_key else "plain")),
            event=self.event or DEFAULT_EVENT,
            account_id=self.account_id or DEFAULT_ACCOUNT_ID,
        )


class Settings(BaseModel):
    """Everything the bot can be told, validated once at start-up.

    Attributes:
        rooms: room topics or ids to serve; empty serves every room the bot is in.
        admins: contact ids or names allowed to run admin commands.
        lang: the language of replies.
        command_prefixes: what starts a chat command, e.g. ``/help``.
        bot_name: the name people @-mention; defaults to the account's own name.
        knowledge_dir: a knowledge base to use instead of the bundled one.
        db_path: the SQLite file of the bot's history; unset, ``run`` keeps it
            in the user's data directory (``bot.store.default_db_path``) and
            ``chat`` and ``replay`` in memory.
        owners: contacts to @-mention per appid, e.g. ``{wx…: [alice, bob]}``.
        default_owners: contacts for accounts not in ``owners``.
        platform_owners: contacts for third-party ticket and platform-message
            alarms.
        repeat_interval_minutes: how long repeats of an alarm are folded before
            a short update; unset uses the alarm's own window (5 minutes).
        outbox: the pacing of outgoing messages (see ``OutboxSettings``).
        http_listen: ``host:port`` to serve ``/healthz`` and ``/metrics`` on.
        knowledge_watch: reload the knowledge when its files change.
        kb_history_dir: where chat edits of the knowledge keep their journal and
            backups; unset: ``kb-history/`` beside ``db_path``, else the user's
            data directory.
        reply_limit_alarm: the most messages the reply to one alarm may take
            (``kb check`` and reloads refuse a knowledge base over it).
        reply_limit_explain: the same for an explain, FAQ or table reply.
        probes: callback URLs per appid (see ``ProbeSettings``): ``probe <appid>``
            pushes to them from the chat, and an alarm for one of them is
            followed by the probe's verdict.
        probe_allow_private: probe URLs that resolve to loopback, private,
            link-local or cloud-metadata addresses (labs and tests only).
        probe_per_minute: probes per appid within 60 seconds, from the chat and
            after alarms together (20 in all at most).
        puppet_endpoint: the Wechaty gateway as ``host:port``.
        puppet_token: the gateway's token.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rooms: list[str] = []
    admins: list[str] = []
    lang: Literal["zh", "en"] = "zh"
    command_prefixes: list[str] = ["/", "#"]
    bot_name: str | None = None
    knowledge_dir: Path | None = None
    db_path: Path | None = None
    owners: dict[str, list[str]] = {}
    default_owners: list[str] = []
    platform_owners: list[str] = []
    repeat_interval_minutes: float | None = Field(default=None, gt=0)
    outbox: OutboxSettings = OutboxSettings()
    http_listen: str | None = None
    knowledge_watch: bool = True
    kb_history_dir: Path | None = None
    reply_limit_alarm: PositiveInt = 2
    reply_limit_explain: PositiveInt = 6
    probes: dict[str, ProbeSettings] = {}
    probe_allow_private: bool = False
    probe_per_minute: PositiveInt = 3
    puppet_endpoint: str | None = None
    puppet_token: SecretStr | None = None

    @field_validator("owners", "outbox", "probes", mode="before")
    @classmethod
    def _read_mapping(cls, value: object) -> object:
        # From the environment a mapping comes as YAML or JSON text.
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                raise ValueError("expected a YAML or JSON mapping") from None
        return {} if value is None else value

    @field_validator("owners", mode="before")
    @classmethod
    def _owner_lists(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value
        return {
            str(appid).strip().lower(): (
                [part.strip() for part in contacts.split(",") if part.strip()]
                if isinstance(contacts, str)
                else contacts
            )
            for appid, contacts in value.items()
        }

    @field_validator("probes")
    @classmethod
    def _check_probes(cls, value: dict[str, ProbeSettings]) -> dict[str, ProbeSettings]:
        probes = {appid.strip().lower(): entry for appid, entry in value.items()}
        for appid, entry in probes.items():
            if not _APPID_RE.fullmatch(appid):
                raise ValueError(f"{appid!r} is not an appid (wx and 16 hex digits)")
            try:
                entry.target(appid)
            except ValueError as exc:
                raise ValueError(f"{appid}: {exc}") from None
        return probes

    @field_validator("default_owners", "platform_owners", mode="before")
    @classmethod
    def _split_contacts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("repeat_interval_minutes", "http_listen", mode="before")
    @classmethod
    def _blank_means_default(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("http_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9108")
        return value.strip()

    @field_validator("rooms", "admins", "command_prefixes", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("rooms", "admins", "command_prefixes")
    @classmethod
    def _strip_items(cls, value: list[str]) -> list[str]:
        items = [item.strip() for item in value]
        if any(not item for item in items):
            raise ValueError("entries must not be empty")
        return items

    @field_validator("command_prefixes")
    @classmethod
    def _check_prefixes(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one command prefix is needed")
        for prefix in value:
            if any(char.isspace() for char in prefix):
                raise ValueError(f"a prefix cannot contain spaces: {prefix!r}")
        return value

    @field_validator("bot_name", "puppet_endpoint", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("puppet_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. 127.0.0.1:8788")
        return value.strip()

    @model_validator(mode="after")
    def _endpoint_and_token_together(self) -> Settings:
        has_token = self.puppet_token is not None
        if has_token != (self.puppet_endpoint is not None):
            missing = ENDPOINT_VAR if has_token else TOKEN_VAR
            present = TOKEN_VAR if has_token else ENDPOINT_VAR
            raise ValueError(
                f"{present} is set but {missing} is not: set both to connect "
                "to a Wechaty gateway, or neither to run in the console"
            )
        return self

    @property
    def has_gateway(self) -> bool:
        """Whether a Wechaty gateway is configured."""
        return self.puppet_endpoint is not None

    def serves_room(self, *names: str | None) -> bool:
        """Tell whether a room, known by its topic and/or id, is one to serve."""
        if not self.rooms:
            return True
        return any(name in self.rooms for name in names if name)


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load the settings from a YAML file and the environment.

    Args:
        path: the YAML settings file, or ``None`` for none.
        environ: the environment to read; ``os.environ`` by default.

    Returns:
        The validated settings.

    Raises:
        SettingsError: the file is unreadable, has an unknown key, or a value is
            invalid; the message names the file or variable, the key and the value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        for key, value in _read_file(path).items():
            values[key], sources[key] = value, f"{path}: {key}"
    for key in FILE_FIELDS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key], sources[key] = env[name], name
    for key, name in (("puppet_endpoint", ENDPOINT_VAR), ("puppet_token", TOKEN_VAR)):
        if env.get(name, "").strip():
            values[key], sources[key] = env[name].strip(), name
    _warn_unknown_variables(env)

    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, values, sources)) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise SettingsError(
            f"{path}: not valid YAML{where}" + (f": {problem}" if problem else "")
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings at the top")
    for key in data:
        if key not in FILE_FIELDS:
            raise SettingsError(f"{path}: unknown key {key!r}{_suggest(str(key))}")
    return {str(key): value for key, value in data.items()}


def _suggest(key: str) -> str:
    if key.lower().startswith(("puppet", "wechaty", "token", "endpoint")):
        return f" (the gateway is set with {ENDPOINT_VAR} and {TOKEN_VAR})"
    close = difflib.get_close_matches(key, FILE_FIELDS, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(FILE_FIELDS)})"


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    known = {ENV_PREFIX + key.upper() for key in FILE_FIELDS} | {CONFIG_VAR}
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in known:
            logger.warning("ignoring unknown setting %s%s", name, _suggest_var(name))


def _suggest_var(name: str) -> str:
    known = [ENV_PREFIX + key.upper() for key in FILE_FIELDS]
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(
    exc: ValidationError, values: dict[str, Any], sources: dict[str, str]
) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        key = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if message[:1].isupper() and message[1:2].islower():
            message = message[:1].lower() + message[1:]
        if not key:
            problems.append(message)
            continue
        shown = "<hidden>" if key in SECRET_FIELDS else values.get(key)
        if key == "probes" and len(error["loc"]) > 1:
            # Name the entry and its field: the value itself stays hidden.
            message = ".".join(map(str, error["loc"][1:])) + f": {message}"
        problems.append(f"{sources.get(key, key)}: {message}, got {_quote(shown)}")
    return "\n".join(problems)


def _quote(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)
