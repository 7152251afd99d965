"""Patronus: an SD-WAN stack and its test-bed.

`patronus.core` holds the sans-IO decision logic (path quality, routing, failover, SLA); it never
touches a socket, a clock or a subprocess. `patronus.agent` drives it on real hosts.
"""

__version__ = "0.1.0"
