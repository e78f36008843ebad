"""Eligibility and pace steering (Bonawitz et al. 2019, Sec. 2.3 "Pace Steering").

The server re-checks what a phone reports on every check-in (Hard et al. 2018: devices
train only when charging, on an unmetered network and idle; we also want some battery),
and tells a phone that gets no task when to come back. The reconnection window is sized
so that, across the population, about as many phones check in per selection window as
the next round needs, with multiplicative jitter so they do not come back in lockstep
(the thundering herd).
"""

from __future__ import annotations

import random

from fedkb.server.config import RoundConfig
from fedkb.wire import Conditions


def ineligibility(c: Conditions, rc: RoundConfig) -> str | None:
    """Why a device may not take a task now (None: it may): one of
    :data:`fedkb.wire.INELIGIBILITY_REASONS`, the words the phone uses too."""
    return c.ineligibility(charging=rc.require_charging, unmetered=rc.require_unmetered,
                           idle=rc.require_idle, min_battery=rc.min_battery)


def jitter(seconds: float, rc: RoundConfig, rng: random.Random) -> float:
    """``seconds`` scaled by a uniform factor in [1 - jitter, 1 + jitter]."""
    return seconds * rng.uniform(1.0 - rc.retry_jitter, 1.0 + rc.retry_jitter)


def steer(population: int, wanted_per_window: int, rc: RoundConfig, rng: random.Random,
          ) -> float:
    """Seconds until a device that got no task should check in again.

    Args:
        population: devices of this kind the server knows.
        wanted_per_window: devices the next round of this kind selects.

    A population of N phones each returning after T seconds on average brings N / T
    check-ins per second; the next round wants ``wanted_per_window`` of them per
    selection window W, times ``pace_margin`` because a share of the returning phones is
    unplugged or busy by then, so T = N * W / (wanted * margin), clamped to
    [retry_min_s, retry_max_s].
    """
    rate = max(wanted_per_window, 1) * rc.pace_margin / rc.selection_window_s
    base = min(max(max(population, 1) / rate, rc.retry_min_s), rc.retry_max_s)
    return round(jitter(base, rc, rng), 3)


def ineligible_retry(rc: RoundConfig, rng: random.Random) -> float:
    return round(jitter(rc.ineligible_retry_s, rc, rng), 3)
