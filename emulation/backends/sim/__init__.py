"""The simpy backend: a scenario run in virtual time, with the agent's own core objects at every site.

    code = run_sim(load("scenarios/failover-basic.yaml"), Path("reports/sim-failover"))

Each site runs `patronus.core.site.SiteLogic` built from the site file the Mininet runner would give
its agent (`emulation.siteconf`), driven like the agent drives it (`agent`); probes and packets cross
impairment models of the scenario's links (`network`); traffic is simulated per packet or computed per
flow (`traffic`); the timeline's steps apply at their virtual times; the run ends with the same raw
data (`writer`) and reports as an emulated run. Same scenario and seed: byte-identical files.

Modules: `engine` (the run, `run_sim`), `agent`, `network`, `traffic`, `writer`.
"""

from emulation.backends.sim.engine import AUTO_PACKET_LIMIT, MODES, T0, Simulation, run_sim
from emulation.backends.sim.network import SimOptions

__all__ = ["AUTO_PACKET_LIMIT", "MODES", "T0", "SimOptions", "Simulation", "run_sim"]
