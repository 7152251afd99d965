"""`patronus-lab`: the command line of the test-bed.

Verbs (DESIGN.md): `validate` today; `run`, `report`, `clean` and `doctor` join the same `app` as
commands of their own (`@app.command()` in this module, or `app.add_typer(...)` from their packages).
Exit codes: 0 success, 1 an expectation failed, 2 bad input or an environment that cannot run it, 3 a
repeated run (`run --repeat N`, emulation.repeat) whose every run was inconclusive.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from patronus.core.errors import ConfigError

app = typer.Typer(name="patronus-lab", add_completion=False, no_args_is_help=True,
                  help="The Patronus test-bed: scenario files, emulated sites over impaired links, reports.")
console = Console(highlight=False, soft_wrap=True)

EXIT_OK = 0
EXIT_EXPECTATION_FAILED = 1
EXIT_BAD_INPUT = 2


@app.callback()
def _root() -> None:
    """The Patronus test-bed: scenario files, emulated sites over impaired links, reports."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Scenario files to check.", show_default=False)],
) -> None:
    """Check scenario files: list every error with its path (exit 2), or summarise each valid one."""
    from emulation.scenario import load

    bad = 0
    for path in files:
        try:
            scenario = load(path)
        except ConfigError as exc:
            bad += 1
            console.print(f"[red]{path}: invalid[/red] — {_plural(len(exc.errors), 'error')}")
            for field, reason in exc.errors:
                console.print(f"  {field}: {reason}" if field else f"  {reason}", markup=False)
            continue
        n = scenario.summary()
        console.print(f"[green]{path}: valid[/green] — {_plural(n.sites, 'site')}, {_plural(n.flows, 'flow')}, "
                      f"{_plural(n.timeline_events, 'timeline event')}, {_plural(n.expectations, 'expectation')}")
    if bad:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="The scenario file.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default reports/runs/NAME-TIME).")
                   ] = None,
    backend: Annotated[str, typer.Option(help="mininet (real agents in namespaces) or sim (the simpy "
                                              "simulator: virtual time, no root).")] = "mininet",
    impairment: Annotated[str, typer.Option(help="auto, netem or relay (mininet).")] = "auto",
    keep: Annotated[bool, typer.Option("--keep", help="Leave the network up for inspection (mininet).")] = False,
    mode: Annotated[str | None, typer.Option(help="sim only: packet (every datagram simulated), flow (UDP "
                                                  "records computed per flow) or auto (packet unless huge).")
                    ] = None,
    repeat: Annotated[int | None, typer.Option("--repeat", help="Run it N times (seeds seed … seed+N−1, one "
                                               "after another) into OUT/runs/1 … N, and judge every expectation "
                                               "over the runs (its quantile or pass_rate; default every run) in "
                                               "a combined report in OUT.", show_default=False)] = None,
) -> None:
    """Run a scenario end to end and write its reports; exit 0 if every expectation holds, 1 if not (3: a
    repeated run whose every run was inconclusive)."""
    import time as _time
    from dataclasses import replace

    from emulation import backends
    from emulation.scenario import load

    if backend not in backends.BACKENDS:
        console.print(f"[red]backend {backend!r} is not available; expected {' or '.join(backends.BACKENDS)}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    chosen = backends.get(backend)
    options = backends.RunOptions(keep=keep, impairment=impairment, mode=mode, console=console)
    bad = chosen.check(options)
    if bad:
        console.print(f"[red]{bad}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        scenario = load(file)
    except ConfigError as exc:
        console.print(f"[red]{file}: invalid[/red] — {_plural(len(exc.errors), 'error')}")
        for field, reason in exc.errors:
            console.print(f"  {field}: {reason}" if field else f"  {reason}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    refused = scenario.refusal(backend)
    if refused:
        console.print(f"[red]{file}: {refused}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    if repeat is not None:
        from emulation.repeat import plan_runs

        if keep:
            console.print("[red]--keep leaves one run's network up; it does not combine with --repeat[/red]")
            raise typer.Exit(EXIT_BAD_INPUT)
        try:
            plan_runs(scenario, repeat)
        except ConfigError as exc:
            for field, reason in exc.errors:
                console.print(f"{field}: {reason}", markup=False, style="red")
            raise typer.Exit(EXIT_BAD_INPUT) from None
    out = out or Path("reports") / "runs" / f"{scenario.name}-{_time.strftime('%Y%m%d-%H%M%S')}"
    started = _time.monotonic()

    def progress(msg: str) -> None:
        console.print(f"[dim]{_time.monotonic() - started:7.1f} s[/dim]  {msg}", markup=True)

    note = chosen.ignored(options)
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    why = chosen.available()
    if why:
        console.print(f"[red]{why}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    if repeat is not None:
        each = replace(options, repeated=True)
        raise typer.Exit(_run_repeated(scenario, out, repeat, backend, lambda sc, d: chosen.run(sc, d, each)))
    raise typer.Exit(chosen.run(scenario, out, replace(options, progress=progress)))


def _run_repeated(scenario: Any, out: Path, n: int, backend: str, run_one: Callable[[Any, Path], int]) -> int:
    """`run --repeat N`: the runs one after another, a line per run, then each expectation over the runs."""
    import time as _time

    from emulation.measure.errors import RawDataError
    from emulation.repeat import run_repeated, verdict_lines

    started = _time.monotonic()
    verdicts = {0: "passed", 1: "FAILED", 2: "could not run", 3: "inconclusive"}

    def announce(sc: Any, d: Path) -> int:
        i = int(d.name)
        console.print(f"[bold]run {i}/{n}[/bold] (seed {sc.seed}) → {d}", markup=True, highlight=False)
        return run_one(sc, d)

    def done(i: int, seed: int, code: int, d: Path) -> None:
        console.print(f"[dim]{_time.monotonic() - started:7.1f} s[/dim]  run {i}/{n} (seed {seed}): "
                      f"{verdicts.get(code, f'exit {code}')}", markup=True, highlight=False)

    try:
        code = run_repeated(scenario, out, n, announce, backend=backend, on_run=done)
    except (RawDataError, ConfigError) as exc:
        for field, reason in exc.errors:
            console.print(f"{field}: {reason}" if field else reason, markup=False, style="red")
        return EXIT_BAD_INPUT
    doc = json.loads((out / "summary.json").read_text())
    for line in verdict_lines(doc):
        console.print(line, markup=False, highlight=False)
    console.print(f"report: {out / 'report.html'} (and report.md, summary.json, junit.xml; each run's in "
                  f"{out / 'runs'}/N)", markup=False)
    return code


@app.command()
def report(directory: Annotated[Path, typer.Argument(help="A run directory, or a repeated run's (run --repeat).",
                                                     show_default=False)]) -> None:
    """Rebuild a run's reports from its raw data (a repeated run's: every run's and the combined report)."""
    from emulation.repeat import is_repeat_dir, repeat_report_command
    from emulation.report import report_command

    raise typer.Exit(repeat_report_command(directory) if is_repeat_dir(directory) else report_command(directory))


@app.command()
def clean(run_id: Annotated[str | None, typer.Option("--run", help="Only this run's leftovers.")] = None,
          every: Annotated[bool, typer.Option("--all", help="Every run's, live or not (and labs', and runs "
                                                              "without an owner record).")] = False) -> None:
    """Remove what dead runs left: namespaces pt<run>-*, management links, relays, their processes.

    Without --run, only runs whose owner process is gone (killed, crashed, or kept with --keep); a live
    run or netns lab is never touched unless named (--run, refused while its owner runs) or --all."""
    from emulation import runs
    from emulation.backends import BACKENDS

    def clean_one(rid: str | None) -> list[str]:
        return [r for b in BACKENDS.values() for r in b.clean(rid)]

    if run_id is not None and not runs.RUN_ID_RE.match(run_id):
        console.print(f"[red]--run: expected a run id of 4 hex digits (as in pt<run>-*), got {run_id!r}[/red]")
        raise typer.Exit(2)
    if every:
        removed = clean_one(None)
        for rec in runs.records():
            runs.release(rec.run_id)
    elif run_id is not None:
        live = [r for r in runs.records() if r.run_id == run_id and r.owner_alive()]
        if live:
            console.print(f"[red]run {run_id} is running (pid {live[0].pid}, a {live[0].kind}): stop it first[/red]")
            raise typer.Exit(2)
        removed = clean_one(run_id)
        runs.release(run_id)
    else:
        removed = runs.remove_dead(clean_one, kept_too=True)
    for r in removed:
        console.print(f"removed {r}", markup=False)
    if not removed:
        console.print("nothing to remove")
    unowned = sorted(runs.unowned_ids()) if not every and run_id is None else []
    if unowned:
        console.print(f"left alone: run(s) {', '.join(unowned)} (namespaces without an owner record); "
                      "`patronus-lab clean --run ID` or `--all` removes them", markup=False)


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="Run directory A (the reference).", show_default=False)],
    run_b: Annotated[Path, typer.Argument(help="Run directory B (compared with A).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write compare.md, compare.html and compare.json "
                                                                   "here.")] = None,
    detect_tol: Annotated[str | None, typer.Option("--detect-tol", help="Detection time tolerance, e.g. 20ms.",
                                                   show_default="one probe interval")] = None,
    gap_tol: Annotated[str | None, typer.Option("--gap-tol", help="Failover gap tolerance.",
                                                show_default="the detection tolerance")] = None,
    lost_tol: Annotated[float | None, typer.Option("--lost-tol", help="Lost packets tolerance.",
                                                   show_default="the flow's packets in the gap tolerance")] = None,
    rel_tol: Annotated[str | None, typer.Option("--rel-tol", help="Relative tolerance of gaps and lost packets.",
                                                show_default="25%")] = None,
    sla_tol: Annotated[float | None, typer.Option("--sla-tol", help="SLA compliance tolerance, percent points.",
                                                  show_default="2")] = None,
    loss_tol: Annotated[float | None, typer.Option("--loss-tol", help="Loss tolerance, percent points.",
                                                   show_default="0.5")] = None,
    latency_tol: Annotated[str | None, typer.Option("--latency-tol", help="Latency and jitter tolerance.",
                                                    show_default="2ms, or 10 % if larger")] = None,
    allow_changes: Annotated[bool, typer.Option("--allow-changes", help="Compare runs whose scenario settings "
                                                "differ (the differences are listed).")] = False,
) -> None:
    """Two runs of one scenario side by side (e.g. sim against mininet): detection times, failover gaps, lost
    packets and SLA metrics, differences beyond tolerance flagged. Exit 0 agree, 1 flagged, 2 bad input."""
    from emulation.compare import ToleranceOptions, compare_command

    opts = ToleranceOptions(detect=detect_tol, gap=gap_tol, lost=lost_tol, relative=rel_tol, sla_pct=sla_tol,
                            loss_pct=loss_tol, latency=latency_tol)
    raise typer.Exit(compare_command(run_a, run_b, out, tolerances=opts, allow_changes=allow_changes,
                                     console=console))


@app.command()
def sweep(
    file: Annotated[Path, typer.Argument(help="The scenario file.", show_default=False)],
    param: Annotated[list[str], typer.Option("--param", "-p", help="NAME=V1,V2,... (repeat for each axis): a dotted "
                                             "scenario path, or monitor.KEY / router.KEY / sla.KEY / steering for "
                                             "every site's agent, e.g. monitor.interval=20ms,50ms,100ms.",
                                             show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Sweep directory.",
                                             show_default="reports/sweeps/NAME-TIME")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Parallel processes; 0 runs the points in "
                                                "this process.", show_default="the CPU count")] = None,
    dask: Annotated[str | None, typer.Option("--dask", help="Run the points on this Dask scheduler "
                                             "(tcp://host:8786) instead; needs dask\\[distributed].",
                                             show_default=False)] = None,
    explain_window: Annotated[str | None, typer.Option("--explain-window", help="How long after a timeline event "
                                                       "a failover still counts as explained.",
                                                       show_default="from the monitor profile")] = None,
) -> None:
    """Run a scenario over a grid of settings on the simulator (the timer tuner): one results table
    (results.parquet, results.csv), plots against the probe interval and sweep.md. Exit 0 all passed, 1 an
    expectation failed at some point, 2 bad input (every problem listed, nothing run) or a point that could
    not run."""
    from emulation.sweep import sweep_command

    raise typer.Exit(sweep_command(file, param, out, workers=workers, dask_address=dask,
                                   explain_window=explain_window, console=console))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
