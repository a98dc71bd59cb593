"""notebooks/rater_and_selection.ipynb runs top to bottom on a tiny project after a real `kedro run`, and is
committed without outputs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbclient
import nbformat
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "rater_and_selection.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert any("%load_ext kedro.ipython" in cell.source for cell in code)
    # Tables come from the Kedro catalog, not hand-written paths.
    assert not any("data/0" in cell.source for cell in code)


def _texts(cell) -> str:
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(str(output.get("data", {}).get("text/html", "")))
        parts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_notebook_executes_on_the_tiny_project(selection_project, tmp_path, monkeypatch):
    project = selection_project["project"]
    # The compare table as the compare pipeline writes it, so the last section has something to show.
    summary = pd.DataFrame({"arm": ["full", "random"], "fd_onsfw_mean": [150.0, 170.0], "fd_onsfw_ci95": [5.0, 6.0],
                            "n_seeds": [3, 3]})
    (project / "data/08_reporting").mkdir(parents=True, exist_ok=True)
    summary.to_csv(project / "data/08_reporting/compare_summary.csv", index=False)
    shutil.copy(NOTEBOOK, project / "notebooks" / NOTEBOOK.name)  # the current one, whatever build() copied
    monkeypatch.setenv("ALCHEMIST_MLFLOW_URI", selection_project["tracking_uri"])
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
    # The kernel is a subprocess: it sees this checkout's package even where it is not installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(project / "notebooks" / NOTEBOOK.name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(project / "notebooks")}}).execute()

    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    images = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # score histogram, contact sheets
    text = "\n".join(_texts(c) for c in cells)
    assert "24 of 48 pool samples selected" in text
    for kind in ("blank", "noise", "blur", "none", "kept_shift_gsample", "kept_topk", "Jaccard"):
        assert kind in text, kind
    assert "fd_onsfw_mean" in text and "random" in text
