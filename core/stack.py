"""Our whole stack on this machine: a real `fedkb server` process plus a fleet.

:class:`ServerProcess` starts the server as its own process group (so nothing it starts
can outlive it), waits until it listens, and always kills the group on exit, whatever
happened (an exception, Ctrl-C). :func:`run_federated` is the one call the demo, the
notebook, `fedkb simulate --engine fleet` and the benchmarks share: publish an artifact,
run the fleet until R rounds commit, and collect rounds, evaluations and final weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from fedkb.codec import decode_arrays


class ServerProcess:
    """``with ServerProcess(state_dir, model=..., config=...) as url: ...``"""

    def __init__(self, state_dir: Path, model: Path | None = None, config: Path | None = None,
                 rounds: int | None = None, host: str = "127.0.0.1", port: int = 0,
                 log: Path | None = None, admin_token: str | None = None,
                 threads: int | None = None):
        self.state_dir = Path(state_dir)
        self.cmd = [sys.executable, "-m", "fedkb", "server", "--host", host, "--port",
                    str(port), "--state-dir", str(self.state_dir), "--exit-with-parent"]
        if model is not None:
            self.cmd += ["--model", str(model)]
        if config is not None:
            self.cmd += ["--config", str(config)]
        if rounds is not None:
            self.cmd += ["--rounds", str(rounds)]
        if threads is not None:
            self.cmd += ["--threads", str(threads)]
        self.log = log or self.state_dir.parent / f"{self.state_dir.name}.log"
        self.env = {**os.environ, **({"FEDKB_ADMIN_TOKEN": admin_token} if admin_token else {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 90.0) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        info = self.state_dir / "server.json"
        info.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"fedkb server exited with {self.proc.returncode}:\n{tail}")
            if info.exists():
                with contextlib.suppress(ValueError, OSError):
                    data = json.loads(info.read_text())
                    if data.get("pid") == self.proc.pid:
                        self.url = data["url"]
                        return self.url
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fedkb server did not start within {timeout:.0f}s (log {self.log})")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def get_json(url: str, path: str) -> Any:
    return requests.get(url + path, timeout=30).json()


def _last_train_loss(url: str) -> float | None:
    """The training loss of the newest committed training round (None if unknown)."""
    try:
        rows = get_json(url, "/v1/rounds?limit=20")["rounds"]
    except (requests.RequestException, ValueError, KeyError):
        return None
    for r in rows:  # newest first
        if r.get("kind") == "train" and r.get("state") == "committed":
            return (r.get("metrics") or {}).get("loss")
    return None


def get_weights(url: str, version: int) -> list:
    r = requests.get(f"{url}/v1/models/{version}/weights", timeout=60)
    r.raise_for_status()
    return decode_arrays(r.content)


@dataclass
class FederatedRun:
    """What a federated run leaves behind, read back from the server."""

    url: str
    fleet: dict[str, Any]
    status: dict[str, Any]
    rounds: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    final_weights: list = field(repr=False, default_factory=list)
    wall_s: float = 0.0
    # the fleet's log of accepted training reports: [round_id, user, batch_seed] each
    accepted: list[list] = field(repr=False, default_factory=list)
    stalled: bool = False  # stopped: rounds kept being abandoned, or the model diverged


def write_round_config(path: Path, round_cfg: dict[str, Any],
                       strategy: dict[str, Any] | None = None) -> Path:
    """A server config file (JSON) with ``round`` and optional ``strategy`` tables."""
    doc: dict[str, Any] = {"round": round_cfg}
    if strategy:
        doc["strategy"] = strategy
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def run_federated(url: str, data: Path, devices: int, rounds: int, workers: int,
                  speedup: float = 60.0, start_hour: float = 22.0, seed: int = 0,
                  on_progress: Callable | None = None, final_eval: bool = True,
                  eval_timeout_s: float = 120.0, timeout_s: float | None = None,
                  stall_rounds: int | None = 25, claim_hold_s: float = 0.0) -> FederatedRun:
    """Run a fleet against the server at ``url`` until it has committed ``rounds`` rounds.

    With ``final_eval``, the fleet keeps going (at most ``eval_timeout_s`` more) until the
    held-out phones have evaluated the final model version too. ``timeout_s`` bounds the
    whole run (the fleet then stops wherever it is: rounds may be fewer than asked).
    ``stall_rounds``: stop (``stalled``) once that many training rounds in a row were
    abandoned: a diverged model whose phones can no longer finish, or no phone eligible,
    would otherwise keep the run going forever. With it, a committed training round whose
    loss says the model diverged (:func:`fedkb.federated.diverged`) stops the run at once
    (it used to take the 25 abandoned rounds that follow: ~4.5 minutes in the bench).
    ``claim_hold_s``: see :class:`~fedkb.device_runtime.fleet.FleetConfig` (the server
    needs spare WSGI threads: ``ServerProcess(threads=...)``).
    """
    from fedkb.device_runtime.fleet import Fleet, FleetConfig
    from fedkb.federated import diverged

    t0 = time.monotonic()
    trained_at: list[float] = []
    progress = {"committed": -1, "abandoned": 0, "stalled": False}

    def done(status: dict[str, Any]) -> bool:
        committed, abandoned = status.get("rounds_committed", 0), status.get(
            "rounds_abandoned", 0)
        if committed != progress["committed"]:
            progress.update(committed=committed, abandoned=abandoned)
            if stall_rounds is not None and committed > 0 and diverged(_last_train_loss(url)):
                progress["stalled"] = True
                return True
        elif stall_rounds is not None and abandoned - progress["abandoned"] >= stall_rounds:
            progress["stalled"] = True
            return True
        if committed < rounds:
            return False
        if not final_eval:
            return True
        trained_at.append(time.monotonic()) if not trained_at else None
        if time.monotonic() - trained_at[0] > eval_timeout_s:
            return True
        evals = get_json(url, "/v1/evaluations")["evaluations"]
        return any(e["model_version"] >= status["model_version"] for e in evals)

    fleet = Fleet(FleetConfig(url, Path(data), devices, speedup=speedup, start_hour=start_hour,
                              workers=workers, rounds=rounds, seed=seed,
                              duration_s=timeout_s, claim_hold_s=claim_hold_s),
                  on_progress=on_progress, stop_when=done)
    summary = fleet.run()
    wall = time.monotonic() - t0
    status = get_json(url, "/v1/status")
    rows = get_json(url, "/v1/rounds?limit=1000")["rounds"]
    evals = get_json(url, "/v1/evaluations")["evaluations"]
    final = get_weights(url, status["model_version"])
    return FederatedRun(url, summary, status, sorted(rows, key=lambda r: r["id"]), evals,
                        final, wall, fleet.accepted, bool(progress["stalled"]))
