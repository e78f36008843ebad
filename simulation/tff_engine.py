"""TensorFlow Federated's weighted FedAvg on our model and data: the reference to agree with.

``tff.learning.algorithms.build_weighted_fed_avg`` with the same Keras model, the same
initial weights, the same masked loss, the same client batches in the same order
(:func:`fedkb.device_runtime.batching.batch_plan`), plain SGD on the clients and SGD on
the server (or the fleet server's other strategies, clipping and lr decay, exactly), clients
weighted by their number of (real, unpadded) windows.

TFF's default execution context starts ``tensorflow_federated/data/worker_binary``,
which outlives Python (ARCHITECTURE.md, "Hazards the code works around"). So TFF never runs in
the caller's process: :func:`run_tff_isolated` runs this module as a child process in
its own process group and kills the whole group afterwards, whatever happened.

Child protocol: ``python -m fedkb.simulation.tff_engine SPEC.json OUT.json`` where SPEC has
``data``, ``model`` (a ModelConfig dict), ``weights`` (a codec file of the initial
weights), ``rounds`` (per round, a list of ``[user, batch_seed]``), ``epochs``,
``max_steps``, ``client_lr`` and ``server_lr``, and optionally ``client_grad_clip`` (each
local step's gradient clipped to that global L2 norm, as the phones' LiteRT ``train``
does; :class:`~fedkb.simulation.tff_optimizers.ClippedClientSGD`) and ``strategy`` (``name``,
``lrs``: the server learning rate of each round, ``momentum``, ``nesterov``, ``beta1``,
``beta2``, ``tau``, ``clip_norm``: the fleet server's strategy, which then replaces
``server_lr``); OUT gets per-round figures and the path of the final weights
(``weights_out`` in SPEC).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.codec import decode_arrays, encode_arrays


def _wait_group_gone(pgid: int, timeout_s: float = 10.0) -> None:
    """Until no live process of group ``pgid`` is left, at most ``timeout_s``: a SIGKILLed
    worker_binary takes a moment to die (a zombie left unreaped by an init that does not
    reap counts as gone)."""
    import psutil

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        alive = []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):  # gone meanwhile
                if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        if not alive:
            return
        time.sleep(0.05)


def run_tff_isolated(spec: dict[str, Any] | list[dict[str, Any]], workdir: Path,
                     timeout: float | None = None, quiet: bool = True) -> Any:
    """Run the TFF reference in a child process group; always reap the group.

    ``spec`` may be a list of specs: one child runs them in turn and the result is the
    list of their outputs (TensorFlow and TFF are imported once: ~15 s saved a spec)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "tff_spec.json", workdir / "tff_out.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(workdir / "tff.log", "wb") if quiet else None  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedkb.simulation.tff_engine", str(spec_path), str(out_path)],
        start_new_session=True, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker_binary lives in this group
        proc.wait()
        _wait_group_gone(proc.pid)
        if log is not None:
            log.close()
    if rc != 0 or not out_path.exists():
        tail = (workdir / "tff.log").read_text(errors="replace")[-2000:] if quiet else ""
        raise RuntimeError(f"TFF reference failed (exit {rc}):\n{tail}")
    return json.loads(out_path.read_text(encoding="utf-8"))


# --- everything below runs in the child process -------------------------------------


def _client_dataset(tf, windows: np.ndarray, B: int, epochs: int, max_steps: int | None,
                    seed: int):
    from fedkb.datasets.store import windows_to_xy
    from fedkb.device_runtime.batching import batch_plan

    T = windows.shape[1] - 1
    plan = batch_plan(len(windows), B, epochs, max_steps, seed)
    xs = np.zeros((len(plan), B, T + 1), np.int32)
    for i, (_, idx) in enumerate(plan):
        xs[i, : len(idx)] = windows[idx]
    x, y, m = windows_to_xy(xs.reshape(-1, T + 1))
    shape = (len(plan), B, T)
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(mask=m.reshape(shape), x=x.reshape(shape), y=y.reshape(shape)))


def _model_fn_factory(tf, tff, cfg):
    from fedkb.model.keras_model import NextWordModel
    from fedkb.model.objective import masked_mean_loss

    B, T = cfg.batch_size, cfg.seq_len
    spec = collections.OrderedDict(mask=tf.TensorSpec((B, T), tf.float32),
                                   x=tf.TensorSpec((B, T), tf.int32),
                                   y=tf.TensorSpec((B, T), tf.int32))

    class FedkbModel(tff.learning.models.VariableModel):
        def __init__(self):
            self._model = NextWordModel(cfg)
            self._loss_sum = tf.Variable(0.0, trainable=False)
            self._tokens = tf.Variable(0.0, trainable=False)

        @property
        def trainable_variables(self):
            return self._model.weights_in_order

        @property
        def non_trainable_variables(self):
            return []

        @property
        def local_variables(self):
            return [self._loss_sum, self._tokens]

        @property
        def input_spec(self):
            return spec

        @tf.function
        def predict_on_batch(self, batch_input, training=True):
            return self._model(batch_input["x"])

        @tf.function
        def forward_pass(self, batch_input, training=True):
            logits = self._model(batch_input["x"])
            loss = masked_mean_loss(logits, batch_input["y"], batch_input["mask"])
            tokens = tf.reduce_sum(batch_input["mask"])
            self._loss_sum.assign_add(loss * tokens)
            self._tokens.assign_add(tokens)
            rows = tf.reduce_sum(tf.cast(tf.reduce_sum(batch_input["mask"], 1) > 0, tf.int32))
            return tff.learning.models.BatchOutput(loss=loss, predictions=logits,
                                                   num_examples=rows)

        @tf.function
        def report_local_unfinalized_metrics(self):
            return collections.OrderedDict(
                loss=[self._loss_sum.read_value(), self._tokens.read_value()])

        def metric_finalizers(self):
            return collections.OrderedDict(
                loss=tf.function(lambda v: v[0] / tf.maximum(v[1], 1.0)))

        @tf.function
        def reset_metrics(self):
            self._loss_sum.assign(0.0)
            self._tokens.assign(0.0)

    return FedkbModel


def _server_optimizer(tff, strategy: dict[str, Any]):
    """TFF's own server SGD for plain FedAvg at a constant rate; otherwise our strategy's
    exact update rules (:mod:`fedkb.simulation.tff_optimizers`: TFF has no Nesterov momentum
    and bias-corrects Adam)."""
    lrs = [float(x) for x in strategy["lrs"]]
    if strategy["name"] == "fedavg" and len(set(lrs)) == 1:
        return tff.learning.optimizers.build_sgdm(learning_rate=lrs[0])
    from fedkb.simulation.tff_optimizers import ServerStrategyOptimizer

    knobs = ("momentum", "nesterov", "beta1", "beta2", "tau")
    return ServerStrategyOptimizer(strategy["name"], lrs,
                                   **{k: strategy[k] for k in knobs if k in strategy})


def _child(spec_path: str, out_path: str) -> None:
    import tensorflow as tf
    import tensorflow_federated as tff

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    out = [_run(tf, tff, s) for s in spec] if isinstance(spec, list) else _run(tf, tff, spec)
    Path(out_path).write_text(json.dumps(out), encoding="utf-8")


def _run(tf, tff, spec: dict[str, Any]) -> dict[str, Any]:
    """One spec: build the FedAvg process, run its rounds, write its final weights."""
    from fedkb.datasets.store import Dataset, clip_to_vocab
    from fedkb.model.config import ModelConfig

    t_setup = time.perf_counter()
    cfg = ModelConfig.from_dict(spec["model"])
    ds = Dataset.open(spec["data"])
    weights = decode_arrays(Path(spec["weights"]).read_bytes())
    strategy = spec.get("strategy") or {"name": "fedavg", "lrs": [spec["server_lr"]]}
    clip = strategy.get("clip_norm")
    grad_clip = spec.get("client_grad_clip")
    if grad_clip is None:
        client_optimizer = tff.learning.optimizers.build_sgdm(learning_rate=spec["client_lr"])
    else:
        from fedkb.simulation.tff_optimizers import ClippedClientSGD

        client_optimizer = ClippedClientSGD(spec["client_lr"], grad_clip)
    process = tff.learning.algorithms.build_weighted_fed_avg(
        _model_fn_factory(tf, tff, cfg),
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=_server_optimizer(tff, strategy),
        # each client's delta clipped to an L2 norm before the weighted mean, like the
        # server's Clipped aggregator (TFF: the global norm over all tensors, as ours)
        model_aggregator=None if clip is None else tff.aggregators.clipping_factory(
            float(clip), tff.aggregators.MeanFactory()),
    )
    state = process.initialize()
    state = process.set_model_weights(state, tff.learning.models.ModelWeights(
        trainable=[np.asarray(w, np.float32) for w in weights], non_trainable=[]))
    setup_s = time.perf_counter() - t_setup
    rounds = []
    t_train = time.perf_counter()
    for r, clients in enumerate(spec["rounds"]):
        t0 = time.perf_counter()
        data = [_client_dataset(tf, clip_to_vocab(ds.shard(u).train, cfg.vocab_size),
                                cfg.batch_size, spec["epochs"], spec.get("max_steps"), seed)
                for u, seed in clients]
        out = process.next(state, data)
        state = out.state
        train = out.metrics["client_work"]["train"]
        rounds.append({"round": r + 1, "clients": len(clients),
                       "train_loss": float(train["loss"]), "wall_s": time.perf_counter() - t0,
                       "participants": [[u, int(seed)] for u, seed in clients]})
    final = [np.asarray(w, np.float32) for w in process.get_model_weights(state).trainable]
    Path(spec["weights_out"]).write_bytes(encode_arrays(final))
    return {"rounds": rounds, "setup_s": setup_s, "train_s": time.perf_counter() - t_train,
            "weights_out": spec["weights_out"]}


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
