"""A router's policy table: its routing policies, which are enabled, and which one a flow matches.

What may change state here: `add`, `upsert`, `remove`, `set_enabled` and `replace_all`; a change is
applied whole or, when it is refused (`ConfigError`), not at all. This module must not know about
paths or flows: the router (`router.py`) composes the table and, after each change, gives its flows
the policies that now match them.

Rules: policies are kept in match order (lowest priority number first, ties by name); a flow matches
the first enabled policy whose rule it meets, and the implicit default (`IMPLICIT_DEFAULT`, which
every flow meets) when none does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from patronus.core.errors import ConfigError
from patronus.core.model import FlowKey
from patronus.core.policy import RoutingPolicy, address_int

IMPLICIT_DEFAULT = RoutingPolicy("implicit-default", 1_000_001)


class PolicyTable:
    def __init__(self) -> None:
        self._policies: list[RoutingPolicy] = []
        self.active: list[RoutingPolicy] = []      # enabled policies, in match order
        self._needs_addrs = False

    def add(self, policy: RoutingPolicy) -> None:
        if any(p.name == policy.name for p in self._policies):
            raise ConfigError(f"a policy named {policy.name!r} already exists", "policy.name")
        self._set([*self._policies, policy])

    def upsert(self, policy: RoutingPolicy) -> None:
        self._set([p for p in self._policies if p.name != policy.name] + [policy])

    def remove(self, name: str) -> RoutingPolicy:
        for p in self._policies:
            if p.name == name:
                self._set([q for q in self._policies if q.name != name])
                return p
        raise ConfigError(f"no policy named {name!r}", "policy.name")

    def set_enabled(self, name: str, enabled: bool) -> None:
        for p in self._policies:
            if p.name == name:
                self.upsert(replace(p, enabled=enabled))
                return
        raise ConfigError(f"no policy named {name!r}", "policy.name")

    def replace_all(self, policies: Iterable[RoutingPolicy]) -> None:
        pols = list(policies)
        names = [p.name for p in pols]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"duplicate policy names: {', '.join(dup)}", "policies")
        self._set(pols)

    def in_order(self) -> list[RoutingPolicy]:
        return list(self._policies)

    def _set(self, pols: list[RoutingPolicy]) -> None:
        self._policies = sorted(pols, key=lambda p: (p.priority, p.name))
        self.active = [p for p in self._policies if p.enabled]
        self._needs_addrs = any(p.match.needs_addresses for p in self.active)

    def match(self, flow: FlowKey, dscp: int | None, app_class: str | None) -> RoutingPolicy:
        """The enabled policy `flow` matches (the implicit default when none does)."""
        addrs = (address_int(flow.src_ip), address_int(flow.dst_ip)) if self._needs_addrs else None
        for p in self.active:
            if p.match.matches(flow, dscp, app_class, addrs):
                return p
        return IMPLICIT_DEFAULT

    def named(self, name: str | None) -> RoutingPolicy:
        """The enabled policy called `name` (None = the implicit default); KeyError if there is none."""
        if name is None or name == IMPLICIT_DEFAULT.name:
            return IMPLICIT_DEFAULT
        for p in self.active:
            if p.name == name:
                return p
        raise KeyError(name)
