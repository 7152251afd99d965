"""A scenario's `mesh:` section and the membership rules of its timeline (issue 14).

    mesh:
      topology: {kind: hierarchical, hubs: {eu: [eu-hub-1, eu-hub-2]}}   # patronus.core.mesh.MeshTopology
      seeds: [s1, s2]                     # sites a joining site asks first (present from the start)
      timers: {probe_interval: 1s, probe_timeout: 500ms, suspicion_mult: 4, sync_interval: 30s,
               join_interval: 1s}         # the membership protocol's (every one optional)

With a `mesh:` section no site's agent gets remotes written for it: each finds the others. The underlay is
`core.topology: internet` (every uplink meets the core router). Timeline actions `site_join` / `site_leave`
bring a site into the mesh and take it out; a site whose first such action is a `site_join` is absent until
then. The rules checked here, each reported under its path:

* the topology's hubs and critical sites, and the seeds, are sites of the scenario; every seed is present
  at the start;
* site_join / site_leave / agent_stop / agent_start need a `mesh:` section for the first two, and a site in
  the mesh for the last three: a site joins only when it is out, leaves or has its agent stopped or started
  only when it is in;
* `join_time` and `converged` expectations need a `mesh:` section.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from emulation.scenario.fmt import fmt_duration
from emulation.scenario.model import (
    AgentEvent,
    Core,
    Mesh,
    MeshTimers,
    SiteJoin,
    SiteLeave,
    TimelineEvent,
    Topology,
)
from patronus.core import validate as val
from patronus.core.mesh import MeshTopology
from patronus.core.swim import read_timers
from patronus.core.validate import show

_KNOWN_MESH = {"topology", "seeds", "timers"}


def read_mesh(raw: object, errs: val.Errors, sites: Iterable[str], core: Core, core_given: bool) -> Mesh | None:
    """The `mesh:` section (None when there is none, or after recording its errors)."""
    if raw is None:
        return None
    names = set(sites)
    m = val.mapping(raw, "mesh", errs, _KNOWN_MESH, ("topology", "seeds"))
    if m is None:
        return None
    n = len(errs)
    if core_given and (core.topology is not Topology.INTERNET or core.hub is not None or core.hubs):
        errs.add("core.topology", "with a mesh: section the core is the underlay only: topology internet (who "
                                  "peers with whom is mesh.topology)")
    topology = MeshTopology.read(m.get("topology"), "mesh.topology", errs) if m.get("topology") is not None else None
    if topology is not None:
        roles = [("hubs", h) for h in topology.all_hubs] + [("critical", c) for c in topology.critical]
        for key, site in roles:
            if site not in names:
                errs.add(f"mesh.topology.{key}", f"{site} is not a site of this scenario")
    seeds: list[str] = []
    for i, s in enumerate(val.items(m.get("seeds"), "mesh.seeds", errs, "site names", nonempty=True) or []):
        if not isinstance(s, str) or s not in names:
            errs.add(f"mesh.seeds[{i}]", f"{show(s)} is not a site of this scenario")
        elif s in seeds:
            errs.add(f"mesh.seeds[{i}]", f"{s} is listed twice")
        else:
            seeds.append(s)
    timers = _timers(m.get("timers"), errs)
    if len(errs) > n or topology is None or timers is None:
        return None
    return Mesh(topology=topology, seeds=tuple(seeds), timers=timers)


def _timers(raw: object, errs: val.Errors) -> MeshTimers | None:
    got = read_timers(raw, "mesh.timers", errs)
    return None if got is None else MeshTimers(**{f"{k}_s" if k != "suspicion_mult" else k: v for k, v in got.items()})


def check_membership(mesh: Mesh | None, timeline: list[TimelineEvent], paths: Mapping[int, str],
                     errs: val.Errors, *, mesh_given: bool) -> None:
    """The timeline's membership rules (see the module's header). `paths`: each event's index in the timeline
    (by `id()`) → its path in the document. `mesh_given`: the document has a `mesh:` section (`mesh` is None
    when it has errors of its own: the timeline is still checked against it)."""
    first: dict[str, TimelineEvent] = {}
    for ev in timeline:
        if isinstance(ev, SiteJoin | SiteLeave):
            first.setdefault(ev.site, ev)
    present = {site: not isinstance(ev, SiteJoin) for site, ev in first.items()}
    for ev in timeline:
        if not isinstance(ev, AgentEvent):
            continue
        where = paths.get(id(ev), "timeline")
        if isinstance(ev, SiteJoin | SiteLeave) and not mesh_given:
            errs.add(f"{where}.action", f"{ev.action} needs a mesh: section (sites that discover each other)")
            continue
        inside = present.get(ev.site, True)
        if isinstance(ev, SiteJoin):
            if inside:
                errs.add(f"{where}.site", f"{ev.site} is already in the mesh at {fmt_duration(ev.at_s)}")
            present[ev.site] = True
        elif isinstance(ev, SiteLeave):
            if not inside:
                errs.add(f"{where}.site", f"{ev.site} is not in the mesh at {fmt_duration(ev.at_s)}")
            present[ev.site] = False
        elif not inside:
            errs.add(f"{where}.site", f"{ev.site} is not in the mesh at {fmt_duration(ev.at_s)}: its agent is not "
                                      f"there to {ev.action.removeprefix('agent_')}")
    if mesh is not None:
        for i, seed in enumerate(mesh.seeds):
            joins = first.get(seed)
            if isinstance(joins, SiteJoin):
                errs.add(f"mesh.seeds[{i}]", f"{seed} joins only at {fmt_duration(joins.at_s)}: a seed is in the mesh "
                                             f"from the start")
