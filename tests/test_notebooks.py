"""The notebooks run green, on small settings (REPA_NOTEBOOK_SMALL=1: a seconds-long training run
and random-weight encoders), through the public API only."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("REPA_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the kernel's temporary folders go with this test's
    # the kernel imports this checkout's train/probe (not another install of them, e.g. a worktree's main checkout)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(path.parent.parent), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()


def test_notebooks_use_public_api_only():
    for path in NOTEBOOKS:
        src = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "import _" not in src and "._" not in src.replace("__", ""), path.name
