"""The Mininet backend: a scenario run by real `patronus agent` processes in network namespaces, over
impaired links, in wall-clock time.

    code = Runner(load("scenarios/failover-basic.yaml"), Path("reports/runs/fb")).execute()

Modules: `runner` (the run: `Runner.execute`, `RunError`), `net` (the namespaces, links and addresses;
`clean` for a crashed run's leftovers), `agents` (site files, start, stop, restart, the waits before the
clock), `traffic` (receivers, taps, senders), `sampler` (the agents' paths while the timeline plays),
`raw` (the raw data), `procs` (processes by pid, scheduling classes). `patronus-lab` reaches it through
`emulation.backends` (the `mininet` entry of the backend registry).
"""
