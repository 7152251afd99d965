"""The demo drives monitor, router and SLA together in virtual time: check what it shows is true."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from patronus import demo
from patronus.cli import app
from patronus.core.events import Failback, FailoverReason, FailoverTriggered, PathStatusChanged
from patronus.core.model import PathStatus
from patronus.core.monitor import PROFILES, MonitorProfile

pytestmark = pytest.mark.sim


def test_hard_cut_is_detected_within_the_fast_profile_detection_time() -> None:
    r = demo.run(seed=1)
    assert r.detection_s is not None
    prof = PROFILES["fast"]
    # interval × multiplier, plus one interval of phase and the 12 ms RTT of isp1
    assert prof.detection_time_s * 0.66 <= r.detection_s <= prof.detection_time_s + prof.interval_s + 0.012 + 1e-9
    assert r.failover_s == pytest.approx(r.detection_s)   # flows move in the same instant


def test_brownout_moves_latency_sensitive_flows_but_not_bulk() -> None:
    r = demo.run(seed=1)
    brown = [e for e in r.events if isinstance(e, FailoverTriggered) and 4.0 <= e.at < demo.CUT_AT]
    policies = {e.policy for e in brown}
    assert "VoIP/Video" in policies
    assert "Bulk Transfers" not in policies
    assert all(e.reason in (FailoverReason.BELOW_THRESHOLD, FailoverReason.SLA_VIOLATION) for e in brown)
    # the brownout never made isp1 look dead: a slow path is not a cut path
    downs = [e for e in r.events if isinstance(e, PathStatusChanged) and e.new is PathStatus.DOWN
             and e.at < demo.CUT_AT and e.at > 1.0]
    assert downs == []


def test_failback_waits_for_the_hold_time() -> None:
    r = demo.run(seed=1)
    ups = [e.at for e in r.events if isinstance(e, PathStatusChanged) and e.path_id == demo.ISP1
           and e.new is PathStatus.UP and e.at > demo.RESTORE_AT]
    backs = [e.at for e in r.events if isinstance(e, Failback) and e.at > demo.RESTORE_AT]
    assert ups and backs
    assert min(backs) - ups[0] >= 10.0 - 1e-9
    assert set(r.final_paths.values()) == {"isp1"}


def test_same_seed_same_events_and_other_seed_still_passes() -> None:
    a = [e.as_dict() for e in demo.run(seed=3).events]
    b = [e.as_dict() for e in demo.run(seed=3).events]
    assert a == b
    assert demo.run(seed=4).detection_s is not None


def test_default_profile_detects_in_about_three_seconds() -> None:
    r = demo.run(seed=1, profile=PROFILES["default"])
    assert r.detection_s is not None and 2.0 <= r.detection_s <= 4.1


def test_custom_profile() -> None:
    r = demo.run(seed=1, profile=MonitorProfile.from_config({"interval": "50ms", "multiplier": 4}))
    assert r.detection_s is not None and 0.15 <= r.detection_s <= 0.3


def test_cli_demo_prints_status_scores_and_failover() -> None:
    res = CliRunner().invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "isp1: up → down" in out
    assert "failover" in out and "failback" in out
    assert "score" in out
    assert "detected Down after" in out


def test_cli_demo_rejects_a_bad_profile() -> None:
    res = CliRunner().invoke(app, ["demo", "--profile", "5ms"])
    assert res.exit_code == 2
    assert "monitor.interval" in res.output
