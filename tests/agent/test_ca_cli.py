"""`patronus ca init | sign-site | revoke | show` and `patronus keys signing` (patronus/agent/ca.py): the files
they write verify with the core (patronus/core/identity.py); bad input exits 2 naming the option and writes
nothing; private keys are 0600."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from patronus.agent import ca as ca_mod
from patronus.agent import keys as keys_mod
from patronus.cli import app
from patronus.core import identity as ident

pytestmark = pytest.mark.unit

WG = base64.b64encode(bytes(range(1, 33))).decode()


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def listing(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    res = run("ca", "init", "--org", "acme", "--dir", str(d), "--prefix", "10.0.0.0/8", "--prefix", "fd00::/8",
              "--days", "100")
    assert res.exit_code == 0, res.output
    return d


@pytest.fixture
def signing_pub(tmp_path: Path) -> str:
    res = run("keys", "signing", "--private-key-file", str(tmp_path / "site" / "hq.sign"), "--json")
    assert res.exit_code == 0, res.output
    return str(json.loads(res.output)["signing_public_key"])


def sign(ca_dir: Path, pub: str, out: Path, *extra: str) -> Result:
    return run("ca", "sign-site", "--ca", str(ca_dir), "--site-id", "3", "--name", "hq", "--wg-public-key", WG,
               "--signing-public-key", pub, "--prefix", "10.1.0.0/16", "--prefix", "fd00:1::/48", "--days", "30",
               "--out", str(out), *extra)


def test_init_writes_a_private_key_a_root_and_an_empty_list(ca_dir: Path) -> None:
    assert listing(ca_dir) >= {"ca.key", "root.crt", "revocations.crl", "issued.tsv"}
    assert mode(ca_dir / "ca.key") == 0o600 and mode(ca_dir) == 0o700
    assert (ca_dir / "ca.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    root = ident.verify_root((ca_dir / "root.crt").read_bytes())
    assert root.is_ca and root.org_name == "acme"
    assert [str(p) for p in root.prefixes] == ["10.0.0.0/8", "fd00::/8"]
    now = int(time.time())
    assert root.valid_at(now) and 99 * 86400 < root.not_after - now <= 100 * 86400
    rl = ident.verify_revocations((ca_dir / "revocations.crl").read_bytes(), root)
    assert rl.sequence == 1 and rl.serials == ()
    key = keys_mod.load_signing_key(ca_dir / "ca.key")
    assert ident.public_key_bytes(key) == root.signing_key


def test_init_defaults_to_every_prefix_and_refuses_an_existing_ca(ca_dir: Path, tmp_path: Path) -> None:
    res = run("ca", "init", "--org", "other", "--dir", str(tmp_path / "open"))
    assert res.exit_code == 0, res.output
    root = ident.verify_root((tmp_path / "open" / "root.crt").read_bytes())
    assert [str(p) for p in root.prefixes] == ["0.0.0.0/0", "::/0"]
    before = (ca_dir / "ca.key").read_bytes(), (ca_dir / "root.crt").read_bytes()
    again = run("ca", "init", "--org", "acme", "--dir", str(ca_dir))
    assert again.exit_code == 2 and "--dir" in again.output and "refusing to overwrite" in again.output
    assert ((ca_dir / "ca.key").read_bytes(), (ca_dir / "root.crt").read_bytes()) == before


@pytest.mark.parametrize(("args", "option"), [
    (["--org", "Acme Corp"], "--org"),
    (["--org", "acme", "--prefix", "10.0.0.1/8"], "--prefix"),
    (["--org", "acme", "--prefix", "banana"], "--prefix"),
    (["--org", "acme", "--days", "0"], "--days"),
    (["--org", "acme", "--days", "-3"], "--days"),
])
def test_init_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], option: str) -> None:
    d = tmp_path / "ca"
    res = run("ca", "init", "--dir", str(d), *args)
    assert res.exit_code == 2, res.output
    assert f"{option}:" in res.output
    assert not d.exists()


def test_keys_signing_writes_a_0600_key_and_refuses_to_overwrite(tmp_path: Path, signing_pub: str) -> None:
    path = tmp_path / "site" / "hq.sign"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    key = keys_mod.load_signing_key(path)
    assert keys_mod.key_text(ident.public_key_bytes(key)) == signing_pub
    before = path.read_bytes()
    again = run("keys", "signing", "--private-key-file", str(path))
    assert again.exit_code == 2 and "--private-key-file" in again.output and "refusing to overwrite" in again.output
    assert path.read_bytes() == before


def test_sign_show_and_verify(ca_dir: Path, signing_pub: str, tmp_path: Path) -> None:
    out = tmp_path / "hq.crt"
    res = sign(ca_dir, signing_pub, out)
    assert res.exit_code == 0, res.output
    root = ident.verify_root((ca_dir / "root.crt").read_bytes())
    rl = ident.verify_revocations((ca_dir / "revocations.crl").read_bytes(), root)
    now = int(time.time())
    cert = ident.verify(out.read_bytes(), root, now, rl)
    assert (cert.site_id, cert.site_name) == (3, "hq")
    assert keys_mod.key_text(cert.wg_public_key) == WG and keys_mod.key_text(cert.signing_key) == signing_pub
    assert [str(p) for p in cert.prefixes] == ["10.1.0.0/16", "fd00:1::/48"]
    assert cert.not_before <= now - ca_mod.BACKDATE_S + 5 and 29 * 86400 < cert.not_after - now <= 30 * 86400
    assert f"{cert.serial:032x}" in (ca_dir / "issued.tsv").read_text()

    shown = run("ca", "show", str(out), "--ca", str(ca_dir))
    assert shown.exit_code == 0, shown.output
    for text in ("site certificate", "hq (id 3)", WG, signing_pub, "10.1.0.0/16, fd00:1::/48", "valid now",
                 f"{cert.serial:032x}", f"sha256:{ident.fingerprint(cert).hex()}", "verified", "yes"):
        assert text in shown.output
    doc = json.loads(run("ca", "show", str(out), "--json").output)
    assert doc["serial"] == f"{cert.serial:032x}" and doc["kind"] == "site certificate"
    for f in ("root.crt", "revocations.crl"):
        res = run("ca", "show", str(ca_dir / f), "--ca", str(ca_dir))
        assert res.exit_code == 0 and "yes, against" in res.output, res.output


def test_revoke_signs_the_next_list(ca_dir: Path, signing_pub: str, tmp_path: Path) -> None:
    out = tmp_path / "hq.crt"
    assert sign(ca_dir, signing_pub, out).exit_code == 0
    serial = f"{ident.decode(out.read_bytes()).serial:032x}"
    res = run("ca", "revoke", "--ca", str(ca_dir), "--serial", serial)
    assert res.exit_code == 0, res.output
    root = ident.verify_root((ca_dir / "root.crt").read_bytes())
    first = ident.sign_revocations(keys_mod.load_signing_key(ca_dir / "ca.key"), root, sequence=1, issued_at=0,
                                   serials=())
    rl = ident.verify_revocations((ca_dir / "revocations.crl").read_bytes(), root, first)   # newer than 1
    assert rl.sequence == 2 and rl.serials == (int(serial, 16),)
    with pytest.raises(ident.IdentityError) as info:
        ident.verify(out.read_bytes(), root, int(time.time()), rl)
    assert info.value.reason == "revoked"
    shown = run("ca", "show", str(out), "--ca", str(ca_dir))
    assert shown.exit_code == 1 and "no: revoked" in shown.output

    same = run("ca", "revoke", "--ca", str(ca_dir), "--serial", "0x" + serial.lstrip("0").upper())
    assert same.exit_code == 0 and "already revoked" in same.output
    assert ident.decode_revocations((ca_dir / "revocations.crl").read_bytes()).sequence == 2


def test_revoke_refuses_unknown_and_bad_serials(ca_dir: Path) -> None:
    before = (ca_dir / "revocations.crl").read_bytes()
    for serial, why in (("abc", "not issued by this CA"), ("xyz", "hexadecimal"), ("1" * 33, "hexadecimal")):
        res = run("ca", "revoke", "--ca", str(ca_dir), "--serial", serial)
        assert res.exit_code == 2 and "--serial:" in res.output and why in res.output, res.output
    root_serial = f"{ident.decode((ca_dir / 'root.crt').read_bytes()).serial:x}"
    res = run("ca", "revoke", "--ca", str(ca_dir), "--serial", root_serial, "--force")
    assert res.exit_code == 2 and "root certificate's serial" in res.output
    assert (ca_dir / "revocations.crl").read_bytes() == before
    forced = run("ca", "revoke", "--ca", str(ca_dir), "--serial", "abc", "--force")
    assert forced.exit_code == 0, forced.output
    assert ident.decode_revocations((ca_dir / "revocations.crl").read_bytes()).serials == (0xABC,)


@pytest.mark.parametrize(("change", "option"), [
    ({"--site-id": "0"}, "--site-id"),
    ({"--site-id": "4001"}, "--site-id"),
    ({"--name": "HQ"}, "--name"),
    ({"--wg-public-key": "not-a-key"}, "--wg-public-key"),
    ({"--wg-public-key": base64.b64encode(bytes(16)).decode()}, "--wg-public-key"),
    ({"--signing-public-key": "#" * 44}, "--signing-public-key"),
    ({"--prefix": "10.1.0.1/16"}, "--prefix"),
    ({"--prefix": "192.168.0.0/16"}, "--prefix"),                   # outside the organisation's
    ({"--days": "0"}, "--days"),
    ({"--days": "-1"}, "--days"),
    ({"--days": "365"}, "--days"),                                  # outlives the root (100 days)
    ({"--ca": "/nonexistent/ca"}, "--ca"),
])
def test_sign_bad_input_exits_2_names_the_option_and_writes_nothing(ca_dir: Path, signing_pub: str, tmp_path: Path,
                                                                    change: dict[str, str], option: str) -> None:
    args = {"--ca": str(ca_dir), "--site-id": "3", "--name": "hq", "--wg-public-key": WG,
            "--signing-public-key": signing_pub, "--prefix": "10.1.0.0/16", "--days": "30",
            "--out": str(tmp_path / "hq.crt")} | change
    before = listing(tmp_path)
    issued = (ca_dir / "issued.tsv").read_text()
    res = run("ca", "sign-site", *[x for kv in args.items() for x in kv])
    assert res.exit_code == 2, res.output
    assert f"{option}:" in res.output
    assert listing(tmp_path) == before and (ca_dir / "issued.tsv").read_text() == issued


def test_sign_lists_every_bad_option_at_once(ca_dir: Path, tmp_path: Path) -> None:
    res = run("ca", "sign-site", "--ca", str(ca_dir), "--site-id", "0", "--name", "HQ", "--wg-public-key", "x",
              "--signing-public-key", "y", "--prefix", "nope", "--days", "0", "--out", str(tmp_path / "x.crt"))
    assert res.exit_code == 2
    for option in ("--site-id", "--name", "--wg-public-key", "--signing-public-key", "--prefix", "--days"):
        assert f"{option}:" in res.output


def test_sign_refuses_to_overwrite_out(ca_dir: Path, signing_pub: str, tmp_path: Path) -> None:
    out = tmp_path / "hq.crt"
    out.write_bytes(b"precious")
    res = sign(ca_dir, signing_pub, out)
    assert res.exit_code == 2 and "--out:" in res.output
    assert out.read_bytes() == b"precious"


def test_a_ca_key_open_to_group_or_other_is_refused(ca_dir: Path, signing_pub: str, tmp_path: Path) -> None:
    os.chmod(ca_dir / "ca.key", 0o640)
    res = sign(ca_dir, signing_pub, tmp_path / "hq.crt")
    assert res.exit_code == 2 and "--ca:" in res.output and "mode 0640" in res.output
    assert not (tmp_path / "hq.crt").exists()
    res = run("ca", "revoke", "--ca", str(ca_dir), "--serial", "abc", "--force")
    assert res.exit_code == 2 and "--ca:" in res.output and "mode 0640" in res.output


def test_a_ca_with_a_foreign_key_or_damaged_root_is_refused(ca_dir: Path, signing_pub: str, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run("ca", "init", "--org", "acme", "--dir", str(other)).exit_code == 0
    (ca_dir / "ca.key").unlink()
    os.link(other / "ca.key", ca_dir / "ca.key")
    res = sign(ca_dir, signing_pub, tmp_path / "hq.crt")
    assert res.exit_code == 2 and "--ca:" in res.output
    root = bytearray((other / "root.crt").read_bytes())
    root[-1] ^= 1
    (other / "root.crt").write_bytes(bytes(root))
    res = sign(other, signing_pub, tmp_path / "hq.crt")
    assert res.exit_code == 2 and "--ca:" in res.output and "bad_signature" in res.output
    assert not (tmp_path / "hq.crt").exists()


def test_show_refuses_what_is_not_ours(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"PTID\x07\x01" + bytes(100))
    res = run("ca", "show", str(junk))
    assert res.exit_code == 2 and "unsupported_version" in res.output
    res = run("ca", "show", str(tmp_path / "missing"))
    assert res.exit_code == 2 and "FILE:" in res.output
    big = tmp_path / "big"
    big.write_bytes(bytes(100_000))
    assert run("ca", "show", str(big)).exit_code == 2


def test_show_of_another_organisations_certificate_fails_verification(ca_dir: Path, signing_pub: str,
                                                                      tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run("ca", "init", "--org", "acme", "--dir", str(other)).exit_code == 0
    assert sign(other, signing_pub, tmp_path / "hq.crt").exit_code == 0
    res = run("ca", "show", str(tmp_path / "hq.crt"), "--ca", str(ca_dir))
    assert res.exit_code == 1 and "wrong_organisation" in res.output
    res = run("ca", "show", str(other / "root.crt"), "--ca", str(ca_dir))
    assert res.exit_code == 1 and "another root" in res.output


def test_init_lists_every_bad_option_at_once(tmp_path: Path) -> None:
    res = run("ca", "init", "--org", "Acme", "--dir", str(tmp_path / "ca"), "--prefix", "10.0.0.1/8", "--days", "0")
    assert res.exit_code == 2
    for option in ("--org", "--prefix", "--days"):
        assert f"{option}:" in res.output
    assert not (tmp_path / "ca").exists()
