"""Helpers for the server tests: a fake model artifact, a fake clock, a device client."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.artifact import MODEL_FILE, WEIGHTS_FILE, initial_weights_file
from fedkb.artifact import write_artifact as write_artifact_files
from fedkb.server.app import create_app
from fedkb.server.config import RoundConfig, ServerConfig, StrategyConfig
from fedkb.weights import WeightSpec
from fedkb.wire import UPLOAD_CONTENT_TYPE, UploadMetadata, encode_upload

SPECS = [("embedding", (6, 3)), ("rnn_kernel", (3, 4)), ("output_bias", (6,))]
ADMIN = "admin-secret"
SERVER_KEYS = ("max_upload_bytes", "token_ttl_s", "secret_key", "tick_s", "threads")
ELIGIBLE = {"charging": True, "unmetered": True, "idle": True, "battery": 0.9}


def initial_weights() -> list[np.ndarray]:
    return [np.arange(np.prod(s), dtype=np.float32).reshape(s) / 10 for _, s in SPECS]


def write_artifact(path: Path, weights: list[np.ndarray] | None = None) -> Path:
    """A fake exported artifact: metadata.json + weights.safetensors + dummy model.tflite.

    No vocabulary: it cannot serve predictions (nor could its model.tflite).
    """
    specs = [WeightSpec(n, s) for n, s in SPECS]
    files = {MODEL_FILE: b"TFL3-dummy-model", WEIGHTS_FILE: initial_weights_file(
        specs, weights if weights is not None else initial_weights())}
    meta = {"preset": "fake", "batch_size": 4, "seq_len": 5, "vocab_size": 6,
            "weights": [s.to_json() for s in specs]}
    write_artifact_files(path, meta, files)
    return path


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def make_config(tmp: Path, model: bool = True, strategy: StrategyConfig | None = None,
                **round_kw: Any) -> ServerConfig:
    server_kw = {k: round_kw.pop(k) for k in SERVER_KEYS if k in round_kw}
    rc = {"report_goal": 2, "overselect": 1.5, "min_fraction": 0.5, "selection_window_s": 10,
          "reporting_deadline_s": 20, "eval_every": 0, "retry_jitter": 0.0, **round_kw}
    return ServerConfig(state_dir=tmp / "state", admin_token=ADMIN, seed=0,
                        model=write_artifact(tmp / "artifact") if model else None,
                        round=RoundConfig(**rc), strategy=strategy or StrategyConfig(),
                        **server_kw)


@dataclass
class Harness:
    app: Any
    client: Any
    clock: FakeClock

    @property
    def state(self) -> Any:
        return self.app.extensions["fedkb"]

    def register(self, population: str = "train") -> Device:
        r = self.client.post("/v1/devices", json={"population": population})
        assert r.status_code == 201, r.get_json()
        d = r.get_json()
        return Device(self, d["device_id"], d["token"])

    def status(self) -> dict[str, Any]:
        return self.client.get("/v1/status").get_json()

    def global_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.state.machine.model.weights]

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        return self.client.open(path, method=method,
                                headers={"Authorization": f"Bearer {ADMIN}"}, **kw)


@dataclass
class Device:
    h: Harness
    id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def checkin(self, **cond: Any) -> dict[str, Any]:
        r = self.h.client.post("/v1/checkin", headers=self.auth,
                               json={"conditions": {**ELIGIBLE, **cond}})
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    def task(self) -> dict[str, Any]:
        body = self.checkin()
        assert "task" in body, body
        return body["task"]

    def upload_raw(self, task_id: str, body: bytes, content_type: str = UPLOAD_CONTENT_TYPE,
                   **headers: str) -> Any:
        return self.h.client.post(f"/v1/tasks/{task_id}/result", data=body,
                                  headers={**self.auth, "Content-Type": content_type, **headers})

    def upload(self, task: dict[str, Any], delta: list[np.ndarray] | None, n: int = 1,
               loss: float | None = 1.0, **metrics: float) -> Any:
        meta = UploadMetadata(task["task_id"], task["round_id"], n, loss, dict(metrics))
        return self.upload_raw(task["task_id"], encode_upload(meta, delta))

    def abort(self, task_id: str, reason: str = "not_charging") -> Any:
        return self.h.client.post(f"/v1/tasks/{task_id}/abort", headers=self.auth,
                                  json={"reason": reason})


def harness(tmp: Path, clock: FakeClock | None = None, **kw: Any) -> Harness:
    clock = clock or FakeClock()
    app = create_app(make_config(tmp, **kw), clock=clock)
    return Harness(app, app.test_client(), clock)


def deltas(value: float) -> list[np.ndarray]:
    return [np.full(s, value, dtype=np.float32) for _, s in SPECS]


# --- real server processes -------------------------------------------------------------

E2E_ADMIN = "e2e-admin"  # the admin token of servers started by start_server


def start_server(state: Path, artifact: Path, config: Path, log: Path, port: int = 0,
                 ) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "FEDKB_ADMIN_TOKEN": E2E_ADMIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedkb", "server", "--host", "127.0.0.1", "--port", str(port),
         "--state-dir", str(state), "--model", str(artifact), "--config", str(config)],
        stdout=subprocess.PIPE, stderr=log.open("ab"), env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    line = b""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if b"listening on" in line:
                return proc, line.split(b"listening on ")[1].split()[0].decode()
    kill(proc)
    raise AssertionError(f"server did not start: {line!r}\n{log.read_text()[-3000:]}")


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()
