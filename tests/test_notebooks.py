"""Notebooks: committed without outputs, and executed headless by papermill as the pipeline does."""
from __future__ import annotations

import json
import re

import nbformat
import pytest

from corun.reproduce import ROOT, run_notebook

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_with_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


def code_lines(nb) -> list[str]:
    """Non-blank, non-comment lines of the code cells."""
    return [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin(path):
    """Parameters, calls, plots and prose (issue 18.6): helpers live in the library, where they are tested."""
    lines = code_lines(nbformat.read(path, as_version=4))
    assert len(lines) <= 60, f"{path.name}: {len(lines)} code lines"
    assert not [line for line in lines if re.match(r"\s*(async\s+)?(def|class)\s", line)]


@pytest.mark.slow
def test_notebook_01_smoke_runs_headless(tmp_path):
    run_notebook("01_data_prep.ipynb", tmp_path / "nb",
                 {"profile": "smoke", "mini_dir": str(tmp_path / "mini"),
                  "results_dir": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figures"),
                  "n_draws": 300})
    manifest = json.loads((tmp_path / "results" / "data_manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["datasets"]
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"01_data_grid.png",
                                                                   "01_synthesis_hist.png"}
    executed = nbformat.read(tmp_path / "nb" / "01_data_prep.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")


@pytest.mark.slow
def test_failing_notebook_names_itself_and_the_cell(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise ValueError('boom')")]
    src = tmp_path / "99_broken.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(RuntimeError, match=r"notebook 99_broken.ipynb failed at cell In \[3\]: ValueError: boom"):
        run_notebook(src, tmp_path / "out", {"x": 2})
    assert (tmp_path / "out" / "99_broken.ipynb").exists()
