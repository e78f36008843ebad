"""The contract layer's weights and artifact: one spec, one check, one reader (fedkb/)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from server_support import initial_weights, write_artifact

from fedkb.artifact import (
    ARTIFACT_FORMAT,
    METADATA_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    Artifact,
    ArtifactError,
    initial_weights_file,
)
from fedkb.tensorfile import (
    TensorFileError,
    decode_weights,
    encode_tensors,
    encode_weights,
    read_metadata,
)
from fedkb.weights import REASONS, WeightsError, WeightSpec, check_weights

SPECS = [WeightSpec("a", (2,)), WeightSpec("b", (1, 2))]


def good() -> list[np.ndarray]:
    return [np.array([1, 2], np.float32), np.array([[3, 4]], np.float32)]


def reason(weights) -> str:
    with pytest.raises(WeightsError) as e:
        check_weights(SPECS, weights)
    assert e.value.reason in REASONS
    return e.value.reason


def test_weight_spec_size_and_json():
    s = WeightSpec("rnn_kernel", (3, 8))
    assert (s.size, s.nbytes) == (24, 96)
    assert WeightSpec.from_json(s.to_json()) == s
    assert WeightSpec.from_json({"name": "x", "shape": [2]}) == WeightSpec("x", (2,), "float32")


def test_check_weights_reason_codes():
    a, b = good()
    assert reason([a]) == "bad_count"
    assert reason([a, b, b]) == "bad_count"
    assert reason({"a": a}) == "bad_name"
    assert reason({"a": a, "b": b, "c": b}) == "bad_name"
    assert reason([a.tolist(), b]) == "not_array"
    assert reason([a.astype(np.float64), b]) == "bad_dtype"
    assert reason([a, b.reshape(2, 1)]) == "bad_shape"
    assert reason([a, np.array([[3, np.nan]], np.float32)]) == "non_finite"
    assert reason([np.array([np.inf, 1], np.float32), b]) == "non_finite"
    # structure is reported before values: a NaN first, a bad shape later -> bad_shape
    assert reason([np.array([np.nan, 1], np.float32), b.reshape(2, 1)]) == "bad_shape"


def test_check_weights_orders_by_name_and_returns_contiguous_float32():
    a, b = good()
    fortran = np.asfortranarray(np.array([[3, 4]], np.float32))
    strided = np.array([1, 9, 2], np.float32)[::2]
    out = check_weights(SPECS, {"b": fortran, "a": strided})
    assert [o.tolist() for o in out] == [[1, 2], [[3, 4]]]
    assert all(o.flags.c_contiguous and o.dtype == np.float32 for o in out)
    assert check_weights(SPECS, [a, b])[0] is a  # already fine: not copied


def test_safetensors_bytes_are_deterministic_and_standard():
    """Equal tensors and metadata give equal bytes (artifacts are compared by SHA-256),
    and what is written is plain safetensors."""
    from safetensors.numpy import load

    meta = {f"k{i}": str(i) for i in range(12)}  # a hash map's order would show here
    blobs = {encode_tensors({"b": np.ones(3, np.float32), "a": np.zeros(2)}, meta)
             for _ in range(20)}
    assert len(blobs) == 1
    data = blobs.pop()
    assert int.from_bytes(data[:8], "little") % 8 == 0
    assert load(data)["b"].tolist() == [1, 1, 1] and read_metadata(data) == meta


def test_safetensors_weights_keep_order_and_refuse_another():
    data = encode_weights(SPECS, good(), {"format": "x"}, extra={"state.0": np.ones(3)})
    weights, extra, meta = decode_weights(SPECS, data)
    assert [w.tolist() for w in weights] == [[1, 2], [[3, 4]]]
    assert list(extra) == ["state.0"] and meta["format"] == "x"
    assert json.loads(read_metadata(data)["weights"]) == ["a", "b"]
    with pytest.raises(TensorFileError, match="order"):
        decode_weights(SPECS[::-1], data)
    with pytest.raises(WeightsError) as e:
        decode_weights([*SPECS, WeightSpec("c", (1,))], data)
    assert e.value.reason == "bad_name"
    with pytest.raises(TensorFileError):
        decode_weights(SPECS, data[:-3])
    with pytest.raises(ValueError, match="weight's name"):
        encode_weights(SPECS, good(), extra={"a": np.ones(1)})


def test_artifact_from_memory_equals_artifact_from_directory(tiny_artifact):
    disk = Artifact.load(tiny_artifact)
    files = {p.name: p.read_bytes() for p in tiny_artifact.iterdir() if p.is_file()}
    mem = Artifact.from_files(files)
    assert mem.meta == disk.meta and mem.specs == disk.specs
    assert mem.fingerprint == disk.fingerprint and set(disk.files) == set(files)
    assert mem.model_bytes == disk.model_bytes == files[MODEL_FILE]
    assert mem.vocab() == disk.vocab() and mem.vocab()[:2] == ["<pad>", "<bos>"]
    assert (mem.batch_size, mem.seq_len, mem.vocab_size) == \
        (disk.meta["batch_size"], disk.meta["seq_len"], disk.meta["vocab_size"])
    for x, y in zip(mem.initial_weights(), disk.initial_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert disk.path == tiny_artifact and mem.path is None


def test_a_phone_may_hold_only_metadata_and_model(tmp_path):
    art = Artifact.load(write_artifact(tmp_path / "a"))
    part = Artifact.from_files({METADATA_FILE: art.file(METADATA_FILE),
                                MODEL_FILE: art.model_bytes}, "http://server/v1/models/0")
    assert part.specs == art.specs and part.model_bytes == b"TFL3-dummy-model"
    with pytest.raises(ArtifactError, match="not held"):
        part.initial_weights()
    with pytest.raises(ArtifactError, match="partial"):
        part.save(tmp_path / "copy")
    with pytest.raises(ArtifactError, match="model file"):
        Artifact.from_files({METADATA_FILE: art.file(METADATA_FILE)})


def test_tampered_or_unlisted_files_are_refused(tmp_path):
    path = write_artifact(tmp_path / "a")
    files = {p.name: p.read_bytes() for p in path.iterdir()}
    tampered = bytearray(files[WEIGHTS_FILE])
    tampered[-1] ^= 0x01
    with pytest.raises(ArtifactError, match="SHA-256"):
        Artifact.from_files({**files, WEIGHTS_FILE: bytes(tampered)})
    (path / WEIGHTS_FILE).write_bytes(bytes(tampered))
    with pytest.raises(ArtifactError, match="SHA-256"):
        Artifact.load(path)
    with pytest.raises(ArtifactError, match="not listed"):
        Artifact.from_files({**files, "extra.bin": b"x"})
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="cannot read"):
        Artifact.load(path)


def test_weights_that_do_not_fit_the_metadata_are_refused_even_with_good_hashes(tmp_path):
    w = initial_weights()
    path = write_artifact(tmp_path / "a")
    meta = json.loads((path / METADATA_FILE).read_text())
    with pytest.raises(WeightsError):  # the writer refuses them ...
        initial_weights_file([WeightSpec.from_json(s) for s in meta["weights"]],
                             [x + np.nan for x in w])
    bad = encode_tensors({s["name"]: x + np.nan for s, x in zip(meta["weights"], w, strict=True)})
    files = {p.name: p.read_bytes() for p in path.iterdir()}
    meta["files"][WEIGHTS_FILE]["sha256"] = hashlib.sha256(bad).hexdigest()
    with pytest.raises(ArtifactError, match="non-finite"):  # ... and so does the reader
        Artifact.from_files({**files, METADATA_FILE: json.dumps(meta).encode(),
                             WEIGHTS_FILE: bad})


def test_other_formats_and_garbled_metadata_are_refused(tmp_path):
    path = write_artifact(tmp_path / "a")
    files = {p.name: p.read_bytes() for p in path.iterdir()}
    meta = json.loads(files[METADATA_FILE])
    assert meta["format"] == ARTIFACT_FORMAT
    for change, match in [({"format": "fedkb-model/1"}, "export the model again"),
                          ({"weights": "nope"}, "garbles"),
                          ({"files": {"../x": {"sha256": "0"}}}, "bad file name")]:
        raw = json.dumps({**meta, **change}).encode()
        with pytest.raises(ArtifactError, match=match):
            Artifact.from_files({**files, METADATA_FILE: raw})
    with pytest.raises(ArtifactError, match="seq_len"):
        Artifact.from_files({**files, METADATA_FILE: json.dumps(
            {k: v for k, v in meta.items() if k != "seq_len"}).encode()})
    with pytest.raises(ArtifactError, match="no readable metadata"):
        Artifact.load(tmp_path / "nowhere")


def test_save_copies_byte_for_byte(tmp_path):
    art = Artifact.load(write_artifact(tmp_path / "a"))
    copy = art.save(tmp_path / "state" / "artifact")
    assert copy.fingerprint == art.fingerprint and copy.path == tmp_path / "state" / "artifact"
    assert sorted(p.name for p in copy.path.iterdir()) == sorted(art.files)


def test_contract_imports_no_tensorflow_nor_flask():
    code = ("import sys, fedkb.artifact, fedkb.weights, fedkb.tensorfile, fedkb.metrics; "
            "bad = {'tensorflow', 'flask', 'ai_edge_litert'} & set(sys.modules); "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
