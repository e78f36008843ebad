"""Compressed updates through the server (issue 17): bytes on the wire and what they cost.

For the ``small`` and ``gboard`` presets' weight shapes and each uplink encoding
(float32; q8, q4, q2, each with and without the rotation) it runs a real server (the
Flask app over its WSGI stack, a fake clock, a dummy model file) and measures:

- ``content_length``: the upload's request Content-Length as the server recorded it
  (``RoundStats.upload_bytes``), for a task whose plan asks for that encoding;
- ``encode_ms``: the phone's encode of one update (:func:`encode_delta`), median;
- ``decode_ms``: the server's decode and validation of one upload
  (:func:`parse_upload`: framing, decode/dequantize, shape and norm checks), median;
- ``fold_ms``: folding one decoded update into the round's clipped weighted mean;
- ``updates_per_s``: 1 / (decode + fold), what one server thread sustains;
- ``rel_l2``: the relative L2 error of one decoded update (Gaussian delta, std 0.01).

Times are CPU seconds of this process (:func:`time.process_time`), not wall time: the
VM's two cores are shared with other jobs, which inflates wall times but less so CPU
time. The phone's encode uses the same NumPy code a phone would run.

``--fold`` also compares, for q8/q4/q2, the float fold of dequantized updates with an
integer-sum fold on a shared ``[-R, R]`` grid that is dequantized once per round.
``--downlink`` lists a task's download bytes: weights float32 vs float16, the artifact
files (once per phone), the task JSON and the manifest.

    uv run --frozen --no-sync python bench/bench_compression_wire.py --runs 5 --fold \\
        --downlink --json /tmp/wire.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fedkb.artifact import MODEL_FILE, WEIGHTS_FILE, initial_weights_file
from fedkb.artifact import write_artifact as write_artifact_files
from fedkb.codec import encode_arrays
from fedkb.compression.quantize import (
    codes_to_ints,
    dequantize,
    dequantize_sum,
    quantize,
    shared_grid,
)
from fedkb.model.config import get_preset
from fedkb.model.weights import weight_specs
from fedkb.plan_codec import encode_delta, float16_weights
from fedkb.server.aggregate import mean_factory
from fedkb.server.app import create_app
from fedkb.server.config import CompressionConfig, RoundConfig, ServerConfig, StrategyConfig
from fedkb.server.uploads import UploadLimits, parse_upload
from fedkb.wire import Task, UploadMetadata, frame_upload

ENCODINGS = [("float32", False)] + [(n, r) for n in ("q8", "q4", "q2") for r in (False, True)]
ELIGIBLE = {"charging": True, "unmetered": True, "idle": True, "battery": 0.9}


def _artifact(path: Path, preset: str) -> tuple[Path, list]:
    specs = weight_specs(get_preset(preset))
    w0 = [np.random.default_rng(3).normal(0, 0.1, s.shape).astype(np.float32) for s in specs]
    meta = {"preset": preset, "batch_size": 16, "seq_len": 20, "vocab_size": 10000,
            "weights": [s.to_json() for s in specs]}
    write_artifact_files(path, meta, {MODEL_FILE: b"TFL3-dummy",
                                      WEIGHTS_FILE: initial_weights_file(specs, w0)})
    return path, specs


def _task(tmp: Path, art: Path, comp: CompressionConfig):
    cfg = ServerConfig(state_dir=tmp / "state", admin_token="x", seed=0, model=art,
                       compression=comp, round=RoundConfig(report_goal=1, overselect=1.0,
                                                           eval_every=0, pipeline=False),
                       strategy=StrategyConfig(clip_norm=4.0))
    app = create_app(cfg, clock=lambda: 1e6)
    c = app.test_client()
    dev = c.post("/v1/devices", json={"population": "train"}).get_json()
    auth = {"Authorization": f"Bearer {dev['token']}"}
    task = c.post("/v1/checkin", headers=auth, json={"conditions": ELIGIBLE}).get_json()["task"]
    return app, c, auth, task


def _rel_l2(a, b) -> float:
    num = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a, b, strict=True))
    return (num / sum(float(np.sum(x.astype(np.float64) ** 2)) for x in a)) ** 0.5


def bench(preset: str, runs: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        art, specs = _artifact(Path(d) / "art", preset)
        delta = [rng.normal(0, 0.01, s.shape).astype(np.float32) for s in specs]
        for i, (name, rot) in enumerate(ENCODINGS):
            tmp = Path(d) / f"s{i}"
            app, c, auth, task = _task(tmp, art, CompressionConfig(uplink=name, rotate=rot))
            plan = Task.from_json(task).plan
            enc_s, dec_s, fold_s = [], [], []
            for _ in range(runs):
                t0 = time.process_time()
                payload, _wall = encode_delta(delta, plan)
                enc_s.append(time.process_time() - t0)
            meta = UploadMetadata(task["task_id"], task["round_id"], 16, 5.0, {},
                                  {"download_bytes": 0.0})
            body = frame_upload(meta, payload)
            limits = UploadLimits(1e9, 10**9)
            for _ in range(runs):
                t0 = time.process_time()
                _, arrays = parse_upload(body, task["task_id"], task["round_id"], "train",
                                         specs, lambda _r: True, limits, plan)
                t1 = time.process_time()
                mean_factory(specs, 4.0).accumulate(arrays, 16.0)
                dec_s.append(t1 - t0)
                fold_s.append(time.process_time() - t1)
            r = c.post(f"/v1/tasks/{task['task_id']}/result", data=body,
                       headers={**auth, "Content-Type": "application/x-fedkb-update"})
            assert r.status_code == 200, r.get_json()
            row = json.loads(app.extensions["fedkb"].db.one(
                "SELECT stats FROM rounds WHERE id = 1")["stats"])
            app.extensions["fedkb"].close()
            dec, fold = statistics.median(dec_s), statistics.median(fold_s)
            rows.append({"preset": preset, "encoding": name, "rotate": rot,
                         "content_length": row["upload_bytes"][0],
                         "float32_codec_bytes": len(encode_arrays(delta)),
                         "encode_ms": round(1e3 * statistics.median(enc_s), 2),
                         "decode_ms": round(1e3 * dec, 2), "fold_ms": round(1e3 * fold, 2),
                         "updates_per_s": round(1 / (dec + fold), 1),
                         "rel_l2": round(_rel_l2(delta, arrays), 5)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_fold(preset: str, clients: int) -> list[dict]:
    """Float fold of dequantized updates vs integer sum of shared-grid codes, per update."""
    specs = weight_specs(get_preset(preset))
    big = [s for s in specs if int(np.prod(s.shape)) >= 20_000]
    n = sum(int(np.prod(s.shape)) for s in big)
    rng = np.random.default_rng(1)
    xs = [rng.normal(0, 0.01, n).astype(np.float32) for _ in range(clients)]
    rows = []
    for bits in (8, 4, 2):
        private = [quantize(x, bits, 2048, rng) for x in xs]
        grid = shared_grid(n, bits, 0.05, 2048)
        shared = [quantize(x, bits, 2048, rng, grid=grid) for x in xs]
        t0 = time.process_time()
        acc = np.zeros(n, np.float64)
        for q in private:
            acc += dequantize(q)
        t_float = (time.process_time() - t0) / clients
        t0 = time.process_time()
        isum = np.zeros(n, np.int64)
        for q in shared:
            isum += codes_to_ints(q)
        total = dequantize_sum(isum, clients, grid)
        t_int = (time.process_time() - t0) / clients
        check = sum(dequantize(q).astype(np.float64) for q in shared)
        rows.append({"preset": preset, "bits": bits, "values": n, "clients": clients,
                     "float_fold_ms": round(1e3 * t_float, 2),
                     "int_fold_ms": round(1e3 * t_int, 2),
                     "int_vs_float_sum_max_abs": float(np.max(np.abs(total - check)))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_downlink(artifact_dir: Path | None) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        art, specs = _artifact(Path(d) / "art", "small")
        app, c, _auth, task = _task(Path(d), art, CompressionConfig(downlink="float16"))
        man = c.get(task["artifact_url"])
        m = man.get_json()
        w32 = c.get(m["weights"]["url"])
        w16 = c.get(m["weights_float16"]["url"])
        again = c.get(m["weights"]["url"], headers={"If-None-Match": w32.headers["ETag"]})
        out = {"task_json_bytes": len(json.dumps({"task": task})),
               "manifest_bytes": len(man.data), "weights_float32_bytes": len(w32.data),
               "weights_float16_bytes": len(w16.data),
               "weights_again_with_etag": {"status": again.status_code,
                                           "bytes": len(again.data)}}
        app.extensions["fedkb"].close()
    if artifact_dir is not None and (artifact_dir / "metadata.json").is_file():
        meta = json.loads((artifact_dir / "metadata.json").read_text())
        out["artifact_bytes"] = {"model_file": (artifact_dir / meta["model_file"]).stat().st_size,
                                 "metadata.json": (artifact_dir / "metadata.json").stat().st_size}
    w = [np.random.default_rng(2).normal(0, 0.1, s.shape).astype(np.float32) for s in specs]
    h = float16_weights(w)
    out["float16_rel_l2_of_weights"] = round(_rel_l2(w, h), 6)
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--presets", default="small,gboard")
    ap.add_argument("--fold", action="store_true")
    ap.add_argument("--downlink", action="store_true")
    ap.add_argument("--artifact", type=Path, default=Path("runs/demo/data/models/small"))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    doc: dict = {"wire": [r for p in args.presets.split(",") for r in bench(p, args.runs)]}
    if args.fold:
        doc["fold"] = bench_fold("small", 20)
    if args.downlink:
        doc["downlink"] = bench_downlink(args.artifact)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
