"""One validation toolkit for every loader: site files, scenarios, run data and the core's own parsers.

An `Errors` collects every problem as (field path, reason) — `sites.hq.uplinks.isp1.delay`,
`uplinks[0].address`, `flows[2].type` — and `check()` raises one `ConfigError` listing them all. The
readers below take `(value, path, errs, ...)` and return the value checked and converted (SI units,
canonical text), or None after recording one error at `path` that says what was expected and what was
given. Paths are built with `join` (mapping keys) and `item` (list positions).

Bad input never crashes a reader: an integer of thousands of digits, a float overflowing to infinity, a
list where text is expected, a NUL byte in a file name all give an error naming the field. No message
formats an unbounded value: `show` bounds what it prints (and the keys in paths).

Sans-IO: nothing here reads a file or the clock (`file_path` only checks that a value can be one).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from enum import Enum
from typing import Any, TypeVar

from patronus.core.errors import ConfigError, show
from patronus.core.units import format_duration, parse_duration, parse_rate, parse_ratio, parse_size

T = TypeVar("T")
E = TypeVar("E", bound=Enum)

__all__ = [
    "NAME_RE", "Errors", "address", "boolean", "choice", "duration", "enum", "field", "file_path", "ifname",
    "integer", "is_number", "item", "items", "join", "mapping", "name", "number", "prefix", "rate", "ratio", "show",
    "size", "text",
]

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")    # site, uplink, region names (the agent's and the test-bed's)
MAX_TEXT = 4096            # no single text value of ours is longer
_MAX_KEY = 60              # a key longer than this appears in paths through `show`


class Errors:
    """Every problem found, in the order found, as (path, reason)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, path: str, reason: str) -> None:
        self.items.append((path, reason))

    def take(self, exc: ConfigError) -> None:
        """Keep the errors of a parser that raised."""
        self.items.extend(exc.errors)

    def attempt(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Call a parser that raises `ConfigError`; keep its errors and return None on failure."""
        try:
            return fn(*args)
        except ConfigError as exc:
            self.take(exc)
            return None

    def check(self, error: type[ConfigError] = ConfigError) -> None:
        """Raise one `error` listing every problem, if there is any."""
        if self.items:
            raise error(self.items)


# --- paths -----------------------------------------------------------------------------------------

def join(path: str, key: object) -> str:
    """The path of `key` in the mapping at `path` (`a.b`; the key alone at the top level)."""
    k = key if isinstance(key, str) and len(key) <= _MAX_KEY else show(key)
    return f"{path}.{k}" if path else k


def item(path: str, index: int) -> str:
    """The path of a list's item: `path[index]`."""
    return f"{path}[{index}]"


def _choices(values: Iterable[object]) -> str:
    return ", ".join(str(v) for v in values)


# --- structure -------------------------------------------------------------------------------------

def mapping(value: object, path: str, errs: Errors, known: Collection[str] | None = None,
            required: Iterable[str] = (), *, what: str = "setting", none_ok: bool = False) -> dict[Any, Any] | None:
    """The value as a dict; every key not in `known` (when given) and every `required` key that is
    missing or null is an error. None (error recorded) when it is not a mapping; `none_ok` reads null
    as an empty mapping (an optional section left empty)."""
    if value is None and none_ok:
        value = {}
    if not isinstance(value, Mapping):
        errs.add(path or "(top level)", f"expected a mapping, got {show(value)}")
        return None
    if known is not None:
        for key in value:
            if key in known:
                continue
            hint = difflib.get_close_matches(key, sorted(known), n=1) if isinstance(key, str) and \
                len(key) <= _MAX_KEY else []
            errs.add(join(path, key), f"unknown {what}" + (f"; did you mean {hint[0]!r}?" if hint else
                                                           f"; expected one of {_choices(sorted(known))}"))
    for key in required:
        if value.get(key) is None:
            errs.add(join(path, key), "required")
    return dict(value)


def items(value: object, path: str, errs: Errors, what: str = "items", *, nonempty: bool = False) -> list[Any] | None:
    """The value as a list (of `what`); None (error recorded) when it is not one, or empty and `nonempty`."""
    if not isinstance(value, list | tuple) or (nonempty and not value):
        errs.add(path, f"expected a list of {'at least one of ' if nonempty else ''}{what}, got {show(value)}")
        return None
    return list(value)


def field(m: Mapping[str, Any], key: str, path: str, errs: Errors, read: Callable[..., T | None], *args: Any,
          optional: bool = False, **kw: Any) -> T | None:
    """`m[key]` read with `read(value, path.key, errs, *args, **kw)`. A missing key is an error ("missing")
    unless `optional`; an optional null is None."""
    where = join(path, key)
    if key not in m or (optional and m[key] is None):
        if not optional:
            errs.add(where, "missing")
        return None
    return read(m[key], where, errs, *args, **kw)


# --- scalars ---------------------------------------------------------------------------------------

def is_number(value: object) -> bool:
    """A finite int or float (not a bool): what `number` accepts, as a test."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**1023
    return isinstance(value, float) and math.isfinite(value)


def boolean(value: object, path: str, errs: Errors) -> bool | None:
    if not isinstance(value, bool):
        errs.add(path, f"expected true or false, got {show(value)}")
        return None
    return value


def integer(value: object, path: str, errs: Errors, lo: int | None = None, hi: int | None = None,
            what: str = "a whole number") -> int | None:
    """A whole number (not a bool, not a float) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) \
            or (hi is not None and value > hi):
        bounds = f" {lo}-{hi}" if lo is not None and hi is not None else \
            f" of at least {lo}" if lo is not None else f" of at most {hi}" if hi is not None else ""
        errs.add(path, f"expected {what}{bounds}, got {show(value)}")
        return None
    return value


def number(value: object, path: str, errs: Errors, lo: float = -math.inf, hi: float = math.inf,
           what: str = "a finite number") -> float | None:
    """A finite number (int or float, not a bool) within [lo, hi], as a float."""
    x: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        x = float(value) if lo <= value <= hi and abs(value) < 2**1023 else None
    elif isinstance(value, float) and math.isfinite(value):
        x = value
    if x is None or not lo <= x <= hi:
        errs.add(path, f"expected {what}, got {show(value)}")
        return None
    return x


def text(value: object, path: str, errs: Errors, what: str = "text", *, nonempty: bool = False,
         max_len: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str) or (nonempty and not value.strip()) or len(value) > max_len:
        errs.add(path, f"expected {what}" + (f" (at most {max_len} characters)" if max_len < MAX_TEXT else "")
                       + f", got {show(value)}")
        return None
    return value


def choice(value: object, path: str, errs: Errors, choices: Iterable[str]) -> str | None:
    """One of `choices` (text; anything else, hashable or not, is an error)."""
    options = list(choices)
    if not isinstance(value, str) or value not in options:
        errs.add(path, f"expected one of {_choices(options)}, got {show(value)}")
        return None
    return value


def enum(value: object, path: str, errs: Errors, enum_type: type[E]) -> E | None:
    """A member of a text-valued Enum, by value."""
    for member in enum_type:
        if isinstance(value, str) and member.value == value:
            return member
    errs.add(path, f"expected one of {_choices(m.value for m in enum_type)}, got {show(value)}")
    return None


def name(value: object, path: str, errs: Errors, what: str = "") -> str | None:
    """A name of ours (a site, an uplink, a region): `NAME_RE`."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        errs.add(path, f"{what + ' ' if what else ''}names are lowercase letters, digits and '-', starting with "
                       f"a letter, at most 31 characters; got {show(value)}")
        return None
    return value


def ifname(value: object, path: str, errs: Errors) -> str | None:
    """A Linux interface name: 1-15 characters, no '/', ':' or white space."""
    if not isinstance(value, str) or not 1 <= len(value) <= 15 or any(c in value for c in "/:\0") \
            or any(c.isspace() for c in value):
        errs.add(path, f"expected a Linux interface name (1-15 characters, no '/', ':' or spaces), got {show(value)}")
        return None
    return value


def file_path(value: object, path: str, errs: Errors) -> str | None:
    """A file name: non-empty text without NUL bytes (the kernel's limit, 4096 bytes)."""
    if not isinstance(value, str) or not value or "\0" in value or len(value.encode(errors="replace")) > MAX_TEXT:
        errs.add(path, f"expected a file path, got {show(value)}")
        return None
    return value


def address(value: object, path: str, errs: Errors) -> str | None:
    """An IPv4 or IPv6 address, in canonical form."""
    try:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError
        return str(ipaddress.ip_address(value))
    except ValueError:
        errs.add(path, f"expected an IP address like 192.0.2.1, got {show(value)}")
        return None


def prefix(value: object, path: str, errs: Errors) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An IPv4 or IPv6 prefix with no host bits set."""
    try:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError("not a prefix")
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        errs.add(path, f"expected a prefix like 10.1.0.0/24 with no host bits set, got {show(value)} ({exc})"
                 if isinstance(value, str) and len(value) <= 64 else
                 f"expected a prefix like 10.1.0.0/24, got {show(value)}")
        return None


# --- human units (patronus.core.units) -------------------------------------------------------------

def duration(value: object, path: str, errs: Errors, *, positive: bool = False, at_least: float = 0.0,
             at_most: float | None = None) -> float | None:
    """Seconds from `"20ms"` (a bare number is seconds): at least `at_least` (0: non-negative), above 0
    when `positive`, at most `at_most`."""
    x = errs.attempt(parse_duration, value, path)
    if x is None:
        return None
    if x < 0 or (positive and x == 0):
        errs.add(path, f"expected a {'positive' if positive else 'non-negative'} duration, got {show(value)}")
        return None
    if x < at_least:
        errs.add(path, f"must be at least {format_duration(at_least)}, got {show(value)}")
        return None
    if at_most is not None and x > at_most:
        errs.add(path, f"at most {format_duration(at_most)}, got {show(value)}")
        return None
    return x


def rate(value: object, path: str, errs: Errors, *, positive: bool = True) -> float | None:
    """Bits per second from `"100mbit"` (a bare number is bit/s); above 0 when `positive`."""
    x = errs.attempt(parse_rate, value, path)
    if x is None:
        return None
    if x < 0 or (positive and x == 0):
        errs.add(path, f'expected a {"positive" if positive else "non-negative"} rate like "100mbit", '
                       f"got {show(value)}")
        return None
    return x


def ratio(value: object, path: str, errs: Errors) -> float | None:
    """A ratio in [0, 1] from `"1%"` or a bare number."""
    return errs.attempt(parse_ratio, value, path)


def size(value: object, path: str, errs: Errors, lo: int = 0, hi: int = 2**62) -> int | None:
    """Bytes from `"1500"` or `"64k"`, within [lo, hi]."""
    n = errs.attempt(parse_size, value, path)
    if n is None:
        return None
    if not lo <= n <= hi:
        errs.add(path, f"expected a size of {lo}-{hi} bytes, got {show(value)}")
        return None
    return n
