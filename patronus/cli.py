"""`patronus`: the command line of the SD-WAN stack.

Exit codes: 0 success, 1 an expectation failed, 2 bad input or an environment that cannot run it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from patronus import __version__
from patronus.core.errors import ConfigError
from patronus.core.monitor import MonitorProfile

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Patronus SD-WAN: site agent, path monitoring, policy routing and failover.")
console = Console(highlight=False)

_STYLE = {"script": "bold magenta", "status": "yellow", "route": "cyan", "failover": "bold red",
          "failback": "bold green", "sla": "blue"}


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"patronus {__version__}")


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the simulated network's randomness.")] = 1,
    profile: Annotated[str, typer.Option(help="Monitor profile: fast, default, or an interval like 50ms.")] = "fast",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
) -> None:
    """Run the core (monitor, router, SLA) on a scripted two-site network in virtual time."""
    from patronus import demo as demo_mod

    try:
        prof = MonitorProfile.from_config(profile if profile in ("fast", "default") else {"interval": profile})
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    console.rule(f"[bold]Patronus demo[/bold]: 2 sites × 2 paths, monitor profile "
                 f"'{prof.name}' ({prof.interval_s * 1e3:g} ms × {prof.detect_multiplier})")

    def line(t: float, kind: str, text: str, data: dict[str, Any]) -> None:
        if quiet:
            return
        if kind == "metrics":
            table = Table(title=f"t = {t:6.2f} s", title_justify="left", show_edge=False, pad_edge=False)
            for col in ("path", "status", "latency ms", "jitter ms", "loss %", "score"):
                table.add_column(col, justify="right" if col != "path" else "left")
            for name, (status, m) in data["paths"].items():
                color = {"up": "green", "degraded": "yellow", "down": "red"}[status]
                table.add_row(name, f"[{color}]{status}[/{color}]", f"{m.latency_ms:.1f}", f"{m.jitter_ms:.1f}",
                              f"{m.loss_pct:.1f}", f"{m.score:.1f}")
            console.print(table)
            return
        style = _STYLE.get(kind, "")
        console.print(f"[dim]t = {t:6.3f} s[/dim]  [{style}]{kind:<8}[/{style}] {text}")

    result = demo_mod.run(seed=seed, profile=prof, on_line=line)
    console.rule("[bold]summary[/bold]")
    det = f"{result.detection_s * 1e3:.0f} ms" if result.detection_s is not None else "not detected"
    fo = f"{result.failover_s * 1e3:.0f} ms" if result.failover_s is not None else "none"
    console.print(f"hard cut of isp1 at t = {demo_mod.CUT_AT:g} s: detected Down after {det}, "
                  f"flows moved after {fo}")
    console.print(f"failbacks after the hold time: {result.failbacks}")
    console.print("flows at the end: " + ", ".join(f"{k} on {v}" for k, v in result.final_paths.items()))
    if result.detection_s is None or result.failover_s is None:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
