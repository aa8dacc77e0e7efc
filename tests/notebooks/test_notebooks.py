"""Every notebook runs top to bottom on small settings (RFM_NOTEBOOK_SMALL=1), with a real kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RFM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("RFM_NOTEBOOK_WORK", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_there_are_six_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_dataset", "03_finetune_small_data", "04_export_edge",
                                           "05_serve_fleet", "06_your_robot"]
