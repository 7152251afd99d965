"""What the agent's parts (`control`, `duties`) see of a running agent: a Protocol that
`daemon.Agent` satisfies, so that the parts need not import the daemon that imports them."""

from __future__ import annotations

from typing import Any, Protocol

from patronus.agent.config import SiteConfig
from patronus.agent.dataplane import Dataplane
from patronus.agent.hub import EventHub
from patronus.agent.lifecycle import Lifecycle
from patronus.agent.numbering import KernelNumbers
from patronus.agent.prober import Prober, ReflectorProcess
from patronus.agent.steering import KernelFlow
from patronus.agent.store import Store
from patronus.core.events import Event
from patronus.core.model import PathId
from patronus.core.policy import RoutingPolicy
from patronus.core.runtime import SiteRuntime


class RunningAgent(Protocol):
    cfg: SiteConfig
    runtime: SiteRuntime
    life: Lifecycle
    dataplane: Dataplane
    numbers: KernelNumbers
    hub: EventHub
    store: Store | None
    prober: Prober | None
    reflector: ReflectorProcess | None
    public_key: str
    token: str
    started_at: float
    adopted: dict[str, Any]
    status_since: dict[PathId, float]
    kernel_flows: list[KernelFlow]
    steering_changes: int
    last_steering_change: float | None
    mesh: Any                       # the mesh discovery driver (patronus.agent.meshdrive), None without mesh:

    def publish(self, ev: Event) -> None: ...

    def flow_table(self) -> list[dict[str, Any]]: ...

    def apply_policies(self, policies: list[RoutingPolicy]) -> None: ...

    def record_metrics(self, now: float) -> None: ...

    def check_tunnels(self, shakes: dict[PathId, float | None], now: float) -> None: ...
