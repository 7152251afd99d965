"""What `patronus-lab run` shows while a run builds, runs and tears down.

On a terminal: one rich progress line per phase (a spinner and the elapsed time; while the timeline
plays, a bar of scenario time with the next event), each kept as a finished line when the next phase
begins. Elsewhere (CI logs, pipes): plain timestamped lines, one per phase, so a log stays readable.
The runner only calls the instance: `progress("phase")` starts a phase, `progress.clock(t, total,
next_event)` moves the timeline bar; both are safe to call from any thread.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class RunProgress:
    def __init__(self, console: Console, *, live: bool | None = None) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._task: TaskID | None = None
        self._bar: Progress | None = None
        if self.live:
            self._bar = Progress(SpinnerColumn(finished_text="[green]✓[/green]"),
                                 TextColumn("{task.description}"), BarColumn(bar_width=30),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                 console=console, transient=False)

    def __enter__(self) -> RunProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __call__(self, msg: str) -> None:
        """A new phase (or a note: a message that starts with "warning" or "note:", or spans lines, is
        printed as it is)."""
        with self._lock:
            if self._bar is None:
                self.console.print(f"[dim]{time.monotonic() - self.started:7.1f} s[/dim]  {msg}", markup=True,
                                   highlight=False)
                return
            if msg.startswith(("warning", "note:")) or "\n" in msg:
                self._bar.console.print(msg, markup=False, highlight=False)
                return
            self._finish_current()
            self._task = self._bar.add_task(msg, total=None, detail="")

    def clock(self, t_s: float, total_s: float, next_event: str = "") -> None:
        """The timeline is at scenario time `t_s` of `total_s`."""
        with self._lock:
            if self._bar is None or self._task is None:
                return
            detail = f"{min(t_s, total_s):5.1f} / {total_s:g} s" + (f"  next: {next_event}" if next_event else "")
            self._bar.update(self._task, total=total_s, completed=min(max(t_s, 0.0), total_s), detail=detail)

    def _finish_current(self) -> None:
        if self._bar is not None and self._task is not None:
            task = self._bar.tasks[self._task]
            self._bar.update(self._task, total=task.total or 1, completed=task.total or 1)
            self._task = None

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._finish_current()
                self._bar.stop()
                self._bar = None
