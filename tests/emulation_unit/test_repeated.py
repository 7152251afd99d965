"""Repeated runs: the statistics (nearest-rank quantiles, the median's order-statistic interval), the
rules that judge an expectation over runs, the verdict, and the combined report built from run
directories (emulation.measure.repeated, emulation.repeat)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulation.measure.repeated import (
    Bounds,
    Rule,
    bounds_of,
    combined_verdict,
    describe,
    judge,
    judged_runs,
    lower_quantile,
    median_ci,
    run_verdict,
    upper_quantile,
)
from emulation.repeat import combine, plan_runs, run_repeated, write_combined
from emulation.scenario import load
from emulation.scenario.loader import with_overrides
from patronus.core.errors import ConfigError
from tests.emulation_unit.conftest import SCENARIOS

pytestmark = pytest.mark.unit

GAP = {"type": "failover_gap", "text": "failover gap of cbr ≤ 300 ms", "flow": "cbr", "max": 0.3}
SLA = {"type": "sla_compliance", "text": "SLA compliance of cbr ≥ 90 %", "flow": "cbr", "min": 0.9}


# --- statistics -------------------------------------------------------------------------------------------

def test_nearest_rank_quantiles() -> None:
    xs = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6]
    assert upper_quantile(xs, 0.5) == 5 and upper_quantile(xs, 0.95) == 10 and upper_quantile(xs, 0.9) == 9
    assert upper_quantile(xs, 0.01) == 1 and upper_quantile(xs, 1.0) == 10
    assert lower_quantile(xs, 0.9) == 2 and lower_quantile(xs, 1.0) == 1 and lower_quantile(xs, 0.5) == 6
    # 0.95 × 20 is 19 in exact arithmetic, 19.000000000000004 in floats: the 19th value, not the 20th
    assert upper_quantile(list(range(1, 21)), 0.95) == 19
    with pytest.raises(ValueError):
        upper_quantile(xs, 0.0)
    with pytest.raises(ValueError):
        upper_quantile([], 0.5)


def test_the_median_interval_needs_six_runs_and_says_its_confidence() -> None:
    assert all(median_ci(list(range(n))) is None for n in range(6))
    assert median_ci([6, 1, 5, 2, 4, 3]) == (1, 6, 1 - 2 / 64)
    lo, hi, conf = median_ci(list(range(1, 11)))  # type: ignore[misc]
    assert (lo, hi) == (2, 9) and conf == pytest.approx(1 - 2 * 11 / 1024)
    lo, hi, conf = median_ci(list(range(1, 21)))  # type: ignore[misc]
    assert (lo, hi) == (6, 15) and conf == pytest.approx(0.9586, abs=1e-4)


@pytest.mark.property
@given(st.integers(6, 200))
def test_the_median_interval_is_the_narrowest_that_covers_95_percent(n: int) -> None:
    ci = median_ci([float(i) for i in range(n)])
    assert ci is not None
    lo, hi, conf = ci
    k = int(lo) + 1                                  # x(k) = k - 1 here
    assert hi == n - k and conf >= 0.95

    def coverage(k: int) -> float:                   # P(x(k) <= median <= x(n+1-k)) for binomial(n, 1/2)
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n

    assert conf == pytest.approx(coverage(k))
    assert k + 1 > n // 2 or coverage(k + 1) < 0.95


def test_describe_leaves_out_missing_values_and_keeps_counts_whole() -> None:
    s = describe([104, None, 101, 107, float("nan")])
    assert (s.n, s.median, s.p95, s.min, s.max) == (3, 104, 107, 101, 107)
    assert isinstance(s.max, int) and s.ci_low is None and s.ci_confidence is None
    assert describe([None]).as_dict() == {"n": 0, "median": None, "p95": None, "min": None, "max": None,
                                          "ci_low": None, "ci_high": None, "ci_confidence": None}
    s = describe([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert s.median == 0.4 and (s.ci_low, s.ci_high) == (0.1, 0.7)


# --- rules --------------------------------------------------------------------------------------------------

def test_bounds_follow_max_and_min_per_type() -> None:
    assert bounds_of(GAP) == Bounds(upper=0.3, lower=None)
    assert bounds_of(SLA) == Bounds(upper=None, lower=0.9)
    assert bounds_of({"type": "path_changes", "max": 2, "min": 0}) == Bounds(upper=2, lower=None)
    assert bounds_of({"type": "path_changes", "max": 2, "min": 1}) == Bounds(upper=2, lower=1)
    assert bounds_of({"type": "flow_stays", "flow": "x", "during": [1, 2]}) == Bounds(upper=0.0, lower=None)
    assert bounds_of({"type": "detect_time", "max": 0.2}) == Bounds(upper=0.2, lower=None)


def test_an_upper_bound_over_runs() -> None:
    values, passed = [0.1, 0.2, 0.5], [True, True, False]
    every = judge(GAP, values, passed)
    assert (every.rule.kind, every.passed, every.value, every.runs_passed, every.runs_judged) == \
        ("every_run", False, 0.5, 2, 3)
    q = judge({**GAP, "quantile": 0.6}, values, passed)        # rank ceil(1.8) = 2: 0.2
    assert (q.rule.kind, q.passed, q.value) == ("quantile", True, 0.2)
    assert judge({**GAP, "quantile": 0.7}, values, passed).passed is False   # rank 3: 0.5
    r = judge({**GAP, "pass_rate": 0.66}, values, passed)
    assert (r.rule.kind, r.passed, r.value) == ("pass_rate", True, pytest.approx(2 / 3))
    assert judge({**GAP, "pass_rate": 0.67}, values, passed).passed is False


def test_a_lower_bound_takes_the_lower_quantile() -> None:
    values, passed = [0.99, 0.95, 0.80], [True, True, False]
    q = judge({**SLA, "quantile": 0.6}, values, passed)         # 2 of 3 runs meet or beat 0.95
    assert (q.passed, q.value) == (True, 0.95)
    every = judge(SLA, values, passed)
    assert (every.passed, every.value) == (False, 0.80)


def test_both_bounds_and_failures_the_value_does_not_show() -> None:
    pc = {"type": "path_changes", "text": "cbr changes path 1–2 times", "max": 2, "min": 1}
    q = judge({**pc, "quantile": 0.6}, [0, 2, 2], [False, True, True])
    assert (q.passed, q.value, q.value_low) == (True, 2, 2)
    assert judge({**pc, "quantile": 1.0}, [0, 2, 2], [False, True, True]).passed is False
    # a detection missed in run 2 (it failed, its value is the fast detections'): beyond the bound
    dt = {"type": "detect_time", "text": "loss of hq.isp1 detected within 200 ms", "max": 0.2, "quantile": 0.5}
    assert judge(dt, [0.07, 0.08, 0.09], [True, False, False]).passed is False
    assert judge(dt, [0.07, 0.08, 0.09], [True, True, False]).passed is True
    # no value at all (nothing measured) is beyond every bound, never "0"
    r = judge({**GAP, "quantile": 0.5}, [None, None, 0.1], [False, False, True])
    assert (r.passed, r.value) == (False, None)


def test_no_run_to_judge_on() -> None:
    j = judge(GAP, [], [])
    assert (j.passed, j.value, j.runs_judged) == (None, None, 0)


def test_a_rule_is_a_share_and_one_of_two() -> None:
    with pytest.raises(ValueError):
        Rule(quantile=0.0)
    with pytest.raises(ValueError):
        Rule(pass_rate=1.5)
    with pytest.raises(ValueError):
        Rule(quantile=0.9, pass_rate=0.9)
    assert Rule().text == "in every run" and Rule(quantile=0.95).text == "at the 95 % quantile of the runs"
    assert Rule(pass_rate=0.9).text == "in at least 90 % of the runs"


@st.composite
def runs_of(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any], list[bool]]:
    """An expectation with one or two bounds and per-run (value, passed) as a run would report them:
    passed only within the bounds; failed beyond them, without a value, or (rarely) within them."""
    kind = draw(st.sampled_from(["failover_gap", "sla_compliance", "path_changes", "detect_time"]))
    doc: dict[str, Any] = {"type": kind, "text": kind}
    if kind == "sla_compliance":
        doc["min"] = draw(st.floats(0, 1))
    elif kind == "path_changes":
        doc["max"] = draw(st.integers(0, 5))
        doc["min"] = draw(st.integers(0, doc["max"]))
    else:
        doc["max"] = draw(st.floats(0.001, 1))
    b = bounds_of(doc)
    values: list[Any] = []
    passed: list[bool] = []
    for _ in range(draw(st.integers(1, 25))):
        v = draw(st.one_of(st.none(), st.integers(0, 6) if kind == "path_changes" else st.floats(0, 1.5)))
        ok = v is not None and b.met(v) and draw(st.booleans() | st.just(True))
        values.append(v)
        passed.append(ok)
    return doc, values, passed


@pytest.mark.property
@given(runs_of())
def test_the_quantile_rule_at_100_percent_is_every_run(case: tuple[dict[str, Any], list[Any], list[bool]]) -> None:
    doc, values, passed = case
    every = judge(doc, values, passed)
    q100 = judge({**doc, "quantile": 1.0}, values, passed)
    assert every.passed == q100.passed == all(passed)
    assert every.value == q100.value and every.value_low == q100.value_low
    assert judge({**doc, "pass_rate": 1.0}, values, passed).passed == all(passed)


@pytest.mark.property
@given(runs_of(), st.integers(1, 100))
def test_with_one_bound_a_quantile_is_a_pass_rate(case: tuple[dict[str, Any], list[Any], list[bool]],
                                                  pct: int) -> None:
    doc, values, passed = case
    b = bounds_of(doc)
    if b.upper is not None and b.lower is not None:
        return
    q = judge({**doc, "quantile": pct / 100}, values, passed)
    r = judge({**doc, "pass_rate": pct / 100}, values, passed)
    assert q.passed == r.passed == (sum(passed) >= math.ceil(pct / 100 * len(values) - 1e-9))


# --- verdicts -----------------------------------------------------------------------------------------------

def test_a_runs_verdict_reads_verdict_then_passed() -> None:
    assert run_verdict({"passed": True}) == "passed"
    assert run_verdict({"passed": False}) == "failed"
    assert run_verdict({"passed": False, "verdict": "inconclusive"}) == "inconclusive"
    assert run_verdict({"passed": True, "verdict": "passed"}) == "passed"
    assert run_verdict(None) == "error"


def test_the_combined_verdict() -> None:
    assert judged_runs(["passed", "inconclusive", "failed", "error"]) == [0, 2]
    assert combined_verdict(["passed", "inconclusive"], [True, True]) == "passed"
    assert combined_verdict(["passed", "failed"], [True, False]) == "failed"
    assert combined_verdict(["inconclusive", "inconclusive"], [None, None]) == "inconclusive"
    assert combined_verdict(["passed", "error"], [True]) == "error"


# --- the combined report from run directories ------------------------------------------------------------

def _fake_run(d: Path, seed: int, gap_s: float | None, *, verdict: str | None = None,
              lost: int = 100) -> None:
    """A run directory as combine() reads it: summary.json and raw/run.json."""
    (d / "raw").mkdir(parents=True, exist_ok=True)
    exps = [{**GAP, "quantile": 0.5}, {"type": "lost_packets", "text": "cbr loses ≤ 150 packets", "flow": "cbr",
                                       "max": 150, "pass_rate": 0.5}]
    (d / "raw" / "run.json").write_text(json.dumps({"expectations": exps}))
    gap_ok = gap_s is not None and gap_s <= 0.3
    summary: dict[str, Any] = {
        "scenario": "fake", "backend": "sim", "impairment_backend": "model", "seed": seed, "started_at": 100.0,
        "duration_s": 22.0, "passed": gap_ok and lost <= 150,
        "expectations": [{"text": exps[0]["text"], "passed": gap_ok, "value": gap_s},
                         {"text": exps[1]["text"], "passed": lost <= 150, "value": lost}],
        "failovers": [{"flow": "cbr", "event": "cut hq.isp1", "at_s": 8.0, "gap_ms": None if gap_s is None else
                       gap_s * 1000, "lost_packets": lost, "detect_ms": 70.0 + seed}],
        "sla": [{"flow": "cbr", "class": "default", "compliance_pct": 95.0, "latency_p50_ms": 20.0,
                 "latency_p95_ms": 50.0, "latency_p99_ms": 55.0, "jitter_ms": 15.0, "loss_pct": 0.2}],
        "paths": [], "platform": {"max_stall_ms": 5.0 * seed, "cpu": {"busy_p95_pct": 40.0}}}
    if verdict is not None:
        summary["verdict"] = verdict
    (d / "summary.json").write_text(json.dumps(summary))


def _fake_runner(gaps: Sequence[float | None], verdicts: Sequence[str | None] = (),
                 codes: Sequence[int] = ()) -> Any:
    def run_one(sc: Any, d: Path) -> int:
        i = int(d.name) - 1
        code = codes[i] if i < len(codes) else None
        if code == 2:
            return 2                                 # it could not run: no summary
        verdict = verdicts[i] if i < len(verdicts) else None
        _fake_run(d, sc.seed, gaps[i], verdict=verdict)
        return {None: 0 if gaps[i] is not None and gaps[i] <= 0.3 else 1, "inconclusive": 3}.get(verdict, 1)
    return run_one


@pytest.fixture
def scenario() -> Any:
    return load(next(p for p in SCENARIOS if p.name == "failover-basic.yaml"))


def test_a_repeated_run_judges_each_expectation_by_its_rule(scenario: Any, tmp_path: Path) -> None:
    seen: list[tuple[int, int, int]] = []
    code = run_repeated(scenario, tmp_path, 3, _fake_runner([0.1, 0.2, 0.5]), backend="sim",
                        on_run=lambda i, seed, c, d: seen.append((i, seed, c)))
    assert seen == [(1, 1, 0), (2, 2, 0), (3, 3, 1)]
    assert code == 0                                 # the gap's median (quantile 50 %) is 0.2 s ≤ 0.3 s
    doc = json.loads((tmp_path / "summary.json").read_text())
    for key in ("scenario", "backend", "impairment_backend", "seed", "started_at", "duration_s", "passed",
                "expectations", "runs", "metrics", "verdict"):
        assert key in doc, key
    assert (doc["scenario"], doc["seed"], doc["passed"], doc["verdict"]) == ("failover-basic", 1, True, "passed")
    gap = doc["expectations"][0]
    assert (gap["rule"], gap["quantile"], gap["value"], gap["values"], gap["run_passed"]) == \
        ("quantile", 0.5, 0.2, [0.1, 0.2, 0.5], [True, True, False])
    assert (gap["runs_passed"], gap["runs_judged"], gap["left_out"]) == (2, 3, 0)
    assert gap["stats"]["median"] == 0.2 and gap["stats"]["ci_low"] is None
    assert doc["runs"] == [{"run": i, "dir": f"runs/{i}", "seed": i, "passed": i < 3,
                            "verdict": "passed" if i < 3 else "failed", "exit_code": 0 if i < 3 else 1}
                           for i in (1, 2, 3)]
    metrics = {(m["section"], m["item"], m["metric"]): m for m in doc["metrics"]}
    assert metrics[("failover", "cut hq.isp1 / cbr", "detect_ms")]["values"] == [71.0, 72.0, 73.0]
    assert metrics[("failover", "cut hq.isp1 / cbr", "gap_ms")]["median"] == 200.0
    assert metrics[("sla", "cbr (default)", "loss_pct")]["max"] == 0.2
    assert metrics[("platform", "host", "cpu.busy_p95_pct")]["n"] == 3
    assert metrics[("platform", "host", "max_stall_ms")]["values"] == [5.0, 10.0, 15.0]
    assert json.loads((tmp_path / "repeat.json").read_text())["seeds"] == [1, 2, 3]
    for f in ("report.md", "report.html", "junit.xml", "scenario.yaml"):
        assert (tmp_path / f).is_file(), f
    md = (tmp_path / "report.md").read_text()
    assert "# failover-basic: PASSED over 3 runs" in md and "at the 50 % quantile of the runs" in md
    assert "runs/3/report.html" in md
    # the same runs on disk: the same bytes
    before = (tmp_path / "summary.json").read_bytes()
    write_combined(tmp_path)
    assert (tmp_path / "summary.json").read_bytes() == before


def test_a_failing_quantile_fails_the_repeat_with_a_junit_failure(scenario: Any, tmp_path: Path) -> None:
    assert run_repeated(scenario, tmp_path, 3, _fake_runner([0.1, 0.4, 0.5]), backend="sim") == 1
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert (doc["passed"], doc["verdict"]) == (False, "failed")
    assert [e["verdict"] for e in doc["expectations"]] == ["failed", "passed"]
    junit = (tmp_path / "junit.xml").read_text()
    assert 'tests="2" failures="1"' in junit and "400.0 ms (p50)" in junit


def test_inconclusive_runs_are_left_out_and_all_inconclusive_is_inconclusive(scenario: Any, tmp_path: Path) -> None:
    code = run_repeated(scenario, tmp_path / "a", 3, _fake_runner([0.9, 0.1, 0.2], ["inconclusive"]),
                        backend="mininet")
    assert code == 0                                  # run 1's 900 ms gap is left out
    doc = json.loads((tmp_path / "a" / "summary.json").read_text())
    gap = doc["expectations"][0]
    assert (gap["runs_judged"], gap["left_out"], gap["value"], gap["stats"]["max"]) == (2, 1, 0.1, 0.2)
    assert gap["values"] == [0.9, 0.1, 0.2]          # every run's value is kept, the statistics leave it out
    assert doc["repeat"] == {"planned": 3, "made": 3, "passed": 2, "failed": 0, "inconclusive": 1, "error": 0,
                             "left_out": 1}
    assert doc["runs"][0]["verdict"] == "inconclusive" and doc["runs"][0]["exit_code"] == 3
    assert doc["metrics_runs"] == [2, 3]

    code = run_repeated(scenario, tmp_path / "b", 2, _fake_runner([0.9, 0.9], ["inconclusive"] * 2),
                        backend="mininet")
    assert code == 3
    doc = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert (doc["verdict"], doc["passed"]) == ("inconclusive", False)
    assert [e["verdict"] for e in doc["expectations"]] == ["inconclusive", "inconclusive"]
    assert doc["metrics_runs"] == [1, 2]             # nothing judged: the statistics are over every run
    assert 'skipped="2"' in (tmp_path / "b" / "junit.xml").read_text()


def test_a_run_that_could_not_run_stops_the_repetition(scenario: Any, tmp_path: Path) -> None:
    code = run_repeated(scenario, tmp_path, 4, _fake_runner([0.1, 0.1, 0.1, 0.1], codes=[0, 2]), backend="sim")
    assert code == 2
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert [r["verdict"] for r in doc["runs"]] == ["passed", "error"]
    assert doc["repeat"]["made"] == 2 and doc["repeat"]["planned"] == 4 and doc["verdict"] == "error"
    assert doc["runs"][1] == {"run": 2, "dir": "runs/2", "seed": 2, "passed": None, "verdict": "error",
                              "exit_code": 2}
    assert "<error" in (tmp_path / "junit.xml").read_text()


def test_runs_of_different_scenarios_are_refused(scenario: Any, tmp_path: Path) -> None:
    run_repeated(scenario, tmp_path, 2, _fake_runner([0.1, 0.1]), backend="sim")
    s = json.loads((tmp_path / "runs" / "2" / "summary.json").read_text())
    s["expectations"][0]["text"] = "something else"
    (tmp_path / "runs" / "2" / "summary.json").write_text(json.dumps(s))
    with pytest.raises(ConfigError) as exc:
        combine(tmp_path)
    assert exc.value.errors[0][0] == "runs/2/summary.json"


def test_the_plan(scenario: Any) -> None:
    runs = plan_runs(scenario, 3)
    assert [s.seed for s in runs] == [1, 2, 3] and runs[2].expectations == scenario.expectations
    for bad in (0, -1, 1001):
        with pytest.raises(ConfigError) as exc:
            plan_runs(scenario, bad)
        assert exc.value.errors[0][0] == "--repeat"
    big = with_overrides(scenario, {"seed": 2**63 - 2})
    assert len(plan_runs(big, 2)) == 2
    with pytest.raises(ConfigError, match="largest seed"):
        plan_runs(big, 3)


def test_an_earlier_repeated_run_is_not_mixed_in(scenario: Any, tmp_path: Path) -> None:
    run_repeated(scenario, tmp_path, 2, _fake_runner([0.1, 0.1]), backend="sim")
    before = (tmp_path / "summary.json").read_bytes()
    with pytest.raises(ConfigError) as exc:
        run_repeated(scenario, tmp_path, 3, _fake_runner([0.5, 0.5, 0.5]), backend="sim")
    assert exc.value.errors[0][0] == "--out" and "already holds" in exc.value.errors[0][1]
    assert (tmp_path / "summary.json").read_bytes() == before and not (tmp_path / "runs" / "3").exists()


def test_compare_points_a_repeated_run_to_its_runs(scenario: Any, tmp_path: Path) -> None:
    from emulation.compare import load_side

    run_repeated(scenario, tmp_path, 2, _fake_runner([0.1, 0.1]), backend="sim")
    with pytest.raises(ConfigError) as exc:
        load_side(tmp_path)
    assert "compare one of them" in exc.value.errors[0][1]
