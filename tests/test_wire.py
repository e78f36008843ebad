"""fedkb.wire: every message round-trips through JSON, and bad messages raise WireError."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedkb import wire
from fedkb.wire import (
    AbortRequest,
    CheckinRequest,
    CheckinResponse,
    Conditions,
    ErrorBody,
    Plan,
    RegisterRequest,
    RegisterResponse,
    Task,
    UploadMetadata,
    UploadResult,
    WireError,
    decode_upload,
    encode_upload,
    split_upload,
)

PLAN = Plan("train", 0.5, 16, 1, 50)
TASK = Task("t-1", 3, 2, PLAN, "/v1/models/2/weights", "/v1/models/2", 30.0)
MESSAGES = [
    RegisterRequest("heldout", "phone-7"),
    RegisterResponse("d-1", "tok", 60.0),
    CheckinRequest(Conditions(True, True, False, 0.5), cached_version=4),
    PLAN, TASK,
    CheckinResponse(task=TASK),
    CheckinResponse(retry_after_s=12.5, reason="no_round"),
    UploadMetadata("t-1", 3, 40, 2.25, {"top1_recall": 0.25}, {"train_s": 1.5}),
    UploadResult("t-1", 3, "accepted", 123.0),
    AbortRequest("not_charging"),
    ErrorBody("late_report", "too late"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_through_json_text(msg):
    again = type(msg).from_json(json.loads(json.dumps(msg.to_json())))
    assert again == msg


@pytest.mark.parametrize(("cls", "body", "field"), [
    (RegisterRequest, {"population": "everyone"}, "population"),
    (RegisterRequest, [], "object"),
    (Conditions, {"charging": 1, "unmetered": True, "idle": True, "battery": 0.5}, "charging"),
    (Conditions, {"charging": True, "unmetered": True, "idle": True, "battery": 1.5}, "battery"),
    (Conditions, {"charging": True, "unmetered": True, "idle": True}, "battery"),
    (CheckinRequest, {"conditions": "yes"}, "conditions"),
    (Plan, {"kind": "train", "lr": "fast", "batch_size": 1, "epochs": 1, "max_steps": 1}, "lr"),
    (Plan, {"kind": "sleep", "lr": 1, "batch_size": 1, "epochs": 1, "max_steps": 1}, "kind"),
    (UploadMetadata, {"task_id": "t", "round_id": 1, "num_examples": -1}, "num_examples"),
    (UploadMetadata, {"task_id": "t", "round_id": "1", "num_examples": 1}, "round_id"),
    (UploadMetadata, {"task_id": "t", "round_id": 1, "num_examples": True}, "num_examples"),
    (UploadMetadata, {"task_id": "t", "round_id": 1, "num_examples": 1,
                      "metrics": {"loss": "nan"}}, "metrics"),
    (AbortRequest, {"reason": "a b; drop table"}, "reason"),
    (AbortRequest, {}, "reason"),
])
def test_bad_messages_raise_wire_error_naming_the_field(cls, body, field):
    with pytest.raises(WireError, match=field):
        cls.from_json(body)


def test_checkin_response_holds_exactly_one_of_retry_and_task():
    with pytest.raises(WireError):
        CheckinResponse()
    with pytest.raises(WireError):
        CheckinResponse(retry_after_s=1.0, task=TASK)


def test_ints_are_accepted_for_floats_but_not_bools_for_ints():
    assert RegisterResponse.from_json({"device_id": "d", "token": "t", "token_ttl_s": 5}
                                      ).token_ttl_s == 5.0
    with pytest.raises(WireError):
        Task.from_json({**TASK.to_json(), "round_id": False})


def test_upload_framing_round_trip_and_metrics_only():
    meta = UploadMetadata("t-1", 3, 7, 0.5)
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)]
    m2, a2 = decode_upload(encode_upload(meta, arrays))
    assert m2 == meta and all(np.array_equal(x, y) for x, y in zip(a2, arrays, strict=True))
    m3, payload = split_upload(encode_upload(meta, None))
    assert m3 == meta and len(payload) == 0


@pytest.mark.parametrize("body", [b"", b"FKBA\x00\x00\x00\x00", b"FKBU\xff\xff\x00\x00{}",
                                  b"FKBU\x02\x00\x00\x00{x", b"FKBU\x02\x00\x00\x00[]"])
def test_broken_frames_raise_wire_error(body):
    with pytest.raises(WireError):
        split_upload(body)


def test_a_framed_masked_input_round_trips_and_broken_frames_are_wire_errors():
    sub = wire.SecAggSubmit({"type": "masked_input", "round_id": "r1", "sender": 1, "k": 13,
                             "length": 3}, 7, 0.5, True, 0, {"train_s": 1.0})
    body = wire.frame_secagg(sub, b"\x01\x02\x03\x04\x05")
    assert body.startswith(wire.SECAGG_MAGIC)
    back, payload = wire.split_secagg(body)
    assert back == sub and bytes(payload) == b"\x01\x02\x03\x04\x05"
    for broken in (b"", body[:6], wire.UPLOAD_MAGIC + body[4:], body[:8] + b"!" + body[9:],
                   body[:4] + b"\xff\xff\xff\x00" + body[8:]):
        with pytest.raises(WireError):
            wire.split_secagg(broken)


def test_wire_imports_neither_flask_nor_tensorflow():
    code = ("import sys, fedkb.wire; bad = [m for m in ('flask', 'tensorflow', 'werkzeug') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert wire.UPLOAD_CONTENT_TYPE == "application/x-fedkb-update"


def test_plan_clip_and_the_unclipped_bit_round_trip_and_are_checked():
    from fedkb.wire import Plan, UploadMetadata, WireError

    plan = Plan("train", 0.5, 8, 1, 10, seed=3, clip=0.75)
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_json({k: v for k, v in plan.to_json().items() if k != "clip"}).clip is None
    for bad in (0.0, -1.0, "1"):
        with pytest.raises(WireError):
            Plan.from_json({**plan.to_json(), "clip": bad})
    meta = UploadMetadata("t", 1, 5, 1.0, {}, {}, False)
    assert UploadMetadata.from_json(meta.to_json()) == meta
    with pytest.raises(WireError, match=r"unclipped must be bool"):
        UploadMetadata.from_json({**meta.to_json(), "unclipped": 1})


def test_plan_grad_clip_round_trips_is_checked_and_absent_by_default():
    from fedkb.wire import Plan, WireError

    plan = Plan("train", 1.0, 8, 1, 10, grad_clip=5.0)
    assert Plan.from_json(plan.to_json()) == plan
    assert "grad_clip" not in Plan("train", 1.0, 8, 1, 10).to_json()
    for bad in (0.0, -1.0, "5"):
        with pytest.raises(WireError):
            Plan.from_json({**plan.to_json(), "grad_clip": bad})


def test_secagg_setup_weight_cap_round_trips_defaults_to_zero_and_is_checked():
    setup = wire.SecAggSetup("r3", 1, [1, 2, 3], 2, 10, 12, weight_cap=16)
    assert wire.SecAggSetup.from_json(json.loads(setup.dumps())) == setup
    old = {k: v for k, v in setup.to_json().items() if k != "weight_cap"}
    assert wire.SecAggSetup.from_json(old).weight_cap == 0  # an older server: weight 1
    with pytest.raises(wire.WireError, match="weight_cap"):
        wire.SecAggSetup.from_json({**setup.to_json(), "weight_cap": -1})


def test_the_secure_example_weight_is_bounded_by_one_and_checked():
    from fedkb.secagg.update_codec import example_weight

    assert [example_weight(n, 16) for n in (0, 4, 16, 40)] == [1 / 16, 0.25, 1.0, 1.0]
    with pytest.raises(ValueError, match="cap"):
        example_weight(3, 0)
