"""Certificates and revocation lists against mutated bytes (patronus/core/identity.py): every input must give a
verified value or an `IdentityError` with one of the known reasons (anything else is a crash).

- identity_fuzz: crashes over N inputs (N = 100,000 here; the suite runs a few thousand through the same
  mutator, tests/unit/test_identity.py). Goal 0.
- details: inputs per outcome (reason), the slowest input, mutated inputs verified per second, and the rate of
  `verify` on an intact certificate (what a site pays per announcement's certificate).

The seeds are an organisation's root, site certificates (valid, revoked, expired, with a prefix outside the
root's) and its revocation list, plus another organisation's; each mutant goes through `verify` (a
certificate seed) or `verify_revocations` (a revocation list seed). `corpus()`, `mutants(seed, rng)` and
`outcome(check, data)` are what the test uses too.
"""

from __future__ import annotations

import ipaddress
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.common import best_rate, write
from patronus.core import identity as ident

N_INPUTS = 100_000
NOW = 1_800_000_000
DAY = 86_400


def _key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def _net(text: str) -> ident.IPNetwork:
    return ipaddress.ip_network(text)


def roots() -> tuple[Ed25519PrivateKey, Ed25519PrivateKey, ident.Certificate, ident.Certificate, ident.Certificate]:
    """The organisation's CA key, another organisation's, the root, the same key's earlier root with a wider
    prefix (what it signed is outside today's root), and the other organisation's root."""
    ca, other = _key(1), _key(2)
    root = ident.self_sign_root(ca, "acme", [_net("10.0.0.0/8"), _net("fd00::/8")], not_before=NOW - 100 * DAY,
                                not_after=NOW + 3650 * DAY, serial=1)
    wider = ident.self_sign_root(ca, "acme", [_net("10.0.0.0/8"), _net("172.16.0.0/12"), _net("fd00::/8")],
                                 not_before=NOW - 200 * DAY, not_after=NOW + 3650 * DAY, serial=3)
    other_root = ident.self_sign_root(other, "acme", [_net("0.0.0.0/0")], not_before=NOW - DAY,
                                      not_after=NOW + DAY, serial=2)
    return ca, other, root, wider, other_root


@dataclass(frozen=True)
class Corpus:
    root: ident.Certificate
    revoked: ident.RevocationList
    certificates: list[bytes]          # verified with `verify(data, root, NOW, revoked)`
    revocation_lists: list[bytes]      # verified with `verify_revocations(data, root, revoked)`

    def checks(self) -> list[tuple[Callable[[bytes], Any], bytes]]:
        """Each seed with the check its mutants go through."""
        def cert(data: bytes) -> Any:
            return ident.verify(data, self.root, NOW, self.revoked)

        def crl(data: bytes) -> Any:
            return ident.verify_revocations(data, self.root, self.revoked)

        return [(cert, c) for c in self.certificates] + [(crl, r) for r in self.revocation_lists]


def corpus() -> Corpus:
    """A deterministic organisation (keys from fixed seeds), its certificates and lists, and another one's.

    Each seed, intact, gives one outcome: ok, stale, revoked, expired, ... (the mutants give the rest)."""
    ca, other, root, wider, other_root = roots()

    def site(key: Ed25519PrivateKey, r: ident.Certificate, sid: int, prefixes: list[str], nb: int, na: int,
             serial: int) -> bytes:
        return ident.encode(ident.sign_site(key, r, site_id=sid, site_name=f"site-{sid}",
                                            signing_key=ident.public_key_bytes(_key(100 + sid)),
                                            wg_public_key=bytes([sid]) * 32, prefixes=[_net(p) for p in prefixes],
                                            not_before=nb, not_after=na, serial=serial))

    certs = [
        site(ca, root, 1, ["10.1.0.0/16", "fd00:1::/48"], NOW - DAY, NOW + 365 * DAY, 11),
        site(ca, root, 2, ["10.2.0.0/16"] + [f"10.3.{i}.0/24" for i in range(40)], NOW - DAY, NOW + DAY, 12),
        site(ca, root, 3, ["10.4.0.0/16"], NOW - DAY, NOW + DAY, 13),             # revoked
        site(ca, root, 4, ["10.5.0.0/16"], NOW - 10 * DAY, NOW - DAY, 14),        # expired
        site(ca, root, 5, ["10.6.0.0/16"], NOW + DAY, NOW + 10 * DAY, 15),        # not yet valid
        site(other, other_root, 6, ["192.168.0.0/16"], NOW - DAY, NOW + DAY, 16),  # another organisation
        site(ca, wider, 7, ["172.16.1.0/24"], NOW - DAY, NOW + DAY, 17),          # prefix not allowed
        ident.encode(root),                                                       # a root where a site goes
    ]
    revoked = ident.sign_revocations(ca, root, sequence=7, issued_at=NOW, serials=[13, 99, 2**127])
    crls = [ident.encode_revocations(revoked),                                    # stale (the list held)
            ident.encode_revocations(ident.sign_revocations(ca, root, sequence=8, issued_at=NOW,
                                                            serials=range(1000, 1200))),
            ident.encode_revocations(ident.sign_revocations(other, other_root, sequence=9, issued_at=NOW,
                                                            serials=[5]))]
    return Corpus(root, revoked, certs, crls)


ODD = [b"\x00", b"\xff", b"\x01", b"\x02", b"PTID", b"PTID\x01\x01", b"PTID\x01\x02", b"PTID\x02\x01",
       b"\x40", b"\x41", b"\x80" * 8, b"\xff" * 16, b"\x04\x20", b"\x06\x80", b"\x06\x81", b"\x04\x21"]


def mutants(seed: bytes, rng: random.Random) -> Iterator[bytes]:
    """Endless mutants of `seed`: bit flips, byte changes, cuts, insertions, duplicated runs, headers on random
    bytes; and now and then the seed intact (so that every check behind the signature is reached)."""
    while True:
        data = bytearray(seed)
        kind = rng.random()
        if kind < 0.03:
            yield seed
            continue
        if kind < 0.05:
            yield bytes(data[:4 + rng.randrange(4)]) + rng.randbytes(rng.randrange(0, 400))
            continue
        if kind < 0.10:
            yield data[:rng.randrange(len(data) + 1)]
            continue
        for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
            at = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.35 and data:
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op < 0.55 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif op < 0.70 and data:
                del data[at:at + rng.randint(1, 20)]
            elif op < 0.85:
                data[at:at] = rng.choice(ODD)
            elif data:
                end = min(len(data), at + rng.randint(1, 40))
                data[at:at] = data[at:end] * rng.randint(1, 3)
        yield bytes(data)


def outcome(check: Callable[[bytes], Any], data: bytes) -> str:
    """'ok' or the `IdentityError`'s reason; raises AssertionError (with the input) on anything else."""
    try:
        check(data)
    except ident.IdentityError as exc:
        assert exc.reason in ident.REASONS, f"unknown reason {exc.reason!r} for {data.hex()}"
        assert len(str(exc)) < 1000, f"a message of {len(str(exc))} characters for {data.hex()}"
        return exc.reason
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {str(exc)[:200]} for {data[:400].hex()}") from exc
    return "ok"


def run(n: int, seed: int = 20261207) -> dict[str, Any]:
    """N mutants spread over the corpus's seeds: outcomes, crashes, the slowest input, the rate."""
    rng = random.Random(seed)
    checks = corpus().checks()
    streams = [(check, mutants(s, rng)) for check, s in checks]
    counts: Counter[str] = Counter()
    crashes: list[str] = []
    slowest, slowest_input, slowest_outcome = 0.0, b"", ""
    t_start = time.perf_counter()
    for i in range(n):
        check, stream = streams[i % len(streams)]
        data = next(stream)
        t0 = time.perf_counter()
        try:
            got = outcome(check, data)
        except AssertionError as exc:
            got = "crash"
            if len(crashes) < 5:
                crashes.append(str(exc)[:600])
        dt = time.perf_counter() - t0
        counts[got] += 1
        if dt > slowest:
            slowest, slowest_input, slowest_outcome = dt, data, got
    elapsed = time.perf_counter() - t_start
    return {"inputs": n, "outcomes": dict(counts.most_common()), "crashes": counts["crash"],
            "first_crashes": crashes, "slowest_s": round(slowest, 6), "slowest_outcome": slowest_outcome,
            "slowest_input_len": len(slowest_input), "slowest_input_head_hex": slowest_input[:64].hex(),
            "inputs_per_s": round(n / elapsed, 1)}


def valid_verify_rate() -> float:
    """`verify` of an intact certificate (with the revocation list), per second, best of 5."""
    c = corpus()
    data = c.certificates[0]

    def loop() -> int:
        for _ in range(2000):
            ident.verify(data, c.root, NOW, c.revoked)
        return 2000

    rate, _ = best_rate(loop)
    return rate


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """`python -m benchmarks bench_identity_fuzz [N]`: N mutated inputs (default 100,000)."""
    n = int(argv[0]) if argv else N_INPUTS
    res = run(n)
    rate = valid_verify_rate()
    return [write("identity_fuzz", res["crashes"], "crashes", 0, higher_is_better=False, ok=res["crashes"] == 0,
                  verify_valid_per_s=round(rate, 1), **{k: v for k, v in res.items() if k != "crashes"})]


if __name__ == "__main__":
    for rec in main(sys.argv[1:]):
        print(rec)
