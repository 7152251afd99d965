"""The loaders never crash: mutated shipped scenarios and site files (the benchmark's mutator, a few
thousand inputs here; `python -m benchmarks bench_loader_fuzz` runs 100,000 per loader) and Hypothesis'
values in every setting give a value or a `ConfigError` whose every problem names its field."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.bench_loader_fuzz import _leaves, _set, mutants, outcome, seeds

pytestmark = pytest.mark.unit

LOADERS = seeds()
N = {"scenario": 1000, "site_file": 1500}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_mutated_files_give_a_value_or_a_named_error(name: str) -> None:
    parse, files = LOADERS[name]
    rng = random.Random(7)
    streams = [mutants(f, rng) for f in files]
    outcomes = [outcome(parse, next(streams[i % len(streams)])) for i in range(N[name])]
    assert 0 < outcomes.count("ok") < len(outcomes)        # the mutator both keeps and breaks files


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    | st.sampled_from(["10ms", "1e300h", "8_470", "٣", "a\0b", "1" + "0" * 400, "-1s", "101%"]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=10), kids, max_size=3),
    max_leaves=8)


@pytest.mark.parametrize("name", sorted(LOADERS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_in_any_setting_gives_a_value_or_a_named_error(name: str, data: Any) -> None:
    parse, files = LOADERS[name]
    seed = data.draw(st.sampled_from([f for f in files if len(f) < 6000]))
    doc = yaml.safe_load(seed)
    path = data.draw(st.sampled_from(list(_leaves(doc))))
    _set(doc, path, data.draw(VALUES))
    try:
        text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, ValueError):
        return
    outcome(parse, text.encode("utf-8", "surrogatepass"))
