"""CPU time and memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process so far; zeros once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    # After "pid (comm)": state is field 3, utime 14, stime 15 (1-based).
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    return sum(cpu_times(pid))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pids_named(name: str) -> list[int]:
    """Every process whose command name is `name` (postgres, redis-server)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == name:
                    found.append(int(entry))
        except OSError:
            continue
    return found


def raise_fd_limit(wanted: int) -> int:
    """Raise the open-files limit toward `wanted` (up to the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class CpuWatch:
    """CPU used by named groups of processes between start() and stop(), as % of a core.

    Groups: {"node": [pid], "postgres": [...], ...}. Processes that start later (a
    PostgreSQL backend for a new connection) are found again by name at stop().
    """

    groups: dict[str, list[int]]
    by_name: dict[str, str]  # group -> process name to rescan at stop ("postgres")
    wall0: float = 0.0
    start_cpu: dict[int, float] | None = None
    start_node_sys: float = 0.0

    def start(self, now: float) -> None:
        self._rescan()
        self.wall0 = now
        self.start_cpu = {pid: cpu_seconds(pid) for pids in self.groups.values() for pid in pids}
        self.start_node_sys = sum(cpu_times(pid)[1] for pid in self.groups.get("node", []))

    def stop(self, now: float) -> dict[str, float]:
        assert self.start_cpu is not None
        self._rescan()
        wall = max(now - self.wall0, 1e-9)
        out = {}
        for group, pids in self.groups.items():
            # A process gone meanwhile (a closed PostgreSQL backend) counts as nothing.
            used = sum(max(0.0, cpu_seconds(pid) - self.start_cpu.get(pid, 0.0)) for pid in pids)
            out[group] = round(100 * used / wall, 1)
        if "node" in self.groups:
            # The node's share in the kernel: mostly a syscall or two per frame and per
            # round trip to PostgreSQL or Redis, loopback TCP included.
            sys_used = sum(cpu_times(pid)[1] for pid in self.groups["node"]) - self.start_node_sys
            out["node_sys"] = round(100 * sys_used / wall, 1)
        return out

    def _rescan(self) -> None:
        for group, name in self.by_name.items():
            self.groups[group] = sorted(set(self.groups.get(group, [])) | set(pids_named(name)))
