"""Outgoing webhooks: tell people when a run escalated, rolled back, failed or was blocked,
and when the emergency brake is engaged or released.

Targets come from ``VERIS_NOTIFY_URLS`` (comma-separated ``kind=url``; kind ``generic`` for
a JSON document, ``slack`` for a Slack-compatible ``{"text", "blocks"}`` message). Generic
targets get ``Authorization: Bearer <token>`` when ``VERIS_NOTIFY_TOKEN_FILE`` is set; Slack
webhooks never do (their URL is their credential).

Delivery never gets in the caller's way: each target has its own background thread and a
bounded queue (a slow Slack does not delay the generic target; a full queue drops the
message and records that). A failed attempt is retried with exponential back-off
(``backoff * 2^(n-1)``, at least the server's ``Retry-After``, never more than the cap);
4xx answers other than 408/425/429 and redirects are final. Every message ends in one
audit record, ``notify.sent`` or ``notify.failed``. Messages and records are redacted, and
a target is only ever named as ``scheme://host:port/…``: a webhook URL's path is a secret.

Traffic goes to the configured URLs only: environment proxies are ignored and redirects
are not followed.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from .exceptions import AuditError, UsageError
from .private_files import read_private_file
from .redaction import redact, redact_text
from .report import RunReport
from .settings import Settings
from .store import BrakeState

if TYPE_CHECKING:
    from .audit import AuditLog
    from .metrics import Metrics

logger = logging.getLogger(__name__)

TargetKind = Literal["generic", "slack"]
KINDS: tuple[TargetKind, ...] = ("generic", "slack")
# The outcomes a person must hear about; resolved, not_needed and previewed are not news.
NOTIFY_OUTCOMES = frozenset({"escalated", "rolled_back", "failed", "blocked"})
RETRYABLE_STATUS = frozenset({408, 425, 429})
USER_AGENT = "veris-remediate-notify/1"
MAX_RESPONSE_BYTES = 65536
# Slack's limits: header text 150 characters, section text 3000, a field 2000, 10 fields.
_SLACK_HEADER = 150
_SLACK_TEXT = 3000
_SLACK_FIELD = 2000
_TITLES = {
    "escalated": "escalated: a person must decide",
    "rolled_back": "fix rolled back",
    "failed": "remediation failed",
    "blocked": "blocked by the emergency brake",
}


@dataclass(frozen=True)
class Target:
    """One webhook. ``url`` is secret; ``safe`` is what records and logs name it by."""

    kind: TargetKind
    url: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def safe(self) -> str:
        return safe_url(self.url)


@dataclass(frozen=True)
class Notice:
    """One message, in both forms; each target sends the form of its kind."""

    event: Literal["run", "brake"]
    summary: str
    generic: Mapping[str, Any]
    slack: Mapping[str, Any]
    run_id: str | None = None
    outcome: str | None = None

    def body(self, kind: TargetKind) -> bytes:
        return json.dumps(self.slack if kind == "slack" else self.generic).encode()


def safe_url(url: str) -> str:
    """``scheme://host[:port]`` plus ``/…`` when the URL had a path: never its path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "[unparseable url]"
    if ":" in host:
        host = f"[{host}]"
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def parse_targets(spec: str, token: str | None = None) -> tuple[Target, ...]:
    """Targets from ``kind=url[,kind=url…]``; UsageError (naming no secret) when malformed."""
    targets: list[Target] = []
    for number, entry in enumerate((e.strip() for e in spec.split(",")), start=1):
        if not entry:
            continue
        kind, sep, url = entry.partition("=")
        kind = kind.strip().lower()
        url = url.strip()
        if not sep or kind not in KINDS:
            raise UsageError(
                f"VERIS_NOTIFY_URLS entry {number} is not kind=url with kind generic or slack"
            )
        try:
            parts = urlsplit(url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises on a bad port
        except ValueError:
            valid = False
        if not valid:
            raise UsageError(
                f"VERIS_NOTIFY_URLS entry {number} ({kind}) is not an http(s) URL with a host"
            )
        typed: TargetKind = "slack" if kind == "slack" else "generic"
        targets.append(Target(typed, url, token if typed == "generic" else None))
    return tuple(targets)


def read_token(path: Path) -> str:
    """A bearer token from a private (not group/other readable), non-empty, one-line file."""
    raw = read_private_file(path, "the notify token file")
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise UsageError(f"the notify token file {path} is not UTF-8") from exc
    if not token or any(c in token for c in "\r\n\0"):
        raise UsageError(f"the notify token file {path} must hold one non-empty line")
    return token


# -- messages --------------------------------------------------------------------------


def _slack_escape(text: str) -> str:
    """Alert text is untrusted: no links, mentions (<!channel>) or markup from it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack(title: str, summary: str, fields: Mapping[str, str], lines: Sequence[str]) -> Any:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(title, _SLACK_HEADER)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(summary, _SLACK_TEXT)}},
    ]
    if fields:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _cut(f"*{name}*\n{value}", _SLACK_FIELD)}
                    for name, value in list(fields.items())[:10]
                ],
            }
        )
    if lines:
        text = "\n".join(f"• {line}" for line in lines)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, 3000)}})
    return {"text": _cut(summary, _SLACK_TEXT), "blocks": blocks}


def report_notice(report: RunReport) -> Notice:
    """The message for a finished run (whatever its outcome; the Notifier filters)."""
    hosts = ", ".join(report.hosts) or "no host"
    what = report.alert_type or "alert"
    fix = f" ({report.remediation})" if report.remediation else ""
    data: dict[str, Any] = redact(
        {
            "version": 1,
            "event": "run",
            "summary": f"veris-remediate: {what} on {hosts}{fix}: {report.outcome} "
            f"(run {report.run_id})",
            "run_id": report.run_id,
            "outcome": report.outcome,
            "decision": report.decision,
            "confidence": report.confidence,
            "rolled_back": report.rolled_back,
            "alert_type": report.alert_type,
            "remediation": report.remediation,
            "hosts": list(report.hosts),
            "reasons": list(report.reasons),
            "source": report.source,
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "remediations": [
                r.model_dump(
                    mode="json",
                    include={
                        "host",
                        "alert",
                        "fingerprint",
                        "remediation",
                        "service",
                        "decision",
                        "confidence",
                        "outcome",
                        "rolled_back",
                        "reasons",
                    },
                )
                for r in report.remediations
            ],
        }
    )
    esc = _slack_escape
    fields = {
        "Outcome": esc(report.outcome),
        "Hosts": esc(", ".join(data["hosts"]) or "no host"),
        "Fix": esc(data["remediation"] or "none"),
        "Decision": f"{esc(report.decision)} (confidence {report.confidence:.2f})",
        "Run": f"`{esc(data['run_id'])}`",
    }
    title = f"veris-remediate: {_TITLES.get(report.outcome, report.outcome)}"
    hint = f"\nDetails: `veris-remediate report {esc(data['run_id'])}`"
    reasons = [esc(str(r)) for r in data["reasons"]]
    slack = _slack(title, esc(data["summary"]) + hint, fields, reasons)
    return Notice("run", data["summary"], data, slack, run_id=report.run_id, outcome=report.outcome)


def brake_notice(state: BrakeState | None, was: BrakeState | None = None) -> Notice:
    """The message for the brake engaged (``state``) or released (``state`` None)."""
    if state is not None:
        data = redact(state.model_dump(mode="json"))
        summary = f"veris-remediate: emergency brake {redact_text(state.describe())}"
        generic = {"version": 1, "event": "brake", "engaged": True, "summary": summary, **data}
        title = "veris-remediate: emergency brake engaged"
        detail = "No fix is applied until it is released (`veris-remediate brake release`)."
        fields = {"By": _slack_escape(data["by"]), "Source": _slack_escape(data["source"])}
        slack = _slack(title, f"{_slack_escape(summary)}\n{detail}", fields, [])
        return Notice("brake", summary, generic, slack, outcome="engaged")
    summary = "veris-remediate: emergency brake released; fixes are applied again"
    generic = {
        "version": 1,
        "event": "brake",
        "engaged": False,
        "summary": summary,
        "was": redact(was.model_dump(mode="json")) if was else None,
    }
    slack = _slack("veris-remediate: emergency brake released", _slack_escape(summary), {}, [])
    return Notice("brake", summary, generic, slack, outcome="released")


# -- delivery --------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would send the message (and a token) somewhere not configured: refuse."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


@dataclass(frozen=True)
class _Attempt:
    """One POST: delivered, the HTTP status (None: no answer), and whether to try again."""

    ok: bool
    status: int | None = None
    error: str = ""
    retry: bool = False
    wait: float | None = None  # the server's Retry-After


def _retry_after(headers: Message | None) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class _Worker:
    """One target's queue and thread."""

    def __init__(self, notifier: Notifier, target: Target) -> None:
        self.notifier = notifier
        self.target = target
        self.queue: queue.Queue[Notice | None] = queue.Queue()
        self.thread = threading.Thread(
            target=self._run, name=f"veris-notify-{target.kind}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        while True:
            notice = self.queue.get()
            if notice is None:
                return
            try:
                self._deliver(notice)
            except Exception as exc:  # a bug must not kill the thread and silence the rest
                logger.exception("notification to %s crashed", self.target.safe)
                self.notifier.record(self.target, notice, False, 1, None, f"crashed: {exc!r}")

    def _deliver(self, notice: Notice) -> None:
        n = self.notifier
        attempts, last = 0, _Attempt(False, error="not sent: shutting down")
        while not n.aborted.is_set():
            attempts += 1
            last = self._post(notice)
            if last.ok or not last.retry or attempts > n.retries:
                break
            delay = min(n.backoff * 2 ** (attempts - 1), n.backoff_max)
            if last.wait is not None:
                delay = min(max(delay, last.wait), n.backoff_max)
            if n.aborted.wait(delay):
                last = _Attempt(False, last.status, f"{last.error}; gave up: shutting down")
                break
        n.record(self.target, notice, last.ok, attempts, last.status, last.error)

    def _post(self, notice: Notice) -> _Attempt:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        request = urllib.request.Request(  # noqa: S310 - scheme checked (http/https) in parse_targets
            self.target.url, data=notice.body(self.target.kind), headers=headers, method="POST"
        )
        try:
            with self.notifier.opener.open(request, timeout=self.notifier.timeout) as response:
                response.read(MAX_RESPONSE_BYTES)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            with exc:  # its body is an open socket
                code = exc.code
                retry = code >= 500 or code in RETRYABLE_STATUS
                error = f"HTTP {code}" + (" (redirects are not followed)" if code < 400 else "")
                return _Attempt(False, code, error, retry, _retry_after(exc.headers))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            reason = str(reason) or type(reason).__name__
            return _Attempt(False, error=f"no answer: {reason}", retry=True)
        if 200 <= status < 300:
            return _Attempt(True, status)
        return _Attempt(False, status, f"HTTP {status}", retry=status >= 500)


class Notifier:
    """Sends notices to every target in the background. Never raises into, or blocks, callers."""

    def __init__(
        self,
        targets: Sequence[Target],
        audit: AuditLog,
        *,
        timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        queue_size: int = 100,
        metrics: Metrics | None = None,
    ) -> None:
        self.audit = audit
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.queue_size = queue_size
        self.metrics = metrics
        self.aborted = threading.Event()
        # No proxies from the environment, no redirects: traffic to the configured URLs only.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._lock = threading.Lock()
        self._closed = False
        self._brake: BrakeState | None = None
        self._brake_known = False
        self._workers = [_Worker(self, t) for t in targets]

    @classmethod
    def from_settings(
        cls, settings: Settings, audit: AuditLog, *, metrics: Metrics | None = None
    ) -> Notifier:
        """The notifier ``settings`` describe (none configured: one that sends nothing).
        UsageError for a malformed VERIS_NOTIFY_URLS or an unsafe token file."""
        token = read_token(settings.notify_token_file) if settings.notify_token_file else None
        return cls(
            parse_targets(settings.notify_urls.get_secret_value(), token),
            audit,
            timeout=settings.notify_timeout_seconds,
            retries=settings.notify_retries,
            backoff=settings.notify_backoff_seconds,
            backoff_max=settings.notify_backoff_max_seconds,
            queue_size=settings.notify_queue_size,
            metrics=metrics,
        )

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(w.target for w in self._workers)

    def notify_report(self, report: RunReport) -> None:
        """Queue a notice for a run that escalated, rolled back, failed or was blocked."""
        if report.outcome not in NOTIFY_OUTCOMES or not self._workers:
            return
        self._submit(lambda: report_notice(report))

    def notify_brake(self, state: BrakeState | None) -> None:
        """Queue a notice when the brake changed since the last call (engaged: ``state``;
        released: None). Safe to call on every poll; the first call only notes a released
        brake, so a restart does not announce a release that did not happen."""
        with self._lock:
            known, was = self._brake_known, self._brake
            self._brake_known, self._brake = True, state
        if not self._workers:
            return
        changed = (state is None) != (was is None) or (
            state is not None and was is not None and state.since != was.since
        )
        if state is None and not known:
            changed = False
        if changed:
            self._submit(lambda: brake_notice(state, was))

    def _submit(self, build: Any) -> None:
        try:
            notice: Notice = build()
        except Exception:
            logger.exception("could not build a notification")
            return
        with self._lock:
            if self._closed:
                return
            for worker in self._workers:
                if worker.queue.qsize() >= self.queue_size:
                    self.record(worker.target, notice, False, 0, None, "dropped: queue full")
                    continue
                worker.queue.put_nowait(notice)

    def record(
        self,
        target: Target,
        notice: Notice,
        ok: bool,
        attempts: int,
        status: int | None,
        error: str,
    ) -> None:
        """One audit record (and metric) per message and target; failures also logged."""
        result: Literal["sent", "failed", "dropped"] = (
            "sent" if ok else "dropped" if attempts == 0 else "failed"
        )
        if self.metrics is not None:
            self.metrics.notification(target.kind, result)
        data: dict[str, Any] = {
            "event": notice.event,
            "outcome": notice.outcome,
            "target": target.safe,
            "kind": target.kind,
            "attempts": attempts,
            "status": status,
        }
        if not ok:
            error = redact_text(error.replace(target.url, target.safe))
            data["error"] = error
            logger.warning("notification to %s failed: %s", target.safe, error)
        try:
            self.audit.append("notify.sent" if ok else "notify.failed", data, notice.run_id)
        except (AuditError, OSError) as exc:
            logger.warning("could not record a notification in the audit log: %s", exc)

    def close(self, timeout: float) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then give up on the rest
        (each recorded as failed). Later notices are ignored. Returns within about
        ``timeout``; a request in flight may still end (and be recorded) after it."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in self._workers:
                worker.queue.put_nowait(None)
        for worker in self._workers:
            worker.thread.join(max(deadline - time.monotonic(), 0.0))
        self.aborted.set()
        for worker in self._workers:
            worker.thread.join(0.05)
