"""Hypothesis properties of SWIM membership (patronus/core/swim.py), over seeds, cluster sizes N (2..25) and
message loss (0..10 %), in the deterministic network of tests/unit/test_swim.py (N members joining through
s0, 0.1 s apart):

- every live member converges to the same view (all the others, alive, at their current incarnations)
  within `CONVERGE_S`;
- with no loss and no crash, nobody is ever suspected, let alone declared failed;
- a crashed member (once all have converged) is declared failed by every live member within
  `detect_bound(N)`, loss or not;
- decoding arbitrary bytes raises nothing but `SwimError`.

No property can fail by chance: Hypothesis runs derandomized here, and every random draw of a run (the
network's delays and losses, each member's `Rand`) comes from the example's seed, so an example either
always passes or always fails (and is then a reproducible counterexample).

`CONVERGE_S` = 80 s. Its reasoning: a Join fails when it or the seed's answer is lost (≤ 19 % at 10 % loss)
and is retried after 1, 2 and 4 s, so three retries (7 s) leave ≤ 0.7 % of joiners still waiting; gossip
then reaches everyone within seconds in most runs (the property tests' runs converge in 0.2-5 s), and
when a record dies out before reaching someone (a lost Sync part, a gossip chain cut by loss),
push-pull with a random member every 30 s repairs it: two sync periods (60 s) plus 10 s of slack for
the gossip after them. Such misses are not rare: a record is sent `retransmit_limit` (8) times by each
of the ~n members that learn it, to random members, so one member misses it with probability about
(1 - 1/n)^(8n) ≈ e^-8, but there are n² (member, record) pairs in a join of n, so a run of 25 often has
one, even with no loss. Measured over 200 runs (n 2-25, loss 0-10 %): at most 33 s.

The crash bound holds whatever is lost: each member's own probes of the crashed member all go
unanswered, so it suspects it within 2(N - 1) periods of the crash and declares it failed
`suspicion_timeout` later (at most 4 × log10(25) = 5.6 s here), with no message needed from anyone.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patronus.core.swim import EventKind, SwimError, decode
from patronus.core.swimwire import MAGIC
from tests.unit.test_swim import cluster, detect_bound

pytestmark = pytest.mark.property

CONVERGE_S = 80.0
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)

seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(2, 25)
losses = st.integers(0, 10).map(lambda p: p / 100)


@SETTINGS
@given(seed=seeds, n=sizes, loss=losses)
def test_live_members_converge_to_the_same_view(seed: int, n: int, loss: float) -> None:
    net = cluster(n, seed, loss=loss)
    t = net.run(CONVERGE_S, net.converged, every=0.1)
    assert t is not None, f"not converged within {CONVERGE_S} s"


@SETTINGS
@given(seed=seeds, n=sizes)
def test_no_loss_and_no_crash_means_nobody_is_suspected(seed: int, n: int) -> None:
    net = cluster(n, seed)
    net.run(CONVERGE_S)
    assert net.converged()
    assert all(e.kind is EventKind.JOINED for _, _, e in net.events)
    assert all(node.incarnation == 1 and not node.stats["refutations"] for node in net.nodes.values())


@settings(max_examples=50, deadline=None, derandomize=True)
@given(seed=seeds, n=st.integers(3, 25), loss=losses)
def test_a_crashed_member_is_declared_failed_by_every_live_member_within_the_bound(
        seed: int, n: int, loss: float) -> None:
    net = cluster(n, seed, loss=loss)
    converged = net.run(CONVERGE_S, net.converged, every=0.1)
    assert converged is not None
    crash = converged + 1.0
    net.run(crash)
    victim = f"s{n - 1}"
    net.down.add(victim)
    net.run(crash + detect_bound(n) + 0.1)
    done = {obs for t, obs, e in net.events if e.kind is EventKind.FAILED and e.name == victim and t >= crash}
    assert done == set(net.nodes) - {victim}, sorted(set(net.nodes) - {victim} - done)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: MAGIC + b"\x01" + b),
                      st.tuples(st.integers(1, 6), st.binary(max_size=200)).map(
                          lambda t: MAGIC + bytes((1, t[0])) + t[1])))
def test_decoding_arbitrary_bytes_raises_only_swim_error(data: bytes) -> None:
    try:
        decode(data)
    except SwimError as e:
        assert e.reason in {"malformed", "unsupported_version", "too_large"}
