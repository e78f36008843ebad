"""The served global model: the artifact, the checkpoint in force, and recent versions.

Versions are immutable: version 0 is the artifact's initial weights, each committed
training round writes the next (:class:`~fedkb.server.checkpoints.CheckpointStore`).
Downloads of any version go through :meth:`GlobalModel.weights`, which keeps the
current checkpoint and a few recent ones in memory and reads older ones from disk
outside the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedkb.artifact import Artifact
from fedkb.codec import CodecError
from fedkb.server.checkpoints import Checkpoint, CheckpointStore
from fedkb.server.db import Database
from fedkb.server.errors import NotFound
from fedkb.server.metrics import ServerMetrics

CACHED_VERSIONS = 5  # checkpoints kept in memory (the current one always among them)


def unsafe_weights(weights: Sequence[np.ndarray], max_abs: float) -> str | None:
    """Why ``weights`` must not be served (None if they may): a NaN or Inf anywhere, or a
    weight of magnitude over ``max_abs`` (``round.max_weight_abs``). The round machine
    checks every new model with it before writing its checkpoint."""
    for i, w in enumerate(weights):
        if not np.all(np.isfinite(w)):
            return f"has non-finite weights (array {i})"
        peak = float(np.max(np.abs(w))) if w.size else 0.0
        if peak > max_abs:
            return f"has a weight of magnitude {peak:.4g} (array {i}), over {max_abs:.4g}"
    return None


class GlobalModel:
    """The artifact and checkpoints a server publishes; ``current`` is the model in force."""

    def __init__(self, db: Database, metrics: ServerMetrics, lock: threading.RLock) -> None:
        self.db, self.metrics, self.lock = db, metrics, lock
        self.artifact: Artifact | None = None
        self.store: CheckpointStore | None = None
        self.current: Checkpoint | None = None
        self.damaged_versions: list[int] = []
        self._cache: dict[int, Checkpoint] = {}

    def attach(self, artifact: Artifact, store: CheckpointStore) -> Checkpoint | None:
        """Serve ``artifact`` from ``store``: its newest intact checkpoint (None if none)."""
        self.artifact, self.store = artifact, store
        ckpt, self.damaged_versions = store.latest()
        return ckpt

    def next_version(self) -> int:
        return 1 + int(self.db.one("SELECT COALESCE(MAX(version), -1) m FROM models")["m"])

    def write(self, version: int, weights: Sequence[np.ndarray],
              optimizer_state: Sequence[np.ndarray]) -> tuple[str, Checkpoint]:
        """Write ``version``'s checkpoint file (not yet recorded, not yet served)."""
        assert self.store is not None
        return self.store.write(version, list(weights), list(optimizer_state))

    def record(self, conn: Any, version: int, round_id: int | None, file_sha: str,
               now: float) -> None:
        """Record a written version in the database transaction ``conn``."""
        assert self.store is not None
        self.store.record(conn, version, round_id, file_sha, now)

    def publish_initial(self, weights: Sequence[np.ndarray], now: float) -> int:
        """Version 0 (or the next, if every checkpoint was damaged): ``weights``."""
        version = self.next_version()
        file_sha, ckpt = self.write(version, weights, [])
        with self.db.transaction() as conn:
            self.record(conn, version, None, file_sha, now)
        self.serve(ckpt)
        return version

    def serve(self, ckpt: Checkpoint) -> None:
        """Make ``ckpt`` the model in force; older versions beyond the cache's size are
        dropped from memory (a committed version is ~3 model sizes: weights, optimizer
        state and download bytes; keeping every one held gigabytes after 200 rounds)."""
        self.current = ckpt
        self._cache[ckpt.version] = ckpt
        while len(self._cache) > CACHED_VERSIONS:
            self._cache.pop(min(k for k in self._cache if k != ckpt.version))
        self.metrics.model_version.set(ckpt.version)

    def weights(self, version: int) -> Checkpoint:
        """The checkpoint of ``version`` (for downloads); :class:`NotFound` if none."""
        with self.lock:
            if self.current is not None and version == self.current.version:
                return self.current
            if version in self._cache:
                return self._cache[version]
        if self.store is None:
            raise NotFound("no model has been published", "no_model")
        try:
            ckpt = self.store.load(version)
        except (OSError, CodecError) as exc:
            raise NotFound(f"model version {version} is not available ({exc})") from exc
        with self.lock:
            if len(self._cache) >= CACHED_VERSIONS:
                current = self.current.version if self.current else None
                self._cache.pop(min(k for k in self._cache if k != current))
            self._cache[version] = ckpt
        return ckpt
