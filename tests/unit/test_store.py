"""Unit tests of the agent's SQLite store (patronus.agent.store)."""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path as FsPath

import pytest

from patronus.agent.store import MIGRATIONS, SCHEMA_VERSION, FlowRecord, Store, apply_migrations
from patronus.core.errors import ConfigError
from patronus.core.events import (
    FailoverReason,
    FailoverTriggered,
    FlowAssigned,
    PathStatusChanged,
    SlaRestored,
)
from patronus.core.model import (
    Endpoint,
    EndpointId,
    FlowKey,
    Path,
    PathId,
    PathMetrics,
    PathStatus,
    Site,
    SiteId,
)

pytestmark = pytest.mark.unit

REPO_ROOT = FsPath(__file__).resolve().parents[2]

A, B, C = SiteId("site-a"), SiteId("site-b"), SiteId("site-c")
EA, EB = EndpointId("a-fiber"), EndpointId("b-lte")
P1, P2 = PathId("a-b-1"), PathId("a-b-2")
FLOW = FlowKey("10.0.0.1", "10.1.0.1", 40000, 5060, 17)


def metrics(at: float, **changes: object) -> PathMetrics:
    base = PathMetrics(latency_ms=20.0, jitter_ms=2.0, loss_pct=0.5, score=90.0, measured_at=at,
                       bandwidth_mbps=100.0, mtu_bytes=1420, cost_per_gb=0.1, samples=10)
    return base.with_(**changes)


@pytest.fixture
def db_path(tmp_path: FsPath) -> FsPath:
    return tmp_path / "agent.db"


@pytest.fixture
def store(db_path: FsPath) -> Iterator[Store]:
    with Store.open(db_path) as s:
        yield s


@pytest.fixture
def seeded(store: Store) -> Store:
    """Two sites with one endpoint each, and two paths A -> B."""
    store.upsert_site(Site(A, "Alpha", ("10.0.0.0/16",)))
    store.upsert_site(Site(B, "Beta", ("10.1.0.0/16", "fd00:1::/64")))
    store.add_endpoint(Endpoint(EA, A, "192.0.2.1:51820", "fiber", 0.0, 1000.0))
    store.add_endpoint(Endpoint(EB, B, "198.51.100.7:51820", "lte", 2.5))
    store.upsert_path(Path(P1, A, B, EA, EB, cost_per_gb=0.0, bandwidth_mbps=1000.0), status=PathStatus.UP)
    store.upsert_path(Path(P2, A, B))
    return store


@contextlib.contextmanager
def raw(path: FsPath) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()


# --- migrations and connection settings ---------------------------------------------------------------

def test_fresh_db_gets_latest_user_version(store: Store, db_path: FsPath) -> None:
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"sites", "endpoints", "paths", "path_metrics", "policies", "flows", "events"} <= tables
    assert {"path_metrics_path_ts", "events_at"} <= indexes


def test_reopen_is_idempotent_and_keeps_data(db_path: FsPath) -> None:
    with Store.open(db_path) as s:
        s.upsert_site(Site(A, "Alpha"))
    for _ in range(2):
        with Store.open(db_path) as s:
            assert s.schema_version == SCHEMA_VERSION
            assert [r.site.id for r in s.list_sites()] == [A]


def test_newer_database_is_refused(db_path: FsPath) -> None:
    Store.open(db_path).close()
    with raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    with pytest.raises(ConfigError, match=rf"schema version {SCHEMA_VERSION + 7} is newer") as exc:
        Store.open(db_path)
    assert exc.value.errors[0][0] == "store.user_version"
    with raw(db_path) as conn:  # and left untouched
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 7


def test_failed_migration_is_rolled_back_whole(db_path: FsPath) -> None:
    good = "CREATE TABLE one (x INTEGER);"
    bad = "CREATE TABLE two (x INTEGER); INSERT INTO one VALUES (1); CREATE TABLE one (y INTEGER);"
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            apply_migrations(conn, [good, bad])
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'two'").fetchone() is None
        assert conn.execute("SELECT count(*) FROM one").fetchone()[0] == 0
        assert not conn.in_transaction
        assert apply_migrations(conn, [good]) == 1  # already there: no-op
    finally:
        conn.close()


def test_wal_foreign_keys_and_synchronous(store: Store, db_path: FsPath) -> None:
    with raw(db_path) as conn:  # WAL is a property of the file, seen by any connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = store._conn
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_synchronous_is_configurable_and_validated(tmp_path: FsPath) -> None:
    with Store.open(tmp_path / "n.db", synchronous="normal", busy_timeout_s=0.25) as s:
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert s._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 250
    with pytest.raises(ConfigError, match=r"store\.synchronous: expected one of OFF, NORMAL, FULL, EXTRA"):
        Store.open(tmp_path / "x.db", synchronous="sometimes")
    assert not (tmp_path / "x.db").exists()


def test_memory_store_and_garbage_file(tmp_path: FsPath) -> None:
    with Store.open(":memory:") as s:
        s.upsert_site(Site(A, "Alpha"))
        assert s.row_counts()["sites"] == 1
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match=r"store\.path: cannot open"):
        Store.open(junk)
    with pytest.raises(ConfigError, match=r"store\.path: cannot open"):
        Store.open(tmp_path / "no" / "such" / "dir.db")


def test_closed_store_refuses_work(db_path: FsPath) -> None:
    with Store.open(db_path) as s:
        pass
    s.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        s.list_sites()


# --- round trips -------------------------------------------------------------------------------------

def test_sites_round_trip(store: Store) -> None:
    store.upsert_site(Site(A, "Alpha", ("10.0.0.0/16", "fd00::/48")), public_key="pk-a", last_seen=5.0)
    rec = store.get_site(A)
    assert rec is not None
    assert rec.site == Site(A, "Alpha", ("10.0.0.0/16", "fd00::/48"))
    assert (rec.status, rec.public_key, rec.last_seen) == ("active", "pk-a", 5.0)
    # update: None keeps status / key / last_seen, given values replace them
    store.upsert_site(Site(A, "Alpha HQ"), status="degraded")
    rec = store.get_site(A)
    assert rec is not None
    assert (rec.site.name, rec.site.prefixes, rec.status, rec.public_key, rec.last_seen) == (
        "Alpha HQ", (), "degraded", "pk-a", 5.0)
    store.upsert_site(Site(B, "Beta"), status="inactive")
    assert [(r.site.id, r.status) for r in store.list_sites()] == [(A, "degraded"), (B, "inactive")]
    assert store.get_site(C) is None


def test_endpoints_round_trip(seeded: Store) -> None:
    assert seeded.list_endpoints(A) == [Endpoint(EA, A, "192.0.2.1:51820", "fiber", 0.0, 1000.0)]
    assert seeded.list_endpoints(B) == [Endpoint(EB, B, "198.51.100.7:51820", "lte", 2.5, None)]
    assert [e.id for e in seeded.list_endpoints()] == [EA, EB]
    seeded.add_endpoint(Endpoint(EA, A, "192.0.2.9:51820", "fiber", 0.5))  # same id: replaced
    assert seeded.list_endpoints(A) == [Endpoint(EA, A, "192.0.2.9:51820", "fiber", 0.5, None)]
    assert seeded.list_endpoints(C) == []


def test_paths_round_trip_and_status(seeded: Store) -> None:
    rec = seeded.get_path(P1)
    assert rec is not None
    assert rec.path == Path(P1, A, B, EA, EB, 0.0, 1000.0)
    assert rec.status is PathStatus.UP and rec.wg_interface is None and rec.status_changed_at is None
    rec2 = seeded.get_path(P2)
    assert rec2 is not None and rec2.path == Path(P2, A, B) and rec2.status is PathStatus.DOWN
    # re-upserting the config keeps the monitor's status; wg_interface is remembered
    seeded.upsert_path(Path(P1, A, B, EA, EB, cost_per_gb=0.2), wg_interface="wg-mesh-001")
    rec = seeded.get_path(P1)
    assert rec is not None
    assert rec.status is PathStatus.UP and rec.path.cost_per_gb == 0.2 and rec.path.bandwidth_mbps is None
    assert rec.wg_interface == "wg-mesh-001"
    assert seeded.set_path_status(P1, "degraded", at=12.5) is PathStatus.UP
    assert seeded.set_path_status(P1, PathStatus.DOWN) is PathStatus.DEGRADED
    rec = seeded.get_path(P1)
    assert rec is not None and rec.status is PathStatus.DOWN and rec.status_changed_at == 12.5
    assert [r.path.id for r in seeded.list_paths()] == [P1, P2]
    assert [r.path.id for r in seeded.list_paths(src_site=B)] == []
    assert [r.path.id for r in seeded.list_paths(dst_site=B, status=PathStatus.DOWN)] == [P1, P2]
    assert seeded.get_path(PathId("nope")) is None


def test_metrics_round_trip_history_and_prune(seeded: Store) -> None:
    samples = [metrics(float(t), latency_ms=10.0 + t) for t in (3, 1, 2, 5, 4)]
    for m in samples:
        seeded.record_metrics(P1, m)
    seeded.record_metrics(P2, metrics(2.5, latency_ms=math.inf, loss_pct=100.0, score=0.0))
    history = seeded.metrics_history(P1)
    assert history == sorted(samples, key=lambda m: m.measured_at)
    assert [m.measured_at for m in seeded.metrics_history(P1, since=2, until=4)] == [2.0, 3.0, 4.0]
    assert [m.measured_at for m in seeded.metrics_history(P1, limit=2)] == [4.0, 5.0]  # most recent, in order
    assert [m.measured_at for m in seeded.metrics_history(P1, since=1, limit=0)] == []
    assert seeded.latest_metrics(P1) == samples[3]
    assert seeded.latest_metrics(P2) == metrics(2.5, latency_ms=math.inf, loss_pct=100.0, score=0.0)
    assert seeded.latest_metrics(PathId("nope")) is None
    assert seeded.prune_metrics(older_than=3.0) == 3  # P1 @1, @2 and P2 @2.5
    assert [m.measured_at for m in seeded.metrics_history(P1)] == [3.0, 4.0, 5.0]
    assert seeded.metrics_history(P2) == []
    with pytest.raises(ConfigError, match=r"query\.limit: expected an integer in \[0, "):
        seeded.metrics_history(P1, limit=-1)


def test_policies_round_trip(store: Store) -> None:
    voip = {"match": {"dst_port": [5060, 5061], "protocol": "udp"}, "preference": "lowest_latency",
            "sla": {"max_latency_ms": 150.0}, "note": None}
    store.upsert_policy("voip", 10, True, voip, now=100.0)
    store.upsert_policy("bulk", 200, False, {"preference": "lowest_cost"}, now=101.0)
    store.upsert_policy("default", 1000, True, {}, now=102.0)
    recs = store.list_policies()
    assert [(r.name, r.priority, r.enabled) for r in recs] == [
        ("voip", 10, True), ("bulk", 200, False), ("default", 1000, True)]
    assert recs[0].spec == voip and (recs[0].created_at, recs[0].updated_at) == (100.0, 100.0)
    store.upsert_policy("voip", 5, False, {"preference": "highest_bandwidth"}, now=150.0)
    rec = store.get_policy("voip")
    assert rec is not None
    assert (rec.priority, rec.enabled, rec.spec, rec.created_at, rec.updated_at) == (
        5, False, {"preference": "highest_bandwidth"}, 100.0, 150.0)
    assert [r.name for r in store.list_policies(enabled_only=True)] == ["default"]
    assert store.delete_policy("bulk") is True
    assert store.delete_policy("bulk") is False
    assert [r.name for r in store.list_policies()] == ["voip", "default"]


def test_flows_round_trip(seeded: Store) -> None:
    seeded.upsert_flow(FLOW, path_id=P1, policy="voip", started_at=10.0, last_seen=12.0, bytes=1500, packets=3)
    # untrusted keys are canonicalised: protocol names and IPv6 spellings
    v6 = ("fd00:0:0:0::1", "FD00:1::0001", 443, 55000, "tcp")
    seeded.upsert_flow(v6, started_at=11.0)  # type: ignore[arg-type]
    v6_key = FlowKey("fd00::1", "fd00:1::1", 443, 55000, 6)
    assert seeded.list_flows() == [
        FlowRecord(FLOW, P1, "voip", 10.0, 12.0, 1500, 3),
        FlowRecord(v6_key, None, None, 11.0, 11.0, 0, 0),
    ]
    seeded.upsert_flow(FLOW, path_id=P2, policy="voip", started_at=10.0, last_seen=20.0, bytes=9000, packets=9)
    assert seeded.get_flow(FLOW) == FlowRecord(FLOW, P2, "voip", 10.0, 20.0, 9000, 9)
    assert seeded.list_flows(path_id=P2) == [FlowRecord(FLOW, P2, "voip", 10.0, 20.0, 9000, 9)]
    assert seeded.remove_flow(v6) is True  # type: ignore[arg-type]
    assert seeded.remove_flow(v6_key) is False
    assert seeded.row_counts()["flows"] == 1


def test_events_round_trip(store: Store) -> None:
    flow = FLOW
    events = [
        PathStatusChanged(at=1.0, path_id=P1, old=PathStatus.UP, new=PathStatus.DOWN, reason="probe loss",
                          metrics=metrics(1.0, latency_ms=math.inf, loss_pct=100.0, score=0.0)),
        FlowAssigned(at=2.0, flow=flow, path_id=P1, policy="voip"),
        FailoverTriggered(at=3.0, flow=flow, from_path=P1, to_path=P2, reason=FailoverReason.PATH_DOWN,
                          policy="voip"),
        FlowAssigned(at=4.0, flow=flow._replace(src_port=40001), path_id=P2, policy="voip"),
    ]
    first = store.record_event(events[0])
    assert store.record_events(events[1:]) == 3
    assert first >= 1
    dicts = [e.as_dict() for e in events]
    assert store.list_events() == dicts
    assert store.list_events(since=2.5) == dicts[2:]
    assert store.list_events(kind="FlowAssigned") == [dicts[1], dicts[3]]
    assert store.list_events(kind="FlowAssigned", limit=1) == [dicts[3]]
    assert store.list_events(limit=2) == dicts[2:]
    assert store.list_events()[0]["metrics"]["latency_ms"] == math.inf
    assert store.prune_events(older_than=3.0) == 2
    assert store.list_events() == dicts[2:]


# --- foreign keys --------------------------------------------------------------------------------------

def test_foreign_keys_are_enforced_by_the_database(seeded: Store) -> None:
    conn = seeded._conn
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO paths (id, src_site, dst_site) VALUES ('p9', 'ghost', ?)", (B,))
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO path_metrics (path_id, ts, latency_ms, jitter_ms, loss_pct, score)"
                     " VALUES ('ghost', 1, 1, 1, 1, 1)")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute("UPDATE paths SET status = 'sideways' WHERE id = ?", (P1,))
    assert seeded.integrity_check() == "ok"


def test_deleting_a_path_cascades_metrics_and_orphans_flows(seeded: Store) -> None:
    seeded.record_metrics(P1, metrics(1.0))
    seeded.upsert_flow(FLOW, path_id=P1, policy="voip", started_at=1.0)
    assert seeded.delete_path(P1) is True
    assert seeded.delete_path(P1) is False
    assert seeded.metrics_history(P1) == []
    assert seeded.get_flow(FLOW) == FlowRecord(FLOW, None, "voip", 1.0, 1.0)
    assert seeded.integrity_check() == "ok"


# --- validation: every error names its field and leaves the database unchanged --------------------------

Case = tuple[str, Callable[[Store], object], str]

INVALID: list[Case] = [
    ("paths.status", lambda s: s.upsert_path(Path(P1, A, B), status="sideways"),
     "paths.status: expected one of up, degraded, down, got 'sideways'"),
    ("paths.src_site", lambda s: s.upsert_path(Path(PathId("p9"), SiteId("x"), B)), "paths.src_site: no site 'x'"),
    ("paths.dst_site", lambda s: s.upsert_path(Path(PathId("p9"), A, SiteId("y"))), "paths.dst_site: no site 'y'"),
    ("paths.src_endpoint", lambda s: s.upsert_path(Path(PathId("p9"), A, B, EB)),
     "paths.src_endpoint: endpoint 'b-lte' belongs to site 'site-b', not 'site-a'"),
    ("paths.dst_endpoint", lambda s: s.upsert_path(Path(PathId("p9"), A, B, EA, EndpointId("zz"))),
     "no endpoint 'zz'"),
    ("paths.cost_per_gb", lambda s: s.upsert_path(Path(P2, A, B, cost_per_gb=-1.0)), "expected a number >= 0"),
    ("paths.id", lambda s: s.set_path_status(PathId("ghost"), "up"), "paths.id: no path 'ghost'"),
    ("paths.status", lambda s: s.set_path_status(P1, "UP"), "expected one of up, degraded, down"),
    ("sites.status", lambda s: s.upsert_site(Site(C, "Gamma"), status="on"),
     "expected one of active, inactive, degraded, got 'on'"),
    ("sites.prefixes[1]", lambda s: s.upsert_site(Site(C, "Gamma", ("10.9.0.0/16", "10.9.0.0/33"))),
     "expected an IPv4 or IPv6 prefix"),
    ("sites.id", lambda s: s.upsert_site(Site(SiteId(""), "Nameless")), "must not be empty"),
    ("sites.last_seen", lambda s: s.upsert_site(Site(C, "Gamma"), last_seen=math.nan), "finite"),
    ("endpoints.site", lambda s: s.add_endpoint(Endpoint(EndpointId("c-1"), C, "203.0.113.1:51820")),
     "endpoints.site: no site 'site-c'"),
    ("endpoints.bandwidth_mbps", lambda s: s.add_endpoint(Endpoint(EA, A, "192.0.2.1:51820", bandwidth_mbps=-5)),
     "expected a number >= 0"),
    ("path_metrics.loss_pct", lambda s: s.record_metrics(P1, metrics(9.0, loss_pct=-0.1)),
     "path_metrics.loss_pct: expected a number in [0, 100], got -0.1"),
    ("path_metrics.loss_pct", lambda s: s.record_metrics(P1, metrics(9.0, loss_pct=100.5)), "in [0, 100]"),
    ("path_metrics.score", lambda s: s.record_metrics(P1, metrics(9.0, score=101.0)), "in [0, 100]"),
    ("path_metrics.score", lambda s: s.record_metrics(P1, metrics(9.0, score=-1.0)), "in [0, 100]"),
    ("path_metrics.latency_ms", lambda s: s.record_metrics(P1, metrics(9.0, latency_ms=math.nan)), "finite"),
    ("path_metrics.jitter_ms", lambda s: s.record_metrics(P1, metrics(9.0, jitter_ms=-1.0)), ">= 0"),
    ("path_metrics.mtu_bytes", lambda s: s.record_metrics(P1, metrics(9.0, mtu_bytes=0)), "integer in [1, 65535]"),
    ("path_metrics.samples", lambda s: s.record_metrics(P1, metrics(9.0, samples=-3)), "expected an integer"),
    ("path_metrics.measured_at", lambda s: s.record_metrics(P1, metrics(math.inf)), "finite"),
    ("path_metrics.path_id", lambda s: s.record_metrics(PathId("ghost"), metrics(9.0)), "no path 'ghost'"),
    ("path_metrics", lambda s: s.record_metrics(P1, {"latency_ms": 1.0}),  # type: ignore[arg-type]
     "expected PathMetrics"),
    ("policies.spec", lambda s: s.upsert_policy("p", 1, True, [1, 2], now=1.0),  # type: ignore[arg-type]
     "expected a JSON object, got list"),
    ("policies.spec", lambda s: s.upsert_policy("p", 1, True, {"ports": {5060}}, now=1.0), "not representable"),
    ("policies.spec", lambda s: s.upsert_policy("p", 1, True, {"x": math.inf}, now=1.0), "not representable"),
    ("policies.priority", lambda s: s.upsert_policy("p", "high", True, {}, now=1.0),  # type: ignore[arg-type]
     "expected an integer, got 'high'"),
    ("policies.enabled", lambda s: s.upsert_policy("p", 1, 1, {}, now=1.0),  # type: ignore[arg-type]
     "expected true or false"),
    ("policies.name", lambda s: s.upsert_policy("  ", 1, True, {}, now=1.0), "must not be empty"),
    ("flows.src_ip", lambda s: s.upsert_flow(FLOW._replace(src_ip="10.0.0.300"), started_at=1.0),
     "expected an IPv4 or IPv6 address"),
    ("flows.dst_port", lambda s: s.upsert_flow(FLOW._replace(dst_port=70000), started_at=1.0), "0-65535"),
    ("flows.protocol", lambda s: s.upsert_flow(FLOW._replace(protocol=300), started_at=1.0), "0-255"),
    ("flows.path_id", lambda s: s.upsert_flow(FLOW, path_id=PathId("ghost"), started_at=1.0), "no path 'ghost'"),
    ("flows.last_seen", lambda s: s.upsert_flow(FLOW, started_at=5.0, last_seen=4.0), "not be before started_at"),
    ("flows.bytes", lambda s: s.upsert_flow(FLOW, started_at=1.0, bytes=-1), "expected an integer"),
    ("flows.flow", lambda s: s.upsert_flow(("10.0.0.1", 5), started_at=1.0),  # type: ignore[arg-type]
     "expected a FlowKey"),
    ("events.at", lambda s: s.record_event(SlaRestored(at=math.nan, subject=P1, traffic_class="voice",
                                                       violated_for_s=1.0)), "finite"),
    ("events", lambda s: s.record_event({"kind": "x"}), "expected an Event"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("field", "call", "reason"), INVALID, ids=[f"{c[0]}:{i}" for i, c in enumerate(INVALID)])
def test_invalid_rows_are_rejected_naming_the_field(seeded: Store, field: str, call: Callable[[Store], object],
                                                    reason: str) -> None:
    seeded.record_metrics(P1, metrics(1.0))
    seeded.upsert_flow(FLOW, path_id=P1, started_at=1.0)
    before = seeded.row_counts()
    snapshot = (seeded.list_sites(), seeded.list_endpoints(), seeded.list_paths(), seeded.list_flows(),
                seeded.list_policies(), seeded.metrics_history(P1), seeded.list_events())
    with pytest.raises(ConfigError) as exc:
        call(seeded)
    assert field in [f for f, _ in exc.value.errors], exc.value.errors
    assert reason in str(exc.value)
    assert seeded.row_counts() == before
    assert (seeded.list_sites(), seeded.list_endpoints(), seeded.list_paths(), seeded.list_flows(),
            seeded.list_policies(), seeded.metrics_history(P1), seeded.list_events()) == snapshot
    assert not seeded._conn.in_transaction


def test_every_problem_is_reported_at_once(seeded: Store) -> None:
    with pytest.raises(ConfigError) as exc:
        seeded.record_metrics(P1, metrics(1.0, loss_pct=-1.0, score=200.0, jitter_ms=math.nan))
    assert [f for f, _ in exc.value.errors] == [
        "path_metrics.jitter_ms", "path_metrics.loss_pct", "path_metrics.score"]
    with pytest.raises(ConfigError) as exc:
        seeded.upsert_path(Path(PathId("p9"), SiteId("x"), SiteId("y")))
    assert str(exc.value) == "paths.src_site: no site 'x'; paths.dst_site: no site 'y'"


# --- batches and transactions ---------------------------------------------------------------------------

def test_record_metrics_many_is_all_or_nothing(seeded: Store) -> None:
    good = [(P1, metrics(float(t))) for t in range(5)]
    bad_value = [*good[:3], (P2, metrics(3.0, loss_pct=150.0)), good[4]]
    with pytest.raises(ConfigError, match=r"path_metrics\[3\]\.loss_pct: expected a number in \[0, 100\]"):
        seeded.record_metrics_many(bad_value)
    bad_path = [*good[:2], (PathId("ghost"), metrics(2.0)), *good[3:]]
    with pytest.raises(ConfigError, match=r"path_metrics\[2\]\.path_id: no path 'ghost'"):
        seeded.record_metrics_many(bad_path)
    assert seeded.row_counts()["path_metrics"] == 0
    assert seeded.record_metrics_many(iter(good)) == 5
    assert seeded.metrics_history(P1) == [m for _, m in good]


def test_record_events_is_all_or_nothing(store: Store) -> None:
    evs = [SlaRestored(at=float(i), subject="p", traffic_class="voice", violated_for_s=1.0) for i in range(4)]
    evs[2] = SlaRestored(at=math.inf, subject="p", traffic_class="voice", violated_for_s=1.0)
    with pytest.raises(ConfigError, match=r"events\[2\]\.at"):
        store.record_events(evs)
    assert store.row_counts()["events"] == 0


def test_transaction_groups_writes_and_rolls_back_on_error(seeded: Store) -> None:
    before = seeded.row_counts()
    with pytest.raises(sqlite3.IntegrityError), seeded.transaction():
        seeded.upsert_site(Site(C, "Gamma"))
        seeded.record_metrics(P1, metrics(1.0))
        seeded.record_event(SlaRestored(at=1.0, subject=P1, traffic_class="voice", violated_for_s=1.0))
        # a write that only the database's constraints catch, after the others succeeded
        seeded._conn.execute("UPDATE paths SET status = 'sideways' WHERE id = ?", (P1,))
    assert seeded.row_counts() == before
    assert not seeded._conn.in_transaction
    with seeded.transaction():
        seeded.upsert_site(Site(C, "Gamma"))
        seeded.record_metrics(P1, metrics(1.0))
    assert seeded.row_counts()["sites"] == before["sites"] + 1
    assert seeded.row_counts()["path_metrics"] == 1


def test_nested_transaction_failure_undoes_only_the_inner_block(seeded: Store) -> None:
    with seeded.transaction():
        seeded.record_metrics(P1, metrics(1.0))
        with pytest.raises(ConfigError):  # a failing write inside a group is its own savepoint
            seeded.record_metrics_many([(P1, metrics(2.0)), (P1, metrics(3.0, score=-5.0))])
        with pytest.raises(RuntimeError), seeded.transaction():
            seeded.record_metrics(P1, metrics(4.0))
            raise RuntimeError("inner")
        seeded.record_metrics(P1, metrics(5.0))
    assert [m.measured_at for m in seeded.metrics_history(P1)] == [1.0, 5.0]


def test_write_lock_held_by_another_connection_times_out(db_path: FsPath) -> None:
    with Store.open(db_path) as first, Store.open(db_path, busy_timeout_s=0.05) as second:
        with first.transaction():
            first.upsert_site(Site(A, "Alpha"))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                second.upsert_site(Site(B, "Beta"))
            assert second.list_sites() == []  # readers are not blocked in WAL mode
        assert [r.site.id for r in second.list_sites()] == [A]


# --- crash safety ----------------------------------------------------------------------------------------

CHILD = r"""
import sys
from patronus.agent.store import Store
from patronus.core.events import SlaRestored

store = Store.open(sys.argv[1])
n = int(sys.argv[2])
for i in range(n):  # N separate committed transactions
    store.record_event(SlaRestored(at=float(i), subject="p", traffic_class="voice", violated_for_s=1.0))
print("committed", flush=True)
store._conn.execute("PRAGMA cache_size = 2")  # make the uncommitted pages spill into the WAL file
with store.transaction():
    store.record_events(SlaRestored(at=1000.0 + i, subject="x" * 400, traffic_class="bulk", violated_for_s=2.0)
                        for i in range(500))
    print("pending", flush=True)
    sys.stdin.read()  # never commits: blocks until killed
"""


def _wait_for_line(proc: subprocess.Popen[bytes], want: bytes, buf: bytearray, deadline: float) -> None:
    """Read the child's stdout until a line equal to `want` arrives; fail at `deadline`."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while want not in buf.splitlines():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"child did not print {want!r} in time; stdout so far: {bytes(buf)!r}")
            if sel.select(timeout=remaining):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    assert proc.stderr is not None
                    pytest.fail(f"child exited ({proc.wait()}) before {want!r}: {proc.stderr.read().decode()}")
                buf += chunk


def test_sigkill_mid_write_loses_no_committed_data(tmp_path: FsPath) -> None:
    db = tmp_path / "crash.db"
    n = 25
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    with subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(n)], cwd=tmp_path, env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            buf = bytearray()
            deadline = time.monotonic() + 10.0
            _wait_for_line(proc, b"committed", buf, deadline)
            wal_committed = os.path.getsize(f"{db}-wal")
            _wait_for_line(proc, b"pending", buf, deadline)
            assert os.path.getsize(f"{db}-wal") > wal_committed  # uncommitted frames are on disk
        finally:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == -signal.SIGKILL

    with Store.open(db) as s:
        assert s.row_counts()["events"] == n
        assert [e["at"] for e in s.list_events()] == [float(i) for i in range(n)]
        assert s.integrity_check() == "ok"
    with raw(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == n
