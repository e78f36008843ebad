"""Prediction (issue 6): text -> prefix, ranking, the endpoint, version switching, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from server_support import ADMIN, FakeClock, Harness, harness

from fedkb.cli import main
from fedkb.datasets.vocab import BOS, OOV, SPECIAL_TOKENS
from fedkb.device_runtime.trainer import Trainer
from fedkb.server.app import create_app
from fedkb.server.config import RoundConfig, ServerConfig
from fedkb.server.suggest import Query, Suggester

WORDS = [*SPECIAL_TOKENS, "the", ",", ".", "cat", "that", "then", "'tis", "tis", "dog", "?",
         "don't", "-"]
ID = {w: i for i, w in enumerate(WORDS)}


# --- suggest: reading text and ranking (pure) ---------------------------------------------


@pytest.fixture
def sug() -> Suggester:
    return Suggester(WORDS)


@pytest.mark.parametrize("text, prefix, partial", [
    ("", (BOS,), None),
    ("The cat ", (BOS, ID["the"], ID["cat"]), None),
    ("the CAT", (BOS, ID["the"]), "cat"),
    ("the dog. The c", (BOS, ID["the"]), "c"),  # a new sentence after "."
    ("the dog? ", (BOS,), None),
    ("the zebra, ", (BOS, ID["the"], OOV, ID[","]), None),  # unknown word -> OOV
    (", the ", (BOS, ID["the"]), None),  # leading punctuation dropped, as in training
    ("the cat,", (BOS, ID["the"], ID["cat"], ID[","]), None),  # ends on punctuation
    ("I don'", (BOS, OOV), "don'"),
    ("the \u2019ti", (BOS, ID["the"]), "'ti"),
])
def test_query_reads_text_like_training(sug, text, prefix, partial):
    assert sug.query(text) == Query(prefix, partial)


def _rank(sug: Suggester, text: str, top: list[tuple[str | int, float]], k: int):
    ids = np.array([ID[w] if isinstance(w, str) else w for w, _ in top], np.int32)
    probs = np.array([p for _, p in top], np.float32)
    return [(s.word, None if s.p is None else round(s.p, 3))
            for s in sug.rank(sug.query(text), ids, probs, k)]


def test_next_word_ranked_by_model_without_specials_or_punctuation(sug):
    top = [(",", 0.4), ("cat", 0.2), (OOV, 0.15), ("dog", 0.1), (".", 0.05), ("then", 0.03)]
    assert _rank(sug, "the ", top, 3) == [("cat", 0.2), ("dog", 0.1), ("then", 0.03)]
    # fewer model words than k: the rest in frequency (id) order, without a probability
    assert _rank(sug, "the ", top, 5) == [("cat", 0.2), ("dog", 0.1), ("then", 0.03),
                                          ("the", None), ("that", None)]


def test_completion_model_first_then_frequency(sug):
    top = [("cat", 0.5), ("then", 0.2), ("dog", 0.1)]
    assert _rank(sug, "the th", top, 3) == [("then", 0.2), ("the", None), ("that", None)]
    assert _rank(sug, "the ca", top, 3) == [("cat", 0.5)]
    assert _rank(sug, "the x", top, 3) == []
    assert _rank(sug, "'ti", [], 3) == [("'tis", None)]  # an elision
    assert _rank(sug, "'ca", [], 3) == [("cat", None)]  # a quote mark: dropped


# --- the endpoint, served from the tiny exported model ------------------------------------


def _app(tmp: Path, artifact: Path, **round_kw):
    rc = {"report_goal": 2, "overselect": 1.0, "min_fraction": 1.0, "eval_every": 0,
          "selection_window_s": 60, "reporting_deadline_s": 60, "retry_jitter": 0.0,
          **round_kw}
    clock = FakeClock()
    app = create_app(ServerConfig(state_dir=tmp / "state", admin_token=ADMIN, seed=0,
                                  model=artifact, round=RoundConfig(**rc)), clock=clock)
    return Harness(app, app.test_client(), clock)


@pytest.fixture
def h(tmp_path, tiny_artifact) -> Harness:
    return _app(tmp_path, tiny_artifact)


def _predict(h: Harness, text: str, k: int = 3) -> dict:
    r = h.client.post("/v1/predict", json={"text": text, "k": k})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _expected(trainer: Trainer, sug: Suggester, text: str, k: int) -> list[dict]:
    q = sug.query(text)
    ids, probs = trainer.infer(q.prefix)
    return [s.to_json() for s in sug.rank(q, ids, probs, k)]


def test_predict_matches_litert_infer_of_the_served_version(h, tiny_artifact):
    trainer = Trainer(tiny_artifact)
    trainer.set_weights(h.state.machine.model.weights)
    sug = Suggester(trainer.artifact.vocab())
    for text in ["", "the cat ", "The dog sat on the m", "where is the "]:
        body = _predict(h, text, 5)
        assert body["model_version"] == 0
        assert body["suggestions"] == _expected(trainer, sug, text, 5)
        words = [s["word"] for s in body["suggestions"]]
        assert not set(words) & set(SPECIAL_TOKENS) and len(words) <= 5
    done = _predict(h, "the cat s", 10)
    assert done["partial"] == "s" and all(s["word"].startswith("s") for s in done["suggestions"])


def test_only_the_last_T_tokens_count(h, tiny_artifact):
    T = Trainer(tiny_artifact).T
    tail = " ".join(["the cat sat on the mat"] * 3) + " "
    assert _predict(h, "where is the dog and " + tail) == _predict(h, "house " + tail)
    assert len(tail.split()) > T


@pytest.mark.parametrize("body, code", [
    ({"k": 3}, "bad_text"),
    ({"text": 5}, "bad_text"),
    ({"text": None}, "bad_text"),
    ({"text": "a" * 1001}, "text_too_long"),
    ({"text": "a", "k": 0}, "bad_k"),
    ({"text": "a", "k": 11}, "bad_k"),
    ({"text": "a", "k": "3"}, "bad_k"),
    ({"text": "a", "k": True}, "bad_k"),
    ({"text": "a", "k": 2.5}, "bad_k"),
])
def test_bad_requests_are_400_json(h, body, code):
    r = h.client.post("/v1/predict", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == code


def test_not_json_is_refused(h):
    for data in ("not json", "[1, 2]", ""):
        r = h.client.post("/v1/predict", data=data, content_type="application/json")
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_json"
    r = h.client.post("/v1/predict", data="text=a", content_type="text/plain")
    assert r.status_code == 415 and "error" in r.get_json()
    assert h.client.get("/v1/predict").status_code == 405


def test_model_that_litert_cannot_load_is_503_not_a_crash(tmp_path):
    h = harness(tmp_path)  # the fake artifact: dummy model.tflite, no vocabulary
    for _ in range(2):
        r = h.client.post("/v1/predict", json={"text": "a "})
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "model_unavailable"
    assert h.status()["model_version"] == 0  # the rest of the server is unaffected


def _commit_round(h: Harness, value: float) -> None:
    devs = [h.register() for _ in range(2)]
    tasks = [d.task() for d in devs]
    for d, t in zip(devs, tasks, strict=True):
        delta = [np.full_like(w, value) for w in h.state.machine.model.weights]
        assert d.upload(t, delta).status_code == 200


def test_switches_to_a_new_version_without_failing_requests(h, tiny_artifact):
    live = h.app.extensions["fedkb.predict"]
    before = _predict(h, "the cat ", 5)
    _commit_round(h, 0.05)
    assert h.state.machine.model.version == 1
    # The request that notices the new version is answered by the old one (no waiting) ...
    assert _predict(h, "the cat ", 5)["model_version"] in (0, 1)
    assert live.wait_idle(30)
    after = _predict(h, "the cat ", 5)  # ... and the switch happened off the request path
    assert after["model_version"] == 1 and live.switches == 1
    trainer = Trainer(tiny_artifact)
    trainer.set_weights(h.state.machine.weights(1).weights)
    assert after["suggestions"] == _expected(trainer, Suggester(trainer.artifact.vocab()),
                                             "the cat ", 5)
    assert after["suggestions"] != before["suggestions"]


def test_concurrent_requests_during_switches_all_succeed(h):
    texts = ["", "the ", "the cat s", "where is the ", "i love the d"]
    errors: list[str] = []
    versions: set[int] = set()
    stop = threading.Event()
    # six clients at once: more than the default gate admits (tests/test_server_load_e2e.py)
    from fedkb.server.admission import AdmissionGate
    from fedkb.server.api_predict import GATE

    h.app.extensions[GATE] = AdmissionGate(6)

    def client(i: int) -> None:
        c = h.app.test_client()
        n = 0
        while not stop.is_set() or n < 5:
            r = c.post("/v1/predict", json={"text": texts[(i + n) % len(texts)], "k": 3})
            n += 1
            if r.status_code != 200:
                errors.append(str(r.get_json()))
            else:
                versions.add(r.get_json()["model_version"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        for value in (0.02, -0.03):
            _commit_round(h, value)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors and versions <= {0, 1, 2}
    live = h.app.extensions["fedkb.predict"]
    assert live.wait_idle(30)
    assert _predict(h, "the ")["model_version"] == 2


def test_predict_path_imports_no_tensorflow(tmp_path, tiny_artifact):
    code = (
        "import sys\n"
        "from fedkb.server.app import create_app\n"
        "from fedkb.server.config import ServerConfig\n"
        f"app = create_app(ServerConfig(state_dir={str(tmp_path / 's')!r}, "
        f"model={str(tiny_artifact)!r}, admin_token='x'))\n"
        "r = app.test_client().post('/v1/predict', json={'text': 'the c'})\n"
        "assert r.status_code == 200 and r.json['suggestions'], r.json\n"
        "assert app.test_client().get('/').status_code == 200\n"
        "from fedkb.server.predictor import Engine\n"
        f"Engine.from_dir({str(tiny_artifact)!r}).predict('the ', 3)\n"
        "sys.exit(3 if 'tensorflow' in sys.modules else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# --- fedkb predict --model -------------------------------------------------------------


def test_cli_predict_local_model(tiny_artifact, tmp_path, capsys):
    assert main(["predict", "the cat s", "--model", str(tiny_artifact), "-k", "2",
                 "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["partial"] == "s" and len(body["suggestions"]) <= 2
    assert all(s["word"].startswith("s") for s in body["suggestions"])
    assert main(["predict", "the ", "--model", str(tiny_artifact)]) == 0
    assert capsys.readouterr().out.startswith("local model: ")
    # a safetensors weights file (a server checkpoint's layout: state.* ignored) works too
    from fedkb.artifact import Artifact
    from fedkb.server.checkpoints import encode_checkpoint
    from fedkb.tensorfile import encode_tensors

    art = Artifact.load(tiny_artifact)
    ckpt = tmp_path / "v000003.safetensors"
    ckpt.write_bytes(encode_checkpoint(art.specs, 3, art.initial_weights(), [np.ones(2)]))
    outs = []
    for extra in ([], ["--weights", str(ckpt)]):
        assert main(["predict", "the ", "--model", str(tiny_artifact), "--json", *extra]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] and outs[0]["suggestions"]
    ckpt.write_bytes(encode_tensors({s.name: np.zeros(1, np.float32) for s in art.specs}))
    assert main(["predict", "the ", "--model", str(tiny_artifact), "--weights", str(ckpt)]) == 2
    assert main(["predict", "the ", "--model", str(tiny_artifact), "-k", "11"]) == 2
    assert main(["predict", "the ", "--model", str(tmp_path / "nothing")]) == 2
    assert main(["predict", "the ", "--server", "http://127.0.0.1:9", "--weights", "x"]) == 2
    assert "error:" in capsys.readouterr().err


# --- configuration and the prefix cache --------------------------------------------------


def test_predict_config_section(tmp_path, tiny_artifact):
    from fedkb.server.config import ConfigError, load_config

    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"predict": {"max_k": 5, "cache_size": 0, "max_text_chars": 20}}))
    cfg = load_config(conf, state_dir=tmp_path / "s", model=tiny_artifact)
    assert (cfg.predict.max_k, cfg.predict.cache_size) == (5, 0)
    c = create_app(cfg).test_client()
    assert c.post("/v1/predict", json={"text": "the ", "k": 5}).status_code == 200
    assert c.post("/v1/predict", json={"text": "the ", "k": 6}).get_json()["error"]["code"] \
        == "bad_k"
    assert c.post("/v1/predict", json={"text": "t" * 21}).status_code == 400
    for bad in ({"nope": 1}, {"interpreters": 0}, {"cache_size": -1}, {"default_k": 11}):
        conf.write_text(json.dumps({"predict": bad}))
        with pytest.raises(ConfigError):
            load_config(conf)


def test_prefix_cache_gives_the_models_answers(tiny_artifact):
    from fedkb.server.config import PredictConfig
    from fedkb.server.predictor import Engine

    cached = Engine.from_dir(tiny_artifact, cfg=PredictConfig(cache_size=8))
    plain = Engine.from_dir(tiny_artifact, cfg=PredictConfig(cache_size=0))
    texts = ["the c", "the ca", "the cat ", "", "the c", "where is the d"] * 3
    for text in texts:
        assert cached.predict(text, 5) == plain.predict(text, 5)
    ids, probs = cached.infer((BOS,))
    assert not ids.flags.writeable and not probs.flags.writeable
    assert cached._cached.cache_info().hits >= len(texts) - 5  # type: ignore[attr-defined]
