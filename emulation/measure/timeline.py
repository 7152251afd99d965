"""The scenario timeline as edges, and which paths use which link.

A timeline row is one edge, except a `flap` that carries its whole schedule: params
`{"period_s": P, "count": N, "down_s": D}` (D defaults to P/2; "period"/"down" as durations like
"2s" are accepted too) expands to N down edges at applied_at + k·P and N up edges D later. A runner
that records each flap edge as its own row gives it `{"state": "down"|"up"}` or `{"up": false|true}`.

Edges that break or degrade a link: cut, impair, ramp and flap down edges. Each edge's *window* runs
from its applied time to the next edge applied later (of any action), or to the end of the run. A ramp
logged step by step is one ramp: a ramp row is a *continuation* (neither a breaking edge nor a window
end) when it carries `{"step": k}` with k ≥ 2, or, without `step`, when the previous row on the same
link was a ramp too.

A link is named `site.uplink`. Path ids follow the agent's convention `remote:local_uplink-remote_uplink`
(patronus.agent.config), so the path `R:U-V` at site S crosses the links `S.U` and `R.V` -- at both ends,
whichever site's list names it. For such ids that is the rule. For other ids, run.json's `links` list
decides: an entry `site/path` names one site's path, a plain `path` that id at any site.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from emulation.measure.errors import RawDataError
from emulation.measure.rundata import RunData
from patronus.core.errors import ConfigError
from patronus.core.units import parse_duration

BREAKING_ACTIONS = ("cut", "impair", "ramp")
_PATH_ID = re.compile(r"^(?P<remote>[^:]+):(?P<local>[^-]+)-(?P<ruplink>.+)$")


@dataclass(frozen=True, slots=True)
class Edge:
    line: int              # the row's line in timeline.csv
    action: str
    target: str
    at_s: float            # scheduled scenario time
    applied_at: float      # wall time it took effect
    params: Mapping[str, Any]
    state: str             # "down" / "up" for flap edges, "" otherwise
    label: str             # "cut hq.isp1", "flap hq.isp1 down 2/3", "ramp hq.isp1 (step)"
    continuation: bool = False   # a later step of a ramp already under way

    @property
    def breaking(self) -> bool:
        if self.continuation:
            return False
        return self.action in BREAKING_ACTIONS or (self.action == "flap" and self.state == "down")


def _duration(params: Mapping[str, Any], key: str, where: str) -> float | None:
    if f"{key}_s" in params:
        value = params[f"{key}_s"]
    elif key in params:
        value = params[key]
    else:
        return None
    try:
        return parse_duration(value, key)
    except ConfigError as exc:
        raise RawDataError([(where, f"{key}: {exc}")]) from exc


def _edge(row: Any, offset: float, state: str, label: str) -> Edge:
    """An edge of timeline row `row`, `offset` seconds after the row's own time."""
    return Edge(line=int(row.line), action=str(row.action), target=str(row.target), at_s=float(row.at_s) + offset,
                applied_at=float(row.applied_at) + offset, params=row.params, state=state, label=label)


def edges(run: RunData) -> list[Edge]:
    """Every edge of the timeline, in applied order (ties: timeline line, then flap edge order)."""
    if "edges" in run._cache:
        cached: list[Edge] = run._cache["edges"]
        return cached
    out: list[tuple[float, int, int, Edge]] = []
    for row in run.timeline.itertuples(index=False):
        params: Mapping[str, Any] = row.params
        line, target = int(row.line), str(row.target)
        if row.action != "flap":
            out.append((row.applied_at, line, 0, _edge(row, 0.0, "", f"{row.action} {target}")))
            continue
        where = f"raw/timeline.csv line {line} column 'params'"
        state = params.get("state")
        if state is None and isinstance(params.get("up"), bool):
            state = "up" if params["up"] else "down"
        if state is not None:
            if state not in ("down", "up"):
                raise RawDataError([(where, f"state: expected down or up, got {state!r}")])
            out.append((row.applied_at, line, 0, _edge(row, 0.0, str(state), f"flap {target} {state}")))
            continue
        period = _duration(params, "period", where)
        count = params.get("count")
        if period is None or period <= 0 or not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise RawDataError([(where, "a flap needs period_s (> 0) and count (≥ 1), or state (down/up) or up "
                                        "(true/false), "
                                        f"got {dict(params)!r}")])
        down = _duration(params, "down", where)
        down = period / 2 if down is None else down
        for k in range(count):
            for j, (state, offset) in enumerate((("down", k * period), ("up", k * period + down))):
                out.append((row.applied_at + offset, line, 2 * k + j,
                            _edge(row, offset, state, f"flap {target} {state} {k + 1}/{count}")))
    out.sort(key=lambda x: (x[0], x[1], x[2]))
    result: list[Edge] = []
    last_action: dict[str, str] = {}
    for *_, e in out:
        if e.action == "ramp":
            step = e.params.get("step")
            if isinstance(step, int) and not isinstance(step, bool):
                cont = step > 1
            else:
                cont = last_action.get(e.target) == "ramp"
            if cont:
                e = replace(e, continuation=True, label=f"ramp {e.target} (step)")
        last_action[e.target] = e.action
        result.append(e)
    run._cache["edges"] = result
    return result


def window_end(run: RunData, edge: Edge) -> float:
    """Wall time the edge's window ends: the next edge applied later, or the run's end."""
    for e in edges(run):
        if e.applied_at > edge.applied_at and not e.continuation:
            return e.applied_at
    return run.run.t0 + run.run.duration_s


def parse_path_id(path: str) -> tuple[str, str, str] | None:
    """`remote:local-remote_uplink` → (remote, local uplink, remote uplink), None if not in that form."""
    m = _PATH_ID.match(path)
    return (m["remote"], m["local"], m["ruplink"]) if m else None


def derived_links(site: str, path: str) -> tuple[str, ...]:
    """The links the path `path` of site `site` crosses, from the agent's path-id convention."""
    p = parse_path_id(path)
    return (f"{site}.{p[1]}", f"{p[0]}.{p[2]}") if p else ()


def on_link(run: RunData, site: str, path: str, link: str) -> bool:
    """Does site `site`'s path `path` cross the link `link`?"""
    entries = run.run.links.get(link, ())
    if f"{site}/{path}" in entries:
        return True
    if parse_path_id(path) is not None:
        return link in derived_links(site, path)
    return path in entries


def links_of(run: RunData, site: str, path: str) -> tuple[str, ...]:
    """Every known link (`known_links`) that site `site`'s path `path` crosses, sorted: `on_link` for
    each of them, in one look-up (a thousand-site run has thousands of links and paths)."""
    if "links_index" not in run._cache:
        index: dict[str, set[str]] = {}
        for link, entries in run.run.links.items():
            for entry in entries:
                index.setdefault(entry, set()).add(link)
        run._cache["links_index"] = (index, frozenset(known_links(run)))
    index, known = run._cache["links_index"]
    found = set(index.get(f"{site}/{path}", ()))
    if parse_path_id(path) is not None:
        found.update(x for x in derived_links(site, path) if x in known)
    else:
        found.update(index.get(path, ()))
    return tuple(sorted(found & known))


def path_leads_to(path: str, dst_site: str) -> bool:
    """Could `path` carry traffic toward `dst_site`? True for ids not in the agent's convention."""
    p = parse_path_id(path)
    return p is None or p[0] == dst_site


def site_paths(run: RunData, site: str) -> list[str]:
    """Every path id seen at a site (path metrics and events), sorted."""
    key = f"site_paths:{site}"
    if key not in run._cache:
        pm = run.path_metrics
        ev = run.events[run.events["site"] == site]
        found = set(pm.loc[pm["site"] == site, "path"].tolist())
        for col in ("path_id", "from_path", "to_path"):
            found.update(ev[col].tolist())
        found.discard("")
        run._cache[key] = sorted(found)
    out: list[str] = run._cache[key]
    return out


def known_links(run: RunData) -> list[str]:
    """Every link named by the timeline or run.json's links, sorted."""
    names = set(run.run.links)
    names.update(e.target for e in edges(run) if e.action in ("cut", "impair", "ramp", "flap", "restore"))
    return sorted(names)
