"""Versioned global-model checkpoints in safetensors: atomic writes, digests, damage detection.

Version ``v`` is the file ``checkpoints/v{v:06d}.safetensors`` (see
:mod:`fedkb.tensorfile`): the global weights, each tensor named by its weight spec
(``embedding``, ``rnn_kernel``, ...), and the server optimizer's state as the tensors
``state.0``, ``state.1``, ... in :meth:`Strategy.state` order (none for plain FedAvg).
Its ``__metadata__`` holds strings: ``format`` (:data:`CHECKPOINT_FORMAT`),
``model_version``, ``weights`` (the canonical weight order, a JSON list) and
``state_tensors`` (how many ``state.i`` there are).

The file is written to a temporary file, fsynced, renamed into place and the directory
fsynced, so a crash leaves either the old set of files or the new one (and perhaps the
temporary file, removed on the next start). Its SHA-256 is
recorded in the ``models`` table in the same SQLite transaction as the round that
produced it; a checkpoint file without its row (a crash between the two) is ignored and
overwritten later. Once that transaction commits, ``checkpoints/latest.safetensors`` is
switched (atomically; a symbolic link where the file system has them, else a copy) to
the new version, so it always names the newest committed model. On start,
:meth:`CheckpointStore.latest` walks the recorded versions from newest to oldest and
returns the first whose bytes hash and decode correctly; damaged ones are marked and
skipped, so the server falls back to the previous good version (and ``latest`` with it).

Load the global model yourself (NumPy arrays by weight name; ``state.*`` are the server
optimizer's, not the model's)::

    from safetensors.numpy import load_file
    tensors = load_file("STATE_DIR/checkpoints/latest.safetensors")
    weights = {k: v for k, v in tensors.items() if not k.startswith("state.")}

What devices download is not at rest: ``/v1/models/<v>/weights`` serves the weights in
:mod:`fedkb.codec` format (``Checkpoint.weights_bytes``, ETag = its SHA-256).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedkb.codec import CodecError, encode_arrays
from fedkb.server.db import Database
from fedkb.tensorfile import FORMAT_KEY, TensorFileError, decode_weights, encode_weights
from fedkb.weights import WeightsError, WeightSpec

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "fedkb-checkpoint/1"
LATEST = "latest.safetensors"
STATE_PREFIX = "state."


class CheckpointError(CodecError):
    """A checkpoint whose bytes do not hash, decode or fit the model as recorded."""


@dataclass(frozen=True)
class Checkpoint:
    version: int
    weights: list[np.ndarray]
    optimizer_state: list[np.ndarray]
    weights_bytes: bytes  # the weights alone, codec-encoded: what devices download
    sha256: str  # of weights_bytes (the download's ETag)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: the partial file would only take more room
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_checkpoint(specs: Sequence[WeightSpec], version: int, weights: Sequence[np.ndarray],
                      state: Sequence[np.ndarray]) -> bytes:
    """The safetensors bytes of one checkpoint (layout in the module docstring)."""
    extra = {f"{STATE_PREFIX}{i}": np.asarray(a) for i, a in enumerate(state)}
    return encode_weights(specs, weights, {FORMAT_KEY: CHECKPOINT_FORMAT,
                                           "model_version": str(version),
                                           "state_tensors": str(len(extra))}, extra)


def decode_checkpoint(specs: Sequence[WeightSpec], data: bytes
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The weights (spec order) and optimizer state of checkpoint bytes, or CheckpointError."""
    try:
        weights, extra, meta = decode_weights(specs, data)
    except (TensorFileError, WeightsError) as exc:
        raise CheckpointError(str(exc)) from exc
    if meta.get(FORMAT_KEY) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"unknown checkpoint format {meta.get(FORMAT_KEY)!r}")
    try:
        n = int(meta.get("state_tensors", "0"))
    except ValueError as exc:
        raise CheckpointError(f"bad state_tensors {meta['state_tensors']!r}") from exc
    if set(extra) != {f"{STATE_PREFIX}{i}" for i in range(n)}:
        raise CheckpointError(f"expected {n} optimizer state tensors, found {sorted(extra)}")
    return weights, [extra[f"{STATE_PREFIX}{i}"] for i in range(n)]


class CheckpointStore:
    """Reads and writes checkpoint files; their rows live in ``db``'s ``models`` table."""

    def __init__(self, directory: Path, db: Database, specs: Sequence[WeightSpec]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = db
        self.specs = tuple(specs)
        self.remove_stale_temporaries()

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the temporary files a kill during a write left behind (on start).

        :func:`atomic_write` and :meth:`link_latest` write ``.NAME.tmp-PID`` and rename it;
        a process killed in between leaves it, and nothing else would ever remove it.
        Only one server writes a state directory (``STATE/lock``), so on start none is
        in use.
        """
        removed = []
        for p in self.dir.iterdir():
            if (p.name.startswith(".") and ".tmp-" in p.name) or p.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p.name)
        if removed:
            log.warning("removed %d stale temporary file(s) in %s: %s", len(removed), self.dir,
                        ", ".join(sorted(removed)))
        return removed

    def path(self, version: int) -> Path:
        return self.dir / f"v{version:06d}.safetensors"

    @property
    def latest_path(self) -> Path:
        """``latest.safetensors``: the newest committed version's file."""
        return self.dir / LATEST

    def write(self, version: int, weights: list[np.ndarray], state: list[np.ndarray]
              ) -> tuple[str, Checkpoint]:
        """Write the file (no row yet); returns the file's hash and the checkpoint."""
        data = encode_checkpoint(self.specs, version, weights, state)
        atomic_write(self.path(version), data)
        wbytes = encode_arrays(weights)
        return sha256(data), Checkpoint(version, list(weights), list(state), wbytes,
                                        sha256(wbytes))

    def record(self, conn: sqlite3.Connection, version: int, round_id: int | None,
               file_sha: str, now: float) -> None:
        """Insert the version's row (call inside the commit's transaction).

        ``latest.safetensors`` moves to this version once the transaction commits.
        """
        conn.execute("INSERT OR REPLACE INTO models(version, round_id, file, sha256, created_at,"
                     " damaged) VALUES (?, ?, ?, ?, ?, 0)",
                     (version, round_id, self.path(version).name, file_sha, now))
        self.db.after_commit(lambda: self.link_latest(version))

    def link_latest(self, version: int) -> None:
        """Point ``latest.safetensors`` at ``version``'s file (atomic replace)."""
        target, link = self.path(version), self.latest_path
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target.name, tmp)
        except OSError:  # no symbolic links on this file system: a copy
            shutil.copyfile(target, tmp)
        os.replace(tmp, link)
        _fsync_dir(self.dir)

    def load(self, version: int) -> Checkpoint:
        """Read and verify one recorded version; :class:`CheckpointError` or OSError if damaged."""
        row = self.db.one("SELECT file, sha256 FROM models WHERE version = ?", (version,))
        if row is None:
            raise FileNotFoundError(f"model version {version} is not recorded")
        data = (self.dir / row["file"]).read_bytes()
        if sha256(data) != row["sha256"]:
            raise CheckpointError(f"checkpoint {row['file']}: SHA-256 mismatch")
        try:
            weights, state = decode_checkpoint(self.specs, data)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {row['file']}: {exc}") from exc
        wbytes = encode_arrays(weights)
        return Checkpoint(version, weights, state, wbytes, sha256(wbytes))

    def latest(self) -> tuple[Checkpoint | None, list[int]]:
        """The newest intact version and the versions found damaged (now marked so).

        ``latest.safetensors`` is pointed at the version returned.
        """
        damaged: list[int] = []
        for row in self.db.query("SELECT version FROM models WHERE damaged = 0 "
                                 "ORDER BY version DESC"):
            v = int(row["version"])
            try:
                ckpt = self.load(v)
            except (OSError, CodecError) as exc:
                log.error("checkpoint v%d is damaged (%s); falling back", v, exc)
                self.db.execute("UPDATE models SET damaged = 1 WHERE version = ?", (v,))
                damaged.append(v)
                continue
            self.link_latest(v)
            return ckpt, damaged
        return None, damaged
