"""The shapes of the agent API's answers and bodies, for its OpenAPI document (`/api/v1/openapi.json`).

The routes build their answers from the agent's state and parse policy bodies with
`RoutingPolicy.from_dict` (so that every error names its field in the API's one error shape); these
models only *describe* them, so that clients and fuzzers (schemathesis) can use the document:

* **Answers** are what `patronus.agent.control.AgentApi` returns (a test checks these models against a
  real agent's answers: tests/agent/test_agent_parts.py). Objects may gain keys in later versions
  (additional properties are allowed), except policies, which are exactly what a client sends back.
* **Policy bodies** (`PolicyCreate`, `PolicyReplace`) describe exactly what the parser accepts, with
  the patterns below (tests/unit/test_apidoc.py checks each pattern against the parser it describes).
  Two rules JSON Schema cannot state are in the descriptions: a port range's low end is not above its
  high end, and a PUT body's `name` (it may be left out) is the URL's.
* Patterns follow Python's `re`, which the agent uses; they also read the same in ECMA-262 with the `u`
  flag (code points beyond U+FFFF are written as themselves). `$(?!\\n)` is the end of the text in both.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal, NotRequired, get_args

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from patronus.core.model import PROTOCOL_NUMBERS
from patronus.core.policy import MAX_WEIGHT, POLICY_NAME_MAX, PRESETS, LoadBalance, Preference
from patronus.core.policy import REQUIREMENT_MAX_S as _REQ_MAX_S

# --- patterns ----------------------------------------------------------------------------------------


def _char(cp: int) -> str:
    if cp > 0xFFFF:
        return chr(cp)
    return f"\\u{cp:04x}"


def _char_class(pred: Any, negate: bool = False) -> str:
    """A character class of every code point for which `pred(chr(cp))` holds."""
    out: list[str] = []
    start: int | None = None
    for cp in range(0x110001):
        ok = cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF and bool(pred(chr(cp)))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            end = cp - 1
            out.append(_char(start) if start == end else f"{_char(start)}-{_char(end)}")
            start = None
    return "[" + ("^" if negate else "") + "".join(out) + "]"


SPACE = _char_class(str.isspace)                       # what str.strip() removes
PRINTABLE = _char_class(str.isprintable)               # str.isprintable(), one character
END = "$(?!\\n)"                                       # Python's `$` also matches before a final newline

#: A policy name as a body gives it: spaces at either end are dropped, then 1-64 printable characters.
POLICY_NAME_PATTERN = f"^{SPACE}*{PRINTABLE}{{1,{POLICY_NAME_MAX}}}(?<! ){SPACE}*$"
#: A policy name as the agent keeps it (and as a PUT's URL must give it): no spaces at either end.
POLICY_NAME_EXACT_PATTERN = f"^(?! ){PRINTABLE}{{1,{POLICY_NAME_MAX}}}(?<! ){END}"

_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = f"{_OCTET}(?:\\.{_OCTET}){{3}}"
_MASKS = sorted({str(m) for n in range(33) for m in (ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask,
                                                      ipaddress.IPv4Network(f"0.0.0.0/{n}").hostmask)})
_V4_PREFIX = f"{_V4}(?:/(?:0*(?:3[0-2]|[12]?[0-9])|{'|'.join(m.replace('.', chr(92) + '.') for m in _MASKS)}))?"
_H = "[0-9A-Fa-f]{1,4}"
_LS32 = f"(?:{_H}:{_H}|{_V4})"
_V6 = "(?:" + "|".join([
    f"(?:{_H}:){{6}}{_LS32}",
    f"::(?:{_H}:){{5}}{_LS32}",
    f"(?:{_H})?::(?:{_H}:){{4}}{_LS32}",
    f"(?:(?:{_H}:){{0,1}}{_H})?::(?:{_H}:){{3}}{_LS32}",
    f"(?:(?:{_H}:){{0,2}}{_H})?::(?:{_H}:){{2}}{_LS32}",
    f"(?:(?:{_H}:){{0,3}}{_H})?::{_H}:{_LS32}",
    f"(?:(?:{_H}:){{0,4}}{_H})?::{_LS32}",
    f"(?:(?:{_H}:){{0,5}}{_H})?::{_H}",
    f"(?:(?:{_H}:){{0,6}}{_H})?::",
]) + ")"
_V6_PREFIX = f"{_V6}(?:%[^%/]+)?(?:/0*(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?"
#: What `ipaddress.ip_network(text, strict=False)` reads: an address (a /32 or /128), address/length,
#: or an IPv4 address/netmask or /hostmask; host bits may be set (they are cleared).
PREFIX_PATTERN = f"^(?:{_V4_PREFIX}|{_V6_PREFIX}){END}"

_PORT = "(?:[0-5]?[0-9]{1,4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_S = "\\s"
#: A port or a range of ports as text (white space around each number is ignored).
PORTS_PATTERN = f"^{_S}*{_PORT}{_S}*(?:-{_S}*{_PORT}{_S}*)?$"


def _nocase(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


#: A protocol by name (any case) or number 0-255, as text; spaces at either end are dropped.
PROTOCOL_PATTERN = (f"^{SPACE}*(?:{'|'.join(_nocase(n) for n in sorted(PROTOCOL_NUMBERS, key=len, reverse=True))}"
                    f"|[01]?[0-9]{{1,2}}|2[0-4][0-9]|25[0-5]){SPACE}*$")

_SMALL = "(?:[0-9]{1,4}(?:\\.[0-9]*)?|\\.[0-9]+)"       # at most 9999.99..: any unit stays in range
#: A duration as text: a number and a unit (none: seconds), e.g. "150ms". The agent also reads longer
#: numbers and exponents, up to REQUIREMENT_MAX_S seconds; this pattern lists the common forms only.
DURATION_PATTERN = (f"^{_S}*{_SMALL}{_S}*(?:{'|'.join(_nocase(u) for u in ('sec', 'min', 'ms', 'us', 's', 'm', 'h'))}"
                    f"|[\\u00b5][sS])?{_S}*$")
#: A ratio as text: a percentage 0-100% ("1%") or a bare ratio 0-1 ("0.01"); the agent also reads
#: exponents (this pattern lists the common forms only).
RATIO_PATTERN = (f"^{_S}*(?:(?:0*100(?:\\.0*)?|0*[0-9]{{1,2}}(?:\\.[0-9]*)?|\\.[0-9]+){_S}*%"
                 f"|0*1(?:\\.0*)?|0+(?:\\.[0-9]*)?|\\.[0-9]+){_S}*$")


# --- errors --------------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldError(BaseModel):
    field: str = Field(description="where: body.match.dst_ports, query.limit, path.name, header.content-type "
                                   "(empty or `policies` when the agent refused the whole change)")
    reason: str


class ErrorBody(BaseModel):
    """Every error answer (4xx, 5xx)."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="a summary")
    errors: list[FieldError] = Field(description="every problem found, each naming its field")


ERROR_DESCRIPTIONS = {
    400: "The body could not be read (not UTF-8 JSON)",
    401: "No token, or a wrong one",
    404: "No such path or policy",
    405: "The method is not one of those in the Allow header",
    409: "A policy by that name exists (PUT replaces it)",
    415: "The body is not declared JSON (Content-Type application/json or application/*+json)",
    422: "The request is invalid (every bad field is named: a query parameter the route does not take "
         "too), or the agent refused the change",
}


# --- site, paths ---------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Uplink(_Open):
    name: str
    interface: str
    address: str
    gateway: str | None
    cost_per_gb: float
    bandwidth_mbps: float | None


class Endpoint(_Open):
    uplink: str
    address: str


class Remote(_Open):
    name: str
    id: int
    prefixes: list[str]
    endpoints: list[Endpoint]


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


Status = Literal["up", "degraded", "down"]


class PathRow(_Open):
    id: str
    remote: str
    uplink: str
    remote_uplink: str
    interface: str
    status: Status
    status_since: float | None
    latency_ms: float | None = Field(description="null while no probe in the window was answered")
    jitter_ms: float | None
    loss_pct: float | None
    score: float | None
    bandwidth_mbps: float | None
    mtu_bytes: int | None
    cost_per_gb: float
    probes_sent: int
    probes_received: int
    probes_timed_out: int
    probes_late: int
    probes_duplicate: int
    probes_rejected: int
    probes_rejected_by_reason: dict[str, int]
    probe_timeout_ms: float | None
    flows: int
    local_address: str
    remote_address: str


class PathSample(BaseModel):
    measured_at: float
    latency_ms: float | None
    jitter_ms: float | None
    loss_pct: float | None
    score: float | None
    bandwidth_mbps: float | None
    mtu_bytes: int | None


class ProbeBurst(_Open):
    sent: int
    received: int
    loss_pct: float
    rejected: int
    rtt_min_ms: float | None = Field(None, description="these only when a probe was answered")
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    rtt_p50_ms: float | None = None
    rtt_p95_ms: float | None = None
    jitter_ms: float | None = None


class PathTestResult(_Open):
    path: str
    probes: ProbeBurst
    bandwidth: dict[str, Any] | None = Field(None, description="when asked for: the test's result, or {error}")


class TopologyNode(_Open):
    id: str
    kind: Literal["local", "remote"]
    prefixes: list[str]
    learned: bool = Field(False, description="a remote found by mesh discovery (not in the site file)")


class MeshMember(_Open):
    site: str
    site_id: int
    peer: bool = Field(description="the topology says this site peers with it (it has paths to it)")
    endpoints: list[str]


class MeshState(_Open):
    members: list[MeshMember]
    rejected: dict[str, int] = Field(description="membership datagrams refused, by reason")
    refused_announcements: dict[str, int] = Field(description="announcements refused, by reason")
    revocations: int = Field(0, description="the sequence of the revocation list held (0: none)")
    sent: int
    send_errors: int
    apply_failures: int = Field(0, description="reconfigurations for learned peers the host refused (each is "
                                               "tried again: at the next change, or after a backoff of 1-30 s)")
    kept: list[str] = Field([], description="remotes kept from the previous agent (graceful restart) that the "
                                            "mesh has not confirmed yet; dropped if not found within a sync period")


class TopologyLink(_Open):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    path: str
    from_: str = Field(alias="from")
    to: str
    uplink: str
    remote_uplink: str
    status: Status
    score: float | None


class Topology(_Open):
    nodes: list[TopologyNode]
    links: list[TopologyLink]
    mesh: MeshState | None = Field(None, description="with a `mesh:` section: the mesh as this site sees it")


class FlowRow(_Open):
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int = Field(description="IP protocol number")
    policy: str = Field(description="the policy whose slot it is in (implicit-default: none matched)")
    path: str | None = Field(description="the path its slot is on now")
    origin_path: str | None = Field(description="the path its slot was first put on")
    bytes: int | None
    packets: int | None
    age_s: float | None
    expires_in_s: int | None


class SlotRow(_Open):
    remote: str
    policy: str | None = Field(description="null: the implicit default (no policy matched)")
    origin: str = Field(description="the path the slot was first put on")
    gen: int
    path: str | None = Field(description="the path it is on now")


class NewSlotRow(SlotRow):
    bucket: int


class SteeringPlanBody(BaseModel):
    held: bool = Field(description="steering is held as an earlier agent left it, until every path has a verdict")
    buckets: int
    new: list[NewSlotRow] = Field(description="the slot each bucket's new connections go to")
    slots: list[SlotRow]


class EventRow(_Open):
    kind: str
    at: float = Field(description="wall time, s")


# --- policies as the agent answers them ------------------------------------------------------------------

PreferenceName = Literal["lowest_latency", "highest_bandwidth", "lowest_loss", "lowest_cost",
                         "latency_sensitive", "throughput_focused", "cost_optimized", "balanced"]
LoadBalanceName = Literal["none", "round_robin", "weighted_round_robin", "least_connections", "flow_hash"]
assert set(get_args(PreferenceName)) == {p.value for p in Preference} - {"custom"} | set(PRESETS)
assert set(get_args(LoadBalanceName)) == {m.value for m in LoadBalance}


class Weights(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    latency: float
    jitter: float
    loss: float
    bandwidth: float
    cost: float


class CustomPreference(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    custom: Weights


class MatchOut(TypedDict):
    """Only the rules a policy has."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    src_prefix: NotRequired[str]
    dst_prefix: NotRequired[str]
    protocol: NotRequired[Annotated[str | int, Field(description="a name, or a number that has none")]]
    src_ports: NotRequired[Annotated[str, Field(description="a port (5060) or a range (5060-5061)")]]
    dst_ports: NotRequired[str]
    dscp: NotRequired[list[int]]
    app_class: NotRequired[str]


class RequirementsOut(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    max_latency: NotRequired[Annotated[str, Field(description='e.g. "150ms"')]]
    max_loss: NotRequired[Annotated[str, Field(description='e.g. "1%"')]]
    max_jitter: NotRequired[str]
    max_cost_per_gb: NotRequired[float]
    strict: NotRequired[Literal[True]]


class Policy(TypedDict):
    """A routing policy as the agent keeps it (`patronus/deploy/site.example.yaml` explains every key). A
    name stored by an older agent may break today's rules for names: it can be read, replaced and removed."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    name: Annotated[str, Field(min_length=1)]
    priority: Annotated[int, Field(ge=0, le=1_000_000)]
    enabled: bool
    match: MatchOut
    preference: PreferenceName | CustomPreference
    load_balance: LoadBalanceName
    lb_tolerance: float
    failover_threshold: float | None
    requirements: NotRequired[RequirementsOut]


# --- policies as a client writes them (exactly what RoutingPolicy.from_dict accepts) ---------------------

_Port = Annotated[int, Field(ge=0, le=65535)]


def _ports_doc(what: str) -> Any:
    return Field(None, description=f"{what}: a port (5060), a range as text (\"5060-5061\") or as a pair "
                                   "([5060, 5061]); a range's low end is not above its high end")


PortsIn = _Port | Annotated[str, Field(pattern=PORTS_PATTERN)] | Annotated[list[_Port], Field(min_length=2,
                                                                                              max_length=2)]
PrefixIn = Annotated[str, Field(pattern=PREFIX_PATTERN, description="e.g. 10.1.0.0/16 or 2001:db8::/32")]
_Dscp = Annotated[int, Field(ge=0, le=63)]


class MatchIn(BaseModel):
    """All given rules must match (AND); a null rule is no rule. `src_port`/`dst_port` are other
    names of `src_ports`/`dst_ports`."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    src_prefix: PrefixIn | None = None
    dst_prefix: PrefixIn | None = None
    protocol: Annotated[int, Field(ge=0, le=255)] | Annotated[str, Field(pattern=PROTOCOL_PATTERN)] | None = \
        Field(None, description=f"a name ({', '.join(PROTOCOL_NUMBERS)}) or a number 0-255")
    src_ports: PortsIn | None = _ports_doc("source ports")
    src_port: PortsIn | None = None
    dst_ports: PortsIn | None = _ports_doc("destination ports")
    dst_port: PortsIn | None = None
    dscp: _Dscp | Annotated[list[_Dscp], Field(min_length=1)] | None = Field(None, description="a value or a list")
    app_class: Annotated[str, Field(min_length=1)] | None = None


_Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT)]


def _one_positive(schema: dict[str, Any]) -> None:
    keys = ("latency", "jitter", "loss", "bandwidth", "cost")
    schema["anyOf"] = [{"required": [k], "properties": {k: {"exclusiveMinimum": 0}}} for k in keys]


class WeightsIn(BaseModel):
    """Weights over normalised metrics (relative: divided by their sum); at least one positive."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re", json_schema_extra=_one_positive)

    latency: _Weight = 0.0
    jitter: _Weight = 0.0
    loss: _Weight = 0.0
    bandwidth: _Weight = 0.0
    cost: _Weight = 0.0


class CustomPreferenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    custom: WeightsIn


_Duration = Annotated[float, Field(ge=0, le=_REQ_MAX_S, description="seconds")] | \
    Annotated[str, Field(pattern=DURATION_PATTERN, description='e.g. "150ms" (s, ms, us, m, min, h)')]
_Ratio = Annotated[float, Field(ge=0, le=1)] | Annotated[str, Field(pattern=RATIO_PATTERN, description='e.g. "1%"')]


class RequirementsIn(BaseModel):
    """Hard requirements (SLA): a path that fails them is used only when no path meets them, never when
    `strict`."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    max_latency: _Duration | None = None
    max_loss: _Ratio | None = None
    max_jitter: _Duration | None = None
    max_cost_per_gb: Annotated[float, Field(ge=0)] | None = None
    strict: bool = False


class _PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    priority: int = Field(ge=0, le=1_000_000, description="lower matches first")
    enabled: bool = True
    match: MatchIn | None = None
    preference: PreferenceName | CustomPreferenceIn = Field(
        "balanced", description="a preference, a preset of weights, or {custom: {weights}}")
    load_balance: LoadBalanceName = "none"
    lb_tolerance: float = Field(5.0, ge=0, le=100, description="paths within this many score points of the "
                                                               "best are equal")
    failover_threshold: float | None = Field(None, ge=0, le=100, description="leave a path whose quality score "
                                                                            "falls below this")
    requirements: RequirementsIn | None = None


_NAME_DOC = (f"printable characters (Python's str.isprintable), at most {POLICY_NAME_MAX} once spaces at "
             "either end are dropped; a `/` is allowed (quote it as %2F in a URL)")


class PolicyCreate(_PolicyIn):
    """A new policy (POST)."""

    name: str = Field(min_length=1, pattern=POLICY_NAME_PATTERN, description=_NAME_DOC)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class PolicyReplace(_PolicyIn):
    """A policy that replaces (or creates) the one named in the URL (PUT)."""

    name: str = Field(None, min_length=1, pattern=POLICY_NAME_PATTERN,  # type: ignore[assignment]
                      description=f"may be left out; if given, the URL's name (spaces at either end aside). "
                                  f"{_NAME_DOC}", json_schema_extra=_no_default)


# --- the routes' `responses=` ----------------------------------------------------------------------------


def responses(ok: Any, *errors: int, status: int = 200, also: dict[int, Any] | None = None, token: bool = True
              ) -> dict[int | str, dict[str, Any]]:
    """FastAPI's `responses=` for a route answering `ok` (a model, or None for no body) with `status`,
    or any of `also` (more successes: status -> model), or one of `errors`; always 422 too (a query
    parameter the route does not take), and 401 when the route needs the `token` (all but /health)."""
    out: dict[int | str, dict[str, Any]] = {status: {"model": ok} if ok is not None else {"description": "done"}}
    for code, model in (also or {}).items():
        out[code] = {"model": model}
    for code in sorted({*errors, 422} | ({401} if token else set())):
        out[code] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]}
    return out


def complete(openapi: dict[str, Any], prefix: str) -> dict[str, Any]:
    """FastAPI's document, finished: the policy bodies (parsed by the routes, so FastAPI sees `Any`),
    the PUT URL's name rules, no `null` in query strings (a query cannot carry one), and none of
    FastAPI's own 422 shape (`HTTPValidationError`): this API answers every error as `ErrorBody`, and
    where FastAPI adds its 422 to a route nothing can fail validation."""
    from pydantic.json_schema import models_json_schema

    ref = "#/components/schemas/{model}"
    refs, defs = models_json_schema([(PolicyCreate, "validation"), (PolicyReplace, "validation")],
                                    ref_template=ref)
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in defs.get("$defs", {}).items():
        components.setdefault(name, schema)
    for ops in openapi.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses", {})
            if "HTTPValidationError" in str(responses.get("422", {})):
                del responses["422"]
            for param in op.get("parameters", []):
                schema = param.get("schema", {})
                if param.get("in") == "query" and "anyOf" in schema:
                    kept = [s for s in schema["anyOf"] if s.get("type") != "null"]
                    if len(kept) == 1:
                        del schema["anyOf"]
                        schema.update(kept[0])
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    openapi["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                           "description": "the agent's API token"}}
    openapi["security"] = [{"bearer": []}]
    openapi["paths"][f"{prefix}/health"]["get"]["security"] = []

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": refs[(model, "validation")]}}}

    policies = openapi["paths"][f"{prefix}/policies"]
    policies["post"]["requestBody"] = body(PolicyCreate)
    one = openapi["paths"][f"{prefix}/policies/{{name}}"]
    one["put"]["requestBody"] = body(PolicyReplace)
    for param in one["put"]["parameters"]:
        if param["name"] == "name":
            param["schema"] = {**param["schema"], "minLength": 1, "pattern": POLICY_NAME_EXACT_PATTERN}
            param["description"] = "the policy's name: " + _NAME_DOC.replace("once spaces at either end are "
                                                                              "dropped", "with no space at "
                                                                                         "either end")
    return openapi
