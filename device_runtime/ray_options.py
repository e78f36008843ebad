"""How a fleet runs on a Ray cluster (``fedkb fleet --ray``): addresses and honest resources.

This module never imports Ray: :class:`~fedkb.device_runtime.fleet.FleetConfig` holds a
:class:`RayOptions` (or None for the multiprocessing fleet), and only
:mod:`fedkb.device_runtime.ray_fleet` (imported when a fleet runs with one) needs Ray.

Resources are declared, not guessed by Ray: every training worker asks for
``trainer_cpus`` CPUs and ``trainer_bytes`` of memory (one LiteRT interpreter per model
version, the dataset's shards memory-mapped); every phone shard asks for ``shard_cpus``
and ``shard_base_bytes`` plus ``phone_bytes`` per phone it holds (the multiprocessing
fleet measured ~3.9 kB per idle phone; the default leaves room for busy ones). A shard's
event loop mostly waits on HTTP and its heap, so it declares no CPU by default
(``shard_cpus``): the cores go to training, as with worker processes. Ray then places no
more training workers on a node than its cores, and no more actors than its memory holds.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCAL = "local"  # start a private Ray on this machine for the run (and stop it after)


@dataclass(frozen=True)
class RayOptions:
    """Where the cluster is and what each actor asks of it.

    Attributes:
        address: ``"local"``: start a Ray of this machine's own for the run; ``"auto"``:
            the cluster this machine joined with ``ray start``; ``HOST:PORT`` (the head's
            GCS address) or ``ray://HOST:10001`` (Ray Client).
        shards: phone shard actors (0: one per alive node). Each owns its phones' event
            loop (:class:`~fedkb.device_runtime.worker.Worker`) for the whole run.
        trainers: training workers (0: as many as the cluster's CPUs hold after the shards'
            share). Each keeps one LiteRT interpreter per model and takes any phone's job.
        shard_cpus, trainer_cpus: CPUs each declares.
        phone_bytes, shard_base_bytes, trainer_bytes: memory each declares (bytes).
        queue_size: jobs waiting for a training worker at most (0: 16 per training worker,
            at least 256); a job that finds the queue full is given back at once, like
            one whose deadline passed before a worker took it.
        ready_timeout_s: how long the actors may take to start (pending resources, a slow
            node) before the run gives up with the cluster's resources in the message.
    """

    address: str = LOCAL
    shards: int = 0
    trainers: int = 0
    shard_cpus: float = 0.0
    trainer_cpus: float = 1.0
    phone_bytes: int = 16_000
    shard_base_bytes: int = 300_000_000
    trainer_bytes: int = 500_000_000
    queue_size: int = 0
    ready_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("a Ray address must not be empty (use 'local' or 'auto')")
        if self.shards < 0 or self.trainers < 0 or self.queue_size < 0:
            raise ValueError("shards, trainers and queue_size must not be negative")
        if self.shard_cpus < 0 or self.trainer_cpus <= 0:
            raise ValueError("a training worker needs a positive CPU share")

    def bounded_queue(self, trainers: int) -> int:
        return self.queue_size or max(256, 16 * trainers)
