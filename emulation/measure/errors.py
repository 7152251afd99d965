"""The one error this package raises on purpose: the raw data of a run is missing or malformed."""

from __future__ import annotations

from patronus.core.errors import ConfigError


class RawDataError(ConfigError):
    """A run directory's raw data cannot be analysed. `errors` lists every problem found as
    (where, reason), `where` naming the file and, for a table, the line and column, e.g.
    ``("raw/packets.csv", "missing column 'recv_ns' (has: flow, seq, sent_ns, path)")``."""
