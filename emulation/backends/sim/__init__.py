"""The simpy backend: a scenario run in virtual time, with the agent's own core objects at every site.

    code = run_sim(load("scenarios/failover-basic.yaml"), Path("reports/sim-failover"))

Each site runs `patronus.core.runtime.SiteRuntime` built from the site file the Mininet runner would give
its agent (`emulation.siteconf`), driven like the agent drives it (`agent`); probes and packets cross
impairment models of the scenario's links (`network`); traffic is simulated per packet or computed per
flow (`traffic`); the timeline's steps apply at their virtual times; the run ends with the same raw
data (`writer`) and reports as an emulated run. Same scenario and seed: byte-identical files.

The clock is a `simpy.Environment` (`clock.SimEnvironment`, a documented subclass with a fast path
for callbacks): a researcher's own simpy processes run in it beside the simulator's.

Modules: `engine` (the run, `run_sim`), `clock`, `agent`, `network`, `traffic`, `writer`.
"""

from emulation.backends.sim.engine import AUTO_PACKET_LIMIT, MODES, T0, Simulation, run_sim
from emulation.backends.sim.network import SimOptions

__all__ = ["AUTO_PACKET_LIMIT", "MODES", "T0", "SimOptions", "Simulation", "run_sim"]
