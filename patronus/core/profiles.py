"""Monitor profiles: how one path is probed and judged (interval, detection multiplier, up count, window,
timeout, report cadence, jitter estimator), the named ones (`default`, `fast`) and the config parser.
What the parameters mean for liveness and detection time is told in `monitor.py`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from patronus.core.errors import ConfigError
from patronus.core.units import format_duration
from patronus.core.validate import Errors, choice, duration, integer, join, mapping, show

MIN_INTERVAL_S = 0.010


@dataclass(frozen=True, slots=True)
class MonitorProfile:
    """How one path is probed and judged."""

    name: str = "default"
    interval_s: float = 1.0
    detect_multiplier: int = 3
    up_count: int = 3
    window: int = 10
    timeout_s: float | None = None        # None: adaptive (RFC 6298) between interval and max
    max_timeout_s: float = 2.0
    report_interval_s: float = 1.0        # cadence of PathMetricsUpdated
    jitter: str = "stdev"                 # "stdev" (seed) or "rfc3550"

    def __post_init__(self) -> None:
        errors = self.problems()
        if errors:
            raise ConfigError(errors)

    def problems(self, prefix: str = "monitor") -> list[tuple[str, str]]:
        errs: list[tuple[str, str]] = []
        if not self.interval_s >= MIN_INTERVAL_S:
            errs.append((f"{prefix}.interval",
                         f"must be at least {format_duration(MIN_INTERVAL_S)}, got "
                         f"{format_duration(self.interval_s) if self.interval_s > 0 else self.interval_s}"))
        if self.detect_multiplier < 1:
            errs.append((f"{prefix}.detect_multiplier", f"must be at least 1, got {self.detect_multiplier}"))
        if self.up_count < 1:
            errs.append((f"{prefix}.up_count", f"must be at least 1, got {self.up_count}"))
        if self.window < 1:
            errs.append((f"{prefix}.window", f"must be at least 1 sample, got {self.window}"))
        elif self.up_count > self.window:
            errs.append((f"{prefix}.up_count", f"must not exceed the window ({self.window}), got {self.up_count}"))
        if self.timeout_s is not None and not self.timeout_s > 0:
            errs.append((f"{prefix}.timeout", f"must be positive, got {self.timeout_s}"))
        if not self.max_timeout_s > 0:
            errs.append((f"{prefix}.max_timeout", f"must be positive, got {self.max_timeout_s}"))
        if not self.report_interval_s > 0:
            errs.append((f"{prefix}.report_interval", f"must be positive, got {self.report_interval_s}"))
        if self.jitter not in ("stdev", "rfc3550"):
            errs.append((f"{prefix}.jitter", f"expected 'stdev' or 'rfc3550', got {self.jitter!r}"))
        return errs

    @property
    def detection_time_s(self) -> float:
        """Nominal detection time for a short-RTT path: interval × multiplier."""
        return self.interval_s * self.detect_multiplier

    @classmethod
    def from_config(cls, value: Any, field: str = "monitor") -> MonitorProfile:
        """`"fast"`, `"default"`, or a mapping such as `{profile: fast, interval: "50ms", multiplier: 4}`."""
        if isinstance(value, MonitorProfile):
            return value
        if isinstance(value, str):
            if value in PROFILES:
                return PROFILES[value]
            raise ConfigError(f"unknown monitor profile {show(value)}; expected one of {', '.join(PROFILES)} "
                              "or a mapping with an interval", field)
        errs = Errors()
        m = mapping(value, field, errs, _PROFILE_KEYS)
        if m is None:
            raise ConfigError(f"expected a profile name or a mapping, got {show(value)}", field)
        base = PROFILES[choice(m.get("profile", "default"), join(field, "profile"), errs, PROFILES) or "default"]
        changes: dict[str, Any] = {"name": "custom" if set(m) - {"profile"} else base.name}
        for key, attr in (("interval", "interval_s"), ("timeout", "timeout_s"), ("max_timeout", "max_timeout_s"),
                          ("report_interval", "report_interval_s")):
            if key in m:
                changes[attr] = duration(m[key], join(field, key), errs)
        for key, attr in (("detect_multiplier", "detect_multiplier"), ("multiplier", "detect_multiplier"),
                          ("up_count", "up_count"), ("window", "window")):
            if key in m:
                n = integer(m[key], join(field, key), errs)     # below 1: problems() says why
                if n is not None and not -1_000_000 <= n <= 1_000_000:
                    errs.add(join(field, key), f"expected a whole number of at most 1000000, got {show(n)}")
                    n = None
                changes[attr] = n
        if "jitter" in m:
            changes["jitter"] = choice(m["jitter"], join(field, "jitter"), errs, ("stdev", "rfc3550"))
        try:
            profile = replace(base, **{k: v for k, v in changes.items() if v is not None})
        except ConfigError as exc:
            errs.items += [(f.replace("monitor", field, 1), r) for f, r in exc.errors
                           if f.replace("monitor", field, 1) not in {p for p, _ in errs.items}]
        errs.check()
        return profile


_PROFILE_KEYS = ("profile", "interval", "detect_multiplier", "multiplier", "up_count", "window", "timeout",
                 "max_timeout", "report_interval", "jitter")


PROFILES: dict[str, MonitorProfile] = {
    "default": MonitorProfile(name="default", interval_s=1.0),
    # 50 probes = the last second: the seed's 10 would judge loss and jitter over 200 ms, where one lost
    # probe is 10 % loss and five (one short stall) take a path Down by the loss rule
    "fast": MonitorProfile(name="fast", interval_s=0.020, window=50, report_interval_s=0.5),
}
