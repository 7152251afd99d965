"""The agent's HTTP API against a fake agent: auth on every route, the error shape, policy CRUD, the event
stream's subscription lifecycle and the Prometheus exposition.

`FakeAgent` implements `AgentControl` with plain in-memory state. Tests use one `TestClient` as a context
manager, so every request and WebSocket runs on the same event loop (as in the real agent); events are
pushed onto that loop with `call_soon_threadsafe`, since the test body runs in another thread.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from emulation.wait import wait_for as _wait_for
from patronus.agent.api import AgentControl, create_app
from patronus.agent.metrics import MetricsSnapshot, PathSample, render
from patronus.core.policy import RoutingPolicy, default_policies

with warnings.catch_warnings():
    # Starlette 1.x's TestClient prefers the `httpx2` package and warns once, at import, when it falls back
    # to `httpx` (what is installed; we add no dependency for tests). Only that one warning is silenced.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient` is deprecated",
                            category=StarletteDeprecationWarning)
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit

TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
P = "/api/v1"


def _path(pid: str, uplink: str, status: str, latency: float, **kw: Any) -> dict[str, Any]:
    """A path as `AgentApi.list_paths` answers it."""
    row = {"id": pid, "remote": "branch", "uplink": uplink, "remote_uplink": "isp1", "interface": f"pt1p{uplink[-1]}",
           "status": status, "status_since": 100.0, "latency_ms": latency, "jitter_ms": 2.0, "loss_pct": 0.5,
           "score": 91.0, "bandwidth_mbps": 100.0, "mtu_bytes": 1420, "cost_per_gb": 0.0, "probes_sent": 120,
           "probes_received": 118, "probes_timed_out": 1, "probes_late": 0, "probes_duplicate": 0,
           "probes_rejected": 1, "probes_rejected_by_reason": {"bad_mac": 1}, "probe_timeout_ms": 250.0, "flows": 3,
           "local_address": f"192.0.2.{uplink[-1]}", "remote_address": "198.51.100.1"}
    row.update(kw)
    return row


class FakeAgent:
    """In-memory AgentControl, answering in the shapes of the real one (`patronus.agent.control.AgentApi`,
    described by `patronus.agent.apidoc`). `calls` records every mutating or testing call."""

    def __init__(self) -> None:
        self.paths = [_path("branch:isp1-isp1", "isp1", "up", 20.0),
                      _path("branch:isp2-isp1", "isp2", "degraded", math.nan, score=None)]
        self.policies: dict[str, RoutingPolicy] = {p.name: p for p in default_policies()}
        self.flows = [
            {"src_ip": "10.1.0.5", "dst_ip": "10.2.0.9", "src_port": 40000, "dst_port": 5060, "protocol": 17,
             "policy": "VoIP/Video", "path": "branch:isp1-isp1", "origin_path": "branch:isp1-isp1", "bytes": 1000,
             "packets": 10, "age_s": 3.0, "expires_in_s": 30},
            {"src_ip": "10.1.0.6", "dst_ip": "10.2.0.9", "src_port": 40001, "dst_port": 443, "protocol": 6,
             "policy": "Default", "path": "branch:isp2-isp1", "origin_path": "branch:isp1-isp1", "bytes": 5000,
             "packets": 40, "age_s": 9.0, "expires_in_s": None},
        ]
        self.events = [{"kind": "path_status", "at": float(i), "path": "branch:isp1-isp1"} for i in range(5)]
        self.queues: list[tuple[asyncio.Queue[dict[str, Any]], asyncio.AbstractEventLoop]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.test_error: Exception | None = None
        self.crash = False

    def site_info(self) -> dict[str, Any]:
        if self.crash:
            raise RuntimeError("bug")
        return {"name": "hq", "id": 1, "lan_prefixes": ["10.1.0.0/16"], "public_key": "a" * 43 + "=",
                "uplinks": [{"name": f"isp{n}", "interface": f"eth{n}", "address": f"192.0.2.{n}", "gateway": None,
                             "cost_per_gb": 0.0, "bandwidth_mbps": None} for n in (1, 2)],
                "remotes": [{"name": "branch", "id": 2, "prefixes": ["10.2.0.0/16"],
                             "endpoints": [{"uplink": "isp1", "address": "198.51.100.1"}]}],
                "wireguard_backend": "wireguard-go", "steering": "nft", "started_at": 1.0, "version": "0.1.0",
                "monitor_profile": "default", "steering_changes": 0, "last_steering_change": None,
                "displaced_slots": 0, "pending_failbacks": 0, "adopted": None, "steering_held": False}

    def list_paths(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self.paths]

    def path_history(self, path_id: str, since: float | None, until: float | None, limit: int) -> list[dict[str, Any]]:
        if path_id not in {p["id"] for p in self.paths}:
            raise KeyError(path_id)
        self.calls.append(("path_history", path_id, since, until, limit))
        return [{"measured_at": 1.0, "latency_ms": 20.0, "jitter_ms": 1.0, "loss_pct": 0.0, "score": 95.0,
                 "bandwidth_mbps": None, "mtu_bytes": 1420}]

    def list_policies(self) -> list[RoutingPolicy]:
        return sorted(self.policies.values(), key=lambda p: p.priority)

    def put_policy(self, policy: RoutingPolicy) -> bool:
        self.calls.append(("put_policy", policy.name))
        created = policy.name not in self.policies
        self.policies[policy.name] = policy
        return created

    def delete_policy(self, name: str) -> None:
        self.calls.append(("delete_policy", name))
        del self.policies[name]

    def list_flows(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self.flows]

    def topology(self) -> dict[str, Any]:
        return {"nodes": [{"id": "hq", "kind": "local", "prefixes": ["10.1.0.0/16"]},
                          {"id": "branch", "kind": "remote", "prefixes": ["10.2.0.0/16"]}],
                "links": [{"path": p["id"], "from": "hq", "to": "branch", "uplink": p["uplink"],
                           "remote_uplink": "isp1", "status": p["status"], "score": p["score"]} for p in self.paths]}

    def steering_plan(self) -> dict[str, Any]:
        return {"held": False, "buckets": 16,
                "new": [{"remote": "branch", "policy": None, "bucket": 0, "origin": "branch:isp1-isp1", "gen": 1,
                         "path": "branch:isp1-isp1"}],
                "slots": [{"remote": "branch", "policy": None, "origin": "branch:isp1-isp1", "gen": 0,
                           "path": "branch:isp2-isp1"}]}

    async def test_path(self, path_id: str, probes: int, bandwidth: bool) -> dict[str, Any]:
        if path_id not in {p["id"] for p in self.paths}:
            raise KeyError(path_id)
        if self.test_error is not None:
            raise self.test_error
        self.calls.append(("test_path", path_id, probes, bandwidth))
        await asyncio.sleep(0)
        out: dict[str, Any] = {"path": path_id, "probes": {"sent": probes, "received": probes, "loss_pct": 0.0,
                                                          "rejected": 0, "rtt_min_ms": 19.0, "rtt_avg_ms": 20.0,
                                                          "rtt_max_ms": 22.0, "rtt_p50_ms": 20.0, "rtt_p95_ms": 21.5,
                                                          "jitter_ms": 0.7}}
        if bandwidth:
            out["bandwidth"] = {"error": "ValueError: bandwidth tests need authenticated probing"}
        return out

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("recent_events", limit))
        return self.events[-limit:]

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.queues.append((q, asyncio.get_running_loop()))
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self.queues = [(x, loop) for x, loop in self.queues if x is not q]

    def publish(self, event: dict[str, Any]) -> None:
        """Called from the test thread: hand the event to each subscriber on its own loop."""
        for q, loop in self.queues:
            loop.call_soon_threadsafe(q.put_nowait, event)

    def prometheus_snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(
            paths=[
                PathSample("branch:isp1-isp1", "branch", "isp1", "up", latency_ms=20.0, jitter_ms=2.0,
                           loss_ratio=0.005, score=91.0, flows=3, probes_sent=120, probes_received=118,
                           probes_rejected={"bad_mac": 1}),
                PathSample("branch:isp2-isp1", "branch", "isp2", "degraded", latency_ms=80.0, jitter_ms=9.0,
                           loss_ratio=0.02, score=55.0, flows=1, probes_sent=100, probes_received=98),
                PathSample("branch:isp3-isp1", "branch", "isp3", "down", probes_sent=50),
            ],
            failovers={"path_down": 2, "quality": 1},
            unattributed_rejections={"unknown_sender": 4},
        )


def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """`emulation.wait.wait_for`, failing the test."""
    _wait_for(cond, timeout_s, "the condition", interval_s=0.01, error=AssertionError)


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def client(agent: FakeAgent) -> Iterator[TestClient]:
    with TestClient(create_app(agent, TOKEN), headers=AUTH) as c:
        yield c


@pytest.fixture
def anon(agent: FakeAgent) -> Iterator[TestClient]:
    with TestClient(create_app(agent, TOKEN)) as c:
        yield c


def errors_of(resp: Any) -> dict[str, str]:
    body = resp.json()
    assert set(body) == {"error", "errors"}, body
    assert isinstance(body["error"], str) and body["error"]
    return {e["field"]: e["reason"] for e in body["errors"]}


def test_fake_agent_satisfies_the_protocol(agent: FakeAgent) -> None:
    assert isinstance(agent, AgentControl)


def test_empty_token_is_refused(agent: FakeAgent) -> None:
    with pytest.raises(ValueError, match="token"):
        create_app(agent, "")


# --- authentication -----------------------------------------------------------------------------------

POLICY = {"name": "web", "priority": 10, "match": {"protocol": "tcp", "dst_ports": "443"},
          "preference": "lowest_latency"}

ROUTES = [
    ("GET", f"{P}/site", None),
    ("GET", f"{P}/paths", None),
    ("GET", f"{P}/paths/{{path_id}}", None),
    ("GET", f"{P}/paths/{{path_id}}/metrics", None),
    ("POST", f"{P}/paths/{{path_id}}/test", {"probes": 5}),
    ("GET", f"{P}/policies", None),
    ("GET", f"{P}/policies/{{name}}", None),
    ("POST", f"{P}/policies", POLICY),
    ("PUT", f"{P}/policies/{{name}}", POLICY),
    ("DELETE", f"{P}/policies/{{name}}", None),
    ("GET", f"{P}/flows", None),
    ("GET", f"{P}/topology", None),
    ("GET", f"{P}/steering", None),
    ("GET", f"{P}/events", None),
    ("GET", f"{P}/openapi.json", None),
    ("GET", "/metrics", None),
    ("GET", f"{P}/metrics", None),
]


def _url(template: str) -> str:
    return template.replace("{path_id}", "branch:isp1-isp1").replace("{name}", "web")


def test_route_table_is_covered(client: TestClient) -> None:
    """Every HTTP route of the app is in ROUTES (so the auth test covers it), plus the open health check."""
    app: Any = client.app
    seen = set()
    for r in app.routes:
        if isinstance(r, Route):
            path = r.path.replace("{name:anytext}", "{name}")
            seen |= {(m, path) for m in (r.methods or ()) if m != "HEAD"}
    assert seen == {(m, path) for m, path, _ in ROUTES} | {("GET", f"{P}/health")}
    assert [r.path for r in app.routes if isinstance(r, WebSocketRoute)] == [f"{P}/events/stream"]


@pytest.mark.parametrize(("method", "template", "body"), ROUTES, ids=[f"{m} {u}" for m, u, _ in ROUTES])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": "Bearer"}, {"Authorization": f"bearer {TOKEN}x"}],
                         ids=["missing", "wrong", "basic", "empty", "longer"])
def test_every_route_needs_the_token(anon: TestClient, agent: FakeAgent, method: str, template: str,
                                     body: Any, headers: dict[str, str]) -> None:
    before = dict(agent.policies)
    resp = anon.request(method, _url(template), json=body, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert "header.authorization" in errors_of(resp)
    assert agent.policies == before and agent.calls == []


@pytest.mark.parametrize(("method", "template", "body"), ROUTES, ids=[f"{m} {u}" for m, u, _ in ROUTES])
def test_every_route_accepts_the_token(anon: TestClient, method: str, template: str, body: Any) -> None:
    resp = anon.request(method, _url(template), json=body, headers=AUTH)
    assert resp.status_code in (200, 201, 204, 404), resp.text     # 404: "web" does not exist yet
    assert resp.status_code != 401


def test_scheme_is_case_insensitive(anon: TestClient) -> None:
    assert anon.get(f"{P}/site", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_query_token_is_not_accepted_over_http(anon: TestClient) -> None:
    assert anon.get(f"{P}/site", params={"token": TOKEN}).status_code == 401


def test_unauthenticated_requests_learn_nothing(anon: TestClient) -> None:
    assert anon.get(f"{P}/no-such-route").status_code == 401
    resp = anon.post(f"{P}/policies", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 401


def test_health_is_open(anon: TestClient) -> None:
    resp = anon.get(f"{P}/health")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


# --- reading ------------------------------------------------------------------------------------------


def test_steering_shows_the_plan_the_dataplane_follows(client: TestClient) -> None:
    got = client.get(f"{P}/steering").json()
    assert got["held"] is False and got["buckets"] == 16
    assert got["slots"] == [{"remote": "branch", "policy": None, "origin": "branch:isp1-isp1", "gen": 0,
                             "path": "branch:isp2-isp1"}]


def test_site_topology_and_paths(client: TestClient) -> None:
    assert client.get(f"{P}/site").json()["name"] == "hq"
    assert [n["id"] for n in client.get(f"{P}/topology").json()["nodes"]] == ["hq", "branch"]
    paths = client.get(f"{P}/paths").json()
    assert [p["id"] for p in paths] == ["branch:isp1-isp1", "branch:isp2-isp1"]
    one = client.get(f"{P}/paths/branch:isp2-isp1").json()
    assert one["status"] == "degraded"
    assert one["latency_ms"] is None and one["score"] is None       # NaN is not JSON: sent as null


def test_unknown_path_is_404(client: TestClient) -> None:
    for resp in (client.get(f"{P}/paths/nope"), client.get(f"{P}/paths/nope/metrics"),
                 client.post(f"{P}/paths/nope/test", json={})):
        assert resp.status_code == 404
        assert "path.path_id" in errors_of(resp)


def test_unknown_route_is_404_in_the_error_shape(client: TestClient) -> None:
    resp = client.get(f"{P}/nothing-here")
    assert resp.status_code == 404
    errors_of(resp)


def test_path_history_passes_the_query(client: TestClient, agent: FakeAgent) -> None:
    resp = client.get(f"{P}/paths/branch:isp1-isp1/metrics", params={"since": 10, "until": 20.5, "limit": 7})
    assert resp.status_code == 200 and resp.json()[0]["score"] == 95.0
    assert agent.calls == [("path_history", "branch:isp1-isp1", 10.0, 20.5, 7)]
    client.get(f"{P}/paths/branch:isp1-isp1/metrics")
    assert agent.calls[-1] == ("path_history", "branch:isp1-isp1", None, None, 1000)


@pytest.mark.parametrize(("params", "fields"), [
    ({"limit": 0}, {"query.limit"}),
    ({"limit": "many", "since": "yesterday"}, {"query.limit", "query.since"}),
    ({"since": 20, "until": 10}, {"query.until"}),
    ({"since": "nan"}, {"query.since"}),
])
def test_path_history_validation(client: TestClient, agent: FakeAgent, params: dict[str, Any],
                                 fields: set[str]) -> None:
    resp = client.get(f"{P}/paths/branch:isp1-isp1/metrics", params=params)
    assert resp.status_code == 422
    assert set(errors_of(resp)) == fields
    assert agent.calls == []


def test_flows_filters(client: TestClient) -> None:
    assert len(client.get(f"{P}/flows").json()) == 2
    assert [f["bytes"] for f in client.get(f"{P}/flows", params={"path": "branch:isp2-isp1"}).json()] == [5000]
    assert [f["bytes"] for f in client.get(f"{P}/flows", params={"policy": "VoIP/Video"}).json()] == [1000]
    assert client.get(f"{P}/flows", params={"policy": "VoIP/Video", "path": "branch:isp2-isp1"}).json() == []


def test_events_limit(client: TestClient, agent: FakeAgent) -> None:
    assert len(client.get(f"{P}/events").json()) == 5
    assert agent.calls[-1] == ("recent_events", 100)
    assert [e["at"] for e in client.get(f"{P}/events", params={"limit": 2}).json()] == [3.0, 4.0]
    resp = client.get(f"{P}/events", params={"limit": 0})
    assert resp.status_code == 422 and "query.limit" in errors_of(resp)


# --- path tests ---------------------------------------------------------------------------------------


def test_path_test_defaults_and_values(client: TestClient, agent: FakeAgent) -> None:
    assert client.post(f"{P}/paths/branch:isp1-isp1/test").status_code == 200            # no body at all
    assert client.post(f"{P}/paths/branch:isp1-isp1/test", json={}).status_code == 200
    resp = client.post(f"{P}/paths/branch:isp1-isp1/test", json={"probes": 1000, "bandwidth": True})
    assert resp.status_code == 200 and resp.json()["probes"]["sent"] == 1000
    assert [c[2:] for c in agent.calls] == [(20, False), (20, False), (1000, True)]


def test_path_test_validation_names_every_field(client: TestClient, agent: FakeAgent) -> None:
    resp = client.post(f"{P}/paths/branch:isp1-isp1/test", json={"probes": 0, "bandwidth": "yes", "x": 1})
    assert resp.status_code == 422
    assert set(errors_of(resp)) == {"body.probes", "body.bandwidth", "body.x"}
    resp = client.post(f"{P}/paths/branch:isp1-isp1/test", json={"probes": 1001})
    assert set(errors_of(resp)) == {"body.probes"}
    assert agent.calls == []


def test_path_test_value_error_is_422(client: TestClient, agent: FakeAgent) -> None:
    agent.test_error = ValueError("bandwidth test needs iperf3 on the remote")
    resp = client.post(f"{P}/paths/branch:isp1-isp1/test", json={"bandwidth": True})
    assert resp.status_code == 422
    assert "iperf3" in errors_of(resp)["body"]


# --- policies -----------------------------------------------------------------------------------------


def test_policies_list_and_get_with_slash_in_name(client: TestClient) -> None:
    names = [p["name"] for p in client.get(f"{P}/policies").json()]
    assert names == ["VoIP/Video", "Gaming", "Bulk Transfers", "Default"]
    resp = client.get(f"{P}/policies/VoIP/Video")
    assert resp.status_code == 200 and resp.json()["preference"] == "latency_sensitive"
    assert client.get(f"{P}/policies/Bulk%20Transfers").json()["priority"] == 3


def test_policy_round_trip(client: TestClient, agent: FakeAgent) -> None:
    resp = client.post(f"{P}/policies", json=POLICY)
    assert resp.status_code == 201
    assert resp.headers["location"] == f"{P}/policies/web"
    assert resp.json()["match"] == {"protocol": "tcp", "dst_ports": "443"}
    got = client.get(f"{P}/policies/web").json()
    assert RoutingPolicy.from_dict(got) == RoutingPolicy.from_dict(POLICY) == agent.policies["web"]

    resp = client.post(f"{P}/policies", json={**POLICY, "priority": 11})
    assert resp.status_code == 409 and "body.name" in errors_of(resp)
    assert agent.policies["web"].priority == 10

    resp = client.put(f"{P}/policies/web", json={**POLICY, "priority": 12})
    assert resp.status_code == 200 and resp.json()["priority"] == 12
    assert agent.policies["web"].priority == 12

    body = {k: v for k, v in POLICY.items() if k != "name"}           # name comes from the URL
    resp = client.put(f"{P}/policies/ssh/admin", json={**body, "match": {"dst_ports": 22}})
    assert resp.status_code == 201 and resp.headers["location"] == f"{P}/policies/ssh%2Fadmin"
    assert agent.policies["ssh/admin"].match.dst_ports is not None

    assert client.delete(f"{P}/policies/web").status_code == 204
    assert client.get(f"{P}/policies/web").status_code == 404
    resp = client.delete(f"{P}/policies/web")
    assert resp.status_code == 404 and "path.name" in errors_of(resp)
    assert client.delete(f"{P}/policies/ssh/admin").status_code == 204
    assert set(agent.policies) == {p.name for p in default_policies()}


def test_bad_policy_names_every_field_and_changes_nothing(client: TestClient, agent: FakeAgent) -> None:
    before = dict(agent.policies)
    bad = {"name": "web", "priority": -1, "match": {"colour": "red", "dst_ports": "http"}, "speed": "fast"}
    for resp in (client.post(f"{P}/policies", json=bad), client.put(f"{P}/policies/web", json=bad)):
        assert resp.status_code == 422
        fields = errors_of(resp)
        assert {"body.priority", "body.match.colour", "body.match.dst_ports", "body.speed"} <= set(fields)
        assert "0-1000000" in fields["body.priority"]
    assert agent.policies == before and agent.calls == []


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "x" * 65, "bell\x07"])
def test_a_policy_name_must_be_printable_and_short_on_every_write(client: TestClient, agent: FakeAgent,
                                                                  name: str) -> None:
    before = dict(agent.policies)
    for resp in (client.post(f"{P}/policies", json={**POLICY, "name": name}),
                 client.put(f"{P}/policies/{quote(name, safe='')}", json={**POLICY, "name": name})):
        assert resp.status_code == 422 and "body.name" in errors_of(resp), resp.text
    assert agent.policies == before and agent.calls == []


def test_a_stored_policy_with_a_name_from_before_the_check_can_be_read_replaced_and_removed(
        client: TestClient, agent: FakeAgent) -> None:
    legacy = RoutingPolicy.from_dict({**POLICY, "name": "a\nb"}, stored=True)
    agent.policies[legacy.name] = legacy
    url = f"{P}/policies/{quote(legacy.name, safe='')}"
    assert client.get(url).json()["name"] == "a\nb"
    assert client.put(url, json={k: v for k, v in POLICY.items() if k != "name"}).status_code == 422   # not kept
    assert client.delete(url).status_code == 204 and "a\nb" not in agent.policies


def test_put_name_must_match_url(client: TestClient, agent: FakeAgent) -> None:
    resp = client.put(f"{P}/policies/web", json={**POLICY, "name": "other", "priority": -5})
    assert resp.status_code == 422
    assert {"body.name", "body.priority"} <= set(errors_of(resp))
    resp = client.put(f"{P}/policies/Default", json={**POLICY, "name": "web"})
    assert resp.status_code == 422 and set(errors_of(resp)) == {"body.name"}
    assert agent.calls == []


@pytest.mark.parametrize("payload", [[1, 2], "policy", 3])
def test_policy_body_must_be_an_object(client: TestClient, agent: FakeAgent, payload: Any) -> None:
    resp = client.post(f"{P}/policies", json=payload)
    assert resp.status_code == 422 and "body" in errors_of(resp)
    assert agent.calls == []


def test_malformed_json_and_wrong_content_type(client: TestClient, agent: FakeAgent) -> None:
    resp = client.post(f"{P}/policies", content=b'{"name": ', headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert "invalid JSON" in errors_of(resp)["body"]
    resp = client.post(f"{P}/policies", content=b'{"name": "x", "priority": 1}', headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415 and "header.content-type" in errors_of(resp)
    resp = client.put(f"{P}/policies/x", content=b'{"priority": 1}')                    # no Content-Type
    assert resp.status_code == 415
    resp = client.post(f"{P}/paths/branch:isp1-isp1/test", content=b'{"probes": 5}', headers={"Content-Type": ""})
    assert resp.status_code == 415
    resp = client.post(f"{P}/policies")
    assert resp.status_code == 422 and "body" in errors_of(resp)
    resp = client.put(f"{P}/policies/x", content=b'{"priority": 1}',
                      headers={"Content-Type": "application/vnd.patronus+json"})
    assert resp.status_code == 201
    assert agent.calls == [("put_policy", "x")]


def test_agent_rejection_is_422(client: TestClient, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    from patronus.core.errors import ConfigError

    def refuse(policy: RoutingPolicy) -> bool:
        raise ConfigError("too many policies", "policies")

    monkeypatch.setattr(agent, "put_policy", refuse)
    resp = client.put(f"{P}/policies/web", json=POLICY)
    assert resp.status_code == 422 and errors_of(resp) == {"policies": "too many policies"}


def test_internal_error_is_500_in_the_error_shape(agent: FakeAgent) -> None:
    agent.crash = True
    with TestClient(create_app(agent, TOKEN), headers=AUTH, raise_server_exceptions=False) as c:
        resp = c.get(f"{P}/site")
    assert resp.status_code == 500
    assert errors_of(resp) == {}


# --- event stream -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
def test_event_stream_delivers_and_unsubscribes(anon: TestClient, agent: FakeAgent, how: str) -> None:
    url, headers = f"{P}/events/stream", {}
    if how == "header":
        headers = AUTH
    else:
        url += f"?token={TOKEN}"
    with anon.websocket_connect(url, headers=headers) as ws:
        assert len(agent.queues) == 1                     # subscribed before the socket opened
        agent.publish({"kind": "path_status", "at": 12.5, "path": "branch:isp1-isp1", "status": "down",
                       "latency_ms": math.inf})
        agent.publish({"kind": "failover", "at": 12.6, "from": "a", "to": "b", "reason": "path_down"})
        assert ws.receive_json() == {"kind": "path_status", "at": 12.5, "path": "branch:isp1-isp1",
                                     "status": "down", "latency_ms": None}
        assert ws.receive_json()["kind"] == "failover"
    wait_for(lambda: agent.queues == [])


def test_event_stream_many_clients(client: TestClient, agent: FakeAgent) -> None:
    with client.websocket_connect(f"{P}/events/stream") as a, client.websocket_connect(f"{P}/events/stream") as b:
        assert len(agent.queues) == 2
        agent.publish({"kind": "x", "at": 1.0})
        assert a.receive_json() == b.receive_json() == {"kind": "x", "at": 1.0}
    wait_for(lambda: agent.queues == [])


@pytest.mark.parametrize("url_headers", [("", {}), ("?token=wrong", {}), ("", {"Authorization": "Bearer wrong"})],
                         ids=["missing", "wrong-query", "wrong-header"])
def test_event_stream_refuses_bad_token(anon: TestClient, agent: FakeAgent,
                                        url_headers: tuple[str, dict[str, str]]) -> None:
    suffix, headers = url_headers
    with pytest.raises(WebSocketDisconnect) as exc, anon.websocket_connect(f"{P}/events/stream{suffix}",
                                                                            headers=headers) as ws:
        ws.receive_text()
    assert exc.value.code == 1008
    assert agent.queues == []


# --- Prometheus ---------------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _lab(path: str, remote: str, uplink: str, **more: str) -> frozenset[tuple[str, str]]:
    return frozenset({"path": path, "remote": remote, "uplink": uplink, **more}.items())


@pytest.mark.parametrize("url", ["/metrics", f"{P}/metrics"])
def test_metrics_exposition(client: TestClient, url: str) -> None:
    resp = client.get(url)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == CONTENT_TYPE_LATEST
    s = _samples(resp.text)
    a = _lab("branch:isp1-isp1", "branch", "isp1")
    b = _lab("branch:isp2-isp1", "branch", "isp2")
    c = _lab("branch:isp3-isp1", "branch", "isp3")
    assert s[("patronus_path_latency_ms", a)] == 20.0
    assert s[("patronus_path_jitter_ms", b)] == 9.0
    assert s[("patronus_path_loss_ratio", a)] == 0.005
    assert s[("patronus_path_score", b)] == 55.0
    assert ("patronus_path_latency_ms", c) not in s                  # not measured: absent, not NaN
    assert ("patronus_path_score", c) not in s
    assert [s[("patronus_path_up", x)] for x in (a, b, c)] == [1.0, 1.0, 0.0]
    for x, status in ((a, "up"), (b, "degraded"), (c, "down")):
        for st in ("up", "degraded", "down"):
            key = ("patronus_path_status", x | {("status", st)})
            assert s[key] == (1.0 if st == status else 0.0)
    assert s[("patronus_path_flows", a)] == 3.0
    assert s[("patronus_probes_sent_total", a)] == 120.0
    assert s[("patronus_probes_sent_total", c)] == 50.0
    assert s[("patronus_probes_received_total", b)] == 98.0
    assert s[("patronus_probes_rejected_total", a | {("reason", "bad_mac")})] == 1.0
    assert s[("patronus_probes_rejected_total", _lab("", "", "", reason="unknown_sender"))] == 4.0
    assert s[("patronus_failovers_total", frozenset({("reason", "path_down")}))] == 2.0
    assert s[("patronus_failovers_total", frozenset({("reason", "quality")}))] == 1.0
    assert not any(name.endswith("_created") for name, _ in s)
    assert all(name.startswith("patronus_") for name, _ in s)


def test_render_has_no_global_state() -> None:
    snap = MetricsSnapshot(paths=[PathSample("p", "r", "u", "up", probes_sent=1)])
    assert render(snap) == render(snap)                                # no duplicate registration
    assert b"patronus_probes_sent_total" in render(snap)
    assert b"patronus_path_up" in render(MetricsSnapshot())            # families with no rows still render


def test_bad_status_is_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        PathSample("p", "r", "u", "sideways")


# --- what the fuzzer found (tests/agent/test_api_fuzz.py) ------------------------------------------------


def test_a_405_lists_every_method_of_the_path(client: TestClient) -> None:
    """GET and POST /policies are two routes: Starlette's 405 named the first one's methods only."""
    for url, allowed in ((f"{P}/policies", "GET, POST"), (f"{P}/policies/web", "DELETE, GET, PUT"),
                         (f"{P}/site", "GET")):
        resp = client.request("PATCH", url)
        assert resp.status_code == 405 and resp.headers["allow"] == allowed
        assert "method" in errors_of(resp)


def test_an_unknown_query_parameter_is_named_not_ignored(client: TestClient, agent: FakeAgent) -> None:
    resp = client.get(f"{P}/events", params={"limt": 5})
    assert resp.status_code == 422 and "expected one of limit" in errors_of(resp)["query.limt"]
    resp = client.get(f"{P}/site", params={"x": 1})
    assert resp.status_code == 422 and set(errors_of(resp)) == {"query.x"}
    assert agent.calls == []


def test_whole_numbers_written_as_floats_are_whole_numbers(client: TestClient, agent: FakeAgent) -> None:
    """JSON has one number type: 10.0 is an integer to JSON Schema (and so to the document)."""
    resp = client.post(f"{P}/policies", json={**POLICY, "priority": 10.0, "match": {"dst_ports": [80.0, 443]}})
    assert resp.status_code == 201 and resp.json()["priority"] == 10 and resp.json()["match"]["dst_ports"] == "80-443"
    assert client.post(f"{P}/paths/branch:isp1-isp1/test", json={"probes": 5.0}).json()["probes"]["sent"] == 5
    resp = client.post(f"{P}/policies", json={**POLICY, "name": "x", "priority": 10.5})
    assert resp.status_code == 422 and set(errors_of(resp)) == {"body.priority"}


def test_a_body_that_is_not_utf8_is_400_naming_the_body(client: TestClient, agent: FakeAgent) -> None:
    resp = client.post(f"{P}/policies", content=b'{"name": "\xff"}', headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "body" in errors_of(resp)
    assert agent.calls == []


@pytest.mark.parametrize("match", [{"dst_prefix": False}, {"src_prefix": 5}, {"dst_ports": [True, 5]}])
def test_match_values_of_the_wrong_kind_are_refused(client: TestClient, agent: FakeAgent,
                                                    match: dict[str, Any]) -> None:
    """ip_network read false as 0.0.0.0/32 and 5 as 0.0.0.5/32; a pair took true as port 1."""
    resp = client.post(f"{P}/policies", json={**POLICY, "match": match})
    assert resp.status_code == 422 and {f"body.match.{k}" for k in match} == set(errors_of(resp))
    assert agent.calls == []


def test_a_port_between_spaces_of_any_kind_is_read(client: TestClient) -> None:
    """`\\s` (which the port syntax allows around a number) takes \\x1c-\\x1f, int() does not: a 500."""
    resp = client.post(f"{P}/policies", json={**POLICY, "match": {"dst_ports": "\x1f80\x1f-\u200a90"}})
    assert resp.status_code == 201 and resp.json()["match"]["dst_ports"] == "80-90"


def test_the_document_declares_the_real_answers(client: TestClient) -> None:
    doc = client.get(f"{P}/openapi.json").json()
    assert "HTTPValidationError" not in str(doc)                    # every error is ErrorBody
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"][f"{P}/health"]["get"]["security"] == []
    ops = {(m.upper(), path): op for path, item in doc["paths"].items() for m, op in item.items()}
    assert set(ops) == {(m, u) for m, u, _ in ROUTES if u != f"{P}/metrics" and not u.endswith("openapi.json")} \
        | {("GET", f"{P}/health")}
    for (method, path), op in ops.items():
        assert "422" in op["responses"], (method, path)              # an unknown query parameter
        assert ("401" in op["responses"]) == (path != f"{P}/health")
    put = ops["PUT", f"{P}/policies/{{name}}"]
    assert set(put["responses"]) == {"200", "201", "400", "401", "415", "422"}
    assert put["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PolicyReplace")
    assert "name" in doc["components"]["schemas"]["PolicyCreate"]["required"]
    assert "name" not in doc["components"]["schemas"]["PolicyReplace"]["required"]
