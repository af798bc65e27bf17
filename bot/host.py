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

from bot.diagnosis import Finding

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
        tcp_error: the name of the error that kept the states from being read
            (``AccessDenied``), or None.
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
        """Return the data of the ``--json`` object, without the texts.

        ``bot.autoprobe.host_json`` adds ``findings`` and ``reply``, rendered
        in a language.
        """
        data = dataclasses.asdict(self)
        data["finding_ids"] = [finding.id for finding in assess(self)]
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
        logger.debug("cannot read TCP connections: %r", exc)
        return {}, type(exc).__name__
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


def assess(snapshot: HostSnapshot) -> tuple[Finding, ...]:
    """Return what stands out in the snapshot, worst first; empty if nothing.

    The findings are worded in ``knowledge/findings.yaml`` (``host_*``).
    """
    findings: list[Finding] = []
    one_minute = snapshot.load[0]
    if one_minute > snapshot.cpu_count:
        load = {"load": f"{one_minute:.2f}", "cores": str(snapshot.cpu_count)}
        findings.append(Finding("host_load_high", load))
    share = snapshot.memory_available / snapshot.memory_total
    if share < MEMORY_AVAILABLE_MIN:
        swap = _gib(snapshot.swap_used) if snapshot.swap_used else ""
        memory = {"percent": f"{share * 100:.0f}", "swap_used": swap}
        findings.append(Finding("host_memory_low", memory))
    findings += _file_findings(snapshot)
    findings += _tcp_findings(snapshot.tcp_states)
    return tuple(findings)


def _file_findings(snapshot: HostSnapshot) -> list[Finding]:
    findings = []
    if snapshot.system_files is not None:
        used, maximum = snapshot.system_files
        if maximum and used / maximum > FILES_USED_MAX:
            system = {"used": str(used), "maximum": str(maximum)}
            findings.append(Finding("host_files_system", system))
    for process in snapshot.processes:
        if process.open_files is None or not process.limit:
            continue
        if process.open_files / process.limit > FILES_USED_MAX:
            files = {
                "name": process.name,
                "pid": str(process.pid),
                "open_files": str(process.open_files),
                "limit": str(process.limit),
            }
            findings.append(Finding("host_files_process", files))
    soft = snapshot.fd_limit[0]
    if 0 < soft < SMALL_NOFILE:
        nofile = {"soft": str(soft), "guide": str(GUIDE_NOFILE)}
        findings.append(Finding("host_nofile_small", nofile))
    return findings


_TCP_FINDINGS = (
    ("SYN_RECV", SYN_RECV_MAX, "host_syn_recv"),
    ("CLOSE_WAIT", CLOSE_WAIT_MAX, "host_close_wait"),
    ("TIME_WAIT", TIME_WAIT_MAX, "host_time_wait"),
)


def _tcp_findings(states: dict[str, int]) -> list[Finding]:
    return [
        Finding(finding_id, {"count": str(states[state])})
        for state, most, finding_id in _TCP_FINDINGS
        if states.get(state, 0) > most
    ]


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f}"
