"""Signed announcements against mutated bytes (patronus/core/announce.py): every input to `AnnounceGate.admit`
must give a verdict (`Accepted`, `Duplicate`, or `Rejected` with one of the known reasons); anything it raises
is a crash.

- announce_fuzz: crashes over N inputs (N = 100,000 here; the suite runs a few thousand through the same
  driver, tests/unit/test_announce.py). Goal 0.
- details: inputs per outcome, the slowest input, inputs per second, the rate of `admit` on a valid fresh
  announcement (a new sequence of a site whose certificate the gate has verified before: the steady state of
  gossip), on one whose certificate is new to the gate (two signature checks), on a duplicate, and the peak RSS.

The seeds are announcements of one organisation's sites (valid, leaving, with a rotated WireGuard key, with a
revoked, expired, not yet valid certificate, another organisation's, one whose certificate is outside the root,
one announcing a prefix outside its certificate, a stale and a future one, the root's certificate where a
site's goes). The mutants are identity's byte mutator (benchmarks/bench_identity_fuzz.py), field-aware edits
(the version, flag, length and count bytes set to odd values), splices of two seeds at a field boundary, seeds
re-signed by their site's key with another sequence, timestamp, flag or prefix (so they reach the time and
replay checks), random bytes with and without the PTAN header, and repeats of recently accepted inputs (as
gossip repeats them). They go through one gate whose clock advances 10 ms per input, from 64 ordinary senders,
one sender over its rate, and spoofed sources enough to fill the sender table (and evict from it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.bench_identity_fuzz import DAY, NOW, _key, _net, roots
from benchmarks.bench_identity_fuzz import mutants as byte_mutants
from benchmarks.common import best_rate, write
from patronus.core import announce as an
from patronus.core import identity as ident

N_INPUTS = 100_000
STEP_S = 0.01                 # the gate's clock advances this much per input
HOT = "10.9.9.9:862"          # one sender in four inputs: 25 a second against a rate of 20


def _ep(uplink: str, address: str, port: int) -> an.Endpoint:
    return an.Endpoint(uplink, ipaddress.ip_address(address), port)


def site_key(site_id: int) -> Ed25519PrivateKey:
    return _key(100 + site_id)


def resign(key: Ed25519PrivateKey, a: an.Announcement) -> bytes:
    """`a` encoded and signed by `key`, without `sign_announcement`'s checks (so it can be wrong on purpose)."""
    body = an.encode_announcement(dataclasses.replace(a, signature=bytes(64)))[:-64]
    return body + key.sign(body)


@dataclass(frozen=True)
class Seed:
    data: bytes
    key: Ed25519PrivateKey          # the key that signed it (re-signed mutants use it)


@dataclass(frozen=True)
class Corpus:
    root: ident.Certificate
    revocations: bytes              # a list revoking site 3's certificate, for `AnnounceGate.set_revocations`
    seeds: list[Seed]

    def gate(self, **kw: Any) -> an.AnnounceGate:
        g = an.AnnounceGate(self.root, **kw)
        g.set_revocations(self.revocations)
        return g


def corpus() -> Corpus:
    """A deterministic organisation (keys from fixed seeds) and announcements of its sites, each seed, intact and
    admitted in order, giving one outcome (accepted, leaving, revoked, expired, ...; the mutants give the rest)."""
    ca, other, root, wider, other_root = roots()

    def cert(sid: int, prefixes: list[str], nb: int = NOW - DAY, na: int = NOW + 365 * DAY,
             key: Ed25519PrivateKey = ca, r: ident.Certificate = root) -> bytes:
        return ident.encode(ident.sign_site(key, r, site_id=sid, site_name=f"site-{sid}",
                                            signing_key=ident.public_key_bytes(site_key(sid)),
                                            wg_public_key=bytes([sid]) * 32, prefixes=[_net(p) for p in prefixes],
                                            not_before=nb, not_after=na, serial=10 + sid))

    def ann(sid: int, cert_bytes: bytes, *, prefixes: list[str], seq: int = 1, ts: int = NOW * 1000,
            leaving: bool = False, wg: bytes | None = None, endpoints: tuple[an.Endpoint, ...] | None = None,
            caps: tuple[str, ...] = ("relay",), key: Ed25519PrivateKey | None = None) -> Seed:
        a = an.Announcement(cert=ident.decode(cert_bytes), cert_bytes=cert_bytes, leaving=leaving,
                            wg_key=wg or bytes([sid]) * 32, timestamp_ms=ts, sequence=seq,
                            endpoints=endpoints if endpoints is not None else
                            (_ep("lte", "2001:db8::1", 51821), _ep("wan", f"192.0.2.{sid}", 51820)),
                            capabilities=caps, prefixes=tuple(_net(p) for p in prefixes))
        k = key or site_key(sid)
        return Seed(resign(k, a), k)

    c1 = cert(1, ["10.1.0.0/16", "fd00:1::/48"])
    c2 = cert(2, ["10.2.0.0/16"] + [f"10.3.{i}.0/24" for i in range(40)])
    many = tuple(_ep(f"u{i:02d}", f"198.51.100.{i}", 1000 + i) for i in range(16))
    seeds = [
        ann(1, c1, prefixes=["10.1.0.0/24", "fd00:1::/64"], seq=10),
        ann(2, c2, prefixes=["10.2.0.0/16"] + [f"10.3.{i}.0/24" for i in range(40)], endpoints=many,
            caps=tuple(f"cap-{i:02d}" for i in range(16)), seq=5),
        ann(1, c1, prefixes=[], seq=11, leaving=True),                              # site 1 leaves
        ann(3, cert(3, ["10.4.0.0/16"]), prefixes=["10.4.0.0/16"]),                 # revoked
        ann(4, cert(4, ["10.5.0.0/16"], NOW - 10 * DAY, NOW - DAY), prefixes=[]),   # expired
        ann(5, cert(5, ["10.6.0.0/16"], NOW + DAY, NOW + 10 * DAY), prefixes=[]),   # not yet valid
        ann(6, cert(6, ["192.168.0.0/16"], NOW - DAY, NOW + DAY, other, other_root), prefixes=[]),
        ann(7, cert(7, ["172.16.1.0/24"], r=wider), prefixes=[]),                   # certificate outside the root
        ann(1, c1, prefixes=["10.9.0.0/16"], seq=12),                               # outside the certificate
        ann(8, cert(8, ["10.8.0.0/16"]), prefixes=["10.8.0.0/16"], ts=(NOW - 2 * 3600) * 1000),    # stale
        ann(9, cert(9, ["10.10.0.0/16"]), prefixes=[], ts=(NOW + 2 * 3600) * 1000),                # future
        ann(10, cert(10, ["10.11.0.0/16"]), prefixes=[], wg=b"\x77" * 32, caps=()),  # a rotated WireGuard key
        ann(1, ident.encode(root), prefixes=[], key=ca),                            # the root where a site goes
        ann(1, c1, prefixes=["10.1.0.0/24"], seq=9),                                # replayed (lower than 10)
    ]
    rl = ident.sign_revocations(ca, root, sequence=1, issued_at=NOW, serials=[13])
    return Corpus(root, ident.encode_revocations(rl), seeds)


# --- the mutator ---------------------------------------------------------------------------------------

ODD = [0, 1, 2, 3, 4, 6, 16, 17, 64, 65, 127, 128, 255]


def _fields(data: bytes) -> list[int]:
    """Offsets of the version, kind, flags, length and count bytes, and of each section (a seed's layout)."""
    a = an.decode_announcement(data)
    p = 9 + len(a.cert_bytes)                       # the WireGuard key
    out = [4, 5, 6, 7, 8, 9, 9 + 85, 9 + 86, p, p + 32, p + 40, p + 47]        # cert: magic, site_id, site_name
    p += 48                                         # the endpoints' count
    out.append(p)
    p += 1
    for e in a.endpoints:                           # name length, the name's last byte, family, port
        out += [p, p + len(e.uplink), p + 1 + len(e.uplink), p + 18 + len(e.uplink)]
        p += 20 + len(e.uplink)
    out.append(p)                                   # the capabilities' count
    p += 1
    for c in a.capabilities:
        out.append(p)
        p += 1 + len(c)
    out += [p, p + 1, p + 2, len(data) - 64]        # the prefixes' count, the first's family and length
    return [o for o in out if o < len(data)]


def _resigned(seed: Seed, rng: random.Random, later: int) -> bytes:
    """`seed` re-signed with one field changed; `later` (growing) keeps some sequences above the ones held."""
    a = an.decode_announcement(seed.data)
    change = rng.randrange(5)
    if change == 0:
        a = dataclasses.replace(a, sequence=max(1, a.sequence + rng.choice((-2, -1, 0, 1, later))))
    elif change == 1:
        a = dataclasses.replace(a, timestamp_ms=a.timestamp_ms + rng.randint(-7200, 7200) * 1000)
    elif change == 2:
        a = dataclasses.replace(a, leaving=not a.leaving, sequence=a.sequence + rng.choice((0, 1, later)))
    elif change == 3:
        extra = ipaddress.ip_network((rng.choice((0x0A000000, 0x0A010000, 0xC0A80000)), 16))
        a = dataclasses.replace(a, prefixes=tuple(sorted({*a.prefixes, extra}, key=lambda p: (
            p.version, int(p.network_address), p.prefixlen))) if len(a.prefixes) < 64 else a.prefixes)
    else:
        a = dataclasses.replace(a, wg_key=rng.randbytes(32), sequence=a.sequence + later)
    return resign(seed.key, a)


def mutants(seeds: list[Seed], rng: random.Random) -> Iterator[bytes]:
    """Endless inputs from `seeds`: mostly identity's byte mutants of one seed, then field-aware edits, splices,
    re-signed variants and random bytes."""
    streams = [byte_mutants(s.data, rng) for s in seeds]
    layouts = [_fields(s.data) for s in seeds]
    i = 0
    while True:
        i += 1
        k = i % len(seeds)
        seed, kind = seeds[k], rng.random()
        if kind < 0.60:
            yield next(streams[k])
        elif kind < 0.72:
            data = bytearray(seed.data)
            for _ in range(rng.choice((1, 1, 2))):
                data[rng.choice(layouts[k])] = rng.choice(ODD)
            yield bytes(data)
        elif kind < 0.80:
            j = rng.randrange(len(seeds))
            cut_a, cut_b = rng.choice(layouts[k]), rng.choice(layouts[j])
            yield seed.data[:cut_a] + seeds[j].data[cut_b:]
        elif kind < 0.94:
            yield _resigned(seed, rng, i)
        elif kind < 0.97:
            yield b"PTAN" + bytes([rng.choice((1, 1, 2)), rng.choice((1, 1, 2))]) + rng.randbytes(rng.randrange(600))
        else:
            yield rng.randbytes(rng.randrange(0, 4200))


# --- the driver ----------------------------------------------------------------------------------------

def outcome(gate: an.AnnounceGate, data: bytes, sender: str, now: float) -> str:
    """'accepted', 'duplicate' or the rejection's reason; raises AssertionError (with the input) on anything else."""
    try:
        v = gate.admit(data, sender, now)
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {str(exc)[:200]} for {data[:400].hex()}") from exc
    if isinstance(v, an.Accepted):
        return "accepted"
    if isinstance(v, an.Duplicate):
        return "duplicate"
    assert isinstance(v, an.Rejected), f"not a verdict: {v!r}"
    assert v.reason in an.REASONS, f"unknown reason {v.reason!r} for {data.hex()}"
    assert len(v.detail) < 1000, f"a detail of {len(v.detail)} characters for {data[:400].hex()}"
    return v.reason


def sender_of(i: int, rng: random.Random) -> str:
    if i % 4 == 0:
        return HOT
    if i % 10 == 1:
        return f"spoofed-{rng.randrange(10**9)}"      # fills the sender table: least recently seen are evicted
    return f"10.0.{i % 64}.1:862"


def run(n: int, seed: int = 20261208) -> dict[str, Any]:
    """N inputs through one gate: outcomes, crashes, the slowest input, the rate, the gate's bounded tables."""
    rng = random.Random(seed)
    c = corpus()
    gate = c.gate()
    stream = mutants(c.seeds, rng)
    counts: Counter[str] = Counter()
    crashes: list[str] = []
    slowest, slowest_input, slowest_outcome = 0.0, b"", ""
    busy = 0.0
    recent: list[bytes] = []            # the last accepted inputs: gossip repeats them (duplicates)
    for i in range(n):
        data = rng.choice(recent) if recent and rng.random() < 0.03 else next(stream)
        sender = sender_of(i, rng)
        t0 = time.perf_counter()
        try:
            got = outcome(gate, data, sender, NOW + i * STEP_S)
        except AssertionError as exc:
            got = "crash"
            if len(crashes) < 5:
                crashes.append(str(exc)[:600])
        dt = time.perf_counter() - t0
        busy += dt
        counts[got] += 1
        if got == "accepted":
            recent = [*recent[-7:], data]
        if dt > slowest:
            slowest, slowest_input, slowest_outcome = dt, data, got
    return {"inputs": n, "outcomes": dict(counts.most_common()), "crashes": counts["crash"],
            "first_crashes": crashes, "slowest_s": round(slowest, 6), "slowest_outcome": slowest_outcome,
            "slowest_input_len": len(slowest_input), "slowest_input_head_hex": slowest_input[:64].hex(),
            "inputs_per_s": round(n / busy, 1), "senders_held": gate.senders(), "sites_held": len(gate.sites()),
            "gate_counters": {"accepted": gate.accepted, "duplicates": gate.duplicates,
                              "rejected": dict(gate.rejected.most_common())}}


def admit_rates() -> dict[str, float]:
    """`admit` per second (best of 5): a fresh announcement (new sequence, certificate cached), one whose
    certificate is new to the gate, and a duplicate."""
    c = corpus()
    first = an.decode_announcement(c.seeds[0].data)
    fresh = [resign(c.seeds[0].key, dataclasses.replace(first, sequence=s)) for s in range(1, 2002)]
    fast = {"rate_per_s": 1e12, "burst": 1 << 40}

    def loop_fresh() -> int:
        g = c.gate(**fast)
        g.admit(fresh[0], "a", NOW)                  # the certificate is verified once
        for data in fresh[1:]:
            g.admit(data, "a", NOW)
        assert g.accepted == len(fresh)
        return len(fresh) - 1

    def loop_cold() -> int:
        for data in fresh[:300]:
            c.gate(**fast).admit(data, "a", NOW)     # a new gate each time: no certificate cached
        return 300

    def loop_duplicate() -> int:
        g = c.gate(**fast)
        g.admit(fresh[0], "a", NOW)
        for _ in range(20000):
            g.admit(fresh[0], "a", NOW)
        assert g.duplicates == 20000
        return 20000

    return {"fresh_per_s": round(best_rate(loop_fresh)[0], 1),
            "fresh_new_cert_per_s": round(best_rate(loop_cold)[0], 1),
            "duplicate_per_s": round(best_rate(loop_duplicate)[0], 1)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """`python -m benchmarks bench_announce_fuzz [N]`: N mutated inputs (default 100,000)."""
    n = int(argv[0]) if argv else N_INPUTS
    res = run(n)
    rates = admit_rates()
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux
    return [write("announce_fuzz", res["crashes"], "crashes", 0, higher_is_better=False, ok=res["crashes"] == 0,
                  **rates, peak_rss_mib=round(peak_rss_mib, 1), **{k: v for k, v in res.items() if k != "crashes"})]


if __name__ == "__main__":
    for rec in main(sys.argv[1:]):
        print(rec)
