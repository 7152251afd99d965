"""Scenario files: the versioned schema (version 1), the loader and validation.

    from emulation.scenario import load
    scenario = load("scenarios/failover-basic.yaml")     # or parse(text); ConfigError lists every error
    scenario.flows[0].rate_pps, scenario.site("hq").uplink("isp1").delay_s
    schedule(scenario)                                    # the timeline as absolute link / agent states
    scenario.to_dict()                                    # normalized document, units as strings
    with_overrides(scenario, {"sites.hq.agent.monitor": "fast"})

The format is documented in `scenarios/README.md`. Values are immutable and in SI base units
(seconds, bit/s, ratios in [0, 1], packets, bytes).
"""

from emulation.scenario.loader import load, parse, read_yaml, set_dotted, with_overrides
from emulation.scenario.model import (
    ACTIONS,
    EXPECTATIONS,
    MAX_UPLINKS,
    SCHEMA_VERSION,
    AgentEvent,
    AgentSettings,
    AgentStart,
    AgentStop,
    Clear,
    Core,
    Cut,
    DetectTime,
    Endpoint,
    Expectation,
    FailoverGap,
    Flap,
    Flow,
    FlowStays,
    FlowType,
    GilbertElliott,
    Impair,
    Impairment,
    JitterDistribution,
    LinkEvent,
    LinkRef,
    LinkSettings,
    LostPackets,
    PathChanges,
    Ramp,
    Restore,
    Scenario,
    Site,
    SlaCompliance,
    Steering,
    Summary,
    TimelineEvent,
    Topology,
    Uplink,
)
from emulation.scenario.schema import from_dict
from emulation.scenario.timeline import AgentStep, LinkStep, Step, schedule
from patronus.core.errors import ConfigError

__all__ = [
    "ACTIONS",
    "EXPECTATIONS",
    "MAX_UPLINKS",
    "SCHEMA_VERSION",
    "AgentEvent",
    "AgentSettings",
    "AgentStart",
    "AgentStep",
    "AgentStop",
    "Clear",
    "ConfigError",
    "Core",
    "Cut",
    "DetectTime",
    "Endpoint",
    "Expectation",
    "FailoverGap",
    "Flap",
    "Flow",
    "FlowStays",
    "FlowType",
    "GilbertElliott",
    "Impair",
    "Impairment",
    "JitterDistribution",
    "LinkEvent",
    "LinkRef",
    "LinkSettings",
    "LinkStep",
    "LostPackets",
    "PathChanges",
    "Ramp",
    "Restore",
    "Scenario",
    "Site",
    "SlaCompliance",
    "Steering",
    "Step",
    "Summary",
    "TimelineEvent",
    "Topology",
    "Uplink",
    "from_dict",
    "load",
    "parse",
    "read_yaml",
    "schedule",
    "set_dotted",
    "with_overrides",
]
