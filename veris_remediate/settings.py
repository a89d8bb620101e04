"""One Settings value for the whole library; environment variables map onto it here only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic import ValidationError as PydanticValidationError

from .exceptions import UsageError


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "veris-remediate"


class Settings(BaseModel):
    """Everything tunable. Passed explicitly; there is no module-level instance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir)
    # Lab root file systems are large and slow to build: keep them outside the state dir
    # so several state dirs (tests, demo) share one cache.
    lab_cache_dir: Path = Path("/var/cache/veris-remediate")
    rules_file: Path | None = None
    confidence_threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    job_timeout: int = Field(default=300, ge=10)
    idle_timeout: int = Field(default=120, ge=5)
    health_retries: int = Field(default=10, ge=1, le=120)
    # Seconds between verify rounds. Only a service that is not healthy at the first round
    # (a slow starter) waits them; shorter would also shorten the window health_retries
    # rounds give it (docs/BENCHMARKS.md: no round but the first ran in any measured fix).
    health_delay: int = Field(default=1, ge=1, le=30)
    # How long the unit must have been active when verify first probes it: catches a
    # service that dies right after it reports started. Counted from its activation
    # (service_health verify), so a start that already took that long waits nothing and a
    # fast one only the rest (~0.35 s measured, down from the full second it cost).
    settle_seconds: int = Field(default=1, ge=0, le=60)
    max_hosts: int = Field(default=3, ge=1)
    history_hours: int = Field(default=24, ge=1)
    # Trust (docs/SAFETY.md says why each default is what it is).
    approval: Literal["score", "always"] = "score"
    approval_ttl_hours: int = Field(default=24, ge=1)
    lease_ttl_seconds: int = Field(default=900, ge=30)
    brake_latch_failures: int = Field(default=3, ge=1)
    brake_latch_minutes: int = Field(default=15, ge=1)
    breaker_cooldown_seconds: int = Field(default=60, ge=0)
    breaker_backoff_max_seconds: int = Field(default=1800, ge=0)
    breaker_ineffective_minutes: int = Field(default=10, ge=1)
    breaker_open_after: int = Field(default=3, ge=1)
    breaker_half_open_minutes: int = Field(default=30, ge=1)
    audit_key_file: Path | None = None
    audit_journal: bool = False
    ssh_ca_key: Path | None = None
    ssh_cert_minutes: int = Field(default=15, ge=1, le=15)
    # postgresql://… puts the state store in PostgreSQL (several receivers, one estate);
    # unset, it is SQLite in the state dir.
    state_url: str | None = None
    # Outgoing notifications (docs/OBSERVABILITY.md): comma-separated ``kind=url`` entries,
    # kind generic or slack. Secret: a Slack webhook URL is its own credential.
    notify_urls: SecretStr = SecretStr("")
    notify_token_file: Path | None = None  # bearer token for generic targets (0600 file)
    notify_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    notify_retries: int = Field(default=5, ge=0, le=20)
    notify_backoff_seconds: float = Field(default=1.0, ge=0, le=60)
    notify_backoff_max_seconds: float = Field(default=60.0, ge=0, le=3600)
    notify_queue_size: int = Field(default=100, ge=1, le=10000)
    # ``serve``, the webhook receiver (README "serve"; docs/SCALING.md). The token is a
    # secret: from VERIS_SERVE_TOKEN or, better, a 0600 file.
    serve_listen: str = "127.0.0.1:9095"
    serve_token: SecretStr = SecretStr("")
    serve_token_file: Path | None = None
    serve_workers: int = Field(default=2, ge=1, le=32)
    serve_queue_limit: int = Field(default=1000, ge=1, le=1_000_000)
    serve_max_body_bytes: int = Field(default=1_048_576, ge=1024, le=1_048_576)
    serve_request_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    serve_drain_seconds: int = Field(default=120, ge=0, le=3600)
    serve_dedupe_window_seconds: int = Field(default=300, ge=1, le=86_400)
    # Finished queue rows are the memory that deduplicates re-sends of one incident: keep
    # them longer than any Alertmanager repeat_interval (default 4 h), then delete them.
    serve_retention_hours: int = Field(default=168, ge=1, le=87_600)
    # A claimed queue row whose owner has not renewed its heartbeat for this long (a
    # receiver on another machine that died) goes back to the queue.
    serve_claim_ttl_seconds: int = Field(default=120, ge=10, le=86_400)
    # A worker that claims an incident also claims the queued incidents of the same alert
    # name on other hosts (up to max_hosts in all) and runs them as one fleet payload.
    serve_fleet: bool = True

    # Runs on an execution node (execnode.py, docs/SCALING.md): ssh://[user@]host[:port];
    # unset, ansible-runner runs here. The key logs the controller in to the node; the
    # target key is sent with each run for the node to reach the hosts (a run with a
    # short-lived certificate sends that instead); unset, the node's own SSH setup.
    execution_node: str | None = None
    execution_node_key_file: Path | None = None
    execution_node_ssh_args: str = ""  # extra ssh options, e.g. -o UserKnownHostsFile=…
    execution_node_runner: str = "ansible-runner"  # its path on the node
    execution_node_target_key_file: Path | None = None


# Every environment variable the library reads, and the Settings field it sets.
ENV_MAP: Mapping[str, str] = {
    "VERIS_STATE_DIR": "state_dir",
    "VERIS_LAB_CACHE": "lab_cache_dir",
    "VERIS_RULES_FILE": "rules_file",
    "VERIS_CONFIDENCE_THRESHOLD": "confidence_threshold",
    "VERIS_JOB_TIMEOUT": "job_timeout",
    "VERIS_IDLE_TIMEOUT": "idle_timeout",
    "VERIS_HEALTH_RETRIES": "health_retries",
    "VERIS_HEALTH_DELAY": "health_delay",
    "VERIS_SETTLE_SECONDS": "settle_seconds",
    "VERIS_MAX_HOSTS": "max_hosts",
    "VERIS_HISTORY_HOURS": "history_hours",
    "VERIS_APPROVAL": "approval",
    "VERIS_APPROVAL_TTL_HOURS": "approval_ttl_hours",
    "VERIS_LEASE_TTL_SECONDS": "lease_ttl_seconds",
    "VERIS_BRAKE_LATCH_FAILURES": "brake_latch_failures",
    "VERIS_BRAKE_LATCH_MINUTES": "brake_latch_minutes",
    "VERIS_BREAKER_COOLDOWN_SECONDS": "breaker_cooldown_seconds",
    "VERIS_BREAKER_BACKOFF_MAX_SECONDS": "breaker_backoff_max_seconds",
    "VERIS_BREAKER_INEFFECTIVE_MINUTES": "breaker_ineffective_minutes",
    "VERIS_BREAKER_OPEN_AFTER": "breaker_open_after",
    "VERIS_BREAKER_HALF_OPEN_MINUTES": "breaker_half_open_minutes",
    "VERIS_AUDIT_KEY_FILE": "audit_key_file",
    "VERIS_AUDIT_JOURNAL": "audit_journal",
    "VERIS_SSH_CA_KEY": "ssh_ca_key",
    "VERIS_SSH_CERT_MINUTES": "ssh_cert_minutes",
    "VERIS_STATE_URL": "state_url",
    "VERIS_NOTIFY_URLS": "notify_urls",
    "VERIS_NOTIFY_TOKEN_FILE": "notify_token_file",
    "VERIS_NOTIFY_TIMEOUT_SECONDS": "notify_timeout_seconds",
    "VERIS_NOTIFY_RETRIES": "notify_retries",
    "VERIS_NOTIFY_BACKOFF_SECONDS": "notify_backoff_seconds",
    "VERIS_NOTIFY_BACKOFF_MAX_SECONDS": "notify_backoff_max_seconds",
    "VERIS_NOTIFY_QUEUE_SIZE": "notify_queue_size",
    "VERIS_SERVE_LISTEN": "serve_listen",
    "VERIS_SERVE_TOKEN": "serve_token",
    "VERIS_SERVE_TOKEN_FILE": "serve_token_file",
    "VERIS_SERVE_WORKERS": "serve_workers",
    "VERIS_SERVE_QUEUE_LIMIT": "serve_queue_limit",
    "VERIS_SERVE_MAX_BODY_BYTES": "serve_max_body_bytes",
    "VERIS_SERVE_REQUEST_TIMEOUT_SECONDS": "serve_request_timeout_seconds",
    "VERIS_SERVE_DRAIN_SECONDS": "serve_drain_seconds",
    "VERIS_SERVE_DEDUPE_WINDOW_SECONDS": "serve_dedupe_window_seconds",
    "VERIS_SERVE_RETENTION_HOURS": "serve_retention_hours",
    "VERIS_SERVE_CLAIM_TTL_SECONDS": "serve_claim_ttl_seconds",
    "VERIS_SERVE_FLEET": "serve_fleet",
    "VERIS_EXECUTION_NODE": "execution_node",
    "VERIS_EXECUTION_NODE_KEY_FILE": "execution_node_key_file",
    "VERIS_EXECUTION_NODE_SSH_ARGS": "execution_node_ssh_args",
    "VERIS_EXECUTION_NODE_RUNNER": "execution_node_runner",
    "VERIS_EXECUTION_NODE_TARGET_KEY_FILE": "execution_node_target_key_file",
}


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from ``environ`` (default: the process environment) plus explicit overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {
        field: env[name] for name, field in ENV_MAP.items() if env.get(name)
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(values)
    except PydanticValidationError as exc:
        raise UsageError(f"invalid settings: {exc}") from exc
