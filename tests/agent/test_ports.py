"""The site's ports kept out of the ephemeral pool (`patronus.agent.ports`): the sysctl's text, which ports a
site reserves, and a reservation that takes back only what it added. On a file standing in for the sysctl;
`tests/netns/test_ports_netns.py` does it on the kernel's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patronus.agent import config as cfgmod
from patronus.agent import ports
from tests.agent.test_config import site
from tests.agent.test_config_mesh import with_mesh

pytestmark = pytest.mark.unit


@given(st.sets(st.integers(0, 65535), max_size=200))
def test_render_and_parse_round_trip(ps: set[int]) -> None:
    text = ports.render(ps)
    assert ports.parse(text) == ps
    assert ports.parse(text + "\n") == ps


def test_parse_reads_the_kernels_forms_and_refuses_others() -> None:
    assert ports.parse("") == set() and ports.parse("\n") == set()
    assert ports.parse("40000-40002,51900\n") == {40000, 40001, 40002, 51900}
    assert ports.render([5, 3, 4, 9]) == "3-5,9"
    for bad in ("40002-40000", "70000", "a-b", "-3"):
        with pytest.raises(ValueError):
            ports.parse(bad)


def test_a_static_site_reserves_the_ports_of_its_remotes_ids() -> None:
    cfg = cfgmod.from_dict(site("hq", 3, "br", 7, 1, 2))
    ps = ports.site_ports(cfg)
    assert {p.listen_port for p in cfg.paths} <= ps
    assert set(range(40000, 40000 + 16 * 7 + 16)) <= ps and 40000 + 16 * 8 not in ps
    assert {cfg.probe_port} | set(range(cfg.probe_port + 1, cfg.probe_port + 8)) <= ps   # probe + bandwidth 1..7
    assert 51900 not in ps


def test_a_mesh_site_reserves_every_port_a_learned_remote_can_take() -> None:
    cfg = cfgmod.from_dict(with_mesh())
    ps = ports.site_ports(cfg)
    assert set(range(40000, 65536)) <= ps            # any site id the port scheme allows
    assert 51900 in ps and cfg.probe_port in ps
    assert 39999 not in ps


def test_a_reservation_adds_to_the_hosts_and_gives_back_only_its_own(tmp_path: Path) -> None:
    sysctl, state = tmp_path / "ip_local_reserved_ports", tmp_path / "state"
    state.mkdir()
    sysctl.write_text("1000-1002,40005\n")                 # the host's own
    res = ports.Reservation.reserve(set(range(40000, 40011)), state, sysctl)
    assert ports.parse(sysctl.read_text()) == {1000, 1001, 1002} | set(range(40000, 40011))
    assert res.added == set(range(40000, 40011)) - {40005}
    assert ports.parse((state / ports.RECORD).read_text()) == res.added
    sysctl.write_text(sysctl.read_text().strip() + ",50000\n")        # someone else's, since
    res.release()
    assert ports.parse(sysctl.read_text()) == {1000, 1001, 1002, 40005, 50000}
    assert not (state / ports.RECORD).exists()


def test_the_agent_after_a_graceful_stop_takes_over_the_reservation(tmp_path: Path) -> None:
    sysctl, state = tmp_path / "sysctl", tmp_path / "state"
    state.mkdir()
    sysctl.write_text("\n")
    ports.Reservation.reserve({40000, 40001}, state, sysctl)            # kept: the agent stopped gracefully
    again = ports.Reservation.reserve({40000, 40001, 40002}, state, sysctl)
    assert again.added == {40000, 40001, 40002}
    again.release()
    assert sysctl.read_text().strip() == ""


def test_cleanup_gives_back_a_dead_agents_reservation(tmp_path: Path) -> None:
    sysctl, state = tmp_path / "sysctl", tmp_path / "state"
    state.mkdir()
    sysctl.write_text("7\n")
    ports.Reservation.reserve({40000, 40001}, state, sysctl)
    assert ports.release_recorded(state, sysctl) == 2
    assert sysctl.read_text().strip() == "7"
    assert ports.release_recorded(state, sysctl) == 0


def test_a_host_that_refuses_changes_nothing(tmp_path: Path) -> None:
    sysctl, state = tmp_path / "sysctl", tmp_path / "state"
    state.mkdir()
    sysctl.write_text("garbage\n")
    with pytest.raises(ValueError):
        ports.Reservation.reserve({40000}, state, sysctl)
    assert sysctl.read_text() == "garbage\n" and not (state / ports.RECORD).exists()
    with pytest.raises(OSError):
        ports.Reservation.reserve({40000}, state, tmp_path / "missing")



def test_a_sysctl_write_the_host_refuses_leaves_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysctl, state = tmp_path / "sysctl", tmp_path / "state"
    state.mkdir()
    sysctl.write_text("7\n")
    real = Path.write_text

    def refuse(self: Path, *a: object, **kw: object) -> int:
        if self == sysctl:
            raise PermissionError(13, "Permission denied")      # a read-only /proc/sys
        return real(self, *a, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(OSError):
        ports.Reservation.reserve({40000}, state, sysctl)
    assert not (state / ports.RECORD).exists() and sysctl.read_text() == "7\n"
