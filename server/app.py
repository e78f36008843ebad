"""``create_app(config)``: the Flask application, its shared state and its blueprints.

No module globals: everything a request needs hangs off ``app.extensions["fedkb"]``, a
:class:`ServerState` built from the :class:`~fedkb.server.config.ServerConfig` (and an
injectable clock for tests). The state directory holds::

    fedkb.db        SQLite (devices, rounds, tasks, models, metrics, settings), WAL mode
    secret_key      signs device tokens, unless the config or $FEDKB_SECRET_KEY gives one
    artifact/       the published model artifact (copied byte for byte, hash-checked)
    checkpoints/    v000000.safetensors, v000001.safetensors, ... (global weights +
                    optimizer state) and latest.safetensors, the newest committed one
    admin_token     only when neither the config nor $FEDKB_ADMIN_TOKEN gives one
    lock            held by the running ``fedkb server`` (its pid inside)

The directory is 0700, its secret files and the database 0600
(:mod:`fedkb.server.state_dir`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Request, current_app, g, request

from fedkb.artifact import METADATA_FILE, Artifact, ArtifactError
from fedkb.server.auth import DeviceTokens, bearer, resolve_admin_token, resolve_secret_key
from fedkb.server.checkpoints import CheckpointStore
from fedkb.server.compression import Float16Weights
from fedkb.server.config import (
    ClientConfig,
    RoundConfig,
    ServerConfig,
    check_privacy,
    client_config_from_dict,
    round_config_from_dict,
    secagg_clip,
    with_stored_overrides,
)
from fedkb.server.db import Database
from fedkb.server.devices import DeviceRegistry, RegistrationLimiter
from fedkb.server.errors import Conflict, register_error_handlers
from fedkb.server.http import Int64Converter
from fedkb.server.metrics import ServerMetrics
from fedkb.server.round_machine import RoundMachine
from fedkb.server.state_dir import secure_dir
from fedkb.server.storage import register_storage_full_handler
from fedkb.server.strategy import make_strategy

log = logging.getLogger(__name__)
ARTIFACT_DIR = "artifact"
CHECKPOINT_DIR = "checkpoints"
UPLOAD_SLACK = 64 * 1024  # header + codec framing on top of the raw float32 bytes


FREE_THREADS = 4  # WSGI threads never used to hold a check-in open


@dataclass
class ServerState:
    """What the request handlers share: database, registries, the round machine."""

    config: ServerConfig
    db: Database
    devices: DeviceRegistry
    tokens: DeviceTokens
    machine: RoundMachine
    metrics: ServerMetrics
    admin_token: str
    clock: Callable[[], float]
    float16: Float16Weights = field(default_factory=Float16Weights)  # the float16 downlink
    _stop: threading.Event = field(default_factory=threading.Event)
    _ticker: threading.Thread | None = None
    # WSGI threads that may hold a check-in open (CheckinRequest.wait_s); a few always
    # stay free for uploads, downloads and status
    holds: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.holds = threading.BoundedSemaphore(max(0, self.config.threads - FREE_THREADS))

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def max_upload_bytes(self) -> int:
        if self.config.max_upload_bytes is not None:
            return self.config.max_upload_bytes
        art = self.machine.artifact
        return (art.update_bytes if art else 0) + UPLOAD_SLACK

    def authenticate(self, req: Request) -> str:
        """The id of the device that sent ``req`` (401 if no valid token)."""
        device_id = self.tokens.verify(bearer(req))
        self.devices.population(device_id)
        return device_id

    def publish(self, source: Path) -> int:
        """Publish an exported artifact as version 0 (refused once a model exists)."""
        art = Artifact.load(source)
        with self.machine.lock:
            if self.machine.artifact is not None:
                raise Conflict("a model is already published on this server", "model_exists")
            copied = art.save(self.state_dir / ARTIFACT_DIR)
            self._attach(copied)
            assert self.machine.model is not None
            return self.machine.model.version

    def _attach(self, art: Artifact) -> None:
        store = CheckpointStore(self.state_dir / CHECKPOINT_DIR, self.db, art.specs)
        self.machine.attach(art, store)

    def set_round_config(self, changes: dict[str, Any]) -> RoundConfig:
        cfg = round_config_from_dict(self.machine.cfg, changes)
        check_privacy(self.config.privacy, cfg, self.config.strategy)  # e.g. report_goal
        overrides = {**self.db.get("round_overrides", {}), **changes}
        self.db.put("round_overrides", overrides)
        self.machine.set_config(cfg)
        return cfg

    def set_client_config(self, changes: dict[str, Any]) -> ClientConfig:
        """Change what new rounds ask of phones (persisted: it survives a restart)."""
        cfg = client_config_from_dict(self.machine.strategy.client, changes)
        overrides = {**self.db.get("client_overrides", {}), **changes}
        self.db.put("client_overrides", overrides)
        self.machine.set_client_config(cfg)
        return cfg

    def start_ticker(self) -> None:
        """Advance deadlines every ``tick_s`` even when no request comes."""
        if self.config.tick_s <= 0 or self._ticker is not None:
            return

        def run() -> None:
            while not self._stop.wait(self.config.tick_s):
                try:
                    self.machine.tick()
                except Exception:  # keep ticking; the error is logged
                    log.exception("tick failed")

        self._ticker = threading.Thread(target=run, name="fedkb-ticker", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self.db.close()


def build_state(config: ServerConfig, clock: Callable[[], float] | None = None) -> ServerState:
    """Open (or create) the state directory and restore the server from it."""
    clock = clock or time.time
    state_dir = config.state_dir
    secure_dir(state_dir)
    db = Database(state_dir / "fedkb.db")
    secret = resolve_secret_key(config.secret_key, state_dir, db)
    round_cfg = _restored(db, config.round, "round", round_config_from_dict)
    check_privacy(config.privacy, round_cfg, config.strategy)  # with the admin's overrides
    metrics = ServerMetrics()
    devices = DeviceRegistry(db, clock, RegistrationLimiter(
        config.registrations_per_minute_per_address, config.registrations_per_minute, clock))
    metrics.devices.set_function(devices.count)
    client_cfg = _restored(db, config.client, "client", client_config_from_dict)
    if config.privacy.mechanism == "ftrl":  # DP-FTRL's strategy carries its privacy
        from fedkb.server.privacy.ftrl import ftrl_strategy

        strategy = ftrl_strategy(config.strategy, client_cfg, config.privacy, round_cfg)
    else:
        strategy = make_strategy(config.strategy, client_cfg)
    privacy = None
    if config.privacy.enabled:
        from fedkb.server.privacy.dp_rounds import PrivacyRounds

        privacy = PrivacyRounds(config.privacy, db, metrics,
                                event_source=getattr(strategy, "dp_event", None))
    machine = RoundMachine(round_cfg, db, devices, strategy, metrics, clock,
                           random.Random(config.seed), privacy, config.compression,
                           config.secagg.replace(clip=secagg_clip(config.secagg,
                                                                  config.strategy)))
    state = ServerState(config, db, devices, DeviceTokens(secret, config.token_ttl_s, clock),
                        machine, metrics, resolve_admin_token(config.admin_token, state_dir), clock)
    served = state_dir / ARTIFACT_DIR
    if (served / METADATA_FILE).is_file():
        art = Artifact.load(served)
        if config.model is not None and Artifact.load(config.model).fingerprint \
                != art.fingerprint:
            raise ArtifactError(f"{state_dir} already serves another model; use a fresh "
                                f"--state-dir to publish {config.model}")
        state._attach(art)
    elif config.model is not None:
        state.publish(config.model)
    return state


def _restored(db: Database, base: Any, section: str, apply: Callable[[Any, Any], Any]) -> Any:
    """``base`` with the admin overrides stored in ``db``; overrides that fail validation
    are logged, set aside under ``<section>_overrides_refused`` and not applied."""
    stored = db.get(f"{section}_overrides", {})
    cfg, ok = with_stored_overrides(base, stored, section, apply)
    if not ok:
        db.put(f"{section}_overrides_refused", stored)
        db.put(f"{section}_overrides", {})
    return cfg


def create_app(config: ServerConfig, clock: Callable[[], float] | None = None) -> Flask:
    """The WSGI application for ``config`` (state restored from ``config.state_dir``)."""
    from fedkb.server import (
        api_admin,
        api_devices,
        api_models,
        api_predict,
        api_status,
        openapi,
        pages,
    )

    state = build_state(config, clock)
    app = Flask("fedkb.server")
    app.extensions["fedkb"] = state
    app.config["MAX_CONTENT_LENGTH"] = None  # uploads check their own limit (413)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.converters["int"] = Int64Converter  # ids beyond int64: 404, not 500
    register_error_handlers(app)
    register_storage_full_handler(app)  # a full disk anywhere: 507 storage_full, not 500
    for bp in (api_devices.bp, api_models.bp, api_status.bp, api_admin.bp, api_predict.bp,
               pages.bp, openapi.bp):
        app.register_blueprint(bp)

    @app.before_request
    def _start_timer() -> None:
        g.t0 = time.perf_counter()

    @app.after_request
    def _observe(resp):  # type: ignore[no-untyped-def]
        endpoint = request.endpoint or "unknown"
        state.metrics.request.labels(endpoint).observe(time.perf_counter() - g.t0)
        return resp

    return app


def server_state() -> ServerState:
    """The :class:`ServerState` of the application handling the current request."""
    return current_app.extensions["fedkb"]


__all__ = ["ServerState", "build_state", "create_app", "server_state"]
