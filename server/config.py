"""Frozen configuration of the server, its rounds and its aggregation strategy.

Three layers, each a frozen dataclass passed explicitly (never read from globals):

- :class:`RoundConfig`: the protocol knobs of Bonawitz et al. 2019 ("Towards Federated
  Learning at Scale: System Design"): report goal, over-selection, selection window,
  reporting deadline, minimum fraction, pace steering, eligibility.
- :class:`ClientConfig`: what a training task asks of a phone (lr, epochs, steps).
- :class:`StrategyConfig`: which server optimizer turns the mean delta into a new model.
- :class:`PrivacyConfig`: user-level differential privacy of training rounds
  (DP-FedAvg, DP-FTRL; :mod:`fedkb.server.privacy`).
- :class:`CompressionConfig`: how updates and weights travel (uplink encoding, downlink).
- :class:`SecAggConfig`: secure aggregation of training rounds (:mod:`fedkb.server.secure_round`).
- :class:`ServerConfig`: where state lives, tokens, limits, and the tables above.

A config file (``--config FILE``, JSON or TOML) holds server keys at the top level and
``[round]`` / ``[client]`` / ``[strategy]`` / ``[predict]`` / ``[privacy]`` /
``[compression]`` / ``[secagg]`` tables; unknown keys are refused. Every value is checked where the
dataclass is built (``__post_init__``): the type of its field (a whole number for an
``int``, never a boolean; ``true``/``false`` for a ``bool``), finite, and within range,
so a config file, an admin PATCH and an override read back from the database all pass
the same gate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkb.errors import UserError

log = logging.getLogger(__name__)

class ConfigError(UserError):
    """A configuration value or file that cannot be used."""


@dataclass(frozen=True)
class RoundConfig:
    """How rounds are run.

    Attributes:
        report_goal: reports a training round wants (it commits as soon as it has them).
        overselect: devices selected per report wanted (1.3: Bonawitz et al. 2019).
        min_fraction: share of ``report_goal`` needed to commit at the deadline (else the
            round is abandoned); also the number of devices selection must reach.
        selection_window_s: how long a round stays open for selection.
        reporting_deadline_s: how long selected devices have to report, counted from the
            end of selection.
        pipeline: let the next training round select its devices while the previous one
            trains; they start from the model that round commits (no staleness).
        claim_poll_s: how soon (at least) a device selected ahead of its round's model
            checks in again for its task (the server asks it back about when the round
            training now should end); selection waits ``claim_window_s`` (five times
            that) for it once the model is there.
        eval_every: an evaluation round on held-out devices every N committed versions
            (0: never). ``eval_goal`` reports are wanted (over-selected likewise).
        require_charging, require_unmetered, require_idle, min_battery: eligibility, checked
            again by the server on every check-in.
        retry_min_s, retry_max_s, retry_jitter, ineligible_retry_s: pace steering.
        pace_margin: bring back this many times the check-ins a round needs, since some
            steered phones are no longer eligible (or are busy) when their time comes.
        max_rounds: stop scheduling training rounds after this many commits (None: never).
        rejoin_after_rounds: a device whose training report was accepted gets no other
            training task until this many newer model versions have been committed (0: no
            wait; late, aborted and abandoned tasks do not count). Production
            systems limit how often a phone takes part; without a limit the phones with
            the least data finish first, check in first and are picked round after round.
        min_registered: a training round opens only once this many devices of the
            training population have registered (0: at once). A server started together
            with its fleet otherwise opens round 1 before most phones exist, and its
            selection window closes short (abandoned, or committed with fewer devices).
        max_update_norm: the largest global L2 norm a training update may have; a longer
            one is refused (422 ``update_too_large``, counted in the round's stats). None:
            derived from the model (:func:`fedkb.server.aggregate.derived_update_norm`: a
            multiple of the global norm of its initial weights).
        max_weight_abs: a committed model with any weight of larger magnitude (or any
            NaN/Inf) is not served: its round is abandoned (``unsafe_model``) and the
            previous model stays in force.
    """

    report_goal: int = 10
    overselect: float = 1.3
    min_fraction: float = 0.8
    selection_window_s: float = 30.0
    reporting_deadline_s: float = 120.0
    pipeline: bool = True
    claim_poll_s: float = 1.0
    eval_every: int = 5
    eval_goal: int = 10
    require_charging: bool = True
    require_unmetered: bool = True
    require_idle: bool = True
    min_battery: float = 0.2
    retry_min_s: float = 5.0
    retry_max_s: float = 600.0
    retry_jitter: float = 0.2
    ineligible_retry_s: float = 300.0
    pace_margin: float = 3.0
    max_rounds: int | None = None
    rejoin_after_rounds: int = 0
    min_registered: int = 0
    max_update_norm: float | None = None
    max_weight_abs: float = 1000.0

    def __post_init__(self) -> None:
        check_fields(self, "round")
        _positive(self, "max_weight_abs")
        if self.max_update_norm is not None:
            _positive(self, "max_update_norm")
        _positive(self, "report_goal", "eval_goal", "selection_window_s",
                  "reporting_deadline_s", "retry_min_s", "retry_max_s", "ineligible_retry_s",
                  "pace_margin", "claim_poll_s")
        if self.overselect < 1.0:
            raise ConfigError("round.overselect must be >= 1")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ConfigError("round.min_fraction must be in (0, 1]")
        if not 0.0 <= self.retry_jitter < 1.0 or not 0.0 <= self.min_battery <= 1.0:
            raise ConfigError("round.retry_jitter must be in [0, 1), min_battery in [0, 1]")
        if self.eval_every < 0 or self.rejoin_after_rounds < 0 or self.min_registered < 0 or (
                self.max_rounds is not None and self.max_rounds < 0):
            raise ConfigError("round.eval_every, round.max_rounds, round.min_registered and "
                              "round.rejoin_after_rounds must be >= 0")
        if self.retry_min_s > self.retry_max_s:
            raise ConfigError("round.retry_min_s must be <= retry_max_s")

    @property
    def claim_window_s(self) -> float:
        """How long a configured round waits for its devices selected in advance."""
        return 5.0 * self.claim_poll_s

    def target(self, goal: int) -> int:
        """Devices to select for ``goal`` reports (over-selection)."""
        return max(goal, math.ceil(goal * self.overselect - 1e-9))

    def min_reports(self, goal: int) -> int:
        """Reports needed to commit at the deadline."""
        return max(1, math.ceil(goal * self.min_fraction - 1e-9))

    def replace(self, **changes: Any) -> RoundConfig:
        return _replace(self, "round", changes)


@dataclass(frozen=True)
class ClientConfig:
    """What each training task asks of a phone (the device half of the plan; the batch
    size comes from the artifact). The strategy turns it into each task's
    :class:`~fedkb.wire.Plan`.

    Attributes:
        lr: the phone's SGD learning rate.
        epochs: passes over the phone's shard.
        max_steps: at most this many SGD steps per task.
        grad_clip: each local SGD step's gradient is clipped to this global L2 norm on
            the phone, inside the LiteRT ``train`` signature (None: not clipped). It
            bounds how far one step can move the weights (``lr * grad_clip``), so a
            long shard at a large lr cannot blow up. The default 5 binds on ~1% of the
            `small` model's steps at lr 1.0 (their norms: median 0.8, p99 4.2;
            bench/README.md, "The fleet at the compute floor").
    """

    lr: float = 0.5
    epochs: int = 1
    max_steps: int = 50
    grad_clip: float | None = 5.0

    def __post_init__(self) -> None:
        check_fields(self, "client")
        _positive(self, "lr", "epochs", "max_steps")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError("client.grad_clip must be positive")

    def replace(self, **changes: Any) -> ClientConfig:
        return _replace(self, "client", changes)


@dataclass(frozen=True)
class StrategyConfig:
    """The server optimizer (Reddi et al. 2021, "Adaptive Federated Optimization").

    Attributes:
        name: a key of :data:`fedkb.server.strategy.STRATEGIES`: ``fedavg`` (server
            SGD), ``fedavgm`` (server momentum; ``nesterov`` as in Hard et al. 2018) or
            ``fedadam``.
        server_lr: server learning rate (1.0 with ``fedavg`` is plain FedAvg).
        momentum, nesterov: for ``fedavgm``.
        beta1, beta2, tau: for ``fedadam`` (``tau`` is the adaptivity epsilon).
        clip_norm: clip each device delta to this L2 norm before averaging (None: off).
        decay_rounds: cosine decay of ``server_lr`` to a tenth of it over this many model
            versions (0: constant); set it to the rounds the run will have.
        weighting: ``examples`` (FedAvg: each update weighted by its examples) or
            ``uniform`` (weight 1 each: what secure and DP rounds compute, which cannot
            weight an update the server never sees).
    """

    name: str = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9
    nesterov: bool = True
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    clip_norm: float | None = None
    decay_rounds: int = 0
    weighting: str = "examples"

    def __post_init__(self) -> None:
        check_fields(self, "strategy")
        if self.weighting not in ("examples", "uniform"):
            raise ConfigError(f"strategy.weighting must be examples or uniform, not "
                              f"{self.weighting!r}")
        if self.decay_rounds < 0:
            raise ConfigError("strategy.decay_rounds must be >= 0")
        # the registry lives with the strategies, which import this module: read it lazily
        from fedkb.server.strategy import STRATEGIES

        if self.name not in STRATEGIES:
            raise ConfigError(f"strategy.name must be one of {', '.join(STRATEGIES)}, "
                              f"not {self.name!r}")
        _positive(self, "server_lr", "tau")
        if not (0 <= self.momentum < 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("strategy.momentum, beta1, beta2 must be in [0, 1)")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError("strategy.clip_norm must be positive")

    def replace(self, **changes: Any) -> StrategyConfig:
        return _replace(self, "strategy", changes)


@dataclass(frozen=True)
class PredictConfig:
    """The prediction endpoint (``POST /v1/predict``, :mod:`fedkb.server.predictor`).

    Attributes:
        max_text_chars: longer texts are refused (400 ``text_too_long``).
        max_k, default_k: suggestions per request (``k`` must be 1..max_k).
        interpreters: LiteRT interpreters per model version (requests borrow one each).
        num_threads: threads of each interpreter.
        cache_size: model answers kept per version, by prefix (0: no cache); completions
            of one word share their prefix, so typing hits the cache on most keystrokes.
        max_inflight: predictions answered at once (computing, or waiting for an
            interpreter); one more is shed at once, 503 ``overloaded`` with
            ``Retry-After: retry_after_s`` (:mod:`fedkb.server.admission`), so that a flood
            of predictions gets fast refusals instead of unbounded latency and never holds
            the WSGI threads check-ins need. At most the server's ``threads`` - 2.
        retry_after_s: the ``Retry-After`` of a shed prediction.
        max_queue_s: a prediction that waited longer for a WSGI thread is shed as well
            (its client has waited long enough; answering it delays every later one).
    """

    max_text_chars: int = 1000
    max_k: int = 10
    default_k: int = 3
    interpreters: int = 2
    num_threads: int = 1
    cache_size: int = 4096
    max_inflight: int = 4
    retry_after_s: int = 1
    max_queue_s: float = 0.25

    def __post_init__(self) -> None:
        check_fields(self, "predict")
        _positive(self, "max_text_chars", "max_k", "interpreters", "num_threads",
                  "max_inflight", "retry_after_s", "max_queue_s")
        if not 1 <= self.default_k <= self.max_k or self.cache_size < 0:
            raise ConfigError("default_k must be 1..max_k and cache_size >= 0")

    def replace(self, **changes: Any) -> PredictConfig:
        return _replace(self, "predict", changes)


DP_MECHANISMS = ("fedavg", "ftrl")
DP_FTRL_STRATEGY = "dpftrl"  # the strategy that adds DP-FTRL's tree noise


@dataclass(frozen=True)
class PrivacyConfig:
    """User-level differential privacy of training rounds (:mod:`fedkb.server.privacy`).

    Attributes:
        mechanism: None (off), ``fedavg`` (DP-FedAvg, McMahan et al. 2018: Gaussian noise
            on each round's clipped sum) or ``ftrl`` (DP-FTRL, Kairouz et al. 2021: tree
            noise, added by the ``dpftrl`` strategy).
        noise_multiplier: z, the noise std on a round's sum in units of its clip (the
            total z when adaptive clipping takes a share for the count).
        clip: C, the L2 norm every device delta is clipped to on the phone (the initial
            clip when ``adaptive``).
        adaptive: quantile-adaptive clipping (Andrew et al. 2021) towards
            ``target_quantile`` of the update norms, at ``clip_learning_rate``.
        target_epsilon: stop training before the round that would take epsilon past this.
        delta: the delta of the guarantee (None: ``min(1e-5, 1/(N ln N))``, N the
            registered training population; see
            :func:`fedkb.server.privacy.accounting.default_delta`).
        population: N, the training population the cohorts are drawn from (None: the
            training devices registered when a round opens).
        noise_cohort: pfl-research's ``noise_cohort_size``: noise as if each round had
            this many devices; the epsilon that budget and reports use is then that of
            the pretended deployment, labelled "hypothetical population".
        restart_every: DP-FTRL (``ftrl``) only: rounds per noise tree (None: one tree for
            the whole run; Kairouz et al. 2021's tree restarts).
        distributed: distributed DP (``fedavg`` with ``[secagg]`` only): each phone adds
            its share of discrete Gaussian noise to its field-encoded update, so the server
            never sees a noise-free sum and adds none itself
            (:mod:`fedkb.secagg.distributed_dp`). Off: the server adds the noise (central).
    """

    mechanism: str | None = None
    noise_multiplier: float = 1.0
    clip: float = 1.0
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    target_epsilon: float | None = None
    delta: float | None = None
    population: int | None = None
    noise_cohort: int | None = None
    restart_every: int | None = None
    distributed: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "privacy")
        if self.mechanism is not None and self.mechanism not in DP_MECHANISMS:
            raise ConfigError(f"privacy.mechanism must be one of {', '.join(DP_MECHANISMS)} "
                              f"(or absent), not {self.mechanism!r}")
        if self.noise_multiplier < 0:
            raise ConfigError(f"privacy.noise_multiplier must be >= 0, got "
                              f"{self.noise_multiplier}")
        _positive(self, "clip")
        if not 0 <= self.target_quantile <= 1 or self.clip_learning_rate < 0:
            raise ConfigError("privacy.target_quantile must be in [0, 1] and "
                              "clip_learning_rate >= 0")
        if self.target_epsilon is not None:
            _positive(self, "target_epsilon")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")
        if self.population is not None and self.population < 2:
            raise ConfigError("privacy.population must be >= 2")
        if self.noise_cohort is not None:
            _positive(self, "noise_cohort")
        if self.restart_every is not None:
            _positive(self, "restart_every")
        if self.distributed and (self.mechanism != "fedavg" or self.adaptive):
            raise ConfigError("privacy.distributed is for DP-FedAvg with a fixed clip "
                              "(mechanism fedavg, adaptive off): DP-FTRL's tree noise and "
                              "adaptive clipping's noised count are the server's")

    @property
    def enabled(self) -> bool:
        return self.mechanism is not None

    def replace(self, **changes: Any) -> PrivacyConfig:
        return _replace(self, "privacy", changes)


def check_privacy(privacy: PrivacyConfig, rounds: RoundConfig, strategy: StrategyConfig
                  ) -> None:
    """The checks that need more than the ``[privacy]`` table: m <= N, the strategy
    DP-FTRL needs, and for adaptive clipping z < 2 sigma_b (sigma_b = m/20)."""
    if not privacy.enabled:
        return
    m = rounds.report_goal
    if privacy.population is not None and m > privacy.population:
        raise ConfigError(f"round.report_goal ({m}) exceeds privacy.population "
                          f"({privacy.population}): a cohort cannot be larger than the "
                          "population it is drawn from")
    if privacy.mechanism == "ftrl" and strategy.name != DP_FTRL_STRATEGY:
        raise ConfigError(f"privacy.mechanism ftrl needs strategy.name "
                          f"{DP_FTRL_STRATEGY!r} (it adds the tree noise)")
    if privacy.mechanism == "fedavg" and strategy.name == DP_FTRL_STRATEGY:
        raise ConfigError("the dpftrl strategy is for privacy.mechanism ftrl")
    if privacy.mechanism == "ftrl" and (privacy.adaptive or privacy.noise_cohort is not None):
        raise ConfigError("privacy.adaptive and privacy.noise_cohort are DP-FedAvg's "
                          "(mechanism fedavg); DP-FTRL here noises a fixed clip")
    if privacy.adaptive:
        from fedkb.server.privacy.adaptive_clip import default_count_stddev, split_noise
        from fedkb.server.privacy.errors import PrivacyConfigError

        z = privacy.noise_multiplier * (m / privacy.noise_cohort if privacy.noise_cohort
                                        else 1.0)
        try:
            split_noise(z, default_count_stddev(m))
        except PrivacyConfigError as exc:
            raise ConfigError(f"privacy.adaptive: {exc}") from exc


UPLINKS = ("float32", "q8", "q4", "q2")  # fedkb.wire.UPLINKS
DOWNLINKS = ("float32", "float16")


@dataclass(frozen=True)
class CompressionConfig:
    """How training updates and global weights travel (:mod:`fedkb.plan_codec`).

    Attributes:
        uplink: the encoding every training task's plan asks for: ``float32`` (codec
            arrays, as before), or ``q8`` / ``q4`` / ``q2`` (b-bit stochastic quantization
            on per-chunk min/max grids; tensors under 20,000 values stay float32).
        rotate: a randomized Hadamard rotation before quantizing, with a seed per task
            (a quantized uplink only: rotated float32 is padded, so only larger).
        downlink: ``float16``: training phones download the global weights as float16
            (half the bytes) and train in float32 from them; the server keeps and
            updates its exact float32 model. Evaluation tasks always get float32.
        min_elements: tensors of fewer values stay float32 (and unrotated) in a
            quantized uplink: TFF's threshold, 20,000, by default; the `small` model's
            output bias (its vocabulary, 10,000) is quantized below it.
    """

    uplink: str = "float32"
    rotate: bool = False
    downlink: str = "float32"
    min_elements: int = 20_000

    def __post_init__(self) -> None:
        check_fields(self, "compression")
        if self.uplink not in UPLINKS:
            raise ConfigError(f"compression.uplink must be one of {', '.join(UPLINKS)}, "
                              f"not {self.uplink!r}")
        if self.rotate and self.uplink == "float32":  # padded float32: only more bytes
            raise ConfigError("compression.rotate is for a quantized uplink (q8, q4, q2)")
        if self.downlink not in DOWNLINKS:
            raise ConfigError(f"compression.downlink must be one of {', '.join(DOWNLINKS)}, "
                              f"not {self.downlink!r}")
        if self.min_elements < 0:
            raise ConfigError("compression.min_elements must be >= 0")

    @property
    def label(self) -> str:
        """The uplink encoding as reports name it, e.g. ``q4`` or ``q4+rotate``."""
        return self.uplink + ("+rotate" if self.rotate else "")

    def replace(self, **changes: Any) -> CompressionConfig:
        return _replace(self, "compression", changes)


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation of training rounds (Bonawitz et al. 2017; SecAgg+ of Bell et al.
    2020 with ``neighbours``): the server learns only the sum of the survivors' updates.

    Attributes:
        enabled: training rounds run the secure phases (advertise keys, share keys, masked
            input collection, unmasking) instead of plain uploads.
        threshold: t, a count (a whole number >= 2) or a fraction in (0, 1] of the
            round's selected phones (rounded up). The round aborts when fewer than t
            phones remain at any phase; no coalition of fewer than t learns a phone's
            input. It must be more than half the cohort (two disjoint survivor sets
            cannot both reach it; the threat model of ``fedkb.secagg``).
        neighbours: SecAgg+: each phone masks with and shares among this many graph
            neighbours (even, >= 2; None: every other phone, full SecAgg).
        phase_deadline_s: the deadline of each phase but the masked input (which has
            the round's ``reporting_deadline_s``: phones train in it, keys sent first).
        unmask_quiet_s: unmasking also ends once at least t phones have answered and
            none has for this long (0: only when all have, or at the deadline). t
            answers are all the protocol needs; the rest are phones that unplugged after
            their masked input without saying they left (an abort of the reported task:
            ``SecureRound.leave``), which would otherwise hold the round to the phase's
            deadline.
        clip: the L2 norm phones clip their delta to before encoding, when neither
            ``[privacy]`` (its clip wins) nor ``strategy.clip_norm`` sets one (the server
            cannot clip an update it never sees).
        range_sigmas: the shared quantization grid's radius, in standard deviations of
            a rotated coordinate of a clipped update (:mod:`fedkb.secagg.update_codec`).
    """

    enabled: bool = False
    threshold: float = 0.6
    neighbours: int | None = None
    phase_deadline_s: float = 30.0
    unmask_quiet_s: float = 3.0
    clip: float | None = None
    range_sigmas: float = 4.0

    def __post_init__(self) -> None:
        check_fields(self, "secagg")
        if not (0 < self.threshold <= 1 or (self.threshold >= 2
                                            and float(self.threshold).is_integer())):
            raise ConfigError(f"secagg.threshold must be a count >= 2 or a fraction in "
                              f"(0, 1], not {self.threshold!r}")
        if self.neighbours is not None and (self.neighbours < 2 or self.neighbours % 2):
            raise ConfigError(f"secagg.neighbours must be even and >= 2, not {self.neighbours}")
        _positive(self, "phase_deadline_s", "range_sigmas")
        if not (math.isfinite(self.unmask_quiet_s) and self.unmask_quiet_s >= 0):
            raise ConfigError(f"secagg.unmask_quiet_s must be >= 0, not {self.unmask_quiet_s}")
        if self.clip is not None:
            _positive(self, "clip")

    def threshold_for(self, n: int) -> int:
        """t for a cohort of ``n`` selected phones (a count, or the fraction rounded up)."""
        if 0 < self.threshold <= 1:
            return max(2, math.ceil(self.threshold * n - 1e-9))
        return int(self.threshold)

    def replace(self, **changes: Any) -> SecAggConfig:
        return _replace(self, "secagg", changes)


def secagg_clip(secagg: SecAggConfig, strategy: StrategyConfig) -> float | None:
    """The clip C a secure round's phones apply: ``strategy.clip_norm``, else ``secagg.clip``."""
    return strategy.clip_norm if strategy.clip_norm is not None else secagg.clip


def check_secagg(secagg: SecAggConfig, rounds: RoundConfig, strategy: StrategyConfig,
                 privacy: PrivacyConfig, compression: CompressionConfig) -> None:
    """Refuse secure-aggregation settings that cannot run or do not protect the inputs."""
    if privacy.distributed and not secagg.enabled:
        raise ConfigError("privacy.distributed needs [secagg] (--secagg): the phones' noise "
                          "only protects a sum the server cannot see the parts of")
    if not secagg.enabled:
        return
    if compression.uplink == "float32":
        raise ConfigError("secure aggregation sums quantized codes: set compression.uplink "
                          "to q8, q4 or q2 (fedkb simulate --uplink q8)")
    if not privacy.enabled and secagg_clip(secagg, strategy) is None:
        raise ConfigError("secure aggregation needs a clip on the phone: set "
                          "strategy.clip_norm (--clip-norm) or secagg.clip")
    n = rounds.target(rounds.report_goal)
    t = secagg.threshold_for(n)
    if t > n:
        raise ConfigError(f"secagg.threshold {t} is more than the {n} phones a round "
                          f"selects (round.report_goal x round.overselect)")
    if 2 * t <= n:
        raise ConfigError(f"secagg.threshold {t} of {n} phones is too small for the threat "
                          f"model: t must be more than half the cohort (> {n // 2})")
    if secagg.neighbours is not None and secagg.neighbours >= n:
        raise ConfigError(f"secagg.neighbours {secagg.neighbours} must be below the cohort "
                          f"of {n} (or unset for full SecAgg)")


@dataclass(frozen=True)
class ServerConfig:
    """Everything one server process needs.

    Attributes:
        state_dir: SQLite database ``fedkb.db``, ``checkpoints/``, ``artifact/``.
        host, port, threads: the WSGI server (waitress).
        model: an exported artifact directory to publish as version 0 (if none yet).
        admin_token: for ``/v1/admin/*``; None: ``FEDKB_ADMIN_TOKEN`` or a random one
            written to ``state_dir/admin_token``.
        secret_key: signs device tokens; None: generated once and kept in the database.
        token_ttl_s: device token lifetime.
        max_upload_bytes: refuse larger uploads with 413 (None: the model's size + 64 KiB).
        seed: of the server's random choices (pace-steering jitter).
        tick_s: how often a background thread advances deadlines (0: only on requests).
        registrations_per_minute_per_address, registrations_per_minute: at most this many
            ``POST /v1/devices`` from one client address, and from all addresses, in any
            60 s (429 ``rate_limited`` with ``Retry-After`` beyond; None: no limit). An
            honest phone registers once; the fleet engine raises both for its fleet.
        idle_timeout_s: close a connection idle this long while none of its requests is
            being answered (a client that sent less than its ``Content-Length``).
        max_request_s: close a connection whose request (headers and body) has not fully
            arrived after this long (a client trickling bytes; 0: no limit).
        connection_limit: open connections at most (capped by the process's file
            descriptor limit); at the limit the longest-idle connection with no request
            being answered is closed for each new one (:mod:`fedkb.server.wsgi`), so idle
            connections can never lock phones out.
        round, client, strategy, predict, privacy, compression, secagg: the per-layer configs
            (the config file's tables).
    """

    state_dir: Path = Path("fedkb-state")
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 8
    model: Path | None = None
    admin_token: str | None = None
    secret_key: str | None = None
    token_ttl_s: float = 7 * 24 * 3600.0
    max_upload_bytes: int | None = None
    seed: int | None = None
    tick_s: float = 1.0
    registrations_per_minute_per_address: int | None = 30
    registrations_per_minute: int | None = 600
    idle_timeout_s: int = 15  # a stalled upload holds its connection this long, no more
    max_request_s: float = 300.0  # a model update over a slow link, with room to spare
    connection_limit: int = 1000
    round: RoundConfig = field(default_factory=RoundConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)

    def __post_init__(self) -> None:
        check_privacy(self.privacy, self.round, self.strategy)
        check_secagg(self.secagg, self.round, self.strategy, self.privacy, self.compression)
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.model is not None:
            object.__setattr__(self, "model", Path(self.model))
        check_fields(self, "server", unbounded=("seed",))
        if not 0 <= self.port < 65536 or self.threads < 1 or self.token_ttl_s <= 0:
            raise ConfigError("port must be 0-65535, threads >= 1, token_ttl_s > 0")
        for name in ("registrations_per_minute_per_address", "registrations_per_minute",
                     "max_upload_bytes"):
            if getattr(self, name) is not None:
                _positive(self, name)
        _positive(self, "idle_timeout_s", "connection_limit")
        if self.max_request_s < 0:
            raise ConfigError("max_request_s must be >= 0 (0: no limit)")

    def replace(self, **changes: Any) -> ServerConfig:
        return _replace(self, "server", changes)


MAX_WHOLE = 10**9  # the largest whole number a count setting may have


def check_fields(obj: Any, section: str, unbounded: tuple[str, ...] = ()) -> None:
    """Refuse a value that does not fit its field's type: ``bool`` fields take booleans,
    ``int`` fields whole numbers (not booleans, not ``5.5``) of at most
    :data:`MAX_WHOLE` (except ``unbounded``), ``float`` fields finite numbers; ``None``
    only where the field allows it. Other fields (strings, paths, tables) are left to
    their own checks."""
    for f in dataclasses.fields(obj):
        value, kind, name = getattr(obj, f.name), str(f.type), f"{section}.{f.name}"
        if value is None and "None" in kind:
            continue
        if kind.startswith("bool"):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, not {value!r}")
        elif kind.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be a whole number, not {value!r}")
            if f.name not in unbounded and abs(value) > MAX_WHOLE:
                raise ConfigError(f"{name} must be at most {MAX_WHOLE}")
        elif kind.startswith("float") and not _finite_number(value):
            raise ConfigError(f"{name} must be a finite number, not {value!r}")


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ConfigError(f"{n} must be positive")


def _replace(obj: Any, what: str, changes: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"unknown {what} setting(s): {', '.join(unknown)}")
    try:
        return dataclasses.replace(obj, **changes)
    except TypeError as exc:
        raise ConfigError(f"bad {what} setting: {exc}") from exc


def round_config_from_dict(base: RoundConfig, d: dict[str, Any]) -> RoundConfig:
    """``base`` with the keys of ``d`` applied (each value checked by :func:`check_fields`
    and :class:`RoundConfig`'s ranges: ``report_goal`` 5.5, 1e400 or true is refused)."""
    return base.replace(**_table(d, "round"))


def client_config_from_dict(base: ClientConfig, d: dict[str, Any]) -> ClientConfig:
    """``base`` with the keys of ``d`` applied: ``lr`` a finite positive number, ``epochs``
    and ``max_steps`` positive whole numbers (booleans are neither)."""
    return base.replace(**_table(d, "client"))


def _table(d: Any, section: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ConfigError(f"[{section}] must be a table of settings")
    return d


def with_stored_overrides(base: Any, stored: Any, section: str,
                          apply: Callable[[Any, dict[str, Any]], Any]) -> tuple[Any, bool]:
    """``base`` with the admin overrides ``stored`` in the database applied, and whether
    they were. Overrides that no longer pass validation (written by an older server, or
    edited by hand) must not keep the server from starting: they are refused with a logged
    warning and ``base``, the config file's table, is used instead."""
    try:
        return apply(base, stored or {}), True
    except ConfigError as exc:
        log.warning("ignoring the stored [%s] overrides %r: %s; using the config file's "
                    "[%s] table", section, stored, exc, section)
        return base, False


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Read a JSON or TOML config file (optional) and apply command-line overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            raw = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read config {p}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the config must be an object/table")
    round_cfg = round_config_from_dict(RoundConfig(), raw.pop("round", {}) or {})
    client_cfg = client_config_from_dict(ClientConfig(), raw.pop("client", {}) or {})
    strategy_cfg = StrategyConfig().replace(**_table(raw.pop("strategy", {}) or {}, "strategy"))
    predict_cfg = PredictConfig().replace(**_table(raw.pop("predict", {}) or {}, "predict"))
    privacy_cfg = PrivacyConfig().replace(**_table(raw.pop("privacy", {}) or {}, "privacy"))
    compression_cfg = CompressionConfig().replace(
        **_table(raw.pop("compression", {}) or {}, "compression"))
    secagg_cfg = SecAggConfig().replace(**_table(raw.pop("secagg", {}) or {}, "secagg"))
    cfg = ServerConfig(round=round_cfg, client=client_cfg, strategy=strategy_cfg,
                       predict=predict_cfg, privacy=privacy_cfg,
                       compression=compression_cfg, secagg=secagg_cfg).replace(**raw)
    extra = {k: v for k, v in overrides.items() if v is not None}
    if "max_rounds" in extra:
        cfg = cfg.replace(round=cfg.round.replace(max_rounds=extra.pop("max_rounds")))
    return cfg.replace(**extra)
