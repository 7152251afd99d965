"""Unit tests of WireGuard keys and the private key file (patronus.agent.keys) and the `keys` CLI."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from patronus.agent import keys
from patronus.agent.cli_tools import keys_app
from patronus.agent.keys import (
    check_key,
    generate_private_key,
    load_or_create_private_key,
    public_key,
    write_private_key,
)
from patronus.core.errors import ConfigError

pytestmark = pytest.mark.unit

# RFC 7748 section 6.1 (X25519): Alice's private and public keys.
RFC_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# ------------------------------------------------------------------------------------------- generation


def test_generated_keys_have_wg_genkey_form_and_are_clamped() -> None:
    seen = set()
    for _ in range(50):
        key = generate_private_key()
        assert len(key) == 44 and key.endswith("=")
        raw = base64.b64decode(key, validate=True)
        assert len(raw) == 32
        assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40 == 0x40
        seen.add(key)
    assert len(seen) == 50


def test_public_key_matches_rfc7748_vector() -> None:
    assert public_key(b64(RFC_PRIV)) == b64(RFC_PUB)


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs `wg` (wireguard-tools) to compare against")
@pytest.mark.parametrize("kind", ["generated", "unclamped"])
def test_public_key_equals_wg_pubkey(kind: str) -> None:
    # `wg pubkey` clamps whatever it is given; an unclamped key must give the same answer here too.
    priv = generate_private_key() if kind == "generated" else b64(bytes(range(224, 256)))
    out = subprocess.run(["wg", "pubkey"], input=priv + "\n", capture_output=True, text=True, check=True, timeout=10)
    assert public_key(priv) == out.stdout.strip()


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs `wg` (wireguard-tools) to compare against")
def test_wg_genkey_output_is_accepted() -> None:
    out = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True, timeout=10).stdout
    assert check_key(out, "k") == out.strip()  # trailing newline ignored, already canonical


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "a string"),
        (b"x" * 44, "a string"),
        (42, "a string"),
        ("", "44 characters"),
        ("abc", "44 characters"),
        (b64(bytes(33)), "32 bytes, got 33"),  # 44 characters, no padding
        (b64(bytes(31)), "32 bytes, got 31"),  # 44 characters with '=='
        ("!" * 43 + "=", "outside base64"),
        ("A" * 44, "32 bytes, got 33"),
        ("é" * 43 + "=", "outside base64"),
    ],
)
def test_check_key_rejects_non_keys_naming_the_field(value: object, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_key(value, "peers.hq.public_key")
    assert exc.value.errors[0][0] == "peers.hq.public_key"
    assert reason in exc.value.errors[0][1]


def test_check_key_canonicalises_and_strips() -> None:
    key = generate_private_key()
    assert check_key(f"  {key}\n", "k") == key
    # The last character of a 32-byte key carries 2 unused bits: other spellings decode to the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    variant = key[:42] + alphabet[alphabet.index(key[42]) | 1] + "="
    assert variant != key
    assert base64.b64decode(variant) == base64.b64decode(key)
    assert check_key(variant, "k") == key


def test_public_key_rejects_invalid_private_key() -> None:
    with pytest.raises(ConfigError, match="private_key"):
        public_key("not a key")


# --------------------------------------------------------------------------------------------- key file


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_load_or_create_creates_0600_file_in_0700_dirs(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "a" / "b" / "private.key"
        key = load_or_create_private_key(path)
    finally:
        os.umask(old)
    assert check_key(key, "k") == key
    assert path.read_text() == key + "\n"
    assert mode(path) == 0o600
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["private.key"]  # no temp file left
    assert load_or_create_private_key(path) == key  # second call reads, never regenerates


def test_existing_parent_dir_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    load_or_create_private_key(tmp_path / "k")
    assert mode(tmp_path) == 0o755


@pytest.mark.parametrize("file_mode", [0o600, 0o400])
def test_existing_key_file_with_private_mode_is_used(tmp_path: Path, file_mode: int) -> None:
    path = tmp_path / "k"
    key = generate_private_key()
    path.write_text(key + "\n")
    path.chmod(file_mode)
    assert load_or_create_private_key(path) == key


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660, 0o700, 0o620])
def test_key_file_accessible_to_others_is_refused(tmp_path: Path, file_mode: int) -> None:
    path = tmp_path / "k"
    path.write_text(generate_private_key())
    path.chmod(file_mode)
    with pytest.raises(ConfigError) as exc:
        load_or_create_private_key(path)
    assert exc.value.errors[0][0] == str(path)
    assert f"{file_mode:04o}" in str(exc.value)
    assert mode(path) == file_mode  # not silently "fixed"


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"A" * 44, bytes(range(256)), base64.b64encode(bytes(16))])
def test_invalid_key_file_is_refused_naming_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as exc:
        load_or_create_private_key(path)
    assert exc.value.errors[0][0] == str(path)
    assert path.read_bytes() == content  # never replaced


def test_symlinked_or_non_regular_key_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_text(generate_private_key())
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=str(link)):
        load_or_create_private_key(link)
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="regular file"):
        load_or_create_private_key(d)


def test_crash_while_writing_leaves_no_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k"
    real_write = os.write

    def dying_write(fd: int, data: bytes) -> int:
        real_write(fd, data[:10])  # half a key reaches the temp file, then the "crash"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keys.os, "write", dying_write)
    with pytest.raises(OSError, match="No space"):
        load_or_create_private_key(path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # neither the key nor the temp file
    key = load_or_create_private_key(path)  # and the next start succeeds normally
    assert check_key(key, "k") == key


def test_concurrent_creator_wins_and_is_not_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k"
    theirs = generate_private_key()
    real_link = os.link

    def racing_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # another agent got there first
        os.write(fd, (theirs + "\n").encode())
        os.close(fd)
        real_link(src, dst)

    monkeypatch.setattr(keys.os, "link", racing_link)
    assert load_or_create_private_key(path) == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_write_private_key_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "k"
    first = generate_private_key()
    write_private_key(path, first)
    assert mode(path) == 0o600
    with pytest.raises(ConfigError, match="exists"):
        write_private_key(path, generate_private_key())
    assert load_or_create_private_key(path) == first
    with pytest.raises(ConfigError):
        write_private_key(tmp_path / "other", "bad key")
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(keys_app, name="keys")
    return app


def test_cli_generate_prints_a_matching_pair(cli: typer.Typer) -> None:
    res = CliRunner().invoke(cli, ["keys", "generate"])
    assert res.exit_code == 0, res.output
    lines = dict(line.split(": ", 1) for line in res.output.splitlines())
    assert set(lines) == {"private_key", "public_key"}
    assert public_key(lines["private_key"]) == lines["public_key"]


def test_cli_generate_json_and_key_file(cli: typer.Typer, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["keys", "generate", "--json"])
    assert res.exit_code == 0
    doc = json.loads(res.output)
    assert public_key(doc["private_key"]) == doc["public_key"]

    path = tmp_path / "keys" / "wg.key"
    res = CliRunner().invoke(cli, ["keys", "generate", "--json", "--private-key-file", str(path)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert "private_key" not in doc and doc["private_key_file"] == str(path)
    assert mode(path) == 0o600
    assert path.read_text().strip() not in res.output
    assert public_key(path.read_text()) == doc["public_key"]

    again = CliRunner().invoke(cli, ["keys", "generate", "--private-key-file", str(path)])
    assert again.exit_code == 2
    assert public_key(path.read_text()) == doc["public_key"]  # untouched


def test_cli_pubkey(cli: typer.Typer) -> None:
    priv = b64(RFC_PRIV)
    res = CliRunner().invoke(cli, ["keys", "pubkey"], input=priv + "\n")
    assert res.exit_code == 0
    assert res.output.strip() == b64(RFC_PUB)
    bad = CliRunner().invoke(cli, ["keys", "pubkey"], input="hello\n")
    assert bad.exit_code == 2
    assert "error" in bad.output and "44 characters" in bad.output
