"""The site agent's HTTP API (REST + WebSocket) and its Prometheus endpoint.

The API is written against `AgentControl`, a Protocol the daemon implements; this module never imports
the daemon, so it is tested with a fake and the daemon can change freely behind the Protocol.

Decisions:

* **Everything runs on the agent's loop thread.** Every endpoint is `async def`, so FastAPI runs it on
  the event loop (a plain `def` endpoint would run in a worker thread and race the daemon). The
  `AgentControl` methods are synchronous (except `test_path`) and must not block.
* **Authentication is one ASGI middleware**, not a per-route dependency, so a new route cannot forget
  it and an unauthenticated request learns nothing (not even whether a route exists, nor whether its
  body is valid: FastAPI parses bodies before it runs dependencies). Only `GET /api/v1/health` is open.
  HTTP takes `Authorization: Bearer <token>` only (a token in a query string ends up in access logs);
  the WebSocket also takes `?token=` because browsers cannot set headers on a WebSocket. Tokens are
  compared with `hmac.compare_digest` on bytes. A failed HTTP request gets 401 with
  `WWW-Authenticate: Bearer ...` (RFC 6750); a failed WebSocket is accepted and at once closed with
  1008 (policy violation) and reason "unauthorized", so the client sees the code: closing before the
  accept would reach the client only as an HTTP 403 on the handshake.
* **One error shape** for every 4xx/5xx: `{"error": "<summary>", "errors": [{"field", "reason"}]}`.
  Field paths say where the input came from, in FastAPI's `loc` style: `body.priority`,
  `body.match.colour`, `query.limit`, `path.path_id`, `header.authorization`.
* **Policies are validated once**, by `RoutingPolicy.from_dict` on the raw JSON body (prefix `body`),
  which lists every bad field; the API does not model policies a second time in pydantic. Nothing is
  applied unless the whole request is valid. `POST` creates (409 if the name exists), `PUT` creates or
  replaces (201 or 200), `DELETE` answers 204. Policy names may contain `/` (the default
  `VoIP/Video`), so the `{name}` route parameter is a `path` converter.
* **JSON has no NaN**: a non-finite float (a path with no sample yet) is sent as `null`.
* **The event stream** subscribes just before it accepts the socket (so a client that sees the socket
  open misses no later event) and unsubscribes in a `finally`, whatever ends the connection (client
  close, send failure, server shutdown). It reads from the socket at the
  same time as it waits for events, so a client that leaves is noticed at once, not at the next event.
  The agent owns the queue: if it is bounded, the agent decides what a slow consumer loses.
* `/metrics` is served at the root (where Prometheus scrapes by default) and also as
  `/api/v1/metrics`; both need the token (Prometheus `authorization: {credentials: ...}`).
* OpenAPI is at `/api/v1/openapi.json` (behind the token); the interactive docs pages are disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, quote

import anyio
from fastapi import Body, Depends, FastAPI, Path, Query, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.requests import HTTPConnection
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.websockets import WebSocketDisconnect

import patronus
from patronus.agent import apidoc as doc
from patronus.agent.metrics import CONTENT_TYPE, MetricsSnapshot, render
from patronus.core.errors import ConfigError
from patronus.core.policy import RoutingPolicy

__all__ = ["API_PREFIX", "AgentControl", "ApiError", "create_app"]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
HEALTH_PATH = f"{API_PREFIX}/health"
MAX_HISTORY_ROWS = 100_000
MAX_EVENTS = 10_000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@runtime_checkable
class AgentControl(Protocol):
    """What the API needs from the running agent. Every method is called on the agent's event-loop
    thread; all but `test_path` are synchronous and must return promptly."""

    def site_info(self) -> dict[str, Any]:
        """name, id, lan_prefixes, uplinks, remotes, wireguard_backend, steering, started_at, version."""
        ...

    def list_paths(self) -> list[dict[str, Any]]:
        """One dict per path with at least: id, remote, uplink, remote_uplink, interface, status
        ("up"/"degraded"/"down"), status_since, latency_ms, jitter_ms (None while no probe in the window
        was answered: a dead path has no latency), loss_pct, score, bandwidth_mbps, mtu_bytes,
        cost_per_gb, probes_sent, probes_received, probes_rejected, flows."""
        ...

    def path_history(self, path_id: str, since: float | None, until: float | None,
                     limit: int) -> list[dict[str, Any]]:
        """Stored measurements of one path, oldest first; KeyError for an unknown path."""
        ...

    def list_policies(self) -> list[RoutingPolicy]:
        ...

    def put_policy(self, policy: RoutingPolicy) -> bool:
        """Install or replace a policy; True if it was created, False if it replaced one."""
        ...

    def delete_policy(self, name: str) -> None:
        """Remove a policy; KeyError if there is none by that name."""
        ...

    def list_flows(self) -> list[dict[str, Any]]:
        """src_ip, dst_ip, src_port, dst_port, protocol, policy, path, origin_path, bytes, packets, age_s."""
        ...

    def topology(self) -> dict[str, Any]:
        """{"nodes": [...], "links": [...]}."""
        ...

    def steering_plan(self) -> dict[str, Any]:
        """The steering plan the dataplane follows: {"held": bool, "buckets": n, "new": [{remote, policy,
        bucket, path}], "slots": [{remote, policy, origin, path}]} (`patronus.core.plan`)."""
        ...

    async def test_path(self, path_id: str, probes: int, bandwidth: bool) -> dict[str, Any]:
        """Run an on-demand test; KeyError for an unknown path, ValueError for bad arguments."""
        ...

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        ...

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A new queue that receives every event dict ("kind", "at", ...) from now on."""
        ...

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        ...

    def prometheus_snapshot(self) -> MetricsSnapshot:
        ...


# --- errors and JSON ---------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP status, a summary, and (field, reason) pairs."""

    def __init__(self, status: int, error: str, errors: list[tuple[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.errors = list(errors or [])
        self.headers = headers


def _plain(obj: Any) -> Any:
    """JSON-ready copy of `obj`: non-finite floats become None; other non-JSON types go through FastAPI's
    encoder (enums, dataclasses, datetimes, sets, ...)."""
    if obj is None or isinstance(obj, str | bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k.value if isinstance(k, enum.Enum) else k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return _plain(jsonable_encoder(obj))


def _dumps(content: Any) -> str:
    return json.dumps(_plain(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class FiniteJSONResponse(JSONResponse):
    """Starlette's JSONResponse, but NaN and infinities become null instead of failing (a JSON
    answer to FastAPI too: its OpenAPI document then takes the route's documented model)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _dumps(content).encode("utf-8")


def _ok(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return FiniteJSONResponse(content, status_code=status, headers=headers)


def _error_body(error: str, errors: list[tuple[str, str]]) -> dict[str, Any]:
    return {"error": error, "errors": [{"field": f, "reason": r} for f, r in errors]}


def _error(status: int, error: str, errors: list[tuple[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> Response:
    return FiniteJSONResponse(_error_body(error, errors or []), status_code=status, headers=headers)


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc] if isinstance(loc, list | tuple) else [str(loc)]
    return ".".join(parts)


def _validation_errors(exc: RequestValidationError) -> list[tuple[str, str]]:
    out = []
    for e in exc.errors():
        loc = tuple(e.get("loc", ()))
        reason = str(e.get("msg", "invalid"))
        if e.get("type") == "json_invalid":
            pos = loc[1] if len(loc) > 1 else "?"
            loc = loc[:1]
            reason = f"invalid JSON at character {pos}: {(e.get('ctx') or {}).get('error', 'decode error')}"
        out.append((_field(loc), reason))
    return out


def _whole_numbers(obj: Any) -> Any:
    """`obj` with every float that is a whole number as an int: JSON has one number type (2.0 is an
    integer to JSON Schema), Python two, and the policy parser takes only ints where it wants whole
    numbers. Every float field of a policy takes ints too. Only floats within 2**53 (where every whole
    number is a float): no whole-number field reaches that, and a float of 1e308 stays a float (as an int
    of 309 digits, a number field would refuse it)."""
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return int(obj)
    if isinstance(obj, dict):
        return {k: _whole_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_whole_numbers(v) for v in obj]
    return obj


def _not_found(kind: str, value: str, fld: str) -> ApiError:
    return ApiError(404, f"no {kind} named {value!r}", [(fld, f"unknown {kind}")])


# --- authentication ----------------------------------------------------------------------------------


class _BearerAuth:
    """ASGI middleware: every HTTP and WebSocket request but the health check needs the token."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self._token = token.encode("utf-8")
        self._open = open_paths

    def _check(self, scope: Scope) -> str | None:
        """None if authorised, else why not."""
        supplied: list[bytes] = []
        for k, v in scope.get("headers") or []:
            if k.lower() == b"authorization":
                scheme, _, cred = v.strip().partition(b" ")
                if scheme.lower() == b"bearer" and cred.strip():
                    supplied.append(cred.strip())
        if scope["type"] == "websocket":
            qs = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
            supplied += [t.encode("utf-8") for t in qs.get("token", []) if t]
        if not supplied:
            return "missing bearer token"
        # Check every candidate so the time taken does not depend on which one matched.
        ok = False
        for cand in supplied:
            ok |= hmac.compare_digest(cand, self._token)
        return None if ok else "invalid token"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if scope["type"] == "http" and path in self._open:
            await self.app(scope, receive, send)
            return
        why = self._check(scope)
        if why is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            msg = await receive()
            if msg.get("type") == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        challenge = 'Bearer realm="patronus"'
        if why == "invalid token":
            challenge += ', error="invalid_token"'
        response = _error(401, "unauthorized", [("header.authorization", why)],
                          headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)


# --- request bodies ----------------------------------------------------------------------------------


class PathTestRequest(BaseModel):
    """Body of `POST /paths/{id}/test`; every field optional."""

    model_config = ConfigDict(extra="forbid", strict=True)

    probes: int = Field(default=20, ge=1, le=1000, description="probes to send")
    bandwidth: bool = Field(default=False, description="also measure bandwidth")

    @field_validator("probes", mode="before")
    @classmethod
    def _whole(cls, v: Any) -> Any:
        return _whole_numbers(v)          # 20.0 is 20 to JSON (strict mode refuses floats, and "20", true)


async def _json_body(request: Request) -> None:
    """Dependency of routes with a body: a non-empty body must be declared JSON (else FastAPI would hand the
    raw bytes to validation and answer with a puzzling 422). Runs before the body is validated."""
    if not await request.body():
        return
    ctype = request.headers.get("content-type", "")
    mtype = ctype.partition(";")[0].strip().lower()
    if mtype != "application/json" and not (mtype.startswith("application/") and mtype.endswith("+json")):
        raise ApiError(415, "expected a JSON body",
                       [("header.content-type", f"expected application/json, got {ctype or 'none'!r}")])


JSON_BODY = [Depends(_json_body)]

_QUERY_NAMES: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> set[str]:
    """The query parameters of a route (a FastAPI `Dependant`) and of its dependencies."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def _known_query(conn: HTTPConnection) -> None:
    """Dependency of every route: a query parameter the route does not take is an error, not ignored (a
    misspelt `limt=5` would otherwise give the default silently). The WebSocket's `?token=` is its own."""
    route = conn.scope.get("route")
    if conn.scope["type"] != "http" or not isinstance(route, APIRoute):
        return
    known = _QUERY_NAMES.get(id(route))
    if known is None:
        known = _QUERY_NAMES[id(route)] = frozenset(_query_names(route.dependant))
    unknown = sorted({k for k in conn.query_params if k not in known})
    if unknown:
        expected = f"expected one of {', '.join(sorted(known))}" if known else "this route takes no query parameters"
        raise ApiError(422, "invalid request", [(f"query.{k}", f"unknown parameter; {expected}") for k in unknown])


class _AnyText(Convertor[str]):
    """A path parameter that is the rest of the path, whatever it holds. Starlette's `path` is `.*`,
    which stops at a newline: a policy named "a\nb" (accepted before names were checked) could be
    listed but never read, replaced or removed."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())


def _parse_policy(payload: Any, name_in_path: str | None = None) -> RoutingPolicy:
    """The policy in a request body, or ApiError(422) listing every problem."""
    errors: list[tuple[str, str]] = []
    payload = _whole_numbers(payload)
    if name_in_path is not None and isinstance(payload, dict):
        payload = dict(payload)
        given = payload.setdefault("name", name_in_path)
        if isinstance(given, str) and given.strip() != name_in_path:
            errors.append(("body.name", f"must match the name in the URL ({name_in_path!r}) or be left out, "
                                        f"got {given!r}"))
    policy: RoutingPolicy | None = None
    try:
        policy = RoutingPolicy.from_dict(payload, "body")
    except ConfigError as exc:
        errors.extend(exc.errors)
    if name_in_path is not None and policy is not None and not errors and policy.name != name_in_path:
        errors.append(("path.name", "a policy name has no leading or trailing spaces"))
    if errors or policy is None:
        raise ApiError(422, "invalid policy", errors)
    return policy


# --- the application ---------------------------------------------------------------------------------


def create_app(agent: AgentControl, token: str) -> FastAPI:
    """The agent's API application. `token` is the bearer token every request but /health must carry."""
    if not isinstance(token, str) or not token:
        raise ValueError("the API token must be a non-empty string")

    app = FastAPI(title="Patronus site agent", version=patronus.__version__, docs_url=None, redoc_url=None,
                  openapi_url=f"{API_PREFIX}/openapi.json", default_response_class=FiniteJSONResponse,
                  dependencies=[Depends(_known_query)])

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = doc.complete(FastAPI.openapi(app), API_PREFIX)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_BearerAuth, token=token, open_paths=frozenset({HEALTH_PATH}))

    _error_handlers(app)
    _site_routes(app, agent)
    _policy_routes(app, agent)
    _flow_routes(app, agent)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error answer has one shape: {"error": ..., "errors": [{"field", "reason"}]}."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.error, exc.errors, exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error(422, "invalid request", _validation_errors(exc))

    async def on_config_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConfigError)
        return _error(422, "rejected by the agent", exc.errors)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code in (204, 304) or exc.status_code < 200:
            return Response(status_code=exc.status_code, headers=exc.headers)
        headers = dict(exc.headers or {})
        errors: list[tuple[str, str]] = []
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only; GET and POST
            # /policies are two routes.
            allowed = _allowed_methods(app, request)
            headers["Allow"] = ", ".join(allowed)
            errors = [("method", f"expected one of {', '.join(allowed)}, got {request.method}")]
        elif exc.status_code == 400:
            errors = [("body", "not JSON in UTF-8")]       # FastAPI could not read it
        return _error(exc.status_code, str(exc.detail), errors, headers)

    async def on_crash(request: Request, exc: Exception) -> Response:
        return _error(500, "internal error", [])

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ConfigError, on_config_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    path = request.scope.get("path", "")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


PATH_ID = Annotated[str, Path(description="a path's id: remote:uplink-remote_uplink",
                              examples=["branch:isp1-isp1"])]
POLICY_NAME = Annotated[str, Path(description="a policy's name (a / in it may be quoted as %2F)",
                                  examples=["VoIP/Video"])]


def _site_routes(app: FastAPI, agent: AgentControl) -> None:
    """Health, the site, its paths (status, history, on-demand tests)."""
    p = API_PREFIX

    @app.get(f"{p}/health", tags=["meta"], responses=doc.responses(doc.Health, token=False))
    async def health() -> Response:
        """Liveness only; no token needed and nothing about the site is revealed."""
        return _ok({"status": "ok"})

    @app.get(f"{p}/site", tags=["site"], responses=doc.responses(doc.SiteInfo))
    async def get_site() -> Response:
        return _ok(agent.site_info())

    @app.get(f"{p}/paths", tags=["paths"], responses=doc.responses(list[doc.PathRow]))
    async def get_paths() -> Response:
        return _ok(agent.list_paths())

    @app.get(f"{p}/paths/{{path_id}}", tags=["paths"], responses=doc.responses(doc.PathRow, 404))
    async def get_path(path_id: PATH_ID) -> Response:
        for row in agent.list_paths():
            if row.get("id") == path_id:
                return _ok(row)
        raise _not_found("path", path_id, "path.path_id")

    @app.get(f"{p}/paths/{{path_id}}/metrics", tags=["paths"],
             responses=doc.responses(list[doc.PathSample], 404, 422))
    async def get_path_history(
        path_id: PATH_ID,
        since: Annotated[float | None, Query(description="from this time (agent clock, s)", allow_inf_nan=False)]
        = None,
        until: Annotated[float | None, Query(description="up to this time (agent clock, s); not before `since`",
                                             allow_inf_nan=False)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_ROWS)] = 1000,
    ) -> Response:
        if since is not None and until is not None and until < since:
            raise ApiError(422, "invalid request", [("query.until", f"must not be before since ({since:g})")])
        try:
            rows = agent.path_history(path_id, since, until, limit)
        except KeyError:
            raise _not_found("path", path_id, "path.path_id") from None
        return _ok(rows)

    @app.post(f"{p}/paths/{{path_id}}/test", tags=["paths"], dependencies=JSON_BODY,
              responses=doc.responses(doc.PathTestResult, 400, 404, 415, 422))
    async def post_path_test(path_id: PATH_ID, body: Annotated[PathTestRequest | None, Body()] = None) -> Response:
        req = body or PathTestRequest()
        try:
            result = await agent.test_path(path_id, req.probes, req.bandwidth)
        except KeyError:
            raise _not_found("path", path_id, "path.path_id") from None
        except ValueError as exc:
            raise ApiError(422, "invalid request", [("body", str(exc))]) from None
        return _ok(result)


def _policy_routes(app: FastAPI, agent: AgentControl) -> None:
    """Routing policies: list, read, create, replace, delete."""
    p = API_PREFIX

    def find_policy(name: str) -> RoutingPolicy | None:
        return next((pol for pol in agent.list_policies() if pol.name == name), None)

    @app.get(f"{p}/policies", tags=["policies"], responses=doc.responses(list[doc.Policy]))
    async def get_policies() -> Response:
        return _ok([pol.to_dict() for pol in agent.list_policies()])

    @app.get(f"{p}/policies/{{name:anytext}}", tags=["policies"], responses=doc.responses(doc.Policy, 404))
    async def get_policy(name: POLICY_NAME) -> Response:
        pol = find_policy(name)
        if pol is None:
            raise _not_found("policy", name, "path.name")
        return _ok(pol.to_dict())

    @app.post(f"{p}/policies", tags=["policies"], status_code=201, dependencies=JSON_BODY,
              responses=doc.responses(doc.Policy, 400, 409, 415, 422, status=201))
    async def post_policy(payload: Annotated[Any, Body()]) -> Response:
        policy = _parse_policy(payload)
        location = f"{p}/policies/{quote(policy.name, safe='')}"
        if find_policy(policy.name) is not None:
            raise ApiError(409, f"a policy named {policy.name!r} exists",
                           [("body.name", f"already in use; PUT {location} replaces it")])
        agent.put_policy(policy)
        return _ok(policy.to_dict(), 201, {"Location": location})

    @app.put(f"{p}/policies/{{name:anytext}}", tags=["policies"], dependencies=JSON_BODY,
             responses=doc.responses(doc.Policy, 400, 415, 422, also={201: doc.Policy}))
    async def put_policy(name: POLICY_NAME, payload: Annotated[Any, Body()]) -> Response:
        policy = _parse_policy(payload, name)
        created = agent.put_policy(policy)
        if created:
            return _ok(policy.to_dict(), 201, {"Location": f"{p}/policies/{quote(policy.name, safe='')}"})
        return _ok(policy.to_dict())

    @app.delete(f"{p}/policies/{{name:anytext}}", tags=["policies"], status_code=204,
                responses=doc.responses(None, 404, status=204))
    async def delete_policy(name: POLICY_NAME) -> Response:
        try:
            agent.delete_policy(name)
        except KeyError:
            raise _not_found("policy", name, "path.name") from None
        return Response(status_code=204)


def _flow_routes(app: FastAPI, agent: AgentControl) -> None:
    """Flows, topology, the steering plan, events (recent and streamed) and Prometheus metrics."""
    p = API_PREFIX

    @app.get(f"{p}/flows", tags=["flows"], responses=doc.responses(list[doc.FlowRow]))
    async def get_flows(
        path: Annotated[str | None, Query(description="only flows on this path")] = None,
        policy: Annotated[str | None, Query(description="only flows matched by this policy")] = None,
    ) -> Response:
        rows = agent.list_flows()
        if path is not None:
            rows = [r for r in rows if r.get("path") == path]
        if policy is not None:
            rows = [r for r in rows if r.get("policy") == policy]
        return _ok(rows)

    @app.get(f"{p}/topology", tags=["site"], responses=doc.responses(doc.Topology))
    async def get_topology() -> Response:
        return _ok(agent.topology())

    @app.get(f"{p}/steering", tags=["flows"], responses=doc.responses(doc.SteeringPlanBody))
    async def get_steering() -> Response:
        return _ok(agent.steering_plan())

    @app.get(f"{p}/events", tags=["events"], responses=doc.responses(list[doc.EventRow], 422))
    async def get_events(limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 100) -> Response:
        return _ok(agent.recent_events(limit))

    @app.websocket(f"{p}/events/stream")
    async def events_stream(ws: WebSocket) -> None:
        # Subscribe before accepting: once a client sees the socket open, it misses no later event.
        q = agent.subscribe()
        try:
            await ws.accept()
            await _stream(ws, q)
        finally:
            agent.unsubscribe(q)

    # -- Prometheus --

    async def metrics() -> Response:
        return Response(render(agent.prometheus_snapshot()), media_type=CONTENT_TYPE)

    app.add_api_route("/metrics", metrics, methods=["GET"], tags=["meta"], response_class=Response, responses={
        200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}, "description": "Prometheus text"},
        **{code: {"model": doc.ErrorBody, "description": doc.ERROR_DESCRIPTIONS[code]} for code in (401, 422)}})
    app.add_api_route(f"{p}/metrics", metrics, methods=["GET"], tags=["meta"], include_in_schema=False)


async def _stream(ws: WebSocket, q: asyncio.Queue[dict[str, Any]]) -> None:
    """Forward events from `q` to `ws` until the client leaves or a send fails.

    anyio rather than bare asyncio tasks: Starlette (and its TestClient) cancel through anyio cancel
    scopes, which native `asyncio.wait`/`gather` under repeated cancellation do not compose with."""
    async with anyio.create_task_group() as tg:

        async def pump() -> None:
            try:
                while True:
                    event = await q.get()
                    await ws.send_text(_dumps(event))
            except (WebSocketDisconnect, OSError):
                pass                                    # the client is gone
            except Exception:
                log.exception("event stream failed")
                with contextlib.suppress(Exception):
                    await ws.close(code=1011, reason="internal error")
            tg.cancel_scope.cancel()                    # stop waiting for the client's messages

        tg.start_soon(pump)
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass                                        # clients may send anything (pings): ignored
        tg.cancel_scope.cancel()
