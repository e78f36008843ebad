"""Every bad input gets the right 4xx JSON error, and the global model stays unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from itsdangerous import URLSafeTimedSerializer
from server_support import ELIGIBLE, SPECS, deltas, harness

from fedkb.codec import encode_arrays
from fedkb.wire import UploadMetadata, encode_upload


@pytest.fixture()
def h(tmp_path):
    return harness(tmp_path, max_upload_bytes=4096, token_ttl_s=3600.0)


def error(resp, status: int, code: str) -> None:
    body = resp.get_json()
    assert resp.status_code == status, body
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def unchanged(h, version: int = 0) -> None:
    assert h.status()["model_version"] == version
    w0 = h.state.machine.weights(0).weights
    if version == 0:
        assert all(np.array_equal(a, b) for a, b in zip(w0, h.global_weights(), strict=True))


def test_malformed_json(h):
    d = h.register()
    r = h.client.post("/v1/checkin", data=b"{not json", headers={
        **d.auth, "Content-Type": "application/json"})
    error(r, 400, "bad_json")
    error(h.client.post("/v1/devices", data=b"[1, 2]", content_type="application/json"),
          400, "bad_json")
    unchanged(h)


def test_json_that_is_not_the_message(h):
    d = h.register()
    r = h.client.post("/v1/checkin", headers=d.auth, json={"conditions": {"charging": "yes"}})
    error(r, 400, "invalid_message")
    error(h.client.post("/v1/devices", json={"population": "martians"}), 400, "invalid_message")


def test_wrong_content_type(h):
    d = h.register()
    r = h.client.post("/v1/checkin", headers=d.auth, data="conditions=1",
                      content_type="application/x-www-form-urlencoded")
    error(r, 415, "unsupported_media_type")
    t = d.task()
    body = encode_upload(UploadMetadata(t["task_id"], t["round_id"], 1), deltas(1.0))
    error(d.upload_raw(t["task_id"], body, content_type="application/json"), 415,
          "unsupported_media_type")
    unchanged(h)


def test_missing_token(h):
    r = h.client.post("/v1/checkin", json={"conditions": ELIGIBLE})
    error(r, 401, "missing_token")
    error(h.client.post("/v1/tasks/t-x/result", data=b"x"), 401, "missing_token")


def test_forged_token(h):
    d = h.register()
    forged = URLSafeTimedSerializer("not-the-secret", salt="fedkb-device-token").dumps(
        {"d": d.id})
    for token in (forged, d.token[:-2] + "xx", "garbage"):
        r = h.client.post("/v1/checkin", json={"conditions": ELIGIBLE},
                          headers={"Authorization": f"Bearer {token}"})
        error(r, 401, "invalid_token")


def test_expired_token(h):
    d = h.register()
    assert "task" in d.checkin()
    h.clock.advance(3601)
    r = h.client.post("/v1/checkin", headers=d.auth, json={"conditions": ELIGIBLE})
    error(r, 401, "token_expired")


def test_token_of_unknown_device(tmp_path, h):
    other = harness(tmp_path / "other", secret_key="shared")
    h2 = harness(tmp_path / "third", secret_key="shared")
    d = other.register()
    r = h2.client.post("/v1/checkin", headers=d.auth, json={"conditions": ELIGIBLE})
    error(r, 401, "unknown_device")


def test_another_devices_task(h):
    a, b = h.register(), h.register()
    t = a.task()
    error(b.upload(t, deltas(1.0)), 403, "wrong_device")
    error(b.abort(t["task_id"]), 403, "wrong_device")
    assert h.client.get("/v1/rounds/1").get_json()["rejected"] == {"wrong_device": 2}
    unchanged(h)


def test_unknown_task_and_unknown_round(h):
    d = h.register()
    error(d.upload({"task_id": "t-nope", "round_id": 1}, deltas(1.0)), 404, "unknown_task")
    t = d.task()
    error(d.upload({**t, "round_id": 999}, deltas(1.0)), 404, "unknown_round")
    unchanged(h)


def test_closed_round_late_and_abandoned(h):
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    devs[0].upload(tasks[0], deltas(1.0))
    devs[1].upload(tasks[1], deltas(1.0))
    before = h.global_weights()
    error(devs[2].upload(tasks[2], deltas(9.0)), 409, "late_report")
    assert all(np.array_equal(a, b) for a, b in zip(before, h.global_weights(), strict=True))
    error(devs[2].upload(tasks[2], deltas(9.0)), 409, "late_report")  # still late, counted
    assert h.client.get("/v1/rounds/1").get_json()["late"] == 2


def test_upload_to_abandoned_round(tmp_path):
    h = harness(tmp_path, min_fraction=1.0)
    d = h.register()
    t = d.task()
    h.clock.advance(10)  # selection window over with 1 of 2 needed devices
    error(d.upload(t, deltas(1.0)), 409, "round_abandoned")
    assert h.client.get("/v1/rounds/1").get_json()["rejected"] == {"round_abandoned": 1}
    unchanged(h)


def test_replayed_upload_same_answer_different_refused(h):
    devs = [h.register() for _ in range(3)]
    t = devs[0].task()
    first = devs[0].upload(t, deltas(1.0))
    again = devs[0].upload(t, deltas(1.0))
    assert first.status_code == again.status_code == 200
    assert first.get_json() == again.get_json()
    error(devs[0].upload(t, deltas(2.0)), 409, "already_submitted")
    r = h.client.get("/v1/rounds/1").get_json()
    assert (r["reported"], r["rejected"]) == (1, {"already_submitted": 1})
    unchanged(h)


@pytest.mark.parametrize(("update", "code"), [
    ([np.zeros(s, np.float32) for _, s in SPECS[:2]], "bad_shape"),
    ([np.zeros((7, 3), np.float32), *deltas(0)[1:]], "bad_shape"),
    ([a.astype(np.float64) for a in deltas(1.0)], "bad_dtype"),
    ([a.astype(np.int32) for a in deltas(1.0)], "bad_dtype"),
    ([np.full(s, np.nan, np.float32) for _, s in SPECS], "non_finite"),
    ([*deltas(1.0)[:2], np.array([0, 0, 0, 0, 0, np.inf], np.float32)], "non_finite"),
])
def test_update_that_does_not_fit_the_model(h, update, code):
    d = h.register()
    t = d.task()
    error(d.upload(t, update), 422, code)
    assert h.client.get("/v1/rounds/1").get_json()["rejected"] == {code: 1}
    assert d.upload(t, deltas(1.0)).status_code == 200  # the task can still report
    unchanged(h)


def test_malformed_upload_bytes(h):
    d = h.register()
    t = d.task()
    error(d.upload_raw(t["task_id"], b"not an upload"), 400, "malformed_upload")
    meta = UploadMetadata(t["task_id"], t["round_id"], 1)
    body = bytearray(encode_upload(meta, deltas(1.0)))
    body[-30] ^= 0xFF  # corrupt the codec bytes: checksum mismatch
    error(d.upload_raw(t["task_id"], bytes(body)), 400, "malformed_upload")
    other = UploadMetadata("t-other", t["round_id"], 1)
    error(d.upload_raw(t["task_id"], encode_upload(other, deltas(1.0))), 400, "invalid_message")
    error(d.upload(t, None), 422, "missing_update")
    error(d.upload(t, deltas(1.0), n=0), 422, "no_examples")
    unchanged(h)


def test_oversized_upload_is_413(h):
    d = h.register()
    t = d.task()
    meta = UploadMetadata(t["task_id"], t["round_id"], 1)
    big = encode_upload(meta, [np.zeros(2000, np.float32)])
    error(d.upload_raw(t["task_id"], big), 413, "payload_too_large")
    error(h.client.post("/v1/devices", data=b"{" + b" " * 70000 + b"}",
                        content_type="application/json"), 413, "payload_too_large")
    assert h.client.get("/v1/rounds/1").get_json()["rejected"] == {"payload_too_large": 1}
    unchanged(h)


def test_evaluation_task_with_arrays_is_refused(tmp_path):
    h = harness(tmp_path, eval_every=1, eval_goal=1)
    d = h.register("heldout")
    t = d.task()
    error(d.upload(t, deltas(1.0)), 422, "unexpected_update")


def test_unknown_path_method_and_version(h):
    error(h.client.get("/v1/nothing"), 404, "not_found")
    error(h.client.get("/v1/checkin"), 405, "method_not_allowed")
    error(h.client.get("/v1/models/7/weights"), 404, "not_found")
    error(h.client.get("/v1/models/0/files/secret.txt"), 404, "not_found")
    error(h.client.post("/v1/admin/training", json={"enabled": True}), 401, "missing_token")
    r = h.admin("POST", "/v1/admin/training", json={"enabled": "yes"})
    error(r, 400, "invalid_message")


def test_abort_with_bad_reason_and_twice(h):
    d = h.register()
    t = d.task()
    r = h.client.post(f"/v1/tasks/{t['task_id']}/abort", headers=d.auth,
                      json={"reason": "x" * 100})
    error(r, 400, "invalid_message")
    assert d.abort(t["task_id"]).status_code == 200
    assert d.abort(t["task_id"]).status_code == 200  # idempotent
    assert h.client.get("/v1/rounds/1").get_json()["aborted"] == {"not_charging": 1}


def test_codec_bytes_with_wrong_array_count(h):
    d = h.register()
    t = d.task()
    meta = UploadMetadata(t["task_id"], t["round_id"], 1)
    body = encode_upload(meta, None) + encode_arrays([np.zeros(3, np.float32)])
    error(d.upload_raw(t["task_id"], body), 422, "bad_shape")
