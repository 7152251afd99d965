"""SLA monitoring: per path and per traffic class targets, windowed measurements, compliance, events.

State, and what may change it (every state change of this module happens here, nowhere else):
  * targets             -- `set_target` / `clear_target` only (configuration);
  * sample windows      -- `record_latency`, `record_loss`, `record_probe`, `record_probe_run` append;
                           any call that takes `now` (`record_*` but the run, `measure`,
                           `select_best_path`, `evaluate`) evicts the samples older than the window,
                           which never changes what a measurement says;
  * verdicts, compliance time, the violation latch and the event queue -- `evaluate` (and `on_timer`,
                           which calls it); `drain_events` empties the queue; `forget` drops a subject.
What this module must not know: any clock (`now` is always an argument), sockets, how probes are sent
or answered, the router and its policies, or what a subject is (subject ids are opaque strings, usually
path ids). It performs no I/O and imports nothing but the standard library and `patronus.core`.

Definitions (all over the samples of the last `window_s` seconds: a sample is kept while
`now - t <= window_s`):
  * latency percentiles use the *nearest-rank* method: p-th percentile of n sorted samples is the
    sample of rank ceil(p·n/100) (1-based). It is always one of the samples, so p50 ≤ p95 ≤ p99 and
    all lie within [min, max];
  * jitter is the population standard deviation of the latency samples (0 for fewer than 2), the same
    definition as the path monitor's `ProbeWindow.stdev_ms`;
  * loss_pct = 100 · lost / sent over the packet counts recorded in the window;
  * samples = max(latency samples, packets counted for loss): with `record_probe` that is the number of
    probes sent, answered or not. Fewer than `min_samples` means insufficient data: `compliant` is None,
    which is never a violation;
  * latency and jitter are judged only when there is at least one latency sample, loss only when
    packets were counted; a metric without data is reported as 0.0 (as the path monitor does) and left
    out of the verdict and the score;
  * compliance: measured ≤ target for every judged metric, the latency compared being the target's
    `latency_percentile` (p50, p95 or p99);
  * score = mean over the judged metrics of 100 · min(1, target / measured) (100 when measured is 0),
    so 100 means every target met, and a metric at twice its target contributes 50. 0 with no data;
  * compliance_pct = share of the observed time during which the subject/class was compliant: the time
    between two evaluations is attributed to the verdict of the earlier one; time with insufficient
    data is not observed time. None until some time has been observed.
Events: `SlaViolated` when a subject/class goes from compliant or unknown to non-compliant;
`SlaRestored` (with `violated_for_s`) when it is next found compliant. The violation is latched: it
survives a spell of insufficient data and a change in which targets fail, so no event is repeated while
the state holds. `SlaViolated.latency_ms` is the latency at the target's percentile.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from fractions import Fraction

from patronus.core.errors import ConfigError
from patronus.core.events import Event, SlaRestored, SlaViolated
from patronus.core.units import parse_duration, parse_ratio
from patronus.core.validate import is_number, show

DEFAULT_CLASS = "default"
PERCENTILES = (50, 95, 99)

# Config keys of `SlaTarget.from_dict` and the attribute each one sets.
_KEY_TO_ATTR = {
    "latency": "latency_ms",
    "loss": "loss_pct",
    "jitter": "jitter_ms",
    "window": "window_s",
    "min_samples": "min_samples",
    "latency_percentile": "latency_percentile",
}
_ATTR_TO_KEY = {v: k for k, v in _KEY_TO_ATTR.items()}


def _check_target(values: Mapping[str, object]) -> list[tuple[str, str]]:
    """Range checks shared by the constructor and `from_dict`: (attribute, reason) for each bad value."""
    errors: list[tuple[str, str]] = []

    def number(attr: str, lo: float, hi: float, lo_open: bool, what: str) -> None:
        v = values[attr]
        if not is_number(v):
            errors.append((attr, f"expected a finite number, got {show(v)}"))
            return
        x = float(v)  # type: ignore[arg-type]
        if x < lo or (lo_open and x == lo) or x > hi:
            errors.append((attr, f"{what}, got {show(v)}"))

    number("latency_ms", 0.0, math.inf, True, "must be greater than 0 ms")
    number("loss_pct", 0.0, 100.0, False, "must be between 0 and 100 %")
    number("jitter_ms", 0.0, math.inf, False, "must be at least 0 ms")
    number("window_s", 0.0, math.inf, True, "must be greater than 0 s")
    ms = values["min_samples"]
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 1:
        errors.append(("min_samples", f"expected a whole number of at least 1, got {show(ms)}"))
    pct = values["latency_percentile"]
    if isinstance(pct, bool) or pct not in PERCENTILES:
        errors.append(("latency_percentile", f"expected one of 50, 95, 99, got {show(pct)}"))
    return errors


def _bare_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        s = value.strip()
        return bool(s) and (s[-1].isdigit() or s[-1] == ".")
    return False


@dataclass(frozen=True, slots=True)
class SlaTarget:
    """What a subject (path) or a subject's traffic class must achieve, and how it is measured."""

    latency_ms: float = 100.0
    loss_pct: float = 1.0
    jitter_ms: float = 20.0
    window_s: float = 60.0
    min_samples: int = 10
    latency_percentile: int = 95   # which percentile is compared to `latency_ms`: 50, 95 or 99

    def __post_init__(self) -> None:
        errors = _check_target({f.name: getattr(self, f.name) for f in fields(self)})
        if errors:
            raise ConfigError(errors)

    @classmethod
    def from_dict(cls, d: object, field_prefix: str = "", base: SlaTarget | None = None) -> SlaTarget:
        """Parse a config mapping in human units; keys left out keep `base`'s values (or the defaults).

        Keys: `latency` and `jitter` (durations with a unit: "150ms"; a bare number is refused, as it
        would mean seconds), `loss` ("1%", or a ratio in [0, 1]), `window` ("60s"; a bare number is
        seconds), `min_samples` (int), `latency_percentile` (50, 95, 99, or "p95"). Raises
        `ConfigError` listing every bad or unknown field, each named `<field_prefix>.<key>`.
        """
        def where(key: str) -> str:
            return f"{field_prefix}.{key}" if field_prefix else key

        if not isinstance(d, Mapping):
            raise ConfigError([(field_prefix, f"expected a mapping of SLA targets, got {show(d)}")])
        base = base if base is not None else cls()
        values: dict[str, object] = {f.name: getattr(base, f.name) for f in fields(base)}
        errors: list[tuple[str, str]] = []
        bad: set[str] = set()
        for key in d:
            if key not in _KEY_TO_ATTR:
                errors.append((where(str(key)), f"unknown key; expected one of {', '.join(_KEY_TO_ATTR)}"))
        for key, attr in _KEY_TO_ATTR.items():
            if key not in d:
                continue
            raw = d[key]
            try:
                if key in ("latency", "jitter"):
                    if _bare_number(raw):
                        raise ConfigError(f'expected a duration with a unit like "100ms", got {show(raw)} '
                                          "(a bare number would mean seconds)", where(key))
                    values[attr] = parse_duration(raw, where(key)) * 1000.0
                elif key == "window":
                    values[attr] = parse_duration(raw, where(key))
                elif key == "loss":
                    values[attr] = parse_ratio(raw, where(key)) * 100.0
                elif key == "latency_percentile" and isinstance(raw, str):
                    text = raw.strip().lower().removeprefix("p")
                    values[attr] = int(text) if text.isascii() and text.isdigit() and len(text) <= 3 else raw
                else:
                    values[attr] = raw
            except ConfigError as exc:
                errors.extend(exc.errors)
                bad.add(attr)
        for attr, reason in _check_target(values):
            if attr not in bad:
                errors.append((where(_ATTR_TO_KEY[attr]), reason))
        if errors:
            raise ConfigError(errors)
        return cls(**values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        """Inverse of `from_dict`, in human units."""
        return {"latency": f"{self.latency_ms:g}ms", "loss": f"{self.loss_pct:g}%",
                "jitter": f"{self.jitter_ms:g}ms", "window": f"{self.window_s:g}s",
                "min_samples": self.min_samples, "latency_percentile": self.latency_percentile}


class SlaState(enum.Enum):
    """Latched verdict of a subject/class at its last evaluation."""

    UNKNOWN = "unknown"       # never had enough data (or only insufficient data since it was compliant)
    COMPLIANT = "compliant"
    VIOLATED = "violated"     # stays until a compliant evaluation, through spells of insufficient data


@dataclass(frozen=True, slots=True)
class SlaMeasurement:
    """What the window of one subject/class says at `at`, judged against `target`."""

    subject: str
    traffic_class: str
    at: float
    target: SlaTarget
    samples: int                 # max(latency_samples, packets_sent)
    latency_samples: int
    packets_sent: int
    packets_lost: int
    latency_p50_ms: float        # 0.0 when latency_samples == 0
    latency_p95_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    jitter_ms: float             # population standard deviation of the latency samples
    loss_pct: float              # 0.0 when packets_sent == 0
    compliant: bool | None       # None: insufficient data (samples < target.min_samples)
    violations: tuple[str, ...]  # among "latency", "loss", "jitter"; () unless compliant is False
    score: float                 # in [0, 100]
    compliance_pct: float | None  # accumulated by `evaluate`; None before any observed time

    @property
    def latency_ms(self) -> float:
        """The latency compared to the target: the target's `latency_percentile`."""
        p = self.target.latency_percentile
        return self.latency_p50_ms if p == 50 else self.latency_p95_ms if p == 95 else self.latency_p99_ms

    @property
    def sufficient(self) -> bool:
        return self.compliant is not None


def nearest_rank(pct: float, n: int) -> int:
    """The 1-based rank of the `pct`-th percentile of `n` values by the nearest-rank method:
    ceil(pct·n/100), computed exactly (a decimal `pct` is taken as written: 95 % of 20 is rank 19, never
    20 by float rounding), within 1..n. The one definition the core's SLA and the test-bed's analysis use."""
    rank = (pct * n + 99) // 100 if isinstance(pct, int) else math.ceil(Fraction(str(pct)) * n / 100)
    return min(max(rank, 1), n)


def _nearest_rank(sorted_values: list[float], pct: int) -> float:
    return sorted_values[nearest_rank(pct, len(sorted_values)) - 1]


# Measurement resolution: a value within this of its target meets it. Below it, differences are float
# rounding (the standard deviation of [0, 1e-106] is not a real 5e-107 ms of jitter), and without it a
# uniform shift of every sample could turn a "violation" into compliance.
RESOLUTION = 1e-9


def _part(target: float, measured: float) -> float:
    if measured <= target + RESOLUTION:
        return 100.0
    return 100.0 * min(1.0, target / measured)


@dataclass(slots=True)
class _Series:
    """Samples and verdict state of one (subject, traffic class).

    Besides the samples, running sums of the latencies' deviations from a reference value `shift`
    (Σ(v − shift) and Σ(v − shift)²): the mean and the standard deviation of a window of n samples
    in O(1) at each evaluation rather than two passes over the window (a path probed 10 times a
    second has 600 latencies in a 60 s window, evaluated every second). The sums are recomputed
    exactly (`math.fsum`, `shift` moved to the mean) once as many samples have come and gone as the
    window holds, so rounding cannot build up; with `shift` near the mean there is no cancellation."""

    # (t, latency_ms or None, packets sent, of which lost): a probe is one entry with both
    samples: deque[tuple[float, float | None, int, int]] = field(default_factory=deque)
    # runs of probes answered with one latency, (their times, the latency): `add_run`
    runs: deque[tuple[list[float], float]] = field(default_factory=deque)
    sorted_latency: list[float] = field(default_factory=list)                 # the latencies, sorted
    sent: int = 0
    lost: int = 0
    state: SlaState = SlaState.UNKNOWN
    violated_since: float | None = None
    last_eval_at: float | None = None
    last_sufficient: bool = False
    last_compliant: bool = False
    compliant_s: float = 0.0
    observed_s: float = 0.0
    shift: float = 0.0
    dev_sum: float = 0.0            # Σ (v − shift) over the latencies in the window
    dev_sumsq: float = 0.0          # Σ (v − shift)²
    changes: int = 0                # latencies added or evicted since the sums were last recomputed
    window_s: float = 0.0           # the target's window, as of targets version `window_of`
    window_of: int = -1

    def add(self, now: float, v: float | None, sent: int, lost: int) -> None:
        """One sample at `now`: a latency (or None), and packet counts (0, 0 for a latency alone)."""
        self.samples.append((now, v, sent, lost))
        if v is not None:
            insort(self.sorted_latency, v)
            if len(self.sorted_latency) == 1:
                self.shift = v
            d = v - self.shift
            self.dev_sum += d
            self.dev_sumsq += d * d
            self.changes += 1
        self.sent += sent
        self.lost += lost

    def add_run(self, times: list[float], v: float) -> None:
        """One probe answered with latency `v` at each of `times` (ascending): what `add(t, v, 1, 0)`
        for each gives, kept as one entry of `runs` (a coast's second of probes: O(1), not O(len))."""
        k = len(times)
        self.runs.append((times, v))
        s = self.sorted_latency
        if not s:
            self.shift = v
        i = bisect_right(s, v)
        s[i:i] = [v] * k
        d = v - self.shift
        self.dev_sum += d * k
        self.dev_sumsq += d * d * k
        self.changes += k
        self.sent += k

    def evict(self, now: float, window_s: float) -> None:
        cutoff = now - window_s
        q, runs = self.samples, self.runs
        if (not q or q[0][0] >= cutoff) and (not runs or runs[0][0][0] >= cutoff):
            return
        s = self.sorted_latency
        run_v, run = 0.0, 0        # equal latencies leave in one cut
        while q and q[0][0] < cutoff:
            _, v, sent, lost = q.popleft()
            if v is not None:
                if run and v != run_v:
                    self._remove(run_v, run)
                    run = 0
                run_v = v
                run += 1
            self.sent -= sent
            self.lost -= lost
        if run:
            self._remove(run_v, run)
        while runs and runs[0][0][0] < cutoff:
            times, v = runs[0]
            if times[-1] < cutoff:
                k = len(times)
                runs.popleft()
            else:
                k = bisect_left(times, cutoff)
                runs[0] = (times[k:], v)
            self._remove(v, k)
            self.sent -= k
        if not s:
            self.dev_sum = self.dev_sumsq = 0.0
            self.changes = 0

    def _remove(self, v: float, k: int) -> None:
        s = self.sorted_latency
        i = bisect_left(s, v)
        del s[i:i + k]
        d = v - self.shift
        self.dev_sum -= d * k
        self.dev_sumsq -= d * d * k
        self.changes += k

    def mean_and_stdev(self) -> tuple[float, float]:
        """Mean and population standard deviation of the latencies in the window (0, 0 when none)."""
        vals = self.sorted_latency
        n = len(vals)
        if n == 0:
            return 0.0, 0.0
        if vals[0] == vals[-1]:
            return vals[0], 0.0
        if self.changes >= n:
            self._recompute()
        m1 = self.dev_sum / n
        var = self.dev_sumsq / n - m1 * m1
        mean = self.shift + m1
        # rounding must not put the mean outside the samples
        return min(max(mean, vals[0]), vals[-1]), math.sqrt(var) if var > 0.0 else 0.0

    def _recompute(self) -> None:
        vals = self.sorted_latency
        shift = self.shift = math.fsum(vals) / len(vals)
        self.dev_sum = math.fsum(v - shift for v in vals)
        self.dev_sumsq = math.fsum((v - shift) * (v - shift) for v in vals)
        self.changes = 0


class SlaMonitor:
    """SLA targets, sample windows and verdicts for any number of subjects and traffic classes.

    Sans-IO: feed samples with `record_*`, call `on_timer(now)` when `next_deadline()` is due (or
    `evaluate(now)` directly), and `drain_events()` for `SlaViolated` / `SlaRestored`.
    Targets resolve (subject, class) → class default → subject default → global default.
    """

    def __init__(self, default_target: SlaTarget | None = None, *, interval_s: float = 1.0) -> None:
        if not is_number(interval_s) or interval_s <= 0.0:
            raise ConfigError(f"expected an evaluation interval greater than 0 s, got {interval_s!r}",
                              "interval_s")
        self.interval_s = float(interval_s)
        self._targets: dict[tuple[str | None, str | None], SlaTarget] = {
            (None, None): default_target if default_target is not None else SlaTarget()}
        self._targets_version = 0       # bumped by every target change: series cache their window by it
        self._series: dict[tuple[str, str], _Series] = {}
        self._keys: list[tuple[str, str]] = []      # sorted keys of _series: stable evaluation order
        self._events: list[Event] = []
        self._next_eval_at: float | None = None

    # --- targets ------------------------------------------------------------------------------------

    def set_target(self, target: SlaTarget, subject: str | None = None,
                   traffic_class: str | None = None) -> None:
        """Set the global default (no subject, no class), a subject's default, a class's default, or
        the target of one (subject, class)."""
        self._targets[(subject, traffic_class)] = target
        self._targets_version += 1

    def clear_target(self, subject: str | None = None, traffic_class: str | None = None) -> None:
        """Remove a target set by `set_target` (the global default is reset to `SlaTarget()`)."""
        if subject is None and traffic_class is None:
            self._targets[(None, None)] = SlaTarget()
        else:
            self._targets.pop((subject, traffic_class), None)
        self._targets_version += 1

    def target_for(self, subject: str, traffic_class: str = DEFAULT_CLASS) -> SlaTarget:
        t = self._targets
        for key in ((subject, traffic_class), (None, traffic_class), (subject, None)):
            found = t.get(key)
            if found is not None:
                return found
        return t[(None, None)]

    # --- samples ------------------------------------------------------------------------------------

    def _series_for(self, subject: str, traffic_class: str, now: float) -> _Series:
        key = (subject, traffic_class)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
            insort(self._keys, key)
            if self._next_eval_at is None:
                self._next_eval_at = now + self.interval_s
        return s

    def record_latency(self, subject: str, latency_ms: float, now: float,
                       traffic_class: str = DEFAULT_CLASS) -> None:
        """One latency (RTT) sample in ms, observed at `now`."""
        if not is_number(latency_ms) or latency_ms < 0.0:
            raise ValueError(f"latency must be a finite number of ms ≥ 0, got {latency_ms!r}")
        s = self._series_for(subject, traffic_class, now)
        s.add(now, float(latency_ms), 0, 0)
        s.evict(now, self.target_for(subject, traffic_class).window_s)

    def record_loss(self, subject: str, sent: int, lost: int, now: float,
                    traffic_class: str = DEFAULT_CLASS) -> None:
        """Packet counts observed at `now`: `sent` packets of which `lost` were lost."""
        if isinstance(sent, bool) or isinstance(lost, bool) or not isinstance(sent, int) \
                or not isinstance(lost, int) or not 0 <= lost <= sent:
            raise ValueError(f"expected packet counts with 0 ≤ lost ≤ sent, got sent={sent!r} lost={lost!r}")
        s = self._series_for(subject, traffic_class, now)
        if sent:
            s.add(now, None, sent, lost)
        s.evict(now, self.target_for(subject, traffic_class).window_s)

    def record_probe(self, subject: str, rtt_ms: float | None, now: float,
                     traffic_class: str = DEFAULT_CLASS) -> None:
        """One probe's outcome: its RTT in ms, or None when it was lost. The same as `record_latency`
        (when answered) and `record_loss(subject, 1, lost)`, in one step: probes are the hot path."""
        if rtt_ms is not None and not (rtt_ms.__class__ is float and 0.0 <= rtt_ms < math.inf) \
                and (not is_number(rtt_ms) or rtt_ms < 0.0):
            raise ValueError(f"latency must be a finite number of ms ≥ 0, got {rtt_ms!r}")
        s = self._series_for(subject, traffic_class, now)
        if rtt_ms is not None:
            s.add(now, float(rtt_ms), 1, 0)
        else:
            s.add(now, None, 1, 1)
        if s.window_of != self._targets_version:
            s.window_s = self.target_for(subject, traffic_class).window_s
            s.window_of = self._targets_version
        s.evict(now, s.window_s)

    def record_probe_run(self, subject: str, rtt_ms: float, times: list[float],
                         traffic_class: str = DEFAULT_CLASS) -> None:
        """Probes answered in `rtt_ms` each, at `times` (ascending): `record_probe(subject, rtt_ms, t)`
        for each t, in one step (a flow-level simulation's coasted probes, a batch a second a path)."""
        if not (rtt_ms.__class__ is float and 0.0 <= rtt_ms < math.inf) \
                and (not is_number(rtt_ms) or rtt_ms < 0.0):
            raise ValueError(f"latency must be a finite number of ms ≥ 0, got {rtt_ms!r}")
        if not times:
            return
        # no eviction here: every reading (`measure`, `evaluate`) evicts first, and `evaluate`, a second
        # apart, keeps the samples within the window and a second
        self._series_for(subject, traffic_class, times[0]).add_run(times, float(rtt_ms))

    def forget(self, subject: str, traffic_class: str | None = None) -> None:
        """Drop the samples and verdicts of a subject (all its classes, or one). Targets stay."""
        for key in [k for k in self._keys if k[0] == subject and traffic_class in (None, k[1])]:
            del self._series[key]
            self._keys.remove(key)
        if not self._series:
            self._next_eval_at = None

    # --- measurement --------------------------------------------------------------------------------

    def measure(self, subject: str, now: float, traffic_class: str = DEFAULT_CLASS) -> SlaMeasurement:
        """The window of (subject, class) at `now`, judged against its target. Unknown subjects give
        an empty measurement (no samples, `compliant` None)."""
        target = self.target_for(subject, traffic_class)
        s = self._series.get((subject, traffic_class))
        if s is None:
            s = _Series()
        else:
            s.evict(now, target.window_s)
        return self._measure(subject, traffic_class, s, target, now)

    @staticmethod
    def _measure(subject: str, traffic_class: str, s: _Series, target: SlaTarget,
                 now: float) -> SlaMeasurement:
        vals = s.sorted_latency
        n = len(vals)
        if n and vals[0] == vals[-1]:
            p50 = p95 = p99 = mean = vals[0]
            jitter = 0.0
        elif n:
            p50, p95, p99 = (_nearest_rank(vals, p) for p in PERCENTILES)
            mean, jitter = s.mean_and_stdev()
        else:
            p50 = p95 = p99 = mean = jitter = 0.0
        loss_pct = s.lost * 100.0 / s.sent if s.sent else 0.0
        lat = p50 if target.latency_percentile == 50 else p95 if target.latency_percentile == 95 else p99

        parts: list[float] = []
        violations: list[str] = []
        if n:
            parts.append(_part(target.latency_ms, lat))
            if lat > target.latency_ms + RESOLUTION:
                violations.append("latency")
        if s.sent:
            parts.append(_part(target.loss_pct, loss_pct))
            if loss_pct > target.loss_pct + RESOLUTION:
                violations.append("loss")
        if n:
            parts.append(_part(target.jitter_ms, jitter))
            if jitter > target.jitter_ms + RESOLUTION:
                violations.append("jitter")
        score = min(100.0, max(0.0, math.fsum(parts) / len(parts))) if parts else 0.0

        samples = max(n, s.sent)
        compliant: bool | None = None if samples < target.min_samples else not violations
        return SlaMeasurement(
            subject=subject, traffic_class=traffic_class, at=now, target=target, samples=samples,
            latency_samples=n, packets_sent=s.sent, packets_lost=s.lost,
            latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99, latency_mean_ms=mean,
            jitter_ms=jitter, loss_pct=loss_pct, compliant=compliant,
            violations=tuple(violations) if compliant is False else (), score=score,
            compliance_pct=s.compliant_s * 100.0 / s.observed_s if s.observed_s > 0.0 else None,
        )

    def state_of(self, subject: str, traffic_class: str = DEFAULT_CLASS) -> SlaState:
        """The latched verdict at the last evaluation (UNKNOWN for subjects never evaluated)."""
        s = self._series.get((subject, traffic_class))
        return s.state if s is not None else SlaState.UNKNOWN

    def keys(self) -> list[tuple[str, str]]:
        """Every (subject, class) with a window, sorted."""
        return list(self._keys)

    # --- evaluation ---------------------------------------------------------------------------------

    def evaluate(self, now: float) -> None:
        """Judge every (subject, class), in sorted order; accumulate compliance time; queue events."""
        for subject, traffic_class in self._keys:
            s = self._series[(subject, traffic_class)]
            target = self.target_for(subject, traffic_class)
            if s.last_eval_at is not None and s.last_sufficient:
                dt = max(0.0, now - s.last_eval_at)
                s.observed_s += dt
                if s.last_compliant:
                    s.compliant_s += dt
            s.evict(now, target.window_s)
            vals = s.sorted_latency
            if vals and not s.lost and vals[0] == vals[-1] and vals[0] <= target.latency_ms + RESOLUTION:
                # one latency, within target, nothing lost (no jitter): what `_measure` would say, without
                # building it (a steady path, every second)
                compliant: bool | None = True if max(len(vals), s.sent) >= target.min_samples else None
                m = None
            else:
                m = self._measure(subject, traffic_class, s, target, now)
                compliant = m.compliant
            s.last_eval_at = now
            s.last_sufficient = compliant is not None
            s.last_compliant = compliant is True
            if m is not None and m.compliant is False and s.state is not SlaState.VIOLATED:
                s.state = SlaState.VIOLATED
                s.violated_since = now
                self._events.append(SlaViolated(
                    at=now, subject=subject, traffic_class=traffic_class, violations=m.violations,
                    latency_ms=m.latency_ms, loss_pct=m.loss_pct, jitter_ms=m.jitter_ms))
            elif compliant is True and s.state is not SlaState.COMPLIANT:
                if s.state is SlaState.VIOLATED:
                    since = s.violated_since if s.violated_since is not None else now
                    self._events.append(SlaRestored(at=now, subject=subject, traffic_class=traffic_class,
                                                    violated_for_s=max(0.0, now - since)))
                s.state = SlaState.COMPLIANT
                s.violated_since = None

    def next_deadline(self) -> float | None:
        """When `on_timer` should next run; None while there is nothing to evaluate."""
        return self._next_eval_at if self._series else None

    def on_timer(self, now: float) -> None:
        """Evaluate if the deadline is due, then re-arm it on the interval grid (no catch-up bursts)."""
        due = self._next_eval_at
        if due is None or now < due or not self._series:
            return
        self.evaluate(now)
        steps = math.floor((now - due) / self.interval_s) + 1
        nxt = due + steps * self.interval_s
        self._next_eval_at = nxt if nxt > now else now + self.interval_s

    def drain_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # --- selection ----------------------------------------------------------------------------------

    def select_best_path(self, candidates: Iterable[str], now: float, *, max_latency_ms: float | None = None,
                         max_loss_pct: float | None = None, max_jitter_ms: float | None = None,
                         traffic_class: str = DEFAULT_CLASS) -> str | None:
        """The candidate with the best SLA score among those with sufficient samples that meet every
        given hard requirement (measured ≤ max; the latency is the subject's target percentile; a
        requirement on a metric with no data in the window is not met). Ties go to the smallest
        subject id. None when no candidate qualifies."""
        best: tuple[float, str] | None = None
        for subject in dict.fromkeys(candidates):
            m = self.measure(subject, now, traffic_class)
            if m.compliant is None:
                continue
            if max_latency_ms is not None and (m.latency_samples == 0 or m.latency_ms > max_latency_ms):
                continue
            if max_jitter_ms is not None and (m.latency_samples == 0 or m.jitter_ms > max_jitter_ms):
                continue
            if max_loss_pct is not None and (m.packets_sent == 0 or m.loss_pct > max_loss_pct):
                continue
            if best is None or m.score > best[0] or (m.score == best[0] and subject < best[1]):
                best = (m.score, subject)
        return best[1] if best is not None else None
