"""notebooks/failover-analysis.ipynb runs, top to bottom, against a fresh (synthetic) run directory and
draws its figures; notebooks/timer-tuning.ipynb runs its sweep in the simulator, writes one results row
per grid point, and recommends the point the table says.

The kernel is this interpreter: a kernel spec named python3 whose argv is `sys.executable` is put first
on JUPYTER_PATH, so a python3 kernel spec elsewhere on the machine (another Python, without our
packages) cannot be picked instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbclient
import nbformat
import pandas as pd
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from emulation.measure.synthetic import write_synthetic_run

pytestmark = pytest.mark.unit

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "failover-analysis.ipynb"
TIMER_NOTEBOOK = NOTEBOOK.parent / "timer-tuning.ipynb"


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Patronus venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")


def test_the_notebook_runs_and_draws(tmp_path: Path, kernel_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable

    run_dir = tmp_path / "run"
    write_synthetic_run(run_dir)
    monkeypatch.setenv("PATRONUS_RUN_DIR", str(run_dir))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    client = nbclient.NotebookClient(nb, timeout=90, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()      # raises CellExecutionError, with the cell and traceback, if a cell fails

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"run directory: {run_dir}" in text and "synthetic-failover" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # the ledger, one packet timeline (cbr's failover), the CDFs, one per site's paths
    assert len(images) >= 5
    tables = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert "cut hq.isp1" in tables and "br:isp2-isp2" in tables


def _execute(path: Path, timeout: int) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


@pytest.mark.sim
@pytest.mark.timeout(400)
def test_the_timer_tuning_notebook_sweeps_plots_and_picks_from_its_table(
        tmp_path: Path, kernel_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sweep"
    monkeypatch.setenv("PATRONUS_SWEEP_OUT", str(out))
    monkeypatch.setenv("PATRONUS_SWEEP_WORKERS", "2")

    nb = _execute(TIMER_NOTEBOOK, timeout=300)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "PATRONUS_SWEEP_OUT" in params[0].source

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"sweep output: {out}" in text

    # one row per grid point (interval × multiplier), every one of them ran
    table = pd.read_parquet(out / "results.parquet")
    grid = {(i, m) for i in (20.0, 50.0, 100.0) for m in (3, 5)}
    assert len(table) == len(grid)
    assert set(zip(table["interval_ms"], table["multiplier"].astype(int), strict=True)) == grid
    assert (table["error"] == "").all() and table["detect_mean_ms"].notna().all()
    # detection time grows with the interval, for each multiplier, and with the multiplier at each interval
    for mult, g in table.groupby("multiplier"):
        detect = g.sort_values("interval_ms")["detect_mean_ms"].tolist()
        assert detect == sorted(detect) and len(set(detect)) == len(detect), (mult, detect)
    for interval, g in table.groupby("interval_ms"):
        detect = g.sort_values("multiplier")["detect_mean_ms"].tolist()
        assert detect[0] < detect[-1], (interval, detect)
    # overhead falls with the interval
    overhead = table.groupby("interval_ms")["probe_overhead_bps"].mean().sort_index().tolist()
    assert overhead == sorted(overhead, reverse=True) and overhead[0] > overhead[-1]

    # the recommendation is the table's fastest clean point, as printed
    clean = table[(table["false_failovers"] == 0) & (table["false_path_downs"] == 0)
                  & (table["missed_detections"] == 0)]
    assert not clean.empty
    assert (table["false_failovers"] + table["false_path_downs"]).max() > 0    # the loss provokes some
    best = clean.sort_values(["detect_mean_ms", "detect_max_ms", "probe_overhead_bps"]).iloc[0]
    assert (f"recommended: interval {best['interval_ms']:g} ms × multiplier {int(best['multiplier'])} "
            f"(detection {best['detect_mean_ms']:.1f} ms mean") in text

    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2          # the three trade-off panels, detection against overhead
