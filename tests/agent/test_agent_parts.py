"""The agent's parts that need no host: its lifecycle (undo steps, threads, keep or remove) and how it
numbers the runtime's steering plan into kernel marks and back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from patronus.agent import config as cfgmod
from patronus.agent.adopt import HostRecord
from patronus.agent.lifecycle import Lifecycle, Thread
from patronus.agent.numbering import KernelNumbers
from patronus.agent.steering import FALLBACK_POLICY_NO, KernelFlow, path_mark, slot_mark
from patronus.core.model import Bucket, PathId, SiteId, Slot
from patronus.core.plan import SteeringPlan
from patronus.core.policy import RoutingPolicy
from tests.agent.test_config import site

pytestmark = pytest.mark.unit


def test_undo_steps_run_newest_first_each_on_its_thread_and_one_failure_stops_none() -> None:
    done: list[tuple[str, str]] = []

    def step(name: str) -> object:
        return lambda: done.append((name, threading.current_thread().name))

    def broken() -> None:
        raise OSError("gone already")

    async def main() -> list[str]:
        life = Lifecycle()
        life.add("pidfile", step("pidfile"), step("pidfile"), Thread.LOOP)
        life.add("steering", step("steering-removed"), None, Thread.KERNEL)
        life.add("tunnel", broken, None, Thread.KERNEL)
        life.add("probes", step("probes"), step("probes"), Thread.LOOP)
        kept = await life.close(cleanup=True)
        assert await life.close(cleanup=True) == []           # a second stop does nothing
        return kept

    assert asyncio.run(main()) == []
    assert [d[0] for d in done] == ["probes", "steering-removed", "pidfile"]
    assert done[0][1] == done[2][1] == "MainThread" and done[1][1].startswith("patronus-kernel")


def test_a_graceful_stop_keeps_what_has_no_keep_step_and_says_so() -> None:
    done: list[str] = []

    async def main() -> list[str]:
        life = Lifecycle()
        life.add("store", lambda: done.append("store closed"), lambda: done.append("store closed"), Thread.LOOP)
        life.add("steering", lambda: done.append("removed"), None, Thread.KERNEL)
        life.add("tunnel a", lambda: done.append("removed"), None, Thread.KERNEL)
        return await life.close(cleanup=False)

    assert asyncio.run(main()) == ["steering", "tunnel a"]
    assert done == ["store closed"]


def _cfg() -> cfgmod.SiteConfig:
    return cfgmod.from_dict(site("hq", 3, "br", 7, 1, 2))


def test_the_plan_numbered_into_marks_reads_back_as_the_same_slots() -> None:
    cfg = _cfg()
    n = KernelNumbers(cfg)
    voice, bulk = RoutingPolicy.from_dict({"name": "voice", "priority": 10}, "p"), \
        RoutingPolicy.from_dict({"name": "bulk", "priority": 20}, "p")
    n.number([bulk, voice])
    assert n.policies == {"voice": 1, "bulk": 2}               # in match order
    a, b = (p.id for p in cfg.paths[:2])
    s_voice = Slot(SiteId("br"), "voice", a, 0)
    s_gen1 = Slot(SiteId("br"), "voice", a, 1)
    s_default = Slot(SiteId("br"), None, b, 0)
    plan = SteeringPlan(new={Bucket(SiteId("br"), "voice"): s_gen1, Bucket(SiteId("br"), None): s_default},
                        slots={s_voice: b, s_gen1: a, s_default: b})
    new_slot, slot_path = n.kernel_maps(plan)
    pa, pb = cfg.path(a).number, cfg.path(b).number
    assert new_slot == {slot_mark(1, 1, 0): slot_mark(1, 1, pa, 1), slot_mark(1, FALLBACK_POLICY_NO, 0):
                        slot_mark(1, FALLBACK_POLICY_NO, pb)}
    assert n.slots_of_marks(slot_path) == dict(plan.slots)
    # marks naming a policy, remote or path this site does not have are left out
    assert n.slots_of_marks({slot_mark(1, 9, pa): path_mark(pa), slot_mark(2, 1, pa): path_mark(pa),
                             slot_mark(1, 1, 99): path_mark(pa)}) == {}
    flows = [KernelFlow("10.1.0.5", "10.2.0.9", 4000, 5060, 17, slot_mark(1, 1, pa), 30, 10, 1000, None),
             KernelFlow("10.1.0.5", "10.2.0.9", 4001, 80, 6, slot_mark(1, 3, pa), 30)]
    rows = n.flow_rows(flows, plan.slots, plan.slots.get, 0.0)
    assert [(r["policy"], r["path"], r["origin_path"]) for r in rows] == \
        [("voice", b, a), ("implicit-default", None, a)]


def test_policy_numbers_stay_with_their_names_across_changes_and_restarts() -> None:
    cfg = _cfg()
    n = KernelNumbers(cfg)
    p = {name: RoutingPolicy.from_dict({"name": name, "priority": i}, "p") for i, name in enumerate("abc")}
    n.number([p["a"], p["b"], p["c"]])
    assert n.policies == {"a": 1, "b": 2, "c": 3}
    del n.policies["b"]
    n.number([p["c"], p["a"], RoutingPolicy.from_dict({"name": "d", "priority": 0}, "p")])
    assert n.policies == {"a": 1, "c": 3, "d": 2}              # the lowest free number
    record = HostRecord(site="hq", site_id=3, owner=cfg.owner, remotes=dict(n.remotes), policies=dict(n.policies),
                        paths={str(x.id): x.number for x in cfg.paths}, sysctls={})
    again = KernelNumbers(cfg)
    again.keep_record(record, {"c", "d"})                      # "a" is gone: its number is not kept
    again.number([p["c"], RoutingPolicy.from_dict({"name": "d", "priority": 0}, "p")])
    assert again.policies == {"c": 3, "d": 2}
    assert again.record().paths == {str(x.id): x.number for x in cfg.paths}
    assert PathId(cfg.paths[0].id) in again.plans


def test_a_refused_route_is_named_in_the_error_whatever_kind_of_callable_pyroute2_gives() -> None:
    """pyroute2's `IPRoute.route` is a functools.partial: the error once read "'functools.partial'
    object has no attribute '__name__'" and hid the kernel's answer."""
    import errno
    import functools

    from patronus.agent.steering import Steering, SteeringError

    def refuse(*_a: object, **_kw: object) -> None:
        exc = OSError("Operation not permitted")
        exc.code = errno.EPERM  # type: ignore[attr-defined]
        raise exc

    class Ipr:
        route = functools.partial(refuse, "route")
        rule = functools.partial(refuse, "rule")

        def link_lookup(self, ifname: str) -> list[int]:
            return [7]

    cfg = _cfg()
    with pytest.raises(SteeringError, match=r"cannot add the default route of uplink isp1 \(table \d+\): "
                                            r"Operation not permitted"):
        Steering(cfg)._routes(Ipr(), "add")


def test_the_api_document_describes_what_the_agent_answers() -> None:
    """The OpenAPI models (`apidoc`) against the real answers of an agent whose core runs (no host)."""
    from typing import Any

    from pydantic import TypeAdapter

    from patronus.agent import apidoc as doc
    from patronus.agent.control import AgentApi
    from patronus.agent.daemon import Agent
    from patronus.core.events import PathStatusChanged
    from patronus.core.model import PathStatus
    from patronus.core.policy import default_policies

    class Loop:
        def call_at(self, when: float, callback: Any) -> Any:
            class Handle:
                def cancel(self) -> None:
                    pass
            return Handle()

    cfg = _cfg()
    agent = Agent(cfg)
    try:
        agent.loop = Loop()  # type: ignore[assignment]
        agent.router.replace_policies(default_policies())
        agent.numbers.number(default_policies())
        agent._start_core(100.0, None)
        agent.publish(PathStatusChanged(at=100.0, path_id=cfg.paths[0].id, old=PathStatus.DOWN, new=PathStatus.UP,
                                        reason="probes answered"))
        agent.kernel_flows = [KernelFlow("10.1.0.5", "10.2.0.9", 4000, 5060, 17, slot_mark(1, 1, 1), 30, 10, 1000, 5.0)]
        api = AgentApi(agent)
        checks: list[tuple[Any, Any]] = [
            (doc.SiteInfo, api.site_info()), (list[doc.PathRow], api.list_paths()), (doc.Topology, api.topology()),
            (doc.SteeringPlanBody, api.steering_plan()), (list[doc.FlowRow], api.list_flows()),
            (list[doc.EventRow], api.recent_events(10)), (list[doc.Policy], [p.to_dict() for p in api.list_policies()]),
        ]
        for model, answer in checks:
            TypeAdapter(model).validate_python(answer, strict=False)
        assert api.list_paths() and api.recent_events(10) and api.list_flows()
    finally:
        agent.life.kernel.shutdown(wait=False)
