"""The ``alarm-bot`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from bot import __version__
from bot.dispatch import Dispatcher
from bot.errors import KnowledgeError
from bot.kbcheck import check_knowledge, load_checked
from bot.knowledge import Knowledge

if TYPE_CHECKING:
    from bot.settings import Settings

logger = logging.getLogger(__name__)

LANG_OPTION = click.option(
    "--lang",
    type=click.Choice(["zh", "en"]),
    default=None,
    help="Reply language (default: ALARM_BOT_LANG or zh).",
)
CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ALARM_BOT_CONFIG",
    help="YAML settings file; ALARM_BOT_* variables override it.",
)
KB_OPTION = click.option(
    "--knowledge",
    "knowledge_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="ALARM_BOT_KNOWLEDGE_DIR",
    help="Knowledge directory (default: the shipped one).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="alarm-bot")
def cli() -> None:
    """Read WeChat Official Account interface alarms and answer with the diagnosis."""


CONNECT_HINT = (
    "No Wechaty gateway configured, so the bot runs here in the console. To serve a "
    "WeChat group, set WECHATY_PUPPET_SERVICE_ENDPOINT (host:port of a Wechaty "
    "gateway) and WECHATY_PUPPET_SERVICE_TOKEN; see 'Connect to WeChat' in README.md."
)


@cli.command()
@CONFIG_OPTION
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite history to keep (default: the db_path setting, else "
    "alarm-bot/alarm-bot.db in $XDG_DATA_HOME or ~/.local/share; "
    ":memory: keeps none).",
)
@click.option(
    "--http",
    "http_listen",
    metavar="HOST:PORT",
    default=None,
    help="Serve /healthz and /metrics here (default: the http_listen setting).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every step (DEBUG).")
def run(
    config_path: Path | None,
    db_path: Path | None,
    http_listen: str | None,
    verbose: bool,
) -> None:
    """Start the bot: in WeChat through a Wechaty gateway, else in the console."""
    from bot.errors import GatewayError, SettingsError
    from bot.pipeline import chat_in_console, serve_in_wechat
    from bot.settings import load_settings

    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        settings = _run_settings(load_settings(config_path), db_path, http_listen)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    knowledge = _knowledge(settings.knowledge_dir)
    try:
        if settings.has_gateway:
            asyncio.run(serve_in_wechat(knowledge, settings))
        else:
            click.echo(CONNECT_HINT, err=True)
            asyncio.run(chat_in_console(knowledge, settings, sender="you", banner=None))
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the --http port is taken, the --db unwritable
        raise click.ClickException(str(exc)) from None


def _run_settings(
    settings: Settings, db_path: Path | None, http_listen: str | None
) -> Settings:
    """The settings with ``run``'s options applied and the history placed.

    Raises:
        SettingsError: ``--http`` is not ``host:port``.
    """
    from pydantic import ValidationError

    from bot.errors import SettingsError
    from bot.settings import Settings
    from bot.store import MEMORY, default_db_path

    listen = settings.http_listen
    if http_listen is not None:
        try:
            listen = Settings(http_listen=http_listen).http_listen
        except ValidationError as exc:
            message = exc.errors(include_url=False)[0]["msg"]
            raise SettingsError(
                f"--http: {message.removeprefix('Value error, ')}, got {http_listen!r}"
            ) from None
    path = db_path or settings.db_path or default_db_path()
    # NOTE: ":memory:" becomes no path, so the chat edits' history goes to the
    # user's data directory rather than beside ":memory:" in the working directory.
    history = None if str(path) == MEMORY else path
    return settings.model_copy(update={"db_path": history, "http_listen": listen})


def _lang(value: str | None) -> str:
    import os

    chosen = value or os.environ.get("ALARM_BOT_LANG", "").strip() or "zh"
    if chosen not in ("zh", "en"):
        raise click.ClickException(f"ALARM_BOT_LANG: {chosen!r} is not zh or en")
    return chosen


def _knowledge(directory: Path | None) -> Knowledge:
    try:
        return load_checked(directory)
    except KnowledgeError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        raise click.ClickException(
            f"the knowledge base has {len(exc.problems)} problem(s); "
            "run `alarm-bot kb check` for details"
        ) from None


def _read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


@cli.command()
@click.argument("path", default="-")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
@LANG_OPTION
@KB_OPTION
def diagnose(
    path: str, as_json: bool, lang: str | None, knowledge_dir: Path | None
) -> None:
    """Diagnose the alarms in PATH (a file, or - for standard input)."""
    dispatcher = Dispatcher(_knowledge(knowledge_dir), lang=_lang(lang))
    result = dispatcher.diagnose_text(_read_input(path))
    if as_json:
        payload = {
            "alarms": [a.to_json() for a in result.alarms],
            "reply": result.reply,
        }
        click.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    elif result.alarms:
        click.echo(result.reply)
    else:
        click.echo("no alarm found in the input", err=True)


@cli.command()
@click.argument("question", nargs=-1, required=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print matches and reply as JSON."
)
@LANG_OPTION
@KB_OPTION
def ask(
    question: tuple[str, ...],
    as_json: bool,
    lang: str | None,
    knowledge_dir: Path | None,
) -> None:
    """Answer QUESTION from the knowledge base."""
    from bot.commands import render_answer
    from bot.search import KnowledgeSearch

    text = " ".join(question)
    if not text.strip():
        raise click.UsageError("QUESTION is empty: e.g. alarm-bot ask '499 是什么'")
    knowledge = _knowledge(knowledge_dir)
    dispatcher = Dispatcher(knowledge, lang=_lang(lang))
    matches = KnowledgeSearch(knowledge).search(text)
    if matches:
        reply = render_answer(knowledge, dispatcher.renderer, matches)
    else:
        reply = dispatcher.renderer.render("no_answer", question=text)
    if as_json:
        payload = {"matches": [m.to_json() for m in matches], "reply": reply}
        click.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        click.echo(reply)


@cli.group()
def kb() -> None:
    """Work with the knowledge base."""


@kb.command("check")
@click.argument(
    "directory",
    required=False,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ALARM_BOT_KNOWLEDGE_DIR",
)
@click.option(
    "--alarm-messages",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    envvar="ALARM_BOT_REPLY_LIMIT_ALARM",
    help="Most chat messages the reply to one alarm may take.",
)
@click.option(
    "--explain-messages",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    envvar="ALARM_BOT_REPLY_LIMIT_EXPLAIN",
    help="Most chat messages an explain, FAQ or table reply may take.",
)
def kb_check(
    directory: Path | None, alarm_messages: int, explain_messages: int
) -> None:
    """Validate the knowledge base in DIRECTORY (default: the shipped one)."""
    from bot.kbcheck import ReplyLimits

    limits = ReplyLimits(alarm=alarm_messages, explain=explain_messages)
    knowledge, problems = check_knowledge(directory, limits)
    for problem in problems:
        click.echo(problem, err=True)
    if problems or knowledge is None:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo(
        f"ok: {knowledge.root}: {len(knowledge.alarms)} alarm types, "
        f"{len(knowledge.faq)} FAQ entries, {len(knowledge.tables)} reference tables, "
        f"{len(knowledge.findings)} findings, {len(knowledge.templates)} templates"
    )


@kb.command("preview")
@click.argument("alarm_type", metavar="TYPE")
@click.argument("path", required=False)
@LANG_OPTION
@KB_OPTION
def kb_preview(
    alarm_type: str, path: str | None, lang: str | None, knowledge_dir: Path | None
) -> None:
    """Show the reply to an alarm of TYPE, as the group would see it.

    The alarm is the text in PATH (- for standard input), else a built-in
    example of TYPE. Problems of the knowledge base are listed first but do not
    stop the preview, so an over-long reply can be seen before it is fixed.
    """
    from bot.diagnosis import diagnose
    from bot.errors import RenderError
    from bot.kbcheck import sample_alarm
    from bot.knowledge import ALARM_TYPES
    from bot.render import split_message

    if alarm_type not in ALARM_TYPES:
        raise click.BadParameter(
            f"{alarm_type!r} is not an alarm type ({', '.join(ALARM_TYPES)})",
            param_hint="TYPE",
        )
    knowledge, problems = check_knowledge(knowledge_dir)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    if knowledge is None:
        raise click.ClickException("the knowledge base does not load")
    dispatcher = Dispatcher(knowledge, lang=_lang(lang))
    try:
        if path is None:
            entry = knowledge.alarm(alarm_type)
            alarm = sample_alarm(alarm_type, next(iter(entry.examples), None))
            reply = dispatcher.renderer.alarm_reply([diagnose(alarm, knowledge)])
        else:
            result = dispatcher.diagnose_text(_read_input(path))
            if not result.alarms:
                raise click.ClickException(f"no alarm found in {path}")
            others = sorted({a.type for a in result.alarms} - {alarm_type})
            if others:
                click.echo(f"note: the text holds {', '.join(others)} too", err=True)
            reply = result.reply
    except RenderError as exc:
        raise click.ClickException(str(exc)) from None
    messages = split_message(reply)
    for index, message in enumerate(messages, start=1):
        if len(messages) > 1:
            click.echo(f"--- message {index}/{len(messages)} ---")
        click.echo(message)
    click.echo(f"{len(reply.encode())} bytes, {len(messages)} message(s)", err=True)


CHAT_BANNER = (
    "alarm-bot chat: paste an alarm (multi-line paste works) or type /help; "
    "'@bot <question>' asks a question; a line with --- ends a message; Ctrl-D quits."
)


@cli.command()
@LANG_OPTION
@KB_OPTION
@CONFIG_OPTION
@click.option("--sender", default="you", help="The name you speak as.")
@click.option("--admin", is_flag=True, help="Speak as an admin.")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite history to keep (default: memory only).",
)
def chat(
    lang: str | None,
    knowledge_dir: Path | None,
    config_path: Path | None,
    sender: str,
    admin: bool,
    db_path: Path | None,
) -> None:
    """A terminal group chat with the bot: the embedded default.

    Takes the settings ``run`` takes (probes, rooms, limits), speaking as
    SENDER; the history stays in memory unless --db names a file.
    """
    from bot.errors import SettingsError
    from bot.pipeline import chat_in_console
    from bot.settings import load_settings

    knowledge = _knowledge(knowledge_dir)
    try:
        loaded = load_settings(config_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    admins = [*loaded.admins, sender.strip()] if admin else loaded.admins
    settings = loaded.model_copy(
        update={
            "lang": _lang(lang or loaded.lang),
            "admins": admins,
            "db_path": db_path,
        }
    )
    banner = CHAT_BANNER if sys.stdin.isatty() else None
    asyncio.run(chat_in_console(knowledge, settings, sender=sender, banner=banner))


@cli.command("replay")
@click.argument("events", type=click.File("r", encoding="utf-8"))
@CONFIG_OPTION
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite history to use and keep (default: the settings' db_path, or memory).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log one line per alarm (INFO).")
def replay_command(
    events: TextIO, config_path: Path | None, db_path: Path | None, verbose: bool
) -> None:
    """Replay EVENTS (JSON lines, or - for stdin) on a simulated clock.

    Prints each message the bot would send as a JSON line.
    """
    from bot.errors import SettingsError
    from bot.replay import ReplayError, run_replay
    from bot.settings import load_settings

    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    try:
        settings = load_settings(config_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    knowledge = _knowledge(settings.knowledge_dir)
    try:
        summary = asyncio.run(
            run_replay(
                events,
                settings,
                knowledge,
                db_path=db_path or settings.db_path,
                out=sys.stdout,
            )
        )
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"replayed {summary.events} events: {summary.messages} messages", err=True
    )


@cli.command("stats")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ALARM_BOT_DB_PATH",
    help="The bot's SQLite history (default: ALARM_BOT_DB_PATH).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def stats_command(db_path: Path | None, as_json: bool) -> None:
    """Count the recorded alarms by type and by account."""
    from bot.store import AlarmStore

    if db_path is None:
        raise click.ClickException(
            "no database: pass --db PATH or set ALARM_BOT_DB_PATH"
        )
    if not db_path.is_file():
        raise click.ClickException(f"{db_path}: no such database")
    store = AlarmStore(db_path)
    try:
        stats = store.stats()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(stats.to_json(), ensure_ascii=False))
        return
    click.echo(f"total alarms: {stats.total} ({stats.accounts} accounts)")
    for alarm_type, count in stats.by_type.items():
        click.echo(f"  {alarm_type:<24} {count}")
    if stats.top_appids:
        click.echo("top accounts:")
    for appid, count in stats.top_appids:
        click.echo(f"  {appid:<24} {count}")


def main() -> None:
    """Run the ``alarm-bot`` command."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs each request's URL at INFO; a probe's URL carries its
    # signature, nonce and echostr, which have no place in the bot's log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cli()


# ---- diagnostics tools (issue 6)


@cli.command("probe")
@click.argument("url")
@click.option(
    "--token",
    required=True,
    envvar="ALARM_BOT_PROBE_TOKEN",
    help="The Token configured on the platform (or ALARM_BOT_PROBE_TOKEN).",
)
@click.option("--appid", help="The account's appid; needed with --aes-key.")
@click.option(
    "--aes-key",
    envvar="ALARM_BOT_PROBE_AES_KEY",
    help="The 43-character EncodingAESKey (or ALARM_BOT_PROBE_AES_KEY).",
)
@click.option(
    "--mode",
    type=click.Choice(["plain", "compatible", "safe"]),
    help="Message mode (default: safe with --aes-key, else plain).",
)
@click.option("--event", default="VIEW", show_default=True, help="The event pushed.")
@click.option(
    "--verify", is_flag=True, help="Send the URL-verification GET (echostr) instead."
)
@click.option(
    "--public-dns/--no-public-dns",
    default=True,
    help="Also ask the guide's public resolver, 182.254.116.116.",
)
@click.option(
    "--allow-private", is_flag=True, help="Allow loopback and private addresses."
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
@LANG_OPTION
@KB_OPTION
def probe_command(
    url: str,
    token: str,
    appid: str | None,
    aes_key: str | None,
    mode: str | None,
    event: str,
    verify: bool,
    public_dns: bool,
    allow_private: bool,
    as_json: bool,
    lang: str | None,
    knowledge_dir: Path | None,
) -> None:
    """Push a harmless event to URL as the platform does, and judge the answer.

    Prints the reply the bot would post (--lang), or the JSON contract. Exits 0
    when the platform would accept the answer, 1 otherwise.
    """
    from bot import probe
    from bot.autoprobe import probe_context, probe_json, secret_pattern
    from bot.render import ReplyRenderer

    chosen = probe.MessageMode(mode or ("safe" if aes_key else "plain"))
    try:
        target = probe.ProbeTarget(
            url=url, token=token, appid=appid, aes_key=aes_key, mode=chosen, event=event
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    check = probe.check_url if verify else probe.probe_url
    public = probe.NameserverResolver(probe.PUBLIC_RESOLVER) if public_dns else None
    try:
        result = asyncio.run(
            check(target, allow_private=allow_private, public_resolver=public)
        )
    except probe.TargetRefusedError as exc:
        raise click.ClickException(str(exc)) from None
    renderer = ReplyRenderer(_knowledge(knowledge_dir), _lang(lang))
    if as_json:
        data = probe_json(result, renderer, appid)
        text = json.dumps(data, ensure_ascii=False, indent=2)
    else:
        text = renderer.render("probe", **probe_context(appid, result, renderer))
    # A server that echoes the request would put the token in the quoted body;
    # the output gets pasted into chats, so it is scrubbed as the bot's are.
    secrets = secret_pattern(s for s in (token, aes_key) if s)
    click.echo(secrets.sub("***", text) if secrets else text)
    sys.exit(0 if result.is_ok else 1)


@cli.command("logs")
@click.argument(
    "access_logs",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--error-log",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="nginx's error log (plain or gzip).",
)
@click.option("--around", required=True, help='The alarm time: "2014-12-01 20:12:00".')
@click.option(
    "--window",
    default="5m",
    show_default=True,
    help="5m, 300s, 1h30m, 1d (31 days at most); a bare number is minutes.",
)
@click.option(
    "--tz",
    default="+08:00",
    show_default=True,
    help="Zone of --around when it has none (the platform's time).",
)
@click.option(
    "--format",
    "log_format",
    help="main, combined, or a log_format string (default: detect).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@LANG_OPTION
@KB_OPTION
def logs_command(
    access_logs: tuple[Path, ...],
    error_log: Path | None,
    around: str,
    window: str,
    tz: str,
    log_format: str | None,
    as_json: bool,
    lang: str | None,
    knowledge_dir: Path | None,
) -> None:
    """Report what the nginx logs say in the alarm window.

    ACCESS_LOG files may be plain or gzip-rotated. The window starts at
    --around, the alarm's first failure; the window before it is the baseline.
    What statuses and error-log lines mean comes from the knowledge base.
    """
    from bot import logscan
    from bot.render import ReplyRenderer

    option = "--tz"  # the option being parsed, for the error message
    try:
        zone = logscan.parse_zone(tz)
        option = "--around"
        moment = logscan.parse_around(around, zone)
        option = "--window"
        span = logscan.parse_window(window)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None
    renderer = ReplyRenderer(_knowledge(knowledge_dir), _lang(lang))
    try:
        report = logscan.scan_logs(
            list(access_logs),
            around=moment,
            window=span,
            log_format=log_format,
            error_log=error_log,
        )
    except logscan.LogScanError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(renderer), ensure_ascii=False, indent=2))
    else:
        click.echo(logscan.format_report(report, renderer))


@cli.command("host")
@click.option(
    "--process",
    "process_names",
    multiple=True,
    default=("nginx",),
    show_default=True,
    help="Processes whose open files are counted; repeat for more.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@LANG_OPTION
@KB_OPTION
def host_command(
    process_names: tuple[str, ...],
    as_json: bool,
    lang: str | None,
    knowledge_dir: Path | None,
) -> None:
    """Show load, memory, open files and TCP states of this host.

    Prints the reply ``/host`` would post (--lang), or the snapshot as JSON.
    """
    from bot import host
    from bot.autoprobe import host_context, host_json
    from bot.render import ReplyRenderer

    renderer = ReplyRenderer(_knowledge(knowledge_dir), _lang(lang))
    snapshot = host.take_snapshot(process_names=process_names)
    if as_json:
        data = host_json(snapshot, renderer)
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        click.echo(renderer.render("host", **host_context(snapshot, renderer)))
