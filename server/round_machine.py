"""The round state machine of Bonawitz et al. 2019 ("Towards Federated Learning at Scale:
System Design", Sec. 2): selection, configuration, reporting; commit or abandon.

A round of kind ``train`` (training devices) or ``evaluate`` (held-out devices) steps
through its phases (:mod:`fedkb.server.phases`, data: name, deadline, minimum count)::

       open    a model exists and training is enabled (pipelined: while the round
        |      before it trains; configured with that round's model once it closes)
        v
    selecting --- target selected (every seat claimed, or the claim window over)
        |         or the selection window over:
        |           fewer than min_reports tasks ----------> abandoned (too_few_devices)
        v
    training ---- reporting deadline, or every selected device answered:
        |           fewer than min_reports reports --------> abandoned (deadline)
        v
    committed <-- also at once on report_goal reports (Outcome.GOAL_REACHED), from
                  selecting or training

    selecting | training -- server restart ------------------> abandoned (server_restart)
    committing -- no weight in the aggregate, commit failed --> abandoned (no_weight, ...)
    committing -- new model not finite or out of range -------> abandoned (unsafe_model)

Selection over-selects (``target = ceil(goal * overselect)``); the round commits as soon
as ``goal`` reports are in, and the stragglers' reports are refused as late and counted.
With ``pipeline`` (the paper's Sec. 2.3) the next training round selects while the one
before it trains; until that one closes the new round is not *configured* (its model does
not exist), so its devices are told to come back ("selected_waiting") and claim their
tasks once it is. Every task of a round trains the same base version: nothing is stale.

:class:`RoundMachine` owns the rounds and applies every transition; it knows the
algorithm only through :class:`~fedkb.server.strategy.Strategy`. Time-driven transitions
all happen in :meth:`RoundMachine.advance` (called on every request and by a ticker, with
an injected clock, so tests move time instantly). Check-ins go to its
:class:`~fedkb.server.selection.Selection`, uploads to its
:class:`~fedkb.server.reports.Reporting`, which answer with data the machine acts on. One
lock guards all state (waitress serves requests from several threads); an upload's
decode and validation run outside it, and only the O(model) fold inside.

Two bounds keep one hostile phone from destroying the model: every training update is
held to :attr:`RoundMachine.update_norm_bound` and its ``num_examples`` to its plan's
budget (refused before the fold, :class:`~fedkb.server.uploads.UploadLimits`), and a
new model is served only if it is finite with every weight under ``max_weight_abs``
(:func:`~fedkb.server.global_model.unsafe_weights`); otherwise its round is abandoned
and the model, the strategy's state and the checkpoints stay as they were.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedkb import strict_json
from fedkb.artifact import Artifact
from fedkb.secagg.messages import MessageError
from fedkb.server.aggregate import derived_update_norm
from fedkb.server.checkpoints import Checkpoint, CheckpointStore
from fedkb.server.compression import round_bytes, with_compression
from fedkb.server.config import (
    ClientConfig,
    CompressionConfig,
    RoundConfig,
    SecAggConfig,
)
from fedkb.server.db import Database, row_dict
from fedkb.server.devices import DeviceRegistry
from fedkb.server.errors import ApiError, BadRequest, Conflict, NotFound, Unprocessable
from fedkb.server.global_model import GlobalModel, unsafe_weights
from fedkb.server.metrics import ServerMetrics
from fedkb.server.phases import PhaseHandler, ReportingPhase, SelectionPhase, round_phases
from fedkb.server.reports import Outcome, Reporting, save_stats
from fedkb.server.rounds import (
    ABANDONED,
    COMMITTED,
    EVALUATE,
    OPEN_STATES,
    POPULATION_OF,
    SELECTING,
    TRAIN,
    RoundState,
    RoundStats,
    count_bytes,
)
from fedkb.server.secure_round import (
    LATE_CODES,
    SECURE_PHASES,
    SecurePhase,
    SecureRound,
    parse_message,
    secure_round_phases,
)
from fedkb.server.selection import Selection
from fedkb.server.storage import PendingRows, best_effort, is_storage_full, refuse_if_full
from fedkb.server.strategy import Strategy
from fedkb.server.tasks import ROTATION_SEED_BITS, TaskBook, wire_task
from fedkb.server.uploads import UploadLimits, examples_budget, upload_fingerprint
from fedkb.wire import (
    AbortResult,
    CheckinResponse,
    Conditions,
    Plan,
    SecAggAck,
    SecAggStep,
    SecAggSubmit,
    UploadResult,
    WireError,
    split_secagg,
)

if TYPE_CHECKING:
    from fedkb.server.aggregate import Aggregator
    from fedkb.server.privacy.dp_rounds import PrivacyRounds

log = logging.getLogger(__name__)
HOLD_RECHECK_S = 0.5  # wall s: a held secure step looks again this often (a deadline)
CLAIM_SPREAD = 4  # a secure round's example cap: this x the last round's claims' p90


class RoundMachine:
    """The open rounds, the global model, and every transition between rounds' phases."""

    def __init__(self, cfg: RoundConfig, db: Database, devices: DeviceRegistry,
                 strategy: Strategy, metrics: ServerMetrics, clock: Callable[[], float],
                 rng: random.Random, privacy: PrivacyRounds | None = None,
                 compression: CompressionConfig | None = None,
                 secagg: SecAggConfig | None = None) -> None:
        self.cfg, self.db, self.devices, self.strategy = cfg, db, devices, strategy
        self.secagg = secagg or SecAggConfig()  # enabled: training rounds run securely
        self.privacy = privacy  # [privacy] on: DP stages, clip in the plan, the budget
        self.compression = compression or CompressionConfig()
        self.metrics, self.clock = metrics, clock
        self.lock = threading.RLock()
        # notified when a round is configured or closes: held check-ins (wait_for_claim)
        self.changed = threading.Condition(self.lock)
        self.models = GlobalModel(db, metrics, self.lock)
        self.tasks = TaskBook(db)
        self.selection = Selection(db, devices, metrics, rng, self.tasks)
        self.reports = Reporting(db, metrics, self.tasks)
        self.handlers: dict[str, PhaseHandler] = {
            "selection": SelectionPhase(self.selection, metrics), "reporting": ReportingPhase(),
            **{name: SecurePhase(name, self.tasks) for name in SECURE_PHASES}}
        self.open: dict[int, RoundState] = {}
        self.training_enabled: bool = bool(db.get("training_enabled", True))
        self._eval_queue: list[int] = list(db.get("eval_queue", []))
        self._next_round = 1 + int(db.one("SELECT COALESCE(MAX(id), 0) m FROM rounds")["m"])
        self._derived_update_norm: float | None = None  # from the artifact, on attach
        self.unsaved = PendingRows()  # closed rounds' rows a full disk kept from the db
        self.last_round_bytes: dict[str, int] = {}  # of the last committed training round
        # the 90th-percentile examples claim of the last committed training round's
        # reports (public: their metadata), for a secure round's weight cap
        # (_secure_weight_cap); read back from that round's row after a restart
        self.last_examples_p90: int = self._examples_p90_of_last()

    def _examples_p90_of_last(self) -> int:
        row = self.db.one("SELECT stats FROM rounds WHERE kind = ? AND state = ? "
                          "ORDER BY id DESC LIMIT 1", (TRAIN, COMMITTED))
        return 0 if row is None else RoundStats.from_json(row_dict(row)["stats"]).examples_p90

    @property
    def artifact(self) -> Artifact | None:
        return self.models.artifact

    @property
    def model(self) -> Checkpoint | None:
        """The checkpoint in force (None before a model is published)."""
        return self.models.current

    def weights(self, version: int) -> Checkpoint:
        return self.models.weights(version)

    @property
    def update_norm_bound(self) -> float:
        """The longest training update folded: ``round.max_update_norm``, or derived from
        the artifact's initial weights (:func:`~fedkb.server.aggregate.derived_update_norm`)."""
        if self.cfg.max_update_norm is not None:
            return self.cfg.max_update_norm
        assert self._derived_update_norm is not None, "no artifact attached"
        return self._derived_update_norm

    # --- start and admin -------------------------------------------------------------------

    def attach(self, artifact: Artifact, store: CheckpointStore) -> None:
        """Serve ``artifact``; load the newest intact checkpoint, abandon rounds left open."""
        with self.lock:
            now = self.clock()
            self._derived_update_norm = derived_update_norm(artifact.initial_weights())
            for r in self.db.query("SELECT * FROM rounds WHERE state IN (?, ?)", OPEN_STATES):
                stats = RoundStats.from_json(row_dict(r)["stats"])
                self.db.update("rounds", "id", r["id"], {
                    "state": ABANDONED, "reason": "server_restart", "closed_at": now,
                    "stats": json.dumps(stats.to_json())})
                self.metrics.rounds.labels(r["kind"], ABANDONED).inc()
            ckpt = self.models.attach(artifact, store)
            if ckpt is None:  # a fresh state dir (or every checkpoint damaged)
                self._queue_eval(self.models.publish_initial(artifact.initial_weights(), now))
            else:
                self.strategy.load_state(ckpt.optimizer_state)
                self.models.serve(ckpt)

    def set_training(self, enabled: bool) -> None:
        with self.lock:
            self.training_enabled = enabled
            self.db.put("training_enabled", enabled)
            self.advance()

    def set_config(self, cfg: RoundConfig) -> None:
        """New rounds use ``cfg``; open rounds keep the phases and plan they started with."""
        with self.lock:
            self.cfg = cfg
            self.advance()

    def set_client_config(self, client: ClientConfig) -> None:
        """Rounds opened from now on ask phones for ``client`` (open rounds keep theirs)."""
        with self.lock:
            self.strategy.set_client(client)

    # --- time ---------------------------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            self.advance()

    def advance(self, now: float | None = None) -> None:
        """Apply every transition due at ``now``: each open round's phases (selection
        closes, a deadline commits or abandons), then configure the pipelined round whose
        predecessor closed, and open the rounds that should be open."""
        now = self.clock() if now is None else now
        if len(self.unsaved):
            self.unsaved.retry()
        for rnd in list(self.open.values()):
            while rnd.is_open:
                phase, handler = rnd.phase, self.handlers[rnd.phase.name]
                if not handler.over(rnd, now):
                    break
                handler.end(rnd, now)
                rnd.end_phase(now)
                if handler.count(rnd) < phase.min_count:
                    self._abandon(rnd, now, phase.short)
                elif rnd.phase_index + 1 == len(rnd.phases):
                    self._commit(rnd, now)
                else:
                    rnd.enter(rnd.phase_index + 1, now)
                    begin = getattr(self.handlers[rnd.phase.name], "begin", None)
                    if begin is not None:  # a phase that sets itself up (secure rounds)
                        begin(rnd, now)
                    self.changed.notify_all()  # phones held on a secure step look again
                    best_effort(lambda r=rnd: self.db.update("rounds", "id", r.id, r.row()),
                                f"round {rnd.id}'s phase")
        if self.model is None:
            return
        trains = [r for r in self.open.values() if r.kind == TRAIN]
        if trains and not any(r.configured for r in trains):
            self._configure(min(trains, key=lambda r: r.id), now)
        if (self.training_enabled and not self._enough_rounds(len(trains))
                and self.devices.count(POPULATION_OF[TRAIN]) >= self.cfg.min_registered
                and not any(r.state == SELECTING for r in trains)
                and len(trains) < (2 if self.cfg.pipeline else 1)
                and self._privacy_allows(trains)):
            # with ``pipeline`` a round opens while the one before it still trains: it
            # selects its devices now and is configured when that round closes
            self._open_round(TRAIN, self.cfg.report_goal, now, configured=not trains)
        if self._eval_queue and not any(r.kind == EVALUATE for r in self.open.values()):
            version = self._eval_queue.pop(0)
            self.db.put("eval_queue", self._eval_queue)
            self._open_round(EVALUATE, self.cfg.eval_goal, now, version)

    def _privacy_allows(self, trains: list[RoundState]) -> bool:
        """With ``[privacy]``: the budget has room for one more round (counting the open
        ones), and enough training devices are registered to draw a cohort from."""
        if self.privacy is None:
            return True
        pending = [e for e in (getattr(r.aggregator, "event", None) for r in trains)
                   if e is not None]
        return self.privacy.allows(self.cfg.report_goal,
                                   self.devices.count(POPULATION_OF[TRAIN]), pending)

    def _training_setup(self, kind: str, goal: int) -> tuple[Plan, Aggregator | None]:
        """A new round's plan and aggregator: the strategy's, with the ``[compression]``
        encodings, and with ``[privacy]`` a training round's DP stage and the clip its
        phones apply (this round's C_t)."""
        assert self.artifact is not None
        plan = with_compression(self.strategy.configure(kind, self.artifact.batch_size),
                                self.compression)
        if kind != TRAIN:
            return plan, None
        if self.privacy is None:
            return plan, self.strategy.aggregator(self.artifact.specs)
        agg = self.privacy.aggregator(self.artifact.specs, goal,
                                      self.devices.count(POPULATION_OF[TRAIN]))
        return dataclasses.replace(plan, clip=self.privacy.clip), agg

    def _enough_rounds(self, open_train: int) -> bool:
        limit = self.cfg.max_rounds
        return limit is not None and self.rounds_committed() + open_train >= limit

    def rounds_committed(self, kind: str = TRAIN) -> int:
        return int(self.db.one("SELECT COUNT(*) n FROM rounds WHERE kind = ? AND state = ?",
                               (kind, COMMITTED))["n"])

    def _secure_weight_cap(self, plan: Plan) -> int:
        """A secure round's example cap ŵ: each phone scales its clipped delta by
        ``min(n, ŵ) / ŵ`` (at most 1: the field's range holds) and the server divides the
        sum by the survivors' total of those weights. ŵ is CLAIM_SPREAD times the 90th
        percentile of the examples the last committed training round's reports claimed,
        at most the plan's budget: the weights are FedAvg's for every phone up to it. 0
        (every phone weight 1) with ``strategy.weighting = "uniform"``, with DP (its
        sensitivity needs weight 1) and in the first round (no claims yet).

        Why that ŵ (paired over 5 seeds at q8, bench/README.md, "The secure codec,
        paired"). A phone's rounding error does not shrink with its weight, so the
        decoded mean's error grows as 1 / (mean weight): the plan's budget as ŵ (exact
        weights) cost 0.2 top-3 points with 50 steps, and collapses a run without
        ``--max-steps`` (16 million examples: every weight ~1e-6). A ŵ below the heavy
        phones caps them at weight 1: the mean claim (fedkb's rule until the fifteenth
        session, McMahan et al. 2018's ŵ) cost 1.4 top-3 points, the 90th percentile
        0.9, the last round's largest claim 0.6. Four times the 90th percentile sits above
        most of the heavy tail of Shakespeare's roles, and phones claiming huge counts
        cannot move it unless they are a tenth of a round's reports."""
        if self.privacy is not None or self.strategy.cfg.weighting != "examples":
            return 0
        if self.last_examples_p90 <= 0:
            return 0
        return max(1, min(examples_budget(plan), CLAIM_SPREAD * self.last_examples_p90))

    def _phones_noise_multiplier(self, goal: int) -> float:
        """Distributed DP: the z the phones' noise must reach on a secure round's sum
        (the round's actual one: z, or z·m/K with ``noise_cohort``); 0 otherwise."""
        if self.privacy is None or not self.privacy.cfg.distributed:
            return 0.0
        return self.privacy.actual_noise(goal)

    def _open_round(self, kind: str, goal: int, now: float, version: int | None = None,
                    configured: bool = True) -> None:
        assert self.artifact is not None and self.model is not None
        rid = self._next_round
        plan, aggregator = self._training_setup(kind, goal)
        secure = self.secagg.enabled and kind == TRAIN
        phases = (secure_round_phases(self.cfg, self.secagg, goal) if secure
                  else round_phases(self.cfg, goal))
        if secure:  # one rotation seed for the round: the server un-rotates the sum once
            # [privacy]'s C_t, else the one create_app resolved (config.secagg_clip)
            clip = plan.clip if plan.clip is not None else self.secagg.clip
            assert clip is not None, "check_secagg refuses a secure round without a clip"
            plan = dataclasses.replace(plan, secagg=True, rotate=False, clip=clip,
                                       rotation_seed=secrets.randbits(ROTATION_SEED_BITS))
        rnd = RoundState(
            id=rid, kind=kind, base_version=self.model.version if version is None else version,
            goal=goal, target=self.cfg.target(goal), opened_at=now, plan=plan,
            aggregator=aggregator, phases=phases, configured=configured)
        if secure:
            assert plan.rotation_seed is not None
            rnd.secure = SecureRound(self.secagg, rid,
                                     tuple(tuple(sp.shape) for sp in self.artifact.specs),
                                     plan.uplink, float(plan.clip or 0), plan.rotation_seed,
                                     self.cfg.min_reports(goal), self._secure_weight_cap(plan),
                                     self._phones_noise_multiplier(goal))
        # the id is taken only once its row is written: a full disk skips no round id
        if not best_effort(lambda: self.db.insert("rounds", rnd.row()), f"round {rid}"):
            return
        self._next_round = rid + 1
        self.open[rid] = rnd

    def _configure(self, rnd: RoundState, now: float) -> None:
        """The round before ``rnd`` has closed: ``rnd`` trains the model it left.

        Its devices selected so far claim their tasks on their next check-in; selection
        waits ``claim_window_s`` for them (longer if the round still wants devices).
        """
        assert self.model is not None
        rnd.configured, rnd.base_version = True, self.model.version
        if self.privacy is not None and rnd.kind == TRAIN and self.artifact is not None:
            # its clip and DP stage: C_t as the round before it left it (adaptive)
            rnd.plan = dataclasses.replace(rnd.plan, clip=self.privacy.clip)
            rnd.aggregator = self.privacy.aggregator(
                self.artifact.specs, rnd.goal, self.devices.count(POPULATION_OF[TRAIN]))
            if rnd.secure is not None and rnd.plan.clip is not None:
                rnd.secure.set_clip(rnd.plan.clip)
        rnd.claim_deadline = max(now, rnd.claim_by) + self.cfg.claim_window_s
        rnd.phase_deadline = max(rnd.phase_deadline, rnd.claim_deadline)
        best_effort(lambda: self.db.update("rounds", "id", rnd.id, rnd.row()),
                    f"round {rnd.id}'s configuration")
        self.changed.notify_all()

    # --- commit / abandon ----------------------------------------------------------------

    def _commit(self, rnd: RoundState, now: float) -> None:
        t0 = time.perf_counter()
        if rnd.kind == EVALUATE:
            rnd.stats.metrics = rnd.scalars.result()
            self._close(rnd, COMMITTED, now)
            self._record_metrics(rnd)
            return
        assert self.model is not None and rnd.aggregator is not None
        assert rnd.base_version == self.model.version, "one configured training round at a time"
        result = rnd.aggregator.result()
        rnd.stats.measurements = dict(result.measurements)
        rnd.stats.clipped = int(result.measurements.get("clipped", 0))
        if result.value is None:
            self._abandon(rnd, now, "no_weight")
            return
        event = getattr(rnd.aggregator, "event", None)
        # a strategy that adds the noise (DP-FTRL) knows the round's event once it has
        # aggregated it (its place in a tree); otherwise the stage drew the noise: counted
        late_event = getattr(self.strategy, "round_event", None)
        if self.privacy is not None and event is not None and late_event is None:
            rnd.stats.privacy = self.privacy.record(event, result.measurements)
        before = self.strategy.state()
        try:
            version = self.models.next_version()
            new = self.strategy.aggregate(self.model.weights, result, version)
            if self.privacy is not None and event is not None and late_event is not None:
                rnd.stats.privacy = self.privacy.record(late_event(), result.measurements)
            unsafe = unsafe_weights(new, self.cfg.max_weight_abs)
            if unsafe is None:
                file_sha, ckpt = self.models.write(version, new, self.strategy.state())
                commit_s = round(time.perf_counter() - t0, 6)
                # the version's row and the round's, committed together, before anything
                # in memory says committed: a failure here leaves both as they were
                with self.db.transaction() as conn:
                    self.models.record(conn, version, rnd.id, file_sha, now)
                    _write_round(conn, _committed_row(rnd, version, now, commit_s))
        except Exception as exc:  # the model stays as it was; the file has no row
            full = is_storage_full(exc)
            log.log(logging.ERROR, "commit of round %d failed%s", rnd.id,
                    ": storage full" if full else "", exc_info=not full)
            self.strategy.load_state(before)
            self._abandon(rnd, now, "storage_full" if full
                          else f"commit_failed: {type(exc).__name__}")
            return
        if unsafe is not None:  # never served, never written: the model stays as it was
            log.error("round %d not committed: the new model %s", rnd.id, unsafe)
            self.strategy.load_state(before)
            self._abandon(rnd, now, f"unsafe_model: {unsafe}")
            return
        rnd.stats.metrics = rnd.scalars.result()
        rnd.committed_version = version
        rnd.stats.durations["commit_s"] = commit_s
        self._finish(rnd, now, COMMITTED, None)  # in memory: the rows are written
        self.models.serve(ckpt)
        self.metrics.phase.labels("commit").observe(rnd.stats.durations["commit_s"])
        start = rnd.selection_closed_at
        self.selection.round_took(0.0 if start is None else now - start)
        self._record_metrics(rnd)
        self.last_round_bytes = round_bytes(rnd.stats)
        if rnd.kind == TRAIN and rnd.stats.examples_p90 > 0:
            self.last_examples_p90 = rnd.stats.examples_p90
        self.metrics.round_bytes.labels("up").set(self.last_round_bytes["upload_bytes"])
        self.metrics.round_bytes.labels("down").set(self.last_round_bytes["download_bytes"])
        # every eval_every versions, and the run's last: a run that ends between two of
        # them would otherwise never see its final model evaluated on held-out phones
        if self.cfg.eval_every and (version % self.cfg.eval_every == 0
                                    or self._enough_rounds(0)):
            self._queue_eval(version)

    def _abandon(self, rnd: RoundState, now: float, reason: str) -> None:
        self._close(rnd, ABANDONED, now, reason)
        if rnd.kind == EVALUATE and self.model is not None and \
                rnd.base_version == self.model.version and not self._eval_queue:
            self._queue_eval(rnd.base_version)  # the latest model is still unevaluated: retry

    def _close(self, rnd: RoundState, state: str, now: float, reason: str | None = None) -> None:
        self._finish(rnd, now, state, reason)
        self.unsaved.write(rnd.id, lambda: self.db.update("rounds", "id", rnd.id, rnd.row()))

    def _finish(self, rnd: RoundState, now: float, state: str, reason: str | None) -> None:
        """Take the round out of the open set (the caller writes its row)."""
        reached = rnd.phases[:rnd.phase_index + 1]
        rnd.close(state, now, reason)
        self.open.pop(rnd.id, None)
        self.selection.drop_seats(rnd)
        self.tasks.close_round(rnd)
        rnd.aggregator = None  # free the accumulator
        self.metrics.rounds.labels(rnd.kind, state).inc()
        for phase in reached:
            self.metrics.phase.labels(phase.name).observe(rnd.stats.durations[f"{phase.name}_s"])
        self.changed.notify_all()

    def _record_metrics(self, rnd: RoundState) -> None:
        values = {**rnd.stats.metrics, "reports": float(rnd.stats.reported),
                  "num_examples": float(rnd.stats.num_examples)}

        def write() -> None:
            with self.db.transaction() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO metrics(round_id, model_version, kind, name, "
                    "value) VALUES (?, ?, ?, ?, ?)",
                    [(rnd.id, rnd.base_version, rnd.kind, k, float(v))
                     for k, v in values.items()])

        best_effort(write, f"round {rnd.id}'s metrics")

    def _queue_eval(self, version: int) -> None:
        if self.cfg.eval_every:
            self._eval_queue.append(version)
            best_effort(lambda: self.db.put("eval_queue", self._eval_queue), "the eval queue")

    # --- devices: check-ins, uploads, aborts ---------------------------------------------

    def checkin(self, device_id: str, conditions: Conditions) -> CheckinResponse:
        """A task for the device, or when to come back (:class:`Selection` decides)."""
        population = self.devices.population(device_id)
        with self.lock:
            now = self.clock()
            self.advance(now)
            got = self.selection.checkin(device_id, population, conditions, self.cfg,
                                         self.open, self.model.version if self.model else None,
                                         now)
            if isinstance(got, CheckinResponse):
                return got
            self.advance(now)  # a seat that completes selection closes it: the deadline told
            return CheckinResponse(task=wire_task(got, self.open[got.round_id], now))

    def wait_for_claim(self, device_id: str, timeout_s: float) -> bool:
        """Hold a device selected ahead until its round is configured (see
        :meth:`Selection.wait_for_claim`); True if it should check in again now."""
        return self.selection.wait_for_claim(device_id, timeout_s, self.open, self.changed)

    def report(self, device_id: str, task_id: str, body: bytes) -> UploadResult:
        """Validate an upload and fold it into its round (or refuse it, counted); commit the
        round if the fold reached its goal."""
        digest = upload_fingerprint(body)
        with self.lock:
            self.advance()
            task = self.reports.owned_task(device_id, task_id, self.open)
            prior = self.reports.replayed(task, digest, self.open)
            if prior is not None:
                return prior
            self.reports.open_round(task, self.open)
            if task.plan.secagg:  # its update goes through the secure phases only
                self.reports.reject(task.round_id, "wrong_encoding", self.open)
                raise Unprocessable(f"task {task.id} is in a secure round: its update goes "
                                    "through /v1/tasks/<id>/secagg", "wrong_encoding")
            assert self.artifact is not None
            specs = self.artifact.specs
            limits = UploadLimits(self.update_norm_bound, examples_budget(task.plan))
        t0 = time.perf_counter()
        try:
            meta, arrays = self.reports.decode(task, body, specs, limits)  # outside the lock
        except ApiError as exc:
            with self.lock:
                self.reports.reject(task.round_id, exc.code, self.open)
            raise
        with self.lock:
            now = self.clock()
            self.advance(now)
            prior = self.reports.replayed(task, digest, self.open)
            if prior is not None:
                return prior
            rnd = self.reports.open_round(task, self.open)
            try:  # the task's row first: a full disk folds nothing (507, retry later)
                folded = self.reports.fold(task, rnd, meta, arrays, digest, now,
                                           len(body))
            except (OSError, sqlite3.OperationalError) as exc:
                if is_storage_full(exc):
                    self.reports.reject(task.round_id, "storage_full", self.open)
                refuse_if_full(exc, f"the report of task {task.id}")
                raise
            if rnd.kind == TRAIN:
                self.selection.trained(device_id, task.model_version)
            self.metrics.fold.observe(time.perf_counter() - t0)
            if folded.outcome is Outcome.GOAL_REACHED:
                self._commit(rnd, now)
            else:
                best_effort(lambda: save_stats(self.db, rnd), f"round {rnd.id}'s counters")
            self.advance(now)  # after a commit: configure or open the next round now
            return folded.answer

    # --- secure rounds: the protocol's phases over HTTP ------------------------------------

    def secagg_step(self, device_id: str, task_id: str, wait_s: float = 0.0) -> SecAggStep:
        """What the secure round's current phase wants of the task's phone.

        With ``wait_s``, a phone with nothing to do yet is held (at most that many wall
        seconds) until the round's phase changes, instead of being told to ask again in
        ``POLL_S``: the request handler's thread waits on :attr:`changed` (notified when
        a phase ends) and looks again at least every ``HOLD_RECHECK_S``, when a phase
        deadline may have passed."""
        end = time.monotonic() + wait_s
        with self.lock:
            while True:
                step = self._secagg_step(device_id, task_id)
                left = end - time.monotonic()
                if step.phase != "waiting" or left <= 0:
                    return step
                self.changed.wait(min(left, HOLD_RECHECK_S))

    def _secagg_step(self, device_id: str, task_id: str) -> SecAggStep:
        with self.lock:
            self.advance()
            task = self.reports.owned_task(device_id, task_id, self.open)
            if not task.plan.secagg:
                raise NotFound(f"task {task_id} is not in a secure round", "not_secure")
            rnd = self.open.get(task.round_id)
            if rnd is None or rnd.secure is None:
                row = self.db.one("SELECT state, reason FROM rounds WHERE id = ?",
                                  (task.round_id,))
                done = row is not None and row["state"] == COMMITTED
                return SecAggStep(task.round_id, "done" if done else "aborted",
                                  reason="" if done or row is None else str(row["reason"]))
            return rnd.secure.step(task, rnd)

    def secagg_submit(self, device_id: str, task_id: str, body: bytes,
                      framed: bool = False) -> SecAggAck:
        """Take a phone's protocol message (parsed outside the lock) for the round's phase:
        JSON, or ``framed`` a masked input as FKBS (:func:`fedkb.wire.split_secagg`); a
        refusal is counted (``secagg_<code>``) and leaves the sum as it was."""
        try:
            if framed:
                sub, data = split_secagg(body)
                msg = parse_message(sub.message, data)
            else:
                sub = SecAggSubmit.from_json(strict_json.loads(body))
                msg = parse_message(sub.message)
        except (strict_json.JsonError, WireError, MessageError) as exc:
            with self.lock:
                self.reports.reject_for_task(task_id, "secagg_invalid_message", self.open)
            raise BadRequest(f"not a secure-aggregation message: {exc}",
                             "invalid_message") from exc
        with self.lock:
            now = self.clock()
            self.advance(now)
            task = self.reports.owned_task(device_id, task_id, self.open)
            if not task.plan.secagg:
                raise NotFound(f"task {task_id} is not in a secure round", "not_secure")
            if task.state == "aborted":
                self.reports.reject(task.round_id, "task_aborted", self.open)
                raise Conflict(f"task {task.id} was aborted", "task_aborted")
            rnd = self.reports.open_round(task, self.open)  # late / abandoned: refused
            assert rnd.secure is not None
            phase = rnd.phase.name
            refusal = rnd.secure.submit(task, rnd, sub, msg, len(body), now)
            if refusal is not None:
                self.reports.reject(task.round_id, f"secagg_{refusal.code}", self.open)
                if refusal.code in LATE_CODES:
                    raise Conflict(f"{refusal.code}: {refusal.reason}", "secagg_phase_closed")
                raise Unprocessable(f"{refusal.code}: {refusal.reason}", "secagg_refused")
            if phase == "masked_input":  # its bytes, as an upload's (count_bytes)
                count_bytes(rnd.stats, len(body), sub.timings)
                if task.kind == TRAIN:
                    self.selection.trained(device_id, task.model_version)
                task.state = "reported"
                best_effort(lambda: self.db.update("tasks", "id", task.id,
                                                   {"state": "reported",
                                                    "finished_at": now}),
                            f"task {task.id}'s state")
            self.advance(now)  # every phone answered: the phase ends now
            return SecAggAck(task.id, phase, "accepted")

    def reject_for_task(self, task_id: str, reason: str) -> None:
        """Count a refused upload (e.g. wrong content type) against its task's round."""
        with self.lock:
            self.reports.reject_for_task(task_id, reason, self.open)

    def abort(self, device_id: str, task_id: str, reason: str) -> AbortResult:
        """The device gives up its task (e.g. unplugged); counted by reason."""
        with self.lock:
            out = self.reports.abort(device_id, task_id, reason, self.open, self.clock())
            self.advance()  # a phase waiting only for this phone ends now
            return out


def _committed_row(rnd: RoundState, version: int, now: float, commit_s: float
                   ) -> RoundState:
    """A copy of ``rnd`` as it will be once committed (its row goes into the commit's
    transaction while ``rnd`` itself is still open)."""
    done = copy.copy(rnd)
    done.stats = RoundStats.from_json(rnd.stats.to_json())
    done.stats.metrics = rnd.scalars.result()
    done.stats.durations["commit_s"] = commit_s
    done.committed_version = version
    done.close(COMMITTED, now, None)
    return done


def _write_round(conn: Any, rnd: RoundState) -> None:
    row = rnd.row()
    sets = ", ".join(f"{k} = ?" for k in row)
    conn.execute(f"UPDATE rounds SET {sets} WHERE id = ?", [*row.values(), rnd.id])
