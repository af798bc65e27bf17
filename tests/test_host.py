"""Tests for bot.host: a real snapshot of this machine, and the findings."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import socket

import psutil
import pytest

from bot.host import HostSnapshot, ProcessFiles, assess, format_snapshot, take_snapshot


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


def test_snapshot_to_json_is_serializable_and_has_the_reply():
    data = take_snapshot().to_json()
    text = json.dumps(data)
    assert '"tcp_states"' in text
    assert isinstance(data["findings"], list)
    assert str(data["reply"]).startswith("load (1, 5, 15 min): ")


def test_healthy_host_has_no_findings():
    assert assess(healthy()) == ()
    assert format_snapshot(healthy()).endswith("finding: nothing stands out")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"load": (6.5, 3.0, 1.0)}, "Load 6.50 is above the 4 cores"),
        (
            {"memory_available": 2**29, "swap_used": 2**29},
            "Only 6% of memory is available, and 0.5 GiB of swap is in use.",
        ),
        ({"system_files": (95000, 100000)}, "95000 of 100000 file handles"),
        (
            {"processes": (ProcessFiles("nginx", 42, 1000, 1024),)},
            "nginx 42 has 1000 of its 1024 files open",
        ),
        ({"fd_limit": (1024, 4096)}, "ulimit -n is 1024"),
        ({"tcp_states": {"SYN_RECV": 500}}, "500 connections wait in SYN_RECV"),
        ({"tcp_states": {"CLOSE_WAIT": 300}}, "300 connections sit in CLOSE_WAIT"),
        ({"tcp_states": {"TIME_WAIT": 30000}}, "30000 connections in TIME_WAIT"),
    ],
)
def test_each_problem_is_found(change, expected):
    snapshot = dataclasses.replace(healthy(), **change)
    findings = assess(snapshot)
    assert len(findings) == 1
    assert expected in findings[0]
    assert f"finding: {findings[0]}" in format_snapshot(snapshot)


def test_unreadable_values_are_shown_as_unknown():
    snapshot = dataclasses.replace(
        healthy(),
        processes=(ProcessFiles("nginx", 7, None, None),),
        tcp_states={},
        tcp_error="cannot read TCP connections: denied",
        system_files=None,
    )
    text = format_snapshot(snapshot)
    assert "nginx 7: ? of ? files" in text
    assert "tcp: cannot read TCP connections: denied" in text
    assert assess(snapshot) == ()
