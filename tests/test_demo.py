"""`fedkb demo` end to end on tiny settings: every stage runs and the report is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_demo_runs_every_stage_and_writes_its_report_with_dp(tmp_path):
    """One tiny demo (with DP-FedAvg, which rides on every stage): the six stages, the
    report and its curves, the bytes measured on the wire, and epsilon in the table. (Two
    runs, with and without DP, cost a minute more of the suite and covered nothing more:
    the plain path is the DP one without its stage, which tests/test_dp_fleet_e2e.py and
    the own-corpus demo in tests/test_own_corpus.py run.)"""
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fedkb", "demo", "--workdir", str(work), "--preset", "tiny",
         "--rounds", "2", "--devices", "40", "--clients-per-round", "3",
         "--central-epochs", "0.05", "--workers", "1", "--no-serve",
         "--dp", "fedavg", "--dp-noise", "1.0", "--dp-clip", "0.5"],
        capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in range(1, 7):
        assert f"[{stage}/6]" in proc.stdout
    report = json.loads((work / "report" / "report.json").read_text())
    assert {"federated", "central", "ngram", "fleet", "table"} <= set(report)
    assert len(report["federated"]["rounds"]) >= 2
    for engine in ("federated", "central", "ngram"):
        assert 0.0 <= report[engine]["heldout"]["top1_recall"] <= 1.0
    assert (work / "report" / "learning_curves.png").stat().st_size > 10_000
    assert "top-1 recall" in proc.stdout
    from fedkb.simulation.demo import DEMO_COMPRESSION

    comm = report["federated"]["communication"]  # measured on the wire, the demo's default
    assert comm["encoding"] == DEMO_COMPRESSION.label and comm["uplink_bytes_per_update"] > 0
    assert "bytes on the wire" in proc.stdout
    # what the server counted sending: weights every task, the artifact's files once a phone
    assert comm["server_sent_bytes_by_what"]["weights"] > 0
    assert comm["server_sent_bytes"] == sum(comm["server_sent_bytes_by_what"].values())
    # the held-out phones evaluated the final model (the learning curve's last point)
    assert max(e["model_version"] for e in report["evaluations"]) == \
        report["fleet"]["server"]["model_version"]

    p = report["privacy"]
    assert (p["mechanism"], p["noise_multiplier"], p["clip"], p["rounds"]) == (
        "fedavg", 1.0, 0.5, 2)
    assert p["epsilon"] > 0 and p["delta"] <= 1e-5
    assert report["federated"]["privacy"] == p
    assert f"epsilon {p['epsilon']:.3g} at delta" in report["table"]
    assert "privacy: DP-fedavg" in proc.stdout
