"""`patronus-lab validate`: a summary per valid file, every error of an invalid one, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emulation.cli import app
from tests.emulation_unit.conftest import MINIMAL, SCENARIOS

pytestmark = pytest.mark.unit

runner = CliRunner()


def test_valid_files_exit_0_with_a_summary() -> None:
    result = runner.invoke(app, ["validate", *map(str, SCENARIOS)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(SCENARIOS)
    basic = next(line for line in lines if "failover-basic.yaml" in line)
    assert basic.endswith("failover-basic.yaml: valid — 2 sites, 2 flows, 2 timeline events, 7 expectations")


def test_an_invalid_file_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    doc = {**MINIMAL, "duration": "soon", "sites": {"hq": {"uplinks": {"isp1": {"delay": "fast"}}},
                                                     "br": {"uplinks": {"isp1": {"loss": "200%"}}}}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(MINIMAL, sort_keys=False))
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0] == f"{good}: valid — 2 sites, 0 flows, 0 timeline events, 0 expectations"
    assert lines[1] == f"{bad}: invalid — 3 errors"
    assert lines[2:] == [
        "  duration: expected a duration like \"20ms\", got 'soon'",
        "  sites.hq.uplinks.isp1.delay: expected a duration like \"20ms\", got 'fast'",
        "  sites.br.uplinks.isp1.loss: expected a ratio between 0% and 100%, got '200%'",
    ]


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read the scenario file" in result.output


def test_validate_needs_a_file_and_the_app_lists_its_commands() -> None:
    assert runner.invoke(app, ["validate"]).exit_code == 2
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "validate" in result.output


def test_a_sim_only_scenario_is_refused_on_mininet_with_the_reason(tmp_path: Path) -> None:
    doc = {**MINIMAL, "backends": ["sim"]}
    f = tmp_path / "sim-only.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = runner.invoke(app, ["run", str(f), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "runs only on sim" in result.output and "backends" in result.output
    assert not (tmp_path / "out").exists()                  # nothing built, nothing written


@pytest.mark.parametrize(("args", "message"), [
    (["--repeat", "0"], "--repeat: expected a number of runs from 1 to 1000, got 0"),
    (["--repeat", "1001"], "--repeat: expected a number of runs from 1 to 1000, got 1001"),
    (["--repeat", "2", "--keep"], "--keep leaves one run's network up; it does not combine with --repeat"),
])
def test_bad_repeats_exit_2_before_anything_runs(tmp_path: Path, args: list[str], message: str) -> None:
    scenario = next(p for p in SCENARIOS if p.name == "failover-basic.yaml")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(scenario), "--backend", "sim", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not out.exists()


# issue 17's reproducers, through `patronus-lab validate`: a reason and exit 2, never a traceback
@pytest.mark.parametrize("text", [
    "version: 1\x1b", b"\xff\xfeversion: 1\n", "[" * 496 + "]" * 496, "version: 1\nduration: 1" + "0" * 309 + "s\n",
    "version: 1\nduration: " + "9" * 4400 + "\n",
    "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    + "duration: *i\n",
])
def test_validate_names_the_problem_of_hostile_input(tmp_path: Path, text: str | bytes) -> None:
    f = tmp_path / "scenario.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2, result.output
    assert "invalid" in result.output or "cannot read" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
