"""A worker's downloaded models: one LiteRT interpreter per model file, the newest weights.

Every phone of a worker shares it (a phone's own cache is simulated: see
:mod:`fedkb.device_runtime.phone`); each file is downloaded once and checked against the
SHA-256 its manifest lists. The weights come as the task's plan says: float32, or
float16 (``downlink``), widened to float32 for training.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fedkb import wire
from fedkb.artifact import METADATA_FILE, Artifact
from fedkb.codec import decode_arrays
from fedkb.device_runtime.client import DeviceClient, Retry
from fedkb.device_runtime.phone import ModelFiles
from fedkb.plan_codec import as_float32


class ModelCache:
    """The training thread's interpreters and global weights (each downloaded once).

    The manifest at a task's ``artifact_url`` lists the artifact's files with their
    SHA-256; one interpreter is kept per distinct model file, shared by every version
    that uses it, and only the newest weights are kept.
    """

    def __init__(self, server_url: str) -> None:
        self.client = DeviceClient(server_url)  # the training thread's own HTTP session
        self._models: dict[tuple[str, int, str], ModelFiles] = {}
        self._trainers: dict[str, tuple[Any, int]] = {}

    def close(self) -> None:
        self.client.close()

    def get(self, task: wire.Task) -> ModelFiles:
        """The trainer and global weights for a task's model version."""
        key = (task.artifact_url, task.model_version, task.plan.downlink)
        if key in self._models:
            return self._models[key]
        from fedkb.device_runtime.trainer import Trainer

        manifest = json.loads(self.client.download(task.artifact_url))
        files = manifest["files"]
        meta_raw = self._fetch(files[METADATA_FILE])
        meta = json.loads(meta_raw)
        model_rec = files[meta["model_file"]]
        if model_rec["sha256"] not in self._trainers:
            model_bytes = self._fetch(model_rec)
            # only what training needs: the initial weights and vocabulary stay on the server
            artifact = Artifact.from_files({METADATA_FILE: meta_raw,
                                            meta["model_file"]: model_bytes}, task.artifact_url)
            self._trainers[model_rec["sha256"]] = (Trainer(artifact),
                                                   len(model_bytes) + len(meta_raw))
        trainer, artifact_bytes = self._trainers[model_rec["sha256"]]
        # a float16 broadcast (plan.downlink) is half the bytes; training is float32
        rec = manifest["weights_float16" if task.plan.downlink == "float16" else "weights"]
        raw = self._fetch(rec)
        self._models = {key: ModelFiles(trainer, as_float32(decode_arrays(raw)), len(raw),
                                        artifact_bytes)}
        return self._models[key]

    def _fetch(self, rec: dict[str, Any]) -> bytes:
        """Download a manifest entry and check its SHA-256 (a bad copy is retried)."""
        data = self.client.download(rec["url"])
        if hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise Retry(f"download of {rec['url']} failed its SHA-256 check", 2.0)
        return data
