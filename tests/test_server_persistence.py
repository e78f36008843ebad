"""State on disk: restart and resume, abandoned rounds, damaged checkpoints, downloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from server_support import FakeClock, deltas, harness, initial_weights, make_config, write_artifact

from fedkb.artifact import Artifact, ArtifactError
from fedkb.codec import decode_arrays
from fedkb.errors import UserError
from fedkb.server.app import create_app
from fedkb.server.config import StrategyConfig


def run_round(h, value: float = 1.0) -> None:
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    for d, t in zip(devs[:2], tasks[:2], strict=True):
        assert d.upload(t, [np.full_like(w, value) for w in initial_weights()]).status_code == 200


def restart(tmp_path, h, **kw):
    """A new server on the same state dir (the old one vanishes as after kill -9)."""
    return harness(tmp_path, clock=FakeClock(h.clock.t + 5), **kw)


def test_restart_serves_latest_commit_and_abandons_the_open_round(tmp_path):
    h = harness(tmp_path, pipeline=False)
    run_round(h)
    d = h.register()
    t = d.task()  # round 2 open, task assigned
    w1 = h.global_weights()
    h2 = restart(tmp_path, h, pipeline=False)
    s = h2.status()
    assert (s["model_version"], s["rounds_committed"], s["rounds_abandoned"]) == (1, 1, 1)
    r2 = h2.client.get("/v1/rounds/2").get_json()
    assert (r2["state"], r2["reason"]) == ("abandoned", "server_restart")
    assert all(np.array_equal(a, b) for a, b in zip(w1, h2.global_weights(), strict=True))
    d2 = type(d)(h2, d.id, d.token)  # the phone keeps its token across the restart
    r = d2.upload(t, [np.ones_like(w) for w in initial_weights()])
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "round_abandoned"
    assert s["current_round"]["id"] == 3  # numbering continues
    run_round(h2)
    assert h2.status()["model_version"] == 2


def test_optimizer_state_survives_restart(tmp_path):
    cfg = StrategyConfig(name="fedavgm", momentum=0.5)
    a = harness(tmp_path / "a", strategy=cfg, pipeline=False)
    run_round(a)
    run_round(a)
    b = harness(tmp_path / "b", strategy=cfg, pipeline=False)
    run_round(b)
    b = restart(tmp_path / "b", b, strategy=cfg, pipeline=False)
    run_round(b)
    for x, y in zip(a.global_weights(), b.global_weights(), strict=True):
        np.testing.assert_array_equal(x, y)  # 1 + 1.5 = 2.5 either way


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
    h = harness(tmp_path, pipeline=False)
    run_round(h)
    run_round(h)
    path = tmp_path / "state" / "checkpoints" / "v000002.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    h2 = restart(tmp_path, h, pipeline=False)
    s = h2.status()
    assert (s["model_version"], s["damaged_versions"]) == (1, [2])
    np.testing.assert_allclose(h2.global_weights()[0], initial_weights()[0] + 1.0)
    assert h2.client.get("/v1/models/2/weights").status_code == 404
    run_round(h2)
    assert h2.status()["model_version"] == 3  # versions never reused


def test_checkpoint_round_trips_through_safetensors_with_its_digest(tmp_path):
    """A checkpoint is plain safetensors: the weights by name, the optimizer state as
    state.i, string metadata; its SHA-256 is the one in its models row."""
    from safetensors.numpy import load_file

    from fedkb.server.checkpoints import decode_checkpoint, encode_checkpoint, sha256
    from fedkb.tensorfile import read_metadata

    h = harness(tmp_path, strategy=StrategyConfig(name="fedavgm", momentum=0.5),
                pipeline=False)
    run_round(h)
    path = tmp_path / "state" / "checkpoints" / "v000001.safetensors"
    row = h.state.db.one("SELECT file, sha256 FROM models WHERE version = 1")
    assert row["file"] == path.name and row["sha256"] == sha256(path.read_bytes())
    specs = h.state.machine.artifact.specs
    tensors = load_file(path)
    assert set(tensors) == {s.name for s in specs} | {"state.0", "state.1", "state.2"}
    for s, w in zip(specs, h.global_weights(), strict=True):
        np.testing.assert_array_equal(tensors[s.name], w)
    meta = read_metadata(path.read_bytes())
    assert (meta["format"], meta["model_version"], meta["state_tensors"]) == (
        "fedkb-checkpoint/1", "1", "3")
    assert json.loads(meta["weights"]) == [s.name for s in specs]
    weights, state = decode_checkpoint(specs, path.read_bytes())
    assert len(state) == 3 and np.array_equal(state[0], tensors["state.0"])
    again = encode_checkpoint(specs, 1, weights, state)
    assert sha256(again) == row["sha256"]  # deterministic bytes: same digest


def test_a_corrupted_checkpoint_is_skipped_and_latest_follows(tmp_path):
    h = harness(tmp_path, pipeline=False)
    run_round(h)
    run_round(h)
    ckpt = tmp_path / "state" / "checkpoints"
    assert (ckpt / "latest.safetensors").resolve() == (ckpt / "v000002.safetensors")
    data = bytearray((ckpt / "v000002.safetensors").read_bytes())
    data[-1] ^= 0x01  # a bit flip in the last weight: still decodes, fails its digest
    (ckpt / "v000002.safetensors").write_bytes(bytes(data))
    h2 = restart(tmp_path, h, pipeline=False)
    assert (h2.status()["model_version"], h2.status()["damaged_versions"]) == (1, [2])
    assert (ckpt / "latest.safetensors").resolve() == (ckpt / "v000001.safetensors")


def test_load_the_global_model_in_three_lines(tmp_path):
    """The README's snippet, on a real server state directory."""
    h = harness(tmp_path, pipeline=False)
    run_round(h, value=0.25)
    run_round(h, value=0.5)
    state_dir = tmp_path / "state"

    from safetensors.numpy import load_file
    tensors = load_file(state_dir / "checkpoints" / "latest.safetensors")
    weights = {k: v for k, v in tensors.items() if not k.startswith("state.")}

    assert h.status()["model_version"] == 2
    names = h.state.machine.artifact.weight_names
    assert list(weights) == sorted(names)
    for name, w in zip(names, h.global_weights(), strict=True):
        np.testing.assert_array_equal(weights[name], w)
    np.testing.assert_allclose(weights[names[0]], initial_weights()[0] + 0.75)


def test_latest_names_only_committed_versions(tmp_path):
    """The after-commit hook behind latest.safetensors: dropped when the transaction rolls
    back, run once it commits, at once outside a transaction."""
    from fedkb.server.db import Database

    ran: list[str] = []
    db = Database(tmp_path / "x.db")
    with pytest.raises(RuntimeError), db.transaction():
        db.after_commit(lambda: ran.append("rolled back"))
        raise RuntimeError
    with db.transaction():
        db.after_commit(lambda: ran.append("committed"))
        assert ran == []
    db.after_commit(lambda: ran.append("now"))
    db.close()
    assert ran == ["committed", "now"]


def test_missing_checkpoint_file_falls_back(tmp_path):
    h = harness(tmp_path, pipeline=False)
    run_round(h)
    (tmp_path / "state" / "checkpoints" / "v000001.safetensors").unlink()
    assert restart(tmp_path, h).status()["model_version"] == 0


def test_checkpoint_file_without_its_row_is_ignored(tmp_path):
    h = harness(tmp_path, pipeline=False)
    run_round(h)
    ckpt = tmp_path / "state" / "checkpoints"
    # a crash mid-commit: the file of version 2 is there, its row is not
    (ckpt / "v000002.safetensors").write_bytes((ckpt / "v000001.safetensors").read_bytes())
    assert restart(tmp_path, h).status()["model_version"] == 1


def test_weights_and_artifact_downloads_are_immutable_and_cacheable(tmp_path):
    h = harness(tmp_path)
    r = h.client.get("/v1/models/0/weights")
    assert r.status_code == 200 and r.mimetype == "application/octet-stream"
    assert "immutable" in r.headers["Cache-Control"] and r.headers["ETag"]
    for got, want in zip(decode_arrays(r.data), initial_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    again = h.client.get("/v1/models/0/weights", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    man = h.client.get("/v1/models/0").get_json()
    assert man["weights"]["url"] == "/v1/models/0/weights"
    assert set(man["files"]) == {"metadata.json", "model.tflite", "weights.safetensors"}
    f = h.client.get(man["files"]["model.tflite"]["url"])
    assert f.data == b"TFL3-dummy-model" and "immutable" in f.headers["Cache-Control"]
    meta = h.client.get("/v1/models/0/files/metadata.json").get_json()
    assert meta["preset"] == "fake"
    listing = h.client.get("/v1/models").get_json()
    assert listing == {"latest": 0, "versions": [0]}


def test_publishing_another_model_on_an_existing_state_dir_is_refused(tmp_path):
    harness(tmp_path)
    cfg = make_config(tmp_path)
    write_artifact(tmp_path / "artifact", [w + 1 for w in initial_weights()])
    with pytest.raises(UserError, match="another model"):
        create_app(cfg)


def test_artifact_with_a_bad_hash_is_refused(tmp_path):
    art = write_artifact(tmp_path / "a")
    meta = json.loads((art / "metadata.json").read_text())
    meta["files"]["model.tflite"]["sha256"] = "0" * 64
    (art / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="SHA-256"):
        Artifact.load(art)
    with pytest.raises(ArtifactError):
        Artifact.load(tmp_path / "nowhere")


def test_round_config_changes_survive_restart(tmp_path):
    h = harness(tmp_path)
    h.admin("PATCH", "/v1/admin/round-config", json={"report_goal": 7})
    h2 = restart(tmp_path, h)
    assert h2.admin("GET", "/v1/admin/round-config").get_json()["report_goal"] == 7


def test_who_trained_recently_survives_restart(tmp_path):
    from server_support import Device

    h = harness(tmp_path, pipeline=False, rejoin_after_rounds=3)
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    for d, t in zip(devs[:2], tasks[:2], strict=True):
        d.upload(t, [np.ones_like(w) for w in initial_weights()])
    h2 = restart(tmp_path, h, pipeline=False, rejoin_after_rounds=3)
    again = Device(h2, devs[0].id, devs[0].token)
    assert again.checkin()["reason"] == "recently_trained"
    assert "task" in h2.register().checkin()


def test_committed_versions_do_not_pile_up_in_memory(tmp_path):
    """The server keeps a few recent versions in memory, not every one it committed
    (each holds the weights, the optimizer state and the download bytes); older ones are
    read back from their checkpoint files when asked for."""
    from fedkb.server.global_model import CACHED_VERSIONS

    h = harness(tmp_path, pipeline=False, report_goal=1, overselect=1.0, min_fraction=1.0)
    for _ in range(CACHED_VERSIONS + 4):
        d = h.register()
        assert d.upload(d.task(), deltas(0.01)).status_code == 200
    models = h.state.machine.models
    assert models.current.version == CACHED_VERSIONS + 4
    assert len(models._cache) == CACHED_VERSIONS and models.current.version in models._cache
    assert models.weights(1).version == 1  # an evicted version still downloads (from disk)
