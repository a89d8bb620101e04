"""One posted payload → incidents to queue, alerts refused, alerts resolved; then the queue.

Each firing alert becomes one queue row holding a payload with that alert alone, so a
run (and a later ``approve``/``rollback`` of it, which re-read the saved payload) sees
exactly the incident it was queued for. The row's key is the incident key
(``guards.incident_key``: name, fingerprint, start): Alertmanager HA pairs, retries and
repeat-interval re-sends of one incident add nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..alerts import Alert, Source, parse_payload
from ..audit import AuditLog
from ..exceptions import RejectedError, ValidationError, VerisError
from ..guards import Guards, incident_key
from ..inventory import Inventory
from ..store import QueueStatus, StateStore
from ..targeting import resolve_target

Verdict = Literal["queued", "duplicate", "full", "refused"]


class Incident(BaseModel):
    """One firing alert, ready for the queue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str  # the queue's dedupe key
    only: str  # guards.incident_key of the alert: what the run acts on
    alert: Alert
    host: str
    payload: bytes


class Refused(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alert: str | None
    fingerprint: str | None
    reason: str
    kind: Literal["invalid", "unknown_host"]


class Resolved(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alert: Alert
    host: str | None  # None: not a host of the inventory (nothing of ours waits on it)


class Intake(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Source
    alerts: int
    incidents: tuple[Incident, ...]
    refused: tuple[Refused, ...]
    resolved: tuple[Resolved, ...]


def queue_key(alert: Alert, received: datetime, window_seconds: int) -> str:
    """The dedupe key. An alert without a start time (generic, some Sentinel sends) would
    otherwise be one incident forever: its key holds the dedupe window it arrived in."""
    key = incident_key(alert)
    if alert.starts_at is None:
        key += f"|window={int(received.timestamp()) // window_seconds}"
    return key


def _single_payloads(raw: bytes) -> list[tuple[int, bytes]] | None:
    """A webhook's alerts, each in a copy of the envelope of its own; None if not a webhook."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("alerts"), list):
        return None
    out = []
    for index, item in enumerate(data["alerts"]):
        one = {**data, "alerts": [item]}
        if isinstance(item, dict) and item.get("status") in ("firing", "resolved"):
            one["status"] = item["status"]
        out.append((index, json.dumps(one, separators=(",", ":")).encode()))
    return out


def split(raw: bytes, inventory: Inventory, *, received: datetime, window_seconds: int) -> Intake:
    """Validate a payload and split it into incidents. RejectedError when nothing in it is
    usable: not JSON, an unknown shape, or (webhooks) every alert invalid.

    One invalid alert does not sink the rest of an Alertmanager group: it is refused on its
    own, since a 4xx answer would make Alertmanager drop the whole group for good.
    """
    problem: ValidationError | None = None
    try:
        # The byte, duplicate-key and constant checks, and every value, in one go.
        parts = [(raw, parse_payload(raw))]
    except ValidationError as exc:
        problem = exc  # the JSON is sound; one of its values is not
        parts = []
    refused: list[Refused] = []
    singles = _single_payloads(raw)
    if singles is not None:  # a webhook: each alert in an envelope of its own
        parts = []
        for index, body in singles:
            try:
                parts.append((body, parse_payload(body)))
            except RejectedError as exc:
                refused.append(_refused(None, None, f"alerts[{index}]: {exc.message}"))
    if not parts:
        assert problem is not None
        raise problem
    incidents: list[Incident] = []
    resolved: list[Resolved] = []
    seen: set[str] = set()
    for body, one in parts:
        for alert in one.resolved:
            resolved.append(Resolved(alert=alert, host=_host_or_none(alert, inventory)))
        for alert in one.firing:
            try:
                host = resolve_target(alert, inventory).host
            except VerisError as exc:
                refused.append(_refused(alert.name, alert.fingerprint, exc.message, "unknown_host"))
                continue
            key = queue_key(alert, received, window_seconds)
            if key in seen:
                continue  # the same incident twice in one payload
            seen.add(key)
            incidents.append(
                Incident(key=key, only=incident_key(alert), alert=alert, host=host, payload=body)
            )
    return Intake(
        source=parts[0][1].source,
        alerts=len(singles) if singles is not None else 1,
        incidents=tuple(incidents),
        refused=tuple(refused),
        resolved=tuple(resolved),
    )


def _refused(
    name: str | None,
    fingerprint: str | None,
    reason: str,
    kind: Literal["invalid", "unknown_host"] = "invalid",
) -> Refused:
    return Refused(alert=name, fingerprint=fingerprint, reason=reason, kind=kind)


def _host_or_none(alert: Alert, inventory: Inventory) -> str | None:
    try:
        return resolve_target(alert, inventory).host
    except VerisError:
        return None


# -- the queue side: runs on serve's one database thread -------------------------------------


class Accepted(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    verdicts: tuple[tuple[str, Verdict], ...]  # (incident key, verdict)
    cancelled: tuple[int, ...]  # queue ids a resolved alert made unnecessary
    approvals_closed: tuple[str, ...]

    @property
    def full(self) -> bool:
        return any(v == "full" for _, v in self.verdicts)

    def count(self, verdict: Verdict) -> int:
        return sum(v == verdict for _, v in self.verdicts)


_ACTIVE: tuple[QueueStatus, ...] = ("queued", "running")


def _active_duplicate(store: StateStore, incident: Incident) -> bool:
    """An undated alert is a duplicate while one of its own is still queued or running."""
    base = incident.only + "|window="
    return any(
        e.fingerprint == incident.alert.fingerprint and e.incident.startswith(base)
        for status in _ACTIVE
        for e in store.queue_entries(status)
    )


def accept(
    store: StateStore,
    guards: Guards,
    audit: AuditLog,
    intake: Intake,
    *,
    request_id: str,
    limit: int,
) -> Accepted:
    """Resolved alerts first (cancel queued work, close approvals), then queue the incidents.

    Every queued row is committed before this returns: an answered 2xx is never lost.
    """
    cancelled: list[int] = []
    closed: list[str] = []
    for done in intake.resolved:
        ids = store.cancel_queued(done.alert.fingerprint)
        shut = guards.close_approvals_for(done.alert, done.host, request_id) if done.host else []
        cancelled += ids
        closed += shut
        audit.append(
            "serve.resolved",
            {"alert": done.alert.name, "fingerprint": done.alert.fingerprint,
             "host": done.host, "cancelled": ids, "approvals_closed": shut},
            request_id,
        )  # fmt: skip
    verdicts: list[tuple[str, Verdict]] = []
    for incident in intake.incidents:
        if incident.alert.starts_at is None and _active_duplicate(store, incident):
            verdicts.append((incident.key, "duplicate"))
            continue
        verdict = store.enqueue(
            incident.key, incident.alert.fingerprint, incident.host, incident.payload, limit=limit
        )
        verdicts.append((incident.key, verdict))
    for refused in intake.refused:
        verdicts.append((refused.alert or "-", "refused"))
    if intake.incidents or intake.refused:
        audit.append(
            "serve.accepted",
            {
                "source": intake.source,
                "queued": [k for k, v in verdicts if v == "queued"],
                "duplicates": [k for k, v in verdicts if v == "duplicate"],
                "full": [k for k, v in verdicts if v == "full"],
                "refused": [r.model_dump(mode="json") for r in intake.refused],
            },
            request_id,
        )
    return Accepted(
        verdicts=tuple(verdicts), cancelled=tuple(cancelled), approvals_closed=tuple(closed)
    )


def queued_only(payload: bytes) -> Sequence[str]:
    """The incident keys a queued payload acts on (its one firing alert)."""
    return [incident_key(a) for a in parse_payload(payload).firing]
