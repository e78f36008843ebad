"""Hostile input at the HTTP edge: every refusal is a JSON 4xx with a code from the table.

Flask test client only (no sockets); the real server's own edge (waitress) is
``tests/test_server_edge_e2e.py``.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from server_support import ADMIN, deltas, harness, write_artifact

from fedkb.codec import MAGIC, TRAILER, CodecError, decode_arrays
from fedkb.device_runtime import traces
from fedkb.server.errors import __doc__ as ERRORS_DOC
from fedkb.wire import (
    ABORT_REASONS,
    INELIGIBILITY_REASONS,
    UPLOAD_CONTENT_TYPE,
    UPLOAD_MAGIC,
    AbortRequest,
)

HUGE = "9" * 30  # > 2**63: SQLite raises OverflowError on it
VERY_HUGE = "9" * 5000  # over Python's int-string limit (ValueError in int())


def error(resp, status: int, code: str | None = None) -> dict:
    """The JSON error of ``resp``, checked: status, a code from the table."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.mimetype == "application/json"
    err = resp.get_json()["error"]
    assert f"``{err['code']}``" in (ERRORS_DOC or ""), err
    if code is not None:
        assert err["code"] == code, err
    return err


def post_raw(h, path: str, text: str | bytes, **headers: str):
    return h.client.post(path, data=text, headers={"Content-Type": "application/json",
                                                   **headers})


# --- JSON bodies -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    "[" * 30_000 + "]" * 30_000,  # RecursionError in json.loads
    '{"population": "train", "x": ' + "[" * 30_000 + "]" * 30_000 + "}",
    '{"population": "train", "name": ' + "1" * 5000 + "}",  # int-string limit: ValueError
    '{"population": "train", "name": "\\ud800"}',  # a lone surrogate: no UTF-8 for SQLite
    '{"population": "train", "name": "a\\udfffb"}',
    '{"population": "train", "name": NaN}',
], ids=["deep", "deep_inside", "long_int", "surrogate", "surrogate_inside", "nan"])
def test_hostile_json_bodies_are_400_bad_json(tmp_path, body):
    h = harness(tmp_path)
    error(post_raw(h, "/v1/devices", body), 400, "bad_json")
    assert h.register().id  # and the server keeps working


def test_integers_outside_int64_are_refused_before_they_reach_sqlite(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    body = '{"reason": ' + "1" * 30 + "}"
    error(post_raw(h, f"/v1/tasks/{t['task_id']}/abort", body, **d.auth), 400)
    body = '{"conditions": {"charging": true, "unmetered": true, "idle": true, ' \
           '"battery": 0.9}, "wait_s": ' + "9" * 40 + "}"
    error(post_raw(h, "/v1/checkin", body, **d.auth), 400)


def test_admin_json_bodies_are_guarded_too(tmp_path):
    h = harness(tmp_path)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    error(h.client.patch("/v1/admin/round-config", data="[" * 30_000,
                         headers={"Content-Type": "application/json", **auth}), 400, "bad_json")
    error(h.client.patch("/v1/admin/round-config", data='{"report_goal": ' + HUGE + "}",
                         headers={"Content-Type": "application/json", **auth}), 400, "bad_json")


def test_upload_header_with_hostile_json_is_malformed_upload(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    for header in (b"[" * 30_000, b'{"task_id": "x", "round_id": ' + HUGE.encode() + b"}",
                   b'{"task_id": "\\ud800"}'):
        body = UPLOAD_MAGIC + struct.pack("<I", len(header)) + header
        error(d.upload_raw(t["task_id"], body), 400, "malformed_upload")
    assert d.upload(t, deltas(0.5)).status_code == 200


# --- codec arrays ----------------------------------------------------------------------


def bundle(dtype: bytes, shape: tuple[int, ...], data: bytes = b"") -> bytes:
    body = MAGIC + struct.pack("<HI", 1, 1) + struct.pack("<B", len(dtype)) + dtype
    body += struct.pack(f"<B{len(shape)}I", len(shape), *shape) + data
    return body + TRAILER + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("shape", [
    (2**32 - 1,) * 3,  # element count wraps around int64 in np.prod
    (2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1),
    (2**31, 2**31, 4),  # wraps to exactly 0 bytes
], ids=["wraps3", "wraps8", "wraps_to_zero"])
def test_codec_refuses_shapes_whose_size_overflows(shape):
    with pytest.raises(CodecError):
        decode_arrays(bundle(b"<f4", shape))


def test_upload_with_overflowing_shape_is_400_malformed_upload(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    header = json.dumps({"task_id": t["task_id"], "round_id": t["round_id"],
                         "num_examples": 1, "loss": 1.0}).encode()
    payload = bundle(b"<f4", (2**31, 2**31, 4))
    body = UPLOAD_MAGIC + struct.pack("<I", len(header)) + header + payload
    error(d.upload_raw(t["task_id"], body, UPLOAD_CONTENT_TYPE), 400, "malformed_upload")


# --- integers in URLs ------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    f"/v1/models/{HUGE}", f"/v1/models/{HUGE}/weights", f"/v1/models/{HUGE}/files/x",
    f"/v1/rounds/{HUGE}", f"/v1/models/{VERY_HUGE}/weights", f"/v1/rounds/{VERY_HUGE}",
], ids=["manifest", "weights", "file", "round", "weights_5000", "round_5000"])
def test_huge_integers_in_paths_are_404(tmp_path, path):
    h = harness(tmp_path)
    error(h.client.get(path), 404)


@pytest.mark.parametrize("query", [
    f"before={HUGE}", f"limit={HUGE}", f"before={VERY_HUGE}", f"limit={VERY_HUGE}",
    f"before=-{HUGE}", "limit=abc", "before=1.5", "limit=6&limit=False", "limit=1&limit=2",
], ids=["before", "limit", "before_5000", "limit_5000", "before_neg", "limit_abc", "float",
        "repeated_bad", "repeated"])
def test_huge_or_broken_listing_queries_are_400_bad_query(tmp_path, query):
    h = harness(tmp_path)
    error(h.client.get(f"/v1/rounds?{query}"), 400, "bad_query")


def test_listing_queries_in_range_still_work(tmp_path):
    h = harness(tmp_path)
    assert h.client.get(f"/v1/rounds?before={2**63 - 1}&limit=5").status_code == 200
    assert h.client.get("/v1/rounds?limit=100000").status_code == 200  # clamped, as before


# --- abort reasons: a closed set -------------------------------------------------------


def test_every_reason_a_phone_sends_is_in_the_closed_set():
    assert set(INELIGIBILITY_REASONS) <= set(ABORT_REASONS)
    # device_runtime/phone.py, worker.py and traces.py: why_not() (the server's words or
    # offline), the fallback "ineligible", "no_data", the worker's "deadline"
    assert {traces.OFFLINE, "ineligible", "no_data", "deadline"} <= set(ABORT_REASONS)
    assert "other" in ABORT_REASONS


@pytest.mark.parametrize("reason", ["my_pin_is_1234", "unplugged", "x" * 64],
                         ids=["typed", "unplugged", "long"])
def test_unknown_abort_reasons_count_as_other(tmp_path, reason):
    assert AbortRequest.from_json({"reason": reason}).reason == "other"
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    assert d.abort(t["task_id"], reason).status_code == 200
    assert h.client.get("/v1/rounds/1").get_json()["aborted"] == {"other": 1}
    text = h.client.get("/metrics").text
    assert reason not in text and 'fedkb_aborts_total{reason="other"} 1.0' in text
    row = h.state.db.one("SELECT reason FROM tasks WHERE id = ?", (t["task_id"],))
    assert row["reason"] == "other"


def test_known_abort_reasons_are_kept(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    assert d.abort(t["task_id"], "not_charging").status_code == 200
    assert h.client.get("/v1/rounds/1").get_json()["aborted"] == {"not_charging": 1}


# --- admin publish: no symlinks, no path oracle ----------------------------------------


def publish(h, path: str | Path):
    return h.admin("POST", "/v1/admin/model", json={"path": str(path)})


def test_publish_refuses_a_symlink_out_of_the_artifact(tmp_path):
    h = harness(tmp_path, model=False)
    art = write_artifact(tmp_path / "evil")
    meta = json.loads((art / "metadata.json").read_text())
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0\n")
    from fedkb.artifact import sha256
    meta["files"]["leak.txt"] = {"sha256": sha256(secret.read_bytes()), "bytes": 11}
    (art / "metadata.json").write_text(json.dumps(meta))
    os.symlink(secret, art / "leak.txt")
    error(publish(h, art), 422, "bad_artifact")
    assert h.client.get("/v1/models/0/files/leak.txt").status_code != 200


def test_publish_refuses_a_symlinked_metadata_or_model_file(tmp_path):
    h = harness(tmp_path, model=False)
    real = write_artifact(tmp_path / "real")
    art = tmp_path / "links"
    art.mkdir()
    for f in real.iterdir():
        os.symlink(f, art / f.name)
    error(publish(h, art), 422, "bad_artifact")
    assert publish(h, real).status_code == 201  # the real directory publishes


def test_publish_refuses_a_fifo_instead_of_hanging(tmp_path):
    h = harness(tmp_path, model=False)
    art = write_artifact(tmp_path / "fifo")
    (art / "model.tflite").unlink()
    os.mkfifo(art / "model.tflite")

    def unblock() -> None:  # a reader blocked on the FIFO gets EOF: the test cannot hang
        if not done.wait(5):
            with open(art / "model.tflite", "wb"):
                pass

    done = threading.Event()
    threading.Thread(target=unblock, daemon=True).start()
    t0 = time.monotonic()
    error(publish(h, art), 422, "bad_artifact")
    done.set()
    assert time.monotonic() - t0 < 4


def test_publish_errors_do_not_say_whether_a_path_exists(tmp_path):
    h = harness(tmp_path, model=False)
    bad = write_artifact(tmp_path / "bad")
    (bad / "weights.safetensors").unlink()
    paths = ("/nonexistent", "/etc", "/etc/passwd", tmp_path / "nope", bad, "/etc\x00x")
    messages = {error(publish(h, p), 422, "bad_artifact")["message"] for p in paths}
    assert len(messages) == 1, messages
