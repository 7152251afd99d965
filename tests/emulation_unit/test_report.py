"""emulation.report: summary.json's contract and determinism, the documents, junit.xml, exit codes."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from emulation.measure.synthetic import SyntheticSpec, write_synthetic_run
from emulation.report import SUMMARY_KEYS, report_command, write_reports

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n"
FAILOVER_KEYS = {"flow", "event", "at_s", "gap_ms", "lost_packets", "detect_ms", "ledger"}
LEDGER_KEYS = {"impairment_applied_ms", "first_probe_lost_ms", "path_declared_ms", "routing_decision_ms",
               "steering_changed_ms", "first_packet_new_path_ms", "sla_restored_ms", "sla_violated_ms",
               "from_path", "to_path", "declared"}
SLA_KEYS = {"flow", "class", "compliance_pct", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "jitter_ms",
            "loss_pct"}
FAILING = ({"type": "failover_gap", "flow": "cbr", "max": 0.05, "text": "cbr gap <= 50 ms"},
           {"type": "lost_packets", "flow": "cbr", "max": 100, "text": "cbr loses <= 100 packets"},
           {"type": "detect_time", "link": "hq.isp1", "max": 0.01, "text": "detected <= 10 ms & <now>"})


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("report") / "run"
    write_synthetic_run(d)
    write_reports(d)
    return d


def _summary(d: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((d / "summary.json").read_text())
    return doc


def test_every_report_file_is_written(reported: Path) -> None:
    for name in ("summary.json", "report.md", "report.html", "junit.xml"):
        assert (reported / name).stat().st_size > 0, name
    plots = sorted(p.name for p in (reported / "plots").iterdir())
    assert plots == ["failover-timeline.png", "flow-latency.png", "latency-cdf.png", "paths-br.png", "paths-hq.png"]
    for p in (reported / "plots").iterdir():
        assert p.read_bytes().startswith(PNG)


def test_summary_json_has_exactly_the_contract(reported: Path) -> None:
    doc = _summary(reported)
    assert set(doc) == set(SUMMARY_KEYS)
    assert (doc["scenario"], doc["backend"], doc["impairment_backend"], doc["seed"]) == (
        "synthetic-failover", "sim", "model", 7)
    assert doc["started_at"] == 1_699_999_998.0 and doc["duration_s"] == 60.0 and doc["passed"] is True
    assert all(set(e) == {"text", "passed", "value", "verdict", "reason"} for e in doc["expectations"])
    assert doc["verdict"] == "passed" and doc["platform"] is None
    assert all(e["verdict"] == "passed" and e["reason"] is None for e in doc["expectations"])
    assert [e["value"] for e in doc["expectations"]] == [0.066, 62, 0.982759, 2, 0.06, 0]
    assert all(set(f) == FAILOVER_KEYS and set(f["ledger"]) == LEDGER_KEYS for f in doc["failovers"])
    assert all(set(s) == SLA_KEYS for s in doc["sla"])
    cbr = next(f for f in doc["failovers"] if f["flow"] == "cbr")
    assert cbr == {
        "flow": "cbr", "event": "cut hq.isp1", "at_s": 20.0, "gap_ms": 66.0, "lost_packets": 62, "detect_ms": 60.0,
        "ledger": {"impairment_applied_ms": 0.0, "first_probe_lost_ms": 49.7, "path_declared_ms": 60.0,
                   "routing_decision_ms": 60.0, "steering_changed_ms": 62.0, "first_packet_new_path_ms": 62.7,
                   "sla_restored_ms": 1051.7, "sla_violated_ms": 10.7, "from_path": "br:isp1-isp1",
                   "to_path": "br:isp2-isp2", "declared": "down"}}
    assert doc["sla"][0] == {"flow": "cbr", "class": "voice", "compliance_pct": 98.276, "latency_p50_ms": 15.0,
                             "latency_p95_ms": 15.0, "latency_p99_ms": 15.0, "jitter_ms": 1.498,
                             "loss_pct": 0.107}
    assert [(p["site"], p["path"]) for p in doc["paths"]] == sorted((p["site"], p["path"]) for p in doc["paths"])
    hq1 = next(p for p in doc["paths"] if (p["site"], p["path"]) == ("hq", "br:isp1-isp1"))
    assert hq1["time_in_status_s"] == {"degraded": 0.0, "down": 20.4, "up": 39.6}
    assert hq1["links"] == ["br.isp1", "hq.isp1"] and hq1["status_changes"] == 2


def test_summary_json_is_byte_identical_for_equal_raw_data(reported: Path, tmp_path: Path) -> None:
    first = (reported / "summary.json").read_bytes()
    again = tmp_path / "again"
    shutil.copytree(reported / "raw", again / "raw")
    write_reports(again)
    write_reports(again)
    assert (again / "summary.json").read_bytes() == first
    other = tmp_path / "regenerated"           # the same synthetic run written afresh
    write_synthetic_run(other)
    write_reports(other)
    assert (other / "summary.json").read_bytes() == first
    text = first.decode()
    assert text.endswith("}\n") and "NaN" not in text
    assert list(json.loads(text)) == sorted(SUMMARY_KEYS)


def test_report_html_is_self_contained(reported: Path) -> None:
    page = (reported / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page, flags=re.IGNORECASE)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert "@import" not in page and "url(" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(list((reported / "plots").iterdir()))
    assert all(base64.b64decode(i).startswith(PNG) for i in images)
    for title in ("Expectations", "Failover timing", "SLA per flow", "Paths", "Timeline"):
        assert f"<h2>{title}" in page


def test_report_md_has_the_tables_and_plots(reported: Path) -> None:
    md = (reported / "report.md").read_text()
    assert md.startswith("# synthetic-failover: PASSED")
    assert "| cut hq.isp1 | 20.000 | cbr | br:isp1-isp1 → br:isp2-isp2 | down | 49.7 | 60.0 | 60.0 | 62.0 | 62.7 " \
           "| 1051.7 | 66.0 | 62 |" in md
    assert "| cbr | voice | p95 ≤ 50 ms, loss ≤ 1 %, jitter ≤ 5 ms | 98.28 % | 57/58 |" in md
    assert "![Paths at hq](plots/paths-hq.png)" in md


def test_junit_has_one_testcase_per_expectation(reported: Path) -> None:
    root = ET.parse(reported / "junit.xml").getroot()
    assert root.tag == "testsuites" and root.get("tests") == "6" and root.get("failures") == "0"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 6 and not suite.findall(".//failure")
    assert cases[0].get("name") == "01 cbr: failover gap <= 300 ms"


def test_failing_expectations_fail_in_junit_and_exit_1(tmp_path: Path) -> None:
    d = tmp_path / "run"
    write_synthetic_run(d, SyntheticSpec(expectations=FAILING))
    out, err = io.StringIO(), io.StringIO()
    assert report_command(d, out=out, err=err) == 1
    assert "FAIL  cbr gap <= 50 ms  (measured 66.0 ms)" in out.getvalue()
    assert "PASS  cbr loses <= 100 packets  (measured 62)" in out.getvalue()
    assert "FAILED (2 of 3 expectations)" in out.getvalue() and err.getvalue() == ""
    root = ET.parse(d / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "2" and suite.get("tests") == "3"
    failures = {c.get("name"): c.find("failure") for c in suite.findall("testcase")}
    gap = failures["01 cbr gap <= 50 ms"]
    assert gap is not None and gap.get("message") == "cbr gap <= 50 ms: measured 66.0 ms"
    assert gap.text is not None and "value: 0.066 (66.0 ms)" in gap.text
    assert failures["02 cbr loses <= 100 packets"] is None
    assert failures["03 detected <= 10 ms & <now>"] is not None     # escaped properly, still parses
    doc = _summary(d)
    assert doc["passed"] is False and [e["passed"] for e in doc["expectations"]] == [False, True, False]


def test_exit_0_when_everything_holds(tmp_path: Path) -> None:
    d = tmp_path / "run"
    write_synthetic_run(d)
    out = io.StringIO()
    assert report_command(d, out=out, err=io.StringIO()) == 0
    assert "synthetic-failover: passed" in out.getvalue()


def test_missing_column_exits_2_naming_file_and_column(reported: Path, tmp_path: Path) -> None:
    d = tmp_path / "bad"
    shutil.copytree(reported / "raw", d / "raw")
    metrics = d / "raw" / "path_metrics.csv"
    lines = metrics.read_text().splitlines()
    k = lines[0].split(",").index("score")
    metrics.write_text("\n".join(",".join(c for i, c in enumerate(x.split(",")) if i != k) for x in lines) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert report_command(d, out=out, err=err) == 2
    assert "raw/path_metrics.csv: missing column 'score'" in err.getvalue()
    assert not (d / "summary.json").exists() and out.getvalue() == ""


def test_missing_file_exits_2_naming_the_file(reported: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "bad"
    shutil.copytree(reported / "raw", d / "raw")
    (d / "raw" / "events.jsonl").unlink()
    assert report_command(d) == 2
    assert "raw/events.jsonl: missing file" in capsys.readouterr().err
    assert report_command(tmp_path / "nowhere") == 2
    assert "nowhere: not a directory" in capsys.readouterr().err


def test_stale_plots_of_ours_are_replaced(reported: Path, tmp_path: Path) -> None:
    d = tmp_path / "run"
    shutil.copytree(reported / "raw", d / "raw")
    (d / "plots").mkdir()
    (d / "plots" / "paths-gone.png").write_bytes(PNG)
    (d / "plots" / "mine.png").write_bytes(PNG)
    write_reports(d)
    names = {p.name for p in (d / "plots").iterdir()}
    assert "paths-gone.png" not in names and "mine.png" in names
