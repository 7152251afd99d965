"""The timeline expanded into what a backend applies: absolute link states and agent states, in order.

`schedule(scenario)` turns the scenario's events (some of which last a while: `flap`, `ramp`) into a
list of steps, each carrying the *complete* state of one link (up or down, every impairment) or of one
agent after it. A backend applies steps one by one without knowing what a flap or a ramp is, and a
report can say which timeline event caused each change (`event`, the index in `scenario.timeline`).

Semantics, in one place:
- links start at their uplink's baseline (`Uplink.baseline()`): up, configured bandwidth, delay, jitter
  and loss; no duplication, reordering or corruption;
- `impair` sets the impairments it names and keeps the others; `loss` and `loss_model` replace each
  other (a link has one loss model);
- `cut` takes the link down; `restore` brings it up with the impairments it had (a no-op when up);
- `clear` returns the impairments to the baseline, leaving the link up or down as it is;
- `flap`: down at at + i·period and up at at + i·period + period/2, for i in 0..count-1;
- `ramp`: from the values at `at` to `to`, in `steps` equal steps, step i at at + i·over/steps; ramping
  `loss` replaces a Gilbert-Elliott model, starting from that model's mean loss;
- `agent_stop` / `agent_start` change whether the site's agent runs (a no-op when it already is so);
  a stop without `cleanup` leaves the site's dataplane forwarding (graceful), with `cleanup` it goes
  too; a `cleanup` stop of an agent already stopped gracefully removes the dataplane it left.
Steps that change nothing are left out. Steps at the same time keep the order of their events
(timeline order, then the step's number within its event), so the result is deterministic.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from typing import Any

from emulation.scenario.model import (
    AgentStart,
    AgentStop,
    Clear,
    Cut,
    Flap,
    Impair,
    Impairment,
    LinkRef,
    LinkSettings,
    Ramp,
    Restore,
    Scenario,
    SiteJoin,
    SiteLeave,
    TimelineEvent,
)


@dataclass(frozen=True, slots=True)
class LinkStep:
    at_s: float
    event: int                   # index of the causing event in `scenario.timeline`
    link: LinkRef
    settings: LinkSettings       # the link's whole state after this step
    changed: tuple[str, ...]     # which `LinkSettings` attributes this step changed


@dataclass(frozen=True, slots=True)
class AgentStep:
    at_s: float
    event: int
    site: str
    running: bool
    cleanup: bool = False        # a stop that removes the site's dataplane too (tunnels, steering, reflector)


@dataclass(frozen=True, slots=True)
class MembershipStep:
    """A site joins the mesh (it comes up: dataplane and agent) or leaves it (its agent announces it, stops
    and removes its dataplane). Scenarios with a `mesh:` section only."""

    at_s: float
    event: int
    site: str
    joins: bool


Step = LinkStep | AgentStep | MembershipStep


def _apply(state: LinkSettings, imp: Impairment) -> LinkSettings:
    changes: dict[str, Any] = {attr: getattr(imp, attr) for attr in imp.given()}
    if "loss_ratio" in changes:
        changes["loss_model"] = None
    elif "loss_model" in changes:
        changes["loss_ratio"] = 0.0
    return replace(state, **changes)


def _diff(a: LinkSettings, b: LinkSettings) -> tuple[str, ...]:
    return tuple(attr for attr in LinkSettings.__slots__ if getattr(a, attr) != getattr(b, attr))


def _ramp_points(start: LinkSettings, ramp: Ramp) -> list[tuple[float, Impairment]]:
    """(time, impairment) of each step of a ramp that starts from `start`."""
    origin: dict[str, float] = {}
    for attr in ramp.to.given():
        value = getattr(start, attr)
        if attr == "loss_ratio" and start.loss_model is not None:
            value = start.loss_model.mean_loss_ratio
        origin[attr] = float(value)
    points = []
    for i in range(1, ramp.steps + 1):
        frac = i / ramp.steps
        values = {attr: (getattr(ramp.to, attr) if i == ramp.steps else a + (getattr(ramp.to, attr) - a) * frac)
                  for attr, a in origin.items()}
        points.append((ramp.at_s + ramp.over_s * frac, Impairment(**values)))
    return points


def schedule(scenario: Scenario) -> tuple[Step, ...]:
    """Every state change of the run, in time order (see the module's header for the semantics)."""
    links: dict[LinkRef, LinkSettings] = {ref: scenario.uplink(ref).baseline() for ref in scenario.links}
    baseline = dict(links)
    running = {s.name: True for s in scenario.sites}
    kept = {s.name: False for s in scenario.sites}      # stopped gracefully: its dataplane still forwards
    # (time, event index, step within the event, kind, payload): events expand lazily, when their time
    # comes, so that a ramp starts from the state the link is in at that moment
    queue: list[tuple[float, int, int, str, Any]] = [(ev.at_s, i, 0, "event", ev)
                                                     for i, ev in enumerate(scenario.timeline)]
    heapq.heapify(queue)
    out: list[Step] = []

    def set_link(at: float, index: int, ref: LinkRef, new: LinkSettings) -> None:
        changed = _diff(links[ref], new)
        if changed:
            links[ref] = new
            out.append(LinkStep(at, index, ref, new, changed))

    while queue:
        at, index, _step, kind, payload = heapq.heappop(queue)
        if kind == "up":
            set_link(at, index, payload, replace(links[payload], up=True))
            continue
        if kind == "down":
            set_link(at, index, payload, replace(links[payload], up=False))
            continue
        if kind == "impair":
            ref, imp = payload
            set_link(at, index, ref, _apply(links[ref], imp))
            continue
        ev: TimelineEvent = payload
        if isinstance(ev, Impair):
            set_link(at, index, ev.link, _apply(links[ev.link], ev.impairment))
        elif isinstance(ev, Cut):
            set_link(at, index, ev.link, replace(links[ev.link], up=False))
        elif isinstance(ev, Restore):
            set_link(at, index, ev.link, replace(links[ev.link], up=True))
        elif isinstance(ev, Clear):
            set_link(at, index, ev.link, replace(baseline[ev.link], up=links[ev.link].up))
        elif isinstance(ev, Flap):
            set_link(at, index, ev.link, replace(links[ev.link], up=False))
            half = ev.period_s / 2
            for i in range(ev.count):
                if i:
                    heapq.heappush(queue, (ev.at_s + i * ev.period_s, index, 2 * i, "down", ev.link))
                heapq.heappush(queue, (ev.at_s + i * ev.period_s + half, index, 2 * i + 1, "up", ev.link))
        elif isinstance(ev, Ramp):
            for step, (t, imp) in enumerate(_ramp_points(links[ev.link], ev), start=1):
                heapq.heappush(queue, (t, index, step, "impair", (ev.link, imp)))
        elif isinstance(ev, AgentStart) and not running[ev.site]:
            running[ev.site] = True
            kept[ev.site] = False
            out.append(AgentStep(at, index, ev.site, True))
        elif isinstance(ev, AgentStop) and (running[ev.site] or (ev.cleanup and kept[ev.site])):
            running[ev.site] = False
            kept[ev.site] = not ev.cleanup
            out.append(AgentStep(at, index, ev.site, False, ev.cleanup))
        elif isinstance(ev, SiteJoin | SiteLeave):
            joins = isinstance(ev, SiteJoin)
            running[ev.site] = joins
            kept[ev.site] = False
            out.append(MembershipStep(at, index, ev.site, joins))
    return tuple(out)
