"""The stability benchmark's bookkeeping: a bar is judged over the latest runs of its kind only, every
verdict that is not `passed` counts against it, and the table says what was measured, not more."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.bench_stability import BARS, markdown_table, tally

pytestmark = pytest.mark.unit


def _runs(*verdicts: str) -> list[dict[str, Any]]:
    return [{"verdict": v} for v in verdicts]


def test_a_bar_is_met_by_its_latest_runs_only() -> None:
    old_failures = _runs(*["failed"] * 5)
    history = {"a": {"quiet": old_failures + _runs(*["passed"] * 19, "failed"), "hog": _runs(*["passed"] * 9),
                     "full": _runs(*["passed"] * 5)}}
    table, lowest, ok = tally(history, ["a"])
    assert table["a"]["quiet"] == {"bar": "19/20", "runs": 20, "passed": 19, "failed": 1, "inconclusive": 0,
                                   "error": 0, "met": True}
    assert not table["a"]["hog"]["met"] and table["a"]["hog"]["runs"] == 9          # one run short of its bar
    assert table["a"]["full"]["met"]
    assert not ok and lowest == pytest.approx(19 / 20)                             # hog is not counted yet


@pytest.mark.parametrize("spoiler", ["failed", "inconclusive", "error"])
def test_every_verdict_but_passed_counts_against_the_bar(spoiler: str) -> None:
    need, of = BARS["full"]
    history = {"a": {"quiet": _runs(*["passed"] * 20), "hog": _runs(*["passed"] * 10),
                     "full": _runs(*["passed"] * (of - 1), spoiler)}}
    table, lowest, ok = tally(history, ["a"])
    assert not table["a"]["full"]["met"] and table["a"]["full"][spoiler] == 1 and not ok
    assert lowest == pytest.approx((of - 1) / of)
    history["a"]["full"] += _runs(*["passed"] * (of - 1))
    assert not tally(history, ["a"])[2]                                            # still among the latest
    history["a"]["full"] += _runs("passed")
    assert tally(history, ["a"])[2] and need == of                                  # it left the window


def test_the_table_says_what_was_measured() -> None:
    history = {"a": {"quiet": _runs(*["passed"] * 19, "inconclusive")}, "b": {"full": _runs("passed", "failed")}}
    text = markdown_table(history, ["a", "b"]).splitlines()
    assert text[0] == "| scenario | quiet (bar 19/20) | hog (bar 9/10) | full (bar 5/5) |"
    assert text[2] == "| a | 19/20 (1 inconclusive) ✓ | not run | not run |"
    assert text[3] == "| b | not run | not run | 1/2 (1 failed) |"
