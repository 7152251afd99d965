"""Error hierarchy shared by every part of Patronus.

`ConfigError` is bad input of ours (a config, a scenario, an API request); `PeerError` is bad input
from the network (a forged probe, a malformed announcement). Anything else escaping the core is a bug.
Every message names the field and the reason.
"""

from __future__ import annotations

from typing import Generic, TypeVar

MAX_SHOWN = 60     # characters of a value that a message may show
R = TypeVar("R", bound=str)        # a decoder's reasons (a Literal of its REASONS)


def show(value: object, limit: int = MAX_SHOWN) -> str:
    """A value as a message may show it: its repr when short, else a bounded description ("'abc…' (5000
    characters)", "an integer of about 5000 digits", "a list of 3 items"). Never formats an unbounded
    value (an alias bomb's expansion, a 5000-digit integer, whose repr even raises)."""
    if value is None:
        return "nothing"
    brief = _brief(value, limit)
    if brief is not None:
        return brief
    if isinstance(value, str):
        return f"{value[:limit]!r}… ({len(value)} characters)"
    if isinstance(value, int):
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} keys"
    return f"a {type(value).__name__}"


def _brief(value: object, budget: int) -> str | None:
    """repr(value) if it fits in `budget` characters, else None; never builds a longer string (nesting
    eats the budget, so the recursion is bounded too)."""
    if budget <= 0:
        return None
    out: str | None
    if value is None or isinstance(value, bool | float):
        out = repr(value)
    elif isinstance(value, int):
        out = repr(value) if value.bit_length() <= 3 * budget else None
    elif isinstance(value, str):
        out = repr(value) if len(value) <= budget else None
    elif isinstance(value, list | tuple | dict):
        parts: list[str] = []
        used = 2
        pairs = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for k, v in pairs:
            key = "" if k is None and not isinstance(value, dict) else _brief(k, budget - used)
            val = _brief(v, budget - used - (len(key) + 2 if key else 0)) if key is not None else None
            if val is None or key is None:
                return None
            parts.append(f"{key}: {val}" if isinstance(value, dict) else val)
            used += len(parts[-1]) + 2
            if used > budget:
                return None
        open_, close = ("{", "}") if isinstance(value, dict) else ("[", "]") if isinstance(value, list) else ("(", ")")
        out = open_ + ", ".join(parts) + close
    else:
        out = None
    return out if out is not None and len(out) <= budget else None


class PatronusError(Exception):
    """Base class of every error Patronus raises on purpose."""


class ConfigError(PatronusError):
    """Bad input of ours. `errors` lists every problem as (field path, reason)."""

    def __init__(self, errors: list[tuple[str, str]] | str, field: str | None = None) -> None:
        if isinstance(errors, str):
            errors = [(field or "", errors)]
        self.errors: list[tuple[str, str]] = list(errors)
        super().__init__("; ".join(f"{f}: {r}" if f else r for f, r in self.errors))


class PeerError(PatronusError):
    """Bad input from the network."""


class RefusedError(PeerError, Generic[R]):
    """Raw bytes from the network refused by a decoder or verifier: `reason` (a short word from the
    decoder's own `REASONS`, what callers count refusals by) says why, `detail` says where. The base of
    `IdentityError`, `AnnounceError` and `SwimError`; picklable (e.g. across a process boundary)."""

    def __init__(self, reason: R, detail: str) -> None:
        self.reason: R = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")

    def __reduce__(self) -> tuple[type[RefusedError[R]], tuple[R, str]]:
        return type(self), (self.reason, self.detail)

