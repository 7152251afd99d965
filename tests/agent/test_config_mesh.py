"""The site file's `mesh:` section, learned remotes numbered stably (`config.with_remotes`), the mesh driver's
announcement-to-remote mapping and identity loading (`meshdrive`), the reflector's peers reload on SIGHUP."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from emulation.org import Org as DiskOrg
from patronus.agent import config as cfgmod
from patronus.agent import meshdrive
from patronus.agent.config import EndpointConfig, RemoteConfig, SiteConfig
from patronus.agent.keys import generate_private_key, public_key
from patronus.agent.reflector import Reflector, _reload
from patronus.core import identity as ident
from patronus.core.announce import Announcement, Endpoint, decode_announcement, sign_announcement
from patronus.core.errors import ConfigError
from patronus.core.mesh import Kind
from patronus.core.meshnode import kept_for
from patronus.core.swim import SwimConfig
from tests.agent.test_config import site
from tests.unit.meshlab import T0, Org, prefix_of, wg_key

pytestmark = pytest.mark.unit
MESH = {"certificate": "/etc/patronus/hq.crt", "signing_key": "/etc/patronus/hq.signing.pem",
        "root": "/etc/patronus/root.crt"}


def with_mesh(**mesh: Any) -> dict[str, Any]:
    d = site("hq", 3, "br", 7, 1, 2)
    d["mesh"] = {**MESH, **mesh}
    return d


def fields_of(d: dict[str, Any]) -> set[str]:
    with pytest.raises(ConfigError) as ei:
        cfgmod.from_dict(d)
    return {f for f, _ in ei.value.errors}


# --------------------------------------------------------------------------------------------- mesh: section

def test_mesh_section_defaults() -> None:
    assert cfgmod.from_dict(site("hq", 3, "br", 7, 1, 2)).mesh is None
    m = cfgmod.from_dict(with_mesh()).mesh
    assert m is not None
    assert (m.certificate, m.signing_key, m.root) == (Path(MESH["certificate"]), Path(MESH["signing_key"]),
                                                      Path(MESH["root"]))
    assert m.port == cfgmod.MESH_PORT == 51900 and m.seeds == () and m.revocations is None and m.region is None
    assert m.topology.kind is Kind.FULL_MESH
    assert m.swim == SwimConfig()


def test_mesh_timers_and_seeds_in_every_form() -> None:
    m = cfgmod.from_dict(with_mesh(port=6000, region="eu", timers={"probe_interval": "300ms", "probe_timeout": "0.1s"},
                                   seeds=["10.0.0.1:51900", "10.0.0.2", "[FD00::1]:5", "fd00::2"])).mesh
    assert m is not None and m.port == 6000 and m.region == "eu"
    assert m.seeds == (("10.0.0.1", 51900), ("10.0.0.2", 6000), ("fd00::1", 5), ("fd00::2", 6000))
    assert (m.swim.probe_interval, m.swim.probe_timeout, m.swim.gossip_interval) == (0.3, 0.1, 0.15)
    assert m.swim.suspicion_mult == SwimConfig().suspicion_mult


@pytest.mark.parametrize("bad", ["nope", "10.0.0.1:0", "10.0.0.1:65536", "[fd00::1", "[fd00::1]x", "10.0.0.1:x",
                                 "10.0.0.1:²", 51900, None, "a" * 65])
def test_a_bad_seed_is_named_by_its_index(bad: object) -> None:
    assert fields_of(with_mesh(seeds=["10.0.0.1:51900", bad])) == {"mesh.seeds[1]"}


@pytest.mark.parametrize(("mesh", "want"), [
    ({"port": 0}, "mesh.port"),
    ({"port": 65536}, "mesh.port"),
    ({"port": "51900/udp"}, "mesh.port"),
    ({"timers": {"probe_timeout": "1s"}}, "mesh.timers.probe_timeout"),
    ({"timers": {"probe_interval": "2s", "probe_timeout": "2s"}}, "mesh.timers.probe_timeout"),
    ({"topology": {"kind": "ring"}}, "mesh.topology.kind"),
    ({"colour": "blue"}, "mesh.colour"),
    ({"seeds": "10.0.0.1"}, "mesh.seeds"),
])
def test_a_bad_mesh_setting_is_named(mesh: dict[str, Any], want: str) -> None:
    assert fields_of(with_mesh(**mesh)) == {want}


@pytest.mark.parametrize("missing", ["certificate", "signing_key", "root"])
def test_a_missing_mesh_file_is_named(missing: str) -> None:
    d = with_mesh()
    del d["mesh"][missing]
    assert fields_of(d) == {f"mesh.{missing}"}


def test_a_mesh_site_needs_the_probe_secret_even_without_remotes() -> None:
    d = with_mesh()
    del d["probe"], d["remotes"]
    assert fields_of(d) == {"probe.secret"}
    d["probe"] = {"auth": False}
    assert cfgmod.from_dict(d).mesh is not None
    d["probe"] = {"secret": "0123456789abcdef0123"}
    assert cfgmod.from_dict(d).probe_secret == b"0123456789abcdef0123"


# --------------------------------------------------------------------------------------------- with_remotes

def remote(name: str, sid: int, octet: int, eps: int = 2) -> RemoteConfig:
    return RemoteConfig(name=name, id=sid, public_key=public_key(generate_private_key()),
                        prefixes=(f"10.{octet}.0.0/24",),
                        endpoints=tuple(EndpointConfig(f"isp{j + 1}", j, f"203.0.113.{octet + j}") for j in range(eps)),
                        probe_secret=None, learned=True)


@pytest.fixture
def base() -> SiteConfig:
    d = site("hq", 3, "br", 7, 1, 2)
    d["remotes"].append({"name": "dc", "id": 9, "public_key": public_key(generate_private_key()),
                         "prefixes": ["10.9.0.0/24"], "endpoints": [{"uplink": "isp1", "address": "192.0.2.9"}]})
    return cfgmod.from_dict(d)


def numbers(cfg: SiteConfig) -> dict[str, tuple[int, str]]:
    return {p.id: (p.number, p.ifname) for p in cfg.paths}


def test_learned_remotes_take_the_lowest_free_numbers_and_keep_them(base: SiteConfig) -> None:
    assert [(r.name, r.number, r.learned) for r in base.remotes] == [("br", 1, False), ("dc", 2, False)]
    one = cfgmod.with_remotes(base, [remote("zz", 20, 20)])
    assert [(r.name, r.number, r.learned) for r in one.remotes] == [("br", 1, False), ("dc", 2, False), ("zz", 3, True)]
    assert numbers(one) == {**numbers(base), **{f"zz:{u}-{e}": (n, f"pt3p{n}") for n, (u, e) in enumerate(
        [("isp1", "isp1"), ("isp1", "isp2"), ("isp2", "isp1"), ("isp2", "isp2")], start=7)}}
    two = cfgmod.with_remotes(one, [remote("aa", 15, 15), remote("zz", 20, 20)])     # sorts before every other
    assert {r.name: r.number for r in two.remotes} == {"br": 1, "dc": 2, "zz": 3, "aa": 4}
    assert {k: v for k, v in numbers(two).items() if k in numbers(one)} == numbers(one)
    assert sorted(n for k, (n, _) in numbers(two).items() if k.startswith("aa:")) == [11, 12, 13, 14]
    for p in two.paths:           # the ports of `_path_plan`, whatever the path's number
        rm = two.remote(p.remote)
        assert p.listen_port == two.wg_port_base + rm.id * 16 + p.uplink.number * 4 + p.endpoint.uplink_no
        assert p.peer_port == two.wg_port_base + two.id * 16 + p.endpoint.uplink_no * 4 + p.uplink.number
    gone = cfgmod.with_remotes(two, [remote("aa", 15, 15)])
    assert {r.name: r.number for r in gone.remotes} == {"br": 1, "dc": 2, "aa": 4}
    assert {k: v for k, v in numbers(two).items() if not k.startswith("zz:")} == numbers(gone)   # no renumbering
    again = cfgmod.with_remotes(gone, [remote("aa", 15, 15), remote("mm", 30, 30)])
    assert again.remote("mm").number == 3
    assert sorted(n for k, (n, _) in numbers(again).items() if k.startswith("mm:")) == [7, 8, 9, 10]
    assert {k: v for k, v in numbers(again).items() if not k.startswith("mm:")} == numbers(gone)


def test_learned_remotes_take_an_earlier_agents_numbers_where_they_are_free(base: SiteConfig) -> None:
    """A restarted agent numbers the remotes it keeps as its predecessor did (its dataplane record), so
    their tunnels (named by path number) and marks are adopted as they are."""
    before = cfgmod.with_remotes(base, [remote("aa", 15, 15), remote("zz", 20, 20)])
    gone = cfgmod.with_remotes(before, [remote("zz", 20, 20)])            # aa left: zz keeps 4 and its paths
    record = ({r.name: r.number for r in gone.remotes}, {str(p.id): p.number for p in gone.paths})
    fresh = cfgmod.with_remotes(base, [remote("zz", 20, 20)])
    assert fresh.remote("zz").number == 3 and numbers(fresh) != numbers(gone)     # lowest free: renumbered
    kept = cfgmod.with_remotes(base, [remote("zz", 20, 20)], numbers=record)
    assert kept.remote("zz").number == gone.remote("zz").number and numbers(kept) == numbers(gone)
    # a number the site file has taken since is not taken: the remote gets a free one
    clash = ({"zz": 1}, {"zz:isp1-isp1": 1})
    moved = cfgmod.with_remotes(base, [remote("zz", 20, 20)], numbers=clash)
    assert moved.remote("zz").number == 3 and numbers(moved)["zz:isp1-isp1"][0] != 1
    assert numbers(moved)["br:isp1-isp1"] == numbers(base)["br:isp1-isp1"]


@pytest.mark.parametrize(("clash", "field"), [
    (remote("hq", 40, 40), "learned[0]"),          # this site's name
    (remote("xx", 3, 40), "learned[0]"),           # this site's id
    (remote("br", 40, 40), "learned[0]"),          # a static remote's name
    (remote("xx", 9, 40), "learned[0]"),           # a static remote's id
    (remote("xx", 40, 1), "remotes[3].prefixes[0]"),   # 10.1.0.0/24: this site's LAN
])
def test_a_clashing_learned_remote_is_refused(base: SiteConfig, clash: RemoteConfig, field: str) -> None:
    one = cfgmod.with_remotes(base, [remote("zz", 20, 20)])
    with pytest.raises(ConfigError) as ei:
        cfgmod.with_remotes(one, [remote("zz", 20, 20), clash])
    assert {f for f, _ in ei.value.errors} == {field.replace("learned[0]", "learned[1]")}
    assert [r.name for r in one.remotes] == ["br", "dc", "zz"] and len(one.paths) == 10


# --------------------------------------------------------------------------------------------- meshdrive

def announcement(org: Org, name: str, sid: int, uplinks: list[tuple[str, str]]) -> Announcement:
    """`name`'s announcement as its `MeshDriver` makes it: one endpoint per uplink, in the site file's order."""
    me = org.identity(name, sid)
    data = sign_announcement(me.signing_key, me.certificate, wg_key=wg_key(sid, 0),
                             endpoints=[Endpoint(u, ipaddress.ip_address(a), 51900) for u, a in uplinks],
                             capabilities=[], prefixes=[prefix_of(sid)], timestamp_ms=int(T0 * 1000), sequence=1)
    return decode_announcement(data)


def test_learned_remote_maps_an_announcement() -> None:
    a = announcement(Org(), "br", 7, [("isp1", "192.0.2.7"), ("isp2", "2001:db8::7")])
    r = meshdrive.learned_remote(a)
    assert (r.name, r.id, r.prefixes, r.probe_secret, r.learned) == ("br", 7, ("10.0.7.0/24",), None, True)
    assert r.public_key == "BwABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4="
    assert r.endpoints == (EndpointConfig("isp1", 0, "192.0.2.7"), EndpointConfig("isp2", 1, "2001:db8::7"))


def mesh_site(name: str, sid: int, uplinks: list[str], octet: int) -> dict[str, Any]:
    return {"version": 1, "site": {"name": name, "id": sid, "lan_prefixes": [str(prefix_of(sid))]},
            "uplinks": [{"name": u, "interface": f"eth{i + 1}", "address": f"192.0.{i}.{octet}"}
                        for i, u in enumerate(uplinks)],
            "probe": {"secret": "0123456789abcdef0123"}}


@pytest.mark.parametrize("uplinks", [["isp1", "isp2"], ["wan", "lte"]])
def test_two_discovering_sites_derive_matching_tunnel_ports(uplinks: list[str]) -> None:
    """As `test_both_ends_derive_matching_tunnel_ports_and_unique_names`, for learned remotes: uplink
    numbers are positions in the site file's `uplinks`, whatever the uplinks' names."""
    org = Org()
    hq, br = cfgmod.from_dict(mesh_site("hq", 3, uplinks, 3)), cfgmod.from_dict(mesh_site("br", 7, ["a", "b"], 7))
    ann = {c.name: announcement(org, c.name, c.id, [(u.name, u.address) for u in c.uplinks]) for c in (hq, br)}
    hq2 = cfgmod.with_remotes(hq, [meshdrive.learned_remote(ann["br"])])
    br2 = cfgmod.with_remotes(br, [meshdrive.learned_remote(ann["hq"])])
    assert len(hq2.paths) == len(br2.paths) == 4
    for p in hq2.paths:
        mirror = br2.path(f"hq:{p.endpoint.uplink}-{p.uplink.name}")
        assert p.endpoint.address == mirror.uplink.address
        assert (p.peer_port, p.listen_port) == (mirror.listen_port, mirror.peer_port), (p, mirror)


@pytest.fixture
def disk(tmp_path: Path) -> tuple[DiskOrg, SiteConfig, str]:
    org = DiskOrg.create(tmp_path / "org")
    wg = public_key(generate_private_key())
    org.site("hq", 3, wg, ["10.1.0.0/24"])
    org.site("br", 7, public_key(generate_private_key()), ["10.2.0.0/24"])
    d = site("hq", 3, "br", 7, 1, 2)
    d["mesh"] = org.mesh_section("hq", revocations=True)
    return org, cfgmod.from_dict(d), wg


def test_load_identity_reads_the_sites_files(disk: tuple[DiskOrg, SiteConfig, str]) -> None:
    org, cfg, wg = disk
    assert cfg.mesh is not None
    me, rl = meshdrive.load_identity(cfg, cfg.mesh, wg)
    cert = ident.decode(me.certificate)
    assert isinstance(cert, ident.Certificate)
    assert (cert.site_name, cert.site_id, base64.b64encode(cert.wg_public_key).decode()) == ("hq", 3, wg)
    assert me.root.is_ca and me.certificate == org.sites["hq"].certificate.read_bytes()
    assert rl == org.revocations.read_bytes()
    assert meshdrive.load_identity(cfg, dataclasses.replace(cfg.mesh, revocations=None), wg)[1] is None


@pytest.mark.parametrize(("change", "field"), [
    ({"certificate": "br.crt"}, "mesh.certificate"),                # another site's certificate
    ({"wg": "other"}, "mesh.certificate"),                          # a WireGuard key not the certificate's
    ({"signing_key": "br.signing.pem"}, "mesh.signing_key"),        # a signing key not the certificate's
    ({"root": "hq.crt"}, "mesh.root"),                              # a site certificate as the root
    ({"certificate": "missing.crt"}, "mesh.certificate"),
    ({"signing_key": "missing.pem"}, "mesh.signing_key"),
    ({"root": "missing.crt"}, "mesh.root"),
    ({"root": "hq.signing.pem"}, "mesh.root"),                      # not a certificate at all
])
def test_load_identity_refuses_files_not_this_sites(disk: tuple[DiskOrg, SiteConfig, str], change: dict[str, str],
                                                    field: str) -> None:
    org, cfg, wg = disk
    assert cfg.mesh is not None
    files = {k: org.directory / v for k, v in change.items() if k != "wg"}
    settings = dataclasses.replace(cfg.mesh, **files)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as ei:
        meshdrive.load_identity(cfg, settings, public_key(generate_private_key()) if "wg" in change else wg)
    assert [f for f, _ in ei.value.errors] == [field]


# --------------------------------------------------------------------------------------------- reflector

def test_reflector_reload_replaces_the_peers_and_keeps_them_on_a_bad_file(tmp_path: Path) -> None:
    refl = Reflector({"192.0.2.1": b"\x01" * 4})
    old = copy.deepcopy(refl.peers)
    peers = tmp_path / "peers.json"
    _reload(refl, str(tmp_path / "missing.json"))
    _reload(refl, None)
    assert refl.peers == old
    for bad in ("{not json", "[]", "{}", '{"peers": ["192.0.2.2"]}', '{"peers": {"192.0.2.2": "zz"}}',
                '{"peers": {"192.0.2.2": 5}}', ""):
        peers.write_text(bad)
        _reload(refl, str(peers))
        assert refl.peers == old, bad
    peers.write_text(json.dumps({"peers": {"192.0.2.2": "00ff", "2001:db8::3": None}}))
    _reload(refl, str(peers))
    assert refl.peers == {"192.0.2.2": b"\x00\xff", "2001:db8::3": None}
    peers.write_text(json.dumps({"peers": {}}))
    _reload(refl, str(peers))
    assert refl.peers == {}


# --------------------------------------------------------------------------------------------- reconciliation

class _FlakyLearned:
    """`Learned` whose first `apply` the host refuses (as wireguard did with a port held: EADDRINUSE)."""

    def __init__(self, fail: int) -> None:
        self.fail, self.calls = fail, 0
        self.lock = asyncio.Lock()
        self.done = asyncio.Event()

    async def apply(self, want: list[RemoteConfig]) -> None:
        self.calls += 1
        if self.calls <= self.fail:
            raise OSError(98, "Address already in use")
        self.applied = [r.name for r in want]
        self.done.set()


def test_a_refused_reconfiguration_is_tried_again_without_a_membership_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meshdrive, "RETRY_MIN_S", 0.01)
    ny = announcement(Org(), "ny", 9, [("isp1", "192.0.2.9")])

    async def run() -> tuple[meshdrive.MeshDriver, _FlakyLearned]:
        learned = _FlakyLearned(fail=2)
        agent = type("A", (), {"learned": learned, "cfg": cfgmod.from_dict(with_mesh())})()
        drv = meshdrive.MeshDriver(agent, cfgmod.from_dict(with_mesh()).mesh, None, None)  # type: ignore[arg-type]
        drv._want("ny", meshdrive.learned_remote(ny))         # one change, and no other
        task = asyncio.get_running_loop().create_task(drv._reconcile())
        try:
            await asyncio.wait_for(learned.done.wait(), 5)
        finally:
            task.cancel()
        return drv, learned
    drv, learned = asyncio.run(run())
    assert learned.calls == 3 and learned.applied == ["ny"]
    assert drv.apply_failures == 2 and drv.settled.is_set()


def _kept_driver(kept: list[RemoteConfig], swim: SwimConfig) -> meshdrive.MeshDriver:
    cfg = cfgmod.with_remotes(cfgmod.from_dict(with_mesh()), kept)
    agent = type("A", (), {"cfg": cfg, "learned": _FlakyLearned(fail=0)})()
    drv = meshdrive.MeshDriver(agent, dataclasses.replace(cfg.mesh, swim=swim), None, None)  # type: ignore[arg-type]
    drv.want = {r.name: r for r in cfg.remotes if r.learned}      # what `start` does, without sockets
    drv.kept = set(drv.want)
    return drv


def test_a_kept_remote_found_again_changes_nothing_and_one_not_found_goes() -> None:
    ny = meshdrive.learned_remote(announcement(Org(), "ny", 9, [("isp1", "192.0.2.9")]))
    la = meshdrive.learned_remote(announcement(Org(), "la", 11, [("isp1", "192.0.2.11")]))
    drv = _kept_driver([ny, la], SwimConfig())
    drv._want("ny", ny)                       # the node found ny again: the same remote, no reconfiguration
    assert not drv._changed.is_set() and drv.kept == {"la"}
    drv._expire_kept()                        # a sync period later, la was not found: it goes
    assert drv._changed.is_set() and set(drv.want) == {"ny"} and not drv.kept
    assert kept_for(SwimConfig()) == 30.0
    assert kept_for(SwimConfig(sync_interval=0, join_interval=2.0, join_max_backoff=30)) == 6.0
    moved = dataclasses.replace(ny, endpoints=(EndpointConfig("isp1", 0, "192.0.2.99"),))
    drv._want("ny", moved)                    # changed while we were away: reconfigured
    assert drv.want["ny"] == moved and drv._changed.is_set()
