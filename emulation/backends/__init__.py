"""The test-bed's backends behind one interface: what `patronus-lab run` / `clean`, repeated runs and
sweeps call, whichever backend realises the scenario.

    backend = get("sim")                        # or "mininet"; KeyError for another name
    why = backend.check(options) or backend.available()     # None: it can run here, with these options
    code = backend.run(scenario, out, options)  # 0 passed, 1 an expectation failed, 2 it could not run
    removed = backend.clean(run_id)             # what run `run_id` left (None: every run's: `clean --all`)

- `mininet` (`emulation.backends.mininet`): real agents in network namespaces, wall-clock time; root.
- `sim` (`emulation.backends.sim`, `run_sim`): the simpy simulator, virtual time, no root.

A backend's modules are imported when it is used, not here: `patronus-lab validate` or a sweep does not
import Mininet, and `available()` says why a backend that cannot be imported cannot run.

Reporting: with `options.console` a run prints its progress there (the Mininet backend's progress bars,
the simulator's phase lines through `options.progress`), and a run that could not be carried out is
reported there and returns 2; without a console it is silent and raises (`ConfigError`, `RunError`).
`options.repeated`: one run of a repeated run (`run --repeat`), whose combined report says the verdicts.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from patronus.core.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from emulation.scenario.model import Scenario

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class RunOptions:
    """How to run; each backend says which options it takes (`check`) and which it ignores (`ignored`)."""

    keep: bool = False                  # mininet: leave the network up for inspection
    impairment: str = "auto"            # mininet: auto, netem or relay
    mode: str | None = None             # sim: packet, flow or auto (None: auto)
    console: Console | None = None      # where the run reports (None: silently; errors raise)
    progress: Callable[[str], None] | None = None   # phase lines (the simulator's)
    repeated: bool = False              # one run of `run --repeat` (no verdict or report lines of its own)


class Backend(Protocol):
    """A way to realise a scenario; the registry below holds one instance of each."""

    name: str

    def available(self) -> str | None:
        """Why this backend cannot run on this machine (what to do about it), or None."""

    def check(self, options: RunOptions) -> str | None:
        """Why these options do not apply to this backend (exit 2, nothing run), or None."""

    def ignored(self, options: RunOptions) -> str | None:
        """A note on options given that this backend ignores, or None."""

    def run(self, scenario: Scenario, out: Path, options: RunOptions) -> int:
        """Run `scenario` into `out` (raw data and reports); the exit code."""

    def clean(self, run_id: str | None) -> list[str]:
        """Remove what run `run_id` left (None: every run's, live or not); what was removed. Which runs
        are dead is `emulation.runs`' to say."""


class MininetBackend:
    name = "mininet"

    def available(self) -> str | None:
        if os.geteuid() != 0:
            return "the mininet backend needs root (network namespaces); run with sudo"
        try:
            import mininet.net  # noqa: F401
        except ImportError:
            return "Mininet is not importable: run 'make setup' (installs Debian's mininet)"
        return None

    def check(self, options: RunOptions) -> str | None:
        return "--mode applies to --backend sim only" if options.mode is not None else None

    def ignored(self, options: RunOptions) -> str | None:
        return None

    def run(self, scenario: Scenario, out: Path, options: RunOptions) -> int:
        from emulation.backends.mininet.runner import RunError, Runner

        con = options.console
        if con is None:
            return Runner(scenario, out, keep=options.keep, impairment_backend=options.impairment).execute()
        from emulation.progress import RunProgress

        with RunProgress(con) as bars:
            runner = Runner(scenario, out, keep=options.keep, impairment_backend=options.impairment, progress=bars,
                            clock=bars.clock)
            try:
                code = runner.execute()
            except RunError as exc:
                bars.close()
                con.print(f"[red]run failed:[/red] {exc}", markup=True)
                return EXIT_BAD_INPUT
        if not options.repeated and code != EXIT_BAD_INPUT:
            con.print(f"report: {out / 'report.html'} (and report.md, summary.json, junit.xml)")
        return code

    def clean(self, run_id: str | None) -> list[str]:
        """The relays of the run (every run's, by their registry) and its namespaces and management links."""
        from emulation.backends.mininet.net import clean_run

        return clean_run(run_id)


class SimBackend:
    name = "sim"

    def _entry(self, attr: str = "run_sim") -> Any:
        """`emulation.backends.sim.<attr>`, imported when needed (ImportError if it is missing)."""
        module = importlib.import_module("emulation.backends.sim")
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ImportError(f"emulation.backends.sim has no {attr}") from None

    def available(self) -> str | None:
        try:
            self._entry()
        except ImportError as exc:
            return f"the simulation backend (emulation.backends.sim.run_sim) cannot be imported: {exc}"
        return None

    def check(self, options: RunOptions) -> str | None:
        try:
            modes = self._entry("MODES")
        except ImportError:
            return None         # available() says why
        if (options.mode or "auto") not in modes:
            return f"--mode: expected one of {', '.join(modes)}, got {options.mode!r}"
        return None

    def ignored(self, options: RunOptions) -> str | None:
        if options.keep or options.impairment != "auto":
            return "--keep and --impairment apply to the mininet backend; the simulator models every link itself"
        return None

    def run(self, scenario: Scenario, out: Path, options: RunOptions) -> int:
        con = options.console
        loud = con is not None and not options.repeated
        try:
            code = int(self._entry()(scenario, out, mode=options.mode or "auto",
                                     progress=options.progress if loud else None))
        except ConfigError as exc:
            if con is None:
                raise
            for field, reason in exc.errors:
                con.print(f"[red]{field}: {reason}[/red]" if field else f"[red]{reason}[/red]")
            return EXIT_BAD_INPUT
        if loud:
            assert con is not None
            self._verdicts(scenario, out, con)
        return code

    def _verdicts(self, scenario: Scenario, out: Path, con: Console) -> None:
        """Each expectation's verdict and measured value, then the run's."""
        from emulation.measure.expectations import ExpectationResult
        from emulation.report.tables import expectation_value

        summary = json.loads((out / "summary.json").read_text())
        kinds = [e["type"] for e in json.loads((out / "raw" / "run.json").read_text())["expectations"]]
        for kind, e in zip(kinds, summary["expectations"], strict=True):
            shown = expectation_value(ExpectationResult(kind, e["text"], e["passed"], e["value"]))
            con.print(f"{'PASS' if e['passed'] else 'FAIL'}  {e['text']}  (measured {shown})", markup=False)
        verdict = "passed" if summary["passed"] else "FAILED"
        con.print(f"{scenario.name}: {verdict} in simulation; report: {out / 'report.html'} (and report.md, "
                  "summary.json, junit.xml)", markup=False)

    def clean(self, run_id: str | None) -> list[str]:
        return []       # a simulation leaves nothing behind


BACKENDS: dict[str, Backend] = {"mininet": MininetBackend(), "sim": SimBackend()}


def get(name: str) -> Backend:
    """The backend called `name` (KeyError: no such backend)."""
    return BACKENDS[name]
