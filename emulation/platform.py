"""What the host did while a Mininet run measured the SD-WAN: CPU per second, stalls, relay lateness.

Every site, ISP and application host of an emulated scenario shares this machine's cores. When the
machine is short of CPU, or stops (a VM's steal time), the run measures the machine: a relay late to
release a frame adds delay the scenario never asked for, a stall of 60 ms looks like a cut to a fast
monitor. The run records the platform beside the SD-WAN so its verdict can tell the two apart
(`emulation.measure.platform` judges it):

* `CpuWatch` (a thread of the runner) reads, once a second, `/proc/stat` (the host's busy and steal
  time) and the CPU time of every process descended from the runner, summed per component by command
  line: `relays` (emulation.links.relay), `agents` (patronus agent and its reflector), `tunnels`
  (wireguard-go), `traffic` (udpflow, iperf3, the HTTP client and server, the taps), `runner`
  (everything else of ours: the runner, its sampler, the stall watcher, short-lived `ip`/`wg`). Each is
  in % of the whole machine (all cores = 100 %). A process that lives less than a second is not seen
  by its component but still counts in the host's busy time.
* Relay lateness: each relay counts how late it released every frame it held
  (`emulation.links.lateness`); `CpuWatch` reads those counters each second too, so lateness is known
  per second, not only over the run.
* Host stalls come from `emulation.stallwatch` (a real-time process that only sleeps).

`raw/platform.csv` holds one row per second; `summarize` turns it, the stalls and the relays' totals
into `summary.json`'s `platform`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emulation.links import lateness
from emulation.measure.flows import nearest_rank

COMPONENTS = ("relays", "agents", "tunnels", "traffic", "runner")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_NCPU = os.cpu_count() or 1
COLUMNS = ("at", "host_busy_pct", "steal_pct", *(f"{c}_pct" for c in COMPONENTS), "relay_frames",
           "relay_late_p99_ms", "relay_late_max_ms")


def component_of(cmdline: Sequence[str], comm: str) -> str:
    """Which part of the test-bed a process of the run is, from its command line."""
    if comm == "wireguard-go" or any(a.endswith("wireguard-go") for a in cmdline[:1]):
        return "tunnels"
    joined = " ".join(cmdline[:6])
    if "emulation.links.relay" in joined:
        return "relays"
    if "patronus.agent.reflector" in joined or ("patronus" in joined and " agent" in joined):
        return "agents"
    if any(k in joined for k in ("emulation.udpflow", "emulation.traffic", "iperf3")):
        return "traffic"
    return "runner"


def _host_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat (guest time is inside user)."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    v = [int(x) for x in parts[:8]] + [0] * max(0, 8 - len(parts))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


@dataclass
class _Proc:
    ppid: int
    ticks: int
    comm: str


def _scan() -> dict[tuple[int, int], _Proc]:
    """Every process: (pid, start time) → parent, CPU ticks (user + system), comm."""
    out: dict[tuple[int, int], _Proc] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        lp, rp = stat.find("("), stat.rfind(")")
        f = stat[rp + 2:].split()
        # fields after the comm: state(0) ppid(1) ... utime(11) stime(12) ... starttime(19)
        try:
            out[(int(name), int(f[19]))] = _Proc(int(f[1]), int(f[11]) + int(f[12]), stat[lp + 1:rp])
        except (IndexError, ValueError):
            continue
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


@dataclass
class PlatformLog:
    """What `CpuWatch` saw: one row per second (COLUMNS), and each relay's last counters."""

    rows: list[list[Any]] = field(default_factory=list)
    relay_totals: dict[str, dict[str, Any]] = field(default_factory=dict)
    relay_sched: dict[str, str] = field(default_factory=dict)


class CpuWatch(threading.Thread):
    """Samples the host, the run's processes by component, and the relays' lateness, every `period_s`.

    `relays`: a callable returning {link name: counters()} (the relays' cumulative counters: frames
    held and released, and their lateness histogram per direction), called on this thread."""

    def __init__(self, root_pid: int, relays: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
                 period_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="patronus-lab-platform")
        self.root_pid = root_pid
        self.relays = relays
        self.period_s = period_s
        self.log = PlatformLog()
        self._halt = threading.Event()
        self._kind: dict[tuple[int, int], str] = {}
        self._ticks: dict[tuple[int, int], int] = {}
        self._host: tuple[int, int, int] | None = None
        self._late: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        self._host = _host_times()
        self._sample_procs(record=False)
        self._sample_relays(record=False)
        t_prev = time.time()
        while not self._halt.wait(self.period_s):
            self.sample(t_prev)
            t_prev = time.time()

    def sample(self, t_prev: float) -> None:
        now = time.time()
        busy, steal, total = _host_times()
        assert self._host is not None
        db, ds, dt = busy - self._host[0], steal - self._host[1], max(1, total - self._host[2])
        self._host = (busy, steal, total)
        comp = self._sample_procs(record=True)
        wall = max(1e-3, now - t_prev)
        scale = 100.0 / (_CLK_TCK * wall * _NCPU)
        frames, late = self._sample_relays(record=True)
        p99 = lateness.quantile_us(late, 99) if frames else None
        mx = lateness.max_us(late) if frames else None
        row = [round(now, 3), round(100.0 * db / dt, 1), round(100.0 * ds / dt, 1),
               *(round(comp.get(c, 0) * scale, 1) for c in COMPONENTS), frames,
               None if p99 is None else round(p99 / 1000.0, 3), None if mx is None else round(mx / 1000.0, 3)]
        with self._lock:
            self.log.rows.append(row)

    def _sample_procs(self, record: bool) -> dict[str, int]:
        procs = _scan()
        children: dict[int, list[tuple[int, int]]] = {}
        for key, p in procs.items():
            children.setdefault(p.ppid, []).append(key)
        ours: list[tuple[int, int]] = []
        stack = [self.root_pid]
        while stack:
            for key in children.get(stack.pop(), ()):
                ours.append(key)
                stack.append(key[0])
        used: dict[str, int] = {}
        ticks: dict[tuple[int, int], int] = {}
        for key in ours:
            p = procs[key]
            kind = self._kind.get(key)
            if kind is None:
                kind = self._kind[key] = component_of(_cmdline(key[0]), p.comm)
            ticks[key] = p.ticks
            if record:
                # a process not seen at the last sample started since: all of its time is new
                used[kind] = used.get(kind, 0) + p.ticks - self._ticks.get(key, 0)
        self._ticks = ticks
        return used

    def _sample_relays(self, record: bool) -> tuple[int, list[int]]:
        if self.relays is None:
            return 0, []
        try:
            counters = self.relays()
        except Exception:     # a relay that stopped or is busy: this second has no lateness reading
            return 0, []
        total = [0] * lateness.BUCKETS
        for name, c in counters.items():
            hist = [0] * lateness.BUCKETS
            for d in ("xy", "yx"):
                h = c.get(d, {}).get("late_us_hist")
                if isinstance(h, list) and len(h) == lateness.BUCKETS:
                    hist = [a + b for a, b in zip(hist, h, strict=True)]
            prev = self._late.get(name, [0] * lateness.BUCKETS)
            self._late[name] = hist
            with self._lock:
                self.log.relay_totals[name] = dict(c)
            if record:
                total = [a + b for a, b in zip(total, lateness.diff(hist, prev), strict=True)]
        return sum(total), total

    def stop(self) -> PlatformLog:
        self._halt.set()
        if self.is_alive():
            self.join(5)
        return self.log


def write_csv(path: Path, log: PlatformLog, t0: float) -> None:
    """raw/platform.csv: one row per second, `at` in scenario seconds."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for row in log.rows:
            w.writerow([round(row[0] - t0, 3), *row[1:]])


def _pct(values: Sequence[float], q: float) -> float | None:
    return nearest_rank(np.sort(np.asarray(values, dtype=np.float64)), q)


def summarize(log: PlatformLog, stalls_ms: Sequence[float], relay_sched: Iterable[str] = ()) -> dict[str, Any]:
    """summary.json's `platform`: CPU busy (p95, max) of the host and per component, steal, the longest
    host stall, and the relays' lateness over the run (p99 and max, ms)."""
    rows = log.rows
    col = {c: i for i, c in enumerate(COLUMNS)}

    def series(name: str) -> list[float]:
        return [float(r[col[name]]) for r in rows if r[col[name]] is not None]

    late_total = [0] * lateness.BUCKETS
    for c in log.relay_totals.values():
        for d in ("xy", "yx"):
            h = c.get(d, {}).get("late_us_hist")
            if isinstance(h, list) and len(h) == lateness.BUCKETS:
                late_total = [a + b for a, b in zip(late_total, h, strict=True)]
    p99 = lateness.quantile_us(late_total, 99)
    mx = lateness.max_us(late_total)
    busy = series("host_busy_pct")
    out: dict[str, Any] = {
        "cpus": _NCPU,
        "seconds": len(rows),
        "cpu_busy_mean_pct": round(sum(busy) / len(busy), 1) if busy else None,
        "cpu_busy_p95_pct": _pct(busy, 95),
        "cpu_busy_max_pct": max(busy) if busy else None,
        "steal_max_pct": max(series("steal_pct"), default=None),
        "components_mean_pct": {c: (round(sum(s) / len(s), 1) if (s := series(f"{c}_pct")) else None)
                                for c in COMPONENTS},
        "components_p95_pct": {c: _pct(series(f"{c}_pct"), 95) for c in COMPONENTS},
        "max_stall_ms": round(max(stalls_ms), 1) if stalls_ms else 0.0,
        "stalls": len(stalls_ms),
        "relay_late_p99_ms": None if p99 is None else round(p99 / 1000.0, 3),
        "relay_late_max_ms": None if mx is None else round(mx / 1000.0, 3),
        "relay_frames_held": sum(late_total),
    }
    sched = sorted(set(relay_sched))
    if sched:
        out["relay_sched"] = sched
    return out


def read_csv(path: Path) -> list[dict[str, float | None]]:
    """raw/platform.csv back as rows of floats (None for empty cells); [] when the file is missing."""
    if not path.exists():
        return []
    out = []
    with open(path) as fh:
        for row in csv.DictReader(fh):
            rec: dict[str, float | None] = {}
            for k, v in row.items():
                with contextlib.suppress(TypeError, ValueError):
                    rec[k] = float(v) if v not in ("", None) else None
                    continue
                rec[k] = None
            out.append(rec)
    return out
