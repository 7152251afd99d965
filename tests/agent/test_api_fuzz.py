"""The API fuzzed from its own OpenAPI document (schemathesis): every operation, with generated
paths, queries and bodies, valid and not, never answers 5xx, and every answer matches the schema the
document declares (status code, content type, body shape); a schema-valid request is accepted and a
schema-violating one refused; a 405 lists the allowed methods. A client or a fuzzer can trust the
document.

Every default check runs on every operation; nothing is excluded. JSON Schema cannot state three rules
that relate two values, so the fuzzer is told them (`map_case`), the way a client reads them in the
document's descriptions: `until` is not before `since` (GET .../metrics), a port range's low end is not
above its high end (policy bodies), and a PUT body's `name`, when given, is the URL's. Each mapping keeps
a request as valid or as invalid as it was generated.

Examples per operation: 40 here (about 20 s on one CPU); `PATRONUS_API_FUZZ_EXAMPLES=N` for a longer run,
and `PATRONUS_API_FUZZ_REPORT=file.json` to write how many requests each operation made, by status.
Derandomized: the same cases every run (CI), nothing kept between runs (no example database).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from patronus.agent import apidoc
from patronus.agent.api import API_PREFIX, create_app
from tests.agent.test_api import AUTH, TOKEN, FakeAgent, P

pytestmark = pytest.mark.unit

EXAMPLES = int(os.environ.get("PATRONUS_API_FUZZ_EXAMPLES", "40"))
REPORT = os.environ.get("PATRONUS_API_FUZZ_REPORT")
STATUSES: Counter[tuple[str, int]] = Counter()

APP = create_app(FakeAgent(), TOKEN)
# The document declares the bearer scheme; schemathesis sends the token through it (and, for the auth
# checks, without it). An explicit configuration: no schemathesis.toml found on disk changes the run.
CONFIG = SchemathesisConfig.from_dict({"auth": {"openapi": {"bearer": {"bearer": TOKEN}}}})
SCHEMA = schemathesis.openapi.from_asgi(f"{P}/openapi.json", APP, config=CONFIG, headers=AUTH)

_PORTS = re.compile(apidoc.PORTS_PATTERN)
_NAME = re.compile(apidoc.POLICY_NAME_PATTERN)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _ordered_ports(value: Any) -> Any:
    """A port range with its ends in order (anything else as it is)."""
    if isinstance(value, str) and _PORTS.search(value) and "-" in value:
        lo, hi = (int(x) for x in value.split("-"))
        return f"{min(lo, hi)}-{max(lo, hi)}"
    if isinstance(value, list) and len(value) == 2 and all(_number(x) and int(x) == x for x in value):
        return sorted(value)
    return value


@SCHEMA.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    # Copies, not changes in place: generated cases may share their query or body.
    op = (case.operation.method.upper(), case.operation.path)
    if op == ("GET", f"{API_PREFIX}/paths/{{path_id}}/metrics") and isinstance(case.query, dict):
        since, until = case.query.get("since"), case.query.get("until")
        if _number(since) and _number(until) and until < since:
            case.query = {**case.query, "since": until, "until": since}
    if op[1].startswith(f"{API_PREFIX}/policies") and isinstance(case.body, dict):
        case.body = copy.deepcopy(case.body)
        match = case.body.get("match")
        if isinstance(match, dict):
            for key in ("src_ports", "src_port", "dst_ports", "dst_port"):
                if key in match:
                    match[key] = _ordered_ports(match[key])
        name, url_name = case.body.get("name"), (case.path_parameters or {}).get("name")
        if op[0] == "PUT" and isinstance(name, str) and _NAME.search(name) and isinstance(url_name, str):
            case.body["name"] = unquote(url_name)      # path parameters are kept quoted for the URL
    return case


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if REPORT:
        by_op: dict[str, dict[str, int]] = {}
        for (op, status), n in sorted(STATUSES.items()):
            by_op.setdefault(op, {})[str(status)] = n
        with open(REPORT, "w", encoding="utf-8") as f:
            json.dump({"examples": EXAMPLES, "requests": sum(STATUSES.values()),
                       "5xx": sum(n for (_, status), n in STATUSES.items() if status >= 500), "by_operation": by_op},
                      f, indent=1)


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx_or_off_its_schema(case: schemathesis.Case) -> None:
    response = case.call()
    STATUSES[f"{case.operation.method.upper()} {case.operation.path}", response.status_code] += 1
    case.validate_response(response)
