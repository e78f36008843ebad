"""The model artifact contract: its files, its format id, its special tokens, one reader.

An artifact (written by :mod:`fedkb.model.export`) is a directory of::

    metadata.json        self-description: format, config, weights (name, shape, dtype in
                         canonical order), batch size, sequence length, vocabulary size,
                         the SHA-256 and size of every other file (written last)
    model.tflite         the LiteRT training model (signatures train, evaluate, infer,
                         get_weights, set_weights)
    weights.safetensors  the initial weights (see :mod:`fedkb.tensorfile`)
    vocab.json           the vocabulary (JSON list, index = id), starting with
                         :data:`SPECIAL_TOKENS`

:class:`Artifact` reads one from a directory (:meth:`Artifact.load`) or from files
already in memory (:meth:`Artifact.from_files`, e.g. what a phone downloaded) and checks
the SHA-256 of every file it holds against ``metadata.json``. Everyone reads artifacts
through it: the device runtime, the server (which serves the files byte for byte and
predicts with them), ``fedkb model check`` and the exporter's tests.

NumPy, safetensors and the standard library only: a phone imports this.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.errors import UserError
from fedkb.tensorfile import FORMAT_KEY, TensorFileError, decode_weights, encode_weights
from fedkb.weights import WeightsError, WeightSpec, specs_from_json

ARTIFACT_FORMAT = "fedkb-model/2"  # 2: initial weights in safetensors (1: fedkb.codec)
METADATA_FILE = "metadata.json"
MODEL_FILE = "model.tflite"
WEIGHTS_FILE = "weights.safetensors"
VOCAB_FILE = "vocab.json"

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<oov>")
PAD, BOS, EOS, OOV = 0, 1, 2, 3
NUM_SPECIAL = len(SPECIAL_TOKENS)  # ids below this are never a suggestion or a recall target

REQUIRED_KEYS = ("format", "weights", "files", "model_file", "weights_file", "batch_size",
                 "seq_len", "vocab_size")


class ArtifactError(UserError, ValueError):
    """Files that are not a complete, intact model artifact of this format."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ArtifactFile:
    """One file of an artifact: its name, bytes and SHA-256 (served to devices as is)."""

    name: str
    data: bytes = field(repr=False)
    sha256: str


def _parse_metadata(raw: bytes, where: str) -> tuple[dict[str, Any], tuple[WeightSpec, ...]]:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{where}: metadata.json is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where}: metadata.json is not a JSON object")
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{where}: unknown artifact format {meta.get('format')!r} "
                            f"(this code reads {ARTIFACT_FORMAT!r}; export the model again)")
    try:
        specs = specs_from_json(meta["weights"])
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise KeyError(", ".join(missing))
        listed = meta["files"]
        if not isinstance(listed, dict) or not all(
                isinstance(r, dict) and isinstance(r.get("sha256"), str) for r in listed.values()):
            raise TypeError("'files' must map names to {'sha256': ..., 'bytes': ...}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: metadata.json lacks or garbles {exc}") from exc
    for name in listed:
        if "/" in name or "\\" in name or name.startswith(".") or name == METADATA_FILE:
            raise ArtifactError(f"{where}: bad file name {name!r} in metadata.json")
    return meta, specs


def read_regular_file(directory: Path, name: str) -> bytes:
    """The bytes of the regular file ``directory/name``, itself in ``directory``.

    Refuses a symbolic link (an artifact listing ``leak.txt -> /etc/passwd`` would have
    the server copy that file and serve it to anyone) and anything not a regular file (a
    FIFO or a device would block or never end); OSError says which.
    """
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ValueError(f"bad file name {name!r}")
    fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        return fh.read()


@dataclass(frozen=True)
class Artifact:
    """A verified artifact held in memory: metadata, weight specs and file bytes.

    ``files`` holds ``metadata.json`` and every listed file that was given (from a
    directory: all of them). ``path`` is where it came from (a directory, a URL), if anywhere.
    """

    meta: dict[str, Any]
    specs: tuple[WeightSpec, ...]
    files: Mapping[str, ArtifactFile] = field(repr=False)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        """Read the directory ``path``: metadata.json and every file it lists, all hash-checked."""
        path = Path(path)
        try:
            raw = read_regular_file(path, METADATA_FILE)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path} is not a model artifact (no readable metadata.json)"
                                ) from exc
        meta, _ = _parse_metadata(raw, str(path))
        files = {METADATA_FILE: raw}
        for name in meta["files"]:
            try:
                files[name] = read_regular_file(path, name)
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{path}: cannot read {name}: {exc}") from exc
        return cls.from_files(files, path)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], path: str | Path | None = None) -> Artifact:
        """An artifact from ``files`` (name -> bytes) already in memory.

        ``metadata.json`` and the model file are required; other listed files may be absent
        (a phone downloads what it needs), but every file present must be listed and match
        its recorded SHA-256, and the initial weights, if present, must fit the specs.
        """
        where = str(path) if path is not None else "artifact"
        if METADATA_FILE not in files:
            raise ArtifactError(f"{where} is not a model artifact (no metadata.json)")
        meta, specs = _parse_metadata(files[METADATA_FILE], where)
        if meta["model_file"] not in files:
            raise ArtifactError(f"{where}: the model file {meta['model_file']!r} is missing")
        held: dict[str, ArtifactFile] = {}
        for name, data in files.items():
            digest = sha256(data)
            if name != METADATA_FILE:
                if name not in meta["files"]:
                    raise ArtifactError(f"{where}: {name} is not listed in metadata.json")
                if meta["files"][name]["sha256"] != digest:
                    raise ArtifactError(f"{where}: {name}: SHA-256 does not match metadata.json")
            held[name] = ArtifactFile(name, bytes(data), digest)
        art = cls(meta, specs, held, Path(path) if path is not None else None)
        if meta["weights_file"] in held:
            art.initial_weights()  # refuse weights that do not fit the specs now
        return art

    # --- what the metadata says ---------------------------------------------------------

    @property
    def weight_names(self) -> list[str]:
        return [s.name for s in self.specs]

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

    @property
    def fingerprint(self) -> dict[str, str]:
        """SHA-256 of every held file: equal fingerprints mean the same artifact."""
        return {name: f.sha256 for name, f in self.files.items()}

    @property
    def update_bytes(self) -> int:
        """About the size of one float32 update in codec format (an upload's payload)."""
        return sum(s.nbytes + 64 for s in self.specs)

    # --- the files ----------------------------------------------------------------------

    def file(self, name: str) -> bytes:
        """The bytes of a held file (:class:`ArtifactError` if not held)."""
        f = self.files.get(name)
        if f is None:
            raise ArtifactError(f"{self.path or 'artifact'}: {name} is not held")
        return f.data

    @property
    def model_bytes(self) -> bytes:
        """``model.tflite``: what a LiteRT interpreter loads."""
        return self.file(self.meta["model_file"])

    def initial_weights(self) -> list[np.ndarray]:
        """The exported initial weights (float32, spec order), checked against the specs."""
        name = self.meta["weights_file"]
        try:
            weights, _, _ = decode_weights(self.specs, self.file(name))
        except (TensorFileError, WeightsError) as exc:
            raise ArtifactError(f"{self.path or 'artifact'}: {name} does not fit "
                                f"metadata.json: {exc}") from exc
        return weights

    def vocab(self) -> list[str]:
        """The model's vocabulary (index = id)."""
        rec = self.meta.get("vocab")
        if not isinstance(rec, dict) or "file" not in rec:
            raise ArtifactError(f"{self.path or 'artifact'}: metadata.json names no vocabulary")
        try:
            words = json.loads(self.file(rec["file"]).decode("utf-8"))
        except ValueError as exc:
            raise ArtifactError(f"{rec['file']} is not JSON: {exc}") from exc
        return [str(w) for w in words]

    def save(self, dest: str | Path) -> Artifact:
        """Write every held file into ``dest`` (replacing it, atomically) and read it back."""
        dest = Path(dest)
        missing = sorted(set(self.meta["files"]) - set(self.files))
        if missing:
            raise ArtifactError(f"cannot save a partial artifact (missing {missing})")
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in self.files.values():
            (tmp / f.name).write_bytes(f.data)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return Artifact.load(dest)


def initial_weights_file(specs: Sequence[WeightSpec], weights: Sequence[np.ndarray]) -> bytes:
    """The bytes of ``weights.safetensors`` for ``weights`` (checked, spec order)."""
    return encode_weights(specs, weights, {FORMAT_KEY: ARTIFACT_FORMAT})


def write_artifact(out: str | Path, meta: Mapping[str, Any], files: Mapping[str, bytes]
                   ) -> Artifact:
    """Write ``files``, then ``metadata.json`` last, into ``out``; returns the artifact read back.

    ``meta`` is the self-description; this adds ``format``, the ``model_file`` and
    ``weights_file`` names when not given, and ``files`` (SHA-256 and size of each file).
    A directory whose ``metadata.json`` is missing is no artifact, so an interrupted
    write is never mistaken for one.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    full = {"format": ARTIFACT_FORMAT, "model_file": MODEL_FILE, "weights_file": WEIGHTS_FILE,
            **meta,
            "files": {n: {"sha256": sha256(d), "bytes": len(d)} for n, d in files.items()}}
    (out / METADATA_FILE).write_text(json.dumps(full, indent=1), encoding="utf-8")
    return Artifact.load(out)


__all__ = ["ARTIFACT_FORMAT", "BOS", "EOS", "METADATA_FILE", "MODEL_FILE", "NUM_SPECIAL", "OOV",
           "PAD", "SPECIAL_TOKENS", "VOCAB_FILE", "WEIGHTS_FILE", "Artifact", "ArtifactError",
           "ArtifactFile", "initial_weights_file", "write_artifact"]
