"""What the processes under measurement used: their memory (peak RSS, sampled) and their CPU."""

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def _status_kb(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after its last ')' are plain.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root: int, parents: Mapping[int, int] | None = None) -> list[int]:
    """`root` and its descendants."""
    parents = _parents() if parents is None else parents
    tree = [root]
    for pid in tree:
        tree.extend(child for child, parent in parents.items() if parent == pid)
    return tree


@dataclass
class Peak:
    rss_kb: int = 0  # the largest sampled sum of VmRSS over the process tree
    hwm_kb: int = 0  # the sum of each process's VmHWM (its own peak), an upper bound of rss_kb
    processes: int = 0

    @property
    def rss_mb(self) -> float:
        return round(self.rss_kb / 1024, 1)

    @property
    def hwm_mb(self) -> float:
        return round(self.hwm_kb / 1024, 1)


@dataclass
class RssSampler:
    """Samples VmRSS of named process trees every `interval` seconds, in a thread."""

    interval: float = 0.25
    peaks: dict[str, Peak] = field(default_factory=dict)
    _roots: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def track(self, name: str, pid: int) -> None:
        """Sample the tree of `pid` as `name`, from a new peak (a name tracked again starts afresh)."""
        with self._lock:
            self._roots[name] = pid
            self.peaks[name] = Peak()

    def untrack(self, name: str) -> Peak:
        """Stop sampling `name` (sampled once more first) and return its peak."""
        self.sample()
        with self._lock:
            self._roots.pop(name, None)
            return self.peaks[name]

    def sample(self) -> None:
        with self._lock:
            roots = dict(self._roots)
        parents = _parents()
        for name, root in roots.items():
            pids = process_tree(root, parents)
            rss = sum(_status_kb(pid, "VmRSS") for pid in pids)
            hwm = sum(_status_kb(pid, "VmHWM") for pid in pids)
            with self._lock:
                peak = self.peaks[name]
                peak.rss_kb = max(peak.rss_kb, rss)
                peak.hwm_kb = max(peak.hwm_kb, hwm)
                peak.processes = max(peak.processes, len(pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> "RssSampler":
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --- CPU time, to see which process bounds a figure ---

_TICK = os.sysconf("SC_CLK_TCK")
#: The local services: command name, and a word of the command line (rabbitmqctl is a beam.smp too).
#: Their CPU time includes what other users of this machine ask of them.
SYSTEM_SERVICES = {
    "mariadb": ("mariadbd", ""),
    "redis": ("redis-server", ""),
    "rabbitmq": ("beam.smp", "rabbit boot"),
}


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def pids_named(comm: str, cmdline_has: str = "") -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != comm:
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if cmdline_has not in cmdline:
                    continue
            except OSError:
                continue
            found.append(int(entry.name))
    return found


def _machine_seconds() -> tuple[float, float]:
    """CPU seconds of the whole machine (all cores): busy (idle, iowait excluded), and taken by the host."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / _TICK, steal / _TICK


def cpu_snapshot(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of the given process trees, the local services, this process and its children."""
    parents = _parents()
    snap = {
        name: sum(_cpu_seconds(pid) for pid in process_tree(root, parents)) for name, root in roots.items()
    }
    for name, (comm, word) in SYSTEM_SERVICES.items():
        snap[name] = sum(_cpu_seconds(pid) for pid in pids_named(comm, word))
    times = os.times()
    snap["bench_client"] = times.user + times.system
    snap["load_generator"] = times.children_user + times.children_system  # wrk, once waited for
    snap["machine"], snap["steal"] = _machine_seconds()
    snap["wall"] = time.monotonic()
    return snap


def cpu_cores(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Cores used on average between two snapshots, by process; `other` is everything not named, `machine`
    the whole machine's busy cores, `steal` what the hypervisor took (not counted in `machine`)."""
    wall = after["wall"] - before["wall"]
    cores = {
        # A process that exited in between takes its time with it: never below zero.
        name: round(max(after[name] - before.get(name, 0.0), 0.0) / wall, 3)
        for name in after
        if name not in ("wall", "machine", "steal")
    }
    machine = (after["machine"] - before["machine"]) / wall
    cores["other"] = round(max(machine - sum(cores.values()), 0.0), 3)
    cores["machine"] = round(machine, 3)
    cores["steal"] = round((after["steal"] - before["steal"]) / wall, 3)
    return cores
