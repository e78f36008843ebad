"""On-device training with the LiteRT interpreter (no TensorFlow).

A :class:`Trainer` loads an artifact's ``model.tflite`` once and keeps one interpreter
with its signature runners; it can serve any number of emulated devices in turn, since
every task starts with ``set_weights`` (the converter may not keep initial values, so
the trainer refuses to run before weights were set).

Typical use by a device::

    trainer = Trainer(artifact_dir)
    result = trainer.train(global_weights, shard.train, epochs=1, max_steps=50, lr=0.5)
    upload(result.delta, result.num_examples, result.mean_loss)

or step by step, to stop when the phone is unplugged::

    session = trainer.start_training(global_weights, shard.train, epochs=1)
    for step in session:
        if not conditions_hold():
            break                       # session.result() still works (partial delta)
    result = session.result()

Batching follows :func:`fedkb.device_runtime.batching.batch_plan` (shared with the TFF
reference); the last batch is padded with empty rows whose mask is 0.
Token ids at or above the model's V become OOV (a dataset vocabulary may be larger).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from fedkb.artifact import BOS, OOV, PAD, Artifact
from fedkb.device_runtime.batching import batch_plan
from fedkb.metrics import RecallCounts
from fedkb.weights import WeightsError, check_weights

__all__ = ["EvalResult", "StepInfo", "TrainResult", "TrainSession", "Trainer", "WeightsError"]


@dataclass(frozen=True)
class StepInfo:
    """One training step: its index (from 0), epoch, loss before the step, real rows."""

    step: int
    epoch: int
    loss: float
    rows: int
    grad_norm: float = float("nan")  # the step's gradient norm before clipping (nan: unknown)


@dataclass(frozen=True)
class TrainResult:
    """The outcome of local training.

    ``delta`` is new weights minus the weights training started from (metadata order).
    ``num_examples`` counts distinct windows used at least once; ``examples_processed``
    counts every row of every step (epochs included). ``mean_loss`` is the
    token-weighted mean of the step losses (0.0 when no step ran). ``clipped_steps``
    counts the steps whose gradient norm was over the session's ``grad_clip``.
    """

    delta: list[np.ndarray]
    num_examples: int
    examples_processed: int
    mean_loss: float
    steps: int
    completed: bool  # False when stopped before the planned epochs/steps
    clipped_steps: int = 0
    max_grad_norm: float = 0.0  # the largest step gradient norm before clipping


@dataclass(frozen=True)
class EvalResult:
    """Sums over a shard; recall is over in-vocabulary targets (``iv_count``)."""

    loss_sum: float
    count: int
    iv_count: int
    top1_hits: int
    top3_hits: int
    num_examples: int

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.count if self.count else 0.0

    @property
    def counts(self) -> RecallCounts:
        """The recall sums in the form every engine reports (fedkb.metrics)."""
        return RecallCounts(self.iv_count, self.top1_hits, self.top3_hits)

    @property
    def top1_recall(self) -> float:
        return self.counts.top1_recall

    @property
    def top3_recall(self) -> float:
        return self.counts.top3_recall


class _QuietFirstCall:
    """A signature runner whose first call (where LiteRT applies its XNNPACK delegate and
    prints an INFO line about it) runs with native stderr silenced."""

    __slots__ = ("_first", "_runner")

    def __init__(self, runner: Any):
        self._runner, self._first = runner, True

    def __call__(self, **inputs: Any) -> Any:
        if not self._first:
            return self._runner(**inputs)
        from fedkb.device_runtime.quiet import quiet_native_stderr

        with quiet_native_stderr():
            out = self._runner(**inputs)
        self._first = False
        return out

    def get_input_details(self) -> Any:
        return self._runner.get_input_details()


class Trainer:
    """Train, evaluate and predict with one artifact through LiteRT signature runners."""

    def __init__(self, artifact: str | Path | Artifact, num_threads: int | None = 1):
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        self.meta = self.artifact.meta
        self.specs = self.artifact.specs
        self.names = self.artifact.weight_names
        self.V, self.T, self.B = (self.artifact.vocab_size, self.artifact.seq_len,
                                  self.artifact.batch_size)
        self.infer_batch = int(self.meta["infer_batch"])
        self.interpreter = Interpreter(model_content=self.artifact.model_bytes,
                                       num_threads=num_threads)
        self._runners = {name: _QuietFirstCall(self.interpreter.get_signature_runner(name))
                         for name in self.interpreter.get_signature_list()}
        self._has_weights = False
        # graph revision 3 on: train(..., grad_clip) -> {loss, grad_norm}
        self.can_clip = "grad_clip" in self._runners["train"].get_input_details()
        self.last_grad_norm = float("nan")

    # -- weights ----------------------------------------------------------------------

    def set_weights(self, weights: list[np.ndarray] | dict[str, np.ndarray]) -> None:
        """Load weights into the interpreter (validated: count, shape, float32, finite)."""
        arrays = check_weights(self.specs, weights)
        self._runners["set_weights"](**dict(zip(self.names, arrays, strict=True)))
        self._has_weights = True

    def get_weights(self) -> list[np.ndarray]:
        """The interpreter's current weights, in metadata order."""
        self._require_weights()
        out = self._runners["get_weights"]()
        return [np.array(out[n], dtype=np.float32) for n in self.names]

    def _require_weights(self) -> None:
        if not self._has_weights:
            raise RuntimeError("set_weights must be called first (the .tflite file does not "
                               "reliably carry initial values)")

    # -- data -------------------------------------------------------------------------

    def _check_windows(self, windows: Any) -> np.ndarray:
        w = np.asarray(windows)
        if w.ndim != 2 or w.shape[1] != self.T + 1:
            raise ValueError(f"windows must have shape (n, {self.T + 1}), got {w.shape}")
        if w.size and w.dtype.kind not in "iu":
            raise ValueError(f"windows must hold integer token ids, got {w.dtype}")
        w = w.astype(np.int64)
        if w.size and w.min() < 0:
            raise ValueError("windows hold negative token ids")
        return np.where(w >= self.V, OOV, w).astype(np.int32)

    def _batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (r <= B, T+1) -> x, y, mask of the fixed batch B; padded rows are masked."""
        full = np.full((self.B, self.T + 1), PAD, dtype=np.int32)
        full[: len(rows)] = rows
        y = full[:, 1:]
        return np.ascontiguousarray(full[:, :-1]), np.ascontiguousarray(y), \
            (y != PAD).astype(np.float32)

    # -- training ---------------------------------------------------------------------

    def step(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, lr: float,
             grad_clip: float | None = None) -> float:
        """One SGD step on one fixed-size batch, its gradient clipped to global L2 norm
        ``grad_clip`` (None or 0: not clipped); returns the loss before the step and
        keeps the gradient's norm before clipping in ``last_grad_norm``."""
        self._require_weights()
        clip = _clip_input(grad_clip)
        if not self.can_clip:
            if clip > 0:
                raise ValueError("this artifact's train signature has no grad_clip input "
                                 "(graph revision < 3): export it again to clip on the device")
            out = self._runners["train"](x=x, y=y, mask=mask, lr=np.float32(lr))
            self.last_grad_norm = float("nan")
            return float(out["loss"])
        out = self._runners["train"](x=x, y=y, mask=mask, lr=np.float32(lr), grad_clip=clip)
        self.last_grad_norm = float(out["grad_norm"])
        return float(out["loss"])

    def start_training(self, weights: list[np.ndarray] | dict[str, np.ndarray],
                       windows: np.ndarray, epochs: int = 1, max_steps: int | None = None,
                       lr: float | None = None, seed: int = 0,
                       grad_clip: float | None = None) -> TrainSession:
        """Set ``weights`` and return a session that trains one step per iteration
        (each step's gradient clipped to global L2 norm ``grad_clip``; None: not)."""
        if epochs < 1:
            raise ValueError("epochs must be at least 1")
        if max_steps is not None and max_steps < 0:
            raise ValueError("max_steps must be >= 0")
        data = self._check_windows(windows)
        self.set_weights(weights)
        start = [np.array(a, copy=True) for a in check_weights(self.specs, weights)]
        _clip_input(grad_clip)  # refuse a bad bound before any step
        return TrainSession(self, start, data, epochs, max_steps,
                            self.artifact.learning_rate if lr is None else float(lr), seed,
                            grad_clip)

    def train(self, weights: list[np.ndarray] | dict[str, np.ndarray], windows: np.ndarray,
              epochs: int = 1, max_steps: int | None = None, lr: float | None = None,
              seed: int = 0, should_stop: Callable[[StepInfo], bool] | None = None,
              grad_clip: float | None = None) -> TrainResult:
        """Train E epochs (at most ``max_steps`` steps) over a shard's (n, T+1) windows.

        ``should_stop(step_info)`` is called after each step; returning True ends
        training early (the result then has ``completed=False``).
        """
        session = self.start_training(weights, windows, epochs, max_steps, lr, seed, grad_clip)
        for info in session:
            if should_stop is not None and should_stop(info):
                break
        return session.result()

    # -- evaluation and prediction ----------------------------------------------------

    def evaluate(self, weights: list[np.ndarray] | dict[str, np.ndarray] | None,
                 windows: np.ndarray) -> EvalResult:
        """Loss and top-k hit sums over all windows (``weights=None``: current weights)."""
        data = self._check_windows(windows)
        if weights is not None:
            self.set_weights(weights)
        self._require_weights()
        sums = dict.fromkeys(("loss_sum", "count", "iv_count", "top1_hits", "top3_hits"), 0.0)
        for i in range(0, len(data), self.B):
            x, y, mask = self._batch(data[i : i + self.B])
            out = self._runners["evaluate"](x=x, y=y, mask=mask)
            for k in sums:
                sums[k] += float(out[k])
        return EvalResult(sums["loss_sum"], round(sums["count"]), round(sums["iv_count"]),
                          round(sums["top1_hits"]), round(sums["top3_hits"]), len(data))

    def infer(self, token_ids: list[int] | np.ndarray,
              weights: list[np.ndarray] | dict[str, np.ndarray] | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k next-word ids and probabilities after a prefix (special tokens excluded).

        The prefix should start with BOS (an empty one becomes ``[BOS]``); only its last
        T tokens are used. Returns (ids int32 (k,), probs float32 (k,)), best first.
        """
        if weights is not None:
            self.set_weights(weights)
        self._require_weights()
        ids = [int(t) for t in token_ids][-self.T :] or [BOS]
        ids = [OOV if t >= self.V or t < 0 else t for t in ids]
        x = np.full((self.infer_batch, self.T), PAD, dtype=np.int32)
        x[0, : len(ids)] = ids
        length = np.full((self.infer_batch,), len(ids), dtype=np.int32)
        out = self._runners["infer"](x=x, length=length)
        return np.asarray(out["ids"][0], np.int32), np.asarray(out["probs"][0], np.float32)


class TrainSession:
    """Iterating over a session runs one training step per item (a :class:`StepInfo`)."""

    def __init__(self, trainer: Trainer, start: list[np.ndarray], data: np.ndarray,
                 epochs: int, max_steps: int | None, lr: float, seed: int,
                 grad_clip: float | None = None):
        self.trainer, self.start, self.data = trainer, start, data
        self.epochs, self.lr, self.grad_clip = epochs, lr, grad_clip
        self.clipped_steps = 0
        self.max_grad_norm = 0.0
        self._plan = batch_plan(len(data), trainer.B, epochs, max_steps, seed)
        self.planned_steps = len(self._plan)
        self.steps = 0
        self._loss_tokens = 0.0
        self._tokens = 0.0
        self._processed = 0
        self._seen = np.zeros(len(data), dtype=bool)

    def __iter__(self) -> Iterator[StepInfo]:
        for epoch, idx in self._plan[self.steps :]:
            x, y, mask = self.trainer._batch(self.data[idx])
            loss = self.trainer.step(x, y, mask, self.lr, self.grad_clip)
            norm = self.trainer.last_grad_norm
            if self.grad_clip and not norm <= self.grad_clip:
                self.clipped_steps += 1
            if norm > self.max_grad_norm or not np.isfinite(norm):
                self.max_grad_norm = norm
            tokens = float(mask.sum())
            self._loss_tokens += loss * tokens
            self._tokens += tokens
            self._processed += len(idx)
            self._seen[idx] = True
            self.steps += 1
            yield StepInfo(self.steps - 1, epoch, loss, len(idx), norm)

    def result(self) -> TrainResult:
        """The delta of the current weights against the start (partial if stopped early)."""
        new = self.trainer.get_weights()
        for name, w in zip(self.trainer.names, new, strict=True):
            if not np.all(np.isfinite(w)):
                raise FloatingPointError(f"training diverged: weight {name!r} is not finite")
        delta = [n - s for n, s in zip(new, self.start, strict=True)]
        mean = self._loss_tokens / self._tokens if self._tokens else 0.0
        return TrainResult(delta, int(self._seen.sum()), self._processed, mean, self.steps,
                           self.steps >= self.planned_steps, self.clipped_steps,
                           self.max_grad_norm)


def _clip_input(grad_clip: float | None) -> np.float32:
    """The ``grad_clip`` input of the train signature: 0 means no clipping."""
    if grad_clip is None or grad_clip == 0:
        return np.float32(0.0)
    if not (np.isfinite(grad_clip) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a positive number or None, got {grad_clip}")
    return np.float32(grad_clip)
