"""Reports of the database workflow and of PostgreSQL connection relief.

``diag.database`` comes from diag_database's one probe task (``diag_database_probe``): per
declared PostgreSQL service, the unit's state, a connection over the local socket as
``postgres`` and a TCP connect, ``max_connections``, the client sessions of
``pg_stat_activity`` (with ``pg_roles.rolsuper``) by state, by user and idle by age, refused
logins in the server's journal and log file, and the data directory's filesystem; per
Redis service, ``PING``, ``INFO clients`` against ``maxclients``, and its data dir.

:meth:`DatabaseDiagnosis.causes` names, rule by rule:

- ``db_connections_exhausted``: a PostgreSQL server's client connections are at or above
  ``near_limit_percent`` of ``max_connections`` (0.85; 0.95 when every slot ordinary roles
  may use is taken, or the probe itself found no slot left), or a Redis server's clients of
  ``maxclients`` (0.85; 0.95 at ``maxclients``). Evidence: the counts, the busiest users,
  the idle sessions old enough to terminate and the oldest idle ones. Implies
  ``db_connection_relief`` when the exhausted server is the one ``veris_postgres`` names
  (the host's opt-in), else escalate. Rules out ``service_restart``: a restart cuts every
  session, active ones too, and is only acceptable as relief's own gated last resort.
- ``db_auth_failures``: at least ``auth_failures`` refused logins (wrong password, no
  pg_hba.conf entry, unknown role) in the log window (0.7; 0.85 from twice that). A burst
  of failed logins is a client with wrong credentials or someone guessing; no fix changes
  either: escalate. It rules nothing out: it does not explain a server that is down or
  full, and must not stop the fix that does.
- ``db_unreachable``: a server cannot be asked (0.95 when its unit is not active, 0.8 when
  it runs but refuses or does not answer): implies ``service_restart``. PostgreSQL that
  answers on its socket but not over TCP (0.6) is a listen_addresses or network matter a
  restart does not change: escalate.
- ``disk_full``: a data directory's filesystem (or pg_wal's) at ``full_percent`` used or
  ``inodes_full_percent`` of its inodes (0.95 at 99% or nothing available, else 0.8). The
  same code the service and general diagnoses use; rules out ``service_restart``;
  escalate.

``db.plan`` (db_connection_relief's check run) lists every client session with whether it
would be terminated and why not; ``db.result`` (its apply run) says what was terminated,
what was skipped and why, and the connections left. The fix is irreversible: no snapshot.

One module for the diagnosis, one for the relief; ``_common`` holds the server as read.
"""

from __future__ import annotations

from ._common import (
    RELIEF,
    RESTART,
    RESTART_PENALTY,
    SHOWN,
    AgeBucket,
    AuthFailures,
    Counted,
    DatabaseThresholds,
    DataDir,
    ErrorKind,
    PostgresServer,
    RedisServer,
    Session,
    UserCount,
    limit_of,
)
from .diagnosis import (
    DatabaseDiagnosis,
)
from .relief import (
    AfterRestart,
    DbPlan,
    DbPolicy,
    DbResult,
    FailedSession,
    PlanSession,
    SkippedSession,
    TerminatedSession,
)

__all__ = [
    "RELIEF",
    "RESTART",
    "RESTART_PENALTY",
    "SHOWN",
    "AfterRestart",
    "AgeBucket",
    "AuthFailures",
    "Counted",
    "DataDir",
    "DatabaseDiagnosis",
    "DatabaseThresholds",
    "DbPlan",
    "DbPolicy",
    "DbResult",
    "ErrorKind",
    "FailedSession",
    "PlanSession",
    "PostgresServer",
    "RedisServer",
    "Session",
    "SkippedSession",
    "TerminatedSession",
    "UserCount",
    "limit_of",
]
