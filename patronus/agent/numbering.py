"""How the agent numbers the runtime's steering plan into the kernel (pure: no I/O).

The kernel knows no names: a slot's conntrack mark carries its remote's, policy's and origin path's
numbers (`steering.slot_mark`), a path's routing mark its path number. Remote numbers follow the
site file's order, path numbers are the site file's path plans', and a policy keeps its number for as
long as it exists (a new policy takes the lowest free one), so the marks of the connections in the
kernel keep meaning the same slot across policy changes and restarts (`adopt.kept_maps`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from patronus.agent.adopt import HostRecord, Numbering
from patronus.agent.config import PathPlan, SiteConfig
from patronus.agent.steering import FALLBACK_POLICY_NO, KernelFlow, path_mark, slot_gen, slot_mark, split_slot
from patronus.core.model import PathId, SiteId, Slot
from patronus.core.plan import SteeringPlan
from patronus.core.policy import RoutingPolicy


def in_order(policies: Sequence[RoutingPolicy]) -> list[RoutingPolicy]:
    """The router's match order."""
    return sorted(policies, key=lambda p: (p.priority, p.name))


class KernelNumbers:
    """The numbers of one site's remotes, policies and paths, and the plan in those numbers."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.plans: dict[PathId, PathPlan] = {p.id: p for p in cfg.paths}
        self.remotes = {r.name: r.number for r in cfg.remotes}
        self.policies: dict[str, int] = {}

    def retarget(self, cfg: SiteConfig) -> None:
        """The site's remotes changed (mesh discovery): their numbers and paths' as `cfg` has them
        (`config.with_remotes` keeps those of the ones that stay)."""
        self.plans = {p.id: p for p in cfg.paths}
        self.remotes = {r.name: r.number for r in cfg.remotes}

    def record(self) -> Numbering:
        return Numbering(remotes=dict(self.remotes), policies=dict(self.policies),
                         paths={str(p.id): p.number for p in self.plans.values()})

    def keep_record(self, record: HostRecord, names: set[str]) -> None:
        """Take the numbers an earlier agent gave the policies that still exist (`names`)."""
        for name, n in sorted(record.policies.items(), key=lambda t: t[1]):
            if name in names and n < FALLBACK_POLICY_NO and n not in self.policies.values():
                self.policies[name] = n

    def number(self, policies: Sequence[RoutingPolicy]) -> None:
        """A number for every policy that has none (numbers stay with their names)."""
        used = set(self.policies.values())
        for p in in_order(policies):
            if p.name not in self.policies:
                n = next(i for i in range(1, FALLBACK_POLICY_NO) if i not in used)
                self.policies[p.name] = n
                used.add(n)

    def numbered(self, policies: Sequence[RoutingPolicy]) -> list[tuple[int, RoutingPolicy]]:
        return [(self.policies[p.name], p) for p in in_order(policies)]

    def policy_names(self) -> dict[int, str | None]:
        names: dict[int, str | None] = {n: name for name, n in self.policies.items()}
        names[FALLBACK_POLICY_NO] = None
        return names

    def policy_number(self, name: str | None) -> int:
        return FALLBACK_POLICY_NO if name is None else self.policies[name]

    def slot_mark(self, slot: Slot) -> int:
        return slot_mark(self.remotes[slot.remote], self.policy_number(slot.policy), self.plans[slot.origin].number,
                         slot.gen)

    def kernel_maps(self, plan: SteeringPlan) -> tuple[dict[int, int], dict[int, int]]:
        """The plan numbered into the kernel's two maps: new_slot (bucket mark → slot mark) and
        slot_path (slot mark → path mark)."""
        new_slot = {slot_mark(self.remotes[b.remote], self.policy_number(b.policy), b.index): self.slot_mark(slot)
                    for b, slot in plan.new.items()}
        slot_path = {self.slot_mark(s): path_mark(self.plans[pid].number) for s, pid in plan.slots.items()}
        return new_slot, slot_path

    def slots_of_marks(self, kept: Mapping[int, int]) -> dict[Slot, PathId]:
        """The kernel's slot → path map (marks, as an earlier agent numbered them and `kept_maps`
        renumbered them) in the runtime's terms; marks that name no remote, policy or path of ours are
        left out."""
        names = self.policy_names()
        by_number = {p.number: p for p in self.plans.values()}
        remote_of = {n: name for name, n in self.remotes.items()}
        out: dict[Slot, PathId] = {}
        for mark, pmark in sorted(kept.items()):
            rn, pn, n = split_slot(mark)
            remote, origin, cur = remote_of.get(rn), by_number.get(n), by_number.get(pmark & 0xFF)
            if remote is None or origin is None or cur is None or pn not in names:
                continue
            out[Slot(SiteId(remote), names[pn], origin.id, slot_gen(mark))] = cur.id
        return out

    def flow_rows(self, flows: Sequence[KernelFlow], slots: Iterable[Slot], path_of: Callable[[Slot], PathId | None],
                  now: float) -> list[dict[str, Any]]:
        """The kernel's connections (conntrack) as the API's flow table: each with its policy, the
        path its slot is on now and the path it was first put on."""
        names = self.policy_names()
        by_number = {p.number: p for p in self.plans.values()}
        by_mark = {self.slot_mark(s): s for s in slots}
        out = []
        for f in flows:
            _rn, pn, n = split_slot(f.slot)
            slot = by_mark.get(f.slot)
            origin = by_number.get(n)
            pol = names.get(pn, None)
            out.append({"src_ip": f.src_ip, "dst_ip": f.dst_ip, "src_port": f.src_port, "dst_port": f.dst_port,
                        "protocol": f.protocol, "policy": pol if pol is not None else "implicit-default",
                        "path": path_of(slot) if slot is not None else None,
                        "origin_path": origin.id if origin else None,
                        "bytes": f.bytes, "packets": f.packets,
                        "age_s": round(now - f.started_at, 3) if f.started_at else None,
                        "expires_in_s": f.timeout_s})
        return out
