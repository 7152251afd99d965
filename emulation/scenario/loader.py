"""Reading scenarios: `load(path)`, `parse(text)`, and dotted overrides for sweeps.

YAML is read by `patronus.safeyaml`: the safe loader, bounded in size, depth, alias expansion and
integer length, after a check that no mapping repeats a key (PyYAML silently keeps the last of two
`hq:` entries, which would merge two sites into one without a word).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emulation.scenario.model import Scenario
from emulation.scenario.schema import from_dict
from patronus import safeyaml
from patronus.core.errors import ConfigError


def load(path: str | Path) -> Scenario:
    """Read and check a scenario file. Raises `ConfigError` listing every problem with its path."""
    p = Path(path)
    try:
        data = safeyaml.read_file(p)
    except OSError as exc:
        raise ConfigError([(str(p), f"cannot read the scenario file: {exc.strerror or exc}")]) from None
    return from_dict(safeyaml.read(data), source=str(p))


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Check a scenario given as YAML text."""
    return from_dict(read_yaml(text), source=source)


def read_yaml(text: str) -> Any:
    """The YAML document as plain data; bad, hostile or oversized text is a `ConfigError`
    (`patronus.safeyaml`)."""
    return safeyaml.read(text)


# --- overrides -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _tokens(path: str) -> list[str | int] | None:
    out: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(path):
        gap = path[pos:m.start()]
        if gap not in ("", ".") or (gap == "" and pos and m.group(2) is not None):
            return None
        out.append(int(m.group(1)) if m.group(1) is not None else m.group(2))
        pos = m.end()
    return out if out and pos == len(path) else None


def set_dotted(doc: Any, path: str, value: Any) -> None:
    """Set `value` at `path` in a plain document (`None` removes the setting: back to its default).

    Path segments are mapping keys; list items are `[i]` or `.i`, and items that have a `name` (flows)
    can be addressed by it. Raises `ConfigError` naming the path when it leads nowhere."""
    tokens = _tokens(path)
    if tokens is None:
        raise ConfigError([(path, "not a dotted path like sites.hq.agent.monitor or traffic[0].rate")])
    node = doc
    walked = ""
    for n, tok in enumerate(tokens):
        last = n == len(tokens) - 1
        if isinstance(node, list):
            index = _list_index(node, tok)
            if index is None:
                raise ConfigError([(path, f"{walked or '(top level)'} has no item {tok!r} (it has {len(node)} "
                                          "item(s); use an index or, for flows, a name)")])
            walked = f"{walked}[{index}]"
            if last:
                if value is None:
                    del node[index]
                else:
                    node[index] = value
                return
            node = node[index]
        elif isinstance(node, dict):
            key = str(tok)
            walked = f"{walked}.{key}" if walked else key
            if last:
                if value is None:
                    node.pop(key, None)
                else:
                    node[key] = value
                return
            if key not in node or node[key] is None:
                node[key] = {}
            node = node[key]
        else:
            raise ConfigError([(path, f"{walked} is a value ({node!r}), not a mapping or list")])


def _list_index(items: list[Any], tok: str | int) -> int | None:
    if isinstance(tok, int) or tok.isdigit():
        i = int(tok)
        return i if 0 <= i < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, Mapping) and item.get("name") == tok:
            return i
    return None


def with_overrides(scenario: Scenario, overrides: Mapping[str, Any] | None = None, /, **dotted: Any) -> Scenario:
    """A copy with settings replaced by dotted path, validated like a file:
    `with_overrides(s, {"sites.hq.agent.monitor": "fast", "traffic.voice.start": "5s"})`.
    List items are addressed by index (`timeline[0].at`, `timeline.0.at`) or, for traffic, by flow name."""
    return apply_overrides(scenario, {**(overrides or {}), **dotted})


def apply_overrides(scenario: Scenario, overrides: Mapping[str, Any]) -> Scenario:
    """`scenario` with the dotted settings replaced, checked as a whole like a file."""
    doc = scenario.to_dict()
    errors: list[tuple[str, str]] = []
    for path, value in overrides.items():
        try:
            set_dotted(doc, path, value)
        except ConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors)
    return from_dict(doc, source=scenario.source)
