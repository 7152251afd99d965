"""Error hierarchy shared by every part of Patronus.

`ConfigError` is bad input of ours (a config, a scenario, an API request); `PeerError` is bad input
from the network (a forged probe, a malformed announcement). Anything else escaping the core is a bug.
Every message names the field and the reason.
"""

from __future__ import annotations


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
