"""The organisation's certificate authority on disk: `patronus ca init | sign-site | revoke | show`.

The formats, the checks and the signing are the core's (patronus/core/identity.py); this module only reads
and writes files, reads the clock and draws random serials. A CA directory holds:

  ca.key            the root's Ed25519 private key, PEM PKCS#8, mode 0600 (created atomically, never
                    readable by others, never overwritten; a key file with group/other bits is refused)
  root.crt          the self-signed root certificate: what every site is given as its trust anchor
  revocations.crl   the current signed revocation list (sequence 1, empty, at `init`; each `revoke` signs
                    the next sequence and replaces this file atomically)
  issued.tsv        one line per signed certificate: serial, site id, site name, not_before, not_after,
                    fingerprint (so that `revoke` can refuse a mistyped serial)
  .lock             taken (flock) by `sign-site` and `revoke`, so that two revocations never sign two
                    different lists with the same sequence

Decisions:

* Every check runs before anything is written: a bad option is a `ConfigError` naming the option (`--prefix:
  ...`) and leaves no file behind. `init` writes the key first (its exclusive creation is the claim on the
  directory) and removes what it wrote if a later step fails.
* Certificates and lists are written whole or not at all (a temporary file, fsynced, then linked or renamed
  into place); a certificate's `--out` is never overwritten.
* `not_before` is backdated by `BACKDATE_S` (5 minutes, within the root's validity) so that a site whose
  clock is a little behind the CA's does not see a new certificate as not yet valid.
* The site's own signing key is generated on the site (`patronus keys signing --private-key-file FILE`),
  and only its public key is given to `ca sign-site`: a private key never travels to or from the CA.
* Nothing reads these files yet: the agent does not use certificates (later parts of issue 14).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from patronus.agent import keys as keys_mod
from patronus.core import identity as ident
from patronus.core.errors import ConfigError, show
from patronus.core.validate import Errors, integer
from patronus.core.validate import name as valid_name

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["BACKDATE_S", "CaDir", "describe", "init_ca", "load_ca", "parse_serial", "read_object", "revoke",
           "sign_site", "verdict"]

KEY_FILE: Final = "ca.key"
ROOT_FILE: Final = "root.crt"
REVOCATIONS_FILE: Final = "revocations.crl"
ISSUED_FILE: Final = "issued.tsv"
LOCK_FILE: Final = ".lock"
BACKDATE_S: Final = 300
DAY_S: Final = 86_400
MAX_DAYS: Final = 36_500

# which option of `patronus ca` sets each field of the core's signing helpers
_OPTION: Final = {"org_name": "--org", "site_id": "--site-id", "site_name": "--name", "signing_key":
                  "--signing-public-key", "wg_public_key": "--wg-public-key", "prefixes": "--prefix",
                  "not_after": "--days", "ca_key": "--ca", "root": "--ca", "serials": "--serial"}


def _as_options(exc: ConfigError) -> ConfigError:
    return ConfigError([(_OPTION.get(f, f), r) for f, r in exc.errors])


@dataclass(frozen=True)
class CaDir:
    """A loaded CA: its directory, key, root certificate and current revocation list."""

    path: Path
    key: Ed25519PrivateKey
    root: ident.Certificate
    revocations: ident.RevocationList


# --- files ---------------------------------------------------------------------------------------------

def _write_file(path: Path, data: bytes, *, overwrite: bool, mode: int = 0o644) -> None:
    """Write `path` whole or not at all; without `overwrite`, an existing file is a ConfigError."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ConfigError(f"{path} exists; refusing to overwrite it", "--out") from None
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path, limit: int, field: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", field) from None
    if len(data) > limit:
        raise ConfigError(f"{path} is larger than any certificate or revocation list ({limit} bytes)", field)
    return data


@contextlib.contextmanager
def _locked(ca_dir: Path) -> Iterator[None]:
    try:
        fd = os.open(ca_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot lock the CA directory {ca_dir}: {exc.strerror}", "--ca") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_ca(ca_dir: Path) -> CaDir:
    """The CA in `ca_dir`, every part checked (its key file's mode, the root's self-signature, that the key
    is the root's, the revocation list's signature). ConfigError naming `--ca` otherwise."""
    if not ca_dir.is_dir():
        raise ConfigError(f"{ca_dir} is not a directory (create a CA with `patronus ca init`)", "--ca")
    key = keys_mod.load_signing_key(ca_dir / KEY_FILE, "--ca")
    try:
        root = ident.verify_root(_read(ca_dir / ROOT_FILE, ident.MAX_CERT_BYTES, "--ca"))
        rl = ident.verify_revocations(_read(ca_dir / REVOCATIONS_FILE, ident.MAX_REVOCATIONS_BYTES, "--ca"), root)
    except ident.IdentityError as exc:
        raise ConfigError(f"the CA's files in {ca_dir} do not verify: {exc}", "--ca") from None
    if ident.public_key_bytes(key) != root.signing_key:
        raise ConfigError(f"{ca_dir / KEY_FILE} is not the key of {ca_dir / ROOT_FILE}", "--ca")
    return CaDir(ca_dir, key, root, rl)


# --- options -------------------------------------------------------------------------------------------

def _prefixes(texts: Sequence[str], errs: Errors) -> list[ident.IPNetwork]:
    out = []
    for t in texts:
        try:
            if len(t) > 64:
                raise ValueError("too long")
            out.append(ipaddress.ip_network(t.strip(), strict=True))
        except ValueError as exc:
            errs.add("--prefix", f"expected a prefix like 10.1.0.0/16 with no host bits set, got {show(t)} ({exc})")
    if len(set(out)) > ident.MAX_PREFIXES:
        errs.add("--prefix", f"at most {ident.MAX_PREFIXES} prefixes, got {len(set(out))}")
    return out


def _days(days: int, errs: Errors) -> int:
    if not 1 <= days <= MAX_DAYS:
        errs.add("--days", f"expected a number of days in 1..{MAX_DAYS}, got {days}")
    return days


def parse_serial(text: str) -> int:
    """A serial as `ca show` prints it: hexadecimal, 1-32 digits, an optional 0x."""
    t = text.strip().lower().removeprefix("0x")
    if not 1 <= len(t) <= 32 or any(c not in "0123456789abcdef" for c in t):
        raise ConfigError(f"expected a serial of 1-32 hexadecimal digits (as `ca show` prints it), got {show(text)}",
                          "--serial")
    return int(t, 16)


# --- commands ------------------------------------------------------------------------------------------

def init_ca(directory: Path, org: str, prefixes: Sequence[str], days: int, now: int) -> CaDir:
    """Create a CA in `directory` (created 0700 if missing): a new key, the self-signed root (valid from now
    for `days`; sites may hold prefixes inside `prefixes`, all of IPv4 and IPv6 when none are given) and an
    empty revocation list. Refuses a directory that already holds a CA."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    errs = Errors()
    if (why := ident.org_name_problem(org)) is not None:
        errs.add("--org", why)
    nets = _prefixes(prefixes, errs) if prefixes else [ipaddress.ip_network("0.0.0.0/0"),
                                                       ipaddress.ip_network("::/0")]
    _days(days, errs)
    errs.check()
    key = Ed25519PrivateKey.generate()
    try:
        root = ident.self_sign_root(key, org, nets, not_before=max(0, now - BACKDATE_S), not_after=now + days * DAY_S,
                                    serial=secrets.randbits(128))
        rl = ident.sign_revocations(key, root, sequence=1, issued_at=now, serials=())
    except ConfigError as exc:
        raise _as_options(exc) from None
    for name in (KEY_FILE, ROOT_FILE, REVOCATIONS_FILE):
        if (directory / name).exists():
            raise ConfigError(f"{directory / name} exists: {directory} already holds a CA; refusing to overwrite",
                              "--dir")
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if not keys_mod.create_private_file(directory / KEY_FILE, pem):
        raise ConfigError(f"{directory / KEY_FILE} exists; refusing to overwrite a key file", "--dir")
    try:
        _write_file(directory / ROOT_FILE, ident.encode(root), overwrite=True)
        _write_file(directory / REVOCATIONS_FILE, ident.encode_revocations(rl), overwrite=True)
        (directory / ISSUED_FILE).touch(mode=0o644)
    except BaseException:
        for name in (ISSUED_FILE, REVOCATIONS_FILE, ROOT_FILE, KEY_FILE):
            (directory / name).unlink(missing_ok=True)
        raise
    return CaDir(directory, key, root, rl)


def sign_site(ca_dir: Path, *, site_id: int, name: str, wg_public_key: str, signing_public_key: str,
              prefixes: Sequence[str], days: int, out: Path, now: int) -> ident.Certificate:
    """Sign a site certificate with the CA in `ca_dir` and write it to `out` (never overwritten)."""
    errs = Errors()
    integer(site_id, "--site-id", errs, 1, ident.MAX_SITE_ID, "a site id")
    valid_name(name, "--name", errs, "site")
    wg = errs.attempt(keys_mod.check_key, wg_public_key, "--wg-public-key")
    sk = errs.attempt(keys_mod.check_signing_public_key, signing_public_key, "--signing-public-key")
    nets = _prefixes(prefixes, errs)
    _days(days, errs)
    ca = errs.attempt(load_ca, ca_dir)
    if out.exists() or out.is_symlink():
        errs.add("--out", f"{out} exists; refusing to overwrite it")
    elif not out.parent.is_dir():
        errs.add("--out", f"{out.parent} is not a directory")
    errs.check()
    assert ca is not None and wg is not None and sk is not None
    not_before = max(ca.root.not_before, now - BACKDATE_S)
    not_after = now + days * DAY_S
    if not_after > ca.root.not_after:
        left = (ca.root.not_after - now) // DAY_S
        raise ConfigError(f"{days} days would outlive the organisation's root (it expires in {left} days)", "--days")
    try:
        cert = ident.sign_site(ca.key, ca.root, site_id=site_id, site_name=name, signing_key=sk,
                               wg_public_key=keys_mod.key_bytes(wg), prefixes=nets, not_before=not_before,
                               not_after=not_after, serial=secrets.randbits(128))
    except ConfigError as exc:
        raise _as_options(exc) from None
    data = ident.encode(cert)
    with _locked(ca_dir):
        with (ca_dir / ISSUED_FILE).open("a") as log:     # logged first: a logged but unwritten cert is harmless
            log.write(f"{cert.serial:032x}\t{cert.site_id}\t{cert.site_name}\t{cert.not_before}\t{cert.not_after}"
                      f"\t{ident.fingerprint(cert).hex()}\n")
            log.flush()
            os.fsync(log.fileno())
        _write_file(out, data, overwrite=False)
    return cert


def _issued_serials(ca_dir: Path) -> set[int]:
    try:
        lines = (ca_dir / ISSUED_FILE).read_text().splitlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        with contextlib.suppress(ValueError):
            out.add(int(line.split("\t", 1)[0], 16))
    return out


def revoke(ca_dir: Path, serial_text: str, *, force: bool, now: int) -> tuple[ident.RevocationList, bool]:
    """Add a serial to the CA's revocation list and write the list signed with the next sequence.

    Returns (the list, whether it changed): a serial already revoked writes nothing. A serial the CA has no
    record of issuing is refused unless `force`."""
    serial = parse_serial(serial_text)
    load_ca(ca_dir)                                        # report a bad CA before taking its lock
    with _locked(ca_dir):
        ca = load_ca(ca_dir)                               # the list as it is under the lock
        if serial in ca.revocations:
            return ca.revocations, False
        if serial == ca.root.serial:
            raise ConfigError("that is the root certificate's serial; a root is replaced, not revoked", "--serial")
        if not force and serial not in _issued_serials(ca_dir):
            raise ConfigError(f"serial {serial:032x} was not issued by this CA (not in {ca_dir / ISSUED_FILE}); "
                              "--force revokes it anyway", "--serial")
        if len(ca.revocations.serials) >= ident.MAX_REVOKED:
            raise ConfigError(f"the revocation list is full ({ident.MAX_REVOKED} serials)", "--serial")
        try:
            rl = ident.sign_revocations(ca.key, ca.root, sequence=ca.revocations.sequence + 1, issued_at=now,
                                        serials=(*ca.revocations.serials, serial))
        except ConfigError as exc:
            raise _as_options(exc) from None
        _write_file(ca_dir / REVOCATIONS_FILE, ident.encode_revocations(rl), overwrite=True)
    return rl, True


# --- show ----------------------------------------------------------------------------------------------

def read_object(path: Path) -> tuple[bytes, ident.Certificate | ident.RevocationList]:
    """The raw bytes and the decoded certificate or revocation list in `path` (ConfigError naming FILE)."""
    data = _read(path, max(ident.MAX_CERT_BYTES, ident.MAX_REVOCATIONS_BYTES), "FILE")
    try:
        return data, ident.decode_any(data)
    except ident.IdentityError as exc:
        raise ConfigError(f"{path} is not a certificate or revocation list of ours: {exc}", "FILE") from None


def _when(t: int) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(obj: ident.Certificate | ident.RevocationList, now: int) -> dict[str, str]:
    """The fields of a certificate or revocation list, in readable form."""
    org = f"{obj.org_name} (root key sha256:{obj.org_fingerprint.hex()})"
    fp = f"sha256:{ident.fingerprint(obj).hex()}"
    if isinstance(obj, ident.RevocationList):
        return {"kind": "revocation list", "format_version": str(obj.version), "organisation": org,
                "sequence": str(obj.sequence), "issued_at": _when(obj.issued_at),
                "revoked": ", ".join(f"{s:032x}" for s in obj.serials) or "none", "fingerprint": fp}
    state = "valid now" if obj.valid_at(now) else "expired" if now >= obj.not_after else "not yet valid"
    out = {"kind": "root certificate (CA)" if obj.is_ca else "site certificate", "format_version": str(obj.version),
           "organisation": org}
    if not obj.is_ca:
        out |= {"site": f"{obj.site_name} (id {obj.site_id})",
                "wireguard_public_key": keys_mod.key_text(obj.wg_public_key)}
    return out | {"signing_public_key": keys_mod.key_text(obj.signing_key),
                  "prefixes": ", ".join(map(str, obj.prefixes)) or "none",
                  "valid": f"{_when(obj.not_before)} .. {_when(obj.not_after)} ({state})",
                  "serial": f"{obj.serial:032x}", "fingerprint": fp}


def verdict(data: bytes, obj: ident.Certificate | ident.RevocationList, ca: CaDir, now: int) -> str | None:
    """None if `data` verifies against the CA (with its current revocation list) at `now`, else the reason."""
    try:
        if isinstance(obj, ident.RevocationList):
            ident.verify_revocations(data, ca.root)
        elif obj.is_ca:
            if ident.verify_root(data) != ca.root:
                return "wrong_organisation: another root certificate"
        else:
            ident.verify(data, ca.root, now, ca.revocations)
    except ident.IdentityError as exc:
        return str(exc)
    return None
