"""One emulated phone's task timeline: bandwidth, tier timing, aborts when unplugged."""

from __future__ import annotations

import numpy as np
import pytest

from fedkb import wire
from fedkb.datasets.store import Dataset
from fedkb.device_runtime.phone import ModelFiles, Phone, run_task
from fedkb.device_runtime.profile import TIERS, DeviceProfile, Tier
from fedkb.device_runtime.traces import NETWORKS, Trace


def _trace(rows):
    t, c, n, i, b = zip(*rows, strict=True)
    return Trace(np.array(t, float), np.array(c), np.array([NETWORKS.index(x) for x in n]),
                 np.array(i), np.array(b, float))


ALWAYS = _trace([(0, True, "wifi", True, 0.8)])
UNPLUG_AT_100 = _trace([(0, True, "wifi", True, 0.8), (100, False, "wifi", True, 0.8)])


def _profile(trace, tier=TIERS[2], down=1e6, up=2.5e5):
    return DeviceProfile("phone-x", "u", "train", tier, down, up, 0.0, trace)


def _task(kind="train", version=3):
    plan = wire.Plan(kind, 0.5, 8, 1, 0)
    return wire.Task("t1", 7, version, plan, "/w", "/a", 60.0)


@pytest.fixture(scope="module")
def model(tiny_artifact):
    from fedkb.device_runtime.trainer import Trainer

    trainer = Trainer(tiny_artifact)
    w = trainer.artifact.initial_weights()
    return ModelFiles(trainer, w, weights_bytes=40_000, artifact_bytes=200_000)


@pytest.fixture(scope="module")
def windows(tiny_data):
    ds = Dataset.open(tiny_data)
    return ds.shard(ds.train_users[0]).train


def test_completed_task_timeline_adds_bandwidth_and_tier_time(model, windows):
    slow = Tier("slow", 1.0, 50.0, 1024)
    phone = Phone(_profile(ALWAYS, tier=slow))
    out = run_task(phone, _task(), t_task=1000.0, model=model, windows=windows)
    assert out.kind == "upload"
    t = out.timings
    assert t["download_bytes"] == 240_000 and t["download_s"] == pytest.approx(0.24)
    assert t["upload_s"] == pytest.approx(t["upload_bytes"] / 2.5e5)
    assert t["compute_s"] > 0
    assert t["encode_s"] >= 0
    assert out.due == pytest.approx(1000.0 + t["download_s"] + t["compute_s"] + t["encode_s"]
                                    + t["upload_s"])
    meta, delta = wire.decode_upload(out.body)
    assert meta.task_id == "t1" and meta.num_examples == len(windows)
    assert len(delta) == len(model.weights) and any(np.abs(d).max() > 0 for d in delta)
    # the phone now caches the artifact and this version: the next task downloads nothing
    again = run_task(phone, _task(), t_task=2000.0, model=model, windows=windows)
    assert again.timings["download_bytes"] == 0
    newer = run_task(phone, _task(version=4), t_task=3000.0, model=model, windows=windows)
    assert newer.timings["download_bytes"] == 40_000


def test_compute_time_scales_with_the_tier(model, windows):
    fast = run_task(Phone(_profile(ALWAYS, tier=Tier("f", 1, 1.0, 1))), _task(), 0.0, model,
                    windows)
    slow = run_task(Phone(_profile(ALWAYS, tier=Tier("s", 1, 1000.0, 1))), _task(), 0.0, model,
                    windows)
    # the same real work (same steps) times a 1000x factor; allow for timing noise
    assert slow.timings["compute_s"] > 100 * fast.timings["compute_s"]


def test_unplugged_during_training_aborts_at_that_moment(model, windows):
    glacial = Tier("glacial", 1.0, 1e6, 512)  # a step takes "forever" in simulated time
    out = run_task(Phone(_profile(UNPLUG_AT_100, tier=glacial)), _task(), 0.0, model, windows)
    assert (out.kind, out.reason, out.due) == ("abort", "not_charging", 100.0)


def test_unplugged_during_download_aborts_before_training(model, windows):
    phone = Phone(_profile(UNPLUG_AT_100, down=1_000.0))  # 240 kB at 1 kB/s: 240 s
    out = run_task(phone, _task(), 0.0, model, windows)
    assert (out.kind, out.reason, out.due) == ("abort", "not_charging", 100.0)
    assert phone.cached_version is None  # the download never finished


def test_evaluation_task_reports_metrics_only(model, tiny_data):
    ds = Dataset.open(tiny_data)
    windows = ds.shard(ds.heldout_users[0]).eval
    out = run_task(Phone(_profile(ALWAYS)), _task("evaluate"), 0.0, model, windows)
    meta, arrays = wire.decode_upload(out.body)
    assert out.kind == "upload" and arrays == []
    assert set(meta.metrics) == {"loss", "top1_recall", "top3_recall"}
    assert meta.num_examples > 0


def test_no_data_is_an_abort_not_a_crash(model):
    out = run_task(Phone(_profile(ALWAYS)), _task(), 0.0, model,
                   np.zeros((0, 11), np.int32))
    assert (out.kind, out.reason) == ("abort", "no_data")


def test_a_dp_plan_makes_the_phone_clip_and_report_its_bit(model, windows):
    from fedkb.clipping import global_norm

    free = run_task(Phone(_profile(ALWAYS)), _task(), 0.0, model, windows)
    meta, delta = wire.decode_upload(free.body)
    norm = global_norm(delta)
    assert meta.unclipped is None  # no clip in the plan: nothing to report
    for clip, bit in ((norm / 4, False), (norm * 4, True)):
        plan = wire.Plan("train", 0.5, 8, 1, 0, clip=clip)
        task = wire.Task("t1", 7, 3, plan, "/w", "/a", 60.0)
        out = run_task(Phone(_profile(ALWAYS)), task, 0.0, model, windows)
        meta, sent = wire.decode_upload(out.body)
        assert meta.unclipped is bit
        assert global_norm(sent) == pytest.approx(min(norm, clip), rel=1e-5)


def test_the_plans_grad_clip_bounds_every_local_step(model, windows):
    from fedkb.clipping import global_norm

    free = run_task(Phone(_profile(ALWAYS)), _task(), 0.0, model, windows)
    _, delta = wire.decode_upload(free.body)
    steps = -(-len(windows) // 8)
    tiny = global_norm(delta) / (10 * steps * 0.5)  # binds on every step
    plan = wire.Plan("train", 0.5, 8, 1, 0, grad_clip=tiny)
    out = run_task(Phone(_profile(ALWAYS)), wire.Task("t1", 7, 3, plan, "/w", "/a", 60.0),
                   0.0, model, windows)
    _, sent = wire.decode_upload(out.body)
    assert 0 < global_norm(sent) <= steps * 0.5 * tiny * (1 + 1e-4)


def test_the_artifact_is_downloaded_once_and_weights_once_per_version(model, windows):
    phone = Phone(_profile(ALWAYS))
    first = run_task(phone, _task(version=3), 1000.0, model, windows)
    same = run_task(phone, _task(version=3), 2000.0, model, windows)
    newer = run_task(phone, _task(version=4), 3000.0, model, windows)
    assert [o.timings["download_bytes"] for o in (first, same, newer)] == [
        240_000, 0, 40_000]  # artifact + weights, nothing, the new weights only


def test_the_upload_is_encoded_as_the_plan_asks(model, windows):
    import dataclasses

    from fedkb.codec import decode_arrays
    from fedkb.plan_codec import decode_delta

    task = _task()
    task = dataclasses.replace(task, plan=dataclasses.replace(task.plan, uplink="q8"))
    out = run_task(Phone(_profile(ALWAYS)), task, 1000.0, model, windows)
    meta, payload = wire.split_upload(out.body)
    assert bytes(payload[:4]) == b"FKBQ" and "encode_s" in meta.timings
    assert out.timings["upload_bytes"] == len(payload) + 1024
    shapes = [s.shape for s in model.trainer.artifact.specs]
    plain = run_task(Phone(_profile(ALWAYS)), _task(), 1000.0, model, windows)
    _, raw = wire.split_upload(plain.body)
    # the tiny model's tensors are all under the threshold: float32 inside the FKBQ body
    for a, b in zip(decode_delta(payload, task.plan, shapes), decode_arrays(raw),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # the same seed: the same training
