"""What the database diagnosis and the connection relief share: the server as read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..base import (
    Finding,
    Severity,
)

RESTART = "service_restart"
RELIEF = "db_connection_relief"
SHOWN = 5  # items named in one line before "and N more"
RESTART_PENALTY = 0.1  # a plan that ends with the last-resort restart


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _listed(items: Sequence[str]) -> str:
    more = len(items) - SHOWN
    return ", ".join(items[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def limit_of(max_connections: int, percent: int, reserved: int = 0) -> int:
    """The connection count that is "near the limit": ``percent`` of max, rounded up, but
    never above the slots ordinary roles may use (max less ``reserved``): once those are all
    taken, clients are refused already ("remaining connection slots are reserved")."""
    return min(math.ceil(max_connections * percent / 100), max_connections - reserved)


class _Findings:
    def __init__(self, host: str) -> None:
        self.host = host
        self.items: list[Finding] = []

    def add(self, severity: Severity, message: str) -> None:
        self.items.append(Finding(host=self.host, severity=severity, message=message))


class Counted(_Model):
    name: str
    count: int = Field(ge=0)


class UserCount(_Model):
    name: str
    superuser: bool
    count: int = Field(ge=0)


class AgeBucket(_Model):
    min_seconds: int
    max_seconds: int | None
    count: int = Field(ge=0)

    def label(self) -> str:
        if self.max_seconds is None:
            return f">= {self.min_seconds} s"
        return f"{self.min_seconds}-{self.max_seconds} s"


class Session(_Model):
    """One client session of pg_stat_activity (identified by pid and backend_start)."""

    pid: int
    user: str
    database: str
    client_addr: str | None
    application_name: str
    state: str
    backend_start: str  # for people; the identity is backend_start_us
    backend_start_us: int  # microseconds since the epoch: exact, and an int in any YAML
    state_age_seconds: float | None
    superuser: bool

    def describe(self) -> str:
        where = f" from {self.client_addr}" if self.client_addr else " (local socket)"
        age = "?" if self.state_age_seconds is None else f"{int(self.state_age_seconds)}"
        su = ", superuser" if self.superuser else ""
        who = f"{self.user or '?'}@{self.database or '?'}"
        return f"pid {self.pid} {who}{where}, {self.state} {age} s{su}"


class DataDir(_Model):
    """The filesystem holding a data directory, as df counts it."""

    path: str
    mountpoint: str
    size_bytes: int
    used_bytes: int
    avail_bytes: int
    used_percent: float
    inodes_used_percent: float | None

    def describe(self) -> str:
        inodes = (
            f", {self.inodes_used_percent:.0f}% of inodes"
            if self.inodes_used_percent is not None
            else ""
        )
        return (
            f"{self.path} on {self.mountpoint}: {self.used_percent:.1f}% used, "
            f"{_size(self.avail_bytes)} available{inodes}"
        )


class AuthFailures(_Model):
    """Refused logins in the server's journal and log file over the window."""

    window_minutes: int
    sources: tuple[str, ...]
    unreadable: tuple[str, ...]
    failures: int = Field(ge=0)
    by_user: tuple[Counted, ...]
    by_host: tuple[Counted, ...]
    first: str | None
    last: str | None
    samples: tuple[str, ...]

    def describe(self) -> str:
        users = _listed([f"{u.name or '?'} x{u.count}" for u in self.by_user])
        hosts = _listed([f"{h.name} x{h.count}" for h in self.by_host])
        text = f"{self.failures} refused login(s) in {self.window_minutes} min"
        if users:
            text += f" (users: {users}"
            text += f"; from: {hosts})" if hosts else ")"
        if self.first and self.last:
            text += f", {self.first} .. {self.last}"
        return text


ErrorKind = Literal["none", "connect", "too_many_connections", "probe"]


class PostgresServer(_Model):
    """One declared PostgreSQL service as the probe found it."""

    name: str
    unit: str
    port: int
    policy: bool  # veris_postgres names this service (the opt-in to relief)
    idle_age: int  # from veris_postgres, else the policy's default
    active_state: str
    sub_state: str
    result: str
    cluster: str | None
    reachable: bool
    error: str
    error_kind: ErrorKind
    tcp_address: str | None
    tcp_ok: bool | None
    tcp_error: str
    server_version: str | None
    max_connections: int | None
    reserved_connections: int | None
    connections: int | None  # client backends, the probe's own excluded
    by_state: tuple[Counted, ...]
    by_user: tuple[UserCount, ...]
    idle_by_age: tuple[AgeBucket, ...]
    relievable: int  # idle >= idle_age, not a superuser's (unless the policy allows)
    oldest_idle: tuple[Session, ...]
    data_directory: DataDir | None
    wal_directory: DataDir | None
    auth: AuthFailures | None

    def limit(self, percent: int) -> int | None:
        if self.max_connections is None:
            return None
        return limit_of(self.max_connections, percent, self.reserved_connections or 0)

    def exhausted(self, percent: int) -> bool:
        if self.error_kind == "too_many_connections":
            return True
        limit = self.limit(percent)
        return limit is not None and self.connections is not None and self.connections >= limit

    def all_slots_taken(self) -> bool:
        """Every slot ordinary roles may use is taken (or even the reserved ones)."""
        if self.error_kind == "too_many_connections":
            return True
        if self.max_connections is None or self.connections is None:
            return False
        return self.connections >= self.max_connections - (self.reserved_connections or 0)

    def state_text(self) -> str:
        state = f"{self.unit} {self.active_state}"
        if self.sub_state:
            state += f" ({self.sub_state})"
        return state

    def connections_text(self, percent: int) -> str:
        if self.connections is None or self.max_connections is None:
            if self.error_kind == "too_many_connections":
                return f"{self.name}: no connection slot left, the probe was refused: {self.error}"
            return f"{self.name}: connections unknown ({self.error or 'not asked'})"
        limit = self.limit(percent)
        return (
            f"{self.name}: {self.connections} of max_connections {self.max_connections} "
            f"client connections (near the limit from {limit}, {percent}%; "
            f"{self.reserved_connections} reserved for superusers)"
        )

    def filesystems(self) -> list[DataDir]:
        return [d for d in (self.data_directory, self.wal_directory) if d is not None]


class RedisServer(_Model):
    """One declared Redis service as the probe found it."""

    name: str
    unit: str
    port: int
    active_state: str
    sub_state: str
    result: str
    reachable: bool
    error: str
    auth_required: bool
    version: str | None
    connected_clients: int | None
    maxclients: int | None
    blocked_clients: int | None
    rejected_connections: int | None
    data_directory: DataDir | None

    def exhausted(self, percent: int) -> bool:
        if self.connected_clients is None or not self.maxclients:
            return False
        return self.connected_clients >= limit_of(self.maxclients, percent)

    def clients_text(self) -> str:
        if self.connected_clients is None:
            return f"{self.name}: clients unknown ({self.error or 'not asked'})"
        rejected = (
            f", {self.rejected_connections} connection(s) rejected since start"
            if self.rejected_connections
            else ""
        )
        clients = f"{self.connected_clients} of maxclients {self.maxclients} clients"
        return f"{self.name}: {clients}{rejected}"


class DatabaseThresholds(_Model):
    near_limit_percent: int = Field(ge=1, le=100)
    auth_failures: int = Field(ge=1)
    full_percent: float
    inodes_full_percent: float
