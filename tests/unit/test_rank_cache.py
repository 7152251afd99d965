"""The path table's ranking cache is invalidated per site: a change to one site's paths recomputes that
site's rankings only. Whatever the router is told, every cached ranking must equal the ranking computed
afresh (after a global invalidation)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from patronus.core.model import Path, PathId, PathMetrics, PathStatus, SiteId
from patronus.core.policy import Preference, RoutingPolicy
from patronus.core.quality import quality_score, status_for
from patronus.core.router import Router

HQ = SiteId("hq")
SITES = [SiteId("a"), SiteId("b"), SiteId("c")]
PATHS = [PathId(f"{s}:p{i}") for s in SITES for i in range(3)]
POLICIES = [RoutingPolicy(name="latency", priority=10, preference=Preference.LOWEST_LATENCY),
            RoutingPolicy(name="cost", priority=20, preference=Preference.LOWEST_COST, failover_threshold=60)]


def metrics(lat: float, loss: float) -> PathMetrics:
    return PathMetrics(latency_ms=lat, jitter_ms=lat / 10, loss_pct=loss, score=quality_score(lat, lat / 10, loss),
                       measured_at=0.0)


op = st.one_of(
    st.tuples(st.just("metrics"), st.sampled_from(PATHS), st.floats(1, 400), st.floats(0, 60)),
    st.tuples(st.just("down"), st.sampled_from(PATHS)),
    st.tuples(st.just("suspect"), st.sampled_from(PATHS), st.booleans()),
    st.tuples(st.just("remove"), st.sampled_from(PATHS)),
    st.tuples(st.just("add"), st.sampled_from(PATHS), st.integers(0, 3)),
    st.tuples(st.just("disable"), st.sampled_from([p.name for p in POLICIES]), st.booleans()),
)


def _ranked(r: Router) -> dict[tuple[str | None, SiteId], list[tuple[PathId, float]]]:
    table = r._table     # the cache under test
    out = {}
    for pol in (None, *(p.name for p in r.list_policies() if p.enabled)):
        for site in SITES:
            ranked, scores = table.ranking(r.policy_named(pol), site)
            out[(pol, site)] = [(e.path.id, s) for e, s in zip(ranked, scores, strict=True)]
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=40))
def test_every_cached_ranking_equals_a_fresh_one(ops: list[tuple]) -> None:
    r = Router(None, POLICIES)
    for i, s in enumerate(SITES):
        r.set_site_prefixes(s, [f"10.{i + 1}.0.0/16"])
    present: set[PathId] = set()
    for k, pid in enumerate(PATHS):
        r.add_path(Path(pid, HQ, SiteId(pid.split(":")[0]), cost_per_gb=float(k % 3)), 0.0, PathStatus.UP,
                   metrics(10.0 + k, 0.0))
        present.add(pid)
    now = 0.0
    _ranked(r)                                      # fill the cache
    for o in ops:
        now += 1.0
        kind, target = o[0], o[1]
        if kind == "disable":
            r.set_policy_enabled(target, o[2])
        elif kind == "add":
            if target not in present:
                r.add_path(Path(target, HQ, SiteId(target.split(":")[0]), cost_per_gb=float(o[2])), now,
                           PathStatus.UP, metrics(20.0, 0.0))
                present.add(target)
        elif target not in present:
            continue
        elif kind == "metrics":
            m = metrics(o[2], o[3])
            r.update_path(target, now, status=status_for(m.score, m.loss_pct), metrics=m)
        elif kind == "down":
            r.update_path(target, now, status=PathStatus.DOWN)
        elif kind == "suspect":
            r.set_suspect(target, o[2])
        elif kind == "remove":
            r.remove_path(target, now)
            present.discard(target)
        cached = _ranked(r)
        r._table.invalidate()                       # every ranking computed afresh
        assert cached == _ranked(r), o
