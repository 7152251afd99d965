"""`patronus-lab`: the command line of the test-bed.

Verbs (DESIGN.md): `validate` today; `run`, `report`, `clean` and `doctor` join the same `app` as
commands of their own (`@app.command()` in this module, or `app.add_typer(...)` from their packages).
Exit codes: 0 success, 1 an expectation failed, 2 bad input or an environment that cannot run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    backend: Annotated[str, typer.Option(help="mininet (real agents in namespaces).")] = "mininet",
    impairment: Annotated[str, typer.Option(help="auto, netem or relay.")] = "auto",
    keep: Annotated[bool, typer.Option("--keep", help="Leave the network up for inspection.")] = False,
) -> None:
    """Run a scenario end to end and write its reports; exit 0 if every expectation holds, 1 if not."""
    import os
    import time as _time

    from emulation.scenario import load

    try:
        scenario = load(file)
    except ConfigError as exc:
        console.print(f"[red]{file}: invalid[/red] — {_plural(len(exc.errors), 'error')}")
        for field, reason in exc.errors:
            console.print(f"  {field}: {reason}" if field else f"  {reason}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if backend != "mininet":
        console.print(f"[red]backend {backend!r} is not available; this test-bed runs 'mininet'[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    if os.geteuid() != 0:
        console.print("[red]the mininet backend needs root (network namespaces); run with sudo[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        console.print("[red]Mininet is not importable: run 'make setup' (installs Debian's mininet)[/red]")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    from emulation.runner import RunError, Runner

    out = out or Path("reports") / "runs" / f"{scenario.name}-{_time.strftime('%Y%m%d-%H%M%S')}"
    started = _time.monotonic()

    def progress(msg: str) -> None:
        console.print(f"[dim]{_time.monotonic() - started:7.1f} s[/dim]  {msg}", markup=True)

    runner = Runner(scenario, out, keep=keep, impairment_backend=impairment, progress=progress)
    try:
        code = runner.execute()
    except RunError as exc:
        console.print(f"[red]run failed:[/red] {exc}", markup=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"report: {out / 'report.html'} (and report.md, summary.json, junit.xml)")
    raise typer.Exit(code)


@app.command()
def report(directory: Annotated[Path, typer.Argument(help="A run directory.", show_default=False)]) -> None:
    """Rebuild a run's reports from its raw data."""
    from emulation.report import report_command

    raise typer.Exit(report_command(directory))


@app.command()
def clean(run_id: Annotated[str | None, typer.Option("--run", help="Only this run's leftovers.")] = None) -> None:
    """Remove what crashed runs left: namespaces pt<run>-*, management links, relays, their processes."""
    from emulation.backends.mininet_net import clean as clean_net
    from emulation.links.relay import cleanup as clean_relays
    from emulation.links.relay import registry_dir

    tags = {f"pt{run_id}"} if run_id else {f.name.split(".")[0] for f in registry_dir().glob("pt*.json")}
    removed = [r for tag in sorted(tags) for r in clean_relays(tag)]
    removed += clean_net(run_id)
    for r in removed:
        console.print(f"removed {r}", markup=False)
    if not removed:
        console.print("nothing to remove")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
