"""Remotes that come and go at run time (`SiteRuntime.add_remote` / `remove_remote`, issue 14): a remote
that joins gets paths, slots and steering; one that leaves takes its own with it and nothing else. Virtual
time: every probe comes back after its path's RTT unless its local uplink is cut."""

from __future__ import annotations

import pytest

from patronus.core.errors import ConfigError
from patronus.core.events import (
    Event,
    FailoverTriggered,
    FlowStranded,
    PathAdded,
    PathRemoved,
    PathStatusChanged,
    SendProbe,
)
from patronus.core.model import Bucket, EndpointId, Path, PathId, PathStatus, SiteId, Slot
from patronus.core.monitor import PROFILES
from patronus.core.plan import SteeringPlan
from patronus.core.runtime import Actions, SiteRuntime
from patronus.core.site import uplink_of
from tests.unit.virtualnet import VirtualNet

pytestmark = pytest.mark.unit

RTT = {"isp1-isp1": 0.020, "isp1-isp2": 0.120, "isp2-isp1": 0.150, "isp2-isp2": 0.180}


def paths_to(remote: str) -> list[Path]:
    out = []
    for pair in RTT:
        local, far = pair.split("-")
        out.append(Path(id=PathId(f"{remote}:{pair}"), src_site=SiteId("hq"), dst_site=SiteId(remote),
                        src_endpoint=EndpointId(f"hq:{local}"), dst_endpoint=EndpointId(f"{remote}:{far}")))
    return out


class Net(VirtualNet):
    """Drives a SiteRuntime as a driver does; `plan` is the dataplane's (the last one applied)."""

    def __init__(self) -> None:
        super().__init__()
        self.rt = SiteRuntime("hq", paths_to("br"), {"br": ["10.2.0.0/24"]}, profile=PROFILES["fast"],
                              policies=[])
        self.cut: set[str] = set()
        self.events: list[Event] = []
        self.plan = SteeringPlan()

    def perform(self, act: Actions) -> None:
        self.events += act.events
        if act.replan:
            self.plan = self.rt.plan()
        for p in act.probes:
            if uplink_of(self.rt.paths[p.path_id]) not in self.cut:
                rtt = RTT[p.path_id.split(":")[1]]
                self.inflight.append((self.now + rtt, p.path_id, p.seq, self.now))


    def of(self, kind: type[Event], since: int = 0) -> list[Event]:
        return [e for e in self.events[since:] if isinstance(e, kind)]

    def steering_of(self, remote: str) -> tuple[dict[Bucket, Slot], dict[Slot, PathId]]:
        return ({b: s for b, s in self.plan.new.items() if b.remote == remote},
                {s: p for s, p in self.plan.slots.items() if s.remote == remote})


def test_a_remote_that_joins_gets_paths_slots_and_steering_and_the_others_are_untouched() -> None:
    net = Net()
    net.run_until(2.0)
    br_before = net.steering_of("br")
    assert br_before[0] and br_before[1]
    mark = len(net.events)
    net.rt.add_remote("dc", ["10.3.0.0/24"], paths_to("dc"), net.now)
    net.perform(net.rt.pump(net.now))
    assert {e.path_id for e in net.of(PathAdded, mark)} == {p.id for p in paths_to("dc")}   # type: ignore[attr-defined]
    net.run_until(4.0)
    new, slots = net.steering_of("dc")
    assert new == {Bucket(SiteId("dc"), None, 0): Slot(SiteId("dc"), None, PathId("dc:isp1-isp1"))}
    assert set(slots) == {Slot(SiteId("dc"), None, p.id) for p in paths_to("dc")}
    assert net.rt.router.site_for("10.3.0.9") == "dc"
    assert net.steering_of("br") == br_before
    assert not net.of(FailoverTriggered, mark) and not net.of(FlowStranded, mark)


def test_a_remote_that_leaves_takes_its_paths_state_and_steering_and_nothing_else() -> None:
    net = Net()
    net.rt.add_remote("dc", ["10.3.0.0/24"], paths_to("dc"), 0.0)
    net.run_until(3.0)
    br_before = net.steering_of("br")
    assert net.steering_of("dc")[1]
    mark = len(net.events)
    gone = net.rt.remove_remote("dc", net.now)
    assert sorted(gone) == sorted(p.id for p in paths_to("dc"))
    net.perform(net.rt.pump(net.now))
    assert {e.path_id for e in net.of(PathRemoved, mark)} == set(gone)      # type: ignore[attr-defined]
    assert net.steering_of("dc") == ({}, {})
    assert net.steering_of("br") == br_before
    rt = net.rt
    assert rt.remotes == [SiteId("br")] and not any(p.startswith("dc:") for p in rt.paths)
    assert not any(p.startswith("dc:") for p in rt.router.path_ids)
    assert not any(p.startswith("dc:") for p in rt.logic.path_ids)
    assert rt.router.site_for("10.3.0.9") is None
    assert all(s.remote == "br" for s in rt.slots)
    # replies still on their way are ignored; no probe is asked for over a path that is gone
    net.run_until(8.0)
    assert not [e for e in net.of(SendProbe, mark) if e.path_id.startswith("dc:")]   # type: ignore[attr-defined]
    assert not net.of(FailoverTriggered, mark) and not net.of(FlowStranded, mark)
    assert net.steering_of("br") == br_before
    assert rt.sla.measure("dc:isp1-isp1", net.now).samples == 0


def test_a_remote_can_leave_while_a_down_waits_on_its_suspected_paths_and_can_rejoin() -> None:
    """A cut of isp1: br's isp1 paths go Down and dc's isp1 paths are their suspected siblings (same
    uplink); dc leaves while those Downs are held. br's slots still move to isp2, and dc comes back."""
    net = Net()
    net.rt.add_remote("dc", ["10.3.0.0/24"], paths_to("dc"), 0.0)
    net.run_until(3.0)
    net.cut.add("isp1")
    while not net.rt.logic._held and net.now < 5.0:
        net.run_until(net.now + 0.005)
    held = net.rt.logic._held
    assert any(s.startswith("dc:") for _, _, suspects in held.values() for s in suspects), held
    net.rt.remove_remote("dc", net.now)
    net.run_until(6.0)
    moved = {s: p for s, p in net.plan.slots.items() if s.origin.endswith(("isp1-isp1", "isp1-isp2"))}
    assert moved and all(uplink_of(net.rt.paths[p]) == "isp2" for p in moved.values())
    net.cut.clear()
    mark = len(net.events)
    net.rt.add_remote("dc", ["10.3.0.0/24"], paths_to("dc"), net.now)
    net.run_until(9.0)
    ups = {e.path_id for e in net.of(PathStatusChanged, mark)                  # type: ignore[attr-defined]
           if e.path_id.startswith("dc:") and e.new is PathStatus.UP}          # type: ignore[attr-defined]
    assert ups == {p.id for p in paths_to("dc")}
    assert net.steering_of("dc")[0]


@pytest.mark.parametrize(("remote", "prefixes", "paths", "field"), [
    ("br", ["10.3.0.0/24"], [], "remote"),                       # already a remote
    ("hq", ["10.3.0.0/24"], [], "remote"),                       # this site
    ("dc", ["10.3.0.0/24"], paths_to("xx"), "paths[0]"),         # a path to another site
    ("dc", ["10.3.0.0/24"], paths_to("dc")[:1] * 2, "paths"),    # the same path twice
    ("dc", ["not-a-prefix"], paths_to("dc"), "sites.dc.prefixes[0]"),
])
def test_a_bad_remote_is_refused_by_field_and_changes_nothing(remote: str, prefixes: list[str], paths: list[Path],
                                                              field: str) -> None:
    net = Net()
    net.run_until(1.0)
    before = (list(net.rt.remotes), dict(net.rt.paths), set(net.rt.slots), net.rt.router.path_ids)
    with pytest.raises(ConfigError) as err:
        net.rt.add_remote(remote, prefixes, paths, net.now)
    assert field in str(err.value)
    assert (net.rt.remotes, net.rt.paths, net.rt.slots, net.rt.router.path_ids) == before
    with pytest.raises(ConfigError, match="no remote 'dc'"):
        net.rt.remove_remote("dc", net.now)
