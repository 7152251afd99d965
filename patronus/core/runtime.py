"""One site's runtime: every decision a site makes, whatever drives it (sans-IO).

`SiteLogic` is the site's judgement (monitor → router → SLA, fate sharing, dead tunnels, the restart
hold). The runtime is the layer a driver talks to, and owns what the agent and the simulator would
otherwise each write their own way:

* **The clock.** A driver hands it `now`. Time never runs backwards inside it, and `on_timer(now,
  due)` never fires a timer before the deadline it was armed for (an event loop may call a little
  early; a simulator's float sum may land a hair short).
* **Slots and the steering plan** (`patronus.core.plan`). The router holds one flow per `Slot`
  (remote × policy × the path its connections were first put on), placed on that path when the path
  is first usable. A step that may change routing computes the plan (placing what it needs, such as
  a slot's second generation) and says so (`Actions.replan`); the driver then applies it: which
  slot each new-connection bucket takes, and which path each slot's connections take. The agent
  takes it whole (`plan()`, diffed into one nftables transaction); a model may ask only for the
  buckets and slots its flows use (`new_slot`, `slot_path`): the same plan, read in part. Reading
  the plan changes nothing (`GET /steering` is a read).
* **Housekeeping.** Every `HOUSEKEEPING_S` the slots are touched (they never idle out while the
  dataplane steers them) and slots of paths that came up are placed, on the runtime's own deadline.
* **Tunnel liveness.** `on_handshakes`: a path whose probes pass but whose tunnel has no live session
  would black-hole what is steered onto it; it is Down for routing (`TunnelDown`) until its tunnel
  handshakes again (`TunnelUp`). The driver nudges the tunnels the call returns.
* **A restart over a kept dataplane.** `adopt(slots, until)`: the dataplane goes on steering as the
  previous agent left it until every path has a verdict; then the router takes the kept slots where
  the dataplane has them, failed-over ones with their origin.
* **Typed events.** What the driver publishes or stores comes out of `Actions` as frozen events
  (`patronus.core.events`), the driver's own (`SteeringApplied`, `TunnelDown`, ...) included.

A driver: feed `on_probe_reply`, `on_handshakes`, `set_policies`, `adopt`; call `on_timer(now, due)`
when the deadline it armed (`next_deadline()`) is due and `pump(now)` after feeding; perform the
returned `Actions` (send the probes, publish `events`, store `stored`, apply `plan()` when `replan`),
then arm its timer again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from patronus.core.errors import ConfigError
from patronus.core.events import (
    Event,
    Failback,
    FailoverTriggered,
    FlowAssigned,
    FlowExpired,
    FlowStranded,
    PathAdded,
    PathRemoved,
    PathStatusChanged,
    PoliciesChanged,
    SendProbe,
    SteeringApplied,
    TunnelDown,
    TunnelUp,
)
from patronus.core.model import Bucket, FlowKey, Path, PathId, PathStatus, SiteId, Slot
from patronus.core.monitor import MonitorProfile
from patronus.core.plan import LB_BUCKETS, SteeringPlan, flow_bucket, lb_buckets
from patronus.core.policy import LoadBalance, RoutingPolicy
from patronus.core.router import RouterConfig
from patronus.core.site import SiteLogic, steering_hold_s
from patronus.core.sla import SlaMonitor

HOUSEKEEPING_S = 1.0             # slot touches and placement
TUNNEL_GRACE_S = 15.0            # a path Up this long with no handshake at all has a dead tunnel
SESSION_LIFETIME_S = 180.0       # WireGuard rejects a session older than this (REJECT_AFTER_TIME)
STORED_KINDS = (PathStatusChanged, FailoverTriggered, Failback, FlowStranded)


@dataclass(slots=True)
class Actions:
    """What one step asks of the driver, in order."""

    probes: list[SendProbe] = field(default_factory=list)     # send these now
    events: list[Event] = field(default_factory=list)         # publish these (in order)
    stored: list[Event] = field(default_factory=list)         # and keep these in the store
    status_changed: bool = False                              # a path's status changed (store it)
    replan: bool = False                                      # the plan may have changed: apply it
    moves: list[Event] = field(default_factory=list)          # the failovers and failbacks it carries out
    released: bool = False                                    # the restart hold ended in this step


class SiteRuntime:
    """One site's decisions (see the module's header). `paths` are the site's own paths (`dst_site` is
    the remote), `remotes` each remote site's prefixes."""

    def __init__(self, site: str, paths: Iterable[Path], remotes: Mapping[str, Iterable[str]], *,
                 profile: MonitorProfile | None = None, router: RouterConfig | None = None,
                 sla: SlaMonitor | None = None, policies: Iterable[RoutingPolicy] | None = None,
                 buckets: int = LB_BUCKETS, now: float = 0.0) -> None:
        self.site = site
        self.logic = SiteLogic(site, profile, router, sla, policies)
        self.monitor = self.logic.monitor
        self.router = self.logic.router
        self.sla = self.logic.sla
        self.buckets = buckets
        self.paths: dict[PathId, Path] = {}
        self.remotes: list[SiteId] = [SiteId(r) for r in remotes]
        self.slots: set[Slot] = set()
        self._unplaced: set[PathId] = set()              # paths some of whose slots the router lacks
        self.failovers: Counter[str] = Counter()          # by reason
        self._now = now
        self._next_housekeeping = now + HOUSEKEEPING_S
        self._adopted: dict[Slot, PathId] = {}
        self._pending: list[Event] = []                   # driver-facing events not yet handed out
        self._routing_dirty = False                       # an input outside a step changed routing
        self._plan = SteeringPlan()                       # as of the last step that replanned
        # each remote's part of the plan, with the fingerprint it was computed at (`_remote_plan`)
        self._plan_parts: dict[SiteId, tuple[tuple[int, ...], dict[Bucket, Slot], dict[Slot, PathId]]] = {}
        self._up_since: dict[PathId, float] = {}          # wall time a path was first seen Up (tunnel rule)
        for p in paths:
            self.add_path(p, now)
        for r, prefixes in remotes.items():
            self.logic.set_site_prefixes(r, prefixes)

    def add_path(self, path: Path, now: float) -> None:
        """One of the site's paths (`dst_site`: the remote); Down until its probes bring it up."""
        self.paths[path.id] = path
        self._unplaced.add(path.id)
        self.logic.add_path(path, self._clock(now))

    # -- remotes that come and go (mesh discovery) -------------------------------------------------

    def add_remote(self, remote: str, prefixes: Iterable[str], paths: Iterable[Path], now: float) -> None:
        """A remote joined: its prefixes and its paths, each Down until its probes bring it up (its slots
        appear as they do); `PathAdded` for each in the next step. Everything is checked first: on a
        `ConfigError` nothing changed. Call `pump` after."""
        now = self._clock(now)
        rid, new = SiteId(remote), list(paths)
        errors = [(f"paths[{i}]", f"{p.id!r} is not a path to {remote!r} or already exists")
                  for i, p in enumerate(new) if p.dst_site != rid or p.id in self.paths]
        if rid in self.remotes or rid == self.site:
            errors.insert(0, ("remote", f"{remote!r} is this site or already a remote"))
        if len({p.id for p in new}) != len(new):
            errors.append(("paths", "a path id is given twice"))
        if errors:
            raise ConfigError(errors)
        self.logic.set_site_prefixes(remote, prefixes)     # checks them; changes nothing when they are bad
        self.remotes.append(rid)
        for p in new:
            self.add_path(p, now)
            self._pending.append(PathAdded(at=now, path_id=p.id, remote=rid))
        self._routing_dirty = True

    def remove_remote(self, remote: str, now: float) -> list[PathId]:
        """A remote left: its paths, prefixes, slots and the steering toward it go (`PathRemoved` for each
        path in the next step); the other remotes' paths, slots and flows are untouched. Returns its
        paths. Call `pump` after (its plan no longer names the remote)."""
        now = self._clock(now)
        rid = SiteId(remote)
        if rid not in self.remotes:
            raise ConfigError(f"no remote {remote!r}", "remote")
        gone = self.logic.remove_site(rid, now)
        self.remotes.remove(rid)
        for pid in gone:
            del self.paths[pid]
            self._unplaced.discard(pid)
            self._up_since.pop(pid, None)
            self._pending.append(PathRemoved(at=now, path_id=pid, remote=rid))
        self.slots = {s for s in self.slots if s.remote != rid}
        self._plan_parts.pop(rid, None)
        self._adopted = {s: p for s, p in self._adopted.items() if s.remote != rid}
        self._routing_dirty = True
        return gone

    # -- the clock ---------------------------------------------------------------------------------

    def _clock(self, now: float) -> float:
        if now < self._now:
            return self._now
        self._now = now
        return now

    @property
    def now(self) -> float:
        """The latest time handed to the runtime."""
        return self._now

    def next_deadline(self) -> float | None:
        d = self.logic.next_deadline()
        return self._next_housekeeping if d is None or self._next_housekeeping < d else d

    # -- inputs ------------------------------------------------------------------------------------

    def on_probe_reply(self, path_id: PathId, seq: int, sent_at: float, now: float) -> bool:
        """A probe reply arrived (both times on the driver's clock); call `pump` after (or skip it when
        `has_news()` says nothing changed, and wait for the deadline)."""
        if now < self._now:         # the clock rule, inline: this is the hottest call of a simulation
            now = self._now
        else:
            self._now = now
        return self.logic.on_probe_reply(path_id, seq, sent_at, now)

    def has_news(self) -> bool:
        return bool(self._pending) or self._routing_dirty or self.logic.has_news()

    def set_policies(self, policies: Iterable[RoutingPolicy], now: float) -> None:
        """Replace the policies (connections keep their slot and path; slots of new policies appear);
        `PoliciesChanged` is in the next step's events. Call `pump` after."""
        now = self._clock(now)
        pols = list(policies)
        self.router.replace_policies(pols)
        self._unplaced.update(self.paths)
        self._place_slots(now)
        self._pending.append(PoliciesChanged(at=now, policies=tuple(p.name for p in pols)))
        self._routing_dirty = True

    def adopt(self, slots: Mapping[Slot, PathId], now: float) -> None:
        """A restart over a kept dataplane that steers `slots` (slot → the path the dataplane has it on):
        the steering is held until every path has a verdict (at the latest `steering_hold_s`); then the
        router takes these slots (see the module's header)."""
        now = self._clock(now)
        self._adopted = dict(slots)
        self.logic.hold_steering(now + steering_hold_s(self.monitor.profile))

    def on_handshakes(self, shakes: Mapping[PathId, float | None], wall: float, now: float,
                      interfaces: Mapping[PathId, str]) -> list[PathId]:
        """The latest WireGuard handshake (wall time; None: none yet) of each path's tunnel, read at wall
        time `wall`. Applies the tunnel-liveness rule: dead is no handshake at all though the path has
        been Up for `TUNNEL_GRACE_S`, or none for longer than a session lives plus that grace. Returns
        the paths whose tunnel is dead (the driver nudges them). Call `pump` after."""
        now = self._clock(now)
        dead_now: list[PathId] = []
        for pid in self.paths:
            if self.monitor.status(pid) is PathStatus.DOWN:
                self._up_since.pop(pid, None)
                if self.logic.set_tunnel_dead(pid, False, now):
                    self._routing_dirty = True
                continue
            up_since = self._up_since.setdefault(pid, wall)
            last = shakes.get(pid)
            dead = (last is None and wall - up_since > TUNNEL_GRACE_S) or \
                   (last is not None and wall - last > SESSION_LIFETIME_S + TUNNEL_GRACE_S)
            ifname = interfaces.get(pid, "")
            if dead and not self.logic.tunnel_dead(pid):
                self.logic.set_tunnel_dead(pid, True, now)
                self._routing_dirty = True
                self._pending.append(TunnelDown(at=now, path_id=pid, interface=ifname, latest_handshake=last))
            elif not dead and self.logic.tunnel_dead(pid):
                self.logic.set_tunnel_dead(pid, False, now)
                self._routing_dirty = True
                self._pending.append(TunnelUp(at=now, path_id=pid, interface=ifname, latest_handshake=last))
            if self.logic.tunnel_dead(pid):
                dead_now.append(pid)
        return dead_now

    # -- the step ----------------------------------------------------------------------------------

    def on_timer(self, now: float, due: float | None = None) -> Actions:
        """The driver's timer, armed for `due` (the deadline it read), fired at `now`: a timer never
        fires before its deadline, whatever the driver's clock says."""
        if due is not None and now < due:
            now = due
        return self.pump(now)

    def pump(self, now: float) -> Actions:
        """Fire what is due and take the site one step: the monitor's verdicts through the router and
        the SLA monitor, housekeeping when due, then the steering plan if routing may have changed."""
        now = self._clock(now)
        logic, router = self.logic, self.router
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_S
            for slot in self.slots:
                router.touch(slot, now)
            self._place_slots(now)
        step = logic.pump(now)
        out = Actions(probes=step.probes, status_changed=bool(step.status), released=step.released)
        events = out.events
        events.extend(self._pending)
        self._pending.clear()
        events.extend(step.lost)
        events.extend(step.status)
        rev = step.router
        if step.released:
            self._adopt_slots(now)
            rev = rev + router.drain_events()
        self._take(rev, events)
        events.extend(step.sla)
        if (step.routing_changed or self._routing_dirty) and not logic.steering_held:
            self._routing_dirty = False
            self._place_slots(now)
            self._plan = self._compute_plan()
            # what placing made (slots put where their connections are) is this step's, not news for the
            # next one: left in the router, it would make the next step replan for nothing
            self._take(router.drain_events(), events)
            out.replan = True
            out.moves = [e for e in rev if isinstance(e, FailoverTriggered | Failback)]
        out.stored = [e for e in events if isinstance(e, STORED_KINDS)]
        # a driver's input (tunnels, policies) that changed routing while held waits for the release
        return out

    def _take(self, router_events: list[Event], events: list[Event]) -> None:
        """The router's events: counted, slots that expired forgotten, and for the driver all but the
        placing of a slot where its connections already are (nothing moved)."""
        for ev in router_events:
            if isinstance(ev, FailoverTriggered):
                self.failovers[ev.reason.value] += 1
            if isinstance(ev, FlowExpired) and isinstance(ev.flow, Slot):
                self.slots.discard(ev.flow)
                if ev.flow.origin in self.paths:      # not when its remote left
                    self._unplaced.add(ev.flow.origin)
            if isinstance(ev, FlowAssigned) and isinstance(ev.flow, Slot):
                continue
            events.append(ev)

    def steering_applied(self, moves: list[Event], begun: float, done: float) -> SteeringApplied | None:
        """The event a driver publishes once the dataplane took a plan that carried out `moves` (its
        transaction began at `begun`, returned at `done`); None when the plan moved nothing."""
        if not moves:
            return None
        first = min(e.at for e in moves)
        paths = sorted({str(e.to_path) for e in moves if isinstance(e, FailoverTriggered | Failback)})
        return SteeringApplied(at=done, begun_at=begun, moves=len(moves),
                               latency_ms=round((done - first) * 1000, 3), paths=tuple(paths))

    # -- slots and the plan ------------------------------------------------------------------------

    def _policy_names(self) -> list[str | None]:
        """The enabled policies, in match order, then the implicit default (None)."""
        return [p.name for p in self.router.list_policies() if p.enabled] + [None]

    def _place_slots(self, now: float) -> None:
        """One router flow per (remote, policy, path) slot, placed on its path once the path is usable,
        then left to the router."""
        if self.logic.steering_held or not self._unplaced:
            return          # held: the dataplane's slots are adopted when the hold ends
        router = self.router
        names = self._policy_names()
        for pid in sorted(self._unplaced):
            if router.path_status(pid) is PathStatus.DOWN:
                # No connection can be on a path that has never been usable: new ones only go to
                # usable paths. Its slots appear when it first comes up (else they would be
                # "rescued" onto the first path up and kept there by the failback rules).
                continue
            self._unplaced.discard(pid)
            remote = self.paths[pid].dst_site
            for name in names:
                slot = Slot(remote, name, pid)
                if slot not in self.slots:
                    self.slots.add(slot)
                    router.place(slot, pid, now, site=remote, policy=name)

    def _adopt_slots(self, now: float) -> None:
        """The hold is over: the router takes the kept slots, on the path the dataplane has each on,
        with its own path as its origin when it had failed over."""
        names = set(self._policy_names())
        for slot, cur in sorted(self._adopted.items(), key=lambda t: t[0].sort_key()):
            origin, at = self.paths.get(slot.origin), self.paths.get(cur)
            if origin is None or at is None or slot.policy not in names or slot in self.slots:
                continue
            if origin.dst_site != slot.remote or at.dst_site != slot.remote:
                continue
            self.slots.add(slot)
            self.router.place(slot, cur, now, site=slot.remote, policy=slot.policy,
                              origin=slot.origin if slot.origin != cur else None)
        self._adopted = {}

    def plan(self) -> SteeringPlan:
        """The steering plan as of the last step that replanned (see `patronus.core.plan`): what the
        dataplane has once the driver applied it. Changes nothing."""
        return self._plan

    def _compute_plan(self, cached: bool = True) -> SteeringPlan:
        """The steering the router's state asks for now: each remote's part (`_remote_plan`), kept
        from the last step while nothing it reads changed (`cached=False`: every part computed again).
        Places the second generation of a slot for new connections where the plan needs one
        (`_slot_for_new`): only a step calls this."""
        names = self._policy_names()
        by_remote: dict[SiteId, list[Slot]] | None = None        # grouped at the first part to compute
        new: dict[Bucket, Slot] = {}
        slots: dict[Slot, PathId] = {}
        for remote in self.remotes:
            hit = self._plan_parts.get(remote)
            if cached and hit is not None and hit[0] == self._fingerprint(remote):
                part_new, part_slots = hit[1], hit[2]
            else:
                if by_remote is None:
                    by_remote = {r: [] for r in self.remotes}
                    for slot in self.slots:
                        by_remote[slot.remote].append(slot)
                part_new, part_slots = self._remote_plan(remote, names, by_remote[remote])
            new.update(part_new)
            slots.update(part_slots)
        return SteeringPlan(new, slots)

    def _fingerprint(self, remote: SiteId) -> tuple[int, ...]:
        """Everything a remote's part of the plan reads, as versions (`Router.site_state`: the policies,
        the remote's paths, and its flows: placed, moved, stranded or gone). The remote's slots are
        among those flows: a slot joins `slots` as the router places it and leaves as the router
        forgets it (or with its remote, whose part goes too)."""
        return self.router.site_state(remote)

    def _remote_plan(self, remote: SiteId, names: list[str | None],
                     remote_slots: list[Slot]) -> tuple[dict[Bucket, Slot], dict[Slot, PathId]]:
        """One remote's buckets and slots (`remote_slots`: its slots before), computed and kept with
        the remote's fingerprint. A hub steers toward many remotes and a step changes one or two of
        them (a path's status, a failover): `_compute_plan` keeps the others' parts while their
        fingerprint stands, so a step costs what changed, not remotes × policies. Computing a part
        may place a second-generation slot, which changes the fingerprint: the part is kept with the
        one after."""
        router = self.router
        new: dict[Bucket, Slot] = {}
        for name in names:
            pol = router.policy_named(name)
            if pol.load_balance is LoadBalance.NONE:
                best = router.preview(remote, name)
                if best is not None:
                    new[Bucket(remote, name, 0)] = self._slot_for_new(remote, name, best)
                continue
            tier = router.preview_tier(remote, name)
            if tier:
                for i, pid in enumerate(lb_buckets(pol.load_balance, tier, self.buckets)):
                    new[Bucket(remote, name, i)] = self._slot_for_new(remote, name, pid)
        slots: dict[Slot, PathId] = {}
        placed = [s for s in new.values() if s.gen and s in self.slots and s not in remote_slots]
        for slot in remote_slots + list(dict.fromkeys(placed)):
            cur = router.flow_path(slot)        # None: stranded
            if cur is not None:
                slots[slot] = cur
        self._plan_parts[remote] = (self._fingerprint(remote), new, slots)
        return new, slots

    def new_slot(self, bucket: Bucket) -> Slot | None:
        """The plan's slot for new connections of `bucket` (None: no usable path), without the rest."""
        return self._plan.new.get(bucket)

    def _slot_for_new(self, remote: SiteId, policy: str | None, path: PathId) -> Slot:
        """The slot new connections of `policy` toward `remote` go in when the plan wants them on `path`:
        the path's own slot when it is there; when that slot is away (failed over, waiting to fail
        back, or stranded), its second generation, placed on the path now if it is not there yet
        (else new connections would ride the first one's current path until its failback). Both away
        at once (the path failed twice within a hold): the first, which fails back first."""
        router = self.router
        first = Slot(remote, policy, path)
        if first not in self.slots or router.flow_path(first) == path:
            return first
        second = Slot(remote, policy, path, 1)
        if second not in self.slots or router.flow_info(second) is None:
            self.slots.add(second)
            router.place(second, path, self._now, site=remote, policy=policy)
        return second if router.flow_path(second) == path else first

    def new_path(self, bucket: Bucket) -> PathId | None:
        """The plan's path for new connections of `bucket` (None: no usable path), without the rest."""
        return self._plan.path_of_new(bucket)

    def bucket_of(self, flow: FlowKey, remote: SiteId) -> Bucket:
        """Where a dataplane sorts a new connection toward `remote`: the policy it matches (None: the
        implicit default) and, for a balancing policy, its hash bucket (`plan.flow_bucket`)."""
        pol = self.router.policy_for(flow)
        name = None if pol is self.router.policy_named(None) else pol.name
        index = 0 if pol.load_balance is LoadBalance.NONE else flow_bucket(flow, self.buckets)
        return Bucket(remote, name, index)

    def displaced_slots(self) -> int:
        """Slots away from the path they started on, waiting to fail back (0 when the site is settled)."""
        return sum(1 for s in self.slots if (info := self.router.flow_info(s)) is not None
                   and info.origin is not None)

    def slot_path(self, slot: Slot) -> PathId | None:
        """The plan's path for the connections of `slot` (None: stranded, or no such slot)."""
        return self.router.flow_path(slot) if slot in self.slots else None

    @property
    def steering_held(self) -> bool:
        return self.logic.steering_held
