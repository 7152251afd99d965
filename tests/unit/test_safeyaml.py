"""`patronus.safeyaml`: every hostile text of the hardening issue gives a `ConfigError` naming where and
why, and ordinary YAML (anchors and merges included) reads as PyYAML's safe loader reads it."""

from __future__ import annotations

import contextlib

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from patronus import safeyaml
from patronus.core.errors import ConfigError

pytestmark = pytest.mark.unit


def _bomb(levels: int, width: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nduration: *a{levels - 1}\n"


def _refused(text: str | bytes) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        safeyaml.read(text, "s.yaml")
    return exc.value


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    assert len(_bomb(9)) < 500                        # 9^9 = 387 million values
    (where, why), = _refused(_bomb(9)).errors
    assert where.startswith("s.yaml: a") and "expand to more than 100000 values" in why
    assert len(safeyaml.read(_bomb(4))["duration"]) == 9       # 9^4 values: fine


@pytest.mark.parametrize(("text", "reason"), [
    ("version: 1\x1b", "not valid YAML: special characters are not allowed"),
    (b"\xff\xfeversion: 1", "not UTF-8 text"),
    ("[" * 496 + "]" * 496, "nested deeper than 64 levels"),
    ("a: " + "{b: " * 70 + "1" + "}" * 70, "nested deeper than 64 levels"),
    ("n: " + "9" * 5000, "an integer of 5000 digits (at most 64)"),
    ("duration: 1" + "0" * 309, "an integer of 310 digits"),
    ("a: &a [*a]", "an alias refers to a value that contains it"),
    ("a: &a {b: *a}", "an alias refers to a value that contains it"),
    ("x: " + "y" * (safeyaml.MAX_BYTES + 1), "larger than"),
    ("a: 1\nb: 2\na: 3\n", "repeated key (lines 1 and 3)"),
])
def test_hostile_text_is_a_config_error_with_a_reason(text: str | bytes, reason: str) -> None:
    err = _refused(text)
    assert any(reason in why for _, why in err.errors), err.errors
    assert all(f.startswith("s.yaml") for f, _ in err.errors)
    assert len(str(err)) < 500                        # no unbounded value in the message


def test_anchors_merges_and_shared_values_read_as_pyyaml_reads_them() -> None:
    text = ("base: &b {delay: 20ms, loss: 1%}\nhq: {<<: *b, delay: 5ms}\nlist: [*b, *b]\n"
            "big: 123456789012345678901234567890\n")
    assert safeyaml.read(text) == yaml.safe_load(text)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=30))
def test_what_pyyaml_writes_reads_back_the_same(doc: object) -> None:
    assert safeyaml.read(yaml.safe_dump(doc)) == doc


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_data_or_a_config_error(data: bytes) -> None:
    with contextlib.suppress(ConfigError):      # anything else escaping fails the test
        safeyaml.read(data)
