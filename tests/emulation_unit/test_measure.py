"""emulation.measure against synthetic runs with known ground truth (emulation.measure.synthetic) and
small hand-made ones whose every number is worked out below."""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emulation.measure import (
    STAGES,
    Analysis,
    RawDataError,
    RunData,
    analyse,
    edges,
    latency_cdf,
    longest_gap,
    nearest_rank,
    on_link,
    path_series,
    stage_order_problems,
)
from emulation.measure.ledger import LedgerEntry
from emulation.measure.load import load_run
from emulation.measure.paths import down_spans
from emulation.measure.rundata import parse_target
from emulation.measure.synthetic import P1, P2, SyntheticSpec, SyntheticTruth, write_raw_dir, write_synthetic_run
from emulation.measure.timeline import window_end

pytestmark = pytest.mark.unit

MS = 1e-3   # tolerance for times derived from float wall clocks near 1.7e9 s (resolution ~0.24 µs)


def _run(path: Path, spec: SyntheticSpec | None = None) -> tuple[SyntheticTruth, RunData, Analysis]:
    truth = write_synthetic_run(path, spec)
    run = load_run(path)
    return truth, run, analyse(run)


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticTruth, RunData, Analysis]:
    d = tmp_path_factory.mktemp("basic") / "run"
    truth, run, a = _run(d)
    return d, truth, run, a


def _entry(a: Analysis, flow: str, event: str | None = None) -> Any:
    found = [e for e in a.ledger if e.flow == flow and (event is None or e.event == event)]
    assert len(found) == 1, [(e.flow, e.event) for e in a.ledger]
    return found[0]


# --- loading --------------------------------------------------------------------------------------

def test_load_gives_typed_frames_in_scenario_time(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    _, truth, run, _ = basic
    assert run.run.scenario == "synthetic-failover" and run.run.backend == "sim" and run.run.seed == 7
    assert [f.name for f in run.run.flows] == ["cbr", "voip", "web"]
    pk = run.packets
    assert pk["sent_ns"].dtype == np.int64 and str(pk["recv_ns"].dtype) == "Int64"
    lost = pk[~pk["received"]]
    assert len(lost) == truth.cbr_lost and lost["recv_ns"].isna().all() and lost["delay_ms"].isna().all()
    assert pk["recv_ns"].dropna().astype("int64").min() > 1_700_000_000 * 10**9   # exact 64-bit ns
    assert run.timeline["params"].tolist() == [{}, {}]
    assert run.timeline["action"].tolist() == ["cut", "restore"]
    assert run.timeline["t_s"].iloc[0] == pytest.approx(20.0003, abs=1e-6)
    assert list(run.events["at"]) == sorted(run.events["at"])
    assert run.http is not None and len(run.http) == 58 and run.tcp is None


# --- ledger ---------------------------------------------------------------------------------------

def test_ledger_stages_come_out_at_the_injected_times(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    _, truth, _, a = basic
    e = _entry(a, "cbr")
    assert (e.event, e.action, e.link, e.at_s) == ("cut hq.isp1", "cut", "hq.isp1", 20.0)
    assert (e.from_path, e.to_path, e.declared) == (P1, P2, "down")
    s = e.stages_ms
    assert list(s) == list(STAGES)
    assert s["impairment_applied"] == 0.0
    assert s["path_declared"] == pytest.approx(60.0, abs=MS) == e.detect_ms
    assert s["routing_decision"] == pytest.approx(60.0, abs=MS)
    assert s["steering_changed"] == pytest.approx(62.0, abs=MS)
    # the first packet sent at or after the steering change (20.0623 s) leaves at 20.063 s
    assert s["first_packet_new_path"] == pytest.approx(62.7, abs=MS) == pytest.approx(truth.first_new_packet_ms)
    # the agent's ProbeLost: the probe sent at 20.02 s (the first after the cut) given up on 30 ms later
    assert truth.first_probe_lost_ms is not None
    assert s["first_probe_lost"] == pytest.approx(truth.first_probe_lost_ms, abs=MS) == pytest.approx(49.7, abs=MS)
    assert stage_order_problems(a.ledger) == []
    # the rolling 1-s loss passes 1 % with the 11th lost packet (sent at 20.011 s) and is back at 1 %
    # when only 10 lost packets remain in the window (the one ending at 21.052 s)
    assert e.sla_violated_ms == pytest.approx(10.7, abs=MS)
    assert s["sla_restored"] == pytest.approx(1051.7, abs=MS)


def test_gap_and_losses_are_exact(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    _, truth, _, a = basic
    e = _entry(a, "cbr")
    # packets sent 20.001 … 20.062 s are lost (62); the last one before arrives at 20.012 s (12 ms path),
    # the first after (sent 20.063 s on the 15 ms path) at 20.078 s: 66 ms
    assert e.lost_packets == 62 == truth.lost_in_first_window
    assert e.gap_ms == 66.0 == truth.gap_first_window_ms
    cbr = next(f for f in a.flows if f.flow == "cbr")
    assert (cbr.sent, cbr.received, cbr.lost) == (58_000, 57_938, 62)
    assert cbr.max_gap_ms == 66.0 and cbr.max_gap_at_s == pytest.approx(20.012)
    assert cbr.path_changes == 2 and cbr.paths == (P1, P2)
    assert cbr.loss_pct == pytest.approx(100 * 62 / 58_000)


def test_gap_matches_the_truth_with_jitter(tmp_path: Path) -> None:
    truth, _, a = _run(tmp_path / "run", SyntheticSpec(jitter_ms=2.0))
    e = _entry(a, "cbr")
    assert e.gap_ms == truth.gap_first_window_ms != 66.0
    assert e.lost_packets == truth.lost_in_first_window == 62
    assert next(f for f in a.flows if f.flow == "cbr").max_gap_ms == truth.cbr_max_gap_ms


def test_only_flows_on_the_broken_link_are_on_the_ledger(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    _, _, _, a = basic
    # voip (br → hq on hq:isp2-isp2) never crosses hq.isp1; web (no packets) is counted in because its
    # site's router moved a path of the link
    assert sorted(e.flow for e in a.ledger) == ["cbr", "web"]
    web = _entry(a, "web")
    assert web.gap_ms is None and web.lost_packets is None
    assert web.stages_ms["first_packet_new_path"] is None
    assert web.stages_ms["routing_decision"] == pytest.approx(60.0, abs=MS)


def test_brownout_is_declared_degraded(tmp_path: Path) -> None:
    truth, _, a = _run(tmp_path / "run", SyntheticSpec(action="impair"))
    e = _entry(a, "cbr")
    assert (e.event, e.declared, e.from_path, e.to_path) == ("impair hq.isp1", "degraded", P1, P2)
    assert e.lost_packets == truth.lost_in_first_window > 0
    assert e.gap_ms == truth.gap_first_window_ms
    assert e.stages_ms["steering_changed"] == pytest.approx(62.0, abs=MS)
    # a brownout is no cut: detect_time (cuts and flaps only) has nothing to judge
    det = next(x for x in a.expectations if x.type == "detect_time")
    assert (det.passed, det.value) == (False, None)


def test_flap_expands_into_edges_and_the_flow_moves_once(tmp_path: Path) -> None:
    truth, run, a = _run(tmp_path / "run", SyntheticSpec(action="flap"))
    es = edges(run)
    assert [e.label for e in es] == [f"flap hq.isp1 {s} {k}/3" for k in (1, 2, 3) for s in ("down", "up")]
    assert [round(e.at_s, 6) for e in es] == [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
    assert window_end(run, es[0]) == pytest.approx(es[1].applied_at)
    # later down edges find cbr on the other path: not on the ledger for them
    cbr = [e for e in a.ledger if e.flow == "cbr"]
    assert [e.event for e in cbr] == ["flap hq.isp1 down 1/3"]
    assert cbr[0].gap_ms == truth.gap_first_window_ms and cbr[0].lost_packets == 62
    assert [d.event for d in a.detections] == [f"flap hq.isp1 down {k}/3" for k in (1, 2, 3)]
    assert all(d.down_ms == pytest.approx(60.0, abs=MS) for d in a.detections)


def test_without_failover_the_gap_lasts_until_the_restore(tmp_path: Path) -> None:
    truth, _, a = _run(tmp_path / "run", SyntheticSpec(failover=False))
    e = _entry(a, "cbr")
    s = e.stages_ms
    assert s["path_declared"] == pytest.approx(60.0, abs=MS)
    assert s["routing_decision"] is None and s["steering_changed"] is None and s["first_packet_new_path"] is None
    assert e.to_path is None
    # sent 20.001 … 40.000 s: 20,000 lost; arrivals 20.012 s → 40.013 s (first packet after the restore)
    assert e.lost_packets == 20_000 == truth.lost_in_first_window
    assert e.gap_ms == 20_001.0 == truth.gap_first_window_ms


def test_lost_packets_without_send_times_are_placed_by_sequence(tmp_path: Path,
                                                                basic: tuple[Path, SyntheticTruth, RunData,
                                                                             Analysis]) -> None:
    _, _, run0, a0 = basic
    _, run, a = _run(tmp_path / "run", SyntheticSpec(lost_send_times=False))
    est = run.packets[run.packets["sent_estimated"]]
    assert len(est) == 62 and not est["received"].any()
    # a constant-rate sender: interpolating by sequence number gives the exact send times back
    assert run.packets["sent_ns"].tolist() == run0.packets["sent_ns"].tolist()
    assert [(e.flow, e.gap_ms, e.lost_packets, e.stages_ms) for e in a.ledger] == [
        (e.flow, e.gap_ms, e.lost_packets, e.stages_ms) for e in a0.ledger]
    assert a.sla == a0.sla


def test_without_paths_in_packets_csv_the_ledger_falls_back_on_the_agent(tmp_path: Path) -> None:
    _, _, a = _run(tmp_path / "run", SyntheticSpec(path_column=False))
    assert sorted(e.flow for e in a.ledger) == ["cbr", "web"]   # voip: nothing moved at br, nothing lost
    e = _entry(a, "cbr")
    assert e.stages_ms["first_packet_new_path"] is None          # needs the path column
    assert e.stages_ms["routing_decision"] == pytest.approx(60.0, abs=MS)
    assert e.from_path == P1 and e.gap_ms == 66.0 and e.lost_packets == 62
    # path changes from the agent's moves: both slots leaving P1 at once count once, then the failback
    pc = next(x for x in a.expectations if x.type == "path_changes")
    assert (pc.value, pc.passed) == (2, True)


# --- ledger: exact first probe lost, stages in order -------------------------------------------------

def _edited_run(path: Path, edit: Any, spec: SyntheticSpec | None = None) -> tuple[SyntheticTruth, Analysis]:
    """A synthetic run whose agent events `edit(events)` changes (returns the new list) before loading."""
    truth = write_synthetic_run(path, spec)
    f = path / "raw" / "events.jsonl"
    events = [json.loads(line) for line in f.read_text().splitlines()]
    events = sorted(edit(events), key=lambda e: e["at"])
    f.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in events))
    return truth, analyse(load_run(path))


def _at(truth: SyntheticTruth, ms: float) -> float:
    return truth.applied_at + ms / 1000.0


@pytest.mark.parametrize("spec", [
    SyntheticSpec(), SyntheticSpec(action="impair"), SyntheticSpec(action="flap"), SyntheticSpec(failover=False),
    SyntheticSpec(path_column=False), SyntheticSpec(jitter_ms=2.0), SyntheticSpec(probe_lost_events=False),
    SyntheticSpec(detect_ms=10.0), SyntheticSpec(steer_ms=0.0),
], ids=["cut", "impair", "flap", "no-failover", "no-paths", "jitter", "old-run", "detect-10ms", "steer-0ms"])
def test_every_synthetic_ledger_row_is_in_order_and_first_probe_lost_is_the_truth(tmp_path: Path,
                                                                                  spec: SyntheticSpec) -> None:
    truth, _, a = _run(tmp_path / "run", spec)
    assert a.ledger and stage_order_problems(a.ledger) == []
    e = next(e for e in a.ledger if e.flow == "cbr")
    got = e.stages_ms["first_probe_lost"]
    assert (got is None) == (truth.first_probe_lost_ms is None)
    assert got is None or got == pytest.approx(truth.first_probe_lost_ms, abs=MS)


def test_without_probe_lost_events_the_samples_stand_in_only_before_the_declaration(tmp_path: Path) -> None:
    # sampled every 0.2 s, the first sample showing a timeout (20.2 s) comes after the Down (20.06 s):
    # it did not lead to it, so the stage is unknown rather than wrong
    truth, _, a = _run(tmp_path / "coarse", SyntheticSpec(probe_lost_events=False))
    assert truth.first_probe_lost_ms is None and _entry(a, "cbr").stages_ms["first_probe_lost"] is None
    # sampled every 10 ms: the sample at 20.04 s shows the probe of 20.02 s timed out
    truth, _, a = _run(tmp_path / "fine", SyntheticSpec(probe_lost_events=False, sample_interval_s=0.01))
    assert _entry(a, "cbr").stages_ms["first_probe_lost"] == pytest.approx(39.7, abs=MS)
    assert truth.first_probe_lost_ms == pytest.approx(39.7, abs=MS)


def test_a_probe_lost_after_the_declaration_or_before_the_edge_is_not_the_first_lost(tmp_path: Path) -> None:
    def edit(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [e for e in events if e["kind"] != "ProbeLost"]
        hq = {"site": "hq", "kind": "ProbeLost", "path_id": P1, "seq": 1}
        return [*kept, {**hq, "at": _at(truth0, -5.0), "sent_at": _at(truth0, -30.0)},     # before the cut
                {**hq, "at": _at(truth0, 80.0), "sent_at": _at(truth0, 50.0)},             # after the Down
                {**hq, "site": "br", "at": _at(truth0, 20.0), "sent_at": _at(truth0, 1.0)}]   # another site
    truth0 = write_synthetic_run(tmp_path / "probe", SyntheticSpec())
    _, a = _edited_run(tmp_path / "run", edit)
    e = _entry(a, "cbr")
    assert e.stages_ms["first_probe_lost"] is None and e.stages_ms["path_declared"] == pytest.approx(60.0, abs=MS)


def test_a_decision_before_any_declaration_leaves_the_declaration_out(tmp_path: Path) -> None:
    # the router moves the flow on a score threshold at 60 ms; the monitor calls the path degraded
    # only at 500 ms: that declaration is not the cause of this failover
    def edit(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for ev in events:
            if ev["kind"] == "PathStatusChanged" and ev["new"] == "degraded" and ev["at"] < truth0.applied_at + 1:
                ev["at"] = _at(truth0, 500.0)
        return events
    truth0 = write_synthetic_run(tmp_path / "probe", SyntheticSpec(action="impair"))
    _, a = _edited_run(tmp_path / "run", edit, SyntheticSpec(action="impair"))
    e = _entry(a, "cbr")
    s = e.stages_ms
    assert s["path_declared"] is None and e.declared is None
    assert s["routing_decision"] == pytest.approx(60.0, abs=MS) and s["steering_changed"] == pytest.approx(62.0, abs=MS)
    assert stage_order_problems([e]) == []


def test_steering_is_when_the_kernel_transaction_began_and_never_after_the_packet_it_let_through(
        tmp_path: Path) -> None:
    # the agent's SteeringApplied: begun at 62.0 ms, returned at 63.5 ms; the first packet on the new
    # path left at 62.7 ms, in between
    def later_return(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for ev in events:
            if ev["kind"] == "SteeringApplied" and ev["at"] < truth0.applied_at + 1:
                ev["begun_at"], ev["at"] = ev["at"], _at(truth0, 63.5)
        return events
    truth0 = write_synthetic_run(tmp_path / "probe", SyntheticSpec())
    _, a = _edited_run(tmp_path / "begun", later_return)
    s = _entry(a, "cbr").stages_ms
    assert s["steering_changed"] == pytest.approx(62.0, abs=MS)
    assert s["first_packet_new_path"] == pytest.approx(62.7, abs=MS)

    # a run before `begun_at`: the return at 63.5 ms comes after the packet, so it is not what let it through
    def no_begun(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for ev in later_return(events):
            ev.pop("begun_at", None)
        return events
    _, a = _edited_run(tmp_path / "old", no_begun)
    e = _entry(a, "cbr")
    assert e.stages_ms["steering_changed"] is None and e.stages_ms["routing_decision"] == pytest.approx(60.0, abs=MS)
    assert stage_order_problems([e]) == []


def test_a_decision_after_the_flow_already_moved_did_not_move_it(tmp_path: Path) -> None:
    def edit(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for ev in events:
            if ev["kind"] in ("FailoverTriggered", "SteeringApplied") and ev["at"] < truth0.applied_at + 1:
                ev["at"] += 0.1        # 160 ms: after the first packet on the new path (62.7 ms)
        return events
    truth0 = write_synthetic_run(tmp_path / "probe", SyntheticSpec())
    _, a = _edited_run(tmp_path / "run", edit)
    e = _entry(a, "cbr")
    s = e.stages_ms
    assert s["routing_decision"] is None and s["steering_changed"] is None
    assert s["first_packet_new_path"] == pytest.approx(62.7, abs=MS)
    assert s["path_declared"] == pytest.approx(60.0, abs=MS)
    assert stage_order_problems([e]) == []


def test_an_sla_restore_before_the_flow_moved_is_not_this_failovers_restore(tmp_path: Path) -> None:
    # the path's SLA came back (per the agent) at 40 ms, before the move: an earlier break's end
    def edit(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*events, {"kind": "SlaRestored", "at": _at(truth0, 40.0), "site": "hq", "subject": P1,
                          "traffic_class": "voice", "violated_for_s": 1.0}]
    truth0 = write_synthetic_run(tmp_path / "probe", SyntheticSpec())
    _, a = _edited_run(tmp_path / "run", edit)
    e = _entry(a, "cbr")
    assert e.stages_ms["sla_restored"] == pytest.approx(1051.7, abs=MS)     # the flow's own rolling SLA
    assert stage_order_problems([e]) == []


def test_stage_order_problems_names_every_stage_that_goes_back() -> None:
    def entry(**stages: float | None) -> LedgerEntry:
        full: dict[str, float | None] = {s: None for s in STAGES}
        full.update(impairment_applied=0.0, **stages)
        return LedgerEntry(flow="f", event="cut x", action="cut", link="x", at_s=1.0, applied_s=1.0,
                           window_end_s=2.0, from_path=None, to_path=None, declared=None, stages_ms=full,
                           sla_violated_ms=None, gap_ms=None, lost_packets=None)
    good = entry(first_probe_lost=5.0, path_declared=5.0, routing_decision=None, first_packet_new_path=9.0)
    assert stage_order_problems([good]) == []
    bad = entry(first_probe_lost=159.0, path_declared=62.0, steering_changed=70.0, first_packet_new_path=65.0)
    assert stage_order_problems([good, bad]) == [
        "cut x · f: path_declared at 62.000 ms is before first_probe_lost at 159.000 ms",
        "cut x · f: steering_changed at 70.000 ms is before first_probe_lost at 159.000 ms",
        "cut x · f: first_packet_new_path at 65.000 ms is before first_probe_lost at 159.000 ms"]
    assert stage_order_problems([entry(first_probe_lost=-1.0)]) == [
        "cut x · f: first_probe_lost at -1.000 ms is before impairment_applied at 0.000 ms"]


def test_probe_lost_events_need_their_path_and_send_time(raw_copy: Path) -> None:
    with (raw_copy / "raw" / "events.jsonl").open("a") as fh:
        fh.write(json.dumps({"kind": "ProbeLost", "at": 1.0, "site": "hq", "path_id": P1}) + "\n")
        fh.write(json.dumps({"kind": "SteeringApplied", "at": 1.0, "site": "hq", "begun_at": "soon"}) + "\n")
    msg = _errors(raw_copy)
    assert "field 'sent_at': missing or invalid in ProbeLost" in msg
    assert "field 'begun_at': missing or invalid in SteeringApplied" in msg


# --- flows and SLA --------------------------------------------------------------------------------

T0 = 1000.0
T0_NS = 1_000 * 10**9
TINY_RUN: dict[str, Any] = {
    "scenario": "tiny", "backend": "sim", "impairment_backend": "model", "seed": 1, "started_at": T0 - 1,
    "t0": T0, "duration_s": 3.0,
    "flows": [{"name": "f", "type": "udp_cbr", "class": "voice", "src_site": "a", "dst_site": "b",
               "dst_port": 5001, "rate_pps": 10, "start_s": 0.0, "stop_s": 3.0, "sent": 30}],
    "links": [], "sla_targets": {"voice": {"latency_ms": 50, "loss_pct": 1, "jitter_ms": 5}},
    "expectations": [
        {"type": "lost_packets", "flow": "f", "max": 1, "during": [1, 2], "text": "f loses ≤ 1 in [1 s, 2 s)"},
        {"type": "sla_compliance", "flow": "f", "min": 0.3, "text": "f meets its SLA ≥ 30 %"},
        {"type": "sla_compliance", "flow": "f", "min": 0.5, "text": "f meets 'lax' ≥ 50 %",
         "target": {"latency": "200ms", "loss": "15%", "jitter": "50ms"}},
        {"type": "failover_gap", "flow": "f", "max": 0.25, "text": "f gap ≤ 250 ms"},
        {"type": "failover_gap", "flow": "f", "max": 0.25, "during": [2, 3], "text": "f gap ≤ 250 ms in [2, 3]"},
    ],
}


def _tiny_packets() -> list[tuple[str, int, int, int | None, str]]:
    """10 packets/s for 3 s: second 0 all at 10 ms; second 1 loses seq 12 and 13; second 2 has one
    packet (seq 29) at 100 ms."""
    rows: list[tuple[str, int, int, int | None, str]] = []
    for i in range(30):
        sent = T0_NS + i * 100_000_000
        delay_ms = 100 if i == 29 else 10
        rows.append(("f", i, sent, None if i in (12, 13) else sent + delay_ms * 1_000_000, "p1"))
    return rows


def test_sla_compliance_matches_a_hand_computation(tmp_path: Path) -> None:
    run = load_run(write_raw_dir(tmp_path / "tiny", TINY_RUN, packets=_tiny_packets()))
    a = analyse(run)
    (s,) = a.sla
    # window 0 meets everything; window 1 loses 2 of 10 (20 % > 1 %); window 2's p95 (rank ceil(9.5) =
    # 10 of 10 samples) is the 100 ms packet, > 50 ms
    assert (s.windows, s.compliant_windows) == (3, 1)
    assert s.compliance_pct == pytest.approx(100 / 3)
    delays = [10.0] * 27 + [100.0]
    # nearest rank over 28 delivered: p50 rank 14, p95 rank ceil(26.6) = 27, p99 rank ceil(27.72) = 28
    assert (s.latency_p50_ms, s.latency_p95_ms, s.latency_p99_ms) == (10.0, 10.0, 100.0)
    assert s.jitter_ms == pytest.approx(statistics.pstdev(delays))
    assert s.loss_pct == pytest.approx(100 * 2 / 30)
    (f,) = a.flows
    # arrivals: seq 11 at 1.110 s, seq 14 at 1.410 s: 300 ms; seq 28 at 2.810 s, seq 29 at 3.000 s
    assert f.max_gap_ms == 300.0 and f.max_gap_at_s == pytest.approx(1.11)
    assert (f.lost, f.received, f.reordered, f.duplicates) == (2, 28, 0, 0)
    ok = [(x.text, x.passed, x.value) for x in a.expectations]
    assert ok == [("f loses ≤ 1 in [1 s, 2 s)", False, 2),
                  ("f meets its SLA ≥ 30 %", True, pytest.approx(1 / 3)),
                  # lax: window 1 still loses too much (20 % > 15 %); window 2 passes (p95 100 ms ≤ 200, stdev 27 ≤ 50)
                  ("f meets 'lax' ≥ 50 %", True, pytest.approx(2 / 3)),
                  ("f gap ≤ 250 ms", False, pytest.approx(0.3)),
                  ("f gap ≤ 250 ms in [2, 3]", True, pytest.approx(0.19))]


def test_basic_sla_is_57_of_58_windows(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    _, _, _, a = basic
    by_flow = {s.flow: s for s in a.sla}
    assert sorted(by_flow) == ["cbr", "voip", "web"]
    # 58 one-second windows from 1 s to 59 s; only [20 s, 21 s) loses more than 1 % (62 of 1000)
    cbr = by_flow["cbr"]
    assert (cbr.windows, cbr.compliant_windows) == (58, 57)
    assert cbr.compliance_pct == pytest.approx(100 * 57 / 58)
    assert (cbr.latency_p50_ms, cbr.latency_p95_ms, cbr.latency_p99_ms) == (15.0, 15.0, 15.0)
    assert by_flow["voip"].compliance_pct == 100.0
    assert by_flow["web"].latency_p95_ms == 32.0   # http: request latencies 30, 31, 32 ms


def test_nearest_rank_and_cdf(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert [nearest_rank(v, p) for p in (50, 90, 95, 99, 100)] == [5.0, 9.0, 10.0, 10.0, 10.0]
    assert nearest_rank(np.array([]), 50) is None
    _, _, run, _ = basic
    cdf = latency_cdf(run, "cbr")
    assert len(cdf) == 57_938 and cdf["fraction"].iloc[-1] == 1.0
    assert cdf["delay_ms"].is_monotonic_increasing


def test_longest_gap_counts_the_window_edges() -> None:
    arr = np.array([10, 20, 50], dtype=np.int64)
    assert longest_gap(arr, 0, 100) == (50, 50)     # 50 → the window's end
    assert longest_gap(arr, 15, 40) == (30, 20)     # straddling intervals count whole
    assert longest_gap(np.array([], dtype=np.int64), 0, 70) == (70, 0)
    assert longest_gap(arr, 40, 40) == (0, 40)


# --- paths ----------------------------------------------------------------------------------------

def test_path_summaries(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    _, _, _, a = basic
    by = {(p.site, p.path): p for p in a.paths}
    assert len(by) == 8
    p1 = by[("hq", P1)]
    assert p1.links == ("br.isp1", "hq.isp1")
    # down from the first sample ≥ 20.0603 s (20.2 s) to the last < 40.5003 s (40.4 s): 20.4 s
    assert p1.time_in_status_s["down"] == pytest.approx(20.4, abs=1e-6)
    assert p1.status_changes == 2 and p1.probes_timed_out == 1000
    assert p1.latency_min_ms == 12.0 and p1.score_min == 0.0
    assert by[("hq", P2)].time_in_status_s["down"] == 0.0
    assert by[("hq", P2)].sla_compliance_pct == {"default": 100.0, "voice": 100.0}


def test_a_dead_path_has_no_latency_in_the_path_summaries(basic: tuple[Path, SyntheticTruth, RunData, Analysis],
                                                          tmp_path: Path) -> None:
    """Samples taken while a path was Down count for no latency or jitter, whatever the file says: a run
    written before the agents left them empty has 0 there (a window with no answer), or a stale value."""
    d = tmp_path / "old"
    shutil.copytree(basic[0] / "raw", d / "raw")
    f = d / "raw" / "path_metrics.csv"
    lines = f.read_text().splitlines()
    out = [lines[0]]
    never = "hq:isp2-isp2"        # at br: make it a path that never came up
    for k, line in enumerate(lines[1:]):
        c = line.split(",")
        if c[0] == "br" and c[1] == never:
            c[3], c[4], c[5] = "down", "0.0", "0.0"
        elif c[3] == "down":
            c[4], c[5] = ("0.0", "0.0") if k % 2 else ("500.0", "40.0")
        out.append(",".join(c))
    f.write_text("\n".join(out) + "\n")
    a = analyse(load_run(d))
    by = {(p.site, p.path): p for p in a.paths}
    want = {(p.site, p.path): p for p in basic[3].paths}
    p1 = by[("hq", P1)]
    assert (p1.latency_min_ms, p1.latency_mean_ms, p1.latency_max_ms) == (12.0, 12.0, 12.0)
    assert p1.jitter_mean_ms == pytest.approx(0.3)
    dead = by.pop(("br", never))
    del want[("br", never)]
    assert by == want              # as if the cells had been empty: every figure the same
    assert (dead.latency_mean_ms, dead.latency_min_ms, dead.latency_max_ms, dead.jitter_mean_ms) == (None,) * 4
    # the table says the same: no 0.0 anywhere, a dash for the path that never answered
    from emulation.report.tables import paths_table

    rows = {(r["site"], r["path"]): r for r in paths_table(a).frame.to_dict("records")}
    assert rows[("hq", P1)]["latency mean/min/max (ms)"] == "12.0/12.0/12.0"
    assert rows[("br", never)]["latency mean/min/max (ms)"] == "–/–/–"


def test_path_series_leaves_gaps_and_down_spans_say_where(
        basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    _, _, run, _ = basic
    ps = path_series(run, "hq")
    assert set(ps["site"]) == {"hq"}
    down = ps["status"] == "down"
    assert down.any() and ps.loc[down, "latency_ms"].isna().all() and ps.loc[down, "jitter_ms"].isna().all()
    assert ps.loc[~down, "latency_ms"].notna().all()
    assert ps.loc[down, "loss_pct"].eq(100.0).all()               # loss is measured while Down
    # hq's two paths over hq.isp1: Down from the sample at 20.2 s to the first Up one, 40.6 s
    spans = down_spans(run, "hq")
    assert sorted(spans) == [("hq", "br:isp1-isp1"), ("hq", "br:isp1-isp2")]
    assert all(v == [(pytest.approx(20.2), pytest.approx(40.6))] for v in spans.values())
    assert sorted(down_spans(run)) == [("br", "hq:isp1-isp1"), ("br", "hq:isp2-isp1"), *sorted(spans)]


def test_the_paths_plot_draws_no_latency_for_a_dead_path(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from emulation.report.plots import plot_path_metrics

    _, _, _, a = basic
    ax = plot_path_metrics(a, "hq").axes[0]
    line = next(x for x in ax.get_lines() if isinstance(x, Line2D) and x.get_label() == P1)
    t, y = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
    inside = (t > 20.2 - 1e-6) & (t < 40.6 - 1e-6)       # (wall clocks near 1.7e9 s: ~0.2 µs apart)
    assert inside.sum() == 102 and np.isnan(y[inside]).all()     # a gap, not a line at 0 ms
    assert not np.isnan(y[~inside]).any() and np.nanmin(y) == 12.0
    shaded = sorted((round(r.get_x(), 6), round(r.get_x() + r.get_width(), 6)) for r in ax.patches
                    if isinstance(r, Rectangle) and r.get_alpha() == 0.12)
    assert shaded == [(pytest.approx(20.2), pytest.approx(40.6))] * 2                 # one span per dead path
    assert "Down: no latency (shaded)" in ax.get_legend_handles_labels()[1]


def test_path_membership_from_ids_and_links(tmp_path: Path) -> None:
    run = load_run(write_raw_dir(tmp_path / "t", {**TINY_RUN, "links": [
        {"link": "hq.isp1", "paths": ["br:isp1-isp2", "odd-path", "c/weird"]}]}))
    assert on_link(run, "hq", "br:isp1-isp2", "hq.isp1")
    assert not on_link(run, "c", "br:isp1-isp2", "hq.isp1")   # at c that id is c.isp1 → br.isp2
    assert on_link(run, "x", "odd-path", "hq.isp1")            # unconventional ids: the list decides
    assert on_link(run, "c", "weird", "hq.isp1") and not on_link(run, "d", "weird", "hq.isp1")
    # the agent's ids say it all, whichever site's list (if any) names them: br's hq:isp2-isp1 crosses
    # br.isp2 and hq.isp1
    assert on_link(run, "br", "hq:isp2-isp1", "hq.isp1") and on_link(run, "br", "hq:isp2-isp1", "br.isp2")
    assert not on_link(run, "br", "hq:isp2-isp1", "br.isp1")


# --- expectations ---------------------------------------------------------------------------------

def _tcp_moves_run(tmp_path: Path, policy: str | None) -> Analysis:
    """A TCP flow (no per-packet paths) and agent events of two policies: only the flow's own
    policy's moves are its path changes."""
    flow = {"name": "backup", "type": "tcp_bulk", "class": "bulk", "src_site": "a", "dst_site": "b",
            "dst_port": 5201, "rate_pps": None, "start_s": 0.0, "stop_s": 3.0, "sent": 0}
    if policy is not None:
        flow["policy"] = policy
    run = {**TINY_RUN, "flows": [flow], "sla_targets": {},
           "expectations": [{"type": "flow_stays", "flow": "backup", "text": "backup stays"}]}
    ev = [{"kind": "FailoverTriggered", "at": T0 + 1.0, "site": "a", "from_path": "b:isp1-isp1",
           "to_path": "b:isp2-isp1", "policy": "voice"},
          {"kind": "FailoverTriggered", "at": T0 + 2.0, "site": "a", "from_path": "b:isp2-isp1",
           "to_path": "b:isp1-isp1", "policy": "voice"}]
    if policy == "big-transfers":
        ev.append({"kind": "FailoverTriggered", "at": T0 + 1.5, "site": "a", "from_path": "b:isp1-isp1",
                   "to_path": "b:isp2-isp2", "policy": "big-transfers"})
    return analyse(load_run(write_raw_dir(tmp_path / str(policy), run, events=ev)))


def test_path_changes_of_a_tcp_flow_come_from_its_own_policy(tmp_path: Path) -> None:
    # the runner saw the flow classified by "quiet": no event of that policy, no change
    (x,) = _tcp_moves_run(tmp_path, "quiet").expectations
    assert (x.passed, x.value) == (True, 0)
    (x,) = _tcp_moves_run(tmp_path, "big-transfers").expectations
    assert (x.passed, x.value) == (False, 1)
    # not known: the old guess (every slot toward the flow's destination) still applies
    (x,) = _tcp_moves_run(tmp_path, None).expectations
    assert (x.passed, x.value) == (False, 2)



def test_default_expectations_pass(basic: tuple[Path, SyntheticTruth, RunData, Analysis]) -> None:
    _, _, _, a = basic
    got = {x.type: (x.passed, x.value) for x in a.expectations}
    assert got == {"failover_gap": (True, pytest.approx(0.066)), "lost_packets": (True, 62),
                   "sla_compliance": (True, pytest.approx(57 / 58)), "path_changes": (True, 2),
                   "detect_time": (True, pytest.approx(0.06, abs=1e-6)), "flow_stays": (True, 0)}
    assert a.passed


def test_expectations_fail_as_they_should(tmp_path: Path) -> None:
    tight = (
        {"type": "failover_gap", "flow": "cbr", "max": 0.05, "text": "gap ≤ 50 ms"},
        {"type": "lost_packets", "max": 61, "text": "≤ 61 lost over all flows"},
        {"type": "sla_compliance", "min": 0.99, "text": "every flow ≥ 99 %"},
        {"type": "path_changes", "flow": "cbr", "max": 1, "text": "cbr moves at most once"},
        {"type": "path_changes", "flow": "cbr", "min": 3, "max": 5, "text": "cbr moves 3-5 times"},
        {"type": "detect_time", "link": "hq.isp1", "max": 0.05, "text": "detected within 50 ms"},
        {"type": "detect_time", "link": "br.isp2", "max": 1, "text": "br.isp2 (never cut)"},
        {"type": "flow_stays", "flow": "cbr", "during": [25, 45], "text": "cbr stays 25-45 s"},
        {"type": "flow_stays", "flow": "cbr", "during": [15, 25], "text": "cbr stays 15-25 s"},
        {"type": "flow_stays", "flow": "voip", "path": "hq:isp1-isp1", "text": "voip on hq:isp1-isp1"},
    )
    _, _, a = _run(tmp_path / "run", SyntheticSpec(expectations=tight))
    got = [(x.text, x.passed, x.value) for x in a.expectations]
    assert got == [
        ("gap ≤ 50 ms", False, pytest.approx(0.066)),
        ("≤ 61 lost over all flows", False, 62),
        ("every flow ≥ 99 %", False, pytest.approx(57 / 58)),
        ("cbr moves at most once", False, 2),
        ("cbr moves 3-5 times", False, 2),
        ("detected within 50 ms", False, pytest.approx(0.06, abs=1e-6)),
        ("br.isp2 (never cut)", False, None),
        ("cbr stays 25-45 s", True, 0),
        ("cbr stays 15-25 s", False, 1),
        ("voip on hq:isp1-isp1", False, 0),
    ]
    assert not a.passed


def test_a_run_without_failover_fails_its_expectations(tmp_path: Path) -> None:
    _, _, a = _run(tmp_path / "run", SyntheticSpec(failover=False))
    got: dict[str, Any] = {x.type: (x.passed, x.value) for x in a.expectations}
    assert got["failover_gap"] == (False, pytest.approx(20.001))
    assert got["lost_packets"] == (False, 20_000)
    assert got["sla_compliance"][0] is False
    assert got["detect_time"][0] is True   # the agents noticed; they just did not move the flow


@pytest.mark.parametrize(("expectation", "message"), [
    ({"type": "failover_gap", "flow": "nope", "max": 1, "text": "t"}, "expectations[0].flow: 'nope' is not a flow"),
    ({"type": "failover_gap", "flow": "cbr", "text": "t"}, "expectations[0].max: missing"),
    ({"type": "flow_stays", "flow": "cbr", "during": [5, 1], "text": "t"}, "expectations[0].during"),
    ({"type": "sla_compliance", "flow": "cbr", "min": 0.9, "target": {"latency": "fast"}, "text": "t"},
     "expectations[0].target.latency"),
])
def test_bad_expectation_parameters_are_named(tmp_path: Path, expectation: dict[str, Any], message: str) -> None:
    truth_dir = tmp_path / "run"
    write_synthetic_run(truth_dir, SyntheticSpec(expectations=(expectation,)))
    with pytest.raises(RawDataError) as exc:
        load_run(truth_dir)
    assert message in str(exc.value) and "raw/run.json" in str(exc.value)


def test_every_bad_expectation_parameter_at_once_and_no_value_unbounded(tmp_path: Path) -> None:
    truth_dir = tmp_path / "run"
    e = {"type": "sla_compliance", "flow": "x" * 100_000, "min": "high", "during": [1, "later", 3], "site": [],
         "max": float("nan"), "target": {"loss": "2 parts"}, "text": "t"}
    write_synthetic_run(truth_dir, SyntheticSpec(expectations=(e,)))
    with pytest.raises(RawDataError) as exc:
        load_run(truth_dir)
    fields = [reason.split(":")[0] for _, reason in exc.value.errors]
    assert fields == ["expectations[0].flow", "expectations[0].during", "expectations[0].target.loss",
                      "expectations[0].site", "expectations[0].max", "expectations[0].min"], exc.value.errors
    assert len(str(exc.value)) < 2_000


def test_sla_targets_in_both_forms() -> None:
    t, problems = parse_target({"latency": "150ms", "loss": "1%", "jitter": "30ms", "latency_percentile": "p99"},
                               "x")
    assert problems == [] and t is not None
    got: tuple[Any, ...] = (t.latency_ms, t.loss_pct, t.jitter_ms, t.latency_percentile)
    assert got == (pytest.approx(150.0), 1.0, pytest.approx(30.0), 99)
    t, problems = parse_target({"latency_ms": 20, "loss_pct": None}, "x")
    assert problems == [] and t is not None and (t.latency_ms, t.loss_pct, t.jitter_ms) == (20.0, None, None)
    _, problems = parse_target({"latency_ms": -1, "latency_percentile": 90}, "sla_targets.voice")
    assert [p.split(":")[0] for p in problems] == ["sla_targets.voice.latency_ms",
                                                   "sla_targets.voice.latency_percentile"]


# --- bad raw data ---------------------------------------------------------------------------------

@pytest.fixture
def raw_copy(basic: tuple[Path, SyntheticTruth, RunData, Analysis], tmp_path: Path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(basic[0] / "raw", d / "raw")
    return d


def _rewrite_csv(path: Path, drop: str | None = None, replace_line: tuple[int, str, str] | None = None) -> None:
    lines = path.read_text().splitlines()
    if drop is not None:
        header = lines[0].split(",")
        k = header.index(drop)
        lines = [",".join(c for i, c in enumerate(line.split(",")) if i != k) for line in lines]
    if replace_line is not None:
        n, old, new = replace_line
        assert old in lines[n - 1]
        lines[n - 1] = lines[n - 1].replace(old, new, 1)
    path.write_text("\n".join(lines) + "\n")


def _errors(d: Path) -> str:
    with pytest.raises(RawDataError) as exc:
        load_run(d)
    return str(exc.value)


def test_missing_column_is_named(raw_copy: Path) -> None:
    _rewrite_csv(raw_copy / "raw" / "packets.csv", drop="recv_ns")
    msg = _errors(raw_copy)
    assert "raw/packets.csv: missing column 'recv_ns' (has: flow, seq, sent_ns, path)" in msg


def test_missing_file_is_named(raw_copy: Path) -> None:
    (raw_copy / "raw" / "path_metrics.csv").unlink()
    assert "raw/path_metrics.csv: missing file" in _errors(raw_copy)


def test_bad_values_name_line_and_column(raw_copy: Path) -> None:
    _rewrite_csv(raw_copy / "raw" / "packets.csv", replace_line=(3, "cbr,1,", "cbr,one,"))
    _rewrite_csv(raw_copy / "raw" / "timeline.csv", replace_line=(2, "cut", "snip"))
    msg = _errors(raw_copy)
    # every problem, in every file, at once
    assert "raw/packets.csv line 3 column 'seq': expected an integer (required), got 'one'" in msg
    assert "raw/timeline.csv line 2 column 'action': expected one of impair, cut" in msg


def test_bad_run_json(raw_copy: Path) -> None:
    doc = json.loads((raw_copy / "raw" / "run.json").read_text())
    del doc["t0"]
    doc["flows"][0]["type"] = "carrier-pigeon"
    (raw_copy / "raw" / "run.json").write_text(json.dumps(doc))
    msg = _errors(raw_copy)
    assert "raw/run.json: t0: missing" in msg
    assert "raw/run.json: flows[0].type: expected one of udp_cbr" in msg


def test_unknown_flow_in_packets(raw_copy: Path) -> None:
    _rewrite_csv(raw_copy / "raw" / "packets.csv", replace_line=(5, "cbr,", "cbx,"))
    assert "raw/packets.csv line 5 column 'flow': 'cbx' is not a flow of raw/run.json" in _errors(raw_copy)


def test_bad_event_lines_are_named(raw_copy: Path) -> None:
    with (raw_copy / "raw" / "events.jsonl").open("a") as fh:
        fh.write("not json\n")
        fh.write(json.dumps({"kind": "FailoverTriggered", "at": 1.0, "site": "hq", "from_path": P1}) + "\n")
    msg = _errors(raw_copy)
    assert "raw/events.jsonl line" in msg and "expected a JSON object, got 'not json'" in msg
    assert "field 'to_path': missing or invalid in FailoverTriggered" in msg


def test_no_raw_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "missing directory" in _errors(tmp_path / "empty")


def test_flap_with_human_period(tmp_path: Path) -> None:
    run = load_run(write_raw_dir(tmp_path / "t", TINY_RUN, timeline=[
        (1.0, T0 + 1.0, "flap", "a.isp1", {"period": "400ms", "count": 2}),
        (2.5, T0 + 2.5, "clear", "a.isp1", {}),
        (2.6, T0 + 2.6, "ramp", "a.isp1", {"over": "1s", "step": 1}),
        (2.7, T0 + 2.7, "ramp", "a.isp1", {"over": "1s", "step": 2}),
    ]))
    es = edges(run)
    assert [(round(e.at_s, 6), e.state, e.breaking) for e in es] == [
        (1.0, "down", True), (1.2, "up", False), (1.4, "down", True), (1.6, "up", False), (2.5, "", False),
        (2.6, "", True), (2.7, "", False)]
    assert window_end(run, es[5]) == T0 + 3.0   # a ramp's later steps do not end its window
    with pytest.raises(RawDataError, match=r"raw/timeline.csv line 2 column 'params': a flap needs period_s"):
        load_run(write_raw_dir(tmp_path / "u", TINY_RUN, timeline=[(1.0, T0 + 1.0, "flap", "a.isp1", {})]))


def test_flap_edges_and_ramp_steps_row_by_row(tmp_path: Path) -> None:
    """The runner's way: one row per flap edge ({"up": false/true}) and per ramp step."""
    run = load_run(write_raw_dir(tmp_path / "t", TINY_RUN, timeline=[
        (0.5, T0 + 0.5, "flap", "a.isp1", {"up": False}),
        (0.7, T0 + 0.7, "flap", "a.isp1", {"up": True}),
        (1.0, T0 + 1.0, "ramp", "a.isp1", {"delay_ms": 20}),
        (1.5, T0 + 1.5, "ramp", "a.isp1", {"delay_ms": 40}),
        (1.6, T0 + 1.6, "cut", "b.isp1", {}),
        (2.0, T0 + 2.0, "ramp", "a.isp1", {"delay_ms": 60}),
        (2.5, T0 + 2.5, "restore", "a.isp1", {}),
        (2.8, T0 + 2.8, "ramp", "a.isp1", {"delay_ms": 10}),
    ]))
    got = [(e.label, e.breaking, e.continuation) for e in edges(run)]
    assert got == [("flap a.isp1 down", True, False), ("flap a.isp1 up", False, False),
                   ("ramp a.isp1", True, False), ("ramp a.isp1 (step)", False, True), ("cut b.isp1", True, False),
                   ("ramp a.isp1 (step)", False, True), ("restore a.isp1", False, False),
                   ("ramp a.isp1", True, False)]
    es = edges(run)
    assert window_end(run, es[2]) == T0 + 1.6      # the ramp's own steps do not end its window; the cut does


def test_spec_is_a_plain_value() -> None:
    assert replace(SyntheticSpec(), seed=3).seed == 3


def test_links_of_is_on_link_for_every_known_link(basic: tuple[Path, SyntheticTruth, RunData, Analysis],
                                                  tmp_path: Path) -> None:
    from emulation.measure.timeline import known_links, links_of

    _, _, run, _ = basic
    odd = load_run(write_raw_dir(tmp_path / "odd", {**TINY_RUN, "links": [
        {"link": "hq.isp1", "paths": ["br:isp1-isp2", "odd-path", "c/weird"]}]}))
    for r in (run, odd):
        paths = {(s, p) for s, p in r.path_metrics[["site", "path"]].itertuples(index=False)}
        paths |= {("hq", "br:isp1-isp2"), ("x", "odd-path"), ("c", "weird"), ("br", "hq:isp2-isp1")}
        for site, path in sorted(paths):
            assert links_of(r, site, path) == tuple(x for x in known_links(r) if on_link(r, site, path, x))


def test_per_site_plots_are_capped_flow_sites_first(basic: tuple[Path, SyntheticTruth, RunData, Analysis],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from emulation.report import plots

    _, _, run, a = basic
    assert plots.plotted_sites(a) == (sorted(run.path_metrics["site"].unique().tolist()), 0)
    monkeypatch.setattr(plots, "MAX_SITE_PLOTS", 1)
    chosen, left_out = plots.plotted_sites(a)
    assert left_out == len(run.path_metrics["site"].unique()) - 1
    assert chosen[0] in {f.src_site for f in run.run.flows} | {f.dst_site for f in run.run.flows}


def test_a_sender_that_started_late_is_no_gap_but_a_silence_after_its_first_packet_is(tmp_path: Path) -> None:
    """The flow is to start at 0 s; its sender's first packet leaves at 0.7 s (a process slow to start
    on a busy host) and every packet arrives 10 ms after it left. No network was silent: the gap is
    the 100 ms between packets, not the 710 ms from 0 s to the first arrival. A packet lost right
    after the first one still counts from the first packet on."""
    def rows(lost: set[int]) -> list[tuple[str, int, int, int | None, str]]:
        out: list[tuple[str, int, int, int | None, str]] = []
        for i in range(23):
            sent = T0_NS + 700_000_000 + i * 100_000_000
            out.append(("f", i, sent, None if i in lost else sent + 10_000_000, "p1"))
        return out

    doc = {**TINY_RUN, "expectations": [{"type": "failover_gap", "flow": "f", "max": 0.25, "text": "f gap ≤ 250 ms"}]}
    a = analyse(load_run(write_raw_dir(tmp_path / "late", doc, packets=rows(set()))))
    (f,) = a.flows
    assert f.max_gap_ms == pytest.approx(100.0)
    assert [(x.passed, x.value) for x in a.expectations] == [(True, pytest.approx(0.1))]
    b = analyse(load_run(write_raw_dir(tmp_path / "late-lost", doc, packets=rows({0, 1, 2}))))
    (g,) = b.flows
    # the first packet sent (0.7 s) stands in for an arrival: seq 3 arrives at 1.01 s
    assert g.max_gap_ms == pytest.approx(310.0) and g.max_gap_at_s == pytest.approx(0.7)
    assert [(x.passed, x.value) for x in b.expectations] == [(False, pytest.approx(0.31))]
