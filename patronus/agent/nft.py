"""nftables through libnftables (ctypes), not the `nft` command.

Why a library call: a failover is one nftables transaction, and its latency is part of the failover
gap. Spawning `nft` costs a fork/exec and a fresh netlink socket (several ms); a libnftables context
kept open for the agent's life runs the same transaction in a fraction of a millisecond. libnftables'
Python binding is a Debian package (`python3-nftables`), not on PyPI, so the six C functions we need
are bound here. A command buffer given to `run` is one atomic transaction: it applies whole or not
at all, and a failure raises `NftError` with nft's own message.

The context acts in the network namespace the process is in when it is created.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading


class NftError(RuntimeError):
    """nftables refused a command; the message is nft's."""


_LIB: ctypes.CDLL | None = None
_LOCK = threading.Lock()


def _lib() -> ctypes.CDLL:
    global _LIB
    with _LOCK:
        if _LIB is None:
            name = ctypes.util.find_library("nftables") or "libnftables.so.1"
            try:
                lib = ctypes.CDLL(name)
            except OSError as exc:
                raise NftError(f"libnftables is not installed ({exc}); "
                               "install it with: apt-get install --no-install-recommends nftables") from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            _LIB = lib
        return _LIB


class Nft:
    """One libnftables context. Not thread-safe; the agent uses it from its event loop only."""

    def __init__(self) -> None:
        self._lib = _lib()
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)

    def run(self, commands: str) -> str:
        """Run `commands` (nft syntax, one transaction) and return nft's output."""
        if self._ctx is None:
            raise NftError("nftables context is closed")
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with code {rc}")
        return out

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
