"""Executes notebooks/estimator_behavior.ipynb in its small setting (HQ_NOTEBOOK_SMALL=1) on a copy.

The committed notebook is only read: the executed copy goes to tmp_path. The kernel is the `python3` spec
that jupyter_client resolves to the interpreter running the tests (the venv's); when no such spec is
installed, one is written under tmp_path and found through JUPYTER_PATH, so nothing is registered globally.
"""

import json

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO / "notebooks" / "estimator_behavior.ipynb"


def _image_count(nb) -> int:
  return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
             for out in cell.get("outputs", []))


def _ensure_python3_kernel(tmp_path, monkeypatch) -> None:
  from jupyter_client import kernelspec
  if "python3" in kernelspec.find_kernel_specs():
    return
  from ipykernel import kernelspec as ipykernel_kernelspec
  prefix = tmp_path / "jupyter"
  ipykernel_kernelspec.install(prefix=str(prefix), kernel_name="python3")
  monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))


def test_committed_notebook_carries_its_figures():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert _image_count(nb) >= 5, "commit the notebook with the outputs of a full run"
  assert not any(out.get("output_type") == "error" for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.get("outputs", []))


@pytest.mark.slow
def test_notebook_executes_in_small_setting(tmp_path, monkeypatch):
  _ensure_python3_kernel(tmp_path, monkeypatch)
  monkeypatch.setenv("HQ_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", str(REPO))
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's training workdirs
  before = NOTEBOOK.read_bytes()
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                   resources={"metadata": {"path": str(REPO / "notebooks")}})
  try:
    client.execute()
  finally:
    nbformat.write(nb, tmp_path / "executed.ipynb")
  assert NOTEBOOK.read_bytes() == before

  assert _image_count(nb) >= 5
  text = json.dumps([cell.get("outputs", []) for cell in nb.cells if cell.cell_type == "code"])
  assert "SMALL=True" in text, "the notebook did not pick up HQ_NOTEBOOK_SMALL=1"
  assert "cos vs FP" in text and "Recall@20" in text  # the mismatch table and the recall table
