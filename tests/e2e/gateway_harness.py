"""Processes for end-to-end runs: the Node gateway and a bot, both on 127.0.0.1.

The gateway is ``gateway/gateway.mjs``: a Wechaty puppet-service gRPC server over
wechaty-puppet-mock, with an HTTP control endpoint that makes its mock people talk
and logs one JSON event per line. ``bench/bench_roundtrip.py`` uses this module too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[2]
GATEWAY_DIR = REPO / "gateway"
HOST = "127.0.0.1"
BOT_SELF = "bot-self"
ALARM_ROOM = "alarm-room@chatroom"
RANDOM_ROOM = "random-room@chatroom"
AT = "\u2005"  # WeChat's separator after an @name
SERVED_ROOMS = "alarm-group,ops-oncall"

# Requests to the control endpoint must never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def missing_prerequisites() -> str | None:
    """Say what is missing to run the gateway, or ``None`` when nothing is."""
    if shutil.which("node") is None:
        return "node is not installed (the end-to-end tests need Node 18 or later)"
    if not (GATEWAY_DIR / "node_modules" / "wechaty-puppet-service").is_dir():
        return "gateway/node_modules is missing: run scripts/gateway-install"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def fetch(url: str) -> tuple[int, str]:
    """GET ``url`` (no proxy); return the status and the body, errors included."""
    try:
        with _OPENER.open(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # nothing listens there (yet)
        return 0, ""


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    """Stop ``process`` with SIGTERM, and SIGKILL if it hangs past ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class Gateway:
    """One gateway process at a time on a fixed gRPC port, restartable."""

    def __init__(self, workdir: Path, token: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.token = token
        self.port = port or free_port()
        self.endpoint = f"{HOST}:{self.port}"
        self.control = ""
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "gateway-0.log"
        self._log: TextIO | None = None

    def start(self, timeout: float = 30) -> dict[str, Any]:
        """Start the gateway and return its "listening" event."""
        self.starts += 1
        self.log_path = self.workdir / f"gateway-{self.starts}.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        env = dict(os.environ, GW_PORT=str(self.port))
        env["WECHATY_PUPPET_SERVICE_TOKEN"] = self.token
        self.process = subprocess.Popen(
            ["node", str(GATEWAY_DIR / "gateway.mjs")],
            cwd=GATEWAY_DIR,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            listening: dict[str, Any] = wait_until(
                self._listening, timeout, f"the gateway on {self.endpoint}"
            )
        except BaseException:
            self.stop()
            raise
        self.control = listening["control"]
        return listening

    def _listening(self) -> dict[str, Any] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the gateway exited early:\n{self.log_text()}")
        for line in self.log_text().splitlines():
            if line.startswith("{") and '"listening"' in line:
                event: dict[str, Any] = json.loads(line)
                return event
        return None

    def stop(self, timeout: float = 10) -> int | None:
        """Stop the gateway with SIGTERM (SIGKILL if it hangs); return its status."""
        process, self.process = self.process, None
        if process is None:
            return None
        terminate(process, timeout)
        if self._log is not None:
            self._log.close()
        return process.returncode

    def restart(self) -> dict[str, Any]:
        """Stop the gateway and start a new process on the same gRPC port."""
        self.stop()
        return self.start()

    def log_text(self) -> str:
        """The current process's output so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> Any:
        """Call the control endpoint; return the decoded JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.control + path,
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with _OPENER.open(request, timeout=60) as response:
            return json.loads(response.read())

    def say(
        self,
        speaker: str,
        text: str,
        *,
        room: str | None = None,
        to: str | None = None,
        mention: tuple[str, ...] = (),
        wait_ms: int = 0,
    ) -> dict[str, Any]:
        """Make ``speaker`` say ``text`` in ``room`` or to ``to``.

        With ``wait_ms``, the answer's ``reply`` is the bot's first message in that
        conversation (with ``rtt_ms``), or ``None`` if none came in time.
        """
        body: dict[str, Any] = {"from": speaker, "text": text, "mention": list(mention)}
        body.update({"room": room} if room is not None else {"to": to})
        body["wait_ms"] = wait_ms
        answer: dict[str, Any] = self.request("POST", "/say", body)
        return answer

    def invite(self, room: str, by: str = "alice") -> str:
        """Make ``by`` invite the bot into ``room``; return the invitation id."""
        answer = self.request("POST", "/invite", {"room": room, "by": by})
        return str(answer["invitation"])

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The gateway's events after sequence number ``since``."""
        events: list[dict[str, Any]] = self.request("GET", f"/events?since={since}")[
            "events"
        ]
        return events

    def sent(
        self, since: int = 0, conversation: str | None = None
    ) -> list[dict[str, Any]]:
        """What the bot sent after ``since``, in ``conversation`` if given."""
        return [
            e
            for e in self.events(since)
            if e["event"] == "bot_send_text"
            and conversation in (None, e["conversation"])
        ]

    def wait_subscribed(self, timeout: float = 30) -> None:
        """Wait until a client has the event stream open."""
        wait_until(
            lambda: self.request("GET", "/state")["subscribed"],
            timeout,
            "a client to subscribe to the gateway",
        )


class BotProcess:
    """``alarm-bot run`` as a subprocess, its output in a file.

    Its history and knowledge backups go to ``workdir/data`` (``XDG_DATA_HOME``),
    never to the user's own data directory.
    """

    def __init__(
        self, workdir: Path, env: Mapping[str, str], command: list[str] | None = None
    ) -> None:
        self.workdir = workdir
        self.cwd = workdir / "bot-cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.data_home = workdir / "data"
        self.log_path = workdir / "bot.log"
        self.command = command or alarm_bot_command()
        self.env = _clean_environ() | {"XDG_DATA_HOME": str(self.data_home)} | dict(env)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    def start(self) -> None:
        """Start the process, in an empty working directory of its own."""
        self._log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_logged_in(self, count: int = 1, timeout: float = 60) -> None:
        """Wait until the bot has logged in ``count`` times."""

        def logged_in() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the bot exited early:\n{self.output()}")
            return self.output().count("logged in as") >= count

        wait_until(logged_in, timeout, f"login #{count} of the bot")

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; return its status."""
        assert self.process is not None
        status = self.process.wait(timeout)
        self._close_log()
        return status

    def stop(self, timeout: float = 15) -> int | None:
        """Stop the bot with SIGTERM (SIGKILL if it hangs); return its status."""
        process, self.process = self.process, None
        if process is None:
            return None
        terminate(process, timeout)
        self._close_log()
        return process.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self) -> str:
        """What the bot printed so far (stdout and stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def alarm_bot_command() -> list[str]:
    """The installed ``alarm-bot run`` beside this interpreter, else ``-m bot``."""
    script = Path(sys.executable).with_name("alarm-bot")
    if script.exists():
        return [str(script), "run"]
    return [sys.executable, "-m", "bot", "run"]


def _clean_environ() -> dict[str, str]:
    """This environment without any bot, Wechaty or cache settings."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ALARM_BOT_", "WECHATY_")) and name != "CACHE_DIR"
    }


@dataclass
class World:
    """A gateway and a bot connected to it."""

    gateway: Gateway
    bot: BotProcess

    def diagnostics(self) -> str:
        """Both processes' output, for assertion messages."""
        return (
            f"\n--- gateway\n{self.gateway.log_text()[-4000:]}"
            f"\n--- bot\n{self.bot.output()[-4000:]}"
        )


def bot_environ(gateway: Gateway, token: str | None = None) -> dict[str, str]:
    """The environment that points ``alarm-bot run`` at ``gateway``."""
    return {
        "WECHATY_PUPPET_SERVICE_ENDPOINT": gateway.endpoint,
        "WECHATY_PUPPET_SERVICE_TOKEN": token or gateway.token,
        "ALARM_BOT_ROOMS": SERVED_ROOMS,
    }


def start_world(
    workdir: Path, args: tuple[str, ...] = (), env: Mapping[str, str] | None = None
) -> World:
    """Start a gateway and a bot, and wait until the bot is logged in.

    Args:
        workdir: where both keep their files.
        args: more options for ``alarm-bot run``.
        env: more environment for the bot.
    """
    gateway = Gateway(workdir, token=f"insecure_e2e_{os.getpid()}_{workdir.name}")
    gateway.start()
    command = [*alarm_bot_command(), *args]
    bot = BotProcess(workdir, bot_environ(gateway) | dict(env or {}), command)
    world = World(gateway, bot)
    try:
        bot.start()
        bot.wait_logged_in()
        gateway.wait_subscribed()
    except BaseException:
        stop_world(world)
        raise
    return world


def stop_world(world: World) -> None:
    """Stop the bot, then the gateway."""
    world.bot.stop()
    world.gateway.stop()
