"""The guards around one remediation, over the state store: host lease, brake latch,
restart-storm breaker admission and accounting, and pending approvals.

``pipeline`` calls these at fixed points of the loop; each guard's default and the reason
for it are in docs/SAFETY.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta

from . import breaker
from .alerts import Alert
from .audit import AuditLog
from .breaker import BreakerVerdict
from .report import PreviewChange
from .settings import Settings
from .store import Approval, BrakeState, StateStore, now

# Outcomes of an applied fix that count towards the brake latch and the breaker.
BAD_OUTCOMES = ("failed", "rolled_back")


class HostBusy(Exception):
    """Another process holds the host's lease: defer, never run in parallel."""

    def __init__(self, host: str, holder: str, run_id: str) -> None:
        super().__init__(host)
        self.host, self.holder, self.run_id = host, holder, run_id

    @property
    def reason(self) -> str:
        return (
            f"another remediation ({self.run_id}, {self.holder}) holds {self.host}; "
            "deferred, not run in parallel"
        )


def incident_key(alert: Alert) -> str:
    """One firing of one alert: the same incident delivered twice has the same key."""
    started = alert.starts_at.isoformat() if alert.starts_at else "-"
    return f"{alert.name}|{alert.fingerprint}|{started}"


def preview_digest(preview: Sequence[PreviewChange]) -> str:
    """What an approval approves: the predicted changes, task by task, with their diffs."""
    canonical = json.dumps(
        [[c.task, c.action, c.diff] for c in preview], separators=(",", ":"), sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class Guards:
    def __init__(self, store: StateStore, settings: Settings, audit: AuditLog) -> None:
        self.store = store
        self.settings = settings
        self.audit = audit

    # -- brake -----------------------------------------------------------------------

    def brake(self) -> BrakeState | None:
        return self.store.brake()

    def latch_if_due(self, run_id: str) -> BrakeState | None:
        """Engage the brake by itself after N bad outcomes in the window (any host, any fix)."""
        window = timedelta(minutes=self.settings.brake_latch_minutes)
        bad = [e for e in self.store.history(since=now() - window) if e.outcome in BAD_OUTCOMES]
        if len(bad) < self.settings.brake_latch_failures:
            return None
        listed = ", ".join(f"{e.fix} on {e.host} {e.outcome}" for e in bad[-5:])
        reason = (
            f"{len(bad)} remediations failed or were rolled back within "
            f"{self.settings.brake_latch_minutes} min ({listed})"
        )
        if self.store.engage_brake(reason, by="veris-remediate", source="latch"):
            self.audit.append("brake.latched", {"reason": reason}, run_id)
        return self.store.brake()

    # -- host lease --------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, host: str, run_id: str) -> Iterator[None]:
        """Hold ``host`` for this remediation, renewed while held; reclaimable if we die."""
        ttl = self.settings.lease_ttl_seconds
        taken = self.store.acquire_lease(host, run_id, ttl)
        if taken is None:
            held = self.store.lease(host)
            raise HostBusy(host, held.owner if held else "?", held.run_id if held else "?")
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl / 3):
                with contextlib.suppress(Exception):  # a missed renewal only shortens it
                    self.store.renew_lease(host, ttl, taken.owner)

        beat = threading.Thread(target=renew, name=f"lease-{host}", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join(timeout=5)
            self.store.release_lease(host, taken.owner)

    # -- breaker -----------------------------------------------------------------------

    def admit(self, host: str, fix: str, alert: Alert, run_id: str) -> BreakerVerdict:
        """Count a re-fire against the fix, then say whether it may be applied now."""
        at = now()
        row = self.store.breaker(host, fix)
        noted = breaker.note_alert(row, incident_key(alert), self.settings, at)
        if noted != row:
            self.store.put_breaker(noted)
            if noted.state == "open" and row.state != "open":
                self.audit.append(
                    "breaker.opened", {"host": host, "fix": fix, "reason": noted.reason}, run_id
                )
        return breaker.check(noted, self.settings, at)

    def account(
        self, host: str, fix: str, outcome: str, alert: Alert, run_id: str, *, trial: bool
    ) -> None:
        """After an applied fix: history, breaker, and maybe the brake latch."""
        self.store.add_history(host, fix, outcome, run_id=run_id, alert=alert.name)
        row = self.store.breaker(host, fix)
        after = breaker.record(row, outcome, incident_key(alert), self.settings, now(), trial=trial)
        self.store.put_breaker(after)
        if after.state != row.state:
            self.audit.append(
                f"breaker.{after.state}",
                {"host": host, "fix": fix, "reason": after.reason or outcome},
                run_id,
            )
        if outcome in BAD_OUTCOMES:
            self.latch_if_due(run_id)

    # -- approvals ---------------------------------------------------------------------

    def request_approval(
        self,
        *,
        run_id: str,
        slot: str,
        host: str,
        fix: str,
        alert: Alert,
        reasons: Sequence[str],
        preview: Sequence[PreviewChange],
    ) -> Approval:
        created = now()
        approval = Approval(
            id=run_id if slot.startswith("0-") else f"{run_id}.{slot.split('-', 1)[0]}",
            run_id=run_id,
            slot=slot,
            host=host,
            fix=fix,
            alert=alert.name,
            state="pending",
            reasons=tuple(reasons),
            preview=tuple(c.model_dump(mode="json") for c in preview),
            digest=preview_digest(preview),
            created=created,
            expires=created + timedelta(hours=self.settings.approval_ttl_hours),
        )
        self.store.add_approval(approval)
        self.audit.append(
            "approval.pending",
            {"id": approval.id, "host": host, "fix": fix, "digest": approval.digest},
            run_id,
        )
        return approval

    def close_approvals_for(self, alert: Alert, host: str, run_id: str) -> list[str]:
        """A resolved alert closes what still waits for a human about it on that host."""
        closed = []
        for pending in self.store.approvals("pending"):
            if pending.alert != alert.name or pending.host != host:
                continue
            if self.store.decide_approval(pending.id, "resolved", by="alert resolved"):
                closed.append(pending.id)
                self.audit.append("approval.closed", {"id": pending.id, "host": host}, run_id)
        return closed
