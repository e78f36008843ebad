"""Versioned global-model checkpoints: atomic writes, hashes, and damage detection.

Version ``v`` is the file ``checkpoints/v{v:06d}.fkb``: :func:`fedkb.codec.encode_arrays`
of the global weights followed by the server optimizer's state. It is written to a
temporary file, fsynced, renamed into place and the directory fsynced, so a crash leaves
either the old set of files or the new one. Its SHA-256 is recorded in the ``models``
table in the same SQLite transaction as the round that produced it; a checkpoint file
without its row (a crash between the two) is ignored and overwritten later.

On start, :meth:`CheckpointStore.latest` walks the recorded versions from newest to
oldest and returns the first whose bytes hash (and decode) correctly; damaged ones are
marked and skipped, so the server falls back to the previous good version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedkb.codec import CodecError, decode_arrays, encode_arrays
from fedkb.server.db import Database

log = logging.getLogger(__name__)


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
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointStore:
    """Reads and writes checkpoint files; their rows live in ``db``'s ``models`` table."""

    def __init__(self, directory: Path, db: Database, num_weights: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = db
        self.num_weights = num_weights

    def path(self, version: int) -> Path:
        return self.dir / f"v{version:06d}.fkb"

    def write(self, version: int, weights: list[np.ndarray], state: list[np.ndarray]
              ) -> tuple[str, Checkpoint]:
        """Write the file (no row yet); returns the file's hash and the checkpoint."""
        data = encode_arrays([*weights, *state])
        atomic_write(self.path(version), data)
        wbytes = encode_arrays(weights)
        return sha256(data), Checkpoint(version, list(weights), list(state), wbytes,
                                        sha256(wbytes))

    def record(self, conn: sqlite3.Connection, version: int, round_id: int | None,
               file_sha: str, now: float) -> None:
        """Insert the version's row (call inside the commit's transaction)."""
        conn.execute("INSERT OR REPLACE INTO models(version, round_id, file, sha256, created_at,"
                     " damaged) VALUES (?, ?, ?, ?, ?, 0)",
                     (version, round_id, self.path(version).name, file_sha, now))

    def load(self, version: int) -> Checkpoint:
        """Read and verify one recorded version; :class:`CodecError` or OSError if damaged."""
        row = self.db.one("SELECT file, sha256 FROM models WHERE version = ?", (version,))
        if row is None:
            raise FileNotFoundError(f"model version {version} is not recorded")
        data = (self.dir / row["file"]).read_bytes()
        if sha256(data) != row["sha256"]:
            raise CodecError(f"checkpoint {row['file']}: SHA-256 mismatch")
        arrays = decode_arrays(data)
        if len(arrays) < self.num_weights:
            raise CodecError(f"checkpoint {row['file']}: {len(arrays)} arrays")
        weights = arrays[: self.num_weights]
        wbytes = encode_arrays(weights)
        return Checkpoint(version, weights, arrays[self.num_weights :], wbytes, sha256(wbytes))

    def latest(self) -> tuple[Checkpoint | None, list[int]]:
        """The newest intact version and the versions found damaged (now marked so)."""
        damaged: list[int] = []
        for row in self.db.query("SELECT version FROM models WHERE damaged = 0 "
                                 "ORDER BY version DESC"):
            v = int(row["version"])
            try:
                return self.load(v), damaged
            except (OSError, CodecError) as exc:
                log.error("checkpoint v%d is damaged (%s); falling back", v, exc)
                self.db.execute("UPDATE models SET damaged = 1 WHERE version = ?", (v,))
                damaged.append(v)
        return None, damaged
