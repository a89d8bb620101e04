"""Outgoing notifications, delivered to a real HTTP server on 127.0.0.1 started by each test."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from veris_remediate.audit import AuditLog
from veris_remediate.exceptions import UsageError
from veris_remediate.metrics import Metrics
from veris_remediate.notify import (
    Notifier,
    Target,
    brake_notice,
    parse_targets,
    report_notice,
    safe_url,
)
from veris_remediate.report import RemediationResult, RunReport, build_report
from veris_remediate.settings import Settings, settings_from_env
from veris_remediate.store import BrakeState

SECRET_PATH = "/hooks/T0001/B0002/s3cr3tWebhookPath"
TOKEN = "tok-0123456789abcdef"


class Hook:
    """A webhook endpoint: answers each POST by the next scripted reply and records it.

    A reply is an HTTP status, ``"hang"`` (never answer until the test ends) or a
    ``(status, headers)`` pair.
    """

    def __init__(self, replies: list[Any] | None = None, default: Any = 200) -> None:
        self.replies = list(replies or [])
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                with hook.arrived:
                    hook.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": json.loads(body),
                            "at": time.monotonic(),
                        }
                    )
                    reply = hook.replies.pop(0) if hook.replies else hook.default
                    hook.arrived.notify_all()
                if reply == "hang":
                    hook.release.wait(30)
                    return
                status, headers = reply if isinstance(reply, tuple) else (reply, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def hooks() -> Iterator[Callable[..., Hook]]:
    started: list[Hook] = []

    def start(replies: list[Any] | None = None, default: Any = 200) -> Hook:
        hook = Hook(replies, default)
        started.append(hook)
        return hook

    yield start
    for hook in started:
        hook.stop()


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "state" / "audit.jsonl")


@pytest.fixture(autouse=True)
def _no_proxy_bypass(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the environment must not be used: the notifier talks to its targets only.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


def _notify_records(audit: AuditLog, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in audit.records() if r["kind"].startswith("notify.")]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def _report(outcome: str = "escalated", *, reason: str = "confidence 0.41 below 0.7") -> RunReport:
    result = RemediationResult(
        host="web1",
        alert="NginxDown",
        fingerprint="abc123",
        workflow="service_health",
        remediation="service_restart",
        service="nginx",
        decision="escalate" if outcome == "escalated" else "apply",
        confidence=0.41,
        outcome=outcome,  # type: ignore[arg-type]
        rolled_back=outcome == "rolled_back",
        reasons=(reason,),
    )
    return build_report(
        run_id="20260101-000000-abcd",
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:00:09+00:00",
        source="alertmanager",
        check_only=False,
        results=[result],
        phases=[],
    )


def _notifier(audit: AuditLog, *targets: Target, **kw: Any) -> Notifier:
    options: dict[str, Any] = {"timeout": 2.0, "retries": 3, "backoff": 0.01, "backoff_max": 0.05}
    options.update(kw)
    return Notifier(targets, audit, **options)


# -- targets and settings ----------------------------------------------------------------


def test_parse_targets_and_safe_names():
    targets = parse_targets(
        f" generic=http://127.0.0.1:8080{SECRET_PATH}?key=v , slack=https://hooks.example{SECRET_PATH}",
        token=TOKEN,
    )
    assert [t.kind for t in targets] == ["generic", "slack"]
    assert targets[0].token == TOKEN
    assert targets[1].token is None  # a Slack webhook never gets the bearer token
    assert targets[0].safe == "http://127.0.0.1:8080/…"
    assert targets[1].safe == "https://hooks.example/…"
    assert SECRET_PATH not in repr(targets)
    assert TOKEN not in repr(targets)
    assert safe_url("https://user:pw@[::1]:9/x") == "https://[::1]:9/…"
    assert parse_targets("") == ()


@pytest.mark.parametrize(
    "spec",
    [
        f"http://example.org{SECRET_PATH}",  # no kind
        f"teams=https://example.org{SECRET_PATH}",  # unknown kind
        f"generic=file:///etc{SECRET_PATH}",  # not http(s)
        f"slack=https://{SECRET_PATH}",  # no host
        f"generic=http://example.org:99999{SECRET_PATH}",  # bad port
    ],
)
def test_parse_targets_refuses_without_echoing_the_url(spec: str):
    with pytest.raises(UsageError) as caught:
        parse_targets(spec)
    assert "s3cr3t" not in caught.value.message


def test_settings_from_env_keep_urls_secret(tmp_path: Path, audit: AuditLog):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    settings = settings_from_env(
        {
            "VERIS_NOTIFY_URLS": f"generic=http://127.0.0.1:1{SECRET_PATH}",
            "VERIS_NOTIFY_TOKEN_FILE": str(token_file),
            "VERIS_NOTIFY_RETRIES": "2",
            "VERIS_NOTIFY_TIMEOUT_SECONDS": "1.5",
        }
    )
    assert "s3cr3t" not in repr(settings)
    notifier = Notifier.from_settings(settings, audit)
    try:
        assert notifier.retries == 2
        assert notifier.timeout == 1.5
        assert notifier.targets[0].token == TOKEN
    finally:
        notifier.close(1)


def test_token_file_must_be_private(tmp_path: Path, audit: AuditLog):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    settings = Settings(
        notify_urls=f"generic=http://127.0.0.1:1{SECRET_PATH}", notify_token_file=token_file
    )  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="chmod 600"):
        Notifier.from_settings(settings, audit)
    token_file.chmod(0o600)
    token_file.write_text("")
    with pytest.raises(UsageError, match="one non-empty line"):
        Notifier.from_settings(settings, audit)


def test_no_targets_sends_nothing_and_starts_no_thread(audit: AuditLog):
    before = threading.active_count()
    notifier = Notifier.from_settings(Settings(), audit)
    notifier.notify_report(_report("failed"))
    notifier.close(1)
    assert threading.active_count() == before
    assert not audit.path.exists()


# -- delivery ----------------------------------------------------------------------------


def test_generic_delivery_with_bearer_token(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks()
    metrics = Metrics()
    notifier = _notifier(audit, Target("generic", hook.url, TOKEN), metrics=metrics)
    notifier.notify_report(_report("escalated"))
    notifier.close(5)
    [request] = hook.wait_for(1)
    assert request["path"] == SECRET_PATH
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["event"] == "run"
    assert body["outcome"] == "escalated"
    assert body["run_id"] == "20260101-000000-abcd"
    assert body["hosts"] == ["web1"]
    assert body["remediations"][0]["fingerprint"] == "abc123"
    assert "NginxDown on web1 (service_restart): escalated" in body["summary"]
    [record] = _notify_records(audit, 1)
    assert record["kind"] == "notify.sent"
    assert record["run_id"] == "20260101-000000-abcd"
    assert record["data"]["attempts"] == 1
    assert record["data"]["status"] == 200
    assert record["data"]["target"].endswith("/…")
    text = audit.path.read_text()
    assert "s3cr3t" not in text
    assert TOKEN not in text
    assert audit.verify().ok
    body_text, _ = metrics.render()
    assert b'veris_notifications_total{kind="generic",result="sent"} 1.0' in body_text


@pytest.mark.parametrize("outcome", ["escalated", "rolled_back", "failed", "blocked"])
def test_outcomes_that_notify(hooks: Callable[..., Hook], audit: AuditLog, outcome: str):
    hook = hooks()
    notifier = _notifier(audit, Target("generic", hook.url))
    notifier.notify_report(_report(outcome))
    notifier.close(5)
    assert [r["body"]["outcome"] for r in hook.wait_for(1)] == [outcome]


@pytest.mark.parametrize("outcome", ["resolved", "not_needed", "previewed", "rejected", "deferred"])
def test_outcomes_that_do_not_notify(hooks: Callable[..., Hook], audit: AuditLog, outcome: str):
    hook = hooks()
    notifier = _notifier(audit, Target("generic", hook.url))
    notifier.notify_report(_report(outcome))
    notifier.notify_report(_report("failed"))  # proves the target works
    notifier.close(5)
    assert [r["body"]["outcome"] for r in hook.wait_for(1)] == ["failed"]


def test_retries_with_backoff_until_delivered(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks([500, 503, 200])
    notifier = _notifier(audit, Target("generic", hook.url), retries=4, backoff=0.1, backoff_max=5)
    notifier.notify_report(_report("rolled_back"))
    notifier.close(10)
    requests = hook.wait_for(3)
    assert len(requests) == 3
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(requests)]
    assert gaps[0] >= 0.1  # backoff
    assert gaps[1] >= 0.2  # doubled
    [record] = _notify_records(audit, 1)
    assert record["kind"] == "notify.sent"
    assert record["data"]["attempts"] == 3


def test_retry_after_is_honoured_up_to_the_cap(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks([(429, {"Retry-After": "1"}), 200])
    notifier = _notifier(audit, Target("generic", hook.url), backoff=0.01, backoff_max=0.3)
    notifier.notify_report(_report("failed"))
    notifier.close(10)
    first, second = hook.wait_for(2)
    assert 0.3 <= second["at"] - first["at"] < 0.9  # capped at backoff_max, not 1 s


def test_gives_up_after_retries_and_records_the_failure(
    hooks: Callable[..., Hook], audit: AuditLog, caplog: pytest.LogCaptureFixture
):
    hook = hooks(default=500)
    metrics = Metrics()
    notifier = _notifier(audit, Target("generic", hook.url, TOKEN), retries=2, metrics=metrics)
    notifier.notify_report(_report("failed"))
    notifier.close(10)
    assert len(hook.wait_for(3)) == 3
    [record] = _notify_records(audit, 1)
    assert record["kind"] == "notify.failed"
    assert record["data"]["attempts"] == 3
    assert record["data"]["status"] == 500
    assert record["data"]["error"] == "HTTP 500"
    assert "s3cr3t" not in caplog.text
    assert TOKEN not in caplog.text
    assert "notification to http://127.0.0.1" in caplog.text
    body, _ = metrics.render()
    assert b'veris_notifications_total{kind="generic",result="failed"} 1.0' in body


def test_client_errors_and_redirects_are_final(hooks: Callable[..., Hook], audit: AuditLog):
    rejecting = hooks(default=400)
    redirecting = hooks(default=(302, {"Location": "http://127.0.0.1:9/elsewhere"}))
    notifier = _notifier(
        audit, Target("generic", rejecting.url), Target("generic", redirecting.url)
    )
    notifier.notify_report(_report("failed"))
    notifier.close(10)
    assert len(rejecting.requests) == 1
    assert len(redirecting.requests) == 1
    records = sorted(_notify_records(audit, 2), key=lambda r: r["data"]["status"])
    assert [r["kind"] for r in records] == ["notify.failed", "notify.failed"]
    assert records[0]["data"]["error"] == "HTTP 302 (redirects are not followed)"
    assert records[1]["data"]["error"] == "HTTP 400"


def test_unreachable_target_is_recorded(audit: AuditLog):
    notifier = _notifier(audit, Target("generic", f"http://127.0.0.1:1{SECRET_PATH}"), retries=1)
    notifier.notify_report(_report("failed"))
    notifier.close(10)
    [record] = _notify_records(audit, 1)
    assert record["kind"] == "notify.failed"
    assert record["data"]["attempts"] == 2
    assert record["data"]["error"].startswith("no answer:")
    assert record["data"]["target"] == "http://127.0.0.1:1/…"


def test_a_target_that_never_answers_blocks_nobody(hooks: Callable[..., Hook], audit: AuditLog):
    silent = hooks(default="hang")
    healthy = hooks()
    notifier = _notifier(
        audit, Target("generic", silent.url), Target("slack", healthy.url), timeout=1.0, retries=1
    )
    start = time.monotonic()
    notifier.notify_report(_report("failed"))
    assert time.monotonic() - start < 0.1  # the caller never waits on delivery
    # The healthy target is not held up behind the silent one.
    assert len(healthy.wait_for(1, timeout=0.8)) == 1
    records = _notify_records(audit, 2)
    by_kind = {r["data"]["kind"]: r for r in records}
    assert by_kind["slack"]["kind"] == "notify.sent"
    assert by_kind["generic"]["kind"] == "notify.failed"
    assert by_kind["generic"]["data"]["attempts"] == 2
    assert "timed out" in by_kind["generic"]["data"]["error"]
    assert len(silent.requests) == 2
    notifier.close(1)


def test_full_queue_drops_and_records(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks(default="hang")
    metrics = Metrics()
    notifier = _notifier(
        audit, Target("generic", hook.url), timeout=5, queue_size=1, metrics=metrics
    )
    notifier.notify_report(_report("failed"))
    hook.wait_for(1)  # the first is in flight
    start = time.monotonic()
    notifier.notify_report(_report("escalated"))  # queued
    notifier.notify_report(_report("blocked"))  # dropped
    assert time.monotonic() - start < 0.5
    [record] = _notify_records(audit, 1)
    assert record["kind"] == "notify.failed"
    assert record["data"]["outcome"] == "blocked"
    assert record["data"]["error"] == "dropped: queue full"
    assert record["data"]["attempts"] == 0
    body, _ = metrics.render()
    assert b'veris_notifications_total{kind="generic",result="dropped"} 1.0' in body
    start = time.monotonic()
    notifier.close(0.5)
    assert time.monotonic() - start < 1.5  # close is bounded by its timeout


def test_close_delivers_what_is_queued(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks()
    notifier = _notifier(audit, Target("generic", hook.url))
    for outcome in ("failed", "escalated", "rolled_back"):
        notifier.notify_report(_report(outcome))
    notifier.close(5)
    assert len(hook.requests) == 3
    notifier.notify_report(_report("failed"))  # after close: ignored, no error
    time.sleep(0.1)
    assert len(hook.requests) == 3


def test_close_gives_up_on_backoff_and_records_it(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks(default=503)
    notifier = _notifier(audit, Target("generic", hook.url), retries=10, backoff=5, backoff_max=5)
    notifier.notify_report(_report("failed"))
    hook.wait_for(1)
    start = time.monotonic()
    notifier.close(0.3)
    assert time.monotonic() - start < 1.0
    [record] = _notify_records(audit, 1)
    assert record["kind"] == "notify.failed"
    assert "shutting down" in record["data"]["error"]


# -- message forms -----------------------------------------------------------------------


def test_slack_format(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks()
    notifier = _notifier(audit, Target("slack", hook.url, None))
    hostile = "health check failed <!channel> <https://evil.example|click> & more " + "x" * 4000
    notifier.notify_report(_report("rolled_back", reason=hostile))
    notifier.close(5)
    [request] = hook.wait_for(1)
    assert "Authorization" not in request["headers"]
    body = request["body"]
    assert set(body) == {"text", "blocks"}
    assert "rolled_back" in body["text"]
    header, summary, fields, reasons = body["blocks"]
    assert header["type"] == "header"
    assert header["text"]["type"] == "plain_text"
    assert header["text"]["text"] == "veris-remediate: fix rolled back"
    assert summary["text"]["type"] == "mrkdwn"
    assert "veris-remediate report 20260101-000000-abcd" in summary["text"]["text"]
    texts = {f["text"] for f in fields["fields"]}
    assert "*Hosts*\nweb1" in texts
    assert "*Fix*\nservice_restart" in texts
    reason_text = reasons["text"]["text"]
    assert "<!channel>" not in reason_text
    assert "&lt;!channel&gt;" in reason_text
    assert "<https://evil.example" not in reason_text
    assert "&amp; more" in reason_text
    assert len(reason_text) <= 3000
    assert all(len(f["text"]) <= 2000 for f in fields["fields"])


def test_messages_are_redacted(hooks: Callable[..., Hook], audit: AuditLog):
    generic, slack = hooks(), hooks()
    notifier = _notifier(audit, Target("generic", generic.url), Target("slack", slack.url))
    notifier.notify_report(
        _report("failed", reason="login failed: password=hunter2 Bearer abc.def")
    )
    notifier.close(5)
    for hook in (generic, slack):
        [request] = hook.wait_for(1)
        sent = json.dumps(request["body"])
        assert "hunter2" not in sent
        assert "abc.def" not in sent
        assert "[REDACTED]" in sent


def test_report_notice_forms_are_json():
    notice = report_notice(_report("blocked"))
    for kind in ("generic", "slack"):
        json.loads(notice.body(kind))  # type: ignore[arg-type]
    assert notice.run_id == "20260101-000000-abcd"
    assert notice.outcome == "blocked"


# -- the brake ---------------------------------------------------------------------------


def _brake(reason: str = "maintenance window", at: int = 0) -> BrakeState:
    return BrakeState(
        reason=reason, by="alice", source="operator", since=datetime(2026, 1, 1, 0, at, tzinfo=UTC)
    )


def test_brake_changes_only(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks()
    notifier = _notifier(audit, Target("generic", hook.url), Target("slack", hook.url))
    notifier.notify_brake(None)  # first poll, released: nothing to say
    notifier.notify_brake(_brake())  # engaged
    notifier.notify_brake(_brake())  # same engagement, polled again
    notifier.notify_brake(None)  # released
    notifier.notify_brake(None)
    notifier.notify_brake(_brake("latched", at=5))  # engaged again
    notifier.close(5)
    requests = hook.wait_for(6)
    generic = [r["body"] for r in requests if "event" in r["body"]]
    slack = [r["body"] for r in requests if "blocks" in r["body"]]
    assert [b["engaged"] for b in generic] == [True, False, True]
    assert generic[0]["reason"] == "maintenance window"
    assert generic[0]["by"] == "alice"
    assert generic[1]["was"]["reason"] == "maintenance window"
    assert generic[2]["reason"] == "latched"
    assert len(slack) == 3
    assert slack[0]["blocks"][0]["text"]["text"] == "veris-remediate: emergency brake engaged"
    records = _notify_records(audit, 6)
    assert [r["data"]["event"] for r in records] == ["brake"] * 6
    assert {r["data"]["outcome"] for r in records} == {"engaged", "released"}


def test_first_poll_engaged_is_announced(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks()
    notifier = _notifier(audit, Target("generic", hook.url))
    notifier.notify_brake(_brake())
    notifier.close(5)
    assert [r["body"]["engaged"] for r in hook.wait_for(1)] == [True]


def test_brake_notice_redacts_reason():
    notice = brake_notice(_brake("rotating creds: token=abc123"))
    assert "abc123" not in json.dumps(notice.generic)
    assert "abc123" not in json.dumps(notice.slack)
    assert "abc123" not in notice.summary


def test_no_stray_threads_after_close(hooks: Callable[..., Hook], audit: AuditLog):
    hook = hooks()
    before = set(threading.enumerate())
    notifier = _notifier(audit, Target("generic", hook.url), Target("slack", hook.url))
    ours = [t for t in threading.enumerate() if t not in before and t.name.startswith("veris-")]
    assert len(ours) == 2  # one per target
    notifier.notify_report(_report("failed"))
    notifier.close(5)
    assert [t for t in ours if t.is_alive()] == []
