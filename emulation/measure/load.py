"""Loading a run for analysis: its raw data read and validated (`rundata.read_run`), then what needs
the tables to be checked (the timeline's flap schedules, the expectations' parameters). Above the
modules it uses, so that the reader below them never calls up into the analysis."""

from __future__ import annotations

from pathlib import Path

from emulation.measure.errors import RawDataError
from emulation.measure.expectations import check_expectations
from emulation.measure.rundata import RunData, read_run
from emulation.measure.timeline import edges


def load_run(directory: str | Path) -> RunData:
    """Load and validate DIR/raw. Raises RawDataError listing every problem (file, line, column)."""
    data = read_run(directory)
    problems: list[tuple[str, str]] = []
    for check in (edges, check_expectations):
        try:
            check(data)
        except RawDataError as exc:
            problems.extend(exc.errors)
    if problems:
        raise RawDataError(problems)
    return data
