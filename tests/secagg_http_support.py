"""Secure rounds through the real server (create_app + Flask's test client) and the real
phone code (fedkb.device_runtime.secagg_client.SecureTask): helpers for the HTTP tests.

:class:`TestTransport` gives SecureTask the two calls of ``DeviceClient`` it uses, over
the test client, with the same failure modes (``Refused`` on a 4xx), so every message
crosses the HTTP boundary as JSON. :class:`SecureHarness` runs a round phase by phase and
lets a test drop phones, tamper with messages and move the fake clock past deadlines. A
phone's masked input goes framed (FKBS), as a phone sends it; tampers see its JSON form.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from server_support import Device, FakeClock, Harness, make_config

from fedkb import wire
from fedkb.artifact import MODEL_FILE, WEIGHTS_FILE, initial_weights_file
from fedkb.artifact import write_artifact as write_artifact_files
from fedkb.device_runtime.client import Refused
from fedkb.device_runtime.secagg_client import DONE, STOPPED, WAIT, SecureTask
from fedkb.plan_codec import ROUNDING_STREAM
from fedkb.secagg.update_codec import encode_codes, example_weight
from fedkb.server.app import create_app
from fedkb.server.config import (
    ClientConfig,
    CompressionConfig,
    PrivacyConfig,
    SecAggConfig,
    StrategyConfig,
)
from fedkb.weights import WeightSpec

CLIP = 4.0
# a fake model big enough for a uniformity test of one masked vector (8,448 entries)
SPECS = [("embedding", (64, 64)), ("rnn_kernel", (64, 64)), ("output_bias", (200,))]


def write_artifact(path: Path) -> Path:
    specs = [WeightSpec(n, s) for n, s in SPECS]
    weights = [np.zeros(s, np.float32) for _, s in SPECS]
    files = {MODEL_FILE: b"TFL3-dummy-model", WEIGHTS_FILE: initial_weights_file(specs, weights)}
    meta = {"preset": "fake", "batch_size": 4, "seq_len": 5, "vocab_size": 64,
            "weights": [s.to_json() for s in specs]}
    write_artifact_files(path, meta, files)
    return path


class TestTransport:
    """``secagg_step`` / ``secagg_submit`` of DeviceClient over Flask's test client."""

    __test__ = False

    def __init__(self, h: Harness, tamper: Callable[[str, dict], dict] | None = None) -> None:
        self.h, self.tamper = h, tamper
        self.sent: list[tuple[str, dict]] = []  # (task id, body) of every submit

    def _check(self, r: Any) -> dict:
        if r.status_code >= 400:
            err = r.get_json()["error"]
            raise Refused(r.status_code, err["code"], err["message"])
        return r.get_json()

    def secagg_step(self, token: str, task_id: str, wait_s: float = 0.0) -> wire.SecAggStep:
        query = f"?wait_ms={round(wait_s * 1000)}" if wait_s > 0 else ""
        r = self.h.client.get(f"/v1/tasks/{task_id}/secagg{query}",
                              headers={"Authorization": f"Bearer {token}"})
        return wire.SecAggStep.from_json(self._check(r))

    def secagg_submit(self, token: str, task_id: str, body: bytes,
                      content_type: str = "application/json") -> wire.SecAggAck:
        """Sends what the phone sent, as it sent it (a framed masked input stays framed);
        ``tamper`` and ``sent`` see every body as its JSON form (the vector base64)."""
        framed = content_type == wire.SECAGG_CONTENT_TYPE
        d = as_json_form(body, framed)
        if self.tamper is not None:
            d = self.tamper(task_id, d)
        self.sent.append((task_id, d))
        r = self.post_framed(token, task_id, d) if framed else self.post(token, task_id, d)
        return wire.SecAggAck.from_json(self._check(r))

    def post(self, token: str, task_id: str, body: dict) -> Any:
        return self.h.client.post(f"/v1/tasks/{task_id}/secagg", data=json.dumps(body),
                                  headers={"Authorization": f"Bearer {token}",
                                           "Content-Type": "application/json"})

    def post_framed(self, token: str, task_id: str, body: dict) -> Any:
        """``body`` (a masked input's JSON form) framed as FKBS, as a phone sends it."""
        return self.h.client.post(f"/v1/tasks/{task_id}/secagg", data=framed_form(body),
                                  headers={"Authorization": f"Bearer {token}",
                                           "Content-Type": wire.SECAGG_CONTENT_TYPE})


def as_json_form(body: bytes, framed: bool) -> dict:
    """A POST body as the JSON form of the submit (a framed vector as base64 ``data``)."""
    if not framed:
        return json.loads(body)
    sub, data = wire.split_secagg(body)
    d = sub.to_json()
    d["message"] = {**d["message"], "data": base64.b64encode(bytes(data)).decode("ascii")}
    return d


def framed_form(d: dict) -> bytes:
    """The inverse of :func:`as_json_form` for a masked input (``data`` out of the JSON)."""
    msg = dict(d["message"])
    data = base64.b64decode(msg.pop("data"))
    return wire.frame_secagg(wire.SecAggSubmit.from_json({**d, "message": msg}), data)


def phone_delta(i: int, scale: float = 0.3) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + i)
    return [rng.normal(0, scale, s).astype(np.float32) for _, s in SPECS]


@dataclass
class Member:
    device: Device
    task: wire.Task
    secure: SecureTask
    state: str = WAIT
    refused: list[str] = field(default_factory=list)


def secure_harness(tmp: Path, n: int = 5, threshold: float = 0.6,
                   neighbours: int | None = None, bits: str = "q8",
                   privacy: PrivacyConfig | None = None, client: ClientConfig | None = None,
                   **round_kw: Any) -> Harness:
    round_kw.setdefault("min_fraction", 0.6)
    round_kw.setdefault("strategy", StrategyConfig(clip_norm=CLIP))
    cfg = make_config(tmp, model=False, report_goal=n, overselect=1.0, **round_kw)
    cfg = cfg.replace(model=write_artifact(tmp / "artifact"),
                      compression=CompressionConfig(uplink=bits),
                      privacy=privacy or PrivacyConfig(), client=client or ClientConfig(),
                      secagg=SecAggConfig(enabled=True, threshold=threshold,
                                          neighbours=neighbours, phase_deadline_s=10.0))
    clock = FakeClock()
    app = create_app(cfg, clock=clock)
    return Harness(app, app.test_client(), clock)


class SecureHarness:
    """n phones of one secure round, stepped together."""

    def __init__(self, h: Harness, n: int, tamper: Callable[[str, dict], dict] | None = None,
                 examples: list[int] | None = None) -> None:
        self.h, self.n = h, n
        self.transport = TestTransport(h, tamper)
        devices = [h.register() for _ in range(n)]
        self.members: list[Member] = []
        for i, d in enumerate(devices):
            task = wire.Task.from_json(d.task())
            n_i = 10 + i if examples is None else examples[i]
            self.members.append(Member(d, task, SecureTask(task, phone_delta(i), n_i, 1.0)))
        self.round_id = self.members[0].task.round_id
        self.round = h.state.machine.open[self.round_id]  # kept: it outlives the commit

    @property
    def machine(self) -> Any:
        return self.h.state.machine

    def phase(self) -> str:
        return self.round.phase.name if self.round.is_open else self.round.state

    def step_all(self, skip: set[int] = frozenset(),
                 drop: dict[str, set[int]] | None = None) -> None:
        """Every phone still in the protocol (and not in ``skip``) makes one exchange;
        ``skip`` grows by ``drop[phase]`` as the round reaches each phase."""
        for i, m in enumerate(self.members):
            if drop and self.round.is_open:
                skip |= drop.get(self.phase(), set())
            if i in skip or m.state != WAIT:
                continue
            try:
                m.state, _ = m.secure.advance(self.transport, m.device.token)
            except Refused as r:
                m.refused.append(r.code)
                m.state = STOPPED

    def run(self, drop: dict[str, set[int]] | None = None, max_steps: int = 40) -> None:
        """Step until the round closes; phones in ``drop[phase]`` go silent from that
        phase on; the clock jumps past a phase's deadline when nobody can move it."""
        drop = drop or {}
        silent: set[int] = set()
        for _ in range(max_steps):
            if not self.round.is_open:
                break
            silent |= drop.get(self.phase(), set())
            before = (self.phase(), self.round.phase_index)
            self.step_all(silent, drop)
            self.step_all(silent, drop)
            if self.round.is_open and (self.phase(), self.round.phase_index) == before:
                self.h.clock.advance(self.round.phase.deadline_s + 1)
                self.machine.tick()
        # the phones still waiting learn the outcome
        self.step_all(silent)

    def codes(self, i: int) -> np.ndarray:
        """Phone i's plaintext codes, encoded exactly as its SecureTask does."""
        m = self.members[i]
        rng = np.random.default_rng([m.task.plan.seed, ROUNDING_STREAM])
        layout = self.round.secure.layout
        return encode_codes(phone_delta(i), layout, rng, self.weight(i)).codes

    def weight(self, i: int) -> float:
        """Phone i's scale: its example weight in an example-weighted round, else 1."""
        cap = self.round.secure.weight_cap
        return example_weight(self.members[i].secure.num_examples, cap) if cap else 1.0


def done(sh: SecureHarness) -> list[int]:
    return [i for i, m in enumerate(sh.members) if m.state == DONE]
