"""Prometheus metrics of the receiver: what ``serve`` counts, observes and renders for GET /metrics.

One ``Metrics`` value owns its own ``CollectorRegistry`` (never the process-global one), so
several receivers, or tests, in one process never share counters. Events (alerts, finished
runs, notifications) are counters and histograms; state (queue, brake, breakers) is a
snapshot the receiver refreshes with ``*_observed`` and a collector renders whole, so a
scrape never sees half of an update.

Label values are bounded: sources, rejection reasons, outcomes and statuses are fixed sets;
phase and fix names come from code and the rules file, not from alert text, and are checked
against a name pattern; per-(host, fix) breaker series are capped (``max_breaker_series``),
the rest summed into one ``_other`` series. See docs/OBSERVABILITY.md.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from .decision import Outcome
from .report import PhaseRecord, RunReport, run_level_phases
from .store import BreakerRow, QueueStats

RejectReason = Literal["auth", "size", "payload", "full"]
NotifyResult = Literal["sent", "failed", "dropped"]

SOURCES = ("alertmanager", "grafana", "sentinel", "generic")
REJECT_REASONS: tuple[str, ...] = get_args(RejectReason)
OUTCOMES: tuple[str, ...] = get_args(Outcome)
NOTIFY_KINDS = ("generic", "slack")
NOTIFY_RESULTS: tuple[str, ...] = get_args(NotifyResult)
OTHER = "other"  # a label value outside its fixed set (never expected; kept bounded)
NONE = "none"  # no fix: rejected payloads, only-resolved payloads
OVERFLOW = "_other"  # breaker series past the cap
# The classic text format every Prometheus reads (prometheus-client 0.22+ defaults to 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Phases take milliseconds (intake) to the job timeout (300 s by default).
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
RUN_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
# Deciles: the default threshold (0.7) is a bucket edge, so "below threshold" is readable.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _label(value: str | None, allowed: Iterable[str] | None = None) -> str:
    """A bounded label value: in ``allowed`` (when given), or name-shaped; else ``other``."""
    if value is None:
        return NONE
    if allowed is not None:
        return value if value in allowed else OTHER
    return value if _NAME.match(value) else OTHER


def _seconds_between(start: str, end: str) -> float | None:
    try:
        return max((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 0)
    except ValueError:
        return None


class _StateCollector(Collector):
    """Queue, brake and breaker gauges from the last snapshot, replaced whole under a lock."""

    def __init__(self, max_breaker_series: int) -> None:
        self._lock = threading.Lock()
        self._max = max_breaker_series
        self._queue: QueueStats | None = None
        self._brake: bool | None = None
        self._breakers: list[BreakerRow] | None = None

    def set_queue(self, stats: QueueStats) -> None:
        with self._lock:
            self._queue = stats

    def set_brake(self, engaged: bool) -> None:
        with self._lock:
            self._brake = engaged

    def set_breakers(self, rows: Sequence[BreakerRow]) -> None:
        with self._lock:
            self._breakers = list(rows)

    def describe(self) -> Iterable[Metric]:
        return self._families(None, None, None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            queue, brake, breakers = self._queue, self._brake, self._breakers
        return self._families(queue, brake, breakers)

    def _families(
        self, queue: QueueStats | None, brake: bool | None, breakers: list[BreakerRow] | None
    ) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "veris_queue_depth", "Incidents in the durable queue, by status.", labels=["status"]
        )
        age = GaugeMetricFamily(
            "veris_queue_oldest_age_seconds", "Age of the oldest queued incident (0: none)."
        )
        if queue is not None:
            depth.add_metric(["queued"], queue.queued)
            depth.add_metric(["running"], queue.running)
            age.add_metric([], queue.oldest_queued_seconds)
        yield depth
        yield age
        engaged = GaugeMetricFamily(
            "veris_brake_engaged", "1 while the emergency brake is engaged: no fix is applied."
        )
        if brake is not None:
            engaged.add_metric([], 1.0 if brake else 0.0)
        yield engaged
        by_state = GaugeMetricFamily(
            "veris_breakers",
            "Restart-storm breakers that are not closed, by state.",
            labels=["state"],
        )
        per_host = GaugeMetricFamily(
            "veris_breaker_open",
            "Open restart-storm breakers per host and fix (past the series cap: host/fix _other).",
            labels=["host", "fix"],
        )
        if breakers is not None:
            for state in ("open", "half_open"):
                by_state.add_metric([state], sum(1 for r in breakers if r.state == state))
            for (host, fix), count in self._open_series(breakers).items():
                per_host.add_metric([host, fix], count)
        yield by_state
        yield per_host

    def _open_series(self, rows: Sequence[BreakerRow]) -> dict[tuple[str, str], int]:
        series: dict[tuple[str, str], int] = {}
        for row in sorted((r for r in rows if r.state == "open"), key=lambda r: (r.host, r.fix)):
            key = (_label(row.host), _label(row.fix))
            if key not in series and len(series) >= self._max:
                key = (OVERFLOW, OVERFLOW)
            series[key] = series.get(key, 0) + 1
        return series


class Metrics:
    """Every metric ``serve`` exposes, in a registry of its own. Thread-safe."""

    def __init__(self, *, max_breaker_series: int = 50) -> None:
        if max_breaker_series < 1:
            raise ValueError("max_breaker_series must be at least 1")
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._received = Counter(
            "veris_alerts_received", "Alert payloads received, by source.", ["source"], registry=reg
        )
        self._rejected = Counter(
            "veris_alerts_rejected",
            "Alert payloads refused before queueing (auth, size, payload, full).",
            ["reason"],
            registry=reg,
        )
        self._deduplicated = Counter(
            "veris_alerts_deduplicated",
            "Incidents received again (HA pair, retry, repeat interval) and not queued twice.",
            registry=reg,
        )
        self._runs = Counter(
            "veris_runs", "Finished runs (one per payload), by outcome.", ["outcome"], registry=reg
        )
        self._remediations = Counter(
            "veris_remediations",
            "Finished remediations (one alert on one host), by outcome and fix.",
            ["outcome", "fix"],
            registry=reg,
        )
        self._rollbacks = Counter(
            "veris_rollbacks", "Applied fixes rolled back, by fix.", ["fix"], registry=reg
        )
        self._phase = Histogram(
            "veris_phase_duration_seconds",
            "Duration of each phase of a run (intake, route, diagnose, check, apply, ...).",
            ["phase", "status"],
            buckets=PHASE_BUCKETS,
            registry=reg,
        )
        self._run_seconds = Histogram(
            "veris_run_duration_seconds",
            "Wall time of a run, intake to report.",
            buckets=RUN_BUCKETS,
            registry=reg,
        )
        self._confidence = Histogram(
            "veris_decision_confidence",
            "Confidence of each scored decision, by fix.",
            ["fix"],
            buckets=CONFIDENCE_BUCKETS,
            registry=reg,
        )
        self._notifications = Counter(
            "veris_notifications",
            "Outgoing notifications, by target kind and result (sent, failed, dropped).",
            ["kind", "result"],
            registry=reg,
        )
        self._state = _StateCollector(max_breaker_series)
        reg.register(self._state)
        # Known label values start at 0, so rate() and increase() see the first event.
        for source in SOURCES:
            self._received.labels(source)
        for reason in REJECT_REASONS:
            self._rejected.labels(reason)
        for outcome in OUTCOMES:
            self._runs.labels(outcome)
        for kind in NOTIFY_KINDS:
            for result in NOTIFY_RESULTS:
                self._notifications.labels(kind, result)

    # -- intake -------------------------------------------------------------------------

    def alert_received(self, source: str) -> None:
        self._received.labels(_label(source, SOURCES)).inc()

    def alert_rejected(self, reason: RejectReason) -> None:
        self._rejected.labels(_label(reason, REJECT_REASONS)).inc()

    def alert_deduplicated(self) -> None:
        self._deduplicated.inc()

    # -- runs ---------------------------------------------------------------------------

    def run_finished(self, report: RunReport) -> None:
        """Count the run and each remediation; observe phase durations and confidences."""
        self._runs.labels(_label(report.outcome, OUTCOMES)).inc()
        seconds = _seconds_between(report.started_at, report.finished_at)
        if seconds is not None:
            self._run_seconds.observe(seconds)
        # The payload's own phases; each remediation's are observed with it below.
        for phase in run_level_phases(report):
            self._observe_phase(phase)
        for result in report.remediations:
            fix = _label(result.remediation)
            self._remediations.labels(_label(result.outcome, OUTCOMES), fix).inc()
            if result.rolled_back:
                self._rollbacks.labels(fix).inc()
            for phase in result.phases:
                self._observe_phase(phase)
            # Only decisions that were scored: a rejection or an open breaker carries 0.0.
            if any(p.name == "decide" for p in result.phases):
                self._confidence.labels(fix).observe(result.confidence)

    def _observe_phase(self, phase: PhaseRecord) -> None:
        self._phase.labels(_label(phase.name), phase.status).observe(phase.seconds)

    # -- state snapshots ----------------------------------------------------------------

    def queue_observed(self, stats: QueueStats) -> None:
        self._state.set_queue(stats)

    def brake_observed(self, engaged: bool) -> None:
        self._state.set_brake(engaged)

    def breaker_observed(self, rows: list[BreakerRow]) -> None:
        self._state.set_breakers(rows)

    # -- notifications ------------------------------------------------------------------

    def notification(self, kind: str, result: NotifyResult) -> None:
        """One notification to a target of ``kind`` (generic, slack) was sent, failed or dropped."""
        self._notifications.labels(_label(kind, NOTIFY_KINDS), _label(result, NOTIFY_RESULTS)).inc()

    # -- exposition ---------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The body and content type for GET /metrics (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry), CONTENT_TYPE
