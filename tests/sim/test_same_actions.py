"""One site runtime, two drivers: the agent's adapter (`patronus.agent.daemon.Agent`, over a fake kernel)
and the simulator's (`emulation.backends.sim.agent.SimAgent`) turn the same inputs into the same actions.

The simulator runs a shipped scenario, and everything its adapter for site hq is handed is recorded in
order: the start, each probe reply (path, seq, send time, arrival) and each timer that fires. The same
inputs are then replayed, at the same virtual times, into an `Agent` built from the very site config the
simulator used, whose prober, kernel steering and clock are fakes. Both adapters must emit the same
stream: the probes they send (when, path, seq), every event they publish (as the core made it), every
steering plan they apply, and the timers they arm. Where the two drivers differ by design (the simulator
skips a step for a reply that changes nothing a step would act on; the agent always steps), this test is
what says the difference changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import patronus.agent.daemon as daemon
from emulation.backends.sim.engine import Simulation
from emulation.scenario.short import short_version
from patronus.core.events import AgentStarted, Event

pytestmark = pytest.mark.sim

SITE = "hq"


def _record_sim(name: str, tmp_path: Path) -> tuple[Any, list[tuple[Any, ...]], list[tuple[Any, ...]], float]:
    sim = Simulation(short_version(name), tmp_path, "packet")
    hq = sim.agents[SITE]
    inputs: list[tuple[Any, ...]] = []
    out: list[tuple[Any, ...]] = []
    started: list[float] = []
    start, probe_home, on_timer = hq.start, hq._probe_home, hq._on_timer
    send, publish, replan = hq._send_probe, hq._publish_event, hq._replan

    def start_(now: float) -> None:
        started.append(now)
        start(now)

    def probe_home_(path_id: Any, seq: int, sent_at: float, generation: int) -> None:
        if generation == hq.generation:
            inputs.append(("reply", hq.env.now, path_id, seq, sent_at))
        probe_home(path_id, seq, sent_at, generation)

    def on_timer_(token: int, when: float) -> None:
        if token == hq._timer_token:
            inputs.append(("timer", hq.env.now, when))
        on_timer(token, when)

    def send_(path_id: Any, seq: int, sent_at: float) -> None:
        out.append(("probe", sent_at, path_id, seq))
        send(path_id, seq, sent_at)

    def publish_(ev: Event) -> None:
        if not isinstance(ev, AgentStarted):       # the process's own news, not the runtime's
            out.append(("event", ev.as_dict(0.0)))
        publish(ev)

    def replan_(moves: list[Event], now: float) -> None:
        rt = hq.runtime
        assert rt is not None
        out.append(("plan", now, rt.plan().as_dict()))
        replan(moves, now)

    hq.start, hq._probe_home, hq._on_timer = start_, probe_home_, on_timer_
    hq._send_probe, hq._publish_event, hq._replan = send_, publish_, replan_
    sim.run()
    assert len(started) == 1
    return hq.cfg, inputs, out, started[0]


class _Prober:
    def __init__(self, clock: list[float], out: list[tuple[Any, ...]]) -> None:
        self.clock, self.out = clock, out

    def send(self, path_id: Any, seq: int) -> None:
        self.out.append(("probe", self.clock[0], path_id, seq))

    def drain(self) -> None:
        pass                    # replies come from the replay, in the simulator's order


class _Kernel:
    """The nftables steering, faked: takes every update at once."""

    applied = True

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.maps: list[tuple[dict[int, int], dict[int, int]]] = []

    def update(self, new_slot: dict[int, int], slot_path: dict[int, int]) -> float:
        self.maps.append((dict(new_slot), dict(slot_path)))
        return self.clock[0]


class _Loop:
    """The event loop's timer, faked: the replay fires what the simulator fired."""

    def __init__(self) -> None:
        self.armed: list[float] = []

    def call_at(self, when: float, callback: Any) -> Any:
        self.armed.append(when)
        loop = self

        class Handle:
            def cancel(self) -> None:
                loop.armed.remove(when)
        return Handle()


@pytest.mark.parametrize("name", ["failover-basic", "brownout", "voip-sla"])
def test_the_agent_and_the_simulator_turn_the_same_inputs_into_the_same_actions(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut (failover-basic), an SLA class broken by a loss ramp (brownout), SLA moves and failbacks
    of a call (voip-sla), each in the CI version of the shipped scenario."""
    cfg, inputs, sim_out, t_start = _record_sim(name, tmp_path / "sim")
    assert sum(1 for i in inputs if i[0] == "reply") > 1000 and any(e[0] == "plan" for e in sim_out)
    assert any(e[0] == "event" and e[1]["kind"] == "FailoverTriggered" for e in sim_out)

    clock = [t_start]
    monkeypatch.setattr(daemon.time, "monotonic", lambda: clock[0])
    agent = daemon.Agent(cfg)
    out: list[tuple[Any, ...]] = []
    loop = _Loop()
    kernel = _Kernel(clock)
    agent.loop = loop  # type: ignore[assignment]
    agent.prober = _Prober(clock, out)  # type: ignore[assignment]
    agent.dataplane.steering = kernel  # type: ignore[assignment]
    agent.router.replace_policies(cfg.policies)
    agent.numbers.number(cfg.policies)
    steer, publish = agent._steer, agent.publish

    def steer_(plan: Any, moves: list[Event]) -> None:
        out.append(("plan", clock[0], plan.as_dict()))
        steer(plan, moves)

    def publish_(ev: Event) -> None:
        out.append(("event", ev.as_dict(0.0)))
        publish(ev)

    agent._steer, agent.publish = steer_, publish_  # type: ignore[method-assign]
    try:
        agent._start_core(t_start, None)
        for k, inp in enumerate(inputs):
            if inp[0] == "reply":
                _, now, path_id, seq, sent_at = inp
                clock[0] = now
                agent._on_probe_reply(path_id, seq, sent_at, now)
            else:
                _, now, when = inp
                clock[0] = now
                assert agent._timer_at == when, (k, inp, agent._timer_at)    # the same deadline armed
                agent._on_timer()
    finally:
        agent.life.kernel.shutdown(wait=False)

    def first_difference(a: list[Any], b: list[Any]) -> str:
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return f"at {i}: simulator {x!r}, agent {y!r}"
        return f"lengths {len(a)} and {len(b)}"

    assert out == sim_out, first_difference(sim_out, out)
    assert len(kernel.maps) == sum(1 for e in out if e[0] == "plan")       # every plan reached the kernel
