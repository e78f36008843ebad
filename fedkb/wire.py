"""The typed wire protocol shared by the device runtime and the server.

Every JSON message that crosses the network is a frozen dataclass here, with
``to_json() -> dict`` and ``from_json(dict)`` that check types and raise :class:`WireError`
(naming the field) on anything malformed. The module imports the standard library, NumPy
and :mod:`fedkb.codec` only (no Flask, no TensorFlow), so a phone process can import it.

HTTP exchanges (all JSON bodies are ``application/json``; device calls carry
``Authorization: Bearer <device token>``):

====================================  ======================  ===========================
request                               body                    answer
====================================  ======================  ===========================
``POST /v1/devices``                  :class:`RegisterRequest`   :class:`RegisterResponse`
``POST /v1/checkin``                  :class:`CheckinRequest`    :class:`CheckinResponse`
``POST /v1/tasks/<id>/result``        binary, see below          :class:`UploadResult`
``POST /v1/tasks/<id>/abort``         :class:`AbortRequest`      :class:`AbortResult`
``GET /v1/tasks/<id>/secagg``         (none)                     :class:`SecAggStep`
``POST /v1/tasks/<id>/secagg``        :class:`SecAggSubmit`      :class:`SecAggAck`
                                      (or FKBS, see below)
====================================  ======================  ===========================

A task whose plan has ``secagg`` (a secure round, :mod:`fedkb.server.secure_round`) sends
no ``result``: the phone asks ``GET .../secagg`` what the round's current phase wants of
it and answers with ``POST .../secagg``, whose ``message`` is one of
:mod:`fedkb.secagg.messages` (strict JSON of their own: AdvertiseKeys, ShareKeys,
MaskedInput, UnmaskResponse).

Binary upload framing (content type :data:`UPLOAD_CONTENT_TYPE`), one body::

    b"FKBU" | u32 little-endian n | n bytes of UTF-8 JSON (UploadMetadata) | codec bytes

The codec bytes are :func:`fedkb.codec.encode_arrays` of the update (a *delta*:
new local weights minus the task's global weights, float32, in the model's weight order),
or, when the task's :class:`Plan` asks for a compressed ``uplink`` (``q8``/``q4``/``q2``,
``rotate``), the ``FKBQ`` body of :mod:`fedkb.compression.encoding`
(:func:`fedkb.plan_codec.encode_delta`; the server refuses any other).
An evaluation task uploads metrics only: the codec part is empty (zero bytes).
Use :func:`encode_upload` / :func:`decode_upload`; the server decodes the arrays itself
(after size and ownership checks), so :func:`split_upload` returns them still encoded.

A masked input may also travel framed (content type :data:`SECAGG_CONTENT_TYPE`), so
its 2-3 MB vector is sent as raw bytes, not base64 inside JSON (25% fewer bytes, and no
base64 encode and JSON dump on the phone nor JSON parse and base64 decode on the server:
~11 + ~12 ms a phone for the ``small`` model, ``bench/bench_masked_input_wire.py``)::

    b"FKBS" | u32 little-endian n | n bytes of UTF-8 JSON (SecAggSubmit) | packed vector

The header's ``message`` is the MaskedInput without its ``data`` field
(:meth:`fedkb.secagg.messages.MaskedInput.header`); the packed vector follows. Use
:func:`frame_secagg` / :func:`split_secagg`. Every other protocol message is JSON.

Errors from the server are ``{"error": {"code": str, "message": str}}`` with a 4xx status;
:class:`ErrorBody` parses them.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from fedkb import strict_json
from fedkb.codec import decode_arrays, encode_arrays

UPLOAD_CONTENT_TYPE = "application/x-fedkb-update"
UPLOAD_MAGIC = b"FKBU"
SECAGG_CONTENT_TYPE = "application/x-fedkb-secagg"
SECAGG_MAGIC = b"FKBS"
MAX_HEADER_BYTES = 64 * 1024

TaskKind = Literal["train", "evaluate"]
Population = Literal["train", "heldout"]
TASK_KINDS = ("train", "evaluate")
POPULATIONS = ("train", "heldout")


class WireError(ValueError):
    """A message that does not match the protocol (wrong type, missing field, bad framing)."""


# --- field checks ----------------------------------------------------------------------


def _obj(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise WireError(f"{what} must be a JSON object, not {type(d).__name__}")
    return d


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str,
         default: Any = ...) -> Any:
    if key not in d or d[key] is None:
        if default is ...:
            raise WireError(f"{what}.{key} is required")
        return default
    v = d[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds:
        raise WireError(f"{what}.{key} must be {_names(kinds)}, not a boolean")
    if not isinstance(v, kinds):
        raise WireError(f"{what}.{key} must be {_names(kinds)}, not {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise WireError(f"{what}.{key} must be finite")
    return v


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)


def _choice(v: str, allowed: tuple[str, ...], what: str) -> str:
    if v not in allowed:
        raise WireError(f"{what} must be one of {', '.join(allowed)}, not {v!r}")
    return v


def _float_map(d: Any, what: str) -> dict[str, float]:
    d = _obj(d, what)
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise WireError(f"{what}.{k} must be a finite number")
        out[str(k)] = float(v)
    return out


class _Message:
    """Mixin: ``to_json`` drops nothing; subclasses implement ``from_json``."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def dumps(self) -> str:
        return json.dumps(self.to_json())


# --- registration ----------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterRequest(_Message):
    """A phone asks for an identity. ``population`` says which user split it holds."""

    population: Population = "train"
    name: str = ""

    @classmethod
    def from_json(cls, d: Any) -> RegisterRequest:
        d = _obj(d, "register")
        pop = _choice(_get(d, "population", str, "register", "train"), POPULATIONS,
                      "register.population")
        return cls(pop, _get(d, "name", str, "register", ""))  # type: ignore[arg-type]


@dataclass(frozen=True)
class RegisterResponse(_Message):
    device_id: str
    token: str
    token_ttl_s: float

    @classmethod
    def from_json(cls, d: Any) -> RegisterResponse:
        d = _obj(d, "registered")
        return cls(_get(d, "device_id", str, "registered"), _get(d, "token", str, "registered"),
                   _get(d, "token_ttl_s", float, "registered"))


# --- check-in --------------------------------------------------------------------------


# Why a device may not take a task now: one vocabulary for the server's check-in answers
# (``CheckinResponse.reason``, :mod:`fedkb.server.pacing`) and the phone's own scheduler and
# abort reasons (:mod:`fedkb.device_runtime.traces`), in the order they are checked.
NOT_CHARGING = "not_charging"
METERED_NETWORK = "metered_network"
NOT_IDLE = "not_idle"
LOW_BATTERY = "low_battery"
INELIGIBILITY_REASONS = (NOT_CHARGING, METERED_NETWORK, NOT_IDLE, LOW_BATTERY)

# Why a phone gives up a task (``AbortRequest.reason``): the words above, plus the
# device runtime's own (``device_runtime/traces.py``: offline; ``phone.py``: ineligible,
# no_data; ``worker.py``: deadline) and a few any client may need. Anything else is
# counted as OTHER_REASON. The set is closed because each word becomes a stored value and
# a Prometheus label.
OTHER_REASON = "other"
ABORT_REASONS = (*INELIGIBILITY_REASONS, "offline", "ineligible", "no_data", "deadline",
                 "error", "diverged", "shutdown", OTHER_REASON)


@dataclass(frozen=True)
class Conditions(_Message):
    """What the phone reports about itself (Hard et al. 2018: charging, unmetered, idle).

    ``battery`` is a fraction, 0..1, here and everywhere in fedkb (trace files, which
    store a percentage, are converted when read).
    """

    charging: bool
    unmetered: bool
    idle: bool
    battery: float  # 0..1

    def ineligibility(self, *, charging: bool = True, unmetered: bool = True,
                      idle: bool = True, min_battery: float = 0.0) -> str | None:
        """The first of :data:`INELIGIBILITY_REASONS` that holds (None: eligible), for the
        requirements given (each ``True``: required; ``min_battery``: a fraction)."""
        if charging and not self.charging:
            return NOT_CHARGING
        if unmetered and not self.unmetered:
            return METERED_NETWORK
        if idle and not self.idle:
            return NOT_IDLE
        if self.battery < min_battery:
            return LOW_BATTERY
        return None

    @classmethod
    def from_json(cls, d: Any) -> Conditions:
        d = _obj(d, "conditions")
        battery = _get(d, "battery", float, "conditions")
        if not 0.0 <= battery <= 1.0:
            raise WireError("conditions.battery must be in [0, 1]")
        return cls(_get(d, "charging", bool, "conditions"),
                   _get(d, "unmetered", bool, "conditions"),
                   _get(d, "idle", bool, "conditions"), battery)


MAX_CHECKIN_WAIT_S = 30.0


@dataclass(frozen=True)
class CheckinRequest(_Message):
    conditions: Conditions
    cached_version: int | None = None  # the newest model version the phone already holds
    # Seconds the phone will keep this request open: selected ahead of its round's model,
    # it gets its task the moment the model exists instead of "come back soon" (an open
    # stream, as in Bonawitz et al. 2019). 0: answer at once.
    wait_s: float = 0.0

    @classmethod
    def from_json(cls, d: Any) -> CheckinRequest:
        d = _obj(d, "checkin")
        wait = _get(d, "wait_s", float, "checkin", 0.0)
        if not 0.0 <= wait <= MAX_CHECKIN_WAIT_S:
            raise WireError(f"checkin.wait_s must be within 0-{MAX_CHECKIN_WAIT_S:g} s")
        return cls(Conditions.from_json(_get(d, "conditions", dict, "checkin")),
                   _get(d, "cached_version", int, "checkin", None), wait)


@dataclass(frozen=True)
class Plan(_Message):
    """How to run a task on the phone (the server's "configuration" of a round)."""

    kind: TaskKind
    lr: float
    batch_size: int
    epochs: int
    max_steps: int
    seed: int = 0  # batch-order seed (fedkb.device_runtime.batching.batch_plan)
    # differential privacy: the phone clips its delta to this L2 norm before upload and
    # reports whether it was within it (UploadMetadata.unclipped); None: no clip
    clip: float | None = None
    # How the update travels (fedkb.plan_codec): the uplink encoding, whether it is
    # rotated first (with this task's rotation seed, which the server keeps with the task)
    # and the dtype of the global weights the phone downloads. Left out of the JSON at
    # their defaults (as is a clip of None), so a plain plan reads as before.
    uplink: str = "float32"
    rotate: bool = False
    rotation_seed: int | None = None
    downlink: str = "float32"
    # a quantized uplink leaves tensors of fewer values float32 (Encoding.min_elements)
    min_elements: int = 20_000
    # each local SGD step's gradient clipped to this global L2 norm inside the LiteRT
    # train signature (so local training cannot blow up); None: not clipped
    grad_clip: float | None = None
    # a secure round (fedkb.secagg): the phone sends its update through the secure phases
    # (GET/POST /v1/tasks/<id>/secagg), clipped to ``clip`` and rotated with
    # ``rotation_seed`` (the round's, shared by its phones), on the shared grid of
    # fedkb.secagg.update_codec with ``uplink``'s bits
    secagg: bool = False

    def __post_init__(self) -> None:
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise WireError(f"plan.clip must be a positive number, got {self.clip}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip)
                                               and self.grad_clip > 0):
            raise WireError(f"plan.grad_clip must be a positive number, got {self.grad_clip}")
        if not 0 <= self.min_elements < 1 << 31:
            raise WireError(f"plan.min_elements must be in [0, 2**31), got {self.min_elements}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, default in _PLAN_DEFAULTS.items():
            if d[k] == default:
                del d[k]
        return d

    @classmethod
    def from_json(cls, d: Any) -> Plan:
        d = _obj(d, "plan")
        seed = _get(d, "rotation_seed", int, "plan", None)
        if seed is not None and not 0 <= seed < 1 << 64:
            raise WireError("plan.rotation_seed must be in [0, 2**64)")
        return cls(_choice(_get(d, "kind", str, "plan"), TASK_KINDS, "plan.kind"),  # type: ignore[arg-type]
                   _get(d, "lr", float, "plan"), _get(d, "batch_size", int, "plan"),
                   _get(d, "epochs", int, "plan"), _get(d, "max_steps", int, "plan"),
                   _get(d, "seed", int, "plan", 0), clip=_get(d, "clip", float, "plan", None),
                   uplink=_choice(_get(d, "uplink", str, "plan", "float32"), UPLINKS,
                                  "plan.uplink"),
                   rotate=_get(d, "rotate", bool, "plan", False), rotation_seed=seed,
                   downlink=_choice(_get(d, "downlink", str, "plan", "float32"), DOWNLINKS,
                                    "plan.downlink"),
                   grad_clip=_get(d, "grad_clip", float, "plan", None),
                   secagg=_get(d, "secagg", bool, "plan", False),
                   min_elements=_get(d, "min_elements", int, "plan", 20_000))


UPLINKS = ("float32", "q8", "q4", "q2")  # fedkb.compression.encoding.NAMES
DOWNLINKS = ("float32", "float16")
_PLAN_DEFAULTS = {"clip": None, "uplink": "float32", "rotate": False, "rotation_seed": None,
                  "downlink": "float32", "grad_clip": None, "secagg": False,
                  "min_elements": 20_000}


@dataclass(frozen=True)
class Task(_Message):
    """One unit of work: train (or evaluate) ``model_version`` and report before ``deadline``.

    ``weights_url`` / ``artifact_url`` are server-relative paths; both are immutable per
    version, so a phone caches them by ``model_version``. ``deadline_s`` is the number of
    seconds the phone has left to report, measured when the task was issued.
    """

    task_id: str
    round_id: int
    model_version: int
    plan: Plan
    weights_url: str
    artifact_url: str
    deadline_s: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "plan": self.plan.to_json()}

    @classmethod
    def from_json(cls, d: Any) -> Task:
        d = _obj(d, "task")
        return cls(_get(d, "task_id", str, "task"), _get(d, "round_id", int, "task"),
                   _get(d, "model_version", int, "task"),
                   Plan.from_json(_get(d, "plan", dict, "task")),
                   _get(d, "weights_url", str, "task"), _get(d, "artifact_url", str, "task"),
                   _get(d, "deadline_s", float, "task"))


@dataclass(frozen=True)
class CheckinResponse(_Message):
    """Either ``retry_after_s`` (pace steering: come back later) or a ``task``, never both."""

    retry_after_s: float | None = None
    task: Task | None = None
    reason: str = ""  # why no task: "ineligible", "no_round", "not_selected", ...

    def __post_init__(self) -> None:
        if (self.retry_after_s is None) == (self.task is None):
            raise WireError("a check-in response holds exactly one of retry_after_s and task")

    def to_json(self) -> dict[str, Any]:
        if self.task is not None:
            return {"task": self.task.to_json()}
        return {"retry_after_s": self.retry_after_s, "reason": self.reason}

    @classmethod
    def from_json(cls, d: Any) -> CheckinResponse:
        d = _obj(d, "checkin_response")
        if d.get("task") is not None:
            return cls(task=Task.from_json(d["task"]))
        return cls(retry_after_s=_get(d, "retry_after_s", float, "checkin_response"),
                   reason=_get(d, "reason", str, "checkin_response", ""))


# --- reporting -------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadMetadata(_Message):
    """What accompanies an update: the task, its weight (examples), loss, metrics, timings.

    For an evaluation task, ``metrics`` holds e.g. ``loss``, ``top1_recall``,
    ``top3_recall``; the server averages each weighted by ``num_examples``.
    """

    task_id: str
    round_id: int
    num_examples: int
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # under a plan with a clip C: b = 1[||delta|| <= C] before the phone clipped it
    # (adaptive clipping's bit, Andrew et al. 2021); None: the plan had no clip
    unclipped: bool | None = None

    @classmethod
    def from_json(cls, d: Any) -> UploadMetadata:
        d = _obj(d, "upload")
        n = _get(d, "num_examples", int, "upload")
        if n < 0:
            raise WireError("upload.num_examples must be >= 0")
        return cls(_get(d, "task_id", str, "upload"), _get(d, "round_id", int, "upload"), n,
                   _get(d, "loss", float, "upload", None),
                   _float_map(d.get("metrics") or {}, "upload.metrics"),
                   _float_map(d.get("timings") or {}, "upload.timings"),
                   _get(d, "unclipped", bool, "upload", None))


@dataclass(frozen=True)
class UploadResult(_Message):
    task_id: str
    round_id: int
    status: str  # "accepted"
    received_at: float

    @classmethod
    def from_json(cls, d: Any) -> UploadResult:
        d = _obj(d, "upload_result")
        return cls(_get(d, "task_id", str, "upload_result"),
                   _get(d, "round_id", int, "upload_result"),
                   _get(d, "status", str, "upload_result"),
                   _get(d, "received_at", float, "upload_result"))


@dataclass(frozen=True)
class AbortRequest(_Message):
    """The phone gives up a task, e.g. ``"not_charging"``: one of :data:`ABORT_REASONS`.

    A reason outside that closed set (a newer phone's, or free text) is read as
    :data:`OTHER_REASON`: the abort still counts, but a phone cannot put its own words
    into the server's database or a Prometheus label (one series per distinct value).
    """

    reason: str

    MAX_REASON: ClassVar[int] = 64

    @classmethod
    def from_json(cls, d: Any) -> AbortRequest:
        r = _get(_obj(d, "abort"), "reason", str, "abort")
        if not r or len(r) > cls.MAX_REASON or not r.replace("_", "").replace("-", "").isalnum():
            raise WireError("abort.reason must be a short word ([A-Za-z0-9_-], 1-64 chars)")
        return cls(r if r in ABORT_REASONS else OTHER_REASON)


@dataclass(frozen=True)
class AbortResult(_Message):
    task_id: str
    status: str  # "aborted"; "left": a secure task after its masked input (still summed)

    @classmethod
    def from_json(cls, d: Any) -> AbortResult:
        d = _obj(d, "abort_result")
        return cls(_get(d, "task_id", str, "abort_result"), _get(d, "status", str, "abort_result"))


@dataclass(frozen=True)
class ErrorBody(_Message):
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    @classmethod
    def from_json(cls, d: Any) -> ErrorBody:
        e = _obj(_obj(d, "error_body").get("error"), "error")
        return cls(_get(e, "code", str, "error"), _get(e, "message", str, "error"))


# --- secure aggregation (fedkb.secagg over HTTP) ------------------------------------------

SECAGG_PHASES = ("waiting", "advertise_keys", "share_keys", "masked_input_collection",
                 "unmasking", "done", "aborted")


def _int_list(v: Any, what: str) -> list[int]:
    if not isinstance(v, list) or any(isinstance(u, bool) or not isinstance(u, int) for u in v):
        raise WireError(f"{what} must be a list of integers")
    return list(v)


@dataclass(frozen=True)
class SecAggSetup(_Message):
    """A secure round's public parameters (:class:`fedkb.secagg.params.RoundParams`) and
    the phone's own id in it; ``graph_seed`` is hex (SecAgg+ only, else empty)."""

    round_id: str  # the protocol's round id, e.g. "r12"
    uid: int
    clients: list[int]
    threshold: int
    dim: int
    k: int
    degree: int | None = None
    graph_seed: str = ""
    range_sigmas: float = 4.0  # the shared grid's radius (fedkb.secagg.update_codec)
    # > 0: an example-weighted round; the phone scales its clipped delta by
    # fedkb.secagg.update_codec.example_weight(examples, weight_cap). 0: every phone weight 1
    weight_cap: int = 0
    # > 0: distributed DP; each phone adds discrete Gaussian noise of this std (float
    # units) to its encoded update (fedkb.secagg.distributed_dp)
    noise_std: float = 0.0
    noise_scale: int = 1  # the codes' multiplier: the noise's lattice is this much finer

    @classmethod
    def from_json(cls, d: Any) -> SecAggSetup:
        d = _obj(d, "secagg_setup")
        seed = _get(d, "graph_seed", str, "secagg_setup", "")
        try:
            bytes.fromhex(seed)
        except ValueError:
            raise WireError("secagg_setup.graph_seed must be hex") from None
        if _get(d, "weight_cap", int, "secagg_setup", 0) < 0:
            raise WireError("secagg_setup.weight_cap must be >= 0")
        noise = _get(d, "noise_std", float, "secagg_setup", 0.0)
        if not (math.isfinite(noise) and noise >= 0):
            raise WireError("secagg_setup.noise_std must be a finite number >= 0")
        scale = _get(d, "noise_scale", int, "secagg_setup", 1)
        if scale < 1 or scale & (scale - 1) or scale > 1 << 16:
            raise WireError("secagg_setup.noise_scale must be a power of two up to 65536")
        return cls(_get(d, "round_id", str, "secagg_setup"), _get(d, "uid", int, "secagg_setup"),
                   _int_list(_get(d, "clients", list, "secagg_setup"), "secagg_setup.clients"),
                   _get(d, "threshold", int, "secagg_setup"), _get(d, "dim", int, "secagg_setup"),
                   _get(d, "k", int, "secagg_setup"),
                   _get(d, "degree", int, "secagg_setup", None), seed,
                   _get(d, "range_sigmas", float, "secagg_setup", 4.0),
                   _get(d, "weight_cap", int, "secagg_setup", 0), noise, scale)


@dataclass(frozen=True)
class SecAggStep(_Message):
    """``GET /v1/tasks/<id>/secagg``: what the round's phase wants of this phone now.

    ``phase`` is one of :data:`SECAGG_PHASES`: ``waiting`` (nothing to send yet, ask
    again after ``retry_after_s``), a protocol phase with the server's ``message`` for it
    (``advertise_keys``: none, the ``setup`` says everything; ``share_keys``: the key
    roster; ``masked_input_collection``: this phone's share relay; ``unmasking``: the
    survivor set), or ``done`` / ``aborted`` (with ``reason``)."""

    round_id: int
    phase: str
    setup: SecAggSetup | None = None
    message: dict[str, Any] | None = None
    retry_after_s: float | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "phase": self.phase,
                "setup": None if self.setup is None else self.setup.to_json(),
                "message": self.message, "retry_after_s": self.retry_after_s,
                "reason": self.reason}

    @classmethod
    def from_json(cls, d: Any) -> SecAggStep:
        d = _obj(d, "secagg_step")
        setup = d.get("setup")
        return cls(_get(d, "round_id", int, "secagg_step"),
                   _choice(_get(d, "phase", str, "secagg_step"), SECAGG_PHASES,
                           "secagg_step.phase"),
                   None if setup is None else SecAggSetup.from_json(setup),
                   _get(d, "message", dict, "secagg_step", None),
                   _get(d, "retry_after_s", float, "secagg_step", None),
                   _get(d, "reason", str, "secagg_step", ""))


@dataclass(frozen=True)
class SecAggSubmit(_Message):
    """``POST /v1/tasks/<id>/secagg``: the phone's message for the current phase. With the
    masked input the phone also says what an upload's metadata would (examples, loss,
    timings, whether its delta was within the clip, how many coordinates the shared grid
    clipped): scalars about the task, never the update."""

    message: dict[str, Any]
    num_examples: int | None = None
    loss: float | None = None
    unclipped: bool | None = None
    clipped_values: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> SecAggSubmit:
        d = _obj(d, "secagg_submit")
        n = _get(d, "num_examples", int, "secagg_submit", None)
        c = _get(d, "clipped_values", int, "secagg_submit", None)
        if (n is not None and n < 0) or (c is not None and c < 0):
            raise WireError("secagg_submit counts must be >= 0")
        return cls(_get(d, "message", dict, "secagg_submit"), n,
                   _get(d, "loss", float, "secagg_submit", None),
                   _get(d, "unclipped", bool, "secagg_submit", None), c,
                   _float_map(d.get("timings") or {}, "secagg_submit.timings"))


@dataclass(frozen=True)
class SecAggAck(_Message):
    task_id: str
    phase: str
    status: str  # "accepted"

    @classmethod
    def from_json(cls, d: Any) -> SecAggAck:
        d = _obj(d, "secagg_ack")
        return cls(_get(d, "task_id", str, "secagg_ack"), _get(d, "phase", str, "secagg_ack"),
                   _get(d, "status", str, "secagg_ack"))


# --- binary upload framing -------------------------------------------------------------


def encode_upload(meta: UploadMetadata, update: list[np.ndarray] | None) -> bytes:
    """One upload body: the framed JSON header followed by the codec bytes (or nothing)."""
    return frame_upload(meta, encode_arrays(update) if update is not None else b"")


def _frame(magic: bytes, header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header).encode("utf-8")
    return magic + struct.pack("<I", len(head)) + head + payload


def _split(magic: bytes, what: str, body: bytes | memoryview) -> tuple[Any, memoryview]:
    """The parsed JSON header and the payload (a view, not a copy) of a framed body."""
    buf = memoryview(body)
    if len(buf) < 8 or bytes(buf[:4]) != magic:
        raise WireError(f"{what} body does not start with the {magic.decode()} frame")
    (n,) = struct.unpack_from("<I", buf, 4)
    if n > MAX_HEADER_BYTES or 8 + n > len(buf):
        raise WireError(f"{what} header length is out of range")
    try:
        header = strict_json.loads(buf[8 : 8 + n])
    except strict_json.JsonError as exc:
        raise WireError(f"{what} header is not JSON: {exc}") from exc
    return header, buf[8 + n :]


def frame_upload(meta: UploadMetadata, payload: bytes) -> bytes:
    """An upload body from already-encoded codec bytes (encode a large update only once)."""
    return _frame(UPLOAD_MAGIC, meta.to_json(), payload)


def split_upload(body: bytes | memoryview) -> tuple[UploadMetadata, memoryview]:
    """The metadata and the still-encoded codec bytes of an upload body."""
    header, payload = _split(UPLOAD_MAGIC, "upload", body)
    return UploadMetadata.from_json(header), payload


def frame_secagg(sub: SecAggSubmit, payload: bytes) -> bytes:
    """A framed masked input: ``sub`` (whose message is a MaskedInput's header) and the
    packed vector after it."""
    return _frame(SECAGG_MAGIC, sub.to_json(), payload)


def split_secagg(body: bytes | memoryview) -> tuple[SecAggSubmit, memoryview]:
    """The submit and the packed vector of a framed masked input."""
    header, payload = _split(SECAGG_MAGIC, "secure-aggregation", body)
    return SecAggSubmit.from_json(header), payload


def decode_upload(body: bytes) -> tuple[UploadMetadata, list[np.ndarray]]:
    """Inverse of :func:`encode_upload` (arrays empty for a metrics-only upload)."""
    meta, payload = split_upload(body)
    return meta, (decode_arrays(payload) if len(payload) else [])


MESSAGES = (RegisterRequest, RegisterResponse, Conditions, CheckinRequest, Plan, Task,
            CheckinResponse, UploadMetadata, UploadResult, AbortRequest, AbortResult, ErrorBody,
            SecAggSetup, SecAggStep, SecAggSubmit, SecAggAck)
__all__ = [c.__name__ for c in MESSAGES] + [
    "ABORT_REASONS", "DOWNLINKS", "OTHER_REASON", "SECAGG_CONTENT_TYPE", "SECAGG_PHASES", "UPLINKS",
    "UPLOAD_CONTENT_TYPE", "WireError", "decode_upload", "encode_upload", "frame_secagg",
    "frame_upload", "split_secagg", "split_upload"]
