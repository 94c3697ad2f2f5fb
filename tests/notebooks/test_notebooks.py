"""The walkthrough notebooks run top to bottom against the shared test run (nbclient), so they cannot rot."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_is_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_executes_without_error(name, shared_run, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    run = shutil.copytree(shared_run, tmp_path / "run", ignore=shutil.ignore_patterns("analyses", "report.html"))
    monkeypatch.setenv("RLHF_LENS_RUN", str(run))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("text/html" in o.get("data", {}) for o in outputs), "no Result displayed itself"
    assert (Path(run) / "report.html").is_file()


def test_there_is_a_notebook():
    assert (NOTEBOOKS / "01_quickstart.ipynb").is_file()
