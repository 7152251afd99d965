"""A scenario link's settings as the impairment every link backend applies (kept out of
`impairment.py`, which the relay processes import: they need no scenario model)."""

from __future__ import annotations

from emulation.links.impairment import GilbertElliott, Impairment
from emulation.scenario.model import LinkSettings


def impairment_of(s: LinkSettings) -> Impairment:
    """One direction of a scenario link in the state `s`: what a relay, netem or the simulator's model applies."""
    ge = s.loss_model
    return Impairment(delay_s=s.delay_s, jitter_s=s.jitter_s, jitter_distribution=s.jitter_distribution.value,
                      loss=s.loss_ratio, loss_model=GilbertElliott(ge.p, ge.r, ge.h, ge.k) if ge is not None else None,
                      rate_bps=s.rate_bps, queue_limit=s.queue_limit_packets, duplicate=s.duplicate_ratio,
                      reorder=s.reorder_ratio, corrupt=s.corrupt_ratio, cut=not s.up)
