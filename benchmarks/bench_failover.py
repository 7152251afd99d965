"""Failover gap of a live 1,000 packets/s UDP flow when its uplink fails. Goal: p95 ≤ 300 ms (target 100 ms).

Two real agents in network namespaces (`emulation/netns_lab.py`), `fast` monitor profile (20 ms probes),
one policy (`lowest_cost`, so the flow starts on a local isp1 path) and a short failback hold. One
continuous flow hq-host → br-host (`emulation/udpflow.py`) runs for the whole benchmark. Each trial:

1. the flow's current path (hq agent `/flows`, id `br:<local uplink>-<remote uplink>`) names the uplink;
2. that uplink fails and the wall time is noted (just before the command, whose own latency is
   `cut_command_ms`);
3. wait until the router has the flow on another path and br-host is receiving again;
4. restore, wait for the path Up and the failback (the flow on its first path again), and for every
   path Up with a clean loss window, then the next trial.

How the uplink fails. The figure (`value`, `gaps_ms`, `lost_packets`, ...) is an ISP failure beyond the
router, as the test-bed cuts a link (a relay with `cut: true` drops every frame): the core drops
everything to and from hq's uplink (`TwoSiteLab.cut(..., "drop")`, an nftables drop in the core's
forward path). hq's link keeps its carrier, its packets leave and vanish: every packet sent during the
outage is lost, and counted. The second figure, `link_down_variant`, is the same trials with the core
side of the veth set down instead (`"down"`): hq's side loses carrier and holds the outage's packets in
its queue until the restore, so they arrive late, not lost (a local link failure, not an ISP's; kept to
show the difference, not as the benchmark).

Afterwards the receiver's arrivals give, per trial, the longest gap between consecutive arrivals in
[cut - 0.1 s, min(cut + 5 s, restore)]: the restore only happens once arrivals have resumed, so the
failover gap is wholly inside, and the failback (which moves the flow once more) is kept out of it and
reported on its own (`failback_gaps_ms`). Detection time per trial is the hq agent's
`PathStatusChanged` → down event for the cut path, its `at` minus the cut time; `first_probe_lost_ms`
is its `ProbeLost` for that path (the first probe the cut took, given up on).

Also reported: packets lost (sent in the window and never received) and packets *late* (> 50 ms one
way) per trial, and `unplanned_events`: path Down / failover events that no cut explains (e.g. every
path declared Down at once after an agent stall). A trial starts only when the flow is on its home path
again, so an unplanned move between trials does not derail the run.

`PATRONUS_BENCH_TRIALS` sets the number of trials (default 20), `PATRONUS_BENCH_VARIANT_TRIALS` those of
the link-down variant (default 10; 0 leaves it out).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write
from emulation.netns_lab import TOKEN, TwoSiteLab, wait_for

ROOT = Path(__file__).resolve().parent.parent
H = {"Authorization": f"Bearer {TOKEN}"}
POLICIES = [{"name": "Default", "priority": 100, "preference": "lowest_cost"}]
ROUTER = {"failback_hold": "2s", "failover_cooldown": "0.5s"}
MONITOR = "fast"
DPORT, SPORT = 5002, 45002
WINDOW_BEFORE_S, WINDOW_AFTER_S = 0.1, 5.0
LATE_MS = 50.0


# -- lab helpers (shared with bench_probe_overhead) ----------------------------------------------------

class all_cores:
    """The harness pins itself to one core and children inherit that: give the lab's agents,
    wireguard-go and the flow every core for the duration, then pin back."""

    def __enter__(self) -> None:
        self.saved: set[int] | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self.saved)


def other_labs() -> int:
    """How many other netns labs are running right now (they share this machine's CPUs)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return len({line.split("-", 1)[0] for line in out.splitlines() if line.startswith("pt") and "-" in line})


def new_lab(workdir: Path) -> TwoSiteLab:
    return TwoSiteLab.fresh(workdir)


def check_identity(lab: TwoSiteLab) -> None:
    """Each site's API is our agent (not another lab's that shares an address)."""
    for s, info in lab.sites.items():
        got = lab.api(s, "/site")
        if got.get("name") != s or got.get("id") != info.id:
            raise RuntimeError(f"the API at {info.api} is not our {s} agent: {got}")






def start_and_wait(lab: TwoSiteLab, **overrides: Any) -> None:
    """Start both agents and wait for every path Up with no loss and a handshake on every tunnel."""
    for s in ("hq", "br"):
        lab.start_agent(s, **overrides)
    wait_for(lambda: lab.all_up("hq") and lab.all_up("br"), 40, "every path Up (loss 0) at both sites")
    check_identity(lab)
    wait_for(lambda: all(len(hs := lab.handshakes(s)) == 4 and all(t > 0 for t in hs) for s in ("hq", "br")),
             20, "a WireGuard handshake on every tunnel")


def agent_log_tails(lab: TwoSiteLab) -> str:
    return "\n".join(f"--- agent {s} log (tail) ---\n{lab.agent_log(s)[-2000:]}" for s in lab.sites)


# -- the flow ----------------------------------------------------------------------------------------

class Flow:
    """One continuous 1,000 packets/s flow hq-host → br-host; stopped (SIGTERM) by `stop()`."""

    def __init__(self, lab: TwoSiteLab, dport: int, sport: int, max_duration_s: float) -> None:
        self.lab = lab
        self.out = lab.workdir / f"arrivals-{dport}.json"
        ready = self.out.with_suffix(".ready")
        br, hq = lab.sites["br"], lab.sites["hq"]
        self.send: subprocess.Popen[str] | None = None
        self.recv = subprocess.Popen(["ip", "netns", "exec", br.host_ns, sys.executable, "-m", "emulation.udpflow",
                                      "recv", "--port", str(dport), "--out", str(self.out), "--ready", str(ready)],
                                     stdout=subprocess.DEVNULL, cwd=ROOT)
        try:
            wait_for(ready.exists, 10, "the flow receiver")
            self.send = subprocess.Popen(["ip", "netns", "exec", hq.host_ns, sys.executable, "-m", "emulation.udpflow",
                                          "send", "--to", f"{br.host_ip}:{dport}", "--rate", "1000",
                                          "--duration", str(max_duration_s), "--sport", str(sport)],
                                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> tuple[int, list[list[int]]]:
        """Stop sender then receiver; return (packets sent, arrivals [seq, sent_ns, received_ns])."""
        assert self.send is not None
        self.send.terminate()
        out, _ = self.send.communicate(timeout=30)
        time.sleep(0.2)                      # the last datagrams in flight
        self.recv.terminate()
        self.recv.wait(30)
        return json.loads(out)["sent"], json.loads(self.out.read_text())["arrivals"]

    def kill(self) -> None:
        for p in (self.send, self.recv):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)


def rx_packets(lab: TwoSiteLab) -> int:
    """Packets received by br-host's LAN interface."""
    return int(subprocess.run(["ip", "netns", "exec", lab.sites["br"].host_ns, "cat",
                               "/sys/class/net/eth0/statistics/rx_packets"],
                              capture_output=True, text=True, check=True).stdout)


def flow_path(lab: TwoSiteLab) -> str | None:
    for f in lab.api("hq", "/flows"):
        if f["dst_port"] == DPORT and f["dst_ip"] == lab.sites["br"].host_ip and f["src_port"] == SPORT:
            return str(f["path"]) if f["path"] else None
    return None


def receiving(lab: TwoSiteLab, n: int = 50, timeout_s: float = 5.0, what: str = "arrivals at br-host") -> None:
    base = rx_packets(lab)
    wait_for(lambda: rx_packets(lab) >= base + n, timeout_s, what, interval_s=0.01)


def uplink_of(path_id: str) -> str:
    return path_id.split(":", 1)[1].split("-", 1)[0]


# -- analysis ----------------------------------------------------------------------------------------

def longest_gap(recv_ns: list[int], since_ns: int, until_ns: int) -> tuple[float, int | None]:
    """Longest interval (ms) between consecutive arrivals in [since, until] (sorted receive times),
    and the receive time (ns) of the arrival that opens it."""
    lo, hi = bisect.bisect_left(recv_ns, since_ns), bisect.bisect_right(recv_ns, until_ns)
    w = recv_ns[lo:hi]
    if len(w) < 2:
        return float("inf"), None
    gap, at = max((b - a, a) for a, b in itertools.pairwise(w))
    return gap / 1e6, at


def lost_and_late(arrivals: list[list[int]], since_ns: int, until_ns: int) -> tuple[int, int, float]:
    """Of the packets sent in [since, until]: how many never arrived, how many arrived more than
    LATE_MS after being sent (held in a queue on the dead uplink and delivered when it came back),
    and the largest one-way delay (ms)."""
    w = [a for a in arrivals if since_ns <= a[1] <= until_ns]
    seqs = sorted({a[0] for a in w})
    lost = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
    delays = [(a[2] - a[1]) / 1e6 for a in w]
    return lost, sum(d > LATE_MS for d in delays), round(max(delays, default=0.0), 2)


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, -(-len(s) * q // 100) - 1))
    return s[int(k)]


# -- the benchmark -----------------------------------------------------------------------------------

def collect_events(lab: TwoSiteLab, seen: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """hq's recent events, also merged into `seen` (the agent keeps the last 10,000 only)."""
    events = lab.api("hq", "/events?limit=10000")
    for e in events:
        seen[json.dumps(e, sort_keys=True)] = e
    return events  # type: ignore[no-any-return]


def one_trial(lab: TwoSiteLab, i: int, trials: int, home: str, seen: dict[str, dict[str, Any]],
              mode: str) -> dict[str, Any]:
    # an unplanned move between trials (counted from the events afterwards) ends with a failback
    first = wait_for(lambda: (p := flow_path(lab)) == home and p, 20, f"trial {i}: the flow on {home}")
    up = uplink_of(first)
    t_cut = time.time()
    lab.cut("hq", up, mode)
    t_cut_done = time.time()
    moved = wait_for(lambda: (p := flow_path(lab)) != first and p, 10, f"trial {i}: the flow off {first}",
                     interval_s=0.01)
    receiving(lab, 50, 10, f"trial {i}: arrivals resumed on {moved}")
    t_restore = time.time()
    lab.restore("hq", up, mode)
    wait_for(lambda: lab.paths("hq")[first]["status"] == "up", 15, f"trial {i}: {first} Up again")
    wait_for(lambda: flow_path(lab) == first, 15, f"trial {i}: the flow back on {first}")
    t_back = time.time()
    wait_for(lambda: lab.all_up("hq") and lab.all_up("br"), 20, f"trial {i}: every path Up (loss 0)")
    receiving(lab, 100, 10, f"trial {i}: arrivals after the failback")
    events = collect_events(lab, seen)
    downs = [e["at"] for e in events if e["kind"] == "PathStatusChanged" and e.get("path_id") == first
             and e.get("new") == "down" and t_cut - 0.05 <= e["at"] <= t_restore]
    failovers = sorted((e["at"], e.get("reason")) for e in events
                       if e["kind"] == "FailoverTriggered" and t_cut - 0.05 <= e["at"] <= t_restore)
    failbacks = [e["at"] for e in events if e["kind"] == "Failback" and e["at"] >= t_restore]
    lost = [e["at"] for e in events if e["kind"] == "ProbeLost" and e.get("path_id") == first
            and t_cut <= e["at"] <= t_restore]
    rec = {"mode": mode, "cut_path": first, "uplink": up, "moved_to": moved, "t_cut": t_cut, "t_restore": t_restore,
           "t_back": t_back, "t_failback_event": min(failbacks) if failbacks else None,
           "detection_ms": round((min(downs) - t_cut) * 1000, 1) if downs else None,
           "first_probe_lost_ms": round((min(lost) - t_cut) * 1000, 1) if lost else None,
           "failover_event_ms": round((failovers[0][0] - t_cut) * 1000, 1) if failovers else None,
           "failover_reason": failovers[0][1] if failovers else None,
           "cut_command_ms": round((t_cut_done - t_cut) * 1000, 1)}
    print(f"    {mode} trial {i + 1:>2}/{trials}: {first} → {moved}, detection {rec['detection_ms']} ms, "
          f"resumed after {(t_restore - t_cut) * 1000:.0f} ms, failback {t_back - t_restore:.2f} s after the restore",
          flush=True)
    return rec


def unplanned(events: list[dict[str, Any]], recs: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """Failovers and path status changes that no cut explains: a path going Down or a flow moved
    (FailoverTriggered) outside [cut - 50 ms, restore], or a path of another uplink changing at all."""
    out = []
    for e in sorted(events, key=lambda e: e["at"]):
        if e["kind"] not in ("FailoverTriggered", "PathStatusChanged") or e["at"] < t0:
            continue
        explained = False
        for r in recs:
            on_cut_uplink = e["kind"] == "FailoverTriggered" or uplink_of(str(e.get("path_id"))) == r["uplink"]
            if on_cut_uplink and r["t_cut"] - 0.05 <= e["at"] <= r["t_restore"]:
                explained = True          # the cut: paths of that uplink Down, the flow moved
            elif (e["kind"] == "PathStatusChanged" and on_cut_uplink and e.get("new") == "up"
                  and r["t_restore"] <= e["at"] <= r["t_back"] + 1.0):
                explained = True          # the restore: those paths Up again
        if not explained:
            out.append({"t_s": round(e["at"] - t0, 3), **{k: e.get(k) for k in
                        ("kind", "path_id", "old", "new", "reason", "from_path", "to_path") if e.get(k) is not None}})
    return out


def run_trials(lab: TwoSiteLab, phases: list[tuple[str, int]]) -> dict[str, Any]:
    """The trials of every (cut mode, count) phase, one after another, on one lab and one flow."""
    start_and_wait(lab, monitor=MONITOR, policies=POLICIES, router=ROUTER)
    flow = Flow(lab, DPORT, SPORT, max_duration_s=3600)
    seen: dict[str, dict[str, Any]] = {}
    try:
        home = wait_for(lambda: flow_path(lab), 10, "the flow in hq's flow table")
        receiving(lab, 200, what="the flow arriving at br-host")
        t0 = time.time()
        recs = [one_trial(lab, i, n, home, seen, mode) for mode, n in phases for i in range(n)]
        collect_events(lab, seen)
        sent, arrivals = flow.stop()
    except BaseException:
        flow.kill()
        raise
    return {"home": home, "trials": recs, "sent": sent, "arrivals": arrivals,
            "unplanned": unplanned(list(seen.values()), recs, t0)}


def trial_figures(recs: list[dict[str, Any]], arrivals: list[list[int]]) -> list[dict[str, Any]]:
    """Per trial (in run order): the failover gap, packets lost and late, the largest one-way delay, and
    the failback's gap and losses (until the next trial's window, or the last arrival)."""
    recv_ns = sorted(a[2] for a in arrivals)
    out = []
    for k, r in enumerate(recs):
        cut_ns = int(r["t_cut"] * 1e9)
        start_ns = cut_ns - int(WINDOW_BEFORE_S * 1e9)
        end_ns = min(int((r["t_cut"] + WINDOW_AFTER_S) * 1e9), int(r["t_restore"] * 1e9))
        n_lost, n_late, d_max = lost_and_late(arrivals, start_ns, end_ns)
        fb_end = int(recs[k + 1]["t_cut"] * 1e9) - int(WINDOW_BEFORE_S * 1e9) if k + 1 < len(recs) else recv_ns[-1]
        fb_gap, fb_at = longest_gap(recv_ns, int(r["t_restore"] * 1e9), fb_end)
        ref = r["t_failback_event"] or r["t_back"]
        out.append({"gap_ms": round(longest_gap(recv_ns, start_ns, end_ns)[0], 2), "lost": n_lost, "late": n_late,
                    "max_delay_ms": d_max, "fb_gap_ms": round(fb_gap, 2),
                    "fb_gap_at_ms": round(fb_at / 1e6 - ref * 1000, 1) if fb_at is not None else None,
                    "fb_lost": lost_and_late(arrivals, int(r["t_restore"] * 1e9), fb_end)[0]})
    return out


def summary(recs: list[dict[str, Any]], figs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one cut mode's trials."""
    gaps = [f["gap_ms"] for f in figs]
    lost = [f["lost"] for f in figs]
    detections = [r["detection_ms"] for r in recs]
    known_det = [d for d in detections if d is not None]
    return {"median_ms": round(statistics.median(gaps), 2), "p95_ms": round(pct(gaps, 95), 2),
            "max_ms": round(max(gaps), 2), "min_ms": round(min(gaps), 2), "trials": len(gaps), "gaps_ms": gaps,
            "detection_ms": detections,
            "detection_median_ms": round(statistics.median(known_det), 1) if known_det else None,
            "first_probe_lost_ms": [r["first_probe_lost_ms"] for r in recs],
            "failover_event_ms": [r["failover_event_ms"] for r in recs],
            "lost_packets": lost, "lost_packets_median": statistics.median(lost),
            "late_packets": [f["late"] for f in figs], "late_threshold_ms": LATE_MS,
            "max_one_way_delay_ms": [f["max_delay_ms"] for f in figs],
            "failover_reasons": [r["failover_reason"] for r in recs],
            "cut_command_ms": [r["cut_command_ms"] for r in recs],
            "failback_gaps_ms": [f["fb_gap_ms"] for f in figs], "failback_lost_packets": [f["fb_lost"] for f in figs],
            "failback_gap_start_vs_failback_ms": [f["fb_gap_at_ms"] for f in figs],
            "failback_after_restore_s": [round((r["t_failback_event"] or r["t_back"]) - r["t_restore"], 3)
                                         for r in recs],
            "cut_paths": [r["cut_path"] for r in recs], "moved_to": [r["moved_to"] for r in recs]}


def main() -> list[dict[str, Any]]:
    trials = int(os.environ.get("PATRONUS_BENCH_TRIALS", "20"))
    if trials < 1:
        raise ValueError(f"PATRONUS_BENCH_TRIALS must be at least 1, got {trials}")
    variant = int(os.environ.get("PATRONUS_BENCH_VARIANT_TRIALS", "10"))
    if variant < 0:
        raise ValueError(f"PATRONUS_BENCH_VARIANT_TRIALS must be 0 or more, got {variant}")
    phases = [("drop", trials)] + ([("down", variant)] if variant else [])
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="patronus-bench-failover-") as tmp, all_cores():
        lab = new_lab(Path(tmp))
        others = other_labs()
        try:
            lab.build()
            res = run_trials(lab, phases)
        except BaseException:
            print(agent_log_tails(lab), file=sys.stderr)
            raise
        finally:
            lab.teardown()
    arrivals = res["arrivals"]
    recs = res["trials"]
    figs = trial_figures(recs, arrivals)
    by_mode = {mode: summary([r for r in recs if r["mode"] == mode], [f for r, f in zip(recs, figs, strict=True)
                                                                     if r["mode"] == mode]) for mode, _ in phases}
    main_fig = by_mode["drop"]
    down = by_mode.get("down")
    rec = write("failover_gap", main_fig["p95_ms"], "ms", 300.0, higher_is_better=False, **main_fig,
                target_ms=100.0, cut_mode="drop",
                cut="nftables drop of everything to and from the uplink in the core (an ISP failure beyond the "
                    "router: the outage's packets vanish)",
                link_down_variant=None if down is None else {
                    "cut_mode": "down", "cut": "the core side of the veth set down (hq's side loses carrier and "
                                               "queues the outage's packets until the restore)", **down},
                unplanned_failovers=sum(e["kind"] == "FailoverTriggered" for e in res["unplanned"]),
                unplanned_path_downs=sum(e.get("new") == "down" for e in res["unplanned"]),
                unplanned_events=res["unplanned"][:50],
                home_path=res["home"], monitor_profile=MONITOR, router=ROUTER, policies=POLICIES, rate_pps=1000,
                flow_sent=res["sent"], flow_received=len({a[0] for a in arrivals}),
                window_s=[-WINDOW_BEFORE_S, WINDOW_AFTER_S], window_clipped_at_restore=True,
                other_labs_running=others, loadavg_1m=round(os.getloadavg()[0], 2), cpus=os.cpu_count(),
                wall_s=round(time.monotonic() - t0, 1))
    for mode, f in by_mode.items():
        what = "ISP failure (drop)" if mode == "drop" else "link down (variant)"
        print(f"  {what}, {f['trials']} trials ({MONITOR} profile): failover gap median {f['median_ms']:.0f} ms, "
              f"p95 {f['p95_ms']:.0f} ms, max {f['max_ms']:.0f} ms (target 100, goal ≤ 300); detection median "
              f"{f['detection_median_ms']} ms; per trial median {f['lost_packets_median']:.0f} packets lost + "
              f"{statistics.median(f['late_packets']):.0f} late (> {LATE_MS:.0f} ms); failback gap max "
              f"{max(f['failback_gaps_ms']):.0f} ms")
    print(f"  flow {res['sent']} sent, {rec['flow_received']} received; unplanned: {rec['unplanned_failovers']} "
          f"failover(s), {rec['unplanned_path_downs']} path Down(s)")
    return [rec]
