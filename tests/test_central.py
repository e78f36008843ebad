"""Central training baseline: same model and metric, pooled training users."""

from __future__ import annotations

import json

import pytest

from fedkb.cli import main

pytestmark = pytest.mark.slow


def test_simulate_central_learns_and_reports_the_shared_schema(capsys, tiny_data):
    args = ["simulate", "--engine", "central", "--data", str(tiny_data), "--preset", "tiny",
            "--batch-size", "8", "--json"]
    assert main([*args, "--max-steps", "1", "--lr", "0.0001"]) == 0
    untrained = json.loads(capsys.readouterr().out)
    assert main([*args, "--epochs", "30"]) == 0
    trained = json.loads(capsys.readouterr().out)
    for rep in (untrained, trained):
        assert rep["engine"] == "central" and rep["heldout"]["users"] == 2
        assert set(rep["heldout"]) == {"users", "iv_targets", "top1_recall", "top3_recall",
                                       "loss"}
    assert trained["heldout"]["loss"] < untrained["heldout"]["loss"] - 0.2
    assert trained["heldout"]["top3_recall"] >= untrained["heldout"]["top3_recall"]
