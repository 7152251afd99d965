"""Graceful restart, the pure parts: what a starting agent adopts, recreates or removes of what an
earlier agent left (tunnels, map elements, rules), and the record that says how that state is numbered."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from patronus.agent import config as cfgmod
from patronus.agent.adopt import HostRecord, Numbering, TunnelAction, kept_maps, plan_tunnels
from patronus.agent.config import EndpointConfig, RemoteConfig
from patronus.agent.keys import generate_private_key, public_key
from patronus.agent.steering import (
    FALLBACK_POLICY_NO,
    FR_ACT_UNREACHABLE,
    RuleSpec,
    parse_map_elements,
    path_mark,
    route_keys,
    rule_specs,
    slot_mark,
)
from patronus.agent.wireguard import (
    FoundTunnel,
    TunnelSpec,
    WgConfig,
    WgPeer,
    WireGuardError,
    config_differences,
    parse_wg_config,
    reconfigure_argv,
)
from patronus.core.errors import ConfigError

pytestmark = pytest.mark.unit


def live(ifname: str, link: bool = True, process: bool = True) -> FoundTunnel:
    return FoundTunnel(ifname, link, process, None)


# --- tunnels -------------------------------------------------------------------------------------------

def test_plan_adopts_live_tunnels_recreates_dead_ones_creates_new_and_removes_unwanted() -> None:
    found = {"pt1p1": live("pt1p1"), "pt1p2": live("pt1p2", process=False), "pt1p3": live("pt1p3", link=False),
             "pt1p9": live("pt1p9")}
    plan = plan_tunnels({"pt1p1", "pt1p2", "pt1p3", "pt1p4"}, found, foreign=set())
    assert plan == {"pt1p1": TunnelAction.ADOPT, "pt1p2": TunnelAction.RECREATE, "pt1p3": TunnelAction.RECREATE,
                    "pt1p4": TunnelAction.CREATE, "pt1p9": TunnelAction.REMOVE}


def test_plan_of_a_fresh_host_creates_everything() -> None:
    assert plan_tunnels({"pt1p1", "pt1p2"}, {}, set()) == {"pt1p1": TunnelAction.CREATE,
                                                           "pt1p2": TunnelAction.CREATE}


def test_plan_refuses_to_touch_an_interface_that_is_not_ours() -> None:
    with pytest.raises(ConfigError) as info:
        plan_tunnels({"pt1p1", "pt1p2"}, {}, foreign={"pt1p2", "eth0"})
    assert [f for f, _ in info.value.errors] == ["tunnels.pt1p2"]
    assert "not this site's" in info.value.errors[0][1]


def spec(**over: Any) -> TunnelSpec:
    base: dict[str, Any] = dict(
        ifname="pt1p1", private_key=generate_private_key(), listen_port=40017, fwmark=0x5B000001,
        peer_public_key=public_key(generate_private_key()), peer_endpoint=("192.0.2.2", 40033),
        allowed_ips=("10.2.0.0/24",), keepalive_s=5, owner="patronus:s1")
    base.update(over)
    return TunnelSpec(**base)


def config_of(s: TunnelSpec, **over: Any) -> WgConfig:
    peer = WgPeer(s.peer_public_key, f"{s.peer_endpoint[0]}:{s.peer_endpoint[1]}", frozenset(s.allowed_ips),
                  s.keepalive_s)
    base: dict[str, Any] = dict(private_key=s.private_key, listen_port=s.listen_port, fwmark=s.fwmark, peers=(peer,))
    base.update(over)
    return WgConfig(**base)


def test_parse_wg_config_reads_the_interface_and_its_peers() -> None:
    s = spec()
    text = (f"{s.private_key}\tPUB\t40017\t0x5b000001\n"
            f"{s.peer_public_key}\t(none)\t192.0.2.2:40033\t10.2.0.0/24,fd02::/64\t1700000000\t9\t8\t5\n"
            f"OTHER\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")
    cfg = parse_wg_config("pt1p1", text)
    assert (cfg.private_key, cfg.listen_port, cfg.fwmark) == (s.private_key, 40017, 0x5B000001)
    assert cfg.peers == (WgPeer(s.peer_public_key, "192.0.2.2:40033", frozenset({"10.2.0.0/24", "fd02::/64"}), 5),
                         WgPeer("OTHER", None, frozenset(), 0))
    assert parse_wg_config("w", "K\tP\t0\toff\n").fwmark == 0
    with pytest.raises(WireGuardError, match="no interface line"):
        parse_wg_config("w", "")
    with pytest.raises(WireGuardError, match="interface line"):
        parse_wg_config("w", "K\tP\tport\toff\n")
    with pytest.raises(WireGuardError, match="line 2"):
        parse_wg_config("w", "K\tP\t1\toff\nshort\n")


def test_an_identical_tunnel_needs_no_change() -> None:
    s = spec()
    assert config_differences(s, config_of(s)) == []
    assert reconfigure_argv(s, config_of(s)) is None
    # allowed-ips compare as networks, not as text
    s2 = spec(allowed_ips=("10.2.0.0/24",))
    cfg = config_of(s2, peers=(WgPeer(s2.peer_public_key, "192.0.2.2:40033", frozenset({"10.2.0.0/24"}), 5),))
    assert reconfigure_argv(s2, cfg) is None


def test_reconfigure_names_only_what_differs() -> None:
    s = spec()
    # a roamed endpoint: only the peer's endpoint is set (the listen port is not: that would rebind)
    roamed = config_of(s, peers=(WgPeer(s.peer_public_key, "198.51.100.9:40033", frozenset(s.allowed_ips), 5),))
    assert reconfigure_argv(s, roamed) == ["wg", "set", "pt1p1", "peer", s.peer_public_key,
                                           "endpoint", "192.0.2.2:40033"]
    # another port and mark (the site file gave this name another path)
    moved = config_of(s, listen_port=40018, fwmark=0x5B000002)
    assert reconfigure_argv(s, moved) == ["wg", "set", "pt1p1", "listen-port", "40017", "fwmark", str(0x5B000001)]
    # another peer: the old one removed, the new one set in full; the key is read from stdin
    other = public_key(generate_private_key())
    foreign = config_of(s, private_key=generate_private_key(),
                        peers=(WgPeer(other, "192.0.2.9:1", frozenset({"10.9.0.0/24"}), 0),))
    argv = reconfigure_argv(s, foreign)
    assert argv == ["wg", "set", "pt1p1", "private-key", "/dev/stdin", "peer", other, "remove",
                    "peer", s.peer_public_key, "endpoint", "192.0.2.2:40033", "persistent-keepalive", "5",
                    "allowed-ips", "10.2.0.0/24"]
    assert s.private_key not in argv
    assert set(config_differences(s, foreign)) == {"private-key", "other peers", "peer"}
    # keepalive switched off
    quiet = spec(keepalive_s=0)
    assert reconfigure_argv(quiet, config_of(quiet, peers=(WgPeer(quiet.peer_public_key, "192.0.2.2:40033",
                                                                  frozenset(quiet.allowed_ips), 5),))) == \
        ["wg", "set", "pt1p1", "peer", quiet.peer_public_key, "persistent-keepalive", "off"]


# --- kernel maps ---------------------------------------------------------------------------------------

OLD = Numbering(remotes={"br": 1, "dc": 2}, policies={"voice": 1, "bulk": 2},
                paths={"br:isp1-isp1": 1, "br:isp2-isp1": 2, "dc:isp1-isp1": 3})


def test_kept_maps_keep_everything_when_nothing_changed() -> None:
    new_slot = {slot_mark(1, 1, 0): slot_mark(1, 1, 2), slot_mark(1, FALLBACK_POLICY_NO, 0): slot_mark(1, 255, 1),
                slot_mark(2, 2, 0): slot_mark(2, 2, 3)}
    slot_path = {slot_mark(1, 1, 1): path_mark(2), slot_mark(1, 1, 2): path_mark(2),
                 slot_mark(1, FALLBACK_POLICY_NO, 1): path_mark(1), slot_mark(2, 2, 3): path_mark(3)}
    assert kept_maps(OLD, OLD, new_slot, slot_path, FALLBACK_POLICY_NO) == (new_slot, slot_path)


def test_kept_maps_drop_what_now_means_something_else() -> None:
    # dc removed (its paths renumbered away), a path added that takes number 3, policy bulk renamed
    new = Numbering(remotes={"br": 1}, policies={"voice": 1, "bulk2": 2},
                    paths={"br:isp1-isp1": 1, "br:isp2-isp1": 2, "br:isp3-isp1": 3})
    new_slot = {slot_mark(1, 1, 0): slot_mark(1, 1, 2), slot_mark(1, 2, 0): slot_mark(1, 2, 1),
                slot_mark(2, 2, 0): slot_mark(2, 2, 3), slot_mark(1, 1, 5): slot_mark(1, 1, 3)}
    slot_path = {slot_mark(1, 1, 1): path_mark(2),            # kept: voice, br, paths 1 and 2 unchanged
                 slot_mark(1, 2, 1): path_mark(1),            # policy 2 is another policy now
                 slot_mark(2, 2, 3): path_mark(3),            # remote 2 is gone
                 slot_mark(1, 1, 3): path_mark(1),            # path 3 is another path now
                 slot_mark(1, 1, 1) + 0x200_0000: path_mark(1),   # not a slot mark at all
                 slot_mark(1, 1, 2): 0x12345678,              # not a path mark
                 slot_mark(1, 1, 2, gen=1): path_mark(2)}     # kept: the second generation of a slot
    new_slot[slot_mark(1, 1, 0, gen=1)] = slot_mark(1, 1, 2)  # a bucket is never a second generation
    keep_new, keep_path = kept_maps(OLD, new, new_slot, slot_path, FALLBACK_POLICY_NO)
    assert keep_new == {slot_mark(1, 1, 0): slot_mark(1, 1, 2)}
    assert keep_path == {slot_mark(1, 1, 1): path_mark(2), slot_mark(1, 1, 2, gen=1): path_mark(2)}


def test_kept_maps_keep_nothing_without_a_record() -> None:
    assert kept_maps(None, OLD, {slot_mark(1, 1, 0): slot_mark(1, 1, 1)},
                     {slot_mark(1, 1, 1): path_mark(1)}, FALLBACK_POLICY_NO) == ({}, {})


def test_map_elements_are_read_from_nft_output() -> None:
    text = ("table inet patronus_s10 {\n\tmap slot_path {\n\t\ttype mark : mark\n"
            "\t\telements = { 0x50010101 : 0x5a000001, 0x50010102 : 0x5a000002,\n"
            "\t\t\t     0x50010103 : 0x5a000001 }\n\t}\n}\n")
    assert parse_map_elements(text) == {0x50010101: 0x5A000001, 0x50010102: 0x5A000002, 0x50010103: 0x5A000001}
    assert parse_map_elements("table inet t {\n map new_slot {\n  type mark : mark\n }\n}\n") == {}


# --- the record ----------------------------------------------------------------------------------------

def test_record_round_trip_and_removal(tmp_path: Path) -> None:
    rec = HostRecord(site="hq", site_id=10, owner="patronus:s10", remotes={"br": 1}, policies={"voice": 1},
                     paths={"br:isp1-isp1": 1}, sysctls={"net/ipv4/ip_forward": "0"})
    rec.save(tmp_path)
    back = HostRecord.load(tmp_path)
    assert back is not None and back.written_at > 0
    assert (back.site, back.owner, back.remotes, back.policies, back.paths, back.sysctls) == \
        (rec.site, rec.owner, rec.remotes, rec.policies, rec.paths, rec.sysctls)
    assert HostRecord.remove(tmp_path) and not HostRecord.remove(tmp_path)
    assert HostRecord.load(tmp_path) is None


def test_record_keeps_the_learned_remotes_and_names_a_bad_one(tmp_path: Path) -> None:
    key = public_key(generate_private_key())
    br = RemoteConfig("br", 7, key, ("10.7.0.0/24", "fd00:7::/64"), (EndpointConfig("isp1", 0, "192.0.2.7"),
                                                                    EndpointConfig("lte", 1, "2001:db8::7")),
                      None, number=2, learned=True)
    rec = HostRecord(site="hq", site_id=10, owner="patronus:s10", remotes={"br": 2}, policies={},
                     paths={"br:isp1-isp1": 1}, learned=(br,))
    rec.save(tmp_path)
    back = HostRecord.load(tmp_path)
    assert back is not None and back.learned == (br,)
    doc = json.loads((tmp_path / "dataplane.json").read_text())
    doc["learned"][0].update(id=0, public_key="nope", prefixes=["10.7.0.0/33"])
    doc["learned"][0]["endpoints"][1]["address"] = 7
    (tmp_path / "dataplane.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        HostRecord.load(tmp_path)
    fields = [f.split("dataplane.json.", 1)[-1] for f, _ in info.value.errors]
    assert fields == ["learned[0].id", "learned[0].public_key", "learned[0].prefixes", "learned[0].endpoints[1]"]


def test_a_bad_record_names_every_field(tmp_path: Path) -> None:
    (tmp_path / "dataplane.json").write_text(json.dumps({"version": 1, "site": 3, "site_id": "x", "owner": "o",
                                                         "remotes": {"br": 0}, "policies": [], "paths": {},
                                                         "sysctls": {"k": 1}}))
    with pytest.raises(ConfigError) as info:
        HostRecord.load(tmp_path)
    fields = [f.rsplit(".", 1)[-1] for f, _ in info.value.errors]
    assert fields == ["site", "site_id", "remotes", "policies", "sysctls"]
    (tmp_path / "dataplane.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        HostRecord.load(tmp_path)


# --- rules and routes ----------------------------------------------------------------------------------

def site_cfg(tmp_path: Path, remotes: int = 1) -> cfgmod.SiteConfig:
    doc = {"version": 1, "site": {"name": "hq", "id": 1, "lan_prefixes": ["10.1.0.0/24"]},
           "uplinks": [{"name": "isp1", "interface": "eth1", "address": "192.0.2.1", "gateway": "192.0.2.254"},
                       {"name": "isp2", "interface": "eth2", "address": "2001:db8::1"}],
           "remotes": [{"name": f"r{i}", "id": 2 + i, "public_key": public_key(generate_private_key()),
                        "prefixes": [f"10.{2 + i}.0.0/24", f"fd0{i}::/64"],
                        "endpoints": [{"uplink": "isp1", "address": f"192.0.2.{2 + i}"}]} for i in range(remotes)],
           "probe": {"secret": "0123456789abcdef0123"}, "state_dir": str(tmp_path)}
    return cfgmod.from_dict(doc)


def test_rule_specs_cover_uplinks_paths_and_unreachables(tmp_path: Path) -> None:
    cfg = site_cfg(tmp_path)
    rules = rule_specs(cfg)
    prios = sorted((r.family, r.priority) for r in rules)
    v4, v6 = socket.AF_INET, socket.AF_INET6
    assert prios == sorted([(v4, 7300), (v4, 7310), (v6, 7301), (v6, 7311),          # uplink mark and source
                            (v4, 7001), (v6, 7001), (v4, 7002), (v6, 7002),          # 2 paths, both families
                            (v4, 7900), (v6, 7901)])                                 # no leak to the underlay
    src6 = next(r for r in rules if r.priority == 7311)
    assert (src6.src, src6.src_len, src6.table) == ("2001:db8::1", 128, 7051)
    unreach = next(r for r in rules if r.priority == 7900)
    assert unreach.action == FR_ACT_UNREACHABLE and "table" not in unreach.kwargs()
    assert unreach.kwargs()["action"] == "unreachable" and (unreach.dst, unreach.dst_len) == ("10.2.0.0", 24)
    assert route_keys(cfg) == {(v4, 7050, None, 0), (v6, 7051, None, 0), (v4, 7101, "10.2.0.0", 24),
                               (v6, 7101, "fd00::", 64), (v4, 7102, "10.2.0.0", 24), (v6, 7102, "fd00::", 64)}


class _Msg(dict[str, Any]):
    def __init__(self, attrs: dict[str, Any], **fields: Any) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def test_rules_read_back_from_the_kernel_equal_the_planned_ones(tmp_path: Path) -> None:
    """The fields as pyroute2 decodes them (as seen in a namespace): a table above 255 comes in
    FRA_TABLE with 252 in the header, an unreachable rule has table 0."""
    cfg = site_cfg(tmp_path)
    want = set(rule_specs(cfg))
    v4 = socket.AF_INET
    seen = [
        RuleSpec.from_kernel(v4, _Msg({"FRA_PRIORITY": 7001, "FRA_FWMARK": 0x5A000001, "FRA_FWMASK": 0xFFFFFFFF,
                                       "FRA_TABLE": 7101}, action=1, table=252, src_len=0, dst_len=0)),
        RuleSpec.from_kernel(v4, _Msg({"FRA_PRIORITY": 7310, "FRA_SRC": "192.0.2.1", "FRA_TABLE": 7050},
                                      action=1, table=252, src_len=32, dst_len=0)),
        RuleSpec.from_kernel(v4, _Msg({"FRA_PRIORITY": 7900, "FRA_DST": "10.2.0.0", "FRA_TABLE": 0},
                                      action=7, table=0, src_len=0, dst_len=24)),
    ]
    assert all(r in want for r in seen), [r for r in seen if r not in want]
    stale = RuleSpec.from_kernel(v4, _Msg({"FRA_PRIORITY": 7900, "FRA_DST": "10.9.0.0", "FRA_TABLE": 0},
                                          action=7, table=0, src_len=0, dst_len=24))
    assert stale not in want          # a remote prefix the site file no longer has: pruned


def test_the_systemd_unit_stops_gracefully_and_keeps_what_the_next_agent_adopts() -> None:
    unit = (Path(__file__).parents[2] / "patronus" / "deploy" / "patronus-agent@.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["KillMode"] == "process"                 # wireguard-go and the reflector survive a stop
    assert settings["RuntimeDirectoryPreserve"] == "yes"     # their pid files and the dataplane record too
    assert "ExecStopPost" not in settings                    # no cleanup after every stop or crash
    assert "--cleanup" not in settings["ExecStart"]
