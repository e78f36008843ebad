"""The published model artifact, as the server sees it: metadata, files, weight specs.

The server never imports TensorFlow: it reads ``metadata.json`` (weight names, shapes and
dtypes in order; batch size; file hashes) and the codec-encoded ``weights.bin``, and
serves the artifact's files to devices byte for byte. Publishing copies the artifact
into the state directory (checked against its recorded SHA-256 hashes), so the server
keeps working if the export directory changes or disappears.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.codec import CodecError, decode_arrays
from fedkb.errors import UserError
from fedkb.server.aggregate import Spec, UpdateError, validate_update

METADATA = "metadata.json"
WEIGHTS = "weights.bin"


class ArtifactError(UserError):
    """A directory that is not a usable, intact model artifact."""


@dataclass(frozen=True)
class ServedFile:
    name: str
    data: bytes
    sha256: str


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded artifact: its metadata, its weight specs and the files devices download."""

    path: Path
    meta: dict[str, Any]
    specs: tuple[Spec, ...]
    files: dict[str, ServedFile]

    @property
    def batch_size(self) -> int:
        return int(self.meta.get("batch_size", 16))

    @property
    def model_bytes(self) -> int:
        """Size of one float32 update in codec format (about)."""
        return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize + 64 for s in self.specs)

    def initial_weights(self) -> list[np.ndarray]:
        try:
            arrays = decode_arrays(self.files[WEIGHTS].data)
            validate_update(arrays, self.specs)
        except (CodecError, UpdateError, KeyError) as exc:
            raise ArtifactError(f"{self.path}: weights.bin does not fit metadata.json: {exc}"
                                ) from exc
        return arrays

    @classmethod
    def load(cls, path: str | Path) -> ModelArtifact:
        """Read an artifact directory; every file listed in ``metadata["files"]`` is hashed."""
        path = Path(path)
        try:
            meta = json.loads((path / METADATA).read_text(encoding="utf-8"))
            specs = tuple(Spec(str(w["name"]), tuple(int(d) for d in w["shape"]),
                               str(w.get("dtype", "float32"))) for w in meta["weights"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path} is not a model artifact: {exc}") from exc
        names = {METADATA, WEIGHTS, *meta.get("files", {})}
        files: dict[str, ServedFile] = {}
        for name in sorted(names):
            if "/" in name or name.startswith("."):
                raise ArtifactError(f"{path}: bad file name {name!r} in metadata.json")
            try:
                data = (path / name).read_bytes()
            except OSError as exc:
                raise ArtifactError(f"{path}: cannot read {name}: {exc}") from exc
            digest = hashlib.sha256(data).hexdigest()
            rec = meta.get("files", {}).get(name)
            want = rec.get("sha256") if isinstance(rec, dict) else rec
            if want and want != digest:
                raise ArtifactError(f"{path / name}: SHA-256 does not match metadata.json")
            files[name] = ServedFile(name, data, digest)
        art = cls(path, meta, specs, files)
        art.initial_weights()
        return art

    def copy_to(self, dest: Path) -> ModelArtifact:
        """Copy the artifact's files into ``dest`` (replacing it) and load the copy."""
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in self.files.values():
            (tmp / f.name).write_bytes(f.data)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return ModelArtifact.load(dest)
