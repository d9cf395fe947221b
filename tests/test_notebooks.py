"""The notebooks in notebooks/: stored without outputs, and each runs top to bottom in a fresh kernel.

Each notebook is executed with nbclient in notebooks/ (as Jupyter would), in a kernel of this test's
Python (the project's environment), with its own small default settings; only `OUTPUT_DIR` is set,
in a cell added after the one tagged `parameters`, so that runs go to a temporary directory instead of
logs/notebooks/. A cell that raises fails the test with the cell and its traceback.
"""

import json
import sys
import time

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from helpers import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def test_the_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_new_module.ipynb", "03_reading_a_sweep.ipynb"]


def parameters_cell(nb) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged `parameters`"
    return tagged[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    """Outputs (plots, audio, logs) stay out of git: strip them before committing, e.g. with
    `jupyter nbconvert --clear-output --inplace notebooks/*.ipynb` or nbstripout."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts"
    assert not any(cell.get("attachments") for cell in nb.cells), f"{path.name}: a cell has attachments"
    first_code = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    assert parameters_cell(nb) == first_code, "the parameters cell must be the first code cell"
    assert "OUTPUT_DIR" in nb.cells[first_code].source


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    """A kernel spec running this Python, so the notebooks see the project's environment whatever
    other `python3` kernels are installed."""
    spec = tmp_path_factory.mktemp("kernels") / "audio-cls"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "audio-cls (test)",
                "language": "python",
            }
        )
    )
    return [str(spec.parent)]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, kernel_dirs):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(parameters_cell(nb) + 1, nbformat.v4.new_code_cell(f"OUTPUT_DIR = {str(tmp_path)!r}"))
    km = KernelManager(kernel_name="audio-cls", kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell raises
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")
    errors = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"
    ]
    assert not errors
    assert any(
        out.get("data", {}).get("image/png") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    ), f"{path.name} drew no plot"
