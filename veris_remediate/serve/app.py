"""The HTTP side of ``serve`` (aiohttp): routes, bearer auth, limits, and the process's life.

    POST /alerts   Alertmanager, Grafana, Sentinel or generic payloads (bearer token)
    GET  /metrics  Prometheus metrics (bearer token)
    GET  /healthz  the process answers
    GET  /readyz   it accepts alerts: not shutting down, state store reachable, queue not full

An accepted payload is validated, split into one queue row per firing incident and
committed before the answer (202), which takes milliseconds; remediation happens after,
in the worker pool. Payloads that arrive together are committed together (``GroupCommit``:
one transaction and one audit fsync for all of them), each answered after that commit.
Refused requests (401, 400, 408, 413) are audited, at most ``REFUSALS_AUDITED_PER_MINUTE``
a minute so a flood cannot fill the disk (the rest are counted in the next record and in
the metrics).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets
import signal
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from ..exceptions import RejectedError, VerisError
from ..inventory import Inventory
from ..metrics import Metrics, RejectReason
from ..notify import Notifier
from ..pipeline import Remediator
from ..settings import Settings
from .auth import BearerAuth, is_loopback, load_token, parse_listen
from .intake import Accepted, Intake, Posted, accept_many, split
from .worker import Database, WorkerPool

logger = logging.getLogger("veris_remediate.serve")

REFUSALS_AUDITED_PER_MINUTE = 120
KEEPALIVE_SECONDS = 30.0  # an idle connection (or one that never sends a request) is closed
PARSE_INLINE_BYTES = 65536  # larger bodies are parsed off the event loop
NOTIFY_CLOSE_SECONDS = 10.0
MAX_BATCH = 512  # requests committed together at most


_IDS = random.Random(secrets.randbits(64))  # noqa: S311 (request ids: unique, not secret)


def _request_id() -> str:
    """A request's id for the logs and the audit log: no system call on the event loop
    (every one is a wait for the GIL when the database thread holds it)."""
    return f"req-{_IDS.getrandbits(40):010x}"


def _json(
    status: int, data: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=json.dumps(dict(data)),
        status=status,
        headers=headers,
        content_type="application/json",
    )


class _RefusalBudget:
    """How many refused requests may still be audited in the current minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.window = 0
        self.used = 0
        self.suppressed = 0

    def admit(self, at: float) -> tuple[bool, int]:
        """(write an audit record?, refusals left unaudited since the last record)."""
        window = int(at // 60)
        if window != self.window:
            self.window, self.used = window, 0
        if self.used >= self.per_minute:
            self.suppressed += 1
            return False, 0
        self.used += 1
        skipped, self.suppressed = self.suppressed, 0
        return True, skipped


class GroupCommit:
    """Accepts the requests that arrive together in one go on the database thread.

    A request hands over its validated payload and waits; one writer takes everything
    waiting, queues it in one transaction and audits it with one fsync (``accept_many``),
    then answers each request. While it writes, the next requests gather for the next
    round: under load a commit serves many requests, and a lone request waits for no one.
    A request is answered only after its rows and records are on disk.
    """

    def __init__(self, db: Database, limit: int, *, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.limit = limit
        self.max_batch = max_batch
        self._waiting: list[tuple[Posted, asyncio.Future[Accepted]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def accept(self, intake: Intake, request_id: str) -> Accepted:
        """``accept`` for this request, committed together with the others waiting."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((Posted(intake=intake, request_id=request_id), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="veris-serve-intake")
        return await future

    async def _write(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            try:
                results = await self.db.run(
                    accept_many, self.db.store, self.db.guards, self.db.audit,
                    [posted for posted, _ in batch], limit=self.limit,
                )  # fmt: skip
            except Exception as exc:  # each request of the round answers for itself
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (the loop is ending): nobody is answered
                for _, future in batch:
                    future.cancel()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class Receiver:
    def __init__(
        self,
        settings: Settings,
        inventory: Inventory,
        db: Database,
        pool: WorkerPool,
        metrics: Metrics,
        *,
        auth: BearerAuth | None,
    ) -> None:
        self.settings = settings
        self.inventory = inventory
        self.db = db
        self.pool = pool
        self.metrics = metrics
        self.auth = auth
        self.draining = False
        self._budget = _RefusalBudget(REFUSALS_AUDITED_PER_MINUTE)
        self.intake = GroupCommit(db, settings.serve_queue_limit)

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.serve_max_body_bytes)
        app.router.add_post("/alerts", self.post_alerts)
        app.router.add_get("/metrics", self.get_metrics)
        app.router.add_get("/healthz", self.get_healthz)
        app.router.add_get("/readyz", self.get_readyz)
        return app

    # -- POST /alerts ---------------------------------------------------------------------

    async def post_alerts(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        rid = _request_id()
        if self.draining:
            return _json(503, {"error": "shutting down; send again"}, {"Retry-After": "5"})
        refused = await self._authorize(request, rid)
        if refused is not None:
            return refused
        limit = self.settings.serve_max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            return await self._too_large(request, rid, f"{length} bytes")
        try:
            async with asyncio.timeout(self.settings.serve_request_timeout_seconds):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await self._too_large(request, rid, "a chunked body")
        except TimeoutError:
            seconds = self.settings.serve_request_timeout_seconds
            why = f"the body did not arrive within {seconds:g}s"
            await self._refuse(request, rid, "payload", why)
            return _json(408, {"error": why})
        try:
            intake = await self._split(body)
        except RejectedError as exc:
            await self._refuse(request, rid, "payload", exc.message, body=body)
            return _json(400, {"error": exc.message})
        self.metrics.alert_received(intake.source)
        for _ in intake.refused:
            self.metrics.alert_rejected("payload")
        try:
            accepted = await self.intake.accept(intake, rid)
        except VerisError as exc:
            logger.error("%s: not accepted: %s", rid, exc.message)
            return _json(503, {"error": "state store or audit log unavailable; send again"},
                         {"Retry-After": "10"})  # fmt: skip
        for _ in range(accepted.count("duplicate")):
            self.metrics.alert_deduplicated()
        answer = _answer(rid, intake, accepted)
        _log_intake(rid, intake, accepted, time.monotonic() - started)
        if accepted.full:
            self.metrics.alert_rejected("full")
            answer["error"] = "the queue is full; send again later"
            return _json(503, answer, {"Retry-After": "30"})
        if accepted.count("queued"):
            self.pool.wake()
        return _json(202, answer)

    async def _split(self, body: bytes) -> Intake:
        received = datetime.now(UTC)
        window = self.settings.serve_dedupe_window_seconds
        if len(body) <= PARSE_INLINE_BYTES:
            return split(body, self.inventory, received=received, window_seconds=window)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: split(body, self.inventory, received=received, window_seconds=window)
        )

    async def _too_large(self, request: web.Request, rid: str, what: str) -> web.Response:
        limit = self.settings.serve_max_body_bytes
        why = f"{what}: larger than the limit of {limit} bytes"
        await self._refuse(request, rid, "size", why)
        return _json(413, {"error": why})

    async def _authorize(self, request: web.Request, rid: str) -> web.Response | None:
        if self.auth is None:
            return None
        verdict = self.auth.check(request.headers.get("Authorization"))
        if verdict == "ok":
            return None
        why = "no Authorization header" if verdict == "missing" else "credentials do not match"
        await self._refuse(request, rid, "auth", why)
        return _json(
            401,
            {"error": "a valid bearer token is required"},
            {"WWW-Authenticate": 'Bearer realm="veris-remediate"'},
        )

    async def _refuse(
        self,
        request: web.Request,
        rid: str,
        reason: RejectReason,
        detail: str,
        *,
        body: bytes | None = None,
    ) -> None:
        self.metrics.alert_rejected(reason)
        logger.warning(
            "%s %s from %s refused (%s): %s",
            request.method, request.path, request.remote, reason, detail[:200],
        )  # fmt: skip
        write, skipped = self._budget.admit(time.monotonic())
        if not write:
            return
        record: dict[str, Any] = {
            "remote": request.remote,
            "method": request.method,
            "path": request.path,
            "reason": reason,
            "detail": detail[:500],
        }
        if body is not None:
            record["bytes"] = len(body)
            record["sha256"] = hashlib.sha256(body).hexdigest()
        elif request.content_length is not None:
            record["bytes"] = request.content_length
        if skipped:
            record["unaudited_before"] = skipped
        try:
            await self.db.run(self.db.audit.append, "serve.refused", record, rid)
        except VerisError as exc:
            logger.error("audit log: %s", exc.message)

    # -- GET --------------------------------------------------------------------------------

    async def get_metrics(self, request: web.Request) -> web.StreamResponse:
        refused = await self._authorize(request, _request_id())
        if refused is not None:
            return refused
        store = self.db.store
        try:
            self.metrics.queue_observed(await self.db.run(store.queue_stats))
            self.metrics.brake_observed(await self.db.run(store.brake) is not None)
            self.metrics.breaker_observed(await self.db.run(store.breakers))
        except VerisError as exc:
            logger.error("metrics: %s", exc.message)  # render what was last observed
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def get_healthz(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"status": "ok"})

    async def get_readyz(self, request: web.Request) -> web.StreamResponse:
        reasons: list[str] = []
        state = self.pool.state
        data: dict[str, Any] = {
            "started": state.started,
            "recovering": state.recovering,
            "brake": state.brake is not None,
            "running": state.running,
        }
        if self.draining:
            reasons.append("shutting down")
        try:
            stats = await asyncio.wait_for(self.db.run(self.db.store.queue_stats), 5)
        except (VerisError, TimeoutError) as exc:
            reasons.append(f"state store: {getattr(exc, 'message', 'no answer within 5s')}")
        else:
            data["queued"] = stats.queued
            if stats.queued + stats.running >= self.settings.serve_queue_limit:
                reasons.append("the queue is full")
        data["ready"] = not reasons
        data["reasons"] = reasons
        return _json(200 if not reasons else 503, data)


def _answer(rid: str, intake: Intake, accepted: Accepted) -> dict[str, Any]:
    return {
        "request": rid,
        "source": intake.source,
        "alerts": intake.alerts,
        "queued": [k for k, v in accepted.verdicts if v == "queued"],
        "duplicates": [k for k, v in accepted.verdicts if v == "duplicate"],
        "full": [k for k, v in accepted.verdicts if v == "full"],
        "refused": [r.model_dump(mode="json") for r in intake.refused],
        "resolved": [r.alert.fingerprint for r in intake.resolved],
        "cancelled": list(accepted.cancelled),
        "approvals_closed": list(accepted.approvals_closed),
    }


def _log_intake(rid: str, intake: Intake, accepted: Accepted, seconds: float) -> None:
    """One line per incident newly queued or resolved; re-sends only counted."""
    verdict = dict(accepted.verdicts)
    for incident in intake.incidents:
        said = verdict.get(incident.key, "?")
        if said == "duplicate":
            continue
        logger.info(
            "%s: %s on %s [%s] firing (%s): %s",
            rid, incident.alert.name, incident.host, incident.alert.fingerprint[:8],
            intake.source, said,
        )  # fmt: skip
    if accepted.count("duplicate"):
        logger.info(
            "%s: %d incident(s) already queued or done (re-sent): nothing new",
            rid, accepted.count("duplicate"),
        )  # fmt: skip
    for done in intake.resolved:
        logger.info(
            "%s: %s on %s [%s] resolved",
            rid, done.alert.name, done.host or "-", done.alert.fingerprint[:8],
        )  # fmt: skip
    if accepted.cancelled or accepted.approvals_closed:
        logger.info(
            "%s: cancelled queued incident(s) %s, closed approval(s) %s",
            rid, list(accepted.cancelled) or "-", list(accepted.approvals_closed) or "-",
        )  # fmt: skip
    for refused in intake.refused:
        logger.warning("%s: refused %s: %s", rid, refused.alert or "an alert", refused.reason)
    logger.debug("%s answered in %.1f ms", rid, seconds * 1000)


# -- the process ------------------------------------------------------------------------------


def run_server(
    settings: Settings, inventory: Sequence[Path], *, insecure_no_auth: bool = False
) -> int:
    """Run ``serve`` until SIGTERM or SIGINT; 0 when every run in flight ended cleanly.

    Raises VerisError before listening: no usable token, a bad address, an unreadable
    inventory or rules file, a port in use.
    """
    host, port = parse_listen(settings.serve_listen)
    token = load_token(settings, insecure_no_auth=insecure_no_auth, host=host)
    recoverer = Remediator(list(inventory), settings)
    hosts = recoverer.inventory  # read (and checked) once: restart serve to change it
    recoverer.rules  # noqa: B018 (a broken rules file fails now, not at the first alert)
    clean = asyncio.run(_serve(settings, hosts, recoverer, token, host, port))
    return 0 if clean else 6


async def _serve(
    settings: Settings,
    inventory: Inventory,
    recoverer: Remediator,
    token: str | None,
    host: str,
    port: int,
) -> bool:
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    db = Database(settings)
    notifier = Notifier.from_settings(settings, db.audit, metrics=metrics)
    pool = WorkerPool(
        db, settings, inventory, metrics=metrics, notifier=notifier, recoverer=recoverer
    )
    receiver = Receiver(
        settings, inventory, db, pool, metrics, auth=BearerAuth(token) if token else None
    )
    runner = web.AppRunner(
        receiver.application(),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=KEEPALIVE_SECONDS,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=128)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        db.close()
        raise VerisError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        if signals == 1:
            logger.info(
                "%s: taking no new alerts; runs in flight may finish (up to %ss, %s again "
                "cancels their fixes)", name, settings.serve_drain_seconds, name,
            )  # fmt: skip
            receiver.draining = True
            stop.set()
        else:
            logger.warning("%s again: cancelling the fix runs in flight", name)
            pool.interrupt()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    auth = "bearer token" if token else "NONE (--insecure-no-auth, loopback only)"
    await db.run(
        db.audit.append,
        "serve.started",
        {"listen": f"{host}:{port}", "auth": "bearer" if token else "none",
         "workers": settings.serve_workers, "queue_limit": settings.serve_queue_limit,
         "hosts": len(inventory.hosts), "state": db.store.where},
    )  # fmt: skip
    pool.start()
    where = f"[{host}]" if ":" in host else host
    logger.info(
        "listening on http://%s:%d (POST /alerts; auth: %s; %d worker(s); queue limit %d; "
        "state %s)", where, port, auth, settings.serve_workers, settings.serve_queue_limit,
        db.store.where,
    )  # fmt: skip
    if not token and not is_loopback(host):  # load_token refuses this; never serve it open
        raise VerisError("refusing to serve without a token off loopback")
    try:
        await stop.wait()
        clean = await pool.stop(settings.serve_drain_seconds)
    finally:
        await runner.cleanup()
        notifier.close(NOTIFY_CLOSE_SECONDS)
        try:
            await db.run(db.audit.append, "serve.stopped", {"finished": pool.state.finished})
        except VerisError as exc:
            logger.error("audit log: %s", exc.message)
        db.close()
    logger.info("stopped%s", "" if clean else " with runs still in flight")
    return clean
