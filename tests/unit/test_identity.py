"""Certificates and revocation lists (patronus/core/identity.py): round trips, every rejection reason on a
constructed case, the documented layout, and decoders that never raise anything but `IdentityError` (the
benchmark's mutator over a few thousand inputs, and Hypothesis, derandomized)."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.bench_identity_fuzz import corpus, mutants, outcome
from patronus.core import identity as ident
from patronus.core.errors import ConfigError, PeerError
from patronus.core.identity import IdentityError

pytestmark = pytest.mark.unit

NOW = 1_800_000_000
DAY = 86_400


def net(text: str) -> ident.IPNetwork:
    return ipaddress.ip_network(text)


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


CA = key(1)
ROOT = ident.self_sign_root(CA, "acme.example", [net("10.0.0.0/8"), net("fd00::/8")], not_before=NOW - DAY,
                            not_after=NOW + 100 * DAY, serial=0xABC)
ROOT_BYTES = ident.encode(ROOT)
SITE_KEY = key(7)


def site(ca: Ed25519PrivateKey = CA, root: ident.Certificate = ROOT, **kw: Any) -> ident.Certificate:
    args: dict[str, Any] = {"site_id": 3, "site_name": "hq", "signing_key": ident.public_key_bytes(SITE_KEY),
                            "wg_public_key": bytes(range(32)), "prefixes": [net("10.1.0.0/16"), net("fd00:1::/48")],
                            "not_before": NOW - 60, "not_after": NOW + 30 * DAY, "serial": 0x1234}
    return ident.sign_site(ca, root, **(args | kw))


HQ = site()
HQ_BYTES = ident.encode(HQ)
EMPTY_RL = ident.sign_revocations(CA, ROOT, sequence=1, issued_at=NOW, serials=())


def reason(fn: Any, *args: Any) -> str:
    with pytest.raises(IdentityError) as info:
        fn(*args)
    assert info.value.reason in ident.REASONS
    return info.value.reason


# ----------------------------------------------------------------------------------------------- round trips


def test_a_site_certificate_round_trips_and_verifies() -> None:
    assert ident.decode(HQ_BYTES) == HQ
    assert ident.encode(ident.decode(HQ_BYTES)) == HQ_BYTES
    assert ident.verify(HQ_BYTES, ROOT, NOW, EMPTY_RL) == HQ
    assert ident.verify(bytearray(HQ_BYTES), ROOT, NOW) == HQ          # any bytes-like from a socket
    assert ident.verify(memoryview(HQ_BYTES), ROOT, NOW) == HQ
    assert HQ.org_fingerprint == ROOT.org_fingerprint == ident.key_fingerprint(ident.public_key_bytes(CA))
    assert HQ.prefixes == (net("10.1.0.0/16"), net("fd00:1::/48")) and HQ.site_id == 3 and not HQ.is_ca


def test_the_root_is_self_signed_and_round_trips() -> None:
    assert ident.verify_root(ROOT_BYTES) == ROOT
    assert ROOT.is_ca and ROOT.site_id == 0 and ROOT.site_name == "" and ROOT.wg_public_key == bytes(32)
    assert ROOT.signing_key == ident.public_key_bytes(CA)
    assert len(ROOT_BYTES) == 204 + len("acme.example") + 2 * 18


def test_a_revocation_list_round_trips_and_keeps_serials_sorted() -> None:
    rl = ident.sign_revocations(CA, ROOT, sequence=5, issued_at=NOW, serials=[9, 3, 2**128 - 1, 3])
    data = ident.encode_revocations(rl)
    assert rl.serials == (3, 9, 2**128 - 1)
    assert ident.decode_revocations(data) == rl == ident.verify_revocations(data, ROOT, EMPTY_RL)
    assert ident.decode_any(data) == rl and ident.decode_any(HQ_BYTES) == HQ
    assert 9 in rl and 4 not in rl and "9" not in rl
    assert len(data) == 121 + len("acme.example") + 3 * 16


def test_signing_canonicalises_prefixes() -> None:
    c = site(prefixes=[net("fd00:1::/48"), net("10.1.0.0/16"), net("10.1.0.0/24"), net("10.1.0.0/16")])
    assert c.prefixes == (net("10.1.0.0/16"), net("10.1.0.0/24"), net("fd00:1::/48"))
    assert ident.verify(ident.encode(c), ROOT, NOW) == c


def test_the_documented_sizes_and_header() -> None:
    assert HQ_BYTES[:6] == b"PTID\x01\x01" and ident.encode_revocations(EMPTY_RL)[:6] == b"PTID\x01\x02"
    assert ident.MAX_CERT_BYTES == 1450 and ident.MAX_REVOCATIONS_BYTES == 32952
    doc = ident.__doc__ or ""
    assert "at most 1,450 bytes" in doc and "at most 32,952 bytes" in doc
    big = site(prefixes=[net(f"10.{i}.0.0/16") for i in range(64)], site_name="s" * 31)
    rl = ident.sign_revocations(CA, ROOT, sequence=1, issued_at=NOW, serials=range(ident.MAX_REVOKED))
    long_org = ident.self_sign_root(CA, "a" * 63, [], not_before=0, not_after=1, serial=0)
    assert len(ident.encode(big)) == ident.MAX_CERT_BYTES - (63 - len("acme.example"))
    assert len(ident.encode(long_org)) == 204 + 63
    assert len(ident.encode_revocations(rl)) == ident.MAX_REVOCATIONS_BYTES - (63 - len("acme.example"))


def test_field_offsets_match_the_documented_table() -> None:
    d = HQ_BYTES
    assert d[6] == 0 and ROOT_BYTES[6] == 1                                        # flags: is_ca
    assert int.from_bytes(d[7:23], "big") == 0x1234                                # serial
    assert struct.unpack(">QQ", d[23:39]) == (HQ.not_before, HQ.not_after)
    assert d[39:71] == ROOT.org_fingerprint
    assert d[71] == len("acme.example") and d[72:84] == b"acme.example"
    assert struct.unpack(">H", d[84:86]) == (3,) and d[86] == 2 and d[87:89] == b"hq"
    assert d[89:121] == HQ.signing_key and d[121:153] == HQ.wg_public_key
    assert d[153] == 2 and d[154:172] == bytes([4, 16, 10, 1]) + bytes(14)
    assert d[172:174] == bytes([6, 48]) and d[-64:] == HQ.signature and len(d) == 190 + 64


# ------------------------------------------------------------------------------------- every rejection reason


def test_a_tampered_byte_is_a_bad_signature() -> None:
    for at in (7, 30, 88, 100, 130, 160, len(HQ_BYTES) - 1):
        data = bytearray(HQ_BYTES)
        data[at] ^= 0x01
        got = reason(ident.verify, bytes(data), ROOT, NOW)
        assert got in ("bad_signature", "malformed"), at
    data = bytearray(HQ_BYTES)
    data[100] ^= 0x01                                   # inside the signing key: still well formed
    assert reason(ident.verify, bytes(data), ROOT, NOW) == "bad_signature"
    data = bytearray(HQ_BYTES)
    data[-1] ^= 0x80
    assert reason(ident.verify, bytes(data), ROOT, NOW) == "bad_signature"


def test_expired_and_not_yet_valid() -> None:
    assert reason(ident.verify, HQ_BYTES, ROOT, HQ.not_after) == "expired"          # not_after is exclusive
    assert ident.verify(HQ_BYTES, ROOT, HQ.not_after - 1) == HQ
    assert ident.verify(HQ_BYTES, ROOT, HQ.not_before) == HQ                         # not_before is inclusive
    assert reason(ident.verify, HQ_BYTES, ROOT, HQ.not_before - 1) == "not_yet_valid"


def test_an_expired_root_expires_its_sites() -> None:
    data = ident.encode(site(not_after=NOW + 100 * DAY))
    assert ident.verify(data, ROOT, NOW + 99 * DAY) is not None
    short = dataclasses.replace(ROOT, not_after=NOW + 10)      # the same key's root, held with a shorter life
    assert reason(ident.verify, data, short, NOW + 20) == "expired"
    early = dataclasses.replace(ROOT, not_before=NOW + 10)
    assert reason(ident.verify, data, early, NOW) == "not_yet_valid"


def test_a_revoked_serial_is_refused() -> None:
    rl = ident.sign_revocations(CA, ROOT, sequence=2, issued_at=NOW, serials=[1, HQ.serial])
    with pytest.raises(IdentityError, match="revoked") as info:
        ident.verify(HQ_BYTES, ROOT, NOW, rl)
    assert info.value.reason == "revoked" and isinstance(info.value, PeerError)
    assert ident.verify(HQ_BYTES, ROOT, NOW, EMPTY_RL) == HQ


def test_another_organisations_certificate_is_refused() -> None:
    other_ca = key(2)
    other_root = ident.self_sign_root(other_ca, "acme.example", [net("0.0.0.0/0"), net("::/0")], not_before=0,
                                      not_after=NOW + 100 * DAY, serial=1)
    theirs = ident.encode(site(ca=other_ca, root=other_root))
    assert reason(ident.verify, theirs, ROOT, NOW) == "wrong_organisation"          # same name, other key
    renamed = ident.self_sign_root(CA, "other", [net("0.0.0.0/0"), net("::/0")], not_before=0,
                                   not_after=NOW + 100 * DAY, serial=1)
    assert reason(ident.verify, ident.encode(site(root=renamed)), ROOT, NOW) == "wrong_organisation"
    other_rl = ident.sign_revocations(other_ca, other_root, sequence=9, issued_at=NOW, serials=())
    assert reason(ident.verify_revocations, ident.encode_revocations(other_rl), ROOT) == "wrong_organisation"
    assert reason(ident.verify, HQ_BYTES, ROOT, NOW, other_rl) == "wrong_organisation"


def test_a_certificate_signed_by_a_site_key_is_refused() -> None:
    """A site signs a certificate with its own key, claiming the organisation (fingerprint and name)."""
    forged = dataclasses.replace(HQ, site_id=9, site_name="evil", prefixes=(net("10.0.0.0/8"),))
    body = ident.encode(dataclasses.replace(forged, signature=bytes(64)))[:-64]
    data = body + SITE_KEY.sign(body)
    assert ident.decode(data).site_name == "evil"                      # well formed ...
    assert reason(ident.verify, data, ROOT, NOW) == "bad_signature"    # ... but not the root's signature
    with pytest.raises(ConfigError, match="not the key of this root"):
        ident.sign_site(SITE_KEY, ROOT, site_id=9, site_name="evil", signing_key=HQ.signing_key,
                        wg_public_key=HQ.wg_public_key, prefixes=[], not_before=NOW, not_after=NOW + 1, serial=1)


def test_a_prefix_outside_the_root_is_refused() -> None:
    wider = ident.self_sign_root(CA, "acme.example", [net("0.0.0.0/0")], not_before=NOW - DAY,
                                 not_after=NOW + 100 * DAY, serial=0xABD)
    data = ident.encode(site(root=wider, prefixes=[net("192.168.1.0/24")]))
    assert reason(ident.verify, data, ROOT, NOW) == "prefix_not_allowed"
    with pytest.raises(ConfigError, match="not inside the organisation's prefixes") as info:
        site(prefixes=[net("192.168.1.0/24")])
    assert info.value.errors[0][0] == "prefixes"


def test_allows_and_require_allowed() -> None:
    assert ident.allows(HQ, net("10.1.0.0/16")) and ident.allows(HQ, net("10.1.2.0/24"))
    assert ident.allows(HQ, net("10.1.2.3/32")) and ident.allows(HQ, net("fd00:1:0:5::/64"))
    assert not ident.allows(HQ, net("10.0.0.0/8")) and not ident.allows(HQ, net("10.2.0.0/24"))
    assert not ident.allows(HQ, net("::/0")) and not ident.allows(HQ, net("0.0.0.0/0"))
    assert not ident.allows(HQ, net("::ffff:10.1.0.0/112"))            # an IPv4-mapped prefix is IPv6
    ident.require_allowed(HQ, [net("10.1.3.0/24")])
    with pytest.raises(IdentityError, match=r"10\.9\.0\.0/16") as info:
        ident.require_allowed(HQ, [net("10.1.3.0/24"), net("10.9.0.0/16")])
    assert info.value.reason == "prefix_not_allowed"


def test_a_stale_revocation_list_is_refused() -> None:
    newer = ident.sign_revocations(CA, ROOT, sequence=2, issued_at=NOW, serials=[5])
    same = ident.sign_revocations(CA, ROOT, sequence=2, issued_at=NOW + 1, serials=[6])
    older = ident.encode_revocations(EMPTY_RL)
    assert ident.verify_revocations(ident.encode_revocations(newer), ROOT, EMPTY_RL) == newer
    assert reason(ident.verify_revocations, older, ROOT, newer) == "stale"
    assert reason(ident.verify_revocations, ident.encode_revocations(same), ROOT, newer) == "stale"
    assert reason(ident.verify_revocations, older, ROOT, EMPTY_RL) == "stale"


def test_a_tampered_revocation_list_is_a_bad_signature() -> None:
    data = bytearray(ident.encode_revocations(ident.sign_revocations(CA, ROOT, sequence=3, issued_at=NOW,
                                                                     serials=[HQ.serial])))
    data[-70] ^= 0x01                                                   # inside the serial: it un-revokes hq
    assert reason(ident.verify_revocations, bytes(data), ROOT) == "bad_signature"


def test_unsupported_version_and_wrong_kind() -> None:
    for v in (0, 2, 255):
        assert reason(ident.decode, HQ_BYTES[:4] + bytes([v]) + HQ_BYTES[5:]) == "unsupported_version"
        assert reason(ident.decode_any, HQ_BYTES[:4] + bytes([v]) + HQ_BYTES[5:]) == "unsupported_version"
    rl = ident.encode_revocations(EMPTY_RL)
    assert reason(ident.verify, rl, ROOT, NOW) == "wrong_kind"
    assert reason(ident.verify_revocations, HQ_BYTES, ROOT) == "wrong_kind"
    assert reason(ident.verify, ROOT_BYTES, ROOT, NOW) == "wrong_kind"       # a root is not a site
    assert reason(ident.verify_root, HQ_BYTES) == "wrong_kind"
    assert reason(ident.verify, HQ_BYTES, HQ, NOW) == "wrong_kind"           # a site is not a trust anchor


def test_a_root_with_a_broken_self_signature_is_refused() -> None:
    data = bytearray(ROOT_BYTES)
    data[-5] ^= 0x10
    assert reason(ident.verify_root, bytes(data)) == "bad_signature"


@pytest.mark.parametrize(("at", "value", "why"), [
    (6, 0x02, "reserved flag"),                       # flags
    (72, ord("A"), "org_name"),                       # upper case
    (84, 0x10, "site_id"),                            # site id 0x1003 = 4099
    (85, 0, "site_id"),                               # site id 0
    (87, ord("-"), "site_name"),                      # '-hq...'
    (153, 65, "prefixes"),                            # more than 64
    (155, 33, "prefix 0"),                            # IPv4 /33
    (155, 8, "host bits"),                            # 10.1.0.0/8
    (154, 5, "family"),                               # family 5
    (160, 1, "padding"),                              # non-zero padding after an IPv4 address
])
def test_malformed_fields_are_named(at: int, value: int, why: str) -> None:
    data = bytearray(HQ_BYTES)
    data[at] = value
    with pytest.raises(IdentityError) as info:
        ident.decode(bytes(data))
    assert info.value.reason == "malformed"
    assert re.search(why.split()[0], str(info.value)), str(info.value)


def test_non_canonical_encodings_are_malformed() -> None:
    swapped = HQ_BYTES[:154] + HQ_BYTES[172:190] + HQ_BYTES[154:172] + HQ_BYTES[190:]      # prefixes reordered
    assert reason(ident.decode, swapped) == "malformed"
    assert reason(ident.decode, HQ_BYTES + b"\0") == "malformed"                          # trailing byte
    assert reason(ident.decode, HQ_BYTES[:-1]) == "malformed"                             # truncated
    times = HQ_BYTES[:23] + struct.pack(">QQ", 5, 5) + HQ_BYTES[39:]                      # empty validity
    assert reason(ident.decode, times) == "malformed"
    huge = HQ_BYTES[:23] + struct.pack(">QQ", 0, ident.MAX_TIME + 1) + HQ_BYTES[39:]
    assert reason(ident.decode, huge) == "malformed"
    for junk in (b"", b"P", b"PTID", b"PTID\x01", b"x" * 300, b"PTID\x01\x03" + bytes(300), None, "PTID", 5):
        assert reason(ident.decode_any, junk) == "malformed"
    assert reason(ident.decode, b"PTID\x01\x01" + bytes(ident.MAX_CERT_BYTES)) == "malformed"   # too long


def test_signers_report_every_bad_field() -> None:
    with pytest.raises(ConfigError) as info:
        ident.sign_site(CA, ROOT, site_id=0, site_name="HQ", signing_key=b"short", wg_public_key=bytes(32),
                        prefixes=["10.0.0.0/8"], not_before=10, not_after=5, serial=-1)  # type: ignore[list-item]
    fields = {f for f, _ in info.value.errors}
    assert {"site_id", "site_name", "signing_key", "wg_public_key", "prefixes", "not_after", "serial"} <= fields
    with pytest.raises(ConfigError, match="must not be the CA key"):
        site(signing_key=ident.public_key_bytes(CA))
    with pytest.raises(ConfigError, match="not inside the root's"):
        site(not_after=NOW + 1000 * DAY)
    with pytest.raises(ConfigError, match="org_name"):
        ident.self_sign_root(CA, "Acme Corp", [], not_before=0, not_after=1, serial=0)
    with pytest.raises(ConfigError, match="serials"):
        ident.sign_revocations(CA, ROOT, sequence=1, issued_at=NOW, serials=range(ident.MAX_REVOKED + 1))
    with pytest.raises(ConfigError, match="serials"):
        ident.sign_revocations(CA, ROOT, sequence=1, issued_at=NOW, serials=["5"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="not signed"):
        ident.encode(dataclasses.replace(HQ, signature=b""))
    with pytest.raises(ConfigError, match="ca_key"):
        ident.sign_revocations(b"short", ROOT, sequence=1, issued_at=NOW, serials=[])


def test_raw_private_key_bytes_sign_the_same() -> None:
    raw = bytes([1]) * 32
    assert ident.self_sign_root(raw, "acme.example", [net("10.0.0.0/8"), net("fd00::/8")], not_before=NOW - DAY,
                                not_after=NOW + 100 * DAY, serial=0xABC) == ROOT         # Ed25519 is deterministic


def test_the_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(IdentityError("revoked", "serial 5")))
    assert (err.reason, err.detail, str(err)) == ("revoked", "serial 5", "revoked: serial 5")


def test_fingerprints() -> None:
    assert len(ident.fingerprint(HQ)) == 32 and ident.fingerprint(HQ) != ident.fingerprint(ROOT)
    assert ident.fingerprint(EMPTY_RL) == __import__("hashlib").sha256(ident.encode_revocations(EMPTY_RL)).digest()


# -------------------------------------------------------------------------------------- never any other error

N_MUTANTS = 3000


def test_mutants_give_a_value_or_a_known_reason() -> None:
    """The benchmark's mutator (a few thousand here; `python -m benchmarks bench_identity_fuzz` runs 100,000)."""
    checks = corpus().checks()
    rng = random.Random(7)
    streams = [(check, mutants(seed, rng)) for check, seed in checks]
    seen = [outcome(check, next(stream)) for check, stream in (streams[i % len(streams)] for i in range(N_MUTANTS))]
    assert "ok" in seen and set(seen) - {"ok"} == ident.REASONS        # every reason is reached


def _decodes_or_refuses(data: bytes) -> None:
    for fn in (ident.decode, ident.decode_revocations, ident.decode_any, ident.verify_root):
        try:
            obj = fn(data)
        except IdentityError as exc:
            assert exc.reason in ident.REASONS
            continue
        again = ident.encode(obj) if isinstance(obj, ident.Certificate) else ident.encode_revocations(obj)
        assert again == data                                            # canonical: one value, one encoding
    for check in (lambda d: ident.verify(d, ROOT, NOW, EMPTY_RL), lambda d: ident.verify_revocations(d, ROOT)):
        try:
            check(data)
        except IdentityError as exc:
            assert exc.reason in ident.REASONS


FUZZ = settings(max_examples=1000, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [HQ_BYTES, ROOT_BYTES, ident.encode_revocations(
    ident.sign_revocations(CA, ROOT, sequence=4, issued_at=NOW, serials=[1, 2, 3]))]


@pytest.mark.property
@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    _decodes_or_refuses(data)


@pytest.mark.property
@FUZZ
@given(st.sampled_from([b"PTID\x01\x01", b"PTID\x01\x02", b"PTID\x02\x01"]), st.binary(max_size=1600))
def test_a_valid_header_on_arbitrary_bytes_never_raises_anything_else(header: bytes, tail: bytes) -> None:
    _decodes_or_refuses(header + tail)


@pytest.mark.property
@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1,
                                         max_size=6), st.integers(0, 2000), st.binary(max_size=40))
def test_byte_mutated_valid_objects_never_raise_anything_else(seed: bytes, edits: list[tuple[int, int]], cut: int,
                                                              insert: bytes) -> None:
    data = bytearray(seed)
    for at, value in edits:
        data[at % len(data)] = value
    data[cut % (len(data) + 1):cut % (len(data) + 1)] = insert
    _decodes_or_refuses(bytes(data))
