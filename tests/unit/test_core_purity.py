"""patronus.core is sans-IO: it imports only pure standard-library modules and itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CORE = Path(__file__).resolve().parents[2] / "patronus" / "core"
ALLOWED = {
    "__future__", "abc", "base64", "bisect", "collections", "dataclasses", "difflib", "enum", "fractions", "functools",
    "hashlib", "heapq", "hmac", "ipaddress", "itertools", "math", "operator", "re", "statistics", "struct", "typing",
    "zlib",
    # Allowed as a pure dependency: signature computation and verification (patronus/core/identity.py, and
    # issue 14's signed announcements), bytes in and bytes out, no I/O, no clock, no randomness drawn by the core.
    "cryptography",
}
FORBIDDEN_EXAMPLES = {"asyncio", "socket", "subprocess", "time", "os", "threading", "random", "datetime"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "patronus.core"))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def test_core_modules_exist() -> None:
    names = {p.stem for p in CORE.glob("*.py")}
    assert {"model", "events", "quality", "monitor", "policy", "router", "sla", "units", "errors"} <= names


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: p.name)
def test_core_imports_only_pure_modules(path: Path) -> None:
    bad = []
    for line, mod in _imports(path):
        top = mod.split(".")[0]
        if mod.startswith("patronus.core") or mod == "patronus.core":
            continue
        if top not in ALLOWED:
            bad.append(f"{path.name}:{line} imports {mod}")
    assert not bad, "patronus.core must stay sans-IO:\n" + "\n".join(bad)


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import time\nfrom asyncio import sleep\nfrom . import model\n")
    mods = {m for _, m in _imports(f)}
    assert {"time", "asyncio"} <= mods and not ({"time", "asyncio"} & ALLOWED)
    assert not (FORBIDDEN_EXAMPLES & ALLOWED)
