"""Link impairment backends: `netem` (tc netem via pyroute2) where the kernel has `sch_netem`,
`relay` (a userspace AF_PACKET relay) where it does not. Both realise the same `Impairment`
with the same semantics (see `emulation.links.impairment`), so one scenario runs on either.

    backend, why = choose_backend("auto")
    link = make_link(backend, ...)            # or RelayLink / NetemLink directly
    with link:
        applied_at_ns = link.set("xy", Impairment(delay_s=0.02, loss=0.01))
        link.counters()

Every `Link` has `backend`, `start()`, `set(direction, impairment) -> applied_at_ns`
(CLOCK_REALTIME, when the change took effect), `counters()` and `stop()`; directions are `xy`
(frames travelling from the X side to the Y side), `yx` and `both`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from emulation.links.impairment import Action, GilbertElliott, Impairment, ImpairmentModel
from patronus.core.errors import ConfigError

Backend = Literal["netem", "relay"]
Direction = Literal["xy", "yx", "both"]

__all__ = ["Action", "Backend", "Direction", "GilbertElliott", "Impairment", "ImpairmentModel", "Link",
           "choose_backend", "make_link"]


@runtime_checkable
class Link(Protocol):
    """What the test-bed needs of an impaired link, whichever backend realises it."""

    backend: str

    def start(self) -> Any: ...

    def set(self, direction: str, impairment: Impairment) -> int: ...

    def counters(self) -> dict[str, Any]: ...

    def stop(self) -> dict[str, Any] | None: ...


def choose_backend(preferred: str = "auto") -> tuple[Backend, str]:
    """The impairment backend to use and why. `auto` takes netem when this kernel has it, else the
    relay; `netem` insists (ConfigError, with the reason, when the kernel lacks it); `relay` always
    works."""
    from emulation.links import netem

    if preferred == "relay":
        return "relay", "relay requested"
    if preferred not in ("auto", "netem"):
        raise ConfigError(f"expected auto, netem or relay, got {preferred!r}", "impairment_backend")
    ok, why = netem.available()
    if ok:
        return "netem", why
    if preferred == "netem":
        raise ConfigError(f"netem requested but {why}", "impairment_backend")
    return "relay", f"{why}; using the userspace relay"


def make_link(backend: str, *, ns_x: str | None, if_x: str, ns_y: str | None, if_y: str, seed: int = 0,
              impairment_xy: Impairment | None = None, impairment_yx: Impairment | None = None,
              tag: str = "patronus", nice: int | None = None, realtime: int | None = None,
              log_path: Path | None = None) -> Link:
    """A link handle for `backend` (not started). For the relay both ends are in one namespace
    (the relay node's: `ns_x` must equal `ns_y`); for netem they are the two ends of a direct link.
    `realtime` (relay only) runs the relay process SCHED_FIFO at that priority so its release times
    hold on a busy host; `nice` is its niceness where the kernel refuses a real-time class; `log_path`
    (relay only) keeps its stderr in that file (else a temporary one)."""
    if backend == "relay":
        if ns_x != ns_y:
            raise ConfigError(f"the relay bridges two interfaces of one namespace, got {ns_x!r} and {ns_y!r}", "ns_y")
        from emulation.links.relay import RelayLink

        return RelayLink(ns_x, if_x, if_y, seed, impairment_xy, impairment_yx, tag=tag, nice=nice,
                         realtime=realtime, log_path=log_path)
    if backend == "netem":
        from emulation.links.netem import NetemLink

        return NetemLink(ns_x, if_x, ns_y, if_y, seed, impairment_xy, impairment_yx)
    raise ConfigError(f"expected netem or relay, got {backend!r}", "impairment_backend")
