"""Agent-side commands for `patronus` (registered in `patronus/cli.py`): `keys generate|pubkey` and `doctor`.

Output meant for scripts (keys, `--json`) is printed plainly, never through rich markup; errors go to stderr.
Exit codes follow the CLI convention: 0 success, 1 an expectation failed (doctor: the agent cannot run
here), 2 bad input (an invalid key, a key file that already exists).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from patronus.agent import keys as keys_mod
from patronus.core.errors import ConfigError

__all__ = ["doctor", "keys_app"]

keys_app = typer.Typer(add_completion=False, no_args_is_help=True, help="WireGuard keys (like `wg genkey`/`pubkey`).")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@keys_app.command()
def generate(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    private_key_file: Annotated[
        Path | None,
        typer.Option(help="Write the private key to this new file (mode 0600) instead of printing it."),
    ] = None,
) -> None:
    """Generate a key pair and print it (or store the private key in a new 0600 file)."""
    private = keys_mod.generate_private_key()
    public = keys_mod.public_key(private)
    out: dict[str, str] = {"public_key": public}
    if private_key_file is not None:
        try:
            keys_mod.write_private_key(private_key_file, private)
        except ConfigError as e:
            raise _fail(str(e)) from None
        except OSError as e:
            raise _fail(f"{private_key_file}: {e.strerror}") from None
        out["private_key_file"] = str(private_key_file)
    else:
        out = {"private_key": private, **out}
    if json_out:
        typer.echo(json.dumps(out))
    else:
        for k, v in out.items():
            typer.echo(f"{k}: {v}")


@keys_app.command()
def pubkey() -> None:
    """Read a private key from stdin and print its public key."""
    try:
        key = keys_mod.check_key(sys.stdin.read(), "stdin")
    except ConfigError as e:
        raise _fail(str(e)) from None
    typer.echo(keys_mod.public_key(key))


def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False) -> None:
    """Check what this host can do for the agent and the test-bed; exit 1 if the agent cannot run here."""
    from patronus.agent import doctor as doctor_mod

    checks = doctor_mod.run_checks()
    typer.echo(doctor_mod.as_json(checks) if json_out else doctor_mod.render(checks))
    if not doctor_mod.agent_ready(checks):
        raise typer.Exit(1)
