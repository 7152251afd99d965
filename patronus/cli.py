"""`patronus`: the command line of the SD-WAN stack.

Exit codes: 0 success, 1 an expectation failed, 2 bad input or an environment that cannot run it.
"""

from __future__ import annotations

import time
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
                table.add_row(name, f"[{color}]{status}[/{color}]", _num(m.measured_latency_ms),
                              _num(m.measured_jitter_ms), f"{m.loss_pct:.1f}", f"{m.score:.1f}")
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


# --- the site agent ---------------------------------------------------------------------------------

def _load_site(path: str) -> Any:
    from patronus.agent import config as cfgmod

    try:
        return cfgmod.load(path)
    except ConfigError as exc:
        console.print(f"[red]{path}: {len(exc.errors)} error(s)[/red]")
        for fld, reason in exc.errors:
            console.print(f"  {fld or '(file)'}: {reason}", markup=False)
        raise typer.Exit(2) from None


ConfigOpt = Annotated[str, typer.Option("--config", "-c", envvar="PATRONUS_CONFIG", help="The site file (YAML).")]


@app.command()
def validate(path: Annotated[str, typer.Argument(help="The site file to check.")]) -> None:
    """Check a site file; list every error with its path (exit 2), or summarise it (exit 0)."""
    cfg = _load_site(path)
    console.print(f"[green]{path}: valid[/green] — site {cfg.name} (id {cfg.id}), {len(cfg.uplinks)} uplink(s), "
                  f"{len(cfg.remotes)} remote site(s), {len(cfg.paths)} path(s), monitor '{cfg.monitor.name}', "
                  f"steering {cfg.steering}")
    for p in cfg.paths:
        console.print(f"  path {p.id}: {p.uplink.address} → {p.endpoint.address}, tunnel {p.ifname} "
                      f"(port {p.listen_port} → {p.peer_port})", markup=False)


@app.command()
def agent(config: ConfigOpt,
          log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
          cleanup: Annotated[bool, typer.Option("--cleanup", help="On SIGTERM/SIGINT remove the tunnels, nft "
                                                "table, rules, routes and reflector too (else they stay, the "
                                                "kernel keeps forwarding, and the next agent adopts them).")]
          = False) -> None:
    """Run the site agent in the foreground until SIGTERM/SIGINT. It starts by adopting whatever an earlier
    agent of the site left; on stop it leaves its dataplane for the next one (graceful restart), unless
    --cleanup."""
    import asyncio
    import logging

    from patronus.agent.daemon import AgentError, serve

    cfg = _load_site(config)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(a: Any) -> None:
        host, port = cfg.api_listen
        logging.getLogger("patronus.agent").info("ready: API on http://%s:%d (token in %s), public key %s",
                                                 host, port, cfg.api_token_file if not cfg.api_token else
                                                 "the site file", a.public_key)

    try:
        code = asyncio.run(serve(cfg, ready=ready, cleanup=cleanup))
    except (AgentError, ConfigError) as exc:
        console.print(f"[red]agent {cfg.name} cannot start:[/red] {exc}", markup=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _client(config: str) -> Any:
    from patronus.agent.client import AgentClient, ClientError

    try:
        return AgentClient.from_config(_load_site(config))
    except ClientError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _call(fn: Any, *a: Any) -> Any:
    from patronus.agent.client import ClientError

    try:
        return fn(*a)
    except ClientError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True)
        raise typer.Exit(exc.exit_code) from None


_COLOR = {"up": "green", "degraded": "yellow", "down": "red"}


def _num(x: Any, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _paths_table(paths: list[dict[str, Any]]) -> Table:
    t = Table(show_edge=False, pad_edge=False)
    # names are never cut (a path id is what a user types next); on a narrow terminal the figures fold
    whole = {"path": max([4, *(len(str(p["id"])) for p in paths)]), "status": 8,
             "tunnel": max([6, *(len(str(p["interface"])) for p in paths)])}
    for col in ("path", "status", "latency ms", "jitter ms", "loss %", "score", "flows", "probes", "rejected",
                "tunnel"):
        if col in whole:
            t.add_column(col, justify="left", no_wrap=True, min_width=whole[col])
        else:
            t.add_column(col, justify="right", overflow="fold")
    for p in paths:
        c = _COLOR.get(p["status"], "")
        t.add_row(p["id"], f"[{c}]{p['status']}[/{c}]", _num(p["latency_ms"], ".2f"), _num(p["jitter_ms"], ".2f"),
                  _num(p["loss_pct"]), _num(p["score"]), str(p["flows"]),
                  f"{p['probes_received']}/{p['probes_sent']}", str(p["probes_rejected"]), p["interface"])
    return t


@app.command()
def status(config: ConfigOpt,
           json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The running agent's site, paths and latest events."""
    import json as _json

    c = _client(config)
    site = _call(c.get, "/site")
    paths = _call(c.get, "/paths")
    events = _call(c.get, "/events?limit=10")
    if json_out:
        print(_json.dumps({"site": site, "paths": paths, "events": events}, indent=2))
        return
    console.print(f"site [bold]{site['name']}[/bold] (id {site['id']}), WireGuard {site['wireguard_backend']}, "
                  f"steering {site['steering']}, monitor '{site.get('monitor_profile')}'")
    console.print(_paths_table(paths))
    if events:
        console.print("[bold]recent events[/bold]")
        for e in events:
            detail = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("kind", "at", "metrics"))
            console.print(f"  {time.strftime('%H:%M:%S', time.localtime(e['at']))}.{int(e['at'] % 1 * 1000):03d} "
                          f"{e['kind']}: {detail}", markup=False)


@app.command()
def paths(config: ConfigOpt, json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every path with its status and measurements."""
    import json as _json

    data = _call(_client(config).get, "/paths")
    if json_out:
        print(_json.dumps(data, indent=2))
    else:
        console.print(_paths_table(data))


@app.command()
def flows(config: ConfigOpt, json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Connections being steered, with their policy and path."""
    import json as _json

    data = _call(_client(config).get, "/flows")
    if json_out:
        print(_json.dumps(data, indent=2))
        return
    t = Table(show_edge=False, pad_edge=False)
    for col in ("flow", "policy", "path", "first path"):
        t.add_column(col)
    for f in data:
        proto = {6: "tcp", 17: "udp", 1: "icmp"}.get(f["protocol"], str(f["protocol"]))
        t.add_row(f"{proto} {f['src_ip']}:{f['src_port']} → {f['dst_ip']}:{f['dst_port']}", f["policy"],
                  f["path"] or "-", f["origin_path"] or "-")
    console.print(t)
    console.print(f"{len(data)} flow(s)")


def _topology_table(data: dict[str, Any]) -> Table:
    """One row per path, grouped by remote site; a remote with no path is a row of its own."""
    t = Table(show_edge=False, pad_edge=False)
    for col in ("site", "kind", "prefixes", "path", "uplinks", "status", "score"):
        t.add_column(col, no_wrap=col in ("site", "path"))
    links: dict[str, list[dict[str, Any]]] = {}
    for link in data["links"]:
        links.setdefault(link["to"], []).append(link)
    for node in data["nodes"]:
        rows: list[dict[str, Any] | None] = [*sorted(links.get(node["id"], []), key=lambda x: str(x["path"]))]
        for i, link in enumerate(rows or [None]):
            first = (node["id"], node["kind"], " ".join(node["prefixes"])) if i == 0 else ("", "", "")
            if link is None:
                t.add_row(*first, "-", "", "", "")
                continue
            c = _COLOR.get(link["status"], "")
            t.add_row(*first, link["path"], f"{link['uplink']} → {link['remote_uplink']}",
                      f"[{c}]{link['status']}[/{c}]", _num(link["score"]))
    return t


@app.command()
def topology(config: ConfigOpt,
             json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The site's graph: this site, its remote sites and every path to them, with its status."""
    import json as _json

    data = _call(_client(config).get, "/topology")
    if json_out:
        print(_json.dumps(data, indent=2))
        return
    console.print(_topology_table(data))
    up = sum(1 for link in data["links"] if link["status"] != "down")
    console.print(f"{len(data['nodes']) - 1} remote site(s), {len(data['links'])} path(s), {up} usable")


policy_app = typer.Typer(no_args_is_help=True, help="Routing policies of a running agent.")
app.add_typer(policy_app, name="policy")


@policy_app.command("apply")
def policy_apply(config: ConfigOpt,
                 file: Annotated[str, typer.Option("--file", "-f", help="YAML: one policy or a list of them.")],
                 ) -> None:
    """Create or update policies from a file (all are checked before any is applied)."""
    from urllib.parse import quote

    from rich.markup import escape

    from patronus import safeyaml
    from patronus.core.policy import RoutingPolicy

    try:
        doc = safeyaml.read(safeyaml.read_file(file))
    except OSError as exc:
        console.print(f"[red]{escape(file)}:[/red] {escape(str(exc.strerror or exc))}")
        raise typer.Exit(2) from None
    except ConfigError as exc:
        console.print(f"[red]{escape(file)}:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    items = doc.get("policies") if isinstance(doc, dict) and "policies" in doc else doc
    items = items if isinstance(items, list) else [items]
    errors: list[tuple[str, str]] = []
    for i, d in enumerate(items):
        try:
            RoutingPolicy.from_dict(d, f"policies[{i}]")
        except ConfigError as exc:
            errors += exc.errors
    if errors:
        console.print(f"[red]{file}: {len(errors)} error(s), nothing applied[/red]")
        for fld, reason in errors:
            console.print(f"  {fld}: {reason}", markup=False)
        raise typer.Exit(2)
    c = _client(config)
    for d in items:
        created = _call(c.put, f"/policies/{quote(d['name'], safe='')}", d)   # a name may hold ? # % /
        console.print(f"{'created' if created else 'updated'} policy {d['name']}", markup=False)


@policy_app.command("list")
def policy_list(config: ConfigOpt) -> None:
    """The agent's policies in match order."""
    import yaml

    print(yaml.safe_dump(_call(_client(config).get, "/policies"), sort_keys=False))


@app.command()
def cleanup(config: Annotated[str | None, typer.Option("--config", "-c", envvar="PATRONUS_CONFIG",
                                                       help="Only this site's leftovers.")] = None,
            all_sites: Annotated[bool, typer.Option("--all", help="Every Patronus agent's leftovers.")] = False,
            ) -> None:
    """Remove what a stopped or crashed agent left (its tunnels, nft table, rules, routes, wireguard-go and
    reflector processes, its dataplane record), restoring the sysctls it changed."""
    from patronus.agent.cleanup import agent_running
    from patronus.agent.cleanup import cleanup as do_cleanup

    if (config is None) == (not all_sites):
        console.print("[red]error:[/red] give --config SITE_FILE or --all")
        raise typer.Exit(2)
    cfg = _load_site(config) if config else None
    if cfg is not None and (pid := agent_running(cfg)) is not None:
        console.print(f"[red]the agent of site {cfg.name} is running (pid {pid}); stop it with SIGTERM instead[/red]")
        raise typer.Exit(1)
    rep = do_cleanup(cfg)
    for r in rep.removed:
        console.print(f"removed {r}", markup=False)
    for p in rep.problems:
        console.print(f"[yellow]problem:[/yellow] {p}", markup=False)
    if not rep.removed and not rep.problems:
        console.print("nothing to remove")
    raise typer.Exit(1 if rep.problems else 0)


def _register_tools() -> None:
    from patronus.agent.cli_tools import ca_app, doctor, keys_app

    app.add_typer(keys_app, name="keys", help="WireGuard keys and Ed25519 signing keys.")
    app.add_typer(ca_app, name="ca", help="The organisation's certificate authority: root, site certificates, "
                                          "revocations.")
    app.command(name="doctor")(doctor)


_register_tools()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
