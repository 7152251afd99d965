"""The site file: every error with its path, derived values that both ends agree on, the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from patronus.agent import config as cfgmod
from patronus.agent.keys import generate_private_key, public_key
from patronus.agent.steering import Steering, match_expressions
from patronus.cli import app
from patronus.core.errors import ConfigError
from patronus.core.policy import MatchRules

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).parents[2] / "patronus" / "deploy" / "site.example.yaml"


def site(name: str, sid: int, other: str, oid: int, octet: int, other_octet: int) -> dict[str, Any]:
    return {
        "version": 1,
        "site": {"name": name, "id": sid, "lan_prefixes": [f"10.{octet}.0.0/24"]},
        "uplinks": [{"name": "isp1", "interface": "eth1", "address": f"192.0.2.{octet}"},
                    {"name": "isp2", "interface": "eth2", "address": f"198.51.100.{octet}"}],
        "remotes": [{"name": other, "id": oid, "public_key": public_key(generate_private_key()),
                     "prefixes": [f"10.{other_octet}.0.0/24"],
                     "endpoints": [{"uplink": "isp1", "address": f"192.0.2.{other_octet}"},
                                   {"uplink": "isp2", "address": f"198.51.100.{other_octet}"}]}],
        "probe": {"secret": "0123456789abcdef0123"},
    }


def test_the_shipped_example_is_valid(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    secret = tmp_path / "probe.secret"
    secret.write_text("a shared secret of enough length\n")
    cfg = cfgmod.parse(text.replace("/etc/patronus/probe.secret", str(secret)))
    assert cfg.name == "hq" and len(cfg.paths) == 4
    assert cfg.monitor.name == "fast"
    assert {p.id for p in cfg.paths} == {"branch:isp1-isp1", "branch:isp1-isp2", "branch:lte-isp1", "branch:lte-isp2"}


def test_both_ends_derive_matching_tunnel_ports_and_unique_names() -> None:
    hq = cfgmod.from_dict(site("hq", 3, "br", 7, 1, 2))
    br = cfgmod.from_dict(site("br", 7, "hq", 3, 2, 1))
    for p in hq.paths:
        mirror = br.path(f"hq:{p.endpoint.uplink}-{p.uplink.name}")
        assert p.peer_port == mirror.listen_port and mirror.peer_port == p.listen_port
        assert p.endpoint.address == mirror.uplink.address
    names = [p.ifname for p in hq.paths] + [p.ifname for p in br.paths]
    assert len(set(names)) == len(names) and all(len(n) <= 15 for n in names)
    assert len({p.listen_port for p in hq.paths}) == len(hq.paths)


def test_every_error_is_listed_with_its_path() -> None:
    d = site("hq", 3, "br", 7, 1, 2)
    d["site"]["name"] = "HQ!"
    d["uplinks"][1]["address"] = "not-an-ip"
    d["uplinks"][1]["name"] = "isp1"
    d["remotes"][0]["public_key"] = "short"
    d["remotes"][0]["prefixes"] = ["10.1.0.0/16"]        # overlaps our LAN
    d["monitor"] = {"interval": "1ms"}
    d["steering"] = "teleport"
    d["colour"] = "blue"
    with pytest.raises(ConfigError) as ei:
        cfgmod.from_dict(d)
    fields = {f for f, _ in ei.value.errors}
    for want in ("site.name", "uplinks[1].address", "uplinks[1].name", "remotes[0].public_key",
                 "remotes[0].prefixes[0]", "steering", "colour"):
        assert want in fields, (want, ei.value.errors)
    assert any(f.startswith("monitor") for f in fields)


def test_missing_secret_and_bpf_steering_are_explained() -> None:
    d = site("hq", 3, "br", 7, 1, 2)
    del d["probe"]
    d["steering"] = "bpf"
    with pytest.raises(ConfigError) as ei:
        cfgmod.from_dict(d)
    msgs = dict(ei.value.errors)
    assert "shared secret" in msgs["probe.secret"]
    assert "not built yet" in msgs["steering"]


def test_policies_compile_to_nft_rules() -> None:
    assert match_expressions(MatchRules.from_dict({"protocol": "udp", "dst_ports": "5060-5061"}, "m")) == \
        ["meta l4proto 17 th dport 5060-5061"]
    both = match_expressions(MatchRules.from_dict({"dscp": [46]}, "m"))
    assert both == ["ip dscp { 46 }", "ip6 dscp { 46 }"]
    assert match_expressions(MatchRules.from_dict({"app_class": "voip"}, "m")) is None   # needs DPI
    cfg = cfgmod.from_dict(site("hq", 3, "br", 7, 1, 2))
    text = Steering(cfg).ruleset([(1, p) for p in cfg.policies[:1]])
    assert "table inet patronus_s3" in text and "map slot_path" in text and "jump classify" in text


def test_cli_validate(tmp_path: Path) -> None:
    good = tmp_path / "hq.yaml"
    good.write_text(yaml.safe_dump(site("hq", 3, "br", 7, 1, 2)))
    r = CliRunner().invoke(app, ["validate", str(good)])
    assert r.exit_code == 0, r.output
    assert "4 path(s)" in r.output
    bad = tmp_path / "bad.yaml"
    d = site("hq", 3, "br", 7, 1, 2)
    d["uplinks"][0]["address"] = "nope"
    d["api"] = {"listen": "everywhere"}
    bad.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(app, ["validate", str(bad)])
    assert r.exit_code == 2
    assert "uplinks[0].address" in r.output and "api.listen" in r.output
    r = CliRunner().invoke(app, ["validate", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "cannot read" in r.output


def test_agent_refuses_an_invalid_site_file_before_touching_anything(tmp_path: Path) -> None:
    d = site("hq", 3, "br", 7, 1, 2)
    d["uplinks"][0]["interface"] = "a-name-far-too-long-for-linux"
    d["state_dir"] = str(tmp_path / "state")
    d["database"] = str(tmp_path / "db" / "hq.db")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(app, ["agent", "--config", str(bad)])
    assert r.exit_code == 2
    assert "uplinks[0].interface" in r.output
    assert not (tmp_path / "state").exists() and not (tmp_path / "db").exists()


# issue 17's reproducers, through the command a user runs: a reason and exit 2, never a traceback
@pytest.mark.parametrize("text", [
    "name: hq\x1b\n", b"\xff\xfename: hq\n", "[" * 496 + "]" * 496, "name: " + "9" * 4400 + "\n",
    "name: hq\nmonitor: {profile: [fast]}\n", 'name: hq\nprobe: {secret_file: "a\\0b"}\n',
    "name: hq\napi: {listen: '127.0.0.1:8_470'}\n", "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
])
def test_cli_validate_names_the_problem_of_hostile_input(tmp_path: Path, text: str | bytes) -> None:
    f = tmp_path / "site.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    r = CliRunner().invoke(app, ["validate", str(f)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.output.strip(), "no reason given"
