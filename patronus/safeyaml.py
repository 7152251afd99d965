"""YAML from a file we did not write: site files, scenarios, policies given to the CLI.

`read(text)` gives the document as plain data (dicts, lists, str, int, float, bool, None) or raises
`ConfigError` naming where and why. PyYAML's safe loader alone constructs no objects, but it still
crashes, hangs or explodes on hostile text, and silently merges repeated keys; this module bounds
every one of those before a value is built:

* size: at most `MAX_BYTES` of text (a site file is a few kB, the largest shipped scenario ~20 kB);
* text: not UTF-8 (`\\xff\\xfe...`) or characters YAML forbids (`\\x1b`, NUL): a `ReaderError` escaped;
* depth: at most `MAX_DEPTH` levels of nesting, read from the token stream before the (recursive)
  composer runs: `"[" * 496` raised `RecursionError`;
* aliases: the document with every alias expanded has at most `MAX_NODES` nodes, and no alias refers
  to a node that contains it: a 408-byte "billion laughs" took 4.7 s, 459 bytes 32 s and 2.5 GB once
  a message formatted the value;
* integers: at most `MAX_INT_DIGITS` digits (Python refuses to convert > 4300 digits with a
  `ValueError`; no setting of ours needs more than 20);
* repeated keys in a mapping: an error naming both lines (PyYAML keeps the last of two `hq:` entries,
  which would merge two sites into one without a word).
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from patronus.core.errors import ConfigError

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_INT_DIGITS = 64

_OPENERS = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
            yaml.FlowSequenceStartToken)
_CLOSERS = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


class _Loader(yaml.SafeLoader):
    """The safe loader with bounded integers."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {digits} digits (at most {MAX_INT_DIGITS})", node.start_mark)
        return int(super().construct_yaml_int(node))


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def read_file(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, at most `MAX_BYTES` + 1 of them (enough for `read` to refuse a larger one
    without reading it whole). OSError as `open` raises it."""
    with open(path, "rb") as fh:
        return fh.read(MAX_BYTES + 1)


def read(text: str | bytes, source: str = "") -> Any:
    """The YAML document in `text` as plain data; every refusal is a `ConfigError` naming `source`."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise ConfigError(f"{len(text)} bytes: larger than {MAX_BYTES} bytes", source)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text (byte {exc.start}: {exc.reason})", source) from None
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{len(text)} characters: larger than {MAX_BYTES}", source)
    loader: _Loader | None = None
    try:
        _check_depth(text, source)
        loader = _Loader(text)           # its reader refuses forbidden characters already here
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _check_graph(node)
        if problems:
            raise ConfigError([(_in(source, where), why) for where, why in problems])
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(YAML)"
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError):
            where, problem = f"character {exc.position + 1}", f"{exc.reason} (code point {exc.character!r})"
        raise ConfigError([(_in(source, where), f"not valid YAML: {problem}")]) from None
    except RecursionError:       # only if MAX_DEPTH were set near the interpreter's limit
        raise ConfigError(f"nested too deep (at most {MAX_DEPTH} levels)", source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _in(source: str, where: str) -> str:
    return f"{source}: {where}" if source else where


def _check_depth(text: str, source: str) -> None:
    depth = 0
    for token in yaml.scan(text, Loader=_Loader):
        if isinstance(token, _OPENERS):
            depth += 1
            if depth > MAX_DEPTH:
                mark = token.start_mark
                raise ConfigError(f"nested deeper than {MAX_DEPTH} levels",
                                  _in(source, f"line {mark.line + 1}, column {mark.column + 1}"))
        elif isinstance(token, _CLOSERS):
            depth -= 1


def _check_graph(root: yaml.Node) -> list[tuple[str, str]]:
    """Repeated keys (in the order of their lines), and the size of the document with its aliases
    expanded (without expanding them: each node's expanded size is computed once, children first)."""
    problems: list[tuple[int, str, str]] = []
    size: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, done = stack.pop()
        children = _children(node, path)
        if done:
            on_stack.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c, _ in children)
            if size[id(node)] > MAX_NODES:
                return [(path or "(top level)", f"its aliases expand to more than {MAX_NODES} values")]
            continue
        if id(node) in size:
            continue
        if id(node) in on_stack:
            return [(path or "(top level)", "an alias refers to a value that contains it")]
        on_stack.add(id(node))
        stack.append((node, path, True))
        if isinstance(node, yaml.MappingNode):
            problems += _repeated_keys(node, path)
        for child, sub in reversed(children):
            if id(child) in on_stack:
                return [(sub, "an alias refers to a value that contains it")]
            if id(child) not in size:
                stack.append((child, sub, False))
    return [(where, why) for _, where, why in sorted(problems)]


def _children(node: yaml.Node, path: str) -> list[tuple[yaml.Node, str]]:
    if isinstance(node, yaml.MappingNode):
        out: list[tuple[yaml.Node, str]] = []
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else "?"
            out += [(k, path), (v, f"{path}.{key}" if path else str(key))]
        return out
    if isinstance(node, yaml.SequenceNode):
        return [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
    return []


def _repeated_keys(node: yaml.MappingNode, path: str) -> list[tuple[int, str, str]]:
    """(line, key path, reason) of each key that repeats an earlier one."""
    first: dict[object, int] = {}
    out = []
    for key_node, _ in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key is None or key == "<<":
            continue
        line = key_node.start_mark.line + 1
        if key in first:
            out.append((line, f"{path}.{key}" if path else str(key),
                        f"repeated key (lines {first[key]} and {line}); YAML would silently keep only the last one"))
        else:
            first[key] = line
    return out
