"""The Colab demo runs top to bottom, headless, on the tiny config, and leaves the files it promises.

The notebook's `ppfer-jax run` finds the session's finished tiny run (copied into its workdir) and
skips training, which `test_pipeline.py` covers; everything after it (report, export, anonymise) runs.
"""

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "colab" / "ppfer_jax_demo.ipynb"
REPO = NOTEBOOK.parents[1]


def with_parameters(notebook, **values):
    """A copy of the notebook with a cell setting ``values`` after its ``parameters`` cell (papermill's way)."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", ()))
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cells = list(notebook.cells)
    cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nbformat.from_dict({**notebook, "cells": cells})


def test_demo_notebook_runs_top_to_bottom(tiny_run, tmp_path, monkeypatch):
    shutil.copytree(tiny_run, tmp_path / "run")
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4), CONFIG="configs/synthetic.py:tiny",
                               WORKDIR="run", BUNDLE="bundle", CHECKOUT=str(REPO))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ppfer_jax_xla_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    for name in ("run/report.md", "run/report.png", "bundle/manifest.json", "demo_clip.mp4",
                 "demo_clip_anonymised.mp4", "demo_clip_anonymised.json", "demo_comparison.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    outputs = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", ()))
    # The install cell found this checkout's package (its own message, with the installed version), not pip.
    assert f"ppfer-jax {importlib.metadata.version('ppfer-jax')} is already installed" in outputs
    assert "F_u on the anonymised video" in outputs
