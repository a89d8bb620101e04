"""Bounded workers that empty the durable queue: claim, remediate in a thread, finish.

The queue hands out one incident per host at a time (``StateStore.claim``), the host lease
keeps other processes off a host while a run holds it, and each worker has a Remediator
(and so a state-store connection) of its own. Serve's event loop talks to the store
through one thread (``Database``), never from the loop itself.

Recovery belongs to the pool, not to each run: on start it re-queues work a dead process
was running and finishes remediations it left between snapshot and outcome
(``Remediator.recover``); later, orphans some other process leaves are recovered while no
run of this process is in flight. The pool renews a heartbeat on every row it holds, until
its last run ends, so a receiver on another machine can tell a claim of a dead one
(``serve_claim_ttl_seconds``); finished rows older than the retention are pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from ..alerts import MAX_ALERTS, MAX_PAYLOAD_BYTES, Source, parse_payload
from ..audit import AuditLog
from ..exceptions import VerisError
from ..fleet import fleet_ready
from ..guards import Guards
from ..inventory import Inventory
from ..metrics import Metrics
from ..notify import Notifier
from ..pipeline import Remediator
from ..report import RunReport, build_report, run_level_phases
from ..settings import Settings, default_state_dir
from ..store import BrakeState, Lease, QueueEntry, StateStore, now, owner_alive, process_owner
from .intake import queued_only

logger = logging.getLogger("veris_remediate.serve")

P = ParamSpec("P")
T = TypeVar("T")

POLL_SECONDS = 2.0  # new rows from other receivers, held jobs coming due, the brake
RECOVER_EVERY_SECONDS = 30.0
ORPHAN_RETRY_SECONDS = 600.0  # an orphan recovery skipped (its host busy) is tried again
MAX_TRIES = 3  # runs that raise (state store or audit log unavailable) before "failed"
CANCEL_GRACE_SECONDS = 90.0  # after SIGTERM's drain: a cancelled apply's rollback
# Outcomes after which an interrupted incident is done; any other is run again.
FINAL_WHEN_INTERRUPTED = frozenset({"resolved", "not_needed"})


class ServeRemediator(Remediator):
    """A worker's Remediator. Serve recovers killed runs itself (``WorkerPool``), at a
    moment no run of its own is in flight: a run must not recover another of the same
    process, which its host lease would not keep out."""

    def recover(self) -> list[RunReport]:
        return []


class Database:
    """The state store and audit log of serve's event loop, used from one thread only."""

    def __init__(self, settings: Settings) -> None:
        self.store = StateStore.from_settings(settings)
        self.audit = AuditLog.from_settings(settings)
        self.guards = Guards(self.store, settings, self.audit)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="veris-serve-db")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.store.close()


@dataclass
class _Job:
    entry: QueueEntry
    tries: int = 0
    deferrals: int = 0
    not_before: float = 0.0  # loop time
    reason: str = ""
    # Rows claimed with ``entry`` (``StateStore.claim_fleet``): one payload, one run.
    companions: tuple[QueueEntry, ...] = ()
    settled: set[int] = field(default_factory=set)  # rows of it finished, re-queued or held

    @property
    def entries(self) -> tuple[QueueEntry, ...]:
        return (self.entry, *self.companions)


@dataclass
class PoolState:
    """What /readyz and the logs say about the pool."""

    started: bool = False
    recovering: bool = False
    stopping: bool = False
    brake: BrakeState | None = None
    held: int = 0
    running: int = 0
    finished: int = 0


class WorkerPool:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        inventory: Inventory,
        *,
        metrics: Metrics,
        notifier: Notifier,
        make_remediator: Callable[[], Remediator] | None = None,
        recoverer: Remediator | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.notifier = notifier
        make = make_remediator or (lambda: ServeRemediator(inventory, settings))
        self._idle: list[Remediator] = [make() for _ in range(settings.serve_workers)]
        self._recoverer = recoverer or Remediator(inventory, settings)
        # Fleets need the local runner (fleet.fleet_ready): on an execution node the rows
        # of one payload would run one after another in one worker, not side by side.
        self._fleet = settings.serve_fleet and all(fleet_ready(r) for r in self._idle)
        self._hosts = frozenset(inventory.hosts)
        self._threads = ThreadPoolExecutor(
            settings.serve_workers + 1, thread_name_prefix="veris-serve-run"
        )
        self._running: dict[int, tuple[_Job, Remediator, asyncio.Task[None]]] = {}
        self._serial = itertools.count()  # the keys of ``_running``
        self._held: list[_Job] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._next_recovery_check = 0.0
        self._recovery_due = False
        self._orphans_tried: set[tuple[str, str]] = set()
        self._orphans_forgotten_at = 0.0
        self._beat: asyncio.Task[None] | None = None
        self.state = PoolState()

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Recover, then dispatch; both in the background (intake is up meanwhile)."""
        self._tasks.append(asyncio.create_task(self._boot(), name="veris-serve-dispatch"))
        self._beat = asyncio.create_task(self._heartbeat(), name="veris-serve-heartbeat")

    def wake(self) -> None:
        self._wake.set()

    async def _boot(self) -> None:
        self.state.recovering = True
        try:
            await self._recover(first=True)
        except VerisError as exc:
            logger.error("recovery on start: %s", exc.message)
        except Exception:
            logger.exception("recovery on start: unexpected error")
        finally:
            self.state.recovering = False
        self.state.started = True
        await self._dispatch()

    async def stop(self, drain_seconds: float) -> bool:
        """Stop claiming; re-queue held work; let runs in flight finish for up to
        ``drain_seconds``, then cancel their fix runs (rolled back, then re-queued).
        True when nothing is left running."""
        self.state.stopping = True
        self.wake()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for job in self._held:
            await self.db.run(self.db.store.requeue, job.entry.id, "serve stopped before its turn")
        self._held.clear()
        # A claim the cancelled dispatcher made but never started: back to the queue too.
        await self.db.run(_requeue_own, self.db.store, self._running_ids())
        pending = [task for _, _, task in self._running.values()]
        if pending:
            logger.info("waiting up to %ss for %d run(s) in flight", drain_seconds, len(pending))
            await asyncio.wait(pending, timeout=drain_seconds)
        if self._running:
            self.interrupt()
            await asyncio.wait(
                [task for _, _, task in self._running.values()], timeout=CANCEL_GRACE_SECONDS
            )
        left = len(self._running)
        if self._beat is not None:  # renewed until now: nobody took over a run still going
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._beat
        self._threads.shutdown(wait=False, cancel_futures=True)
        if left:
            logger.error("%d run(s) still in flight; the next start recovers them", left)
        return left == 0

    def _running_ids(self) -> set[int]:
        return {e.id for job, _, _ in self._running.values() for e in job.entries}

    def interrupt(self) -> None:
        """Cancel the fix runs in flight (each is rolled back and its incident re-queued)."""
        for job, remediator, _ in self._running.values():
            if not remediator.terminating:
                logger.info("incident #%d: cancelling its fix run (shutdown)", job.entry.id)
            remediator.terminating = True

    async def _heartbeat(self) -> None:
        """Renew this process's claims a few times per claim TTL, whatever else it does."""
        every = max(self.settings.serve_claim_ttl_seconds / 4, 1.0)
        while True:
            try:
                await self.db.run(self.db.store.heartbeat_claims)
            except VerisError as exc:
                logger.error("claim heartbeat: %s", exc.message)
            except Exception:
                logger.exception("claim heartbeat: unexpected error; going on")
            await asyncio.sleep(every)

    # -- dispatch -------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.state.stopping:
            try:
                await self._observe()
                await self._maybe_recover()
                await self._fill()
            except VerisError as exc:  # the state store is down: keep trying, say so
                logger.error("dispatch: %s", exc.message)
            except Exception:
                logger.exception("dispatch: unexpected error; going on")
            due = min((j.not_before for j in self._held), default=loop.time() + POLL_SECONDS)
            timeout = min(max(due - loop.time(), 0.05), POLL_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    async def _observe(self) -> None:
        """The brake: while engaged, nothing new is claimed (the queue holds, and runs on
        release: a run now would only be blocked, and the incident never retried)."""
        brake = await self.db.run(self.db.store.brake)
        if (brake is None) != (self.state.brake is None):
            if brake is not None:
                logger.warning("emergency brake %s: the queue holds", brake.describe())
            else:
                logger.info("emergency brake released: the queue runs again")
        self.state.brake = brake
        self.metrics.brake_observed(brake is not None)
        self.notifier.notify_brake(brake)

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        if self.state.brake is not None or self._recovery_due:
            return
        for job in sorted(self._held, key=lambda j: j.not_before):
            if not self._idle:
                return
            if job.not_before <= loop.time():
                self._held.remove(job)
                self._launch(job)
        while self._idle and not self.state.stopping:
            if self._fleet:
                claimed = await self.db.run(
                    self.db.store.claim_fleet, self.settings.max_hosts, joins=joins
                )
                if not claimed:
                    return
                self._launch(_Job(claimed[0], companions=tuple(claimed[1:])))
                continue
            entry = await self.db.run(self.db.store.claim)
            if entry is None:
                return
            self._launch(_Job(entry))

    def _launch(self, job: _Job) -> None:
        remediator = self._idle.pop()
        key = next(self._serial)
        task = asyncio.create_task(self._run(job, remediator, key), name=f"incident-{job.entry.id}")
        self._running[key] = (job, remediator, task)
        self._sync_counts()

    def _sync_counts(self) -> None:
        self.state.held = len(self._held)
        self.state.running = len(self._running)

    def _hold(self, job: _Job, seconds: float, reason: str) -> None:
        """Keep the claim (so the host's later incidents wait too) and try again later."""
        job.not_before = asyncio.get_running_loop().time() + seconds
        job.reason = reason
        self._held.append(job)

    # -- one incident ---------------------------------------------------------------------

    async def _run(self, job: _Job, remediator: Remediator, key: int) -> None:
        try:
            await self._attempt(job, remediator)
        except Exception as exc:  # the state store or audit log failed around the run
            with contextlib.suppress(Exception):
                await self._raised(job, exc)
        finally:
            remediator.terminating = False
            self._running.pop(key, None)
            self._idle.append(remediator)
            self._sync_counts()
            self.wake()

    async def _attempt(self, job: _Job, remediator: Remediator) -> None:
        if job.companions and not await self._part_held(job):
            return
        entry = job.entry
        if not job.companions:
            holder = await self.db.run(_held_elsewhere, self.db.store, entry.host)
            if holder is not None:
                self._defer(job, f"{entry.host} is held by {holder.owner} ({holder.run_id})")
                return
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if not job.companions:
            logger.info("incident #%d: remediating %s on %s", entry.id, _alert(entry), entry.host)
            report = await loop.run_in_executor(self._threads, _handle, remediator, entry)
            await self._finished(job, remediator, report, time.monotonic() - started)
            return
        logger.info(
            "incidents %s: remediating %s on %s, as one fleet",
            ", ".join(f"#{e.id}" for e in job.entries), _alert(entry),
            ", ".join(str(e.host) for e in job.entries),
        )  # fmt: skip
        report = await loop.run_in_executor(self._threads, _handle_fleet, remediator, job.entries)
        await self._fleet_finished(job, remediator, report, time.monotonic() - started)

    async def _part_held(self, job: _Job) -> bool:
        """Rows of a fleet whose host another live process holds wait apart, each deferred
        on its own; the rest run together. False when none is left to run."""
        free: list[QueueEntry] = []
        for entry in job.entries:
            holder = await self.db.run(_held_elsewhere, self.db.store, entry.host)
            if holder is None:
                free.append(entry)
                continue
            apart = _Job(entry, tries=job.tries)
            self._defer(apart, f"{entry.host} is held by {holder.owner} ({holder.run_id})")
            job.settled.add(entry.id)
        if not free:
            return False
        job.entry, job.companions, job.settled = free[0], tuple(free[1:]), set()
        return True

    def _defer(self, job: _Job, reason: str) -> None:
        job.deferrals += 1
        delay = min(5.0 * 2 ** (job.deferrals - 1), 60.0)
        if job.deferrals == 1 or job.deferrals % 10 == 0:
            logger.info("incident #%d deferred (%s); again in %.0fs", job.entry.id, reason, delay)
        self._hold(job, delay, reason)

    async def _fleet_finished(
        self, job: _Job, remediator: Remediator, report: RunReport, seconds: float
    ) -> None:
        """One run of several rows: each row is finished (or deferred, or re-queued) by its
        own host's result, as if it had run alone; the run is counted once."""
        self.metrics.run_finished(report)
        for entry in job.entries:
            part = _Job(
                entry, tries=job.tries, deferrals=job.deferrals if entry is job.entry else 0
            )
            await self._settle(part, remediator, row_report(report, entry), seconds)
            job.settled.add(entry.id)

    async def _finished(
        self, job: _Job, remediator: Remediator, report: RunReport, seconds: float
    ) -> None:
        self.metrics.run_finished(report)
        await self._settle(job, remediator, report, seconds)

    async def _settle(
        self, job: _Job, remediator: Remediator, report: RunReport, seconds: float
    ) -> None:
        """Finish one row by its report: deferred (held, or re-queued when stopping),
        interrupted by shutdown (re-queued), or done with its outcome."""
        entry = job.entry
        store = self.db.store
        if report.outcome == "deferred" and not self.state.stopping:
            self._defer(job, "; ".join(report.reasons)[:200] or "host busy")
            return
        if report.outcome == "deferred":
            await self.db.run(store.requeue, entry.id, "deferred, then serve stopped")
            return
        if remediator.terminating and report.outcome not in FINAL_WHEN_INTERRUPTED:
            await self.db.run(store.requeue, entry.id, f"interrupted by shutdown ({report.run_id})")
            await self._audit("serve.requeued", entry, report.run_id, outcome=report.outcome)
            logger.info(
                "incident #%d: interrupted (run %s, %s); queued again for the next start",
                entry.id, report.run_id, report.outcome,
            )  # fmt: skip
            return
        await self.db.run(
            store.finish, entry.id, "done", run_id=report.run_id, outcome=report.outcome
        )
        await self._audit("serve.finished", entry, report.run_id, outcome=report.outcome)
        self.notifier.notify_report(report)
        self.state.finished += 1
        fix = report.remediation or "no fix"
        logger.info(
            "incident #%d: %s (%s, decision %s, confidence %.2f) in %.1fs; report: %s",
            entry.id, report.outcome, fix, report.decision, report.confidence, seconds,
            self.report_command(report.run_id),
        )  # fmt: skip

    def report_command(self, run_id: str) -> str:
        """The command that shows a run's report, exactly as it works when copied."""
        words = ["veris-remediate"]
        if self.settings.state_dir != default_state_dir():
            words += ["--state-dir", str(self.settings.state_dir)]
        return shlex.join([*words, "report", run_id])

    async def _raised(self, job: _Job, exc: Exception) -> None:
        left = [e for e in job.entries if e.id not in job.settled]
        if not left:  # a fleet's rows were all settled before it raised
            return
        job.entry, job.companions, job.settled = left[0], tuple(left[1:]), set()
        entry = job.entry
        job.tries += 1
        message = exc.message if isinstance(exc, VerisError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, VerisError):
            logger.exception("incident #%d: unexpected error", entry.id)
        if job.tries < MAX_TRIES and not self.state.stopping:
            delay = 10.0 * job.tries
            logger.warning(
                "incident #%d: %s; trying again in %.0fs", entry.id, message[:300], delay
            )
            self._hold(job, delay, message)
            return
        if self.state.stopping:
            for one in job.entries:
                await self.db.run(self.db.store.requeue, one.id, message[:500])
            return
        for one in job.entries:
            await self.db.run(self.db.store.finish, one.id, "failed", error=message[:2000])
            await self._audit("serve.failed", one, None, error=message[:500])
            logger.error("incident #%d failed after %d tries: %s", one.id, job.tries, message[:300])

    async def _audit(self, kind: str, entry: QueueEntry, run_id: str | None, **data: Any) -> None:
        record = {"queue_id": entry.id, "incident": entry.incident, "host": entry.host, **data}
        try:
            await self.db.run(self.db.audit.append, kind, record, run_id)
        except VerisError as exc:
            logger.error("audit log: %s", exc.message)

    # -- recovery -------------------------------------------------------------------------

    async def _recover(self, *, first: bool) -> None:
        store = self.db.store
        requeued = await self.db.run(store.recover_queue, self.settings.serve_claim_ttl_seconds)
        if first:  # our own name on a running row (a restarted container's pid 1): not running
            mine = await self.db.run(_requeue_own, store, set())
            requeued += mine
        if requeued:
            logger.info("re-queued %d incident(s) a stopped process was running", requeued)
        loop = asyncio.get_running_loop()
        try:
            reports = await loop.run_in_executor(self._threads, self._recoverer.recover)
        except VerisError as exc:
            logger.error("recovery: %s", exc.message)
            return
        for report in reports:
            self.metrics.run_finished(report)
            self.notifier.notify_report(report)
            logger.info(
                "recovered run %s on %s: %s", report.run_id, ", ".join(report.hosts), report.outcome
            )

    async def _requeue_stale(self) -> None:
        """Claims of dead receivers back to the queue; finished rows past retention out."""
        store, settings = self.db.store, self.settings
        requeued = await self.db.run(store.recover_queue, settings.serve_claim_ttl_seconds)
        if requeued:
            logger.info("re-queued %d incident(s) whose receiver stopped holding them", requeued)
            self.wake()
        retain = max(settings.serve_retention_hours * 3600, settings.serve_dedupe_window_seconds)
        pruned = await self.db.run(store.prune_queue, retain)
        if pruned:
            logger.debug("pruned %d finished queue row(s) past retention", pruned)

    async def _maybe_recover(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._recovery_due and loop.time() < self._next_recovery_check:
            return
        self._next_recovery_check = loop.time() + RECOVER_EVERY_SECONDS
        if not self._recovery_due:
            if loop.time() > self._orphans_forgotten_at:
                self._orphans_tried.clear()
                self._orphans_forgotten_at = loop.time() + ORPHAN_RETRY_SECONDS
            waiting = await self.db.run(
                _orphans_waiting, self.db.store, self._hosts, self.settings.lease_ttl_seconds
            )
            fresh = waiting - self._orphans_tried
            await self._requeue_stale()
            if not fresh:
                return
            self._orphans_tried |= fresh
            self._recovery_due = True
            logger.info("a stopped process left a remediation half-done: recovering it next")
        if self._running:
            return  # claims pause until the runs in flight end
        self.state.recovering = True
        try:
            await self._recover(first=False)
        finally:
            self.state.recovering = False
            self._recovery_due = False


# -- run in threads ------------------------------------------------------------------------


def _alert(entry: QueueEntry) -> str:
    return entry.incident.split("|", 1)[0]


def _handle(remediator: Remediator, entry: QueueEntry) -> RunReport:
    return remediator.handle(entry.payload, only=set(queued_only(entry.payload)))


# -- fleets: rows of one alert name on several hosts, run as one payload ---------------------


def _fleet_part(entry: QueueEntry) -> tuple[Source, str, str | None] | None:
    """(source, alert name, ``service`` label) of a row that can ride in a fleet payload: a
    webhook of one firing alert (as ``intake.split`` queues it); None for any other row.
    The service is part of it so that rows of one alert name about different services
    (which route to different fixes) run side by side on two workers, not one after the
    other in one fleet run."""
    try:
        data = json.loads(entry.payload)
        if not isinstance(data, dict) or isinstance(data.get("client_payload"), dict):
            return None
        items = data.get("alerts")
        if not isinstance(items, list) or len(items) != 1:
            return None
        batch = parse_payload(entry.payload)
    except (ValueError, VerisError):
        return None
    if len(batch.firing) != 1 or batch.resolved:
        return None
    alert = batch.firing[0]
    return batch.source, alert.name, alert.labels.get("service")


def joins(chosen: Sequence[QueueEntry], candidate: QueueEntry) -> bool:
    """Whether ``candidate`` may join the rows ``chosen`` (the first one's envelope) in one
    webhook payload: the same source, alert name and service, within the payload limits."""
    first, other = _fleet_part(chosen[0]), _fleet_part(candidate)
    if first is None or other is None or first != other:
        return False
    size = sum(len(e.payload) for e in chosen) + len(candidate.payload)
    return len(chosen) < MAX_ALERTS and size <= MAX_PAYLOAD_BYTES


def fleet_payload(entries: Sequence[QueueEntry]) -> tuple[bytes, set[str]]:
    """The first row's webhook envelope with every row's alert, and the incident keys the
    run acts on (each row's ``queued_only``)."""
    envelope = json.loads(entries[0].payload)
    envelope["alerts"] = [json.loads(e.payload)["alerts"][0] for e in entries]
    envelope["status"] = "firing"
    only = {key for e in entries for key in queued_only(e.payload)}
    return json.dumps(envelope, separators=(",", ":")).encode(), only


def _handle_fleet(remediator: Remediator, entries: Sequence[QueueEntry]) -> RunReport:
    payload, only = fleet_payload(entries)
    return remediator.handle(payload, only=only)


def row_report(report: RunReport, entry: QueueEntry) -> RunReport:
    """One row's share of a fleet run's report: the results about its alert (by fingerprint,
    on its host) and those about the payload as a whole; the whole report if none is."""
    results = [
        r for r in report.remediations
        if (r.fingerprint is None and r.host is None)
        or (r.fingerprint == entry.fingerprint and r.host in (entry.host, None))
    ]  # fmt: skip
    if not results:
        return report
    return build_report(
        run_id=report.run_id,
        started_at=report.started_at,
        finished_at=report.finished_at,
        source=report.source,
        check_only=report.check_only,
        results=results,
        phases=run_level_phases(report),
    )


def _held_elsewhere(store: StateStore, host: str | None) -> Lease | None:
    """The lease of another live process on ``host``: running now would only be deferred."""
    if host is None:
        return None
    lease = store.lease(host)
    if lease is None or lease.owner == process_owner() or lease.expires <= now():
        return None
    return lease if owner_alive(lease.owner) else None


def _requeue_own(store: StateStore, keep: set[int]) -> int:
    """Rows this process claimed and is not running (``keep``: the ones it is)."""
    me = process_owner()
    mine = [e for e in store.queue_entries("running") if e.owner == me and e.id not in keep]
    for entry in mine:
        store.requeue(entry.id, "requeued: its process stopped before running it")
    return len(mine)


def _orphans_waiting(
    store: StateStore, hosts: frozenset[str], lease_ttl: int
) -> set[tuple[str, str]]:
    me = process_owner()
    return {
        (e.run_id, e.slot) for e in store.orphans(lease_ttl) if e.host in hosts and e.owner != me
    }
