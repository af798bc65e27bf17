from __future__ import annotations

import asyncio

from bot.metrics import Metrics, MetricsServer, serving


def test_render_is_prometheus_text() -> None:
    metrics = Metrics()
    metrics.alarms["markfail"] += 2
    metrics.alarms["request_timeout"] += 1
    metrics.replies["alarm"] += 1
    metrics.suppressed["folded"] += 5
    metrics.send_failures = 1
    metrics.queue_depth = lambda: 3
    metrics.connected = lambda: False

    text = metrics.render()

    assert "# TYPE alarm_bot_alarms_total counter" in text
    assert 'alarm_bot_alarms_total{type="markfail"} 2' in text
    assert 'alarm_bot_alarms_total{type="request_timeout"} 1' in text
    assert 'alarm_bot_replies_sent_total{kind="alarm"} 1' in text
    assert 'alarm_bot_alarms_suppressed_total{reason="folded"} 5' in text
    assert "alarm_bot_send_failures_total 1" in text
    assert "# TYPE alarm_bot_outbox_queue_depth gauge" in text
    assert "alarm_bot_outbox_queue_depth 3" in text
    assert "alarm_bot_gateway_connected 0" in text
    assert text.endswith("\n")


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.alarms['a"b\\c'] += 1

    assert 'alarm_bot_alarms_total{type="a\\"b\\\\c"} 1' in metrics.render()


async def _get(port: int, path: str, method: str = "GET") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition("\r\n\r\n")
    return head.split("\r\n")[0], body


async def test_server_serves_metrics_and_health() -> None:
    connected = [True]
    metrics = Metrics(connected=lambda: connected[0])
    metrics.alarms["markfail"] += 1
    server = MetricsServer(metrics, "127.0.0.1", 0)
    await server.start()
    try:
        status, body = await _get(server.port, "/metrics")
        assert status == "HTTP/1.1 200 OK"
        assert 'alarm_bot_alarms_total{type="markfail"} 1' in body

        assert (await _get(server.port, "/healthz"))[0] == "HTTP/1.1 200 OK"
        connected[0] = False
        unhealthy = await _get(server.port, "/healthz?verbose=1")
        assert unhealthy[0] == "HTTP/1.1 503 Service Unavailable"

        assert (await _get(server.port, "/nope"))[0] == "HTTP/1.1 404 Not Found"
        posted = await _get(server.port, "/metrics", "POST")
        assert posted[0] == "HTTP/1.1 405 Method Not Allowed"
    finally:
        await server.close()


async def test_serving_starts_and_stops_a_server_or_none() -> None:
    metrics = Metrics()
    async with serving(metrics, None) as nothing:
        assert nothing is None
    async with serving(metrics, "127.0.0.1:0") as server:
        assert server is not None
        assert (await _get(server.port, "/healthz"))[0] == "HTTP/1.1 200 OK"
