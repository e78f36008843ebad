"""Next-word prediction with LiteRT only: interpreter pools and model-version switching.

A :class:`Engine` is one model version ready to serve: the artifact's ``model.tflite`` in
a small pool of LiteRT interpreters (an interpreter is not thread-safe; each request
borrows one), every interpreter loaded with that version's weights, and a
:class:`~fedkb.server.suggest.Suggester` over the artifact's vocabulary.

:class:`LivePredictor` serves the server's *latest committed* version. Each request
compares the version it serves with ``machine.model.version`` (one attribute read, no
lock); when a newer version has been committed, one background thread builds a fresh
engine for it (new interpreters, weights set, off the request path) and then swaps the
reference. Requests keep using the engine they started with, so a switch neither fails
nor blocks them; only the very first request waits for the first engine. A version that
cannot be loaded is recorded (``last_error``) and not retried; the previous engine keeps
serving. Weights with a NaN or Inf are such a version (the round machine never commits
one, but a checkpoint is a file), and an answer with a non-finite probability is refused
(503) rather than sent: ``NaN`` is not JSON.

No TensorFlow anywhere: LiteRT (``ai_edge_litert``), NumPy and the tokenizer.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.artifact import Artifact, ArtifactError
from fedkb.device_runtime.trainer import Trainer
from fedkb.server.config import PredictConfig
from fedkb.server.errors import ApiError, BadRequest
from fedkb.server.suggest import Suggester, Suggestion

log = logging.getLogger(__name__)


class ModelUnavailable(ApiError):
    """No model can serve predictions (none published, or it does not load in LiteRT)."""

    status, code = 503, "model_unavailable"


@dataclass(frozen=True)
class Prediction:
    suggestions: list[Suggestion]
    model_version: int | None
    partial: str | None

    def to_json(self) -> dict[str, Any]:
        return {"suggestions": [s.to_json() for s in self.suggestions],
                "model_version": self.model_version, "partial": self.partial}


def check_request(text: Any, k: Any, cfg: PredictConfig) -> tuple[str, int]:
    """Validate a request's ``text`` and ``k`` (:class:`BadRequest` with a named code)."""
    if text is None:
        raise BadRequest("'text' is required", "bad_text")
    if not isinstance(text, str):
        raise BadRequest("'text' must be a string", "bad_text")
    if len(text) > cfg.max_text_chars:
        raise BadRequest(f"'text' is limited to {cfg.max_text_chars} characters",
                         "text_too_long")
    if k is None:
        k = cfg.default_k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.max_k:
        raise BadRequest(f"'k' must be an integer from 1 to {cfg.max_k}", "bad_k")
    return text, k


@dataclass
class Engine:
    """One model version in a pool of LiteRT interpreters (thread-safe :meth:`predict`).

    The model's answers are cached by prefix (``cache_size`` per engine, so per version):
    while a word is typed, every keystroke asks about the same prefix.
    """

    version: int | None
    suggester: Suggester
    pool: queue.SimpleQueue[Trainer] = field(repr=False)
    infer_k: int
    cache_size: int = 0

    def __post_init__(self) -> None:
        self._cached = functools.lru_cache(maxsize=self.cache_size)(self._infer) \
            if self.cache_size else self._infer

    @classmethod
    def build(cls, artifact: Artifact, vocab: Sequence[str],
              weights: list[np.ndarray] | dict[str, np.ndarray], version: int | None,
              cfg: PredictConfig) -> Engine:
        """Create ``cfg.interpreters`` interpreters and load ``weights`` into each."""
        arrays = list(weights.values()) if isinstance(weights, dict) else weights
        bad = next((i for i, w in enumerate(arrays) if not np.all(np.isfinite(w))), None)
        if bad is not None:
            raise ModelUnavailable(f"model version {version} has non-finite weights "
                                   f"(array {bad})")
        pool: queue.SimpleQueue[Trainer] = queue.SimpleQueue()
        for _ in range(max(1, cfg.interpreters)):
            trainer = Trainer(artifact, num_threads=cfg.num_threads)
            trainer.set_weights(weights)
            pool.put(trainer)
        return cls(version, Suggester(vocab), pool, int(artifact.meta.get("infer_k", 10)),
                   cfg.cache_size)

    @classmethod
    def from_dir(cls, path: str | Path, weights: list[np.ndarray] | None = None,
                 cfg: PredictConfig | None = None) -> Engine:
        """An exported artifact directory (its initial weights unless ``weights``)."""
        art = Artifact.load(path)
        w = art.initial_weights() if weights is None else weights
        return cls.build(art, art.vocab(), w, None, cfg or PredictConfig())

    def infer(self, prefix: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The model's top ``infer_k`` (ids, probs) after ``prefix`` (read-only arrays)."""
        return self._cached(tuple(prefix))

    def _infer(self, prefix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        trainer = self.pool.get()  # an interpreter of our own for the call
        try:
            ids, probs = trainer.infer(prefix)
        finally:
            self.pool.put(trainer)
        if not np.all(np.isfinite(probs)):
            raise ModelUnavailable(f"model version {self.version} answered non-finite "
                                   "probabilities")
        ids.flags.writeable = probs.flags.writeable = False
        return ids, probs

    def predict(self, text: str, k: int) -> Prediction:
        query = self.suggester.query(text)
        ids, probs = self.infer(query.prefix)
        return Prediction(self.suggester.rank(query, ids, probs, k), self.version,
                          query.partial)


class LivePredictor:
    """Predictions from the round machine's latest committed model, switched in the
    background.

    ``machine`` is the server's :class:`~fedkb.server.round_machine.RoundMachine`
    (``artifact``, the published :class:`~fedkb.artifact.Artifact`, ``model.version`` and
    ``weights(version)`` are all it uses).
    """

    def __init__(self, machine: Any, cfg: PredictConfig | None = None,
                 on_switch: Callable[[int | None], None] | None = None) -> None:
        self.machine, self.cfg = machine, cfg or PredictConfig()
        self.on_switch = on_switch
        self._engine: Engine | None = None
        self._vocab: list[str] | None = None
        self._first = threading.Lock()  # held while the first engine is built
        self._reloading = threading.Lock()  # held by the background switcher
        self._failed: set[int] = set()
        self.last_error: str | None = None
        self.switches = 0

    def _wanted(self) -> int:
        model = self.machine.model
        if self.machine.artifact is None or model is None:
            raise ModelUnavailable("no model has been published")
        return int(model.version)

    def _build(self, version: int) -> Engine:
        art: Artifact = self.machine.artifact
        if self._vocab is None:
            try:
                self._vocab = art.vocab()
            except ArtifactError as exc:
                raise ModelUnavailable(f"the published artifact cannot serve predictions: "
                                       f"no vocabulary ({exc})") from exc
        t0 = time.perf_counter()
        engine = Engine.build(art, self._vocab, self.machine.weights(version).weights, version,
                              self.cfg)
        log.info("prediction engine for model version %d ready in %.0f ms", version,
                 1e3 * (time.perf_counter() - t0))
        return engine

    def engine(self) -> Engine:
        """The engine to use now; starts a background switch if a newer version exists."""
        wanted = self._wanted()
        engine = self._engine
        if engine is None:
            with self._first:
                if self._engine is None:
                    if wanted in self._failed:
                        raise ModelUnavailable(f"model version {wanted} cannot serve "
                                               f"predictions: {self.last_error}")
                    try:
                        self._engine = self._build(wanted)
                    except ModelUnavailable as exc:
                        self._fail(wanted, exc.message)
                        raise
                    except Exception as exc:
                        self._fail(wanted, f"{type(exc).__name__}: {exc}")
                        raise ModelUnavailable(f"model version {wanted} cannot serve "
                                               f"predictions: {self.last_error}") from exc
                engine = self._engine
        if engine.version != wanted and wanted not in self._failed:
            self._switch_in_background()
        return engine

    def _fail(self, version: int, message: str) -> None:
        self._failed.add(version)
        self.last_error = message
        log.error("prediction engine for model version %d failed: %s", version, message)

    def _switch_in_background(self) -> None:
        if not self._reloading.acquire(blocking=False):
            return  # a switch is already under way

        def run() -> None:
            try:
                while True:
                    wanted = self._wanted()
                    current = self._engine
                    if (current is not None and current.version == wanted) \
                            or wanted in self._failed:
                        return
                    try:
                        new = self._build(wanted)
                    except Exception as exc:
                        self._fail(wanted, f"{type(exc).__name__}: {exc}")
                        return
                    self._engine = new  # one reference swap: requests never wait
                    self.switches += 1
                    if self.on_switch is not None:
                        self.on_switch(wanted)
            except Exception:
                log.exception("prediction engine switch failed")
            finally:
                self._reloading.release()

        threading.Thread(target=run, name="fedkb-predict-switch", daemon=True).start()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no switch is running (tests); True if none is."""
        if self._reloading.acquire(timeout=timeout):
            self._reloading.release()
            return True
        return False

    def predict(self, text: str, k: int) -> Prediction:
        return self.engine().predict(text, k)
