"""The shapes of the agent API's answers and bodies, for its OpenAPI document (`/api/v1/openapi.json`).

The routes build their answers from the agent's state and parse policy bodies with
`RoutingPolicy.from_dict` (so that every error names its field in the API's one error shape); these
models only *describe* them, so that clients and fuzzers (schemathesis) can use the document. Fields
that carry open-ended data (a test's result, an event's payload) allow any further keys; a test keeps
the models and the answers in step (tests/agent/test_api.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldError(BaseModel):
    field: str = Field(description="where: body.match.dst_ports, query.limit, path.name, header.content-type")
    reason: str


class ErrorBody(BaseModel):
    """Every error answer (4xx, 5xx)."""

    error: str
    errors: list[FieldError]


class Health(BaseModel):
    status: str


class Uplink(_Open):
    name: str
    interface: str
    address: str
    gateway: str | None
    cost_per_gb: float
    bandwidth_mbps: float | None


class Remote(_Open):
    name: str
    id: int
    prefixes: list[str]
    endpoints: list[dict[str, str]]


class SiteInfo(_Open):
    name: str
    id: int
    lan_prefixes: list[str]
    public_key: str
    uplinks: list[Uplink]
    remotes: list[Remote]
    wireguard_backend: str
    steering: str
    started_at: float
    version: str
    monitor_profile: str
    steering_changes: int
    last_steering_change: float | None
    displaced_slots: int
    pending_failbacks: int
    adopted: dict[str, Any] | None
    steering_held: bool


class PathRow(_Open):
    id: str
    remote: str
    uplink: str
    remote_uplink: str
    interface: str
    status: str = Field(description="up, degraded or down")
    status_since: float | None
    latency_ms: float | None = Field(description="None while no probe in the window was answered")
    jitter_ms: float | None
    loss_pct: float | None
    score: float | None
    bandwidth_mbps: float | None
    mtu_bytes: int | None
    cost_per_gb: float
    probes_sent: int
    probes_received: int
    probes_rejected: int
    flows: int


class PathSample(BaseModel):
    measured_at: float
    latency_ms: float | None
    jitter_ms: float | None
    loss_pct: float | None
    score: float | None
    bandwidth_mbps: float | None
    mtu_bytes: int | None


class Match(_Open):
    src_prefix: str | None = None
    dst_prefix: str | None = None
    protocol: str | int | None = None
    src_ports: str | int | None = Field(None, description="a port, a range 5060-5061 or a list 80,443")
    dst_ports: str | int | None = None
    dscp: list[int] | int | None = None
    app_class: str | None = None


class Policy(BaseModel):
    """A routing policy (`patronus/deploy/site.example.yaml` explains every key). In a PUT the name
    may be left out: it is the URL's."""

    name: str = Field(max_length=64, description="printable characters (spaces at either end are dropped)")
    priority: int = Field(ge=0, le=1_000_000, description="lower matches first")
    enabled: bool = True
    match: Match | None = None
    preference: str | dict[str, Any] = Field("balanced", description="a preset name, or {custom: {weights}}")
    load_balance: str = Field("none", description="none, round_robin, weighted_round_robin, flow_hash, "
                                                  "least_connections")
    lb_tolerance: float = 5.0
    failover_threshold: float | None = None
    requirements: dict[str, Any] | None = Field(None, description="max_latency, max_loss, max_jitter, "
                                                                  "max_cost_per_gb, strict")


class FlowRow(_Open):
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int | str
    policy: str
    path: str | None = Field(description="the path its slot is on now")
    origin_path: str | None = Field(description="the path its slot was first put on")
    bytes: int | None
    packets: int | None
    age_s: float | None
    expires_in_s: int | None


class Topology(BaseModel):
    nodes: list[dict[str, Any]]
    links: list[dict[str, Any]]


class SlotRow(_Open):
    remote: str
    policy: str | None
    origin: str
    gen: int
    path: str | None


class SteeringPlanBody(BaseModel):
    held: bool = Field(description="steering is held as an earlier agent left it, until every path has a verdict")
    buckets: int
    new: list[SlotRow] = Field(description="where each bucket's new connections go (with `bucket`)")
    slots: list[SlotRow]


class EventRow(_Open):
    kind: str
    at: float = Field(description="wall time, s")


def responses(ok: Any, *errors: int, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """FastAPI's `responses=` for a route answering `ok` (a model, or None for no body) or one of
    `errors` (always 401 too: every route but /health needs the token)."""
    out: dict[int | str, dict[str, Any]] = {status: {"model": ok} if ok is not None else {"description": "done"}}
    for code in (401, *errors):
        out[code] = {"model": ErrorBody}
    return out


def policy_body(app_schema_ref: str = "#/components/schemas/Policy") -> dict[str, Any]:
    """`openapi_extra` of a route whose body is a policy (parsed by the route, described here)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": app_schema_ref}}}}}
