"""Suite-wide settings.

Hypothesis: under CI (`CI` set, as `.ci/run` runs) examples are derandomized, so a green CI stays
green for the same code; on a developer's machine they are random, so new inputs keep being tried.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
