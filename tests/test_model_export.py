"""The model presets, weights and the exported LiteRT artifact (issue 3)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fedkb.artifact import ARTIFACT_FORMAT, WEIGHTS_FILE, initial_weights_file
from fedkb.model.config import PRESETS, ModelConfig, get_preset
from fedkb.model.weights import initial_weights, num_params, weight_specs
from fedkb.tensorfile import decode_weights

SIGNATURES = {"train", "evaluate", "infer", "get_weights", "set_weights"}


def test_presets_match_the_issue():
    tiny, small, gboard = PRESETS["tiny"], PRESETS["small"], PRESETS["gboard"]
    assert (tiny.embed_dim, tiny.units, tiny.seq_len) == (16, 32, 10)
    assert (small.vocab_size, small.embed_dim, small.units, small.seq_len) == (10_000, 96, 256, 20)
    assert (gboard.vocab_size, gboard.embed_dim, gboard.units, gboard.cell) == (
        10_000, 96, 670, "cifg")
    assert 1.35e6 < num_params(gboard) < 1.45e6  # "about 1.4M parameters" (Hard et al. 2018)
    with pytest.raises(KeyError, match="known: tiny"):
        get_preset("huge")
    with pytest.raises(ValueError):
        tiny.replace(cell="gru")


def test_fit_to_data_caps_vocab_and_takes_data_seq_len():
    cfg = PRESETS["small"].fit_to_data(data_vocab_size=40, data_seq_len=12)
    assert (cfg.vocab_size, cfg.seq_len) == (40, 12)
    assert PRESETS["small"].fit_to_data(50_000, 20).vocab_size == 10_000


def test_initial_weights_deterministic_and_file_round_trip(tmp_path):
    cfg = PRESETS["tiny"].replace(cell="cifg", recurrent_projection=True)
    a, b = initial_weights(cfg, seed=3), initial_weights(cfg, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], initial_weights(cfg, seed=4)[0])
    assert [w.shape for w in a] == [s.shape for s in weight_specs(cfg)]
    assert all(w.dtype == np.float32 for w in a)
    data = initial_weights_file(weight_specs(cfg), a)
    back, extra, meta = decode_weights(weight_specs(cfg), data)
    assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, back, strict=True))
    assert extra == {} and meta["format"] == ARTIFACT_FORMAT
    assert json.loads(meta["weights"]) == [s.name for s in weight_specs(cfg)]
    n = int.from_bytes(data[:8], "little")  # safetensors: a JSON header, then raw data
    assert json.loads(data[8 : 8 + n])["embedding"]["dtype"] == "F32"


def test_artifact_files_and_metadata(tiny_artifact, tiny_data):
    meta = json.loads((tiny_artifact / "metadata.json").read_text())
    data_meta = json.loads((tiny_data / "metadata.json").read_text())
    data_vocab = json.loads((tiny_data / "vocab.json").read_text())
    assert meta["format"] == "fedkb-model/2" and meta["preset"] == "tiny"
    assert meta["weights_file"] == "weights.safetensors"
    assert meta["vocab_size"] == min(len(data_vocab), PRESETS["tiny"].vocab_size)
    assert meta["seq_len"] == data_meta["seq_len"] == meta["data"]["seq_len"]
    assert meta["special_tokens"] == {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<oov>": 3}
    assert json.loads((tiny_artifact / "vocab.json").read_text()) == \
        data_vocab[: meta["vocab_size"]]
    assert set(meta["signatures"]) == SIGNATURES
    assert meta["builtin_only"] is True
    cfg = ModelConfig.from_dict(meta["config"])
    assert [(w["name"], tuple(w["shape"]), w["dtype"]) for w in meta["weights"]] == [
        (s.name, s.shape, "float32") for s in weight_specs(cfg)]
    assert meta["num_params"] == num_params(cfg)
    for name, rec in meta["files"].items():
        data = (tiny_artifact / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["sha256"] and len(data) == rec["bytes"]
    # set_weights takes one input per weight, named as in metadata; get_weights returns them
    names = {w["name"] for w in meta["weights"]}
    assert {i["name"] for i in meta["signatures"]["set_weights"]["inputs"]} == names
    assert {o["name"] for o in meta["signatures"]["get_weights"]["outputs"]} == names
    train_in = {i["name"]: i for i in meta["signatures"]["train"]["inputs"]}
    assert train_in["x"]["shape"] == [meta["batch_size"], meta["seq_len"]]
    assert train_in["lr"]["shape"] == [] and train_in["grad_clip"]["shape"] == []
    assert {o["name"] for o in meta["signatures"]["train"]["outputs"]} == {"loss", "grad_norm"}
    # the initial weights file is the seeded initial weights, readable by plain safetensors
    from safetensors.numpy import load_file

    w = load_file(tiny_artifact / WEIGHTS_FILE)
    assert all(np.array_equal(w[s.name], b) for s, b in
               zip(weight_specs(cfg), initial_weights(cfg, meta["seed"]), strict=True))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_flex_op_in_any_preset(preset):
    """Every preset converts with builtin ops only (V reduced: the op set does not depend on
    V, and the full vocabulary only makes the conversion slower)."""
    from fedkb.model.export import convert, require_builtin_only

    cfg = get_preset(preset)
    report = require_builtin_only(convert(cfg.replace(vocab_size=min(cfg.vocab_size, 300))))
    assert report.builtin_only and report.non_builtin == ()
    assert "BATCH_MATMUL" in report.counts and "ASSIGN_VARIABLE" in report.counts


def _flex_model() -> bytes:
    import tensorflow as tf

    f = tf.function(lambda a: tf.linalg.inv(a),
                    input_signature=[tf.TensorSpec((3, 3), tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                      tf.lite.OpsSet.SELECT_TF_OPS]
    return conv.convert()


def test_flex_op_refused_and_named(tmp_path, monkeypatch):
    import fedkb.model.export as export
    from fedkb.errors import UserError

    flex = _flex_model()
    with pytest.raises(export.FlexOpError, match="FlexMatrixInverse"):
        export.require_builtin_only(flex)
    # the exporter refuses before writing anything
    monkeypatch.setattr(export, "convert", lambda config, weights=None: flex)
    vocab = ["<pad>", "<bos>", "<eos>", "<oov>"] + [f"w{i}" for i in range(60)]
    out = tmp_path / "art"
    with pytest.raises(UserError, match="FlexMatrixInverse"):
        export.export_artifact(PRESETS["tiny"], vocab, out)
    assert not out.exists()


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    from fedkb.cli import main

    assert main(["model", "export", "--preset", "tiny", "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert main(["model", "check", str(tmp_path)]) == 2


def test_model_cli_module_does_not_import_tensorflow():
    """`fedkb --help` stays fast: the model command group imports TF only when run."""
    import subprocess
    import sys

    code = ("import sys, fedkb.model.cli, fedkb.model.config, fedkb.model.weights, "
            "fedkb.model.oplist; assert 'tensorflow' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
