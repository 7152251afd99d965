"""How long a mesh takes to form and to settle after each membership change, and how long a site takes to
join it (issue 14): measured from run.json's `mesh` section (`rundata.MeshRun`) and the agents' path events.

What a site should have. When the sites `live` are in the mesh (in it, their agent running), a live site
should have exactly `expected(mesh, site, live)`: for every peer `p` the topology gives it among the live
members (`patronus.core.mesh.peers`, each member with its region), the paths `"<p>:<lu>-<ru>"` for every
uplink `lu` of the site and `ru` of `p`. A site that is not live should have nothing expected of it, and is
not judged. A site *has converged* when its path set is exactly that and every one of its paths is "up".
Only "up" counts, not "degraded": the scenario format's `join_time` and `converged` promise paths "each
Up", and a degraded path is one the site's agent itself does not find healthy; a run that impairs the
underlay during a membership change measures the two together, which is what the promise says.

What a site has. Each site's events are replayed in time order (run.json's t0 makes them scenario
seconds): `AgentStarted` clears the site's paths (a fresh agent has none); `PathAdded` adds one, "down"
until probed (again "down" if it was there already); `PathRemoved` removes one; `PathStatusChanged` sets
its status (a change for a path the site does not have is ignored: the path was never added, or is gone).
A site entering the live membership (site_join, agent_start) starts with no path too, at the change's `at`,
before the events of that instant: a stopped agent's tunnels may still be there, but the agent that starts
has not built them (its `AgentStarted` comes a little later and clears them again). The state at time T
is the state after every event at or before T (and every change at or before T).

Windows. `mesh.changes` (from `emulation.siteconf.mesh_doc`) starts with the formation ("start", at the
time the backend spawned the agents: negative in the simulator, which warms up before scenario time 0),
then has one change per site_join / site_leave / agent_stop / agent_start. Change k's window runs from its
`at` up to, not including, the next later `at` (the last one: to the last event of the run, its drain
included). Changes at the same instant are measured together: each of them gets the measurement of the
membership after all of them (a membership that lasted no time cannot converge).

  convergence: for change k, the first T in its window at which every live site has converged;
               value T - at_k (0 when the mesh already matches the new membership), or None if it did
               not converge before the window ended (then `pending`: the live sites that had not).
  join time:   for each change at which `site` enters the live set (site_join, agent_start, or the
               start for a site there from the start, measured from changes[0].at: when the agents
               were spawned), the first T in that change's window at which the site itself has
               converged (against the membership of that change); value T - at, or None. A join that
               another change interrupts is None: its target moved before it was reached.

A site with no peers (alone, or a spoke with no live hub) has converged as soon as it has no path.

The replay is incremental: per site, how many of its paths are expected and up and how many are not,
and the set of live sites that have not converged; a change recomputes only the sites whose peers
changed (one `peer_map` per change), at the cost of their expected paths. A thousand sites (hierarchical,
60 changes) and 10^5 events take about 0.7 s; a full mesh of a thousand sites costs ~1.5 s per change
(every site's 4,000 expected paths rebuilt).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from emulation.measure.rundata import MeshRun, RunData
from patronus.core.mesh import Member, peer_map, peers

PATH_KINDS = ("AgentStarted", "PathAdded", "PathRemoved", "PathStatusChanged")


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the membership (run.json's mesh.changes[index]) and how long the mesh took to settle."""

    index: int
    at: float                       # scenario s
    cause: str
    live: frozenset[str]
    time_s: float | None            # converged this long after `at`; None: not before `until`
    until: float | None             # the window's end (the next change's at; None: the end of the run)
    pending: tuple[str, ...] = ()   # when time_s is None: the live sites not converged at the end, sorted


@dataclass(frozen=True, slots=True)
class Join:
    """A site entering the live membership (at mesh.changes[index]) and how long it took to have its paths."""

    site: str
    index: int
    at: float
    cause: str
    time_s: float | None            # None: not before the next change (or the end of the run)


@dataclass(frozen=True, slots=True)
class MeshTimes:
    changes: tuple[Change, ...]     # one per mesh.changes entry, in order
    joins: tuple[Join, ...]         # by time, then site


def expected(mesh: MeshRun, site: str, live: Iterable[str]) -> set[str]:
    """The path ids `site` should have while `live` are in the mesh (none if it is not one of them)."""
    members = {s: Member(mesh.sites[s].region) for s in live}
    if site not in members:
        return set()
    return _paths(mesh, site, peers(site, members, mesh.topology))


def _paths(mesh: MeshRun, site: str, to: Iterable[str]) -> set[str]:
    mine = mesh.sites[site].uplinks
    return {f"{p}:{lu}-{ru}" for p in to for lu in mine for ru in mesh.sites[p].uplinks}


class _Replay:
    """The sites' paths and how far each is from what it should have (see the module's header)."""

    def __init__(self, mesh: MeshRun) -> None:
        self.mesh = mesh
        self.paths: dict[str, dict[str, bool]] = {s: {} for s in mesh.sites}   # site → path → up
        self.want: dict[str, set[str]] = {s: set() for s in mesh.sites}
        self.peers: dict[str, tuple[str, ...] | None] = dict.fromkeys(mesh.sites)   # None: not live
        self.ok = dict.fromkeys(mesh.sites, 0)       # paths expected and up
        self.bad = dict.fromkeys(mesh.sites, 0)      # paths not expected, or not up
        self.pending: set[str] = set()               # live sites not converged

    def converged(self, site: str) -> bool:
        return self.bad[site] == 0 and self.ok[site] == len(self.want[site])

    def _refresh(self, site: str) -> None:
        if self.peers[site] is not None and not self.converged(site):
            self.pending.add(site)
        else:
            self.pending.discard(site)

    def _count(self, site: str, path: str, up: bool | None, sign: int) -> None:
        if up is None:
            return
        if up and path in self.want[site]:
            self.ok[site] += sign
        else:
            self.bad[site] += sign

    def event(self, site: str, kind: str, path: str, new: str) -> None:
        have = self.paths.get(site)
        if have is None:          # not a mesh site: nothing is expected of it
            return
        if kind == "AgentStarted":
            have.clear()
            self.ok[site] = self.bad[site] = 0
        elif kind == "PathStatusChanged" and path not in have:
            return
        else:
            self._count(site, path, have.get(path), -1)
            if kind == "PathRemoved":
                have.pop(path, None)
            else:
                have[path] = kind == "PathStatusChanged" and new == "up"
                self._count(site, path, have[path], +1)
        self._refresh(site)

    def membership(self, live: frozenset[str], entering: Iterable[str]) -> None:
        """The expectations of a new live membership (only the sites whose peers changed are recounted);
        the `entering` sites start with no path."""
        mesh = self.mesh
        pm = peer_map({s: Member(mesh.sites[s].region) for s in live}, mesh.topology)
        fresh = set(entering)
        for site in fresh:
            self.paths[site].clear()
        for site in mesh.sites:
            now = pm.get(site)
            if now == self.peers[site] and site not in fresh:
                continue
            self.peers[site] = now
            self.want[site] = _paths(mesh, site, now or ())
            have = self.paths[site]
            self.ok[site] = sum(1 for p, up in have.items() if up and p in self.want[site])
            self.bad[site] = len(have) - self.ok[site]
            self._refresh(site)


def mesh_times(run: RunData) -> MeshTimes:
    """Every change's convergence and every join (cached on the run); none without a mesh."""
    if "meshtimes" not in run._cache:
        run._cache["meshtimes"] = _measure(run)
    out: MeshTimes = run._cache["meshtimes"]
    return out


def convergence(run: RunData) -> list[Change]:
    return list(mesh_times(run).changes)


def join_times(run: RunData, site: str) -> list[Join]:
    return [j for j in mesh_times(run).joins if j.site == site]


def _measure(run: RunData) -> MeshTimes:
    mesh = run.run.mesh
    if mesh is None:
        return MeshTimes((), ())
    ev = run.events[run.events["kind"].isin(PATH_KINDS)]
    events = list(zip(ev["t_s"].tolist(), ev["site"].tolist(), ev["kind"].tolist(), ev["path_id"].tolist(),
                      ev["new"].tolist(), strict=True))
    changes = mesh.changes
    starts = [k for k in range(len(changes)) if k == 0 or changes[k].at > changes[k - 1].at]
    replay = _Replay(mesh)
    out_changes: list[Change] = []
    joins: list[Join] = []
    i = 0
    before: frozenset[str] = frozenset()
    for g, first in enumerate(starts):
        last = (starts[g + 1] if g + 1 < len(starts) else len(changes)) - 1
        at, live = changes[first].at, changes[last].live
        until = changes[last + 1].at if last + 1 < len(changes) else None
        entering: dict[str, int] = {}                          # site → the change that brought it in
        seen = before
        for k in range(first, last + 1):
            entering.update((s, k) for s in changes[k].live - seen)
            seen = changes[k].live
        waiting = {s: k for s, k in entering.items() if s in live}
        while i < len(events) and events[i][0] < at:
            replay.event(*events[i][1:])
            i += 1
        replay.membership(live, waiting)
        while i < len(events) and events[i][0] == at:          # the state at `at`: the new agents' first events
            replay.event(*events[i][1:])
            i += 1
        done: dict[str, float] = {s: 0.0 for s in waiting if replay.converged(s)}
        settled: float | None = 0.0 if not replay.pending else None
        touched: set[str] = set()
        while i < len(events) and (until is None or events[i][0] < until):
            t, site = events[i][0], events[i][1]
            replay.event(*events[i][1:])
            touched.add(site)
            i += 1
            if i < len(events) and events[i][0] == t:
                continue                                       # the state at t: after all of t's events
            if settled is None and not replay.pending:
                settled = t - at
            for s in touched & waiting.keys():
                if s not in done and replay.converged(s):
                    done[s] = t - at
            touched.clear()
        pending = () if settled is not None else tuple(sorted(replay.pending))
        out_changes += [Change(k, changes[k].at, changes[k].cause, changes[k].live, settled, until, pending)
                        for k in range(first, last + 1)]
        joins += [Join(s, k, changes[k].at, changes[k].cause, done.get(s)) for s, k in sorted(waiting.items())]
        before = live
    return MeshTimes(tuple(out_changes), tuple(sorted(joins, key=lambda j: (j.at, j.site))))


def worst(times: Iterable[float | None]) -> float | None:
    """The slowest of the times, None if one of them (or all: none given) is None."""
    values = list(times)
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)

