"""Who a phone is: identity, user shard, hardware tier, bandwidth, time zone, trace.

Tiers and bandwidths follow the spread FedScale reports for real phones (compute
heterogeneity of several x between low- and high-end devices; Wi-Fi bandwidth spread
over an order of magnitude). ``compute_factor`` multiplies the LiteRT step time measured
on this machine to give the phone's step time; bandwidths turn bytes into seconds.

Profiles are frozen and small; a fleet of 10,000 keeps 10,000 of them in memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fedkb.device_runtime.traces import Trace, diurnal_trace
from fedkb.wire import Population


@dataclass(frozen=True)
class Tier:
    name: str
    share: float  # of the population
    compute_factor: float  # phone step time / this machine's LiteRT step time
    ram_mb: int


TIERS = (
    Tier("low", 0.30, 4.0, 2048),
    Tier("mid", 0.50, 2.0, 4096),
    Tier("high", 0.20, 1.0, 8192),
)


@dataclass(frozen=True)
class DeviceProfile:
    name: str  # the fleet's stable name of the phone (the server issues its device id)
    user: str  # whose shard this phone holds
    role: Population  # its population: "train" (a training user) or "heldout" (it only evaluates)
    tier: Tier
    down_bps: float  # download bandwidth, bytes per second
    up_bps: float
    tz_hours: float
    trace: Trace

    def download_s(self, nbytes: int) -> float:
        return nbytes / self.down_bps

    def upload_s(self, nbytes: int) -> float:
        return nbytes / self.up_bps


def _rng_for(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def make_profile(user: str, role: Population, seed: int, trace: Trace | None = None,
                 trace_days: int = 3, name: str | None = None) -> DeviceProfile:
    """A reproducible profile for a phone holding ``user``'s shard.

    The same (seed, name) gives the same phone; ``name`` defaults to one derived from the
    user (a fleet with more phones than users names the extra phones itself).

    Time zones are spread over UTC-8..UTC+9 so that some phones are always at night.
    ``trace`` replaces the generated diurnal trace (a replayed real trace).
    """
    name = name or f"phone-{zlib.crc32(user.encode()):08x}"
    rng = _rng_for(seed, name)
    tier = TIERS[int(rng.choice(len(TIERS), p=[t.share for t in TIERS]))]
    tz = float(rng.integers(-8, 10))
    # Wi-Fi download ~ lognormal around 25 Mbit/s, upload around a quarter of that
    down = float(np.exp(rng.normal(np.log(25e6 / 8), 0.7)))
    up = down * float(rng.uniform(0.15, 0.4))
    if trace is None:
        trace = diurnal_trace(rng, tz_hours=tz, days=trace_days)
    return DeviceProfile(name, user, role, tier, down, up, tz, trace)
