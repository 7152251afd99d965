"""The site agent's SQLite store: the one place the agent's durable state lives.

This module owns the on-disk schema (sites, endpoints, paths, path metrics history, routing policies,
flows and the event log), its versioned migrations, and every read and write of it. It uses only the
standard library's `sqlite3`.

Guarantees:

* Every row is validated in Python before anything is written; bad input raises `ConfigError` naming
  every offending field (`paths.status: expected one of up, degraded, down, got 'sideways'`). The
  schema's CHECK and FOREIGN KEY constraints are a second line of defence, and a constraint they catch
  is reported as a `ConfigError` too.
* Every public write method is one transaction (batch methods included: a batch is validated as a whole
  and written as a whole, or not at all). `with store.transaction():` groups several calls into one
  transaction; nested groups become savepoints.
* The database runs in WAL mode with `synchronous=FULL` by default, so a crash (even SIGKILL or power
  loss) loses no committed transaction and never leaves a half-written one.

Times are REAL seconds on the driver's clock: the store never reads a clock itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

from patronus.core.errors import ConfigError
from patronus.core.events import Event
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

__all__ = [
    "MIGRATIONS",
    "PATH_STATUSES",
    "SCHEMA_VERSION",
    "SITE_STATUSES",
    "FlowRecord",
    "PathRecord",
    "PolicyRecord",
    "SiteRecord",
    "Store",
    "apply_migrations",
]

SITE_STATUSES: Final = ("active", "inactive", "degraded")
PATH_STATUSES: Final = tuple(s.value for s in PathStatus)  # ("up", "degraded", "down")
SYNCHRONOUS_MODES: Final = ("OFF", "NORMAL", "FULL", "EXTRA")

# --- schema ---------------------------------------------------------------------------------------------
#
# Migration N (1-based) brings a database from `PRAGMA user_version` N-1 to N. Never edit a released
# migration: append a new one. Avoid ';' inside comments of migration scripts (the splitter copes, but
# keep them simple).

_V1_INITIAL: Final = """
CREATE TABLE sites (
    id          TEXT PRIMARY KEY NOT NULL CHECK (length(id) > 0),
    name        TEXT NOT NULL,
    prefixes    TEXT NOT NULL DEFAULT '[]',
    public_key  TEXT,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'degraded')),
    last_seen   REAL
);

CREATE TABLE endpoints (
    id              TEXT PRIMARY KEY NOT NULL CHECK (length(id) > 0),
    site_id         TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    address         TEXT NOT NULL,
    interface_type  TEXT NOT NULL DEFAULT 'wan',
    cost_per_gb     REAL NOT NULL DEFAULT 0 CHECK (cost_per_gb >= 0),
    bandwidth_mbps  REAL CHECK (bandwidth_mbps IS NULL OR bandwidth_mbps >= 0)
);
CREATE INDEX endpoints_site ON endpoints(site_id);

CREATE TABLE paths (
    id                 TEXT PRIMARY KEY NOT NULL CHECK (length(id) > 0),
    src_site           TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    dst_site           TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    src_endpoint       TEXT REFERENCES endpoints(id) ON DELETE SET NULL,
    dst_endpoint       TEXT REFERENCES endpoints(id) ON DELETE SET NULL,
    wg_interface       TEXT,
    cost_per_gb        REAL NOT NULL DEFAULT 0 CHECK (cost_per_gb >= 0),
    bandwidth_mbps     REAL CHECK (bandwidth_mbps IS NULL OR bandwidth_mbps >= 0),
    status             TEXT NOT NULL DEFAULT 'down' CHECK (status IN ('up', 'degraded', 'down')),
    status_changed_at  REAL
);
CREATE INDEX paths_src_site ON paths(src_site);
CREATE INDEX paths_dst_site ON paths(dst_site);
CREATE INDEX paths_src_endpoint ON paths(src_endpoint);
CREATE INDEX paths_dst_endpoint ON paths(dst_endpoint);

CREATE TABLE path_metrics (
    id              INTEGER PRIMARY KEY,
    path_id         TEXT NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
    ts              REAL NOT NULL,
    latency_ms      REAL NOT NULL CHECK (latency_ms >= 0),
    jitter_ms       REAL NOT NULL CHECK (jitter_ms >= 0),
    loss_pct        REAL NOT NULL CHECK (loss_pct >= 0 AND loss_pct <= 100),
    bandwidth_mbps  REAL NOT NULL DEFAULT 0 CHECK (bandwidth_mbps >= 0),
    mtu_bytes       INTEGER NOT NULL DEFAULT 1500 CHECK (mtu_bytes > 0 AND mtu_bytes <= 65535),
    cost_per_gb     REAL NOT NULL DEFAULT 0 CHECK (cost_per_gb >= 0),
    score           REAL NOT NULL CHECK (score >= 0 AND score <= 100),
    samples         INTEGER NOT NULL DEFAULT 0 CHECK (samples >= 0)
);
CREATE INDEX path_metrics_path_ts ON path_metrics(path_id, ts);
CREATE INDEX path_metrics_ts ON path_metrics(ts);

CREATE TABLE policies (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE CHECK (length(name) > 0),
    priority    INTEGER NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    spec        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE flows (
    src_ip      TEXT NOT NULL,
    dst_ip      TEXT NOT NULL,
    src_port    INTEGER NOT NULL CHECK (src_port BETWEEN 0 AND 65535),
    dst_port    INTEGER NOT NULL CHECK (dst_port BETWEEN 0 AND 65535),
    protocol    INTEGER NOT NULL CHECK (protocol BETWEEN 0 AND 255),
    path_id     TEXT REFERENCES paths(id) ON DELETE SET NULL,
    policy      TEXT,
    started_at  REAL NOT NULL,
    last_seen   REAL NOT NULL CHECK (last_seen >= started_at),
    bytes       INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    packets     INTEGER NOT NULL DEFAULT 0 CHECK (packets >= 0),
    PRIMARY KEY (src_ip, dst_ip, src_port, dst_port, protocol)
);
CREATE INDEX flows_path ON flows(path_id);

CREATE TABLE events (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    at    REAL NOT NULL,
    kind  TEXT NOT NULL,
    data  TEXT NOT NULL
);
CREATE INDEX events_at ON events(at);
CREATE INDEX events_kind_at ON events(kind, at);
"""

MIGRATIONS: Final[tuple[str, ...]] = (_V1_INITIAL,)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_TABLES: Final = ("sites", "endpoints", "paths", "path_metrics", "policies", "flows", "events")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _split_sql(script: str) -> list[str]:
    """Split a script into complete statements (string literals, comments and triggers respected)."""
    statements: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            stmt = buf.strip()
            if stmt.strip(";").strip():
                statements.append(stmt)
            buf = ""
    if buf.strip(";").strip():
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()!r}")
    return statements


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring the database on `conn` (autocommit mode) up to `len(migrations)`; return that version.

    Each migration runs in its own `BEGIN IMMEDIATE` transaction together with the `user_version` bump,
    so a failing migration leaves the database at the previous version with nothing of it applied. The
    version is re-read under the write lock, so two processes opening a fresh database race safely.
    Raises `ConfigError` if the database is newer than `migrations`.
    """
    target = len(migrations)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = _user_version(conn)
            if current > target:
                raise ConfigError(
                    f"database schema version {current} is newer than this Patronus supports "
                    f"(latest known version {target}); upgrade Patronus to open it",
                    "store.user_version")
            if current == target:
                conn.execute("COMMIT")
                return target
            for stmt in _split_sql(migrations[current]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {current + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


# --- records returned by the store -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SiteRecord:
    site: Site
    status: str                  # one of SITE_STATUSES
    public_key: str | None = None
    last_seen: float | None = None


@dataclass(frozen=True, slots=True)
class PathRecord:
    path: Path
    status: PathStatus
    wg_interface: str | None = None
    status_changed_at: float | None = None


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    name: str
    priority: int
    enabled: bool
    spec: dict[str, Any]         # the routing policy's dict form, stored opaque
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class FlowRecord:
    flow: FlowKey
    path_id: PathId | None
    policy: str | None
    started_at: float
    last_seen: float
    bytes: int = 0
    packets: int = 0


# --- validation ------------------------------------------------------------------------------------------

class _Problems:
    """Collects (field, reason) pairs; fields are prefixed with the table (or batch item) name."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, reason: str) -> None:
        self.items.append((f"{self.prefix}.{field}" if field else self.prefix, reason))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def _text(p: _Problems, field: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        p.add(field, f"expected a string, got {value!r}")
        return ""
    if not allow_empty and not value.strip():
        p.add(field, "must not be empty")
    return value


def _opt_text(p: _Problems, field: str, value: object) -> str | None:
    return None if value is None else _text(p, field, value)


def _number(p: _Problems, field: str, value: object, *, lo: float | None = None, hi: float | None = None,
            allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        p.add(field, f"expected a number, got {value!r}")
        return 0.0
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not (allow_inf and x > 0)):
        p.add(field, f"expected a finite number, got {value!r}")
    elif lo is not None and hi is not None and not lo <= x <= hi:
        p.add(field, f"expected a number in [{lo:g}, {hi:g}], got {value!r}")
    elif lo is not None and x < lo:
        p.add(field, f"expected a number >= {lo:g}, got {value!r}")
    elif hi is not None and x > hi:
        p.add(field, f"expected a number <= {hi:g}, got {value!r}")
    return x


def _opt_number(p: _Problems, field: str, value: object, *, lo: float | None = None) -> float | None:
    return None if value is None else _number(p, field, value, lo=lo)


def _integer(p: _Problems, field: str, value: object, *, lo: int = _INT64_MIN, hi: int = _INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        p.add(field, f"expected an integer, got {value!r}")
        return 0
    if not lo <= value <= hi:
        p.add(field, f"expected an integer in [{lo}, {hi}], got {value}")
    return value


def _choice(p: _Problems, field: str, value: object, choices: Sequence[str]) -> str:
    raw = value.value if isinstance(value, PathStatus) else value
    if not isinstance(raw, str) or raw not in choices:
        p.add(field, f"expected one of {', '.join(choices)}, got {value!r}")
        return choices[0]
    return raw


def _instance(p: _Problems, value: object, cls: type, what: str) -> bool:
    if isinstance(value, cls):
        return True
    p.add("", f"expected {what}, got {type(value).__name__} {value!r}")
    return False


def _limit(value: int | None) -> int | None:
    if value is None:
        return None
    p = _Problems("query")
    _integer(p, "limit", value, lo=0)
    p.raise_if_any()
    return value


def _bound(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    p = _Problems("query")
    x = _number(p, name, value)
    p.raise_if_any()
    return x


# --- the store -------------------------------------------------------------------------------------------

class _Database:
    """The connection under a `Store`: opening and migrating, transactions, diagnostics."""


    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        """Wrap an already configured and migrated connection; use `Store.open`."""
        self._conn = conn
        self.path = path
        self._depth = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, synchronous: str = "FULL",
             busy_timeout_s: float = 5.0) -> Self:
        """Open (creating if needed) and migrate the store at `path` (`":memory:"` for a private one)."""
        p = _Problems("store")
        sync = synchronous.upper() if isinstance(synchronous, str) else ""
        if sync not in SYNCHRONOUS_MODES:
            p.add("synchronous", f"expected one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        timeout_s = _number(p, "busy_timeout_s", busy_timeout_s, lo=0)
        p.raise_if_any()
        name = os.fspath(path)
        try:
            conn = sqlite3.connect(name, timeout=timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open {name!r}: {exc}", "store.path") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            try:
                version = _user_version(conn)
            except sqlite3.DatabaseError as exc:
                raise ConfigError(f"cannot open {name!r} as a SQLite database: {exc}", "store.path") from exc
            if version > SCHEMA_VERSION:  # refuse before touching anything (even the journal mode)
                raise ConfigError(
                    f"database schema version {version} is newer than this Patronus supports "
                    f"(latest known version {SCHEMA_VERSION}); upgrade Patronus to open it",
                    "store.user_version")
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode not in ("wal", "memory"):
                raise ConfigError(f"could not enable WAL journal mode (got {mode!r})", "store.journal_mode")
            conn.execute(f"PRAGMA synchronous = {sync}")
            conn.execute("PRAGMA foreign_keys = ON")
            if conn.execute("PRAGMA foreign_keys").fetchone()[0] != 1:
                raise ConfigError("this SQLite build cannot enforce foreign keys", "store.foreign_keys")
            apply_migrations(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, name)

    def close(self) -> None:
        """Close the connection; an open `transaction()` is rolled back. Idempotent."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return _user_version(self._conn)

    # -- transactions ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one transaction: all are committed together or none is.

        The outermost block is `BEGIN IMMEDIATE … COMMIT`; nested blocks are savepoints, so an error
        inside a nested block undoes only that block (and propagates).
        """
        conn = self._conn
        if self._depth == 0:
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
        else:
            name = f"patronus_sp{self._depth}"
            conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield
            except BaseException:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                raise
            else:
                conn.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1

    @contextlib.contextmanager
    def _constraint(self, table: str) -> Iterator[None]:
        """Report a constraint the Python validation missed as a ConfigError naming the table."""
        try:
            yield
        except sqlite3.IntegrityError as exc:
            raise ConfigError(f"rejected by the database: {exc}", table) from exc

    def _exists(self, table: str, key: object) -> bool:
        return self._conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (key,)).fetchone() is not None

    # -- diagnostics ----------------------------------------------------------------------------------

    def row_counts(self) -> dict[str, int]:
        """Number of rows in each table."""
        return {t: int(self._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in _TABLES}

    def integrity_check(self) -> str:
        """`"ok"`, or SQLite's list of problems (integrity and foreign keys), one per line."""
        problems = [str(r[0]) for r in self._conn.execute("PRAGMA integrity_check")]
        if problems == ["ok"]:
            problems = []
        problems += [f"foreign key violation in {r[0]} row {r[1]} -> {r[2]}"
                     for r in self._conn.execute("PRAGMA foreign_key_check")]
        return "\n".join(problems) or "ok"


class _TopologyTables(_Database):
    """What the site knows of the network: sites, endpoints, paths and their measurements."""

    # -- sites ----------------------------------------------------------------------------------------

    def upsert_site(self, site: Site, *, status: str | None = None, public_key: str | None = None,
                    last_seen: float | None = None) -> None:
        """Insert or update `site`. A `None` status/public_key/last_seen keeps the stored value (a new
        site starts 'active')."""
        p = _Problems("sites")
        if not _instance(p, site, Site, "a Site"):
            p.raise_if_any()
        _text(p, "id", site.id)
        _text(p, "name", site.name)
        prefixes = self._prefixes(p, site.prefixes)
        st = None if status is None else _choice(p, "status", status, SITE_STATUSES)
        key = _opt_text(p, "public_key", public_key)
        seen = _opt_number(p, "last_seen", last_seen)
        p.raise_if_any()
        with self.transaction(), self._constraint("sites"):
            self._conn.execute(
                "INSERT INTO sites (id, name, prefixes, public_key, status, last_seen)"
                " VALUES (:id, :name, :prefixes, :key, COALESCE(:status, 'active'), :seen)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, prefixes = excluded.prefixes,"
                " public_key = COALESCE(:key, public_key), status = COALESCE(:status, status),"
                " last_seen = COALESCE(:seen, last_seen)",
                {"id": site.id, "name": site.name, "prefixes": json.dumps(prefixes), "key": key,
                 "status": st, "seen": seen})

    @staticmethod
    def _prefixes(p: _Problems, prefixes: object) -> list[str]:
        if not isinstance(prefixes, tuple | list):
            p.add("prefixes", f"expected a sequence of CIDR prefixes, got {prefixes!r}")
            return []
        out: list[str] = []
        for i, prefix in enumerate(prefixes):
            try:
                if not isinstance(prefix, str):
                    raise ValueError
                ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                p.add(f"prefixes[{i}]", f"expected an IPv4 or IPv6 prefix, got {prefix!r}")
            else:
                out.append(prefix)
        return out

    def get_site(self, site_id: SiteId | str) -> SiteRecord | None:
        row = self._conn.execute("SELECT * FROM sites WHERE id = ?", (site_id,)).fetchone()
        return None if row is None else _site(row)

    def list_sites(self) -> list[SiteRecord]:
        return [_site(r) for r in self._conn.execute("SELECT * FROM sites ORDER BY id")]

    # -- endpoints ------------------------------------------------------------------------------------

    def add_endpoint(self, endpoint: Endpoint) -> None:
        """Insert `endpoint`, or replace the stored endpoint with the same id."""
        p = _Problems("endpoints")
        if not _instance(p, endpoint, Endpoint, "an Endpoint"):
            p.raise_if_any()
        _text(p, "id", endpoint.id)
        _text(p, "site", endpoint.site)
        _text(p, "address", endpoint.address)
        _text(p, "interface_type", endpoint.interface_type)
        cost = _number(p, "cost_per_gb", endpoint.cost_per_gb, lo=0)
        bw = _opt_number(p, "bandwidth_mbps", endpoint.bandwidth_mbps, lo=0)
        p.raise_if_any()
        with self.transaction(), self._constraint("endpoints"):
            if not self._exists("sites", endpoint.site):
                p.add("site", f"no site {endpoint.site!r}")
                p.raise_if_any()
            self._conn.execute(
                "INSERT INTO endpoints (id, site_id, address, interface_type, cost_per_gb, bandwidth_mbps)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET site_id = excluded.site_id, address = excluded.address,"
                " interface_type = excluded.interface_type, cost_per_gb = excluded.cost_per_gb,"
                " bandwidth_mbps = excluded.bandwidth_mbps",
                (endpoint.id, endpoint.site, endpoint.address, endpoint.interface_type, cost, bw))

    def list_endpoints(self, site: SiteId | str | None = None) -> list[Endpoint]:
        """Endpoints of `site` (all endpoints if None), ordered by id."""
        if site is None:
            rows = self._conn.execute("SELECT * FROM endpoints ORDER BY id")
        else:
            rows = self._conn.execute("SELECT * FROM endpoints WHERE site_id = ? ORDER BY id", (site,))
        return [_endpoint(r) for r in rows]

    # -- paths ----------------------------------------------------------------------------------------

    def upsert_path(self, path: Path, *, status: PathStatus | str | None = None,
                    wg_interface: str | None = None) -> None:
        """Insert or update `path`. A `None` status/wg_interface keeps the stored value (a new path
        starts 'down' until the monitor says otherwise). Empty endpoint ids mean "not specified"."""
        p = _Problems("paths")
        if not _instance(p, path, Path, "a Path"):
            p.raise_if_any()
        _text(p, "id", path.id)
        _text(p, "src_site", path.src_site)
        _text(p, "dst_site", path.dst_site)
        for field in ("src_endpoint", "dst_endpoint"):
            value = getattr(path, field)
            if value is not None and not isinstance(value, str):
                p.add(field, f"expected an endpoint id, got {value!r}")
        cost = _number(p, "cost_per_gb", path.cost_per_gb, lo=0)
        bw = _opt_number(p, "bandwidth_mbps", path.bandwidth_mbps, lo=0)
        st = None if status is None else _choice(p, "status", status, PATH_STATUSES)
        wg = _opt_text(p, "wg_interface", wg_interface)
        p.raise_if_any()
        with self.transaction(), self._constraint("paths"):
            for field in ("src_site", "dst_site"):
                if not self._exists("sites", getattr(path, field)):
                    p.add(field, f"no site {getattr(path, field)!r}")
            for field, site in (("src_endpoint", path.src_site), ("dst_endpoint", path.dst_site)):
                endpoint = getattr(path, field) or None
                if endpoint is None:
                    continue
                row = self._conn.execute("SELECT site_id FROM endpoints WHERE id = ?", (endpoint,)).fetchone()
                if row is None:
                    p.add(field, f"no endpoint {endpoint!r}")
                elif row["site_id"] != site:
                    p.add(field, f"endpoint {endpoint!r} belongs to site {row['site_id']!r}, not {site!r}")
            p.raise_if_any()
            self._conn.execute(
                "INSERT INTO paths (id, src_site, dst_site, src_endpoint, dst_endpoint, wg_interface,"
                " cost_per_gb, bandwidth_mbps, status)"
                " VALUES (:id, :src, :dst, :src_ep, :dst_ep, :wg, :cost, :bw, COALESCE(:status, 'down'))"
                " ON CONFLICT (id) DO UPDATE SET src_site = excluded.src_site, dst_site = excluded.dst_site,"
                " src_endpoint = excluded.src_endpoint, dst_endpoint = excluded.dst_endpoint,"
                " wg_interface = COALESCE(:wg, wg_interface), cost_per_gb = excluded.cost_per_gb,"
                " bandwidth_mbps = excluded.bandwidth_mbps, status = COALESCE(:status, status)",
                {"id": path.id, "src": path.src_site, "dst": path.dst_site,
                 "src_ep": path.src_endpoint or None, "dst_ep": path.dst_endpoint or None, "wg": wg,
                 "cost": cost, "bw": bw, "status": st})

    def get_path(self, path_id: PathId | str) -> PathRecord | None:
        row = self._conn.execute("SELECT * FROM paths WHERE id = ?", (path_id,)).fetchone()
        return None if row is None else _path(row)

    def list_paths(self, *, src_site: SiteId | str | None = None, dst_site: SiteId | str | None = None,
                   status: PathStatus | None = None) -> list[PathRecord]:
        """Paths matching every given filter, ordered by id."""
        sql = "SELECT * FROM paths WHERE 1"
        args: list[object] = []
        for column, value in (("src_site", src_site), ("dst_site", dst_site),
                              ("status", None if status is None else PathStatus(status).value)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return [_path(r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    def set_path_status(self, path_id: PathId | str, status: PathStatus | str, *,
                        at: float | None = None) -> PathStatus:
        """Set the status of an existing path; returns the previous status."""
        p = _Problems("paths")
        st = _choice(p, "status", status, PATH_STATUSES)
        when = _opt_number(p, "status_changed_at", at)
        p.raise_if_any()
        with self.transaction(), self._constraint("paths"):
            row = self._conn.execute("SELECT status FROM paths WHERE id = ?", (path_id,)).fetchone()
            if row is None:
                p.add("id", f"no path {path_id!r}")
                p.raise_if_any()
            self._conn.execute(
                "UPDATE paths SET status = ?, status_changed_at = COALESCE(?, status_changed_at)"
                " WHERE id = ?", (st, when, path_id))
        return PathStatus(row["status"])

    def delete_path(self, path_id: PathId | str) -> bool:
        """Delete a path and its metrics history; flows on it keep their row with path_id NULL."""
        with self.transaction():
            return self._conn.execute("DELETE FROM paths WHERE id = ?", (path_id,)).rowcount > 0

    # -- path metrics ---------------------------------------------------------------------------------

    def record_metrics(self, path_id: PathId | str, metrics: PathMetrics) -> None:
        """Append one sample (timestamped `metrics.measured_at`) to the path's history."""
        self._record_metrics([(path_id, metrics)], single=True)

    def record_metrics_many(self, samples: Iterable[tuple[PathId | str, PathMetrics]]) -> int:
        """Append many samples in one transaction: all are written, or (on any error) none. Returns the
        number written. Errors name the item: `path_metrics[3].loss_pct`."""
        return self._record_metrics(list(samples), single=False)

    def _record_metrics(self, samples: list[tuple[PathId | str, PathMetrics]], *, single: bool) -> int:
        problems: list[tuple[str, str]] = []
        rows: list[tuple[object, ...]] = []
        for i, item in enumerate(samples):
            p = _Problems("path_metrics" if single else f"path_metrics[{i}]")
            if not isinstance(item, tuple) or len(item) != 2:
                p.add("", f"expected a (path_id, PathMetrics) pair, got {item!r}")
            else:
                path_id, m = item
                _text(p, "path_id", path_id)
                if _instance(p, m, PathMetrics, "PathMetrics"):
                    rows.append((
                        path_id,
                        _number(p, "measured_at", m.measured_at),
                        _number(p, "latency_ms", m.latency_ms, lo=0, allow_inf=True),
                        _number(p, "jitter_ms", m.jitter_ms, lo=0, allow_inf=True),
                        _number(p, "loss_pct", m.loss_pct, lo=0, hi=100),
                        _number(p, "bandwidth_mbps", m.bandwidth_mbps, lo=0),
                        _integer(p, "mtu_bytes", m.mtu_bytes, lo=1, hi=65535),
                        _number(p, "cost_per_gb", m.cost_per_gb, lo=0),
                        _number(p, "score", m.score, lo=0, hi=100),
                        _integer(p, "samples", m.samples, lo=0),
                    ))
            problems.extend(p.items)
        if problems:
            raise ConfigError(problems)
        with self.transaction(), self._constraint("path_metrics"):
            known: dict[object, bool] = {}
            for i, row in enumerate(rows):
                pid = row[0]
                if pid not in known:
                    known[pid] = self._exists("paths", pid)
                if not known[pid]:
                    field = "path_metrics" if single else f"path_metrics[{i}]"
                    problems.append((f"{field}.path_id", f"no path {pid!r}"))
            if problems:
                raise ConfigError(problems)
            self._conn.executemany(
                "INSERT INTO path_metrics (path_id, ts, latency_ms, jitter_ms, loss_pct, bandwidth_mbps,"
                " mtu_bytes, cost_per_gb, score, samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def metrics_history(self, path_id: PathId | str, since: float | None = None, until: float | None = None,
                        limit: int | None = None) -> list[PathMetrics]:
        """Samples of `path_id` with `since <= measured_at <= until`, oldest first. With `limit`, the most
        recent `limit` such samples (still oldest first)."""
        where = "path_id = ?"
        args: list[object] = [path_id]
        lo, hi, n = _bound("since", since), _bound("until", until), _limit(limit)
        if lo is not None:
            where += " AND ts >= ?"
            args.append(lo)
        if hi is not None:
            where += " AND ts <= ?"
            args.append(hi)
        if n is None:
            rows = self._conn.execute(f"SELECT * FROM path_metrics WHERE {where} ORDER BY ts, id", args)
            return [_metrics(r) for r in rows]
        rows = self._conn.execute(
            f"SELECT * FROM path_metrics WHERE {where} ORDER BY ts DESC, id DESC LIMIT ?", [*args, n])
        return [_metrics(r) for r in reversed(rows.fetchall())]

    def latest_metrics(self, path_id: PathId | str) -> PathMetrics | None:
        row = self._conn.execute(
            "SELECT * FROM path_metrics WHERE path_id = ? ORDER BY ts DESC, id DESC LIMIT 1", (path_id,)
        ).fetchone()
        return None if row is None else _metrics(row)

    def prune_metrics(self, older_than: float) -> int:
        """Delete every sample measured before `older_than`; returns how many were deleted."""
        cutoff = _bound("older_than", older_than)
        with self.transaction():
            return self._conn.execute("DELETE FROM path_metrics WHERE ts < ?", (cutoff,)).rowcount


class Store(_TopologyTables):
    """The agent's SQLite store. Open with `Store.open(path)`; close with `close()` or `with`.

    One `Store` wraps one connection and is not thread-safe (like `sqlite3.Connection`); several
    processes may open the same file (WAL mode, `busy_timeout`).
    """

    # -- policies -------------------------------------------------------------------------------------

    def upsert_policy(self, name: str, priority: int, enabled: bool, spec: dict[str, Any],
                      now: float) -> None:
        """Insert or replace the policy `name`. `spec` (a JSON object) is stored opaque. `now` becomes
        `updated_at`, and `created_at` for a new policy."""
        p = _Problems("policies")
        _text(p, "name", name)
        _integer(p, "priority", priority)
        if not isinstance(enabled, bool):
            p.add("enabled", f"expected true or false, got {enabled!r}")
        text = ""
        if not isinstance(spec, dict):
            p.add("spec", f"expected a JSON object, got {type(spec).__name__} {spec!r}")
        else:
            try:
                text = json.dumps(spec, allow_nan=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                p.add("spec", f"not representable as JSON: {exc}")
        at = _number(p, "updated_at", now)
        p.raise_if_any()
        with self.transaction(), self._constraint("policies"):
            self._conn.execute(
                "INSERT INTO policies (name, priority, enabled, spec, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET priority = excluded.priority, enabled = excluded.enabled,"
                " spec = excluded.spec, updated_at = excluded.updated_at",
                (name, priority, int(enabled), text, at, at))

    def get_policy(self, name: str) -> PolicyRecord | None:
        row = self._conn.execute("SELECT * FROM policies WHERE name = ?", (name,)).fetchone()
        return None if row is None else _policy(row)

    def delete_policy(self, name: str) -> bool:
        with self.transaction():
            return self._conn.execute("DELETE FROM policies WHERE name = ?", (name,)).rowcount > 0

    def list_policies(self, *, enabled_only: bool = False) -> list[PolicyRecord]:
        """Policies ordered by (priority ascending, name); what a priority means is the router's call."""
        sql = "SELECT * FROM policies" + (" WHERE enabled = 1" if enabled_only else "")
        return [_policy(r) for r in self._conn.execute(sql + " ORDER BY priority, name")]

    # -- flows ----------------------------------------------------------------------------------------

    def upsert_flow(self, flow: FlowKey, *, started_at: float, last_seen: float | None = None,
                    path_id: PathId | str | None = None, policy: str | None = None, bytes: int = 0,
                    packets: int = 0) -> None:
        """Insert or replace the row of `flow` (every column is replaced). `last_seen` defaults to
        `started_at`; the key is canonicalised (`FlowKey.parse`)."""
        p = _Problems("flows")
        key = self._flow_key(p, flow)
        start = _number(p, "started_at", started_at)
        seen = start if last_seen is None else _number(p, "last_seen", last_seen)
        if not p.items and seen < start:
            p.add("last_seen", f"must not be before started_at ({start!r}), got {seen!r}")
        if path_id is not None:
            _text(p, "path_id", path_id)
        pol = _opt_text(p, "policy", policy)
        nbytes = _integer(p, "bytes", bytes, lo=0)
        npackets = _integer(p, "packets", packets, lo=0)
        p.raise_if_any()
        assert key is not None
        with self.transaction(), self._constraint("flows"):
            if path_id is not None and not self._exists("paths", path_id):
                p.add("path_id", f"no path {path_id!r}")
                p.raise_if_any()
            self._conn.execute(
                "INSERT OR REPLACE INTO flows (src_ip, dst_ip, src_port, dst_port, protocol, path_id, policy,"
                " started_at, last_seen, bytes, packets) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, path_id, pol, start, seen, nbytes, npackets))

    @staticmethod
    def _flow_key(p: _Problems, flow: object) -> FlowKey | None:
        if not isinstance(flow, tuple) or len(flow) != 5:
            p.add("flow", f"expected a FlowKey (src_ip, dst_ip, src_port, dst_port, protocol), got {flow!r}")
            return None
        try:
            return FlowKey.parse(*flow)
        except ConfigError as exc:
            for field, reason in exc.errors:
                p.add(field, reason)
            return None

    def get_flow(self, flow: FlowKey) -> FlowRecord | None:
        key = self._canonical_key(flow)
        row = self._conn.execute(
            "SELECT * FROM flows WHERE src_ip = ? AND dst_ip = ? AND src_port = ? AND dst_port = ?"
            " AND protocol = ?", key).fetchone()
        return None if row is None else _flow(row)

    def remove_flow(self, flow: FlowKey) -> bool:
        key = self._canonical_key(flow)
        with self.transaction():
            return self._conn.execute(
                "DELETE FROM flows WHERE src_ip = ? AND dst_ip = ? AND src_port = ? AND dst_port = ?"
                " AND protocol = ?", key).rowcount > 0

    def _canonical_key(self, flow: object) -> FlowKey:
        p = _Problems("flows")
        key = self._flow_key(p, flow)
        p.raise_if_any()
        assert key is not None
        return key

    def list_flows(self, *, path_id: PathId | str | None = None) -> list[FlowRecord]:
        """Flows (on `path_id` if given), ordered by start time then key."""
        order = " ORDER BY started_at, src_ip, dst_ip, src_port, dst_port, protocol"
        if path_id is None:
            rows = self._conn.execute("SELECT * FROM flows" + order)
        else:
            rows = self._conn.execute("SELECT * FROM flows WHERE path_id = ?" + order, (path_id,))
        return [_flow(r) for r in rows]

    # -- events ---------------------------------------------------------------------------------------

    def record_event(self, event: Event) -> int:
        """Append `event` to the log; returns its row id."""
        rows = self._event_rows([event], single=True)
        with self.transaction(), self._constraint("events"):
            cur = self._conn.execute("INSERT INTO events (at, kind, data) VALUES (?, ?, ?)", rows[0])
            assert cur.lastrowid is not None
            return cur.lastrowid

    def record_events(self, events: Iterable[Event]) -> int:
        """Append many events in one transaction (all or none); returns how many were written."""
        rows = self._event_rows(list(events), single=False)
        with self.transaction(), self._constraint("events"):
            self._conn.executemany("INSERT INTO events (at, kind, data) VALUES (?, ?, ?)", rows)
        return len(rows)

    @staticmethod
    def _event_rows(events: list[Event], *, single: bool) -> list[tuple[float, str, str]]:
        problems: list[tuple[str, str]] = []
        rows: list[tuple[float, str, str]] = []
        for i, event in enumerate(events):
            p = _Problems("events" if single else f"events[{i}]")
            if _instance(p, event, Event, "an Event"):
                at = _number(p, "at", event.at)
                try:
                    # Non-finite floats (an unreachable path's latency) are kept as Python's json does.
                    data = json.dumps(event.as_dict(), separators=(",", ":"))
                except (TypeError, ValueError) as exc:
                    p.add("data", f"event is not representable as JSON: {exc}")
                else:
                    rows.append((at, event.kind, data))
            problems.extend(p.items)
        if problems:
            raise ConfigError(problems)
        return rows

    def list_events(self, since: float | None = None, kind: str | None = None,
                    limit: int | None = None) -> list[dict[str, Any]]:
        """Events (their `as_dict()` form) with `at >= since` and of `kind`, oldest first. With `limit`,
        the most recent `limit` such events (still oldest first)."""
        where = "1"
        args: list[object] = []
        lo, n = _bound("since", since), _limit(limit)
        if lo is not None:
            where += " AND at >= ?"
            args.append(lo)
        if kind is not None:
            where += " AND kind = ?"
            args.append(kind)
        if n is None:
            rows = self._conn.execute(f"SELECT data FROM events WHERE {where} ORDER BY at, id",
                                      args).fetchall()
        else:
            rows = self._conn.execute(
                f"SELECT data FROM events WHERE {where} ORDER BY at DESC, id DESC LIMIT ?", [*args, n]
            ).fetchall()[::-1]
        return [json.loads(r["data"]) for r in rows]

    def prune_events(self, older_than: float) -> int:
        """Delete every event before `older_than`; returns how many were deleted."""
        cutoff = _bound("older_than", older_than)
        with self.transaction():
            return self._conn.execute("DELETE FROM events WHERE at < ?", (cutoff,)).rowcount


# --- row converters --------------------------------------------------------------------------------------

def _site(r: sqlite3.Row) -> SiteRecord:
    return SiteRecord(site=Site(SiteId(r["id"]), r["name"], tuple(json.loads(r["prefixes"]))),
                      status=r["status"], public_key=r["public_key"], last_seen=r["last_seen"])


def _endpoint(r: sqlite3.Row) -> Endpoint:
    return Endpoint(id=EndpointId(r["id"]), site=SiteId(r["site_id"]), address=r["address"],
                    interface_type=r["interface_type"], cost_per_gb=r["cost_per_gb"],
                    bandwidth_mbps=r["bandwidth_mbps"])


def _path(r: sqlite3.Row) -> PathRecord:
    path = Path(id=PathId(r["id"]), src_site=SiteId(r["src_site"]), dst_site=SiteId(r["dst_site"]),
                src_endpoint=EndpointId(r["src_endpoint"] or ""),
                dst_endpoint=EndpointId(r["dst_endpoint"] or ""),
                cost_per_gb=r["cost_per_gb"], bandwidth_mbps=r["bandwidth_mbps"])
    return PathRecord(path=path, status=PathStatus(r["status"]), wg_interface=r["wg_interface"],
                      status_changed_at=r["status_changed_at"])


def _metrics(r: sqlite3.Row) -> PathMetrics:
    return PathMetrics(latency_ms=r["latency_ms"], jitter_ms=r["jitter_ms"], loss_pct=r["loss_pct"],
                       score=r["score"], measured_at=r["ts"], bandwidth_mbps=r["bandwidth_mbps"],
                       mtu_bytes=r["mtu_bytes"], cost_per_gb=r["cost_per_gb"], samples=r["samples"])


def _policy(r: sqlite3.Row) -> PolicyRecord:
    return PolicyRecord(name=r["name"], priority=r["priority"], enabled=bool(r["enabled"]),
                        spec=json.loads(r["spec"]), created_at=r["created_at"], updated_at=r["updated_at"])


def _flow(r: sqlite3.Row) -> FlowRecord:
    key = FlowKey(r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"], r["protocol"])
    return FlowRecord(flow=key, path_id=None if r["path_id"] is None else PathId(r["path_id"]),
                      policy=r["policy"], started_at=r["started_at"], last_seen=r["last_seen"],
                      bytes=r["bytes"], packets=r["packets"])
