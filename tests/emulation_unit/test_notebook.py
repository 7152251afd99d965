"""notebooks/failover-analysis.ipynb runs, top to bottom, against a fresh (synthetic) run directory and
draws its figures.

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
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from emulation.measure.synthetic import write_synthetic_run

pytestmark = pytest.mark.unit

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "failover-analysis.ipynb"


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
