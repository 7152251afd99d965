"""The Patronus test-bed: scenarios run over Mininet namespaces (`emulation.backends.mininet`) or in a simpy
discrete-event simulation (`emulation.backends.sim`), both behind one interface (`emulation.backends`),
with the same raw data, reports and verdicts."""
