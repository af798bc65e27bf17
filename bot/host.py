"""A snapshot of this host's load, memory, open files and TCP states (psutil).

It is the guide's appendix in one screen: ``uptime`` (load against cores),
``free`` (memory), ``ulimit -n`` and the nginx workers' open files, and the
``netstat -n | awk ...`` count of TCP connection states.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

FILE_NR = Path("/proc/sys/fs/file-nr")
GUIDE_NOFILE = 102400
"""The guide's example for ``worker_rlimit_nofile`` and ``worker_connections``."""

# Thresholds for what stands out; the guide gives the load one, the rest are
# rules of thumb for a single callback host.
MEMORY_AVAILABLE_MIN = 0.10
FILES_USED_MAX = 0.80
SMALL_NOFILE = 4096
SYN_RECV_MAX = 100
CLOSE_WAIT_MAX = 100
TIME_WAIT_MAX = 20000


@dataclass(frozen=True, slots=True)
class ProcessFiles:
    """Open files of one process against its limit (None where not readable)."""

    name: str
    pid: int
    open_files: int | None
    limit: int | None


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """The host's state at one moment.

    Attributes:
        taken_at: epoch seconds.
        cpu_count: logical cores.
        load: the 1, 5 and 15-minute load averages.
        memory_total: bytes of RAM.
        memory_available: bytes available without swapping.
        swap_total: bytes of swap.
        swap_used: bytes of swap in use.
        system_files: (open, maximum) file handles of the whole system, or None.
        fd_limit: this process's (soft, hard) ``ulimit -n``.
        processes: the watched processes (nginx) with their open files.
        tcp_states: TCP connections per state, as netstat names them.
        tcp_error: why the states could not be read, or None.
    """

    taken_at: float
    cpu_count: int
    load: tuple[float, float, float]
    memory_total: int
    memory_available: int
    swap_total: int
    swap_used: int
    system_files: tuple[int, int] | None
    fd_limit: tuple[int, int]
    processes: tuple[ProcessFiles, ...]
    tcp_states: dict[str, int]
    tcp_error: str | None

    def to_json(self) -> dict[str, object]:
        """Return the ``--json`` object; ``reply`` is the human-readable text."""
        data = dataclasses.asdict(self)
        data["findings"] = list(assess(self))
        data["reply"] = format_snapshot(self)
        return data


def take_snapshot(*, process_names: Sequence[str] = ("nginx",)) -> HostSnapshot:
    """Read the host's state now.

    Args:
        process_names: processes whose open files are counted (nginx workers).
    """
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    states, error = _tcp_states()
    load = psutil.getloadavg()
    return HostSnapshot(
        taken_at=time.time(),
        cpu_count=psutil.cpu_count() or 1,
        load=(load[0], load[1], load[2]),
        memory_total=memory.total,
        memory_available=memory.available,
        swap_total=swap.total,
        swap_used=swap.used,
        system_files=_system_files(),
        fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE),
        processes=_processes(process_names),
        tcp_states=states,
        tcp_error=error,
    )


def _tcp_states() -> tuple[dict[str, int], str | None]:
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError) as exc:
        logger.debug("cannot read TCP connections: %s", exc)
        return {}, f"cannot read TCP connections: {exc}"
    counts = collections.Counter(c.status for c in connections)
    return dict(counts.most_common()), None


def _system_files() -> tuple[int, int] | None:
    try:
        allocated, _, maximum = FILE_NR.read_text().split()
        return int(allocated), int(maximum)
    except (OSError, ValueError):
        return None


def _processes(names: Sequence[str]) -> tuple[ProcessFiles, ...]:
    found = []
    for process in psutil.process_iter(["name"]):
        name = process.info["name"] or ""
        if name not in names:
            continue
        try:
            open_files: int | None = process.num_fds()
            limit: int | None = process.rlimit(psutil.RLIMIT_NOFILE)[0]
        except (psutil.Error, AttributeError):
            open_files = limit = None
        found.append(ProcessFiles(name, process.pid, open_files, limit))
    return tuple(found)


def assess(snapshot: HostSnapshot) -> tuple[str, ...]:
    """Return what stands out in the snapshot, worst first; empty if nothing."""
    findings: list[str] = []
    one_minute = snapshot.load[0]
    if one_minute > snapshot.cpu_count:
        findings.append(
            f"Load {one_minute:.2f} is above the {snapshot.cpu_count} cores: "
            "processes queue for the CPU, so answers slow down (request timeouts)."
        )
    share = snapshot.memory_available / snapshot.memory_total
    if share < MEMORY_AVAILABLE_MIN:
        swapping = ""
        if snapshot.swap_used:
            swapping = f", and {_size(snapshot.swap_used)} of swap is in use"
        findings.append(f"Only {share:.0%} of memory is available{swapping}.")
    findings += _file_findings(snapshot)
    findings += _tcp_findings(snapshot.tcp_states)
    return tuple(findings)


def _file_findings(snapshot: HostSnapshot) -> list[str]:
    findings = []
    if snapshot.system_files is not None:
        used, maximum = snapshot.system_files
        if maximum and used / maximum > FILES_USED_MAX:
            findings.append(
                f"The system has {used} of {maximum} file handles open: raise "
                "fs.file-max."
            )
    for process in snapshot.processes:
        if process.open_files is None or not process.limit:
            continue
        if process.open_files / process.limit > FILES_USED_MAX:
            findings.append(
                f"{process.name} {process.pid} has {process.open_files} of its "
                f"{process.limit} files open: raise worker_rlimit_nofile."
            )
    soft = snapshot.fd_limit[0]
    if 0 < soft < SMALL_NOFILE:
        findings.append(
            f"ulimit -n is {soft}: each connection takes a file, and the guide's "
            f"example allows {GUIDE_NOFILE}."
        )
    return findings


def _tcp_findings(states: dict[str, int]) -> list[str]:
    findings = []
    if states.get("SYN_RECV", 0) > SYN_RECV_MAX:
        findings.append(
            f"{states['SYN_RECV']} connections wait in SYN_RECV: the accept queue "
            "is full or a SYN flood is on; new connections time out."
        )
    if states.get("CLOSE_WAIT", 0) > CLOSE_WAIT_MAX:
        findings.append(
            f"{states['CLOSE_WAIT']} connections sit in CLOSE_WAIT: the application "
            "does not close the sockets its peers closed (a leak)."
        )
    if states.get("TIME_WAIT", 0) > TIME_WAIT_MAX:
        findings.append(
            f"{states['TIME_WAIT']} connections in TIME_WAIT: many short "
            "connections; use keepalive to the upstream."
        )
    return findings


def format_snapshot(snapshot: HostSnapshot) -> str:
    """Return the human-readable snapshot (English for now).

    NOTE: this is the one place of this text; it moves to knowledge/templates
    with the chat command.
    """
    load = ", ".join(f"{value:.2f}" for value in snapshot.load)
    soft, hard = snapshot.fd_limit
    lines = [
        f"load (1, 5, 15 min): {load} on {snapshot.cpu_count} cores",
        f"memory: {_size(snapshot.memory_available)} available of "
        f"{_size(snapshot.memory_total)}; swap {_size(snapshot.swap_used)} used of "
        f"{_size(snapshot.swap_total)}",
        f"open files: ulimit -n {soft} (hard {hard})"
        + (
            f"; system {snapshot.system_files[0]} of {snapshot.system_files[1]}"
            if snapshot.system_files
            else ""
        ),
    ]
    lines += [
        f"  {p.name} {p.pid}: {_known(p.open_files)} of {_known(p.limit)} files"
        for p in snapshot.processes
    ]
    if snapshot.tcp_error:
        lines.append(f"tcp: {snapshot.tcp_error}")
    else:
        counted = ", ".join(f"{k} {v}" for k, v in snapshot.tcp_states.items())
        lines.append("tcp: " + (counted or "no connections"))
    findings = assess(snapshot)
    lines += [f"finding: {text}" for text in findings] or [
        "finding: nothing stands out"
    ]
    return "\n".join(lines)


def _known(value: int | None) -> str:
    return "?" if value is None else str(value)


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"
