"""``/v1/predict`` never answers NaN (which is not JSON): weights with a NaN or Inf never
become an engine, and an answer with a non-finite probability is a 503."""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest
from server_support import harness

from fedkb.server.api_predict import EXTENSION
from fedkb.server.config import PredictConfig
from fedkb.server.predictor import Engine, LivePredictor, ModelUnavailable
from fedkb.server.suggest import Suggester

VOCAB = ["<pad>", "<bos>", "<eos>", "<oov>", "the", "cat", "sat"]


class FakeInterpreter:
    """Stands in for a LiteRT :class:`Trainer`: answers fixed top-k probabilities."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = np.asarray(probs, np.float32)

    def infer(self, prefix):
        return np.arange(4, 4 + len(self.probs), dtype=np.int32), self.probs.copy()


def engine(probs: list[float], version: int = 0) -> Engine:
    pool: queue.SimpleQueue = queue.SimpleQueue()
    pool.put(FakeInterpreter(probs))
    return Engine(version, Suggester(VOCAB), pool, infer_k=3, cache_size=8)


def test_an_engine_answering_nan_is_refused_not_serialized():
    assert engine([0.5, 0.3, 0.2]).predict("the ", 3).suggestions[0].p == 0.5
    with pytest.raises(ModelUnavailable, match="non-finite"):
        engine([np.nan, 0.3, 0.2]).predict("the ", 3)
    with pytest.raises(ModelUnavailable):
        engine([np.inf, 0.3, 0.2]).predict("the ", 3)


def test_non_finite_weights_never_become_an_engine():
    weights = [np.ones((2, 2), np.float32), np.array([1.0, np.nan], np.float32)]
    with pytest.raises(ModelUnavailable, match=r"non-finite weights \(array 1\)"):
        Engine.build(None, VOCAB, weights, 7, PredictConfig())  # type: ignore[arg-type]
    by_name = {"a": weights[0], "b": weights[1]}  # `fedkb predict --weights` passes these
    with pytest.raises(ModelUnavailable):
        Engine.build(None, VOCAB, by_name, None, PredictConfig())  # type: ignore[arg-type]


def test_the_endpoint_answers_503_json_instead_of_nan(tmp_path):
    h = harness(tmp_path)
    live: LivePredictor = h.app.extensions[EXTENSION]
    live._engine = engine([np.nan, 0.3, 0.2])  # the served version (0), answering NaN
    r = h.client.post("/v1/predict", json={"text": "the "})
    assert r.status_code == 503
    body = json.loads(r.data, parse_constant=lambda c: pytest.fail(f"{c} in the body"))
    assert body["error"]["code"] == "model_unavailable"
    live._engine = engine([0.5, 0.3, 0.2])
    r = h.client.post("/v1/predict", json={"text": "the "})
    assert r.status_code == 200 and r.get_json()["suggestions"][0]["p"] == 0.5
