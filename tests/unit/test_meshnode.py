"""MeshNode (patronus/core/meshnode.py): sites of one organisation find each other through a seed, peer
by the topology, see leaves and failures, adopt rotated keys and revocations, and refuse what is forged,
expired, revoked, replayed or unsigned, counted by reason. Deterministic: a seeded lab (tests/unit/meshlab.py)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from patronus.core import identity as ident
from patronus.core.announce import Endpoint
from patronus.core.errors import ConfigError
from patronus.core.events import KeyRotated, SiteJoined, SiteLeft, SiteSuspected
from patronus.core.mesh import Kind, MeshTopology
from patronus.core.meshnode import MeshIdentity, MeshNode, SignedHere, Transmit
from patronus.core.swim import SwimConfig
from patronus.core.swimwire import Ping, Status, Update, encode
from tests.unit.meshlab import T0, MeshLab, Org, prefix_of, wg_key

pytestmark = pytest.mark.unit

FAST = SwimConfig(probe_interval=0.2, probe_timeout=0.1, suspicion_mult=3.0, gossip_interval=0.05)


def ten(lab: MeshLab, n: int = 10) -> None:
    lab.add("s1", 1)
    for i in range(2, n + 1):
        lab.add(f"s{i}", i, seeds=["s1"])


def test_ten_sites_form_a_full_mesh_through_one_seed_and_an_eleventh_joins() -> None:
    lab = MeshLab(swim=FAST)
    ten(lab)
    took = lab.when(lab.full_mesh, within=5.0)
    assert took is not None, {n: sorted(s.peers) for n, s in lab.sites.items()}
    for name, site in lab.sites.items():
        assert {e.member for e in site.events if isinstance(e, SiteJoined)} == set(lab.sites) - {name}
        assert site.peers["s1" if name != "s1" else "s2"].prefixes
    lab.run_for(3.0)
    lab.add("s11", 11, seeds=["s1"])
    joined = lab.when(lab.full_mesh, within=5.0)
    assert joined is not None and joined < 2.0, joined
    # nothing was refused along the way but pings from sites not heard of yet (each answered "who are
    # you?"): every datagram was signed by a site of the organisation, every announcement admitted
    assert all(set(s.node.rejected) <= {"unknown_sender"} for s in lab.sites.values())
    assert all(not s.node.gate.rejected for s in lab.sites.values())


def test_a_site_that_leaves_is_removed_everywhere_and_one_that_dies_after_suspicion() -> None:
    lab = MeshLab(swim=FAST)
    ten(lab, 6)
    assert lab.when(lab.full_mesh, within=5.0) is not None
    lab.handle("s3", lab.sites["s3"].node.leave(lab.now))
    assert lab.sites["s3"].peers == {}
    lab.kill("s3")
    gone = lab.when(lambda: all("s3" not in lab.sites[n].peers for n in lab.live()), within=2.0)
    assert gone is not None and gone < 0.5, gone
    for n in lab.live():
        assert any(isinstance(e, SiteLeft) and e.member == "s3" and e.reason == "left" for e in lab.sites[n].events)
    lab.kill("s4")
    # a crash: found by some prober within about a probe pass, then suspicion_mult × probe_interval
    # (log10 of 5 members < 1) of suspicion before it is declared dead, then the news spreads
    bound = 5 * FAST.probe_interval + FAST.suspicion_mult * FAST.probe_interval + 1.0
    dead = lab.when(lambda: all("s4" not in lab.sites[n].peers for n in lab.live()), within=bound)
    assert dead is not None, bound
    for n in lab.live():
        kinds = [(type(e), getattr(e, "reason", None)) for e in lab.sites[n].events if getattr(e, "member", "") == "s4"]
        assert (SiteLeft, "failed") in kinds
    assert any(isinstance(e, SiteSuspected) and e.member == "s4" for n in lab.live() for e in lab.sites[n].events)
    assert lab.full_mesh()


def test_a_rotated_key_reaches_every_peer_and_a_replayed_old_announcement_is_refused() -> None:
    lab = MeshLab(swim=FAST)
    ten(lab, 5)
    assert lab.when(lab.full_mesh, within=5.0) is not None
    old = lab.sites["s2"].node.announcement
    lab.run_for(0.5)
    lab.handle("s2", lab.sites["s2"].node.rotate(wg_key(2, 1), lab.now))
    took = lab.when(lambda: all(lab.sites[n].peers["s2"].wg_key == wg_key(2, 1) for n in lab.live() if n != "s2"),
                    within=2.0)
    assert took is not None and took < 1.0, took
    for n in lab.live():
        assert any(isinstance(e, KeyRotated) and e.member == "s2" for e in lab.sites[n].events), n
    # s5 forwards (it is a member: its datagram is authentic) an alive record carrying s2's old announcement
    s5, s1 = lab.sites["s5"].node, lab.sites["s1"].node
    msg = Ping(seq=7, sender="s5", updates=(Update(Status.ALIVE, "s2", "s2", 10**15, old),))
    s5._now = lab.now                                      # sealing takes the node's clock
    data = s5._seal(1, encode(msg))
    before = s1.gate.rejected["replayed"]
    lab.handle("s1", s1.on_datagram("s5", data, lab.now))
    assert s1.gate.rejected["replayed"] == before + 1
    assert lab.sites["s1"].peers["s2"].wg_key == wg_key(2, 1)


def test_forged_foreign_expired_and_revoked_sites_never_become_peers_and_are_counted() -> None:
    lab = MeshLab(swim=FAST)
    ten(lab, 3)
    assert lab.when(lab.full_mesh, within=5.0) is not None
    other = Org("evil", seed=2)
    lab.add("x1", 50, seeds=["s1"], identity=other.identity("x1", 50))
    expiring = lab.org.identity("x2", 51, not_after=int(lab.now) + 2)
    lab.add("x2", 51, seeds=["s1"], identity=expiring)
    lab.run_for(1.0)
    assert "x2" in lab.sites["s1"].peers                      # valid until its certificate expires
    revoked = lab.org.identity("x3", 52)
    rl = lab.org.revoke(["x3"])
    for n in ("s1", "s2", "s3"):
        lab.handle(n, lab.sites[n].node.set_revocations(rl, lab.now))
    lab.add("x3", 52, seeds=["s1"], identity=revoked)
    lab.run_for(5.0)
    for n in ("s1", "s2", "s3"):
        site = lab.sites[n]
        assert set(site.peers) == {"s1", "s2", "s3"} - {n}, (n, sorted(site.peers))
    gate = lab.sites["s1"].node.gate
    assert gate.rejected["wrong_organisation"] >= 1
    assert gate.rejected["revoked"] >= 1
    assert sum(lab.sites[n].node.gate.rejected["expired"] for n in ("s1", "s2", "s3")) >= 1
    assert lab.sites["s1"].node.rejected["unknown_sender"] >= 1
    # a tampered datagram: a valid one with one bit flipped in its body
    data = next(d for _, src, dst, d in reversed(lab.sent) if src == "s2" and dst == "s1")
    bad = bytearray(data)
    bad[20] ^= 1
    before = lab.sites["s1"].node.rejected["bad_signature"]
    lab.handle("s1", lab.sites["s1"].node.on_datagram("s2", bytes(bad), lab.now))
    assert lab.sites["s1"].node.rejected["bad_signature"] == before + 1


def test_a_revocation_list_spreads_from_one_site_and_drops_the_revoked_everywhere() -> None:
    lab = MeshLab(swim=FAST)
    ten(lab, 6)
    assert lab.when(lab.full_mesh, within=5.0) is not None
    lab.handle("s1", lab.sites["s1"].node.set_revocations(lab.org.revoke(["s6"]), lab.now))
    others = [n for n in lab.live() if n != "s6"]
    took = lab.when(lambda: all("s6" not in lab.sites[n].peers for n in others), within=3.0)
    assert took is not None, took
    for n in others:
        assert lab.sites[n].node.rl_sequence == 1
        assert any(isinstance(e, SiteLeft) and e.member == "s6" and e.reason == "revoked" for e in lab.sites[n].events)


def test_hierarchical_spokes_rehome_to_their_secondary_hub_when_the_primary_fails() -> None:
    topo = MeshTopology(Kind.HIERARCHICAL, region_hubs=(("eu", ("h1", "h2")), ("us", ("h3", "h4"))))
    lab = MeshLab(topology=topo, swim=FAST)
    lab.add("h1", 1, region="eu")
    for i, (name, region) in enumerate([("h2", "eu"), ("h3", "us"), ("h4", "us"), ("a1", "eu"), ("a2", "eu"),
                                        ("b1", "us")], start=2):
        lab.add(name, i, seeds=["h1"], region=region)

    def homed(primary: dict[str, str]) -> bool:
        return all(set(lab.sites[s].peers) == {h} for s, h in primary.items())

    assert lab.when(lambda: homed({"a1": "h1", "a2": "h1", "b1": "h3"}), within=5.0) is not None
    assert lab.when(lambda: set(lab.sites["h1"].peers) == {"h2", "h3", "h4", "a1", "a2"}, within=2.0) is not None
    lab.kill("h1")
    bound = 7 * FAST.probe_interval + FAST.suspicion_mult * FAST.probe_interval + 1.0
    assert lab.when(lambda: homed({"a1": "h2", "a2": "h2", "b1": "h3"}), within=bound) is not None


def test_datagrams_that_are_not_ours_are_counted_never_raise() -> None:
    lab = MeshLab(swim=FAST)
    ten(lab, 2)
    lab.run_for(1.0)
    node = lab.sites["s1"].node
    rng = random.Random(5)
    good = next(d for _, src, dst, d in lab.sent if src == "s2" and dst == "s1")
    for i in range(3000):
        if i % 3 == 0:
            data = rng.randbytes(rng.randrange(0, 200))
        else:
            data = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            data = bytes(data[: rng.randrange(len(data) + 1)]) if i % 3 == 2 else bytes(data)
        node.on_datagram(f"10.9.{i % 200}.1:9", data, lab.now)
    assert sum(node.rejected.values()) + sum(node.gate.rejected.values()) >= 2990
    assert set(node.rejected) <= {"rate_limited", "malformed", "unsupported_ver", "unknown_sender", "bad_signature",
                                  "wrong_sender"}


def test_a_site_with_a_bad_identity_is_refused_when_it_starts() -> None:
    org = Org()
    lab = MeshLab()
    expired = org.identity("old", 9, not_after=int(T0) - 1)
    endpoint = Endpoint("isp1", ipaddress.ip_address("192.0.2.9"), 1)
    node = MeshNode(expired, lab.options, wg_key=wg_key(9, 0), endpoints=[endpoint], prefixes=[prefix_of(9)],
                    rand=random.Random(1))
    with pytest.raises(ConfigError, match="expired"):
        node.start([], T0)
    root_as_site = MeshIdentity(ident.encode(org.root), org.ca, org.root)
    with pytest.raises(ConfigError) as err:
        MeshNode(root_as_site, lab.options, wg_key=wg_key(9, 0), endpoints=[], prefixes=[], rand=random.Random(1))
    assert err.value.errors[0][0] == "mesh.certificate"


def test_an_unknown_source_gets_at_most_one_who_are_you_every_five_seconds() -> None:
    """The answer to an unknown sender carries our announcement: it must not amplify a spoofed flood."""
    lab = MeshLab(swim=FAST)
    ten(lab, 2)
    lab.run_for(1.0)
    stranger = Org("evil", seed=3)
    lab.add("x", 60, identity=stranger.identity("x", 60))     # not of the organisation: never held by s1
    lab.run_for(0.5)
    ping = lab.sites["x"].node
    ping._now = lab.now                                       # sealing takes the node's clock
    data = ping._seal(1, encode(Ping(seq=1, sender="x")), "s1", attach=False)
    node = lab.sites["s1"].node
    answers = [o for i in range(100) for o in node.on_datagram("198.51.100.7:9", data, lab.now + i * 0.01)
               if isinstance(o, Transmit)]
    assert len(answers) == 1 and len(answers[0].data) > 400          # one, with our announcement
    later = node.on_datagram("198.51.100.7:9", data, lab.now + 5.1)     # 5 s after the first, and a bit
    assert len([o for o in later if isinstance(o, Transmit)]) == 1
    assert node.rejected["unknown_sender"] >= 101


def test_a_site_that_left_and_comes_back_is_answered_at_once() -> None:
    """A new process of a site that left joins again: the seed still holds its old announcement, and must
    still attach its own to what it answers (the newcomer knows nobody), so that the join completes on its
    first round trip, without a "who are you?" round and a join retry."""
    lab = MeshLab(swim=FAST)
    ten(lab, 4)
    assert lab.when(lab.full_mesh, within=5.0) is not None
    lab.handle("s4", lab.sites["s4"].node.leave(lab.now))
    lab.kill("s4")
    assert lab.when(lambda: all("s4" not in lab.sites[n].peers for n in lab.live()), within=2.0) is not None
    lab.run_for(2.0)
    lab.add("s4", 4, seeds=["s1"])          # a new node: a new announcement, a higher sequence
    back = lab.when(lambda: len(lab.sites["s4"].peers) == 3, within=3.0)
    assert back is not None and back < FAST.join_interval, back
    assert "unknown_sender" not in lab.sites["s4"].node.rejected


def test_signatures_made_here_skip_their_check_and_change_nothing_else() -> None:
    """The simulator's shortcut (`SignedHere`): nodes that share one form the same mesh with the very same
    datagrams as nodes that check every signature, and an altered datagram is still refused."""
    memo = SignedHere()
    fast, plain = MeshLab(swim=FAST, signed_here=memo), MeshLab(swim=FAST)
    for lab in (fast, plain):
        ten(lab, 5)
        assert lab.when(lab.full_mesh, within=5.0) is not None
        lab.run_for(2.0)
    assert memo.vouched > 100
    assert fast.sent == plain.sent                  # byte for byte, at the same instants
    node = fast.sites["s1"].node
    good = next(d for _, src, dst, d in fast.sent if src == "s2" and dst == "s1")
    before = node.rejected["bad_signature"]
    for i in (len(good) - 70, len(good) - 1):       # the body's last byte, the signature's last
        data = bytearray(good)
        data[i] ^= 1
        node.on_datagram("s2", bytes(data), fast.now)
    assert node.rejected["bad_signature"] == before + 2


def test_signed_here_vouches_for_exactly_what_was_signed_with_that_key() -> None:
    memo = SignedHere(capacity=2)
    memo.made(b"A" * 32, b"message", b"s" * 64)
    assert memo.vouches(b"A" * 32, b"message", b"s" * 64)
    assert not memo.vouches(b"B" * 32, b"message", b"s" * 64)       # another sender's key
    assert not memo.vouches(b"A" * 32, b"messagE", b"s" * 64)       # other bytes
    assert not memo.vouches(b"A" * 32, b"message", b"t" * 64)       # another signature
    memo.made(b"A" * 32, b"two", b"2" * 64)
    memo.made(b"A" * 32, b"three", b"3" * 64)                       # the oldest is forgotten
    assert not memo.vouches(b"A" * 32, b"message", b"s" * 64)
    assert memo.vouches(b"A" * 32, b"two", b"2" * 64) and memo.vouched == 2
