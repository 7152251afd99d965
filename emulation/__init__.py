"""The Patronus test-bed: scenarios run over Mininet namespaces or in simulation (not built yet)."""
