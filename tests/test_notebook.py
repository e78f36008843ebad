"""The walkthrough notebook runs top to bottom (tiny settings) and leaves nothing running."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("FEDKB_WALKTHROUGH_FAST", "1")
    monkeypatch.setenv("FEDKB_WALKTHROUGH_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "rounds in" in outputs and "after:" in outputs
    assert "DP-FTRL, z = 1" in outputs and "the server's ε after 2 DP rounds" in outputs
    assert os.environ["FEDKB_WALKTHROUGH_FAST"] == "1"
