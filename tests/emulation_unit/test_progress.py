"""The run's progress display: phases and the timeline bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from emulation.progress import RunProgress

pytestmark = pytest.mark.unit


def test_plain_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()
    with RunProgress(Console(file=buf, force_terminal=False, width=100)) as p:
        p("building 2 sites")
        p.clock(3.0, 10.0, "cut hq.isp1 at 5 s")      # no bar to move: ignored
        p("tearing down")
    lines = buf.getvalue().splitlines()
    # each stamped with the elapsed seconds
    assert [line.strip().split("s  ", 1)[1] for line in lines] == ["building 2 sites", "tearing down"]


def test_phases_finish_and_the_timeline_bar_moves_on_a_terminal() -> None:
    buf = io.StringIO()
    p = RunProgress(Console(file=buf, force_terminal=True, width=120), live=True)
    with p:
        p("agents ready")
        p("running the timeline")
        p.clock(5.0, 20.0, "restore hq.isp1 at 14 s")
        bar = p._bar
        assert bar is not None
        running = bar.tasks[-1]
        assert (running.completed, running.total) == (5.0, 20.0)
        assert "restore hq.isp1" in running.fields["detail"]
        assert bar.tasks[0].finished and not running.finished
        p("note: this is printed, not a phase")
        assert len(bar.tasks) == 2
    assert all(t.finished for t in bar.tasks)
    assert "note: this is printed" in buf.getvalue()
