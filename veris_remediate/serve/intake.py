"""One posted payload → incidents to queue, alerts refused, alerts resolved; then the queue.

Each firing alert becomes one queue row holding a payload with that alert alone, so a
run (and a later ``approve``/``rollback`` of it, which re-read the saved payload) sees
exactly the incident it was queued for. The row's key is the incident key
(``guards.incident_key``: name, fingerprint, start): Alertmanager HA pairs, retries and
repeat-interval re-sends of one incident add nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..alerts import MAX_PAYLOAD_BYTES, Alert, AlertBatch, Source, parse_payload
from ..audit import AuditLog
from ..exceptions import RejectedError, ValidationError, VerisError
from ..guards import Guards, incident_key
from ..inventory import Inventory
from ..store import QueueRow, StateStore
from ..targeting import TARGET_LABELS, resolve_target

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


def _single_payloads(raw: bytes) -> list[tuple[int, bytes, Any]] | None:
    """A webhook's alerts, each in a copy of the envelope of its own (with the alert's
    status); None if not a webhook."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("alerts"), list):
        return None
    out = []
    for index, item in enumerate(data["alerts"]):
        one = {**data, "alerts": [item]}
        status = item.get("status") if isinstance(item, dict) else None
        if status in ("firing", "resolved"):
            one["status"] = status
        out.append((index, json.dumps(one, separators=(",", ":")).encode(), status))
    return out


def _alone(whole: AlertBatch, singles: list[tuple[int, bytes, Any]]) -> list[AlertBatch]:
    """Each alert of a webhook that parsed whole, as the batch its own envelope parses to
    (an alert's parse depends only on the alert and the envelope's version): one parse
    of the payload, not one more per alert."""
    firing, resolved = iter(whole.firing), iter(whole.resolved)
    out = []
    for _, _, status in singles:
        alert = next(firing) if status == "firing" else next(resolved)
        out.append(
            AlertBatch(
                source=whole.source,
                group_key=whole.group_key,
                firing=(alert,) if status == "firing" else (),
                resolved=(alert,) if status == "resolved" else (),
            )
        )
    return out


def split(raw: bytes, inventory: Inventory, *, received: datetime, window_seconds: int) -> Intake:
    """Validate a payload and split it into incidents. RejectedError when nothing in it is
    usable: not JSON, an unknown shape, or (webhooks) every alert invalid.

    One invalid alert does not sink the rest of an Alertmanager group: it is refused on its
    own, since a 4xx answer would make Alertmanager drop the whole group for good.
    """
    problem: ValidationError | None = None
    whole: AlertBatch | None = None
    try:
        # The byte, duplicate-key and constant checks, and every value, in one go.
        whole = parse_payload(raw)
        parts = [(raw, whole)]
    except ValidationError as exc:
        problem = exc  # the JSON is sound; one of its values is not
        parts = []
    refused: list[Refused] = []
    singles = _single_payloads(raw)
    if singles is not None:  # a webhook: each alert in an envelope of its own
        parts = []
        alone = _alone(whole, singles) if whole is not None else None
        for index, body, _ in singles:
            if alone is not None and len(body) <= MAX_PAYLOAD_BYTES:
                parts.append((body, alone[index]))
                continue
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
                host = _host(alert, inventory)
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
        return _host(alert, inventory)
    except VerisError:
        return None


class _Hosts:
    """The host each set of targeting labels resolved to, for the last inventory seen:
    serve reads its inventory once, and the alerts of one host carry the same labels."""

    LIMIT = 4096

    def __init__(self) -> None:
        self.inventory: Inventory | None = None
        self.hosts: dict[tuple[tuple[str, str], ...], str] = {}


_HOSTS = _Hosts()


def _host(alert: Alert, inventory: Inventory) -> str:
    """``resolve_target(alert, inventory).host``, remembered (it depends on the alert's
    targeting labels and the inventory alone); TargetError as it raises."""
    cache = _HOSTS
    if cache.inventory is not inventory:  # held, so its id cannot be another's
        cache.inventory, cache.hosts = inventory, {}
    key = tuple((label, alert.labels[label]) for label in TARGET_LABELS if label in alert.labels)
    host = cache.hosts.get(key) if key else None
    if host is None:
        host = resolve_target(alert, inventory).host
        if len(cache.hosts) >= _Hosts.LIMIT:
            cache.hosts.clear()
        if key:
            cache.hosts[key] = host
    return host


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


class Posted(BaseModel):
    """One request's validated payload, waiting for its turn on serve's database thread."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intake: Intake
    request_id: str


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
    [accepted] = accept_many(
        store, guards, audit, [Posted(intake=intake, request_id=request_id)], limit=limit
    )
    return accepted


def accept_many(
    store: StateStore,
    guards: Guards,
    audit: AuditLog,
    posted: Sequence[Posted],
    *,
    limit: int,
) -> list[Accepted]:
    """``accept`` for several requests at once, in the order they came: a group commit.

    Their incidents go into the queue in one transaction and their audit records into the
    log with one fsync, so the answers cost one commit, not one each. The outcome is the
    one accepting them one after the other would give (a request sees the rows queued by
    those before it; a resolved alert cancels what an earlier request queued), and every
    row and record is on disk before this returns. A request with resolved alerts ends
    the group before it: its cancellations and approvals run as ``accept`` ran them.
    """
    results: list[Accepted | None] = [None] * len(posted)
    group: list[int] = []  # indexes of requests whose incidents still wait to be queued
    resolving: dict[int, tuple[tuple[int, ...], tuple[str, ...]]] = {}

    def flush() -> None:
        rows = [
            QueueRow(
                incident=i.key,
                fingerprint=i.alert.fingerprint,
                host=i.host,
                payload=i.payload,
                active=i.only + "|window=" if i.alert.starts_at is None else None,
            )
            for n in group
            for i in posted[n].intake.incidents
        ]
        said = iter(store.enqueue_many(rows, limit=limit))
        records: list[tuple[str, Mapping[str, Any], str | None]] = []
        for n in group:
            intake = posted[n].intake
            verdicts: list[tuple[str, Verdict]] = [(i.key, next(said)) for i in intake.incidents]
            verdicts += [(r.alert or "-", "refused") for r in intake.refused]
            if intake.incidents or intake.refused:
                records.append(("serve.accepted", _accepted_record(intake, verdicts),
                                posted[n].request_id))  # fmt: skip
            cancelled, closed = resolving.pop(n, ((), ()))
            results[n] = Accepted(
                verdicts=tuple(verdicts), cancelled=cancelled, approvals_closed=closed
            )
        audit.append_many(records)
        group.clear()

    for n, one in enumerate(posted):
        if one.intake.resolved:
            flush()  # what came before is queued (and audited) before it is cancelled
            resolving[n] = _resolve(store, guards, audit, one.intake, one.request_id)
        group.append(n)
    flush()
    return [r for r in results if r is not None]


def _resolve(
    store: StateStore, guards: Guards, audit: AuditLog, intake: Intake, request_id: str
) -> tuple[tuple[int, ...], tuple[str, ...]]:
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
    return tuple(cancelled), tuple(closed)


def _accepted_record(intake: Intake, verdicts: Sequence[tuple[str, Verdict]]) -> dict[str, Any]:
    return {
        "source": intake.source,
        "queued": [k for k, v in verdicts if v == "queued"],
        "duplicates": [k for k, v in verdicts if v == "duplicate"],
        "full": [k for k, v in verdicts if v == "full"],
        "refused": [r.model_dump(mode="json") for r in intake.refused],
    }


def queued_only(payload: bytes) -> Sequence[str]:
    """The incident keys a queued payload acts on (its one firing alert)."""
    return [incident_key(a) for a in parse_payload(payload).firing]
