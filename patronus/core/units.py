"""Human units, parsed in one place.

Inside the code every quantity carries its unit in its name (`delay_s`, `rate_bps`, `loss_ratio`);
people write `"20ms"`, `"100mbit"`, `"1%"`. These functions are the only translation between the two.
Each raises `ConfigError` naming the field and what was expected.
"""

from __future__ import annotations

import math
import re

from patronus.core.errors import ConfigError, show

_NUM = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_NUM_RE = re.compile(rf"^\s*({_NUM})\s*([a-zA-Z%/]*)\s*$")

_DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "m": 60.0,
                   "min": 60.0, "h": 3600.0}
_RATE_UNITS = {
    "bit": 1.0, "bps": 1.0, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6, "gbit": 1e9,
    "gbps": 1e9, "tbit": 1e12,
}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def _split(value: object, field: str, what: str) -> tuple[float, str]:
    if isinstance(value, bool):
        raise ConfigError(f"expected {what}, got {show(value)}", field)
    if isinstance(value, int) and abs(value) >= 2**1023:    # float() would overflow
        raise ConfigError(f"expected {what}, got {show(value)} (too large)", field)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(f"expected {what}, got {show(value)}", field)
        return float(value), ""
    if not isinstance(value, str):
        raise ConfigError(f"expected {what}, got {show(value)}", field)
    m = _NUM_RE.match(value.replace("µ", "u"))
    if not m:
        raise ConfigError(f"expected {what}, got {show(value)}", field)
    number = float(m.group(1))
    if not math.isfinite(number):       # "1e400" is a float overflow, not a value
        raise ConfigError(f"expected {what}, got {show(value)} (too large)", field)
    return number, m.group(3).lower()


def _finite(result: float, value: object, field: str) -> float:
    """A number and its unit can overflow together ("1e307tbit")."""
    if not math.isfinite(result):
        raise ConfigError(f"got {show(value)}: too large", field)
    return result


def parse_duration(value: object, field: str = "duration") -> float:
    """`"20ms"` → 0.02 (seconds). Plain numbers are seconds. Negative durations are refused."""
    number, unit = _split(value, field, 'a duration like "20ms"')
    unit = unit.replace("µ", "u")
    if unit not in _DURATION_UNITS:
        raise ConfigError(f'expected a duration like "20ms", got {show(value)} (unknown unit {show(unit)})', field)
    return _finite(number * _DURATION_UNITS[unit], value, field)


def parse_rate(value: object, field: str = "rate") -> float:
    """`"100mbit"` → 1e8 (bits per second). Plain numbers are bits per second."""
    number, unit = _split(value, field, 'a rate like "100mbit"')
    if unit == "":
        return number
    if unit not in _RATE_UNITS:
        raise ConfigError(f'expected a rate like "100mbit", got {show(value)} (unknown unit {show(unit)})', field)
    return _finite(number * _RATE_UNITS[unit], value, field)


def parse_ratio(value: object, field: str = "ratio") -> float:
    """`"1%"` → 0.01. Plain numbers are ratios in [0, 1]."""
    number, unit = _split(value, field, 'a percentage like "1%" or a ratio in [0, 1]')
    if unit == "%":
        number /= 100.0
    elif unit != "":
        raise ConfigError(f'expected a percentage like "1%", got {show(value)}', field)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"expected a ratio between 0% and 100%, got {show(value)}", field)
    return number


def parse_size(value: object, field: str = "size") -> int:
    """`"1500"` or `"64k"` → bytes."""
    number, unit = _split(value, field, 'a size like "1500" or "64k"')
    if unit not in _SIZE_UNITS:
        raise ConfigError(f'expected a size like "1500" or "64k", got {show(value)}', field)
    return int(_finite(number * _SIZE_UNITS[unit], value, field))


def format_duration(seconds: float) -> str:
    """Inverse of `parse_duration` for display: 0.02 → "20ms"."""
    if seconds >= 1.0:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"
