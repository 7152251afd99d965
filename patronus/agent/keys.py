"""WireGuard keys: X25519 key pairs in WireGuard's text form, and the agent's private key file; and the Ed25519
signing keys of the mesh's identities (patronus/core/identity.py: a site's announcement key, a CA's root key).

Decisions:

* Keys are generated with `secrets` and derived with `cryptography` (imported lazily, so `check_key` works
  without it; no `wg` subprocess), in exactly the form `wg genkey` / `wg pubkey` use: standard base64 of 32
  bytes, 44 characters with one `=`. Generated private keys are clamped the way `wg genkey` clamps them, so a
  key written by us and one written by `wg` are indistinguishable.
* `check_key` returns the *canonical* encoding: base64 has several spellings of the same 32 bytes (the two
  unused bits of the last character), and comparing keys as text must not depend on which one a user typed.
* The key file is created without ever being visible half-written: the key goes to a fresh temporary file
  (O_CREAT|O_EXCL, mode 0600) in the same directory, is fsynced, then hard-linked to its final name. `link`
  refuses to replace an existing file, so two agents racing to create the same key file end up sharing the
  first key instead of one silently overwriting the other. (Filesystems without hard links fall back to
  `rename`.)
* An existing key file readable or writable by group/other is refused rather than "fixed": a key that may have
  leaked must be replaced by a human, not silently re-protected.
* Ed25519 signing keys are stored as PEM PKCS#8 (`openssl pkey` reads them), created and read the same way as
  WireGuard keys (0600, atomic, never overwritten). Unlike a bare base64 line, PEM names its algorithm, so a
  WireGuard key file given where a signing key is expected (or the reverse) is refused, not misused. Signing
  public keys are shown as base64 of their 32 raw bytes, like WireGuard public keys.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

from patronus.core.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "KEY_LEN",
    "check_key",
    "check_signing_public_key",
    "create_private_file",
    "generate_private_key",
    "key_bytes",
    "key_text",
    "load_or_create_private_key",
    "load_signing_key",
    "public_key",
    "read_private_file",
    "write_private_key",
    "write_signing_key",
]

KEY_LEN: Final = 32
"""Bytes in a WireGuard (Curve25519) key."""

_B64_LEN: Final = 44
_ALLOWED_FILE_MODES: Final = (0o600, 0o400)


def _clamp(raw: bytes) -> bytes:
    """Curve25519 clamping, as `wg genkey` applies it."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def _encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _decode(text: str, field: str, what: str = "WireGuard key") -> bytes:
    if len(text) != _B64_LEN:
        raise ConfigError(f"expected a base64 {what} of {_B64_LEN} characters, got {len(text)}", field)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ConfigError(f"expected a base64 {what}, got characters outside base64", field) from None
    if len(raw) != KEY_LEN:
        raise ConfigError(f"expected base64 of {KEY_LEN} bytes, got {len(raw)} bytes", field)
    return raw


def check_key(text: object, field: str) -> str:
    """Validate a WireGuard key (private, public or preshared) and return its canonical base64 form.

    Surrounding whitespace (such as the newline `wg genkey` prints) is ignored. Anything that is not base64 of
    exactly 32 bytes raises `ConfigError` naming `field`.
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected a base64 WireGuard key (a string), got {type(text).__name__}", field)
    return _encode(_decode(text.strip(), field))


def generate_private_key() -> str:
    """A new random private key, base64 (like `wg genkey`)."""
    return _encode(_clamp(secrets.token_bytes(KEY_LEN)))


def public_key(private_b64: str) -> str:
    """The public key of a base64 private key (like `wg pubkey`). Raises `ConfigError` on a malformed key."""
    # Imported here so that validating keys (`check_key`, used by config loading) needs no `cryptography`.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = _decode(check_key(private_b64, "private_key"), "private_key")
    # X25519 clamps the scalar itself, so unclamped private keys give the same result as `wg pubkey`.
    pub = X25519PrivateKey.from_private_bytes(raw).public_key()
    return _encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private_dirs(directory: Path) -> None:
    """Create `directory` and any missing parents with mode 0700 (existing directories are left alone)."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for m in reversed(missing):
        try:
            os.mkdir(m, 0o700)
        except FileExistsError:
            continue
        os.chmod(m, 0o700)  # the umask may have removed bits we asked for; make it exactly 0700


def _create_key_file(path: Path, key: str) -> bool:
    """Atomically create `path` holding `key` (mode 0600). False if the file already exists (left untouched)."""
    return create_private_file(path, (key + "\n").encode("ascii"))


def create_private_file(path: Path, data: bytes) -> bool:
    """Atomically create `path` holding `data` (mode 0600, missing parents 0700), never visible half-written
    or to group/other. False if the file already exists (it is left untouched)."""
    _make_private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            if path.exists() or path.is_symlink():
                return False
            os.rename(tmp, path)  # no hard links on this filesystem; the check above narrows the race
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def read_private_file(path: Path, field: str | None = None, limit: int = 4096) -> bytes:
    """The bytes of a private key file (at most `limit`), refusing a file that is not regular or whose mode lets
    group or other in (ConfigError naming `field`, the path by default; a message names the path unless it is
    the field)."""
    where = f" {path}" if field else ""
    field = field or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"cannot open private key file{where}: {e.strerror}", field) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"private key file{where} is not a regular file", field)
        mode = stat.S_IMODE(st.st_mode)
        if mode not in _ALLOWED_FILE_MODES:
            raise ConfigError(
                f"private key file{where} has mode {mode:04o}; it must be 0600 or 0400 (not accessible to group "
                "or other). If it may have leaked, replace the key; otherwise `chmod 600` it",
                field,
            )
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> str:
    field = str(path)
    data = read_private_file(path)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError("private key file is not ASCII text", field) from None
    try:
        return check_key(text, field)
    except ConfigError as e:
        raise ConfigError(f"not a WireGuard private key: {e.errors[0][1]}", field) from None


def write_private_key(path: Path, private_b64: str) -> None:
    """Create `path` (mode 0600, parents 0700) holding the key; never overwrites (ConfigError if it exists)."""
    key = check_key(private_b64, "private_key")
    if not _create_key_file(path, key):
        raise ConfigError("file exists; refusing to overwrite a key file", str(path))


def load_or_create_private_key(path: Path) -> str:
    """The private key stored at `path`, creating the file with a new key if it does not exist.

    An existing file must hold one valid key and have mode 0600 or 0400, else `ConfigError` naming the path.
    """
    if not (path.exists() or path.is_symlink()):
        # False means someone else created it between our check and our link: theirs wins, and we use it.
        _create_key_file(path, generate_private_key())
    return _read_key_file(path)


def load_or_create_token(path: Path) -> str:
    """The API token in `path` (16 characters or more), or a new one written there (0600)."""
    try:
        tok = path.read_text().strip()
        if len(tok) >= 16:
            return tok
    except OSError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tok = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(tok + "\n")
    os.replace(tmp, path)
    return tok


# --- Ed25519 signing keys ------------------------------------------------------------------------------

_PEM_LIMIT: Final = 1024


def check_signing_public_key(text: object, field: str) -> bytes:
    """The 32 raw bytes of an Ed25519 public key written as base64 (as `key_text` writes it)."""
    if not isinstance(text, str):
        raise ConfigError(f"expected a base64 Ed25519 public key (a string), got {type(text).__name__}", field)
    return _decode(text.strip(), field, "Ed25519 public key")


def key_text(raw: bytes) -> str:
    """A raw 32-byte key (WireGuard or Ed25519 public key) in its text form: standard base64."""
    return _encode(raw)


def key_bytes(text: str, field: str = "key") -> bytes:
    """The 32 raw bytes of a key in text form (ConfigError naming `field` if it is not one)."""
    return _decode(text.strip(), field)


def write_signing_key(path: Path) -> bytes:
    """Create `path` (mode 0600, never overwriting: ConfigError if it exists) with a new Ed25519 private key in
    PEM PKCS#8; return the raw public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if not create_private_file(path, pem):
        raise ConfigError("file exists; refusing to overwrite a key file", str(path))
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_signing_key(path: Path, field: str | None = None) -> Ed25519PrivateKey:
    """The Ed25519 private key in `path` (PEM PKCS#8, unencrypted, mode 0600 or 0400). ConfigError naming
    `field` (the path by default) otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = read_private_file(path, field, _PEM_LIMIT + 1)
    where = f"{path}: " if field else ""
    if len(data) > _PEM_LIMIT:
        raise ConfigError(f"{where}longer than any Ed25519 private key file ({_PEM_LIMIT} bytes)", field or str(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{where}not an unencrypted PEM private key", field or str(path)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{where}not an Ed25519 key (a {type(key).__name__})", field or str(path))
    return key
