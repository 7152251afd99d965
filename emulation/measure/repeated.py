"""Statistics and verdicts over repeated runs of one scenario (`patronus-lab run --repeat N`).

Pure: plain values in (each run's expectation values and verdicts, run.json's expectation documents),
plain values out; no files, no clock, no randomness. `emulation.repeat` runs the runs and writes the
combined report from what this module computes.

Statistics of a metric over runs (`describe`)
    median (the mean of the two middle values for an even count), p95 by nearest rank (the smallest
    measured value that at least 95 % of the runs are at or below), min, max, and a 95 % confidence
    interval of the median. The interval is the distribution-free order-statistic one: [x(k),
    x(n+1-k)] of the sorted values with the largest k for which the binomial(n, 1/2) probability of
    fewer than k values below the median is at most 2.5 % on each side; `ci_confidence` is its exact
    coverage (at least 95 %, e.g. 96.9 % with 6 runs). Why not a bootstrap: a test-bed makes few runs
    (5 to 20), where the percentile bootstrap of a median under-covers (its interval often collapses
    to one value), discrete metrics (lost packets, path changes) make that worse, and its result
    depends on a seed and a resample count. The order-statistic interval holds for any continuous
    distribution, needs no randomness, and its ends are measured values. It needs 6 runs (with 5,
    even [min, max] covers only 93.75 %): with fewer it is None ("n/a"), never a narrower claim.

Expectations over runs (`judge`), on the runs that count (`judged_runs`: inconclusive runs, whose
platform noise explains their result, are left out, and so are runs that could not run)
    Each expectation type has bounds (`bounds_of`): `max` is an upper bound (failover_gap,
    lost_packets, path_changes, detect_time; flow_stays is "at most 0 path changes"), `min` a lower one
    (sla_compliance; path_changes when its min is above 0). The rule:

    * every run (the default): every judged run passes it. The value shown is the worst run's.
    * `quantile: q`: the per-run values combined at that quantile by nearest rank, and compared with
      the bound: for an upper bound the value at least q of the runs are at or below (the q
      quantile), for a lower bound the value at least q of the runs meet or beat (the 1 - q
      quantile). A run without a value, or that failed its expectation for a reason its value does
      not show (a cut never detected, while the detections that happened were fast), counts as
      beyond every bound. q = 100 % is the every-run rule.
    * `pass_rate: r`: at least r of the judged runs pass it. The value shown is the share that did.

    With one bound, "the q quantile meets the bound" and "at least q of the runs meet it" are the same
    test; the quantile rule says how far from the bound the runs are, the pass-rate rule counts
    verdicts (and takes each run's own verdict as it is, whatever made it).

The combined verdict (`combined_verdict`) is decided in one place: see there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CI_LEVEL = 0.95
P95 = 0.95

# each run's verdict, as its summary.json says it (`verdict`, else `passed`); "error": it could not run
PASSED, FAILED, INCONCLUSIVE, ERROR = "passed", "failed", "inconclusive", "error"
RUN_VERDICTS = (PASSED, FAILED, INCONCLUSIVE, ERROR)
EXIT_CODES = {PASSED: 0, FAILED: 1, ERROR: 2, INCONCLUSIVE: 3}


# --- order statistics ---------------------------------------------------------------------------------

def _rank(q: float, n: int) -> int:
    """Nearest rank (1-based) of the q quantile of n values: the smallest r with r / n >= q."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile {q!r} is not in (0, 1]")
    if n <= 0:
        raise ValueError("no values")
    return max(1, min(n, math.ceil(q * n - 1e-9)))     # 1e-9: 0.95 × 20 is 19, not 19.000000000000004


def upper_quantile(values: Sequence[float], q: float) -> float:
    """The smallest value that at least q of `values` are at or below (nearest rank)."""
    xs = sorted(values)
    return xs[_rank(q, len(xs)) - 1]


def lower_quantile(values: Sequence[float], q: float) -> float:
    """The largest value that at least q of `values` are at or above (nearest rank, from the top)."""
    xs = sorted(values)
    return xs[len(xs) - _rank(q, len(xs))]


def median_ci(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float, float] | None:
    """(low, high, exact coverage) of the distribution-free order-statistic interval of the median, or
    None when there are too few values for any interval to reach `level`."""
    xs = sorted(values)
    n = len(xs)
    tail = (1.0 - level) / 2.0
    best = 0
    below = 0.0                       # P(Binomial(n, 1/2) <= k - 1), for k = 1, 2, ...
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1) / 2.0 ** n
        if below > tail + 1e-12:
            break
        best = k
    if best == 0:
        return None
    coverage = 1.0 - 2.0 * sum(math.comb(n, i) for i in range(best)) / 2.0 ** n
    return xs[best - 1], xs[n - best], coverage


@dataclass(frozen=True, slots=True)
class MetricStats:
    n: int
    median: float | None
    p95: float | None
    min: float | None
    max: float | None
    ci_low: float | None
    ci_high: float | None
    ci_confidence: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "median": self.median, "p95": self.p95, "min": self.min, "max": self.max,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_confidence": self.ci_confidence}


def describe(values: Sequence[float | int | None]) -> MetricStats:
    """Median, p95, min, max and the median's 95 % interval of the values that are numbers (None and
    non-finite values are left out; `n` counts the rest)."""
    xs = [x for x in map(_number, values) if x is not None]
    if not xs:
        return MetricStats(0, None, None, None, None, None, None, None)
    ci = median_ci(xs)
    return MetricStats(n=len(xs), median=statistics.median(xs), p95=upper_quantile(xs, P95), min=min(xs),
                       max=max(xs), ci_low=None if ci is None else ci[0], ci_high=None if ci is None else ci[1],
                       ci_confidence=None if ci is None else ci[2])


# --- rules ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rule:
    """How an expectation is judged over runs: at a quantile, by a pass rate, or (neither) every run."""

    quantile: float | None = None
    pass_rate: float | None = None

    def __post_init__(self) -> None:
        for name in ("quantile", "pass_rate"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v <= 1.0:
                raise ValueError(f"{name}: expected a share in (0, 1], got {v!r}")
        if self.quantile is not None and self.pass_rate is not None:
            raise ValueError("quantile and pass_rate together")

    @property
    def kind(self) -> str:
        return "quantile" if self.quantile is not None else "pass_rate" if self.pass_rate is not None else "every_run"

    @property
    def text(self) -> str:
        if self.quantile is not None:
            return f"at the {self.quantile * 100:.4g} % quantile of the runs"
        if self.pass_rate is not None:
            return f"in at least {self.pass_rate * 100:.4g} % of the runs"
        return "in every run"


@dataclass(frozen=True, slots=True)
class Bounds:
    upper: float | None       # the value must be at most this
    lower: float | None       # ... and at least this

    def met(self, value: float) -> bool:
        return (self.upper is None or value <= self.upper) and (self.lower is None or value >= self.lower)


def _number(v: Any) -> float | None:
    """A finite number as it is (an int stays an int: counts are shown as counts), else None."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return v


def bounds_of(doc: Mapping[str, Any]) -> Bounds:
    """The bounds of a run.json expectation document (type, max, min, ...), from its type."""
    kind = doc.get("type")
    if kind == "flow_stays":
        return Bounds(upper=0.0, lower=None)
    if kind == "sla_compliance":
        return Bounds(upper=None, lower=_number(doc.get("min")))
    if kind == "path_changes":
        lo = _number(doc.get("min"))
        return Bounds(upper=_number(doc.get("max")), lower=lo if lo else None)
    return Bounds(upper=_number(doc.get("max")), lower=None)


def rule_of(doc: Mapping[str, Any]) -> Rule:
    """The rule of a run.json expectation document (its optional `quantile` or `pass_rate`, ratios)."""
    return Rule(quantile=_number(doc.get("quantile")), pass_rate=_number(doc.get("pass_rate")))


@dataclass(frozen=True, slots=True)
class Judgement:
    """One expectation over the judged runs. `passed` None: no run to judge it on."""

    rule: Rule
    passed: bool | None
    value: float | None        # the combined value: the quantile (upper bound's, if any), or the pass rate
    value_low: float | None    # with an upper and a lower bound: the lower bound's quantile
    runs_judged: int
    runs_passed: int


def _effective(value: float | int | None, passed: bool, bounds: Bounds) -> float | None:
    """The run's value as the quantile rule sees it: None (beyond every bound) without a value, or when
    the run failed although its value is within the bounds."""
    v = _number(value)
    if v is None or (not passed and bounds.met(v)):
        return None
    return v


def judge(doc: Mapping[str, Any], values: Sequence[float | int | None], passed: Sequence[bool]) -> Judgement:
    """Judge the run.json expectation `doc` over the judged runs' values and verdicts (same order)."""
    if len(values) != len(passed):
        raise ValueError("one value and one verdict per run")
    rule, bounds = rule_of(doc), bounds_of(doc)
    n, ok = len(values), sum(1 for p in passed if p)
    if n == 0:
        return Judgement(rule, None, None, None, 0, 0)
    eff = [_effective(v, p, bounds) for v, p in zip(values, passed, strict=True)]
    q = rule.quantile if rule.quantile is not None else 1.0
    hi = upper_quantile([math.inf if v is None else v for v in eff], q)
    lo = lower_quantile([-math.inf if v is None else v for v in eff], q)
    value = hi if bounds.upper is not None or bounds.lower is None else lo
    value_low = lo if bounds.upper is not None and bounds.lower is not None else None
    if rule.pass_rate is not None:
        verdict = ok >= math.ceil(rule.pass_rate * n - 1e-9)
        return Judgement(rule, verdict, ok / n, None, n, ok)
    if rule.quantile is None:
        verdict = ok == n
    elif bounds.upper is None and bounds.lower is None:      # (a type without bounds: count verdicts)
        verdict = ok >= _rank(rule.quantile, n)
    else:       # a run beyond every bound is ±inf, which no finite bound admits
        verdict = (bounds.upper is None or hi <= bounds.upper) and (bounds.lower is None or lo >= bounds.lower)
    return Judgement(rule, verdict, value if math.isfinite(value) else None,
                     value_low if value_low is not None and math.isfinite(value_low) else None, n, ok)


# --- verdicts -------------------------------------------------------------------------------------------

def run_verdict(summary: Mapping[str, Any] | None) -> str:
    """A run's verdict from its summary.json: `verdict` when it has one, else `passed`; "error" when the
    run has no summary (it could not run)."""
    if summary is None:
        return ERROR
    v = summary.get("verdict")
    if v in (PASSED, FAILED, INCONCLUSIVE):
        return str(v)
    return PASSED if summary.get("passed") else FAILED


def judged_runs(verdicts: Sequence[str]) -> list[int]:
    """Indices of the runs expectations are judged on: those that passed or failed. Inconclusive runs
    (the platform's noise explains their result) and runs that could not run are left out."""
    return [i for i, v in enumerate(verdicts) if v in (PASSED, FAILED)]


def combined_verdict(verdicts: Sequence[str], expectations_passed: Sequence[bool | None]) -> str:
    """The verdict of the repeated run, decided here only:

    * "error" when a run could not run (the repetition stopped there: exit 2);
    * "inconclusive" when no run is left to judge on (every run inconclusive);
    * "passed" when every expectation passes by its rule over the judged runs, else "failed"."""
    if ERROR in verdicts:
        return ERROR
    if not judged_runs(verdicts):
        return INCONCLUSIVE
    return PASSED if all(p is True for p in expectations_passed) else FAILED
