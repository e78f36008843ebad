"""The registry of devices: who exists, in which population (train or held-out users).

Rows live in SQLite; a read-mostly in-memory map answers the per-request lookups so a
check-in does not touch the database.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable

from fedkb.server.db import Database
from fedkb.server.errors import Unauthorized


class DeviceRegistry:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock
        self._lock = threading.Lock()
        self._population: dict[str, str] = {
            r["id"]: r["population"] for r in db.query("SELECT id, population FROM devices")}
        self._counts = Counter(self._population.values())

    def register(self, population: str, name: str = "") -> str:
        device_id = "d-" + secrets.token_hex(8)
        self.db.insert("devices", {"id": device_id, "population": population, "name": name[:64],
                                   "registered_at": self.clock()})
        with self._lock:
            self._population[device_id] = population
            self._counts[population] += 1
        return device_id

    def population(self, device_id: str) -> str:
        """The device's population; :class:`Unauthorized` if the server does not know it."""
        pop = self._population.get(device_id)
        if pop is None:
            raise Unauthorized(f"unknown device {device_id}; register again", "unknown_device")
        return pop

    def count(self, population: str | None = None) -> int:
        return len(self._population) if population is None else self._counts[population]
