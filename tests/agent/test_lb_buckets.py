"""How the agent spreads a load-balancing policy's 16 hash buckets over the policy's tier."""

from __future__ import annotations

from collections import Counter

import pytest

from patronus.core.model import PathId
from patronus.core.plan import lb_buckets
from patronus.core.policy import LoadBalance

pytestmark = pytest.mark.unit
A, B, C = PathId("r:a-a"), PathId("r:b-a"), PathId("r:c-a")


def test_round_robin_spreads_evenly() -> None:
    got = Counter(lb_buckets(LoadBalance.ROUND_ROBIN, [(A, 90, 0), (B, 88, 0), (C, 87, 0)], 16))
    assert sorted(got.values()) == [5, 5, 6]


def test_weighted_shares_follow_bandwidth() -> None:
    got = Counter(lb_buckets(LoadBalance.WEIGHTED_ROUND_ROBIN, [(A, 90, 300.0), (B, 88, 100.0)], 16))
    assert got == {A: 12, B: 4}
    got = Counter(lb_buckets(LoadBalance.WEIGHTED_ROUND_ROBIN, [(A, 90, 0.0), (B, 88, 0.0), (C, 80, 0.0)], 16))
    assert sum(got.values()) == 16 and max(got.values()) - min(got.values()) <= 1   # unknown: equal


def test_flow_hash_moves_only_the_lost_paths_buckets() -> None:
    full = lb_buckets(LoadBalance.FLOW_HASH, [(A, 90, 0), (B, 88, 0), (C, 87, 0)], 16)
    assert len(set(full)) >= 2
    assert full == lb_buckets(LoadBalance.FLOW_HASH, [(A, 90, 0), (B, 88, 0), (C, 87, 0)], 16)   # stable
    without_b = lb_buckets(LoadBalance.FLOW_HASH, [(A, 90, 0), (C, 87, 0)], 16)
    for before, after in zip(full, without_b, strict=True):
        if before != B:
            assert after == before
        else:
            assert after in (A, C)
