"""This module counts what the bot does and serves it over HTTP.

``Metrics`` holds the counters the pipeline and the outbox bump; ``render``
writes them in the Prometheus text format. ``MetricsServer`` is a tiny asyncio
HTTP server for ``/metrics`` and ``/healthz`` (200 only when the chat channel is
connected and logged in, else 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_READ_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Metrics:
    """The bot's counters, and hooks for the values others own.

    Attributes:
        alarms: alarms received, by type.
        replies: messages sent, by kind.
        suppressed: alarms not answered on their own, by reason.
        send_failures: messages given up on after every retry.
        queue_depth: the outbox's pending messages (set by the outbox).
        connected: whether the chat channel is connected and logged in.
    """

    alarms: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)
    send_failures: int = 0
    queue_depth: Callable[[], int] = lambda: 0
    connected: Callable[[], bool] = lambda: True

    def render(self) -> str:
        """Return every metric in the Prometheus text exposition format."""
        lines: list[str] = []
        _counter(
            lines, "alarms_total", "Alarms received, by type.", "type", self.alarms
        )
        _counter(
            lines, "replies_sent_total", "Messages sent, by kind.", "kind", self.replies
        )
        _counter(
            lines,
            "alarms_suppressed_total",
            "Alarms not answered on their own, by reason.",
            "reason",
            self.suppressed,
        )
        _single(
            lines,
            "send_failures_total",
            "counter",
            "Messages given up on after every retry.",
            self.send_failures,
        )
        _single(
            lines,
            "outbox_queue_depth",
            "gauge",
            "Messages waiting in the outbox.",
            self.queue_depth(),
        )
        _single(
            lines,
            "gateway_connected",
            "gauge",
            "1 when the chat gateway is connected and logged in.",
            int(self.connected()),
        )
        return "\n".join(lines) + "\n"


def _counter(
    lines: list[str], name: str, help_text: str, label: str, values: Counter[str]
) -> None:
    lines += [
        f"# HELP alarm_bot_{name} {help_text}",
        f"# TYPE alarm_bot_{name} counter",
    ]
    for key in sorted(values):
        lines.append(f'alarm_bot_{name}{{{label}="{_escape(key)}"}} {values[key]}')


def _single(lines: list[str], name: str, kind: str, help_text: str, value: int) -> None:
    lines += [
        f"# HELP alarm_bot_{name} {help_text}",
        f"# TYPE alarm_bot_{name} {kind}",
        f"alarm_bot_{name} {value}",
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on a host and port.

    Args:
        metrics: the counters to serve.
        host: the address to listen on.
        port: the port; 0 picks a free one (see ``port`` after ``start``).
    """

    def __init__(
        self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("serving /metrics and /healthz on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            status, body = self.respond(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            logger.debug("metrics request dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def respond(self, method: str, path: str) -> tuple[str, bytes]:
        """Return the status line and body for one request."""
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"method not allowed\n"
        if path == "/metrics":
            return "200 OK", self.metrics.render().encode()
        if path == "/healthz":
            if self.metrics.connected():
                return "200 OK", b"ok\n"
            return "503 Service Unavailable", b"not connected\n"
        return "404 Not Found", b"not found: try /metrics or /healthz\n"


@contextlib.asynccontextmanager
async def serving(
    metrics: Metrics, listen: str | None
) -> AsyncIterator[MetricsServer | None]:
    """Serve ``metrics`` on ``listen`` (``host:port``) while inside; ``None``
    serves nothing."""
    if listen is None:
        yield None
        return
    host, _, port = listen.rpartition(":")
    server = MetricsServer(metrics, host.strip("[]"), int(port))
    await server.start()
    try:
        yield server
    finally:
        await server.close()
