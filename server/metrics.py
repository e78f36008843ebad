"""Prometheus metrics of one server instance (its own registry, never the global default).

Counters follow the round protocol's outcomes (Bonawitz et al. 2019, Sec. 8 lists the
same: check-ins, selections, reports, late reports, aborts, rejections, round outcomes);
histograms time the phases of a round and the fold of one update.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_PHASE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ServerMetrics:
    """All instruments, registered in a private :class:`CollectorRegistry`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.registrations = Counter("fedkb_registrations", "Devices registered", registry=r)
        self.checkins = Counter("fedkb_checkins", "Check-ins by outcome", ["outcome"],
                                registry=r)
        self.selected = Counter("fedkb_selected", "Tasks handed out", ["kind"], registry=r)
        self.reports = Counter("fedkb_reports", "Reports accepted", ["kind"], registry=r)
        self.late = Counter("fedkb_late_reports", "Reports refused as late", registry=r)
        self.aborts = Counter("fedkb_aborts", "Tasks aborted by devices", ["reason"],
                              registry=r)
        self.rejections = Counter("fedkb_rejections", "Uploads rejected", ["reason"],
                                  registry=r)
        self.rounds = Counter("fedkb_rounds", "Rounds closed", ["kind", "outcome"], registry=r)
        self.phase = Histogram("fedkb_round_phase_seconds", "Duration of round phases",
                               ["phase"], buckets=_PHASE_BUCKETS, registry=r)
        self.fold = Histogram("fedkb_update_fold_seconds",
                              "Decode + validate + fold of one update", buckets=_FAST_BUCKETS,
                              registry=r)
        self.request = Histogram("fedkb_http_request_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=_FAST_BUCKETS, registry=r)
        self.model_version = Gauge("fedkb_model_version", "Latest committed model version",
                                   registry=r)
        self.devices = Gauge("fedkb_devices", "Registered devices", registry=r)
        self.shed = Counter("fedkb_requests_shed", "Requests refused under load (503 "
                            "overloaded)", ["endpoint"], registry=r)
        self.privacy_epsilon = Gauge(
            "fedkb_privacy_epsilon", "Epsilon spent by the DP rounds so far, at the run's "
            "delta (+Inf: noise multiplier 0)", registry=r)
        self.privacy_clip = Gauge("fedkb_privacy_clip",
                                  "The L2 clip the next DP round's plan carries", registry=r)
        # bytes on the wire (issue 17): accepted uploads' Content-Length; weights and
        # artifact files served (200s only: a 304 to a cached copy sends no body); and
        # the last committed training round's totals, up and down
        self.uplink_bytes = Counter("fedkb_uplink_bytes", "Bytes of accepted uploads",
                                    ["kind"], registry=r)
        self.downlink_bytes = Counter("fedkb_downlink_bytes", "Bytes of models served",
                                      ["what"], registry=r)
        self.downlink_not_modified = Counter(
            "fedkb_downlink_not_modified", "Model downloads answered 304 Not Modified (the "
            "phone's cached copy was current: no body sent)", ["what"], registry=r)
        self.round_bytes = Gauge("fedkb_round_bytes", "Bytes of the last committed "
                                 "training round (up: uploads; down: the phones' downloads)",
                                 ["direction"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
