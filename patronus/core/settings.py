"""The agent settings that a site file and a scenario's `agent:` section share: routing policies and the
router's timers, read once here with `patronus.core.validate`, so both files accept the same values and
report the same errors (under their own paths: `policies[0].name`, `sites.hq.agent.policies[0].name`).
"""

from __future__ import annotations

from patronus.core.policy import RoutingPolicy, default_policies
from patronus.core.router import RouterConfig
from patronus.core.validate import Errors, duration, item, join, mapping, number, show

MAX_POLICIES = 250          # the agent numbers policies in a byte, with room for its own
ROUTER_KEYS = ("failback_hold", "failover_cooldown", "idle_timeout", "min_improvement")


def read_policies(raw: object, path: str, errs: Errors) -> tuple[RoutingPolicy, ...]:
    """`"default"` (or nothing) for the default policies, or a list of policies with distinct names.
    The defaults on error (the error recorded)."""
    if raw is None or raw == "default":
        return tuple(default_policies())
    if not isinstance(raw, list) or not raw:
        errs.add(path, f"expected 'default' or a list of policies, got {show(raw)}")
        return tuple(default_policies())
    if len(raw) > MAX_POLICIES:
        errs.add(path, f"at most {MAX_POLICIES} policies, got {len(raw)}")
        return tuple(default_policies())
    parsed = [errs.attempt(RoutingPolicy.from_dict, p, item(path, i)) for i, p in enumerate(raw)]
    seen: dict[str, int] = {}
    for i, p in enumerate(parsed):
        if p is None:
            continue
        if p.name in seen:
            errs.add(join(item(path, i), "name"), f"duplicate of {item('policies', seen[p.name])}.name "
                                                  f"({show(p.name)})")
        seen.setdefault(p.name, i)
    return tuple(p for p in parsed if p is not None)


def read_router(raw: object, path: str, errs: Errors) -> RouterConfig:
    """The router's timers (`failback_hold`, `failover_cooldown`: non-negative durations; `idle_timeout`:
    positive) and `min_improvement` (score points 0-100); keys left out keep their defaults, as does
    everything on error (the error recorded)."""
    rc = mapping(raw, path, errs, ROUTER_KEYS, none_ok=True)
    if rc is None:
        return RouterConfig()
    n = len(errs)
    kw: dict[str, float | None] = {}
    for key in ("failback_hold", "failover_cooldown", "idle_timeout"):
        if key in rc:
            kw[f"{key}_s"] = duration(rc[key], join(path, key), errs, positive=key == "idle_timeout")
    if "min_improvement" in rc:
        kw["min_improvement"] = number(rc["min_improvement"], join(path, "min_improvement"), errs, 0, 100,
                                       "a score difference 0-100")
    if len(errs) != n:
        return RouterConfig()
    return RouterConfig(**kw)  # type: ignore[arg-type]     # every value was checked above
