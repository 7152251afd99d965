"""Unit tests of `patronus doctor` (patronus.agent.doctor): it runs, reports every check, cleans up after itself."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import typer
from pyroute2 import netns
from typer.testing import CliRunner

from patronus.agent import doctor
from patronus.agent.cli_tools import doctor as doctor_cmd
from patronus.agent.doctor import NETNS_PREFIX, Check, agent_ready, as_json, render, run_checks

pytestmark = pytest.mark.unit

NAMES = {
    "root", "wireguard-kernel", "wireguard-userspace", "nftables", "conntrack", "tc-netem", "bpf", "bcc",
    "iperf3", "policy-routing",
}  # fmt: skip


def our_namespaces() -> list[str]:
    return [n for n in netns.listnetns() if n.startswith(f"{NETNS_PREFIX}{os.getpid()}-")]


@pytest.fixture(scope="module")
def checks() -> list[Check]:
    before = our_namespaces()
    result = run_checks()
    assert our_namespaces() == before == []  # the probe namespace is gone again
    return result


def test_every_check_reports(checks: list[Check]) -> None:
    assert len(checks) == len(NAMES)
    assert {c.name for c in checks} == NAMES
    for c in checks:
        assert isinstance(c.ok, bool)
        assert c.detail and c.needed_for
        assert "check crashed" not in c.detail, c


def test_root_check_tells_the_truth(checks: list[Check]) -> None:
    root = next(c for c in checks if c.name == "root")
    assert root.ok is (os.geteuid() == 0)


def test_netem_check_reports_a_result_and_leaves_no_namespace(checks: list[Check]) -> None:
    netem = next(c for c in checks if c.name == "tc-netem")
    if not netem.ok:
        if os.geteuid() == 0:
            assert "sch_netem" in netem.detail or "netem qdisc failed" in netem.detail
        else:
            assert "could not probe" in netem.detail or "failed" in netem.detail
    # And again, explicitly: no namespace of ours outlives a run (the fixture checked one run already).
    assert not doctor._check_netem(None, "no namespace").ok  # the no-namespace branch reports, never raises
    assert our_namespaces() == []


def test_netem_probe_namespace_is_removed_even_when_a_probe_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ns: str | None, why: str) -> Check:
        assert ns is None or ns in netns.listnetns()  # the namespace exists while probes run
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(doctor, "_check_netem", boom)
    result = run_checks()
    netem = next(c for c in result if c.name == "tc-netem")
    assert not netem.ok and "probe exploded" in netem.detail
    assert our_namespaces() == []


def test_wireguard_checks_agree_with_the_tools(checks: list[Check]) -> None:
    userspace = next(c for c in checks if c.name == "wireguard-userspace")
    tools = shutil.which("wireguard-go") is not None and shutil.which("wg") is not None
    assert userspace.ok is (tools and Path("/dev/net/tun").exists())
    kernel = next(c for c in checks if c.name == "wireguard-kernel")
    if Path("/sys/module/wireguard").exists():
        assert kernel.ok


def test_agent_ready_needs_root_nftables_and_one_wireguard_backend() -> None:
    def cs(**ok: bool) -> list[Check]:
        return [Check(name.replace("_", "-"), v, "d", "n") for name, v in ok.items()]

    base = {"root": True, "nftables": True, "wireguard_kernel": False, "wireguard_userspace": True}
    assert agent_ready(cs(**base))
    assert agent_ready(cs(**{**base, "wireguard_kernel": True, "wireguard_userspace": False}))
    assert not agent_ready(cs(**{**base, "wireguard_userspace": False}))
    assert not agent_ready(cs(**{**base, "root": False}))
    assert not agent_ready(cs(**{**base, "nftables": False}))
    assert not agent_ready(cs(root=True, nftables=True))
    assert agent_ready(cs(**base, tc_netem=False, bcc=False))  # optional checks do not matter


def test_render_and_json(checks: list[Check]) -> None:
    table = render(checks)
    for c in checks:
        line = next(ln for ln in table.splitlines() if f"  {c.name} " in ln)
        assert line.startswith("ok" if c.ok else "FAIL")
        assert " ".join(c.detail.split()) in line
    assert ("agent can run here" in table) is agent_ready(checks)
    doc = json.loads(as_json(checks))
    assert doc["agent_ready"] is agent_ready(checks)
    assert [Check(**d) for d in doc["checks"]] == checks


def test_doctor_command_exit_code_follows_agent_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    app = typer.Typer()
    app.command()(doctor_cmd)
    app.command("noop")(lambda: None)  # two commands, so `doctor` is addressed by name
    good = [Check("root", True, "d", "n"), Check("nftables", True, "d", "n"),
            Check("wireguard-userspace", True, "d", "n")]
    monkeypatch.setattr(doctor, "run_checks", lambda: good)
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0 and "agent can run here" in res.output
    monkeypatch.setattr(doctor, "run_checks", lambda: [*good[:2], Check("wireguard-userspace", False, "x", "n")])
    res = CliRunner().invoke(app, ["doctor", "--json"])
    assert res.exit_code == 1
    assert json.loads(res.output)["agent_ready"] is False
