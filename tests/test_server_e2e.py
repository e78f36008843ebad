"""The real server process (waitress): concurrent devices, kill -9, restart, recovery."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import requests
from server_support import ELIGIBLE, initial_weights, kill, start_server, write_artifact

from fedkb.cli import main
from fedkb.codec import decode_arrays
from fedkb.wire import UPLOAD_CONTENT_TYPE, UploadMetadata, encode_upload


class Phone:
    def __init__(self, url: str, population: str = "train") -> None:
        self.url, self.s = url, requests.Session()
        r = self.s.post(f"{url}/v1/devices", json={"population": population}, timeout=10)
        r.raise_for_status()
        self.s.headers["Authorization"] = f"Bearer {r.json()['token']}"

    def checkin(self) -> dict:
        r = self.s.post(f"{self.url}/v1/checkin", json={"conditions": ELIGIBLE}, timeout=10)
        r.raise_for_status()
        return r.json()

    def upload(self, task: dict, value: float, n: int = 2) -> requests.Response:
        w = decode_arrays(self.s.get(self.url + task["weights_url"], timeout=10).content)
        meta = UploadMetadata(task["task_id"], task["round_id"], n, 1.0)
        body = encode_upload(meta, [np.full_like(a, value) for a in w])
        return self.s.post(f"{self.url}/v1/tasks/{task['task_id']}/result", data=body,
                           headers={"Content-Type": UPLOAD_CONTENT_TYPE}, timeout=10)


@pytest.mark.e2e
def test_real_server_round_kill9_restart_recovers(tmp_path):
    artifact = write_artifact(tmp_path / "artifact")
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"tick_s": 0.1, "round": {
        "report_goal": 3, "overselect": 1.0, "min_fraction": 1.0, "selection_window_s": 60,
        "reporting_deadline_s": 60, "eval_every": 0, "pipeline": False}}))
    state, log = tmp_path / "state", tmp_path / "server.log"
    proc, url = start_server(state, artifact, config, log)
    try:
        phones = [Phone(url) for _ in range(4)]
        tasks = [p.checkin() for p in phones[:3]]
        assert all("task" in t for t in tasks)
        results: list[int] = []
        threads = [threading.Thread(target=lambda p=p, t=t: results.append(
            p.upload(t["task"], 1.0).status_code)) for p, t in zip(phones, tasks, strict=False)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert results == [200, 200, 200]
        status = requests.get(f"{url}/v1/status", timeout=10).json()
        assert status["model_version"] == 1 and status["rounds_committed"] == 1
        pending = phones[3].checkin()["task"]  # round 2 open, task out
        w1 = requests.get(f"{url}/v1/models/1/weights", timeout=10).content
        assert "fedkb_reports_total" in requests.get(f"{url}/metrics", timeout=10).text
    finally:
        kill(proc)  # kill -9: no chance to clean up
    proc, url2 = start_server(state, artifact, config, log)
    try:
        phones[3].url = url2
        status = requests.get(f"{url2}/v1/status", timeout=10).json()
        assert (status["model_version"], status["rounds_committed"]) == (1, 1)
        r2 = requests.get(f"{url2}/v1/rounds/2", timeout=10).json()
        assert (r2["state"], r2["reason"]) == ("abandoned", "server_restart")
        assert requests.get(f"{url2}/v1/models/1/weights", timeout=10).content == w1
        np.testing.assert_allclose(decode_arrays(w1)[0], initial_weights()[0] + 1.0)
        r = phones[3].upload(pending, 5.0)
        assert r.status_code == 409 and r.json()["error"]["code"] == "round_abandoned"
        assert "task" in phones[3].checkin()  # round 3 selects
    finally:
        kill(proc, signal.SIGTERM)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["server", "--config", str(tmp_path / "missing.json"),
                 "--state-dir", str(tmp_path / "s")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"round": {"overselect": 0.2}}))
    assert main(["server", "--config", str(bad)]) == 2
    assert main(["server", "--rounds", "-1"]) == 2


def test_server_start_never_imports_tensorflow(tmp_path):
    art = write_artifact(tmp_path / "art")
    code = (
        "import sys\n"
        "from fedkb.cli import build_parser\n"
        "from fedkb.server.app import create_app\n"
        "from fedkb.server.config import ServerConfig\n"
        f"app = create_app(ServerConfig(state_dir={str(tmp_path / 's')!r}, model={str(art)!r},"
        " admin_token='x'))\n"
        "assert app.test_client().get('/v1/status').json['model_version'] == 0\n"
        "build_parser()\n"
        "sys.exit(3 if 'tensorflow' in sys.modules else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.e2e
def test_a_server_started_by_the_stack_stops_when_its_parent_is_killed(tmp_path):
    import os
    import time

    artifact = write_artifact(tmp_path / "artifact")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fedkb.simulation.server_process import ServerProcess\n"
        f"s = ServerProcess(Path({str(tmp_path / 'state')!r}), model=Path({str(artifact)!r}))\n"
        "s.start()\n"
        "print(s.proc.pid, flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        server_pid = int(parent.stdout.readline())  # type: ignore[union-attr]
        parent.kill()  # SIGKILL: no clean-up code of the parent runs
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                os.waitpid(server_pid, os.WNOHANG)
            time.sleep(0.2)
        else:
            pytest.fail("the server outlived the process that started it")
    finally:
        if parent.poll() is None:
            parent.kill()
        if server_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server_pid, signal.SIGKILL)
