"""The relay's control protocol (no sockets needed) and its ownership registry and cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulation.links import relay as relay_mod
from emulation.links.impairment import Impairment, ImpairmentModel
from emulation.links.relay import Relay, RelayLink, cleanup, running
from patronus.core.errors import ConfigError

pytestmark = pytest.mark.unit


def make_relay() -> Relay:
    return Relay("x", "y", (ImpairmentModel(Impairment(), "s:xy"), ImpairmentModel(Impairment(), "s:yx")))


def test_set_applies_to_the_named_direction_and_says_when() -> None:
    r = make_relay()
    before = time.time_ns()
    reply = r.handle(json.dumps({"id": 7, "set": {"dir": "yx", "impairment": {"delay_s": 0.03}}}).encode())
    assert reply["ok"] and reply["id"] == 7 and before <= reply["applied_at"] <= time.time_ns()
    assert r.models[1].impairment == Impairment(delay_s=0.03)
    assert r.models[0].impairment == Impairment()
    r.handle(b'{"set": {"dir": "both", "impairment": {"cut": true}}}')
    assert r.models[0].impairment.cut and r.models[1].impairment.cut


def test_bad_requests_are_refused_whole() -> None:
    r = make_relay()
    reply = r.handle(b'{"set": {"dir": "xy", "impairment": {"delay_s": -1, "loss": 2}}}')
    assert not reply["ok"]
    assert {e[0] for e in reply["errors"]} == {"set.impairment.delay_s", "set.impairment.loss"}
    assert r.models[0].impairment == Impairment()            # nothing half-applied
    assert not r.handle(b'{"set": {"dir": "up", "impairment": {}}}')["ok"]
    assert not r.handle(b"not json")["ok"]
    assert "unknown request" in r.handle(b'{"frobnicate": 1}')["error"]


def test_counters_and_stop() -> None:
    r = make_relay()
    r.models[0].on_packet(0.0, 100)
    c = r.handle(b'{"counters": true}')
    assert c["ok"] and c["counters"]["xy"]["packets_in"] == 1 and c["counters"]["yx"]["packets_in"] == 0
    assert c["counters"]["xy"]["impairment"] == Impairment().to_dict()
    assert not r.stopping
    assert r.handle(b'{"stop": true}')["ok"] and r.stopping


def test_relay_link_argv_and_validation() -> None:
    link = RelayLink("ptrl-ns", "x", "y", 5, Impairment(delay_s=0.01), tag="run-1")
    argv = link.argv()
    assert argv[:4] == ["ip", "netns", "exec", "ptrl-ns"]
    assert "--tag=run-1" in argv and "--seed=5" in argv
    assert json.loads(next(a for a in argv if a.startswith("--xy="))[5:])["delay_s"] == 0.01
    with pytest.raises(ConfigError, match="tag"):
        RelayLink(None, "x", "y", tag="bad tag!")
    with pytest.raises(ConfigError, match="direction"):
        link.set("sideways", Impairment())


# -- registry and cleanup -------------------------------------------------------------------------------

@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATRONUS_RELAY_DIR", str(tmp_path))
    return tmp_path


def fake_relay(tag: str) -> subprocess.Popen[bytes]:
    """A process whose command line looks like a relay of `tag` (it only sleeps)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "emulation.links.relay",
                             f"--tag={tag}"])


def record(registry: Path, proc: subprocess.Popen[bytes], tag: str, start_time: int | None = None) -> Path:
    rec = {"pid": proc.pid, "tag": tag, "ns": None, "x": "x", "y": "y",
           "start_time": relay_mod._start_time(proc.pid) if start_time is None else start_time}
    path = registry / f"{tag}.{proc.pid}.json"
    path.write_text(json.dumps(rec))
    return path


def test_cleanup_kills_only_the_runs_relays(registry: Path) -> None:
    mine, other, reused = fake_relay("run-a"), fake_relay("run-b"), fake_relay("run-a")
    try:
        record(registry, mine, "run-a")
        record(registry, other, "run-b")
        stale = record(registry, reused, "run-a", start_time=1)     # pid reused by another process
        assert [r["pid"] for r in running("run-a")] == [mine.pid]
        done = cleanup("run-a")
        assert done == [f"relay pid {mine.pid} (None: x<->y)"]
        assert mine.wait(5) is not None
        assert other.poll() is None and reused.poll() is None      # not ours to kill
        assert not stale.exists() and (registry / f"run-b.{other.pid}.json").exists()
    finally:
        for p in (mine, other, reused):
            if p.poll() is None:
                p.kill()
                p.wait(5)


def test_cleanup_refuses_a_bad_tag(registry: Path) -> None:
    with pytest.raises(ConfigError):
        cleanup("*")
    assert os.listdir(registry) == []


def test_clock_offset_converts_realtime_to_monotonic() -> None:
    off = relay_mod.realtime_minus_monotonic()
    assert abs((time.time() - time.monotonic()) - off) < 0.002
