"""Reading scenarios: `load(path)`, `parse(text)`, and dotted overrides for sweeps.

YAML is read with the safe loader, after a check that no mapping repeats a key: PyYAML silently keeps
the last of two `hq:` entries, which would merge two sites into one without a word.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from emulation.scenario.model import Scenario
from emulation.scenario.schema import from_dict
from patronus.core.errors import ConfigError


def load(path: str | Path) -> Scenario:
    """Read and check a scenario file. Raises `ConfigError` listing every problem with its path."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([(str(p), f"cannot read the scenario file: {reason}")]) from None
    return parse(text, source=str(p))


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Check a scenario given as YAML text."""
    return from_dict(read_yaml(text), source=source)


def read_yaml(text: str) -> Any:
    """The YAML document as plain data; a syntax error or a repeated key is a `ConfigError`."""
    try:
        loader = yaml.SafeLoader(text)      # reads ahead: may raise a ReaderError already
    except yaml.YAMLError as exc:
        raise ConfigError([("(YAML)", f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = list(_duplicate_keys(node, ""))
        if duplicates:
            raise ConfigError(duplicates)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(YAML)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([(where, f"not valid YAML: {problem}")]) from None
    except ValueError as exc:       # an integer of more than 4300 digits
        raise ConfigError([("(YAML)", f"not valid YAML: {str(exc)[:80]}")]) from None
    except RecursionError:
        raise ConfigError([("(YAML)", "not valid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, path: str, seen: set[int] | None = None) -> Any:
    seen = set() if seen is None else seen
    if id(node) in seen:          # an alias of a node already walked (and no endless walk of `&a [*a]`)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[object, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in first:
                    yield (sub, f"repeated key (lines {first[key]} and {line}); YAML would silently keep only "
                                "the last one")
                else:
                    first[key] = line
            yield from _duplicate_keys(value_node, sub, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{i}]", seen)


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
