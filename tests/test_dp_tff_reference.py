"""With z = 0 a DP-FedAvg round of the real server equals TFF's
``DifferentiallyPrivateFactory.gaussian_fixed`` on the same unweighted client deltas."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import _suspects
from server_support import SPECS, FakeClock, Harness, initial_weights, make_config

from fedkb.server.app import create_app
from fedkb.server.config import PrivacyConfig
from fedkb.wire import UploadMetadata, encode_upload

pytestmark = pytest.mark.slow


def test_zero_noise_dp_round_equals_tffs_gaussian_fixed(tmp_path):
    from fedkb.simulation.tff_dp_reference import run_isolated

    clip, goal = 1.5, 4
    rng = np.random.default_rng(3)
    # three reports of a goal of four (the deadline commits them): norms around the clip
    clients = [[(rng.normal(size=s) * scale).astype(np.float32) for _, s in SPECS]
               for scale in (0.05, 0.3, 1.0)]
    clock = FakeClock()
    cfg = make_config(tmp_path, pipeline=False, report_goal=goal, min_fraction=0.5,
                      overselect=1.0).replace(
        privacy=PrivacyConfig(mechanism="fedavg", noise_multiplier=0.0, clip=clip,
                              population=10))
    app = create_app(cfg, clock=clock)
    h = Harness(app, app.test_client(), clock)
    devs = [h.register() for _ in range(goal)]
    tasks = [d.task() for d in devs]
    for d, t, delta, n in zip(devs, tasks, clients, (1, 50, 7), strict=False):
        meta = UploadMetadata(t["task_id"], t["round_id"], n, 1.0)  # an old phone: no bit
        assert d.upload_raw(t["task_id"], encode_upload(meta, delta)).status_code == 200
    clock.advance(cfg.round.reporting_deadline_s + 1)
    assert h.status()["rounds_committed"] == 1
    ours = [w - w0 for w, w0 in zip(h.global_weights(), initial_weights(), strict=True)]

    before = set(_suspects())
    theirs = run_isolated({"shapes": [list(s) for _, s in SPECS],
                           "clients": [[a.ravel().tolist() for a in c] for c in clients],
                           "z": 0.0, "m": goal, "clip": clip}, tmp_path / "tff")
    assert not [c for p, c in _suspects().items() if p not in before and "worker_binary" in c]
    assert sum(float(np.linalg.norm(c)) ** 2 for c in clients[2]) ** 0.5 > clip  # one binds
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, np.asarray(b, np.float32).reshape(a.shape), atol=1e-6)
