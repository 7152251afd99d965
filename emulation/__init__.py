"""The Patronus test-bed: scenarios run over Mininet namespaces (`emulation.runner`) or in a simpy
discrete-event simulation (`emulation.backends.sim`), with the same raw data, reports and verdicts."""
