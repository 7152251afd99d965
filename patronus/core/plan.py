"""The steering plan: what a site's dataplane must do, computed from the router's state (pure).

A dataplane (the agent's nftables maps, the simulator's model, later a BPF map) cannot ask the router
about each packet. It steers by two tables, and the plan is their content:

* `new`: `Bucket` → slot. A new connection toward `remote` that matches `policy` falls in a bucket
  (bucket 0 for a policy that does not balance; one of `LB_BUCKETS` buckets of its 5-tuple hash for
  one that does) and is put in that bucket's slot for as long as it lives: a slot that is on the path
  the policy wants for new connections now (`Slot.gen` says how one is found when the path's own
  slot is away, waiting to fail back).
* `slots`: `Slot` → path. Every connection of a slot takes the slot's current path. A failover
  rewrites the entries of the slots that leave a path; every connection of those slots moves on its
  next packet.

A load-balancing policy spreads its buckets over its tier (the paths within `lb_tolerance` of the
best score) by `lb_buckets`: the same on every backend, so a scenario balances the same way in the
simulator as on Mininet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from patronus.core.model import Bucket, FlowKey, PathId, Slot
from patronus.core.policy import LoadBalance

LB_BUCKETS = 16          # hash buckets of a load-balancing policy's new connections


@dataclass(frozen=True, slots=True)
class SteeringPlan:
    """The dataplane's two tables (see the module's header). Plans compare equal when they steer alike."""

    new: Mapping[Bucket, Slot] = field(default_factory=dict)
    slots: Mapping[Slot, PathId] = field(default_factory=dict)

    def path_of_new(self, bucket: Bucket) -> PathId | None:
        """The path a new connection of `bucket` takes (None: none; the kernel drops it)."""
        slot = self.new.get(bucket)
        return self.slots.get(slot) if slot is not None else None

    def as_dict(self) -> dict[str, list[dict[str, object]]]:
        """JSON-ready, sorted (for the API and the raw data)."""
        return {
            "new": [{"remote": b.remote, "policy": b.policy, "bucket": b.index, "origin": s.origin, "gen": s.gen,
                     "path": self.slots.get(s)}
                    for b, s in sorted(self.new.items(), key=lambda t: t[0].sort_key())],
            "slots": [{"remote": s.remote, "policy": s.policy, "origin": s.origin, "gen": s.gen, "path": p}
                      for s, p in sorted(self.slots.items(), key=lambda t: t[0].sort_key())],
        }


def lb_buckets(mode: LoadBalance, tier: list[tuple[PathId, float, float]], n: int) -> list[PathId]:
    """Which tier path (id, score, bandwidth) each of `n` hash buckets sends new connections to.

    flow_hash: rendezvous hashing, so losing a path moves only its buckets; weighted_round_robin:
    shares proportional to bandwidth (largest remainder); round_robin and least_connections: an even
    spread (a dataplane cannot count connections per path when it classifies a new one)."""
    if mode is LoadBalance.FLOW_HASH:
        def weight(bucket: int, pid: PathId) -> int:
            return int.from_bytes(hashlib.blake2b(f"{bucket}|{pid}".encode(), digest_size=8).digest(), "big")
        return [max(tier, key=lambda t: (weight(b, t[0]), t[0]))[0] for b in range(n)]
    if mode is LoadBalance.WEIGHTED_ROUND_ROBIN:
        weights = [bw if bw > 0 else 1.0 for _, _, bw in tier]
        total = sum(weights)
        exact = [w * n / total for w in weights]
        counts = [int(x) for x in exact]
        for i in sorted(range(len(tier)), key=lambda i: exact[i] - counts[i], reverse=True)[:n - sum(counts)]:
            counts[i] += 1
        out: list[PathId] = []
        for (pid, _, _), c in zip(tier, counts, strict=True):
            out += [pid] * c
        return out
    return [tier[b % len(tier)][0] for b in range(n)]


def flow_bucket(flow: FlowKey, n: int) -> int:
    """The hash bucket (0 .. n-1) of a connection's 5-tuple: a model's stand-in for the kernel's jhash
    (which buckets a connection falls in differs; how buckets map to paths does not)."""
    data = f"{flow.src_ip}|{flow.dst_ip}|{flow.protocol}|{flow.src_port}|{flow.dst_port}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % n
