"""Tests for bot.host: a real snapshot of this machine, and the findings."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import socket

import psutil
import pytest

from bot.autoprobe import host_context, host_json
from bot.diagnosis import Finding
from bot.host import HostSnapshot, ProcessFiles, assess, take_snapshot
from bot.knowledge import Knowledge
from bot.render import ReplyRenderer

from .test_probe import english_runs


def healthy() -> HostSnapshot:
    return HostSnapshot(
        taken_at=0.0,
        cpu_count=4,
        load=(0.5, 0.4, 0.3),
        memory_total=8 * 2**30,
        memory_available=6 * 2**30,
        swap_total=2**30,
        swap_used=0,
        system_files=(1000, 100000),
        fd_limit=(65535, 65535),
        processes=(ProcessFiles("nginx", 42, 100, 102400),),
        tcp_states={"ESTABLISHED": 20, "LISTEN": 3, "TIME_WAIT": 50},
        tcp_error=None,
    )


def test_snapshot_reads_this_machine():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                snapshot = take_snapshot(process_names=(psutil.Process().name(),))
    assert snapshot.cpu_count == os.cpu_count()
    assert 0 < snapshot.memory_available <= snapshot.memory_total
    assert snapshot.fd_limit == resource.getrlimit(resource.RLIMIT_NOFILE)
    assert all(value >= 0 for value in snapshot.load)
    ours = [p for p in snapshot.processes if p.pid == os.getpid()]
    assert len(ours) == 1
    assert ours[0].open_files is not None
    assert ours[0].open_files >= 3
    assert ours[0].limit == snapshot.fd_limit[0]
    if snapshot.tcp_error is None:
        assert snapshot.tcp_states.get("ESTABLISHED", 0) >= 2
        assert snapshot.tcp_states.get("LISTEN", 0) >= 1


def render(snapshot: HostSnapshot, knowledge: Knowledge, lang: str = "zh") -> str:
    renderer = ReplyRenderer(knowledge, lang)
    return renderer.render("host", **host_context(snapshot, renderer))


def test_snapshot_to_json_is_serializable_and_has_the_reply(knowledge):
    snapshot = take_snapshot()
    data = host_json(snapshot, ReplyRenderer(knowledge, "en"))
    text = json.dumps(data)
    assert '"tcp_states"' in text
    assert data["finding_ids"] == [f.id for f in assess(snapshot)]
    assert len(data["findings"]) == len(data["finding_ids"])
    assert str(data["reply"]).startswith("🖥 This host (uptime, free, ulimit -n")


def test_healthy_host_has_no_findings(knowledge):
    assert assess(healthy()) == ()
    assert render(healthy(), knowledge).endswith("没有明显异常。")
    assert render(healthy(), knowledge, "en").endswith("Nothing stands out.")


@pytest.mark.parametrize(
    ("change", "finding", "zh"),
    [
        (
            {"load": (6.5, 3.0, 1.0)},
            Finding("host_load_high", {"load": "6.50", "cores": "4"}),
            "1 分钟负载 6.50，超过了 4 个核",
        ),
        (
            {"memory_available": 2**29, "swap_used": 2**29},
            Finding("host_memory_low", {"percent": "6", "swap_used": "0.5"}),
            "可用内存只剩 6%，swap 已用 0.5 GiB。",
        ),
        (
            {"memory_available": 2**29},
            Finding("host_memory_low", {"percent": "6", "swap_used": ""}),
            "可用内存只剩 6%。",
        ),
        (
            {"system_files": (95000, 100000)},
            Finding("host_files_system", {"used": "95000", "maximum": "100000"}),
            "全系统已打开 95000 个文件句柄，上限 100000",
        ),
        (
            {"processes": (ProcessFiles("nginx", 42, 1000, 1024),)},
            Finding(
                "host_files_process",
                {"name": "nginx", "pid": "42", "open_files": "1000", "limit": "1024"},
            ),
            "nginx 进程 42 已打开 1000 个文件，上限是 1024。",
        ),
        (
            {"fd_limit": (1024, 4096)},
            Finding("host_nofile_small", {"soft": "1024", "guide": "102400"}),
            "ulimit -n 只有 1024",
        ),
        (
            {"tcp_states": {"SYN_RECV": 500}},
            Finding("host_syn_recv", {"count": "500"}),
            "有 500 个连接停在 SYN_RECV",
        ),
        (
            {"tcp_states": {"CLOSE_WAIT": 300}},
            Finding("host_close_wait", {"count": "300"}),
            "有 300 个连接停在 CLOSE_WAIT",
        ),
        (
            {"tcp_states": {"TIME_WAIT": 30000}},
            Finding("host_time_wait", {"count": "30000"}),
            "有 30000 个连接处于 TIME_WAIT",
        ),
    ],
)
def test_each_problem_is_found_and_worded(knowledge, change, finding, zh):
    snapshot = dataclasses.replace(healthy(), **change)
    assert assess(snapshot) == (finding,)
    reply = render(snapshot, knowledge)
    assert f"值得注意：\n• {zh}" in reply
    assert english_runs(reply, list(finding.values.values())) == [], reply
    en = ReplyRenderer(knowledge, "en").finding(finding)["text"]
    assert f"What stands out:\n• {en}" in render(snapshot, knowledge, "en")


def test_unreadable_values_are_shown_as_unknown(knowledge):
    snapshot = dataclasses.replace(
        healthy(),
        processes=(ProcessFiles("nginx", 7, None, None),),
        tcp_states={},
        tcp_error="AccessDenied",
        system_files=None,
    )
    text = render(snapshot, knowledge)
    assert "nginx 7：已开 ? 个，上限 ?" in text
    assert "TCP 连接：读不到（AccessDenied）" in text
    assert assess(snapshot) == ()
