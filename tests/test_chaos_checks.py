"""The chaos run's proofs can fail: replaying the committed rounds from a state directory
flags a round whose mean update is over the bound or whose checkpoint does not follow
from its parent, a version whose file changed is lost, and an accepted bad update counts
as folded."""

from __future__ import annotations

import hashlib

import numpy as np
from server_support import deltas, harness

from fedkb.server.checkpoints import decode_checkpoint, encode_checkpoint
from fedkb.server.config import StrategyConfig
from fedkb.simulation import chaos_checks as checks

FEDAVGM = StrategyConfig(name="fedavgm", server_lr=0.7, clip_norm=1.0)


def _two_commits(tmp_path):
    h = harness(tmp_path, strategy=FEDAVGM, report_goal=2)
    for value in (0.05, 0.3):  # norms ~0.3 and ~1.8 (clipped to 1) per update
        devs = [h.register() for _ in range(2)]
        tasks = [d.task() for d in devs]
        for d, t in zip(devs, tasks, strict=True):
            assert d.upload(t, deltas(value)).status_code == 200
    assert h.status()["model_version"] == 2
    return h, tmp_path / "state"


def test_replay_recovers_each_rounds_mean_update_and_checks_it(tmp_path):
    _, state = _two_commits(tmp_path)
    rep = checks.replay_commits(state, FEDAVGM, bound=1.0)
    assert rep["replayable"] and rep["versions"] == 2 and rep["bad"] == []
    norm = float(np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in deltas(0.05))))
    assert abs(rep["rows"][0]["mean_update_norm"] - norm) < 1e-3  # the fold, recovered
    assert abs(rep["rows"][1]["mean_update_norm"] - 1.0) < 1e-3  # clipped to the bound
    assert checks.replay_commits(state, FEDAVGM, bound=0.5)["bad"] == [2]


def test_a_checkpoint_that_does_not_follow_from_its_parent_is_flagged(tmp_path):
    h, state = _two_commits(tmp_path)
    before = checks.committed_versions(state)
    path = state / "checkpoints" / "v000001.safetensors"
    specs = h.state.machine.artifact.specs
    w, m = decode_checkpoint(specs, path.read_bytes())
    path.write_bytes(encode_checkpoint(specs, 1, [a + 0.5 for a in w], m))
    assert checks.versions_lost(before, state) == [1]  # its file no longer hashes
    assert 1 in checks.replay_commits(state, FEDAVGM, bound=1.0)["bad"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() != before[1]


def test_an_accepted_bad_update_counts_as_folded():
    faults = {"fault_nan": 2, "fault_nan:non_finite": 1, "fault_nan:accepted": 1,
              "fault_boost": 3, "fault_boost:accepted": 3}
    acc = checks.fault_accounting(faults, [{"rejected": {"non_finite": 1}},
                                           {"rejected": {"non_finite": 2, "late": 1}}])
    assert acc["bad_updates_folded"] == 1  # boost is accepted by design, NaN never
    assert acc["kinds"]["nan"] == {"injected": 2, "answers": {"non_finite": 1, "accepted": 1},
                                   "server_rejected": 3, "refused_as_expected": 1}


def test_orphans_finds_a_left_child_and_not_the_caller(tmp_path):
    import os
    import subprocess
    import sys

    assert checks.orphans(os.getpid(), tmp_path) == []
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                              str(tmp_path)])
    try:
        (left,) = checks.orphans(os.getpid(), tmp_path)
        assert left.startswith(f"{child.pid}: ")
    finally:
        child.kill()
        child.wait()
    assert checks.orphans(os.getpid(), tmp_path) == []
