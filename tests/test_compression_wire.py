"""Compressed updates on the real wire (issue 17): plan, phone encoding, server decoding.

Through the Flask test client (the server's whole WSGI stack) with a fake clock: a task's
plan names its encoding and carries its rotation seed; an upload encoded as the plan asks
is folded as the mean of its dequantized values; any other encoding, or a broken body,
is a 4xx counted in the round's rejections with nothing folded; the float16 downlink
serves half the bytes with an ETag; the config table and the CLI flags reach the server.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from server_support import ADMIN, FakeClock, Harness

from fedkb.artifact import MODEL_FILE, WEIGHTS_FILE, initial_weights_file
from fedkb.artifact import write_artifact as write_artifact_files
from fedkb.codec import decode_arrays, encode_arrays
from fedkb.compression.encoding import Encoding, encode_update
from fedkb.plan_codec import decode_delta, encode_delta, float16_weights
from fedkb.server.app import create_app
from fedkb.server.config import (
    CompressionConfig,
    ConfigError,
    RoundConfig,
    ServerConfig,
    StrategyConfig,
    load_config,
)
from fedkb.weights import WeightSpec
from fedkb.wire import Plan, Task, UploadMetadata, WireError, frame_upload

# one tensor over the 20,000-value threshold (quantized), two under it (kept float32)
BIG = [("embedding", (100, 240)), ("rnn_kernel", (8, 12)), ("output_bias", (100,))]
SHAPES = [s for _, s in BIG]


def _weights() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, s).astype(np.float32) for s in SHAPES]


def _artifact(path: Path) -> Path:
    specs = [WeightSpec(n, s) for n, s in BIG]
    files = {MODEL_FILE: b"TFL3-dummy-model", WEIGHTS_FILE: initial_weights_file(
        specs, _weights())}
    meta = {"preset": "fake", "batch_size": 4, "seq_len": 5, "vocab_size": 6,
            "weights": [s.to_json() for s in specs]}
    write_artifact_files(path, meta, files)
    return path


def _harness(tmp: Path, comp: CompressionConfig) -> Harness:
    cfg = ServerConfig(state_dir=tmp / "state", admin_token=ADMIN, seed=0,
                       model=_artifact(tmp / "artifact"), compression=comp,
                       round=RoundConfig(report_goal=2, overselect=1.5, min_fraction=0.5,
                                         selection_window_s=10, reporting_deadline_s=20,
                                         eval_every=0, retry_jitter=0.0, pipeline=False),
                       strategy=StrategyConfig(name="fedavg", server_lr=1.0))
    clock = FakeClock()
    app = create_app(cfg, clock=clock)
    return Harness(app, app.test_client(), clock)


def _delta(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + seed)
    return [rng.normal(0, 0.01, s).astype(np.float32) for s in SHAPES]


def _body(task: dict, payload: bytes, n: int = 1) -> bytes:
    meta = UploadMetadata(task["task_id"], task["round_id"], n, 1.0, {},
                          {"download_bytes": 1000.0})
    return frame_upload(meta, payload)


def test_a_float32_plan_reads_as_before_and_a_compressed_one_round_trips():
    plain = Plan("train", 0.5, 16, 1, 50, seed=3)
    assert plain.to_json() == {"kind": "train", "lr": 0.5, "batch_size": 16, "epochs": 1,
                               "max_steps": 50, "seed": 3}
    comp = Plan("train", 0.5, 16, 1, 50, 3, uplink="q4", rotate=True, rotation_seed=2**63 - 5,
                downlink="float16")
    assert Plan.from_json(json.loads(json.dumps(comp.to_json()))) == comp
    lowered = Plan("train", 0.5, 16, 1, 50, 3, uplink="q4", min_elements=5000)
    assert lowered.to_json()["min_elements"] == 5000
    assert Plan.from_json(json.loads(json.dumps(lowered.to_json()))) == lowered
    for bad in ({"uplink": "q3"}, {"downlink": "int8"}, {"rotate": 1},
                {"rotation_seed": -1}, {"rotation_seed": 2**64}, {"min_elements": -1},
                {"min_elements": 2.5}):
        with pytest.raises(WireError):
            Plan.from_json({**plain.to_json(), **bad})


def test_quantized_rotated_uploads_round_trip_over_http_and_fold_as_their_dequantized_mean(
        tmp_path):
    h = _harness(tmp_path, CompressionConfig(uplink="q4", rotate=True))
    devs = [h.register() for _ in range(2)]
    tasks = [d.task() for d in devs]
    plans = [Task.from_json(t).plan for t in tasks]
    assert all((p.uplink, p.rotate, p.downlink) == ("q4", True, "float32") for p in plans)
    seeds = {p.rotation_seed for p in plans}
    assert None not in seeds and len(seeds) == 2  # a rotation seed per task
    w0 = h.global_weights()
    expected, sizes = [np.zeros(s, np.float64) for s in SHAPES], []
    for i, (d, t, plan) in enumerate(zip(devs, tasks, plans, strict=True)):
        payload, encode_s = encode_delta(_delta(i), plan)
        assert encode_s >= 0 and payload[:4] == b"FKBQ"
        assert len(payload) < 0.2 * len(encode_arrays(_delta(i)))  # q4: ~8x smaller
        n = 1 + 2 * i
        deq = decode_delta(payload, plan, SHAPES)  # what the server gets out of it
        for e, x in zip(expected, deq, strict=True):
            e += n * x.astype(np.float64)
        body = _body(t, payload, n)
        sizes.append(len(body))
        r = d.upload_raw(t["task_id"], body)
        assert r.status_code == 200, r.get_json()
        assert d.upload_raw(t["task_id"], body).status_code == 200  # identical retry
    r = h.client.get("/v1/rounds/1").get_json()
    assert (r["state"], r["reported"], r["rejected"]) == ("committed", 2, {})
    assert r["upload_bytes"] == sizes and r["download_bytes"] == 2000
    for got, w, e in zip(h.global_weights(), w0, expected, strict=True):
        np.testing.assert_allclose(got, w + (e / 4).astype(np.float32), atol=1e-6)
    comm = h.status()["communication"]
    assert comm["encoding"] == "q4+rotate" and comm["last_round"]["upload_bytes"] == sum(sizes)
    text = h.client.get("/metrics").get_data(as_text=True)
    assert f'fedkb_uplink_bytes_total{{kind="train"}} {float(sum(sizes))}' in text
    assert f'fedkb_round_bytes{{direction="up"}} {float(sum(sizes))}' in text


def _bad_payloads(plan: Plan) -> dict[str, tuple[bytes, int, str]]:
    good, _ = encode_delta(_delta(0), plan)
    rng = np.random.default_rng(0)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    return {
        "float32 arrays": (encode_arrays(_delta(0)), 422, "wrong_encoding"),
        "another encoding": (encode_update(_delta(0), Encoding("q8", rotate=True),
                                           plan.rotation_seed, rng), 422, "wrong_encoding"),
        "another seed": (encode_update(_delta(0), Encoding("q4", rotate=True),
                                       (plan.rotation_seed or 0) + 1, rng), 422,
                         "wrong_encoding"),
        "truncated": (good[:-100], 400, "malformed_encoding"),
        "corrupt": (bytes(flipped), 400, "malformed_encoding"),
        "other shapes": (encode_update([np.zeros((100, 240), np.float32)],
                                       Encoding("q4", rotate=True), plan.rotation_seed, rng),
                         422, "bad_shape"),
    }


def test_a_wrong_or_malformed_encoding_is_refused_counted_and_nothing_is_folded(tmp_path):
    h = _harness(tmp_path, CompressionConfig(uplink="q4", rotate=True))
    dev = h.register()
    t = dev.task()
    plan = Task.from_json(t).plan
    codes: dict[str, int] = {}
    for what, (payload, status, code) in _bad_payloads(plan).items():
        r = dev.upload_raw(t["task_id"], _body(t, payload))
        assert (r.status_code, r.get_json()["error"]["code"]) == (status, code), what
        codes[code] = codes.get(code, 0) + 1
    rnd = h.state.machine.open[1]
    assert rnd.aggregator.count == 0 and rnd.stats.reported == 0  # nothing folded
    assert rnd.stats.upload_bytes == []
    assert h.client.get("/v1/rounds/1").get_json()["rejected"] == codes
    good, _ = encode_delta(_delta(0), plan)  # the task is still open for a good upload
    assert dev.upload_raw(t["task_id"], _body(t, good)).status_code == 200


def test_a_float32_plan_refuses_an_encoded_body(tmp_path):
    h = _harness(tmp_path, CompressionConfig())
    dev = h.register()
    t = dev.task()
    assert Task.from_json(t).plan == Plan.from_json(t["plan"]) and "uplink" not in t["plan"]
    q = encode_update(_delta(0), Encoding("q8"), None, np.random.default_rng(0))
    r = dev.upload_raw(t["task_id"], _body(t, q))
    assert (r.status_code, r.get_json()["error"]["code"]) == (422, "wrong_encoding")
    assert dev.upload_raw(t["task_id"], _body(t, encode_arrays(_delta(0)))).status_code == 200


def test_float16_downlink_serves_half_the_bytes_with_an_etag(tmp_path):
    h = _harness(tmp_path, CompressionConfig(uplink="q8", downlink="float16"))
    t = h.register().task()
    assert t["plan"]["downlink"] == "float16"
    man = h.client.get(t["artifact_url"]).get_json()
    rec16, rec32 = man["weights_float16"], man["weights"]
    r = h.client.get(rec16["url"])
    assert r.status_code == 200 and len(r.data) == rec16["bytes"]
    assert rec16["bytes"] < 0.51 * rec32["bytes"]
    got = decode_arrays(r.data)
    assert all(a.dtype == np.float16 for a in got)
    for a, w in zip(got, float16_weights(h.global_weights()), strict=True):
        np.testing.assert_array_equal(a, w)
    again = h.client.get(rec16["url"], headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""  # a cached copy: no body
    assert h.client.get(t["weights_url"] + "?dtype=int8").status_code == 400
    text = h.client.get("/metrics").get_data(as_text=True)
    assert f'fedkb_downlink_bytes_total{{what="weights_float16"}} {float(rec16["bytes"])}' \
        in text  # the 304 sent nothing
    assert 'fedkb_downlink_not_modified_total{what="weights_float16"} 1.0' in text
    from fedkb.simulation.communication import served_downlink

    served = served_downlink(text)
    assert served["sent"]["weights_float16"] == rec16["bytes"]
    assert served["not_modified"] == {"weights_float16": 1}


def test_the_compression_table_is_checked_like_the_others(tmp_path):
    f = tmp_path / "server.toml"
    f.write_text('[compression]\nuplink = "q2"\nrotate = true\ndownlink = "float16"\n')
    assert load_config(f).compression == CompressionConfig("q2", True, "float16")
    assert load_config(None).compression == CompressionConfig()
    f.write_text('[compression]\nuplink = "q4"\nmin_elements = 5000\n')
    assert load_config(f).compression == CompressionConfig("q4", min_elements=5000)
    for bad in ('uplink = "q3"', 'rotate = 1', 'downlink = "bf16"', 'chunk = 1024',
                'min_elements = -1', 'min_elements = 0.5',
                'uplink = "float32"\nrotate = true'):
        f.write_text(f"[compression]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_config(f)
    assert tomllib.loads('[compression]\nuplink = "q8"\n')  # the table name itself


def test_the_flags_reach_the_servers_config_file(tiny_data, tmp_path):
    from fedkb.cli import build_parser
    from fedkb.simulation.cli import fleet_config
    from fedkb.simulation.demo import DEMO_COMPRESSION, demo_config
    from fedkb.simulation.fleet_config import write_server_config

    args = build_parser().parse_args(["simulate", "--engine", "fleet", "--data",
                                      str(tiny_data), "--uplink", "q4", "--rotate",
                                      "--downlink", "float16"])
    cfg = fleet_config(args)
    assert cfg.compression == CompressionConfig("q4", True, "float16")
    low = build_parser().parse_args(["simulate", "--engine", "fleet", "--data",
                                     str(tiny_data), "--uplink", "q4", "--quantize-min", "5000"])
    assert fleet_config(low).compression == CompressionConfig("q4", min_elements=5000)
    path = write_server_config(cfg, tmp_path / "server.json", 10, 2)
    assert load_config(path).compression == cfg.compression
    plain = build_parser().parse_args(["simulate", "--engine", "fleet", "--data",
                                       str(tiny_data)])
    assert fleet_config(plain).compression == CompressionConfig()
    demo = build_parser().parse_args(["demo", "--uplink", "q2"])
    assert isinstance(demo, argparse.Namespace) and (demo.uplink, demo.rotate) == ("q2", False)
    a = build_parser().parse_args(["demo"])
    assert a.rounds is None  # the demo's own (or fitted to --corpus) unless given
    from fedkb.simulation.demo import DEMO_ROUND

    dcfg = demo_config(tiny_data, tmp_path, 40, DEMO_ROUND.max_rounds, DEMO_ROUND.report_goal,
                       a.workers,
                       a.preset, a.strategy, a.lr, a.server_lr)
    assert dcfg.compression == DEMO_COMPRESSION == CompressionConfig(
        a.uplink, a.rotate, a.downlink)


def test_the_reports_communication_object_and_the_progress_line_read_the_rounds():
    from fedkb.simulation.communication import communication
    from fedkb.simulation.progress import bytes_postfix

    rounds = [{"kind": "train", "state": "committed", "reported": 2,
               "upload_bytes": [700, 720], "download_bytes": 9000},
              {"kind": "train", "state": "committed", "reported": 3,
               "upload_bytes": [710, 730, 690], "download_bytes": 1000},
              {"kind": "train", "state": "abandoned", "reported": 1,
               "upload_bytes": [1], "download_bytes": 5},
              {"kind": "evaluate", "state": "committed", "reported": 4,
               "upload_bytes": [300] * 4, "download_bytes": 40}]
    comm = communication(rounds, CompressionConfig("q4", True))
    assert comm["uplink_bytes_per_update"] == 710  # the median of the five accepted
    assert comm["downlink_bytes_per_task"] == 2000 and comm["encoding"] == "q4+rotate"
    assert (comm["updates"], comm["uplink_bytes_per_round"]) == (5, 1775)
    assert communication([], CompressionConfig())["uplink_bytes_per_update"] is None
    status = {"communication": {"encoding": "q4", "float32_update_bytes": 7100,
                                "last_round": {"upload_bytes_median": 710,
                                               "download_bytes": 2_500_000}}}
    assert bytes_postfix(status) == " | q4 up 0.00 MB/update (10.0x less) down 2.5 MB/round"
    assert bytes_postfix(None) == "" and bytes_postfix({"communication": {}}) == ""


def test_a_lower_quantize_min_quantizes_the_small_models_output_bias():
    from fedkb.compression.encoding import Encoding
    from fedkb.plan_codec import encode_delta

    shapes = [(10_000, 96), (10_000,)]  # an output layer and its bias, as in `small`
    rng = np.random.default_rng(1)
    arrays = [rng.normal(0, 0.01, s).astype(np.float32) for s in shapes]
    sizes = {}
    for n in (20_000, 5_000):
        plan = Plan("train", 0.5, 16, 1, 50, 3, uplink="q4", min_elements=n)
        body, _ = encode_delta(arrays, plan)
        sizes[n] = len(body)
        assert Encoding("q4", min_elements=n).compressed(10_000) == (n == 5_000)
    # the bias: 40,000 float32 bytes at the default, ~5,000 bytes of 4-bit codes (+ grids)
    assert 30_000 < sizes[20_000] - sizes[5_000] < 36_000
