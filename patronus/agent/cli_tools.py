"""Agent-side commands for `patronus` (registered in `patronus/cli.py`): `keys generate|pubkey|signing`, `doctor`
and `ca init|sign-site|revoke|show` (the organisation's certificate authority, patronus/agent/ca.py).

Output meant for scripts (keys, `--json`) is printed plainly, never through rich markup; errors go to stderr.
Exit codes follow the CLI convention: 0 success, 1 an expectation failed (doctor: the agent cannot run
here), 2 bad input (an invalid key, a key file that already exists).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from patronus.agent import keys as keys_mod
from patronus.core.errors import ConfigError

__all__ = ["ca_app", "doctor", "keys_app"]

keys_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="WireGuard keys (like `wg genkey`/`pubkey`) and Ed25519 signing keys.")


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


@keys_app.command()
def signing(
    private_key_file: Annotated[Path, typer.Option(help="Write the new Ed25519 private key to this new file (mode "
                                                        "0600, PEM PKCS#8).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Generate a site's Ed25519 signing key (for its certificate: `patronus ca sign-site
    --signing-public-key`) into a new 0600 file and print the public key. The private key stays on the site."""
    try:
        public = keys_mod.key_text(keys_mod.write_signing_key(private_key_file))
    except ConfigError as e:
        raise _fail(f"--private-key-file: {e}") from None
    except OSError as e:
        raise _fail(f"--private-key-file: {private_key_file}: {e.strerror}") from None
    out = {"signing_public_key": public, "private_key_file": str(private_key_file)}
    if json_out:
        typer.echo(json.dumps(out))
    else:
        for k, v in out.items():
            typer.echo(f"{k}: {v}")


# --- the organisation's CA (patronus/agent/ca.py) ---------------------------------------------------------

ca_app = typer.Typer(add_completion=False, no_args_is_help=True,
                     help="The organisation's certificate authority: root, site certificates, revocations.")

CaDirOpt = Annotated[Path, typer.Option("--ca", help="The CA directory (`ca init --dir`).")]


def _ca_fail(exc: ConfigError | OSError) -> typer.Exit:
    if isinstance(exc, OSError):
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    return _fail(str(exc))


def _now() -> int:
    return int(time.time())


@ca_app.command("init")
def ca_init(
    org: Annotated[str, typer.Option("--org", help="The organisation's name (lowercase letters, digits, '.', '-').")],
    directory: Annotated[Path, typer.Option("--dir", help="The CA directory to create (0700 if missing).")],
    prefix: Annotated[list[str] | None, typer.Option("--prefix", help="A prefix sites may hold (repeat; default "
                                                                      "all of IPv4 and IPv6).")] = None,
    days: Annotated[int, typer.Option(help="Validity of the root, in days.")] = 3650,
) -> None:
    """Create a CA: its key (ca.key, 0600), its self-signed root certificate and an empty revocation list."""
    from patronus.agent import ca as ca_mod
    from patronus.core import identity as ident

    try:
        ca = ca_mod.init_ca(directory, org, prefix or [], days, _now())
    except (ConfigError, OSError) as exc:
        raise _ca_fail(exc) from None
    typer.echo(f"CA of {ca.root.org_name} in {directory}: root key sha256:{ca.root.org_fingerprint.hex()}")
    typer.echo(f"root certificate {directory / ca_mod.ROOT_FILE} (fingerprint sha256:"
               f"{ident.fingerprint(ca.root).hex()}); give it to every site")


@ca_app.command("sign-site")
def ca_sign_site(
    ca: CaDirOpt,
    site_id: Annotated[int, typer.Option("--site-id", help="The site's id (its site file's site.id, 1-4000).")],
    name: Annotated[str, typer.Option("--name", help="The site's name (its site file's site.name).")],
    wg_public_key: Annotated[str, typer.Option("--wg-public-key", help="The site's WireGuard public key.")],
    signing_public_key: Annotated[str, typer.Option("--signing-public-key", help="The site's Ed25519 public key "
                                                                                 "(`patronus keys signing`).")],
    out: Annotated[Path, typer.Option("--out", help="Write the certificate to this new file.")],
    prefix: Annotated[list[str] | None, typer.Option("--prefix", help="A prefix the site may announce "
                                                                      "(repeat).")] = None,
    days: Annotated[int, typer.Option(help="Validity, in days.")] = 365,
) -> None:
    """Sign a site's certificate: its id, name, keys and the prefixes it may announce."""
    from patronus.agent import ca as ca_mod

    try:
        cert = ca_mod.sign_site(ca, site_id=site_id, name=name, wg_public_key=wg_public_key,
                                signing_public_key=signing_public_key, prefixes=prefix or [], days=days, out=out,
                                now=_now())
    except (ConfigError, OSError) as exc:
        raise _ca_fail(exc) from None
    typer.echo(f"signed {cert.site_name} (id {cert.site_id}) serial {cert.serial:032x}, valid until "
               f"{ca_mod.describe(cert, _now())['valid'].split(' .. ')[1]}: {out}")


@ca_app.command("revoke")
def ca_revoke(
    ca: CaDirOpt,
    serial: Annotated[str, typer.Option("--serial", help="The certificate's serial (hexadecimal, as `ca show` "
                                                         "prints it).")],
    force: Annotated[bool, typer.Option("--force", help="Revoke a serial this CA has no record of issuing.")] = False,
) -> None:
    """Revoke a certificate: sign the next revocation list (revocations.crl) with its serial added."""
    from patronus.agent import ca as ca_mod

    try:
        rl, changed = ca_mod.revoke(ca, serial, force=force, now=_now())
    except (ConfigError, OSError) as exc:
        raise _ca_fail(exc) from None
    if not changed:
        typer.echo(f"already revoked (revocation list {rl.sequence}); nothing written")
        return
    typer.echo(f"revocation list {rl.sequence} ({len(rl.serials)} serial(s)) written to "
               f"{ca / ca_mod.REVOCATIONS_FILE}; spread it to the sites")


@ca_app.command("show")
def ca_show(
    file: Annotated[Path, typer.Argument(help="A certificate or revocation list.")],
    ca: Annotated[Path | None, typer.Option("--ca", help="Also verify it against this CA (exit 1 if it does "
                                                         "not verify).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print a certificate or revocation list in readable form (fields, validity, fingerprint)."""
    from patronus.agent import ca as ca_mod

    now = _now()
    try:
        data, obj = ca_mod.read_object(file)
        fields = ca_mod.describe(obj, now)
        if ca is not None:
            bad = ca_mod.verdict(data, obj, ca_mod.load_ca(ca), now)
            fields["verified"] = f"no: {bad}" if bad else f"yes, against {ca}"
    except (ConfigError, OSError) as exc:
        raise _ca_fail(exc) from None
    if json_out:
        typer.echo(json.dumps(fields))
    else:
        width = max(map(len, fields))
        for k, v in fields.items():
            typer.echo(f"{k.replace('_', ' '):<{width}}  {v}")
    if ca is not None and fields["verified"].startswith("no"):
        raise typer.Exit(1)
