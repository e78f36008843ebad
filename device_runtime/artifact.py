"""Load an exported model artifact on a device: metadata, model bytes, weights, vocab.

NumPy, the codec and the standard library only: a device process never imports
TensorFlow. The layout is the one :mod:`fedkb.model.export` writes (``metadata.json``,
``model.tflite``, ``weights.bin``, ``vocab.json``); file hashes are checked on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.codec import decode_arrays, encode_arrays

ARTIFACT_FORMAT = "fedkb-model/1"
PAD, BOS, EOS, OOV = 0, 1, 2, 3
NUM_SPECIAL = 4


class ArtifactError(ValueError):
    """The directory is not a complete, intact model artifact."""


class WeightsError(ValueError):
    """Weights that do not fit the model: wrong count, name, shape or dtype, or non-finite."""


@dataclass(frozen=True)
class WeightInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Artifact:
    """An artifact read from disk (model bytes kept in memory; weights decoded lazily)."""

    path: Path
    meta: dict[str, Any]
    model_bytes: bytes = field(repr=False)

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Artifact:
        """Read ``path``; with ``verify``, check the recorded SHA-256 of every file."""
        path = Path(path)
        meta_file = path / "metadata.json"
        if not meta_file.is_file():
            raise ArtifactError(f"{path} is not a model artifact (no metadata.json)")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"{path}: unknown artifact format {meta.get('format')!r}")
        art = cls(path, meta, (path / meta["model_file"]).read_bytes())
        if verify:
            for name, rec in meta["files"].items():
                data = art.model_bytes if name == meta["model_file"] else (path / name).read_bytes()
                if hashlib.sha256(data).hexdigest() != rec["sha256"]:
                    raise ArtifactError(f"{path / name}: SHA-256 does not match metadata.json")
        return art

    @property
    def weight_infos(self) -> list[WeightInfo]:
        return [WeightInfo(w["name"], tuple(w["shape"]), w["dtype"]) for w in self.meta["weights"]]

    @property
    def weight_names(self) -> list[str]:
        return [w["name"] for w in self.meta["weights"]]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def batch_size(self) -> int:
        return int(self.meta["batch_size"])

    @property
    def learning_rate(self) -> float:
        return float(self.meta["config"]["learning_rate"])

    def initial_weights(self) -> list[np.ndarray]:
        """The exported initial weights, checked against the metadata."""
        arrays = decode_arrays((self.path / self.meta["weights_file"]).read_bytes())
        return check_weights(self.weight_infos, arrays)

    def vocab(self) -> list[str]:
        return json.loads((self.path / self.meta["vocab"]["file"]).read_text(encoding="utf-8"))


def check_weights(infos: list[WeightInfo], weights: Any) -> list[np.ndarray]:
    """Validate weights against the artifact's list; returns them as float32 C arrays.

    Accepts a list in metadata order or a dict keyed by weight name. Refuses (with
    :class:`WeightsError`) a wrong count or name, a wrong shape, a dtype other than
    float32, and any NaN or infinity, naming the offending weight.
    """
    if isinstance(weights, dict):
        missing = [i.name for i in infos if i.name not in weights]
        extra = sorted(set(weights) - {i.name for i in infos})
        if missing or extra:
            raise WeightsError(f"weights by name: missing {missing}, unexpected {extra}")
        weights = [weights[i.name] for i in infos]
    weights = list(weights)
    if len(weights) != len(infos):
        raise WeightsError(f"expected {len(infos)} weight arrays "
                           f"({', '.join(i.name for i in infos)}), got {len(weights)}")
    out = []
    for info, w in zip(infos, weights, strict=True):
        if not isinstance(w, np.ndarray):
            raise WeightsError(f"weight {info.name!r}: expected a NumPy array, got "
                               f"{type(w).__name__}")
        if w.dtype != np.dtype(info.dtype):
            raise WeightsError(f"weight {info.name!r}: dtype {w.dtype}, expected {info.dtype}")
        if tuple(w.shape) != info.shape:
            raise WeightsError(f"weight {info.name!r}: shape {tuple(w.shape)}, "
                               f"expected {info.shape}")
        if not np.all(np.isfinite(w)):
            bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
            raise WeightsError(f"weight {info.name!r}: {bad} non-finite value(s)")
        out.append(np.ascontiguousarray(w))
    return out


def weights_to_bytes(weights: list[np.ndarray]) -> bytes:
    """Weights (or a delta) in the shared pickle-free format."""
    return encode_arrays(weights)


def weights_from_bytes(data: bytes) -> list[np.ndarray]:
    return decode_arrays(data)
