"""Settings: a YAML file and ALARM_BOT_* variables, the variables winning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.errors import SettingsError
from bot.settings import Settings, load_settings

GATEWAY = {
    "WECHATY_PUPPET_SERVICE_ENDPOINT": "127.0.0.1:8788",
    "WECHATY_PUPPET_SERVICE_TOKEN": "insecure_s3cret",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alarm-bot.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(None, {})

    assert settings == Settings()
    assert settings.rooms == []
    assert settings.admins == []
    assert settings.lang == "zh"
    assert settings.command_prefixes == ["/", "#"]
    assert settings.bot_name is None
    assert settings.has_gateway is False


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rooms: [alarm-group, ops@chatroom]\n"
        "admins: [wxid_admin, 张三]\n"
        "lang: en\n"
        "command_prefixes: ['!']\n"
        "bot_name: 报警助手\n"
        "knowledge_dir: /srv/kb\n"
        "db_path: /var/lib/alarm-bot/bot.db\n",
    )

    settings = load_settings(path, {})

    assert settings.rooms == ["alarm-group", "ops@chatroom"]
    assert settings.admins == ["wxid_admin", "张三"]
    assert settings.lang == "en"
    assert settings.command_prefixes == ["!"]
    assert settings.bot_name == "报警助手"
    assert settings.knowledge_dir == Path("/srv/kb")
    assert settings.db_path == Path("/var/lib/alarm-bot/bot.db")


def test_environment_wins_over_file_and_splits_commas(tmp_path: Path) -> None:
    path = write(tmp_path, "rooms: [from-file]\nlang: en\nadmins: [a]\n")

    settings = load_settings(
        path,
        {"ALARM_BOT_ROOMS": " alarm-group , ops-oncall,", "ALARM_BOT_LANG": "zh"},
    )

    assert settings.rooms == ["alarm-group", "ops-oncall"]
    assert settings.lang == "zh"
    assert settings.admins == ["a"]


def test_empty_variable_overrides_file_list(tmp_path: Path) -> None:
    path = write(tmp_path, "rooms: [from-file]\n")

    assert load_settings(path, {"ALARM_BOT_ROOMS": ""}).rooms == []


def test_comma_string_in_file_is_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "command_prefixes: '/,#,!'\n")

    assert load_settings(path, {}).command_prefixes == ["/", "#", "!"]


def test_gateway_comes_from_wechaty_variables_and_token_is_hidden() -> None:
    settings = load_settings(None, GATEWAY)

    assert settings.has_gateway is True
    assert settings.puppet_endpoint == "127.0.0.1:8788"
    assert settings.puppet_token is not None
    assert settings.puppet_token.get_secret_value() == "insecure_s3cret"
    assert "insecure_s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ("WECHATY_PUPPET_SERVICE_TOKEN", "WECHATY_PUPPET_SERVICE_ENDPOINT"),
        ("WECHATY_PUPPET_SERVICE_ENDPOINT", "WECHATY_PUPPET_SERVICE_TOKEN"),
    ],
)
def test_gateway_needs_both_endpoint_and_token(present: str, missing: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, {present: GATEWAY[present]})

    assert str(caught.value) == (
        f"{present} is set but {missing} is not: set both to connect to a Wechaty "
        "gateway, or neither to run in the console"
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"ALARM_BOT_LANG": "fr"},
            "ALARM_BOT_LANG: input should be 'zh' or 'en', got \"fr\"",
        ),
        (
            {"ALARM_BOT_COMMAND_PREFIXES": ""},
            'ALARM_BOT_COMMAND_PREFIXES: at least one command prefix is needed, got ""',
        ),
        (
            {"ALARM_BOT_COMMAND_PREFIXES": "/,! x"},
            "ALARM_BOT_COMMAND_PREFIXES: a prefix cannot contain spaces: '! x', "
            'got "/,! x"',
        ),
        (
            GATEWAY | {"WECHATY_PUPPET_SERVICE_ENDPOINT": "localhost"},
            "WECHATY_PUPPET_SERVICE_ENDPOINT: expected host:port, e.g. "
            '127.0.0.1:8788, got "localhost"',
        ),
        (
            GATEWAY | {"WECHATY_PUPPET_SERVICE_ENDPOINT": "127.0.0.1:99999"},
            "WECHATY_PUPPET_SERVICE_ENDPOINT: expected host:port, e.g. "
            '127.0.0.1:8788, got "127.0.0.1:99999"',
        ),
    ],
)
def test_bad_variable_names_variable_and_value(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, environ)

    assert str(caught.value) == message


def test_bad_file_value_names_file_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "lang: de\n")

    with pytest.raises(SettingsError) as caught:
        load_settings(path, {})

    assert (
        str(caught.value) == f"{path}: lang: input should be 'zh' or 'en', got \"de\""
    )


def test_empty_entry_in_file_list_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "rooms: [alarm-group, '  ']\n")

    with pytest.raises(SettingsError) as caught:
        load_settings(path, {})

    assert str(caught.value) == (
        f"{path}: rooms: entries must not be empty, got ['alarm-group', '  ']"
    )


def test_unknown_file_key_is_rejected_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "room: [alarm-group]\n")

    with pytest.raises(SettingsError) as caught:
        load_settings(path, {})

    assert str(caught.value) == f"{path}: unknown key 'room' (did you mean 'rooms'?)"


def test_token_in_file_is_rejected_pointing_at_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "puppet_token: insecure_x\n")

    with pytest.raises(SettingsError) as caught:
        load_settings(path, {})

    assert str(caught.value) == (
        f"{path}: unknown key 'puppet_token' (the gateway is set with "
        "WECHATY_PUPPET_SERVICE_ENDPOINT and WECHATY_PUPPET_SERVICE_TOKEN)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rooms: [a\nlang: en\n",
            "not valid YAML at line 2: expected ',' or ']', but got ':'",
        ),
        ("- rooms\n", "expected a mapping of settings at the top"),
    ],
)
def test_unreadable_file_is_a_settings_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(SettingsError) as caught:
        load_settings(path, {})

    assert str(caught.value) == f"{path}: {message}"


def test_missing_file_is_a_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(SettingsError) as caught:
        load_settings(path, {})

    assert (
        str(caught.value) == f"{path}: cannot read settings: No such file or directory"
    )


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), {}) == Settings()


def test_unknown_variable_is_warned_about_with_suggestion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.settings"):
        settings = load_settings(
            None, {"ALARM_BOT_ROOM": "alarm-group", "ALARM_BOT_CONFIG": "x.yaml"}
        )

    assert settings.rooms == []
    assert caplog.messages == [
        "ignoring unknown setting ALARM_BOT_ROOM (did you mean ALARM_BOT_ROOMS?)"
    ]


def test_reads_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALARM_BOT_ADMINS", "wxid_a,Bob")

    assert load_settings().admins == ["wxid_a", "Bob"]


@pytest.mark.parametrize(
    ("rooms", "names", "served"),
    [
        ([], ("random-chat", "r@chatroom"), True),
        (["alarm-group"], ("alarm-group", "a@chatroom"), True),
        (["a@chatroom"], ("alarm-group", "a@chatroom"), True),
        (["alarm-group"], ("random-chat", "r@chatroom"), False),
        (["alarm-group"], (None, "r@chatroom"), False),
    ],
)
def test_serves_room_by_topic_or_id(
    rooms: list[str], names: tuple[str | None, ...], served: bool
) -> None:
    assert Settings(rooms=rooms).serves_room(*names) is served


def test_blank_names_mean_unset() -> None:
    assert load_settings(None, {"ALARM_BOT_BOT_NAME": "  "}).bot_name is None
    assert Settings(puppet_endpoint=" ").puppet_endpoint is None


def test_unknown_file_key_without_near_match_lists_the_known_keys(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "colour: red\n")

    with pytest.raises(SettingsError) as caught:
        load_settings(path, {})

    assert str(caught.value) == (
        f"{path}: unknown key 'colour' (known keys: rooms, admins, lang, "
        "command_prefixes, bot_name, knowledge_dir, db_path, owners, default_owners, "
        "platform_owners, repeat_interval_minutes, outbox, http_listen, "
        "knowledge_watch, kb_history_dir, reply_limit_alarm, reply_limit_explain, "
        "probes, probe_allow_private, probe_per_minute)"
    )


# ---- probes

PROBE_TOKEN = "probeS3cretToken"
PROBE_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def test_probes_are_read_from_a_file_with_secrets_hidden(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "probes:\n"
        "  WX0123456789ABCDEF:\n"
        "    url: https://wx.example.com/wechat\n"
        f"    token: {PROBE_TOKEN}\n"
        f"    aes_key: {PROBE_KEY}\n"
        "    event: CLICK\n"
        "probe_allow_private: true\n"
        "probe_per_minute: 5\n",
    )

    settings = load_settings(path, {})

    entry = settings.probes["wx0123456789abcdef"]
    target = entry.target("wx0123456789abcdef")
    assert target.mode == "safe"
    assert target.token == PROBE_TOKEN
    assert target.aes_key == PROBE_KEY
    assert target.event == "CLICK"
    assert target.account_id.startswith("gh_")
    assert settings.probe_allow_private is True
    assert settings.probe_per_minute == 5
    assert PROBE_TOKEN not in repr(settings)
    assert PROBE_KEY not in repr(settings)


def test_probes_come_from_the_environment_as_yaml() -> None:
    settings = load_settings(
        None,
        {
            "ALARM_BOT_PROBES": (
                "{wx0123456789abcdef: {url: 'http://127.0.0.1:8080/wx', "
                f"token: {PROBE_TOKEN}, mode: plain}}}}"
            ),
            "ALARM_BOT_PROBE_ALLOW_PRIVATE": "true",
            "ALARM_BOT_PROBE_PER_MINUTE": "2",
        },
    )

    assert list(settings.probes) == ["wx0123456789abcdef"]
    assert settings.probes["wx0123456789abcdef"].url == "http://127.0.0.1:8080/wx"
    assert settings.probe_allow_private is True
    assert settings.probe_per_minute == 2


def test_probe_defaults_refuse_private_targets() -> None:
    settings = Settings()

    assert settings.probes == {}
    assert settings.probe_allow_private is False
    assert settings.probe_per_minute == 3


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            "{wx0123: {url: 'http://x/', token: T}}",
            "'wx0123' is not an appid (wx and 16 hex digits)",
        ),
        (
            "{wx0123456789abcdef: {url: 'ftp://x/', token: T}}",
            "wx0123456789abcdef.url: expected an http(s) URL with a host",
        ),
        (
            "{wx0123456789abcdef: {url: 'http://x/', token: T, mode: safe}}",
            "wx0123456789abcdef: safe mode needs the appid and EncodingAESKey",
        ),
        (
            "{wx0123456789abcdef: {url: 'http://x/', token: T, aes_key: short}}",
            "wx0123456789abcdef: EncodingAESKey must be 43 base64 characters",
        ),
        (
            "{wx0123456789abcdef: {url: 'http://x/'}}",
            "wx0123456789abcdef.token: field required",
        ),
    ],
)
def test_bad_probe_entries_name_the_problem_but_never_the_value(
    entry: str, problem: str
) -> None:
    secret_entry = entry.replace("token: T", f"token: {PROBE_TOKEN}")

    with pytest.raises(SettingsError) as caught:
        load_settings(None, {"ALARM_BOT_PROBES": secret_entry})

    assert str(caught.value) == f'ALARM_BOT_PROBES: {problem}, got "<hidden>"'
    assert PROBE_TOKEN not in str(caught.value)


def test_settings_file_not_utf8_is_a_clear_error(tmp_path) -> None:
    from bot.errors import SettingsError
    from bot.settings import load_settings

    path = tmp_path / "gbk.yaml"
    path.write_bytes("rooms: [接口报警群]\n".encode("gbk"))
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_settings(path, environ={})
