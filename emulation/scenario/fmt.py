"""Human units out: the inverse of `patronus.core.units`, exact.

`Scenario.to_dict()` writes every quantity the way people write it (`"20ms"`, `"100mbit"`, `"1%"`), and
a run directory's copy of the scenario must load back to the *same* scenario. So each formatter tries
the readable spellings first and keeps the first one that parses back to exactly the same float; when
none does (an odd float such as 0.1 + 0.2), it falls back to the shortest exact spelling (`repr`).

`human_*` are for sentences (expectation texts, timeline descriptions): rounded, with a space.
"""

from __future__ import annotations

from patronus.core.units import parse_duration, parse_rate, parse_ratio, parse_size


def fmt_duration(seconds: float) -> str:
    """0.02 → "20ms", 1.5 → "1.5s", 2e-4 → "200us"; exact: `parse_duration(fmt_duration(x)) == x`."""
    x = float(seconds)
    if x == 0:
        return "0s"
    candidates = [f"{x:g}s"] if x >= 1 else [f"{x * 1e3:g}ms", f"{x * 1e6:g}us", f"{x:g}s"]
    for text in candidates:
        if "e" not in text and parse_duration(text) == x:
            return text
    return f"{x!r}s"


_RATE_UNITS = (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3))


def fmt_rate(bps: float) -> str:
    """1e8 → "100mbit", 64e3 → "64kbit", 1234.5 → "1234.5bit"; exact."""
    x = float(bps)
    for unit, scale in _RATE_UNITS:
        if x >= scale:
            text = f"{x / scale:g}{unit}"
            if "e" not in text and parse_rate(text) == x:
                return text
    text = f"{x:g}bit"
    if "e" not in text and parse_rate(text) == x:
        return text
    return f"{x!r}bit"


def fmt_ratio(ratio: float) -> str | float:
    """0.01 → "1%", 0.005 → "0.5%"; exact, else the bare ratio as a float (which `parse_ratio` reads)."""
    x = float(ratio)
    if x == 0:
        return "0%"
    text = f"{x * 100:g}%"
    if "e" not in text and parse_ratio(text) == x:
        return text
    return x


def fmt_size(n_bytes: int) -> str | int:
    """65536 → "64k", 1048576 → "1m", 1500 → 1500 (bytes; "k" is 1024 as in `parse_size`)."""
    for unit, scale in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n_bytes >= scale and n_bytes % scale == 0:
            text = f"{n_bytes // scale}{unit}"
            if parse_size(text) == n_bytes:
                return text
    return int(n_bytes)


def fmt_number(x: float) -> int | float:
    """A plain number for YAML: 1000.0 → 1000, 12.5 → 12.5."""
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def human_duration(seconds: float) -> str:
    """For sentences: 0.3 → "300 ms", 1.5 → "1.5 s", 90 → "90 s"."""
    if seconds == 0:
        return "0 s"
    if seconds < 1:
        return f"{seconds * 1e3:.4g} ms"
    return f"{seconds:.4g} s"


def human_ratio(ratio: float) -> str:
    """For sentences: 0.99 → "99 %"."""
    return f"{ratio * 100:.4g} %"


def human_rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.4g} {unit}"
    return f"{bps:.4g} bit/s"
