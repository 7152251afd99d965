"""Signed announcements (patronus/core/announce.py): round trips, the documented layout and sizes, every
non-canonical spelling refused, every rejection reason of the gate on a constructed case, duplicates, leaving,
the token buckets and the bounded tables, `sign_announcement`'s errors, and the benchmark's driver over a few
thousand mutated inputs (`python -m benchmarks bench_announce_fuzz` runs 100,000)."""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle
import re
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks import bench_announce_fuzz as fuzz
from patronus.core import announce as an
from patronus.core import identity as ident
from patronus.core.announce import Accepted, AnnounceError, AnnounceGate, Duplicate, Endpoint, Rejected
from patronus.core.errors import ConfigError, PeerError
from patronus.core.identity import IdentityError

pytestmark = pytest.mark.unit

NOW = 1_800_000_000
DAY = 86_400


def net(text: str) -> ident.IPNetwork:
    return ipaddress.ip_network(text)


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def ep(uplink: str, address: str, port: int = 51820) -> Endpoint:
    return Endpoint(uplink, ipaddress.ip_address(address), port)


CA = key(1)
ROOT = ident.self_sign_root(CA, "acme.example", [net("10.0.0.0/8"), net("fd00::/8")], not_before=NOW - 100 * DAY,
                            not_after=NOW + 100 * DAY, serial=0xABC)
SITE_KEY = key(7)


def cert(ca: Ed25519PrivateKey = CA, root: ident.Certificate = ROOT, **kw: Any) -> bytes:
    args: dict[str, Any] = {"site_id": 3, "site_name": "hq", "signing_key": ident.public_key_bytes(SITE_KEY),
                            "wg_public_key": bytes(range(32)), "prefixes": [net("10.1.0.0/16"), net("fd00:1::/48")],
                            "not_before": NOW - 60, "not_after": NOW + 30 * DAY, "serial": 0x1234}
    return ident.encode(ident.sign_site(ca, root, **(args | kw)))


HQ_CERT = cert()


def announce(site_key: Any = SITE_KEY, cert_bytes: bytes = HQ_CERT, **kw: Any) -> bytes:
    args: dict[str, Any] = {"wg_key": b"\x01" * 32, "endpoints": [ep("wan", "192.0.2.1"), ep("lte", "2001:db8::1")],
                            "capabilities": ["relay"], "prefixes": [net("10.1.2.0/24"), net("fd00:1::/64")],
                            "timestamp_ms": NOW * 1000, "sequence": 1}
    return an.sign_announcement(site_key, cert_bytes, **(args | kw))


def resign(data: bytes, k: Ed25519PrivateKey = SITE_KEY, **changes: Any) -> bytes:
    """`data` with fields changed and signed again, past `sign_announcement`'s checks."""
    return fuzz.resign(k, dataclasses.replace(an.decode_announcement(data), **changes))


HQ = announce()


def gate(**kw: Any) -> AnnounceGate:
    return AnnounceGate(ROOT, **kw)


def rejected(g: AnnounceGate, data: Any, sender: str = "s", now: float = NOW) -> str:
    v = g.admit(data, sender, now)
    assert isinstance(v, Rejected), v
    assert v.reason in an.REASONS and len(v.detail) < 1000
    return v.reason


def decode_reason(data: Any) -> str:
    with pytest.raises(AnnounceError) as info:
        an.decode_announcement(data)
    assert info.value.reason in an.REASONS and isinstance(info.value, PeerError)
    return info.value.reason


# ----------------------------------------------------------------------------------------------- round trips


def test_an_announcement_round_trips() -> None:
    a = an.decode_announcement(HQ)
    assert an.encode_announcement(a) == HQ
    assert an.decode_announcement(bytearray(HQ)) == a == an.decode_announcement(memoryview(HQ))
    assert a.cert == ident.decode(HQ_CERT) and a.cert_bytes == HQ_CERT
    assert (a.site_id, a.site_name, a.leaving, a.sequence, a.timestamp_ms) == (3, "hq", False, 1, NOW * 1000)
    assert a.endpoints == (ep("lte", "2001:db8::1"), ep("wan", "192.0.2.1"))        # sorted by uplink
    assert a.capabilities == ("relay",) and a.prefixes == (net("10.1.2.0/24"), net("fd00:1::/64"))
    assert a.wg_key == b"\x01" * 32 != a.cert.wg_public_key                          # the announcement's key rules
    assert len(a.signature) == 64


def test_signing_canonicalises_lists() -> None:
    data = announce(capabilities=["relay", "hub", "relay"], prefixes=[net("fd00:1::/64"), net("10.1.2.0/24"),
                                                                      net("10.1.0.0/16"), net("10.1.2.0/24")])
    a = an.decode_announcement(data)
    assert a.capabilities == ("hub", "relay")
    assert a.prefixes == (net("10.1.0.0/16"), net("10.1.2.0/24"), net("fd00:1::/64"))


def test_the_documented_sizes() -> None:
    assert an.MAX_ANNOUNCEMENT_BYTES == 3798 and an.MIN_ANNOUNCEMENT_BYTES == 330
    doc = an.__doc__ or ""
    assert "at least 330 bytes" in doc and "at most\n3,798 bytes" in doc and "is 458 bytes" in doc
    big_root = ident.self_sign_root(CA, "a" * 63, [net("10.0.0.0/8")], not_before=0, not_after=NOW + 100 * DAY,
                                    serial=1)
    ps = [net(f"10.{i}.0.0/16") for i in range(64)]
    big_cert = cert(root=big_root, site_name="s" * 31, prefixes=ps)
    assert len(big_cert) == ident.MAX_CERT_BYTES
    biggest = announce(cert_bytes=big_cert, endpoints=[ep(f"u{i:02d}" + "x" * 12, "192.0.2.1") for i in range(16)],
                       capabilities=[f"c{i:02d}" + "y" * 28 for i in range(16)], prefixes=ps)
    assert len(biggest) == an.MAX_ANNOUNCEMENT_BYTES
    assert an.encode_announcement(an.decode_announcement(biggest)) == biggest
    small_root = ident.self_sign_root(CA, "a", [], not_before=0, not_after=NOW + 100 * DAY, serial=1)
    smallest = announce(cert_bytes=cert(root=small_root, site_name="s", prefixes=[]), endpoints=[], capabilities=[],
                        prefixes=[])
    assert len(smallest) == an.MIN_ANNOUNCEMENT_BYTES
    # the docstring's example: short names, two uplinks, two prefixes, one capability
    example_cert = cert(root=ident.self_sign_root(CA, "acme", [net("10.0.0.0/8"), net("fd00::/8")], not_before=0,
                                                  not_after=NOW + 100 * DAY, serial=1), site_name="hq")
    assert len(announce(cert_bytes=example_cert, prefixes=[net("10.1.0.0/16"), net("fd00:1::/48")])) == 458
    assert len(HQ) == 124 + len(HQ_CERT) + 2 * 23 + 6 + 2 * 18


def test_field_offsets_match_the_documented_table() -> None:
    d, c = HQ, len(HQ_CERT)
    assert d[:6] == b"PTAN\x01\x01" and d[6] == 0
    assert struct.unpack(">H", d[7:9]) == (c,) and d[9:9 + c] == HQ_CERT
    p = 9 + c
    assert d[p:p + 32] == b"\x01" * 32 and struct.unpack(">QQ", d[p + 32:p + 48]) == (NOW * 1000, 1)
    p += 48
    assert d[p] == 2 and d[p + 1:p + 5] == b"\x03lte" and d[p + 5] == 6
    assert d[p + 6:p + 22] == ipaddress.ip_address("2001:db8::1").packed and d[p + 22:p + 24] == b"\xca\x6c"
    p += 24
    assert d[p:p + 4] == b"\x03wan" and d[p + 4] == 4 and d[p + 5:p + 21] == bytes([192, 0, 2, 1]) + bytes(12)
    p += 23
    assert d[p:p + 7] == b"\x01\x05relay" and d[p + 7] == 2
    assert d[p + 8:p + 12] == bytes([4, 24, 10, 1]) and d[p + 26:p + 28] == bytes([6, 64])
    assert len(d) == p + 8 + 36 + 64
    assert AnnounceError("malformed", "x").reason == "malformed"
    err = pickle.loads(pickle.dumps(AnnounceError("future", "at 5")))
    assert (err.reason, err.detail, str(err)) == ("future", "at 5", "future: at 5")


# --------------------------------------------------------------------------------- canonical: one encoding

P = 9 + len(HQ_CERT) + 48          # HQ's endpoint count
LTE = HQ[P + 1:P + 24]             # the two endpoints, 23 bytes each
WAN = HQ[P + 24:P + 47]
CAPS = P + 47


def edit(at: int, value: int, data: bytes = HQ) -> bytes:
    out = bytearray(data)
    out[at] = value
    return bytes(out)


@pytest.mark.parametrize(("data", "why"), [
    (edit(6, 0x02), "reserved flag"),
    (edit(6, 0x81), "reserved flag"),
    (HQ[:P + 1] + WAN + LTE + HQ[P + 47:], "ascending"),                          # endpoints out of order
    (HQ[:P + 1] + LTE + LTE + HQ[P + 47:], "ascending"),                          # one uplink twice
    (edit(P + 2, ord("L")), "uplink"),                                            # 'Lte'
    (edit(P + 2, ord("1")), "uplink"),                                            # '1te'
    (edit(P + 5, 5), "family"),                                                   # family 5
    (edit(P + 24 + 4 + 16, 1), "padding"),                                        # 192.0.2.1 + non-zero padding
    (HQ[:P + 24 + 21] + b"\0\0" + HQ[P + 47:], "port 0"),
    (edit(P, 17), "17 endpoints"),
    (edit(CAPS, 17), "17 capabilities"),
    (edit(CAPS + 2, ord("R")), "capabilities"),
    (edit(CAPS + 7, 65), "65 prefixes"),
    (edit(CAPS + 9, 8), "host bits"),                                             # 10.1.2.0/8
    (edit(CAPS + 8, 7), "family"),                                                # prefix family 7
    (edit(CAPS + 8 + 18 + 1, 16), "host bits"),                                  # fd00:1::/16
    (HQ[:CAPS + 8] + HQ[CAPS + 26:CAPS + 44] + HQ[CAPS + 8:CAPS + 26] + HQ[CAPS + 44:], "ascending"),
    (HQ[:P - 48] + bytes(32) + HQ[P - 16:], "wg_key"),                            # all-zero WireGuard key
    (HQ[:P - 8] + bytes(8) + HQ[P:], "sequence"),                                 # sequence 0
    (HQ[:P - 16] + struct.pack(">Q", an.MAX_TIMESTAMP_MS + 1) + HQ[P - 8:], "timestamp_ms"),
    (HQ + b"\0", "trailing"),
    (HQ[:-1], "truncated"),
    (HQ[:7] + struct.pack(">H", len(HQ_CERT) - 1) + HQ[9:], "truncated|trailing|malformed"),  # cert length short
    (HQ[:7] + struct.pack(">H", len(HQ_CERT) + 1) + HQ[9:], "truncated|trailing|malformed"),
    (edit(9 + 6, 0x02), "reserved flag"),                                         # inside the certificate
    (b"PTID" + HQ[4:], "magic"),
    (edit(5, 2), "kind"),
    (b"", "magic"), (b"PTAN", "header"), (b"PTAN\x01", "header"),
    (b"PTAN\x01\x01" + bytes(an.MAX_ANNOUNCEMENT_BYTES), "longer"),
])
def test_non_canonical_spellings_are_malformed(data: bytes, why: str) -> None:
    with pytest.raises(AnnounceError) as info:
        an.decode_announcement(data)
    assert info.value.reason == "malformed", str(info.value)
    assert re.search(why, str(info.value)), str(info.value)
    assert rejected(gate(), data) == "malformed"


def test_versions_and_non_bytes() -> None:
    for v in (0, 2, 255):
        assert decode_reason(edit(4, v)) == "unsupported_version"
        assert decode_reason(edit(9 + 4, v)) == "unsupported_version"             # the certificate's version
    for junk in (None, "PTAN", 5, [1, 2]):
        assert decode_reason(junk) == "malformed"
        assert rejected(gate(), junk) == "malformed"


# ------------------------------------------------------------------------------------------------- the gate


def test_a_valid_announcement_is_accepted_then_duplicate() -> None:
    g = gate()
    v = g.admit(HQ, "192.0.2.9:862", NOW)
    assert isinstance(v, Accepted) and v.changed and v.announcement == an.decode_announcement(HQ)
    assert g.held(3) == v.announcement and g.sites() == (3,) and g.held(4) is None
    again = g.admit(bytearray(HQ), "198.51.100.1:862", NOW + 10)
    assert again == Duplicate(v.announcement)
    newer = announce(sequence=2, timestamp_ms=NOW * 1000 + 5000)
    v2 = g.admit(newer, "x", NOW + 10)
    assert isinstance(v2, Accepted) and v2.changed and g.held(3) == v2.announcement
    assert (g.accepted, g.duplicates, sum(g.rejected.values())) == (2, 1, 0)
    assert rejected(g, HQ) == "replayed"              # the first one, once a duplicate, is now older than held


def test_a_duplicate_needs_no_decoding_or_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    g = gate()
    assert isinstance(g.admit(HQ, "a", NOW), Accepted)

    def boom(*_: Any) -> Any:
        raise AssertionError("decoded or verified a duplicate")

    monkeypatch.setattr(an, "decode_announcement", boom)
    monkeypatch.setattr(ident, "verify", boom)
    monkeypatch.setattr(AnnounceGate, "_verify_signature", staticmethod(boom))
    assert isinstance(g.admit(HQ, "b", NOW + 1), Duplicate) and g.duplicates == 1


def test_only_byte_identical_copies_of_a_verified_announcement_are_duplicates() -> None:
    g = gate()
    forged = edit(len(HQ) - 1, HQ[-1] ^ 0x01)          # rejected first: its digest is never held
    assert rejected(g, forged) == "bad_signature"
    assert isinstance(g.admit(HQ, "a", NOW), Accepted)
    assert rejected(g, forged) == "bad_signature"
    assert rejected(g, HQ + b"\0") == "malformed"
    assert g.duplicates == 0


def test_a_duplicate_of_an_expired_certificate_is_checked_again() -> None:
    short = cert(not_after=NOW + 100)
    data = announce(cert_bytes=short)
    g = gate()
    assert isinstance(g.admit(data, "a", NOW), Accepted)
    assert isinstance(g.admit(data, "a", NOW + 99), Duplicate)
    assert rejected(g, data, now=NOW + 100) == "expired"


def test_forged_signatures() -> None:
    g = gate()
    assert rejected(g, edit(len(HQ) - 10, HQ[-10] ^ 0x40)) == "bad_signature"         # the signature itself
    assert rejected(g, edit(P + 10, HQ[P + 10] ^ 0x01)) == "bad_signature"             # a signed byte (address)
    assert rejected(g, resign(HQ, key(8))) == "bad_signature"                          # another key
    # a certificate signed by the site's own key, claiming the organisation
    c = ident.decode(HQ_CERT)
    body = ident.encode(dataclasses.replace(c, prefixes=(net("10.0.0.0/8"),)))[:-64]
    forged_cert = body + SITE_KEY.sign(body)
    assert rejected(g, resign(HQ, cert=ident.decode(forged_cert), cert_bytes=forged_cert)) == "bad_signature"
    assert g.rejected["bad_signature"] == 4 and g.accepted == 0


def test_another_organisation_wrong_kind_and_certificate_outside_the_root() -> None:
    other_ca = key(2)
    other_root = ident.self_sign_root(other_ca, "acme.example", [net("0.0.0.0/0"), net("::/0")], not_before=0,
                                      not_after=NOW + 100 * DAY, serial=1)
    assert rejected(gate(), announce(cert_bytes=cert(ca=other_ca, root=other_root))) == "wrong_organisation"
    root_bytes = ident.encode(ROOT)
    assert rejected(gate(), resign(HQ, CA, cert=ROOT, cert_bytes=root_bytes)) == "wrong_kind"
    wider = ident.self_sign_root(CA, "acme.example", [net("0.0.0.0/0")], not_before=NOW - DAY,
                                 not_after=NOW + 100 * DAY, serial=0xABD)
    outside = cert(root=wider, prefixes=[net("192.168.1.0/24")])
    assert rejected(gate(), announce(cert_bytes=outside, prefixes=[])) == "prefix_not_allowed"
    with pytest.raises(ConfigError, match="root"):
        AnnounceGate(ident.decode(HQ_CERT))


def test_expired_and_not_yet_valid_certificates() -> None:
    assert rejected(gate(), announce(cert_bytes=cert(not_before=NOW - 10 * DAY, not_after=NOW - DAY))) == "expired"
    assert rejected(gate(), announce(cert_bytes=cert(not_before=NOW + DAY, not_after=NOW + 2 * DAY))) \
        == "not_yet_valid"
    assert rejected(gate(), HQ, now=NOW + 30 * DAY) == "expired"                   # not_after is exclusive
    assert rejected(gate(), HQ, now=NOW - 61) == "not_yet_valid"


def test_revoked_certificates_and_set_revocations() -> None:
    g = gate()
    other = announce(key(9), cert(site_id=4, site_name="branch", signing_key=ident.public_key_bytes(key(9)),
                                  serial=0x99, prefixes=[]), prefixes=[])
    assert isinstance(g.admit(HQ, "a", NOW), Accepted) and isinstance(g.admit(other, "a", NOW), Accepted)
    rl = ident.sign_revocations(CA, ROOT, sequence=2, issued_at=NOW, serials=[5, 0x1234])
    assert g.set_revocations(ident.encode_revocations(rl)) == (3,)
    assert g.held(3) is None and g.sites() == (4,) and g.revocations == rl
    assert rejected(g, HQ) == "revoked"                                # no longer a duplicate: checked, revoked
    assert rejected(g, announce(sequence=9)) == "revoked"              # the cached certificate is checked too
    with pytest.raises(IdentityError) as info:
        g.set_revocations(ident.encode_revocations(rl))
    assert info.value.reason == "stale"
    bad = bytearray(ident.encode_revocations(ident.sign_revocations(CA, ROOT, sequence=3, issued_at=NOW,
                                                                     serials=[])))
    bad[-3] ^= 1
    with pytest.raises(IdentityError, match="bad_signature"):
        g.set_revocations(bytes(bad))
    fresh = gate()
    fresh.set_revocations(ident.encode_revocations(rl))
    assert rejected(fresh, HQ) == "revoked"


def test_announced_prefixes_must_be_inside_the_certificate() -> None:
    outside = resign(HQ, prefixes=(net("10.1.0.0/16"), net("10.2.0.0/24")))
    assert rejected(gate(), outside) == "prefix_not_allowed"
    wider = resign(HQ, prefixes=(net("10.0.0.0/8"),))
    assert rejected(gate(), wider) == "prefix_not_allowed"
    assert isinstance(gate().admit(resign(HQ, prefixes=(net("10.1.0.0/16"),)), "a", NOW), Accepted)


def test_stale_and_future() -> None:
    g = gate(max_age_s=600, max_future_s=30)
    assert rejected(g, announce(timestamp_ms=(NOW - 601) * 1000)) == "stale"
    assert isinstance(g.admit(announce(timestamp_ms=(NOW - 600) * 1000, sequence=2), "a", NOW), Accepted)
    assert rejected(g, announce(timestamp_ms=(NOW + 31) * 1000, sequence=3)) == "future"
    assert isinstance(g.admit(announce(timestamp_ms=(NOW + 30) * 1000, sequence=4), "a", NOW), Accepted)
    assert rejected(g, HQ, now=NOW + 3600) == "stale"                   # a fraction: max_age_s is in seconds
    assert rejected(gate(), HQ, now=NOW - 30.5) == "future"
    # only an authentic announcement gets a time verdict
    assert rejected(g, edit(len(HQ) - 1, HQ[-1] ^ 1, announce(timestamp_ms=0))) == "bad_signature"


def test_replayed_lower_sequence_and_conflicting_same_sequence() -> None:
    g = gate()
    assert isinstance(g.admit(announce(sequence=5), "a", NOW), Accepted)
    assert rejected(g, announce(sequence=4)) == "replayed"
    assert rejected(g, announce(sequence=5, timestamp_ms=NOW * 1000 + 1)) == "replayed"     # a conflict
    conflict = g.admit(announce(sequence=5, capabilities=[]), "a", NOW)
    assert isinstance(conflict, Rejected) and "conflicts" in conflict.detail
    assert isinstance(g.admit(announce(sequence=6), "a", NOW), Accepted)
    assert g.rejected["replayed"] == 3
    g.forget(3)
    assert g.held(3) is None and g.sites() == ()
    assert isinstance(g.admit(announce(sequence=1), "a", NOW), Accepted)                   # forgotten: any sequence


def test_a_site_that_left_stays_left_until_a_higher_sequence() -> None:
    g = gate()
    assert isinstance(g.admit(announce(sequence=1), "a", NOW), Accepted)
    bye = announce(sequence=2, leaving=True, endpoints=[], prefixes=[])
    v = g.admit(bye, "a", NOW)
    assert isinstance(v, Accepted) and v.announcement.leaving and g.held(3) == v.announcement
    assert rejected(g, announce(sequence=1)) == "replayed"
    assert rejected(g, announce(sequence=2)) == "replayed"
    held = g.held(3)
    assert held is not None and held.leaving
    back = g.admit(announce(sequence=3), "a", NOW)
    assert isinstance(back, Accepted) and not back.announcement.leaving and g.sites() == (3,)


def test_a_rotated_wireguard_key_needs_no_new_certificate() -> None:
    g = gate()
    v = g.admit(announce(wg_key=b"\x42" * 32), "a", NOW)
    assert isinstance(v, Accepted) and v.announcement.wg_key == b"\x42" * 32
    assert v.announcement.cert.wg_public_key == bytes(range(32))


def test_rate_limit_and_recovery() -> None:
    g = gate(rate_per_s=2.0, burst=3)
    got = [g.admit(HQ, "hot", NOW) for _ in range(4)]
    assert isinstance(got[0], Accepted) and all(isinstance(v, Duplicate) for v in got[1:3])
    assert isinstance(got[3], Rejected) and got[3].reason == "rate_limited"
    assert isinstance(g.admit(HQ, "calm", NOW), Duplicate)                 # per sender
    assert rejected(g, HQ, "hot", NOW + 0.4) == "rate_limited"             # 0.8 of a token
    assert isinstance(g.admit(HQ, "hot", NOW + 0.5), Duplicate)            # one token back
    assert rejected(g, HQ, "hot", NOW + 0.5) == "rate_limited"
    assert isinstance(g.admit(HQ, "hot", NOW + 100), Duplicate)            # full again (capped at the burst)
    assert isinstance(g.admit(HQ, "hot", NOW + 100), Duplicate)
    assert isinstance(g.admit(HQ, "hot", NOW + 100), Duplicate)
    assert rejected(g, HQ, "hot", NOW + 100) == "rate_limited"
    assert rejected(g, HQ, "hot", NOW - 50) == "rate_limited"              # a clock stepping back refills nothing
    assert isinstance(g.admit(HQ, "hot", NOW - 49.5), Duplicate)           # ... and does not freeze the bucket
    assert rejected(g, b"junk", "hot", NOW - 49.5) == "rate_limited"       # the limit comes before anything else
    assert g.rejected["rate_limited"] == 6


def test_the_sender_table_is_bounded_by_evicting_the_least_recently_seen() -> None:
    g = gate(rate_per_s=0.001, burst=1, max_senders=3)
    assert isinstance(g.admit(HQ, "a", NOW), Accepted)
    assert rejected(g, HQ, "a", NOW) == "rate_limited"
    for i in range(1000):                                                  # a flood from spoofed sources
        g.admit(b"x", f"spoofed-{i}", NOW)
        assert g.senders() <= 3
    assert g.senders() == 3
    assert isinstance(g.admit(HQ, "a", NOW), Duplicate)                    # evicted: a full bucket again
    g.admit(HQ, "b", NOW)
    g.admit(HQ, "c", NOW)
    assert rejected(g, HQ, "a", NOW) == "rate_limited"                     # recently seen: kept
    assert g.rejected["malformed"] == 1000


def test_verified_certificates_are_cached_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ident.verify

    def counting(*args: Any) -> Any:
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(ident, "verify", counting)
    g = gate(max_cached_certs=1)
    for seq in (1, 2, 3):
        assert isinstance(g.admit(announce(sequence=seq), "a", NOW), Accepted)
    assert len(calls) == 1
    other = announce(key(9), cert(site_id=4, site_name="branch", signing_key=ident.public_key_bytes(key(9)),
                                  prefixes=[]), prefixes=[])
    assert isinstance(g.admit(other, "a", NOW), Accepted)
    assert isinstance(g.admit(announce(sequence=4), "a", NOW), Accepted)   # hq's was evicted: verified again
    assert len(calls) == 3 and len(g._certs) == 1
    assert rejected(g, announce(sequence=5), now=NOW + 30 * DAY) == "expired"   # a cached one is still timed


def test_admit_refuses_a_bad_clock_and_bad_settings() -> None:
    for now in (float("nan"), float("inf"), "now", True):
        with pytest.raises(ConfigError, match="now"):
            gate().admit(HQ, "a", now)  # type: ignore[arg-type]
    for kw in ({"rate_per_s": 0}, {"burst": 0}, {"burst": 1.5}, {"max_senders": -1}, {"max_age_s": float("nan")},
               {"max_future_s": -1}, {"max_cached_certs": True}):
        with pytest.raises(ConfigError, match=next(iter(kw))):
            gate(**kw)


def test_reasons() -> None:
    assert set(ident.REASONS) <= set(an.REASONS)
    assert set(an.REASONS) - set(ident.REASONS) == {"future", "replayed", "rate_limited"}
    assert len(set(an.REASONS)) == len(an.REASONS) == 13
    doc = an.__doc__ or ""
    for r in an.REASONS:
        assert f"\n  {r} " in doc, r


# ----------------------------------------------------------------------------------------- sign_announcement


def fields_of(exc: pytest.ExceptionInfo[ConfigError]) -> set[str]:
    return {f for f, _ in exc.value.errors}


def test_sign_announcement_names_every_bad_field() -> None:
    with pytest.raises(ConfigError) as info:
        announce(wg_key=bytes(32), sequence=0, timestamp_ms=-1, leaving="yes",
                 endpoints=[ep("WAN", "192.0.2.1"), Endpoint("lte", "192.0.2.1", 0)],  # type: ignore[arg-type]
                 capabilities=["Relay"], prefixes=["10.1.0.0/16"])
    assert {"wg_key", "sequence", "timestamp_ms", "leaving", "endpoints[0].uplink", "endpoints[1].address",
            "endpoints[1].port", "capabilities", "prefixes"} <= fields_of(info)
    with pytest.raises(ConfigError, match="one endpoint per uplink") as info:
        announce(endpoints=[ep("wan", "192.0.2.1"), ep("wan", "192.0.2.2")])
    assert fields_of(info) == {"endpoints"}
    with pytest.raises(ConfigError) as info:
        announce(endpoints=[ep(f"u{i}", "192.0.2.1") for i in range(17)], capabilities=[f"c{i}" for i in range(17)])
    assert fields_of(info) == {"endpoints", "capabilities"}
    with pytest.raises(ConfigError) as info:
        announce(endpoints=[ep("a" * 16, "192.0.2.1")])                   # uplink names are at most 15
    assert fields_of(info) == {"endpoints[0].uplink"}
    with pytest.raises(ConfigError, match="not inside the certificate's prefixes") as info:
        announce(prefixes=[net("10.2.0.0/16")])
    assert fields_of(info) == {"prefixes"}
    with pytest.raises(ConfigError) as info:
        announce(sequence=2**64, timestamp_ms=an.MAX_TIMESTAMP_MS + 1)
    assert fields_of(info) == {"sequence", "timestamp_ms"}


def test_sign_announcement_checks_the_key_and_certificate() -> None:
    with pytest.raises(ConfigError) as info:
        announce(key(8))
    assert fields_of(info) == {"site_key"}
    with pytest.raises(ConfigError) as info:
        announce(b"short")
    assert fields_of(info) == {"site_key"}
    with pytest.raises(ConfigError) as info:
        announce(cert_bytes=b"PTID junk")
    assert fields_of(info) == {"cert_bytes"}
    with pytest.raises(ConfigError) as info:
        announce(CA, ident.encode(ROOT), prefixes=[])
    assert "cert_bytes" in fields_of(info)
    assert announce(bytes([7]) * 32) == HQ                                 # raw key bytes; Ed25519 is deterministic
    with pytest.raises(ConfigError, match="not signed"):
        an.encode_announcement(dataclasses.replace(an.decode_announcement(HQ), signature=b""))


# -------------------------------------------------------------------------------------- never any other error

N_MUTANTS = 3000


def test_mutants_give_a_verdict_and_every_reason() -> None:
    """The benchmark's driver (a few thousand inputs here; `python -m benchmarks bench_announce_fuzz` runs
    100,000): no crash, every reason, acceptances and duplicates; the tables stay bounded."""
    res = fuzz.run(N_MUTANTS, seed=7)
    assert res["crashes"] == 0, res["first_crashes"]
    assert set(res["outcomes"]) == set(an.REASONS) | {"accepted", "duplicate"}
    assert res["senders_held"] <= 4096 and res["sites_held"] <= ident.MAX_SITE_ID


def test_the_benchmark_seeds_give_their_documented_outcomes() -> None:
    c = fuzz.corpus()
    g = c.gate()
    got = [fuzz.outcome(g, s.data, f"s{i}", fuzz.NOW) for i, s in enumerate(c.seeds)]
    assert got == ["accepted", "accepted", "accepted", "revoked", "expired", "not_yet_valid", "wrong_organisation",
                   "prefix_not_allowed", "prefix_not_allowed", "stale", "future", "accepted", "wrong_kind", "replayed"]
