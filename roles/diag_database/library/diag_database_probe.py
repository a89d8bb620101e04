#!/usr/bin/python
# Copyright: veris-remediate contributors; Apache-2.0
"""Read-only probe of the host's PostgreSQL and Redis servers in one task (diag_database)."""

DOCUMENTATION = r"""
---
module: diag_database_probe
short_description: Read PostgreSQL and Redis reachability, connections, idle sessions, auth failures and data dir space (changes nothing)
description:
  - PostgreSQL, for every declared service that is one (the veris_postgres service, port
    5432, or a C(postgresql*) unit, never a container) - the unit's state (C(systemctl
    show)); the Debian cluster behind the unit (C(pg_lsclusters --json)); a connection over
    the local socket as the C(postgres) role (the module forks a child that drops to the
    cluster owner's uid for peer authentication; psycopg2); a TCP connect to the declared
    port; C(max_connections) and the reserved slots; every client session of
    C(pg_stat_activity) joined with C(pg_roles.rolsuper) (this probe's own excluded) by
    state, by user and idle sessions by age (C(now() - state_change)); C(statvfs) of
    C(data_directory) (and of C(pg_wal) when it is on another filesystem); failed logins in
    the server's log of the last O(window_minutes) - the unit's journal (C(journalctl -u UNIT
    -o json)) and the log file the server writes (C(pg_current_logfile()) for jsonlog and
    csvlog, whose C(state_code) 28P01/28000 is matched; else the stderr log the cluster is
    started with, from C(pg_lsclusters), whose C(FATAL) lines are matched in the server's
    English messages).
  - Redis, for every declared service that is one (port 6379 or a C(redis*) unit) - a
    RESP C(PING), C(INFO clients) and C(INFO stats) over TCP to the declared port, and
    C(CONFIG GET maxclients) and C(dir) when permitted; C(statvfs) of the data dir.
  - Never changes anything, in check mode or not. Secrets are never read.
options:
  services:
    description: Declared services (C(name), C(unit), C(port), C(container)).
    type: list
    elements: dict
    default: []
  postgres_policy:
    description: The host's veris_postgres (or null); names the PostgreSQL service and its idle age.
    type: dict
  window_minutes:
    description: How far back the logs are read for failed logins.
    type: int
    default: 15
  sessions_max:
    description: Idle sessions listed at most (oldest first); the counts cover all.
    type: int
    default: 20
  log_bytes_max:
    description: Bytes read at most from the end of a log file.
    type: int
    default: 4194304
  journal_max:
    description: Journal entries read at most per unit.
    type: int
    default: 20000
  connect_timeout:
    description: Seconds a connection may take.
    type: int
    default: 5
  thresholds:
    description: The role's thresholds, returned in the report unchanged (numbers only).
    type: dict
    default: {}
author: veris-remediate
"""

EXAMPLES = r"""
- name: Read the host's databases
  diag_database_probe:
    services: [{name: postgresql, unit: postgresql@15-main.service, port: 5432}]
  register: probe
"""

RETURN = r"""
report:
  description: The diag.database report without its kind (see veris_remediate/role_reports/database.py).
  returned: always
  type: dict
"""

import csv
import io
import json
import os
import pwd
import re
import socket
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

POSTGRES_PORT = 5432
REDIS_PORT = 6379
DEFAULT_IDLE_AGE = 600  # veris_postgres.idle_age's default (inventory.py)
AGE_BUCKETS = (60, 300, 900, 3600)  # idle sessions counted by age: <1m, <5m, <15m, <1h, more
AUTH_STATES = ("28P01", "28000")  # invalid_password, invalid_authorization_specification
# PostgreSQL's own FATAL lines for a refused login (lc_messages English: Debian's default).
AUTH_LINE = re.compile(
    r"FATAL:\s+(?:"
    r"(?P<method>[A-Za-z-]+) authentication failed for user \"(?P<user>[^\"]*)\""
    r"|no pg_hba\.conf entry for host \"(?P<host>[^\"]*)\", user \"(?P<user2>[^\"]*)\""
    r"|role \"(?P<user3>[^\"]*)\" does not exist)"
)
UNIT_INSTANCE = re.compile(r"postgresql@(?P<version>[0-9]+)-(?P<cluster>[^.]+)\.service")
SHOWN_SAMPLES = 5
# The child's output travels through a pipe; a report this big would be a bug.
CHILD_OUTPUT_MAX = 16 * 1024 * 1024


def run(argv, timeout=15):
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def unit_state(unit):
    rc, out, _ = run(["systemctl", "show", unit, "--property=ActiveState,SubState,Result"])
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {
        "active_state": props.get("ActiveState", "unknown") if rc == 0 else "unknown",
        "sub_state": props.get("SubState", ""),
        "result": props.get("Result", ""),
    }


def filesystem(path):
    """Usage of the filesystem holding ``path`` (as df counts it), or None."""
    if not path:
        return None
    try:
        real = os.path.realpath(path)
        vfs = os.statvfs(real)
        dev = os.stat(real).st_dev
    except OSError:
        return None
    mount = real
    while mount != "/":
        parent = os.path.dirname(mount)
        try:
            if os.stat(parent).st_dev != dev:
                break
        except OSError:
            break
        mount = parent
    used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    avail = vfs.f_bavail * vfs.f_frsize
    inodes_used = vfs.f_files - vfs.f_ffree
    inodes_total = inodes_used + vfs.f_favail
    return {
        "path": path,
        "mountpoint": mount,
        "size_bytes": vfs.f_blocks * vfs.f_frsize,
        "used_bytes": used,
        "avail_bytes": avail,
        "used_percent": round(used * 100.0 / (used + avail), 1) if used + avail else 0.0,
        "inodes_used_percent": round(inodes_used * 100.0 / inodes_total, 1)
        if inodes_total
        else None,
    }


def tcp_connect(address, port, timeout):
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, exc.strerror or str(exc)


# --- PostgreSQL ----------------------------------------------------------------------------


def as_user(uid, gid, work):
    """Run ``work()`` in a child that dropped to ``uid``/``gid``; its JSON result, or an error.

    Peer authentication over the local socket needs the cluster owner's uid; the rest of the
    probe (journal, statvfs) keeps root's.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into Ansible's code
        status = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.chdir("/")
            out = {"ok": True, "value": work()}
        except BaseException as exc:  # noqa: BLE001 - everything goes back as data
            out = {"ok": False, "error": one_line(exc)}
        try:
            with os.fdopen(wfd, "wb") as fh:
                fh.write(json.dumps(out).encode("utf-8"))
        except BaseException:  # noqa: BLE001
            status = 1
        os._exit(status)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        data = fh.read(CHILD_OUTPUT_MAX)
    os.waitpid(pid, 0)
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return {"ok": False, "error": "the connection helper returned nothing"}


def one_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


SESSIONS_SQL = """
SELECT a.pid, a.usename, a.datname, host(a.client_addr), a.application_name, a.state,
       a.backend_start::text, (EXTRACT(EPOCH FROM a.backend_start) * 1000000)::bigint,
       EXTRACT(EPOCH FROM now() - a.state_change)::float8, COALESCE(r.rolsuper, false)
  FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
 WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
 ORDER BY a.state_change NULLS LAST, a.pid
"""


def pg_read(socket_dir, port, timeout, window_minutes):
    """Runs as the cluster owner: settings, sessions, log locations, the log window."""
    import psycopg2  # python3-psycopg2 on the host

    conn = psycopg2.connect(
        host=socket_dir,
        port=port,
        user="postgres",
        dbname="postgres",
        connect_timeout=timeout,
        application_name="veris-diag-database",
        options="-c DateStyle=ISO -c TimeZone=UTC -c statement_timeout=10000",
    )
    try:
        conn.set_session(readonly=True, autocommit=True)
        cur = conn.cursor()
        cur.execute(
            "SELECT current_setting('server_version'), current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int,"
            " current_setting('reserved_connections', true),"
            " current_setting('data_directory'), current_setting('listen_addresses'),"
            " current_setting('log_destination'), current_setting('logging_collector'),"
            " to_char((now() - make_interval(mins => %s))"
            "  AT TIME ZONE current_setting('log_timezone'), 'YYYY-MM-DD HH24:MI:SS')",
            (window_minutes,),
        )
        row = cur.fetchone()
        settings = {
            "server_version": row[0],
            "max_connections": row[1],
            "superuser_reserved_connections": row[2],
            "reserved_connections": int(row[3]) if row[3] not in (None, "") else 0,
            "data_directory": row[4],
            "listen_addresses": row[5],
            "log_destination": row[6],
            "logging_collector": row[7] == "on",
            "log_cutoff": row[8],
        }
        logs = {}
        if settings["logging_collector"]:
            for fmt in ("jsonlog", "csvlog", "stderr"):
                try:
                    cur.execute("SELECT pg_current_logfile(%s)", (fmt,))
                    logs[fmt] = cur.fetchone()[0]
                except psycopg2.Error:
                    logs[fmt] = None
        cur.execute(SESSIONS_SQL)
        sessions = [
            {
                "pid": r[0],
                "user": r[1] or "",
                "database": r[2] or "",
                "client_addr": r[3],
                "application_name": r[4] or "",
                "state": r[5] or "unknown",
                "backend_start": r[6],
                "backend_start_us": int(r[7]),
                "state_age_seconds": round(r[8], 1) if r[8] is not None else None,
                "superuser": bool(r[9]),
            }
            for r in cur.fetchall()
        ]
        return {"settings": settings, "logs": logs, "sessions": sessions}
    finally:
        conn.close()


def clusters():
    """pg_lsclusters --json (Debian's postgresql-common), or [] where there is none."""
    rc, out, _ = run(["pg_lsclusters", "--json"])
    if rc != 0:
        return []
    try:
        found = json.loads(out)
    except ValueError:
        return []
    return found if isinstance(found, list) else []


def cluster_for(service, found):
    match = UNIT_INSTANCE.fullmatch(service.get("unit") or "")
    for cluster in found:
        if match and (str(cluster.get("version")), cluster.get("cluster")) == (
            match["version"],
            match["cluster"],
        ):
            return cluster
    port = service.get("port")
    for cluster in found:
        if port is not None and str(cluster.get("port")) == str(port):
            return cluster
    return None


def auth_failure(text):
    """(user, client host or None) of one refused login line, or None."""
    m = AUTH_LINE.search(text)
    if m is None:
        return None
    return m["user"] or m["user2"] or m["user3"] or "", m["host"]


class AuthCount:
    def __init__(self):
        self.total = 0
        self.users = {}
        self.hosts = {}
        self.first = None
        self.last = None
        self.samples = []
        self.sources = []
        self.unreadable = []

    def add(self, user, host, when, text):
        self.total += 1
        self.users[user] = self.users.get(user, 0) + 1
        if host:
            self.hosts[host] = self.hosts.get(host, 0) + 1
        if when:
            self.first = when if self.first is None else min(self.first, when)
            self.last = when if self.last is None else max(self.last, when)
        if len(self.samples) < SHOWN_SAMPLES:
            self.samples.append(text.strip()[:300])

    def report(self, window_minutes):
        return {
            "window_minutes": window_minutes,
            "sources": self.sources,
            "unreadable": self.unreadable,
            "failures": self.total,
            "by_user": [
                {"name": k, "count": v}
                for k, v in sorted(self.users.items(), key=lambda kv: (-kv[1], kv[0]))
            ][:10],
            "by_host": [
                {"name": k, "count": v}
                for k, v in sorted(self.hosts.items(), key=lambda kv: (-kv[1], kv[0]))
            ][:10],
            "first": self.first,
            "last": self.last,
            "samples": self.samples,
        }


def read_tail(path, limit):
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - limit))
        data = fh.read(limit)
    text = data.decode("utf-8", "replace")
    if size > limit:
        text = text.split("\n", 1)[-1]  # the first line is cut: drop it
    return text


def read_journal(unit, window_minutes, limit, count):
    rc, out, err = run(
        ["journalctl", "--no-pager", "-o", "json", "-u", unit, "--since",
         "-%dmin" % window_minutes, "-n", str(limit)],
        timeout=30,
    )  # fmt: skip
    if rc != 0:
        count.unreadable.append("journal of %s: %s" % (unit, err.strip()[:200]))
        return
    count.sources.append("journal:%s" % unit)
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald sends non-UTF-8 text as bytes
            message = bytes(b & 0xFF for b in message if isinstance(b, int)).decode(
                "utf-8", "replace"
            )
        if not isinstance(message, str):
            continue
        hit = auth_failure(message)
        if hit is not None:
            when = entry.get("__REALTIME_TIMESTAMP")
            stamp = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(when) / 1e6)) + " UTC"
                if when
                else None
            )
            count.add(hit[0], hit[1], stamp, message)


def read_text_log(path, cutoff, limit, count):
    """The stderr log: lines whose leading timestamp (%m/%t) is at or after ``cutoff``."""
    try:
        text = read_tail(path, limit)
    except OSError as exc:
        count.unreadable.append("%s: %s" % (path, exc.strerror))
        return
    count.sources.append("log:%s" % path)
    for line in text.splitlines():
        stamp = line[:19]
        if len(stamp) < 19 or not stamp[:4].isdigit() or stamp < cutoff:
            continue
        hit = auth_failure(line)
        if hit is not None:
            count.add(hit[0], hit[1], line[:23], line)


def read_json_log(path, cutoff, limit, count):
    try:
        text = read_tail(path, limit)
    except OSError as exc:
        count.unreadable.append("%s: %s" % (path, exc.strerror))
        return
    count.sources.append("jsonlog:%s" % path)
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        stamp = str(entry.get("timestamp", ""))
        if stamp[:19] < cutoff or entry.get("state_code") not in AUTH_STATES:
            continue
        host = entry.get("remote_host")
        count.add(entry.get("user") or "", host, stamp[:23], str(entry.get("message", "")))


def read_csv_log(path, cutoff, limit, count):
    try:
        text = read_tail(path, limit)
    except OSError as exc:
        count.unreadable.append("%s: %s" % (path, exc.strerror))
        return
    count.sources.append("csvlog:%s" % path)
    # csvlog columns: log_time, user_name, database_name, process_id, connection_from,
    # session_id, session_line_num, command_tag, session_start_time, virtual_transaction_id,
    # transaction_id, error_severity, sql_state_code, message, ...
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 14 or row[0][:19] < cutoff or row[12] not in AUTH_STATES:
            continue
        host = row[4].rsplit(":", 1)[0] if row[4] else None
        count.add(row[1], host, row[0][:23], row[13])


def idle_by_age(sessions):
    bounds = list(AGE_BUCKETS)
    counts = [0] * (len(bounds) + 1)
    for s in sessions:
        if s["state"] != "idle" or s["state_age_seconds"] is None:
            continue
        index = next((i for i, b in enumerate(bounds) if s["state_age_seconds"] < b), len(bounds))
        counts[index] += 1
    out = []
    low = 0
    for i, n in enumerate(counts):
        high = bounds[i] if i < len(bounds) else None
        out.append({"min_seconds": low, "max_seconds": high, "count": n})
        low = high or low
    return out


def grouped(sessions, key):
    counts = {}
    for s in sessions:
        k = key(s)
        counts[k] = counts.get(k, 0) + 1
    return counts


def tcp_target(listen_addresses):
    """An address the server should answer TCP on, from listen_addresses (None: no TCP)."""
    if listen_addresses is None:
        return "127.0.0.1"
    parts = [p.strip() for p in listen_addresses.split(",") if p.strip()]
    if not parts:
        return None
    if any(p in ("*", "0.0.0.0", "localhost", "127.0.0.1") for p in parts):
        return "127.0.0.1"
    if "::" in parts or "::1" in parts:
        return "::1"
    return parts[0]


def probe_postgres(service, policy, found, params):
    unit = service.get("unit") or "%s.service" % service["name"]
    cluster = cluster_for(service, found)
    port = service.get("port") or (int(cluster["port"]) if cluster else POSTGRES_PORT)
    socket_dir = (cluster or {}).get("socketdir") or "/var/run/postgresql"
    owner = (cluster or {}).get("owneruid")
    idle_age = policy.get("idle_age") if policy is not None else None
    out = {
        "name": service["name"],
        "unit": unit,
        "port": port,
        "policy": policy is not None and policy.get("service", "postgresql") == service["name"],
        "idle_age": idle_age if idle_age is not None else DEFAULT_IDLE_AGE,
        **unit_state(unit),
        "cluster": "%s/%s" % (cluster["version"], cluster["cluster"]) if cluster else None,
        "reachable": False,
        "error": "",
        "error_kind": "none",
        "tcp_address": None,
        "tcp_ok": None,
        "tcp_error": "",
        "server_version": None,
        "max_connections": None,
        "reserved_connections": None,
        "connections": None,
        "by_state": [],
        "by_user": [],
        "idle_by_age": [],
        "relievable": 0,
        "oldest_idle": [],
        "data_directory": None,
        "wal_directory": None,
        "auth": None,
    }
    try:
        user = pwd.getpwuid(owner) if owner is not None else pwd.getpwnam("postgres")
    except KeyError:
        out["error"] = "no postgres user on the host"
        out["error_kind"] = "probe"
        user = None
    read = None
    if user is not None:
        read = as_user(
            user.pw_uid,
            user.pw_gid,
            lambda: pg_read(socket_dir, port, params["connect_timeout"], params["window_minutes"]),
        )
        if read.get("ok"):
            out["reachable"] = True
        else:
            error = read.get("error", "")
            out["error_kind"] = "connect"
            if "No module named 'psycopg2'" in error:
                error = "python3-psycopg2 is not installed on the host: cannot ask the server"
                out["error_kind"] = "probe"
            elif "too many clients" in error or "remaining connection slots" in error:
                # 53300: every slot is taken, even the superusers' reserved ones.
                out["error_kind"] = "too_many_connections"
            out["error"] = error
    settings = read["value"]["settings"] if out["reachable"] else {}
    address = tcp_target(settings.get("listen_addresses") if settings else None)
    if address is not None:
        out["tcp_address"] = address
        out["tcp_ok"], out["tcp_error"] = tcp_connect(address, port, params["connect_timeout"])
    data_dir = settings.get("data_directory") or (cluster or {}).get("pgdata")
    out["data_directory"] = filesystem(data_dir)
    if data_dir:
        wal = filesystem(os.path.join(data_dir, "pg_wal"))
        if wal and out["data_directory"] and wal["mountpoint"] != out["data_directory"]["mountpoint"]:
            out["wal_directory"] = wal
    if out["reachable"]:
        sessions = read["value"]["sessions"]
        out["server_version"] = settings["server_version"]
        out["max_connections"] = settings["max_connections"]
        out["reserved_connections"] = (
            settings["superuser_reserved_connections"] + settings["reserved_connections"]
        )
        out["connections"] = len(sessions)
        out["by_state"] = [
            {"name": k, "count": v}
            for k, v in sorted(grouped(sessions, lambda s: s["state"]).items())
        ]
        users = grouped(sessions, lambda s: (s["user"], s["superuser"]))
        out["by_user"] = [
            {"name": k[0], "superuser": k[1], "count": v}
            for k, v in sorted(users.items(), key=lambda kv: (-kv[1], kv[0]))
        ][:20]
        out["idle_by_age"] = idle_by_age(sessions)
        idle = [s for s in sessions if s["state"] == "idle" and s["state_age_seconds"] is not None]
        idle.sort(key=lambda s: -s["state_age_seconds"])
        # What connection relief may terminate: idle that long, and not a superuser's
        # unless veris_postgres says so.
        superusers = bool((policy or {}).get("terminate_superuser")) and out["policy"]
        out["relievable"] = sum(
            1
            for s in idle
            if s["state_age_seconds"] >= out["idle_age"] and (superusers or not s["superuser"])
        )
        out["oldest_idle"] = idle[: params["sessions_max"]]
    logs = read["value"]["logs"] if out["reachable"] else {}
    out["auth"] = auth_failures(unit, settings, logs, cluster, data_dir, params)
    return out


def auth_failures(unit, settings, logs, cluster, data_dir, params):
    count = AuthCount()
    window = params["window_minutes"]
    read_journal(unit, window, params["journal_max"], count)
    cutoff = settings.get("log_cutoff") or time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime(time.time() - window * 60)
    )
    limit = params["log_bytes_max"]

    def located(path):
        return path if not path or path.startswith("/") else os.path.join(data_dir or "/", path)

    if logs.get("jsonlog"):
        read_json_log(located(logs["jsonlog"]), cutoff, limit, count)
    elif logs.get("csvlog"):
        read_csv_log(located(logs["csvlog"]), cutoff, limit, count)
    elif logs.get("stderr"):
        read_text_log(located(logs["stderr"]), cutoff, limit, count)
    elif cluster and cluster.get("logfile"):
        read_text_log(cluster["logfile"], cutoff, limit, count)
    return count.report(window)


# --- Redis ---------------------------------------------------------------------------------


class Resp:
    """Just enough RESP2 to send commands and read simple, error, integer, bulk and array replies."""

    def __init__(self, sock):
        self.fh = sock.makefile("rb")
        self.sock = sock

    def call(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        self.sock.sendall(b"".join(parts))
        return self.read()

    def read(self):
        line = self.fh.readline(65536)
        if not line.endswith(b"\r\n"):
            raise OSError("connection closed")
        kind, body = line[:1], line[1:-2].decode("utf-8", "replace")
        if kind == b"+":
            return body
        if kind == b"-":
            return RespError(body)
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            if n < 0:
                return None
            data = self.fh.read(n + 2)
            return data[:-2].decode("utf-8", "replace")
        if kind == b"*":
            n = int(body)
            return [self.read() for _ in range(max(n, 0))]
        raise OSError("not a Redis reply")


class RespError(str):
    pass


def info_fields(text):
    fields = {}
    for line in (text or "").splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def probe_redis(service, params):
    unit = service.get("unit") or "%s.service" % service["name"]
    port = service.get("port") or REDIS_PORT
    out = {
        "name": service["name"],
        "unit": unit,
        "port": port,
        **unit_state(unit),
        "reachable": False,
        "error": "",
        "auth_required": False,
        "version": None,
        "connected_clients": None,
        "maxclients": None,
        "blocked_clients": None,
        "rejected_connections": None,
        "data_directory": None,
    }
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=params["connect_timeout"])
    except OSError as exc:
        out["error"] = "cannot connect to 127.0.0.1:%d: %s" % (port, exc.strerror or exc)
        return out
    try:
        resp = Resp(sock)
        pong = resp.call("PING")
        if isinstance(pong, RespError):
            if pong.startswith("NOAUTH"):
                out["reachable"] = True
                out["auth_required"] = True
                out["error"] = "Redis answers but requires AUTH: clients not counted"
            else:
                out["error"] = "PING answered %s" % pong[:200]
            return out
        out["reachable"] = pong == "PONG"
        if not out["reachable"]:
            out["error"] = "PING answered %r" % str(pong)[:100]
            return out
        clients = info_fields(resp.call("INFO", "clients"))
        stats = info_fields(resp.call("INFO", "stats"))
        server = info_fields(resp.call("INFO", "server"))
        out["version"] = server.get("redis_version")
        out["connected_clients"] = as_int(clients.get("connected_clients"))
        out["blocked_clients"] = as_int(clients.get("blocked_clients"))
        out["rejected_connections"] = as_int(stats.get("rejected_connections"))
        out["maxclients"] = as_int(clients.get("maxclients"))
        if out["maxclients"] is None:  # INFO carries it from Redis 7 on
            reply = resp.call("CONFIG", "GET", "maxclients")
            if isinstance(reply, list) and len(reply) == 2:
                out["maxclients"] = as_int(reply[1])
        reply = resp.call("CONFIG", "GET", "dir")
        if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], str):
            out["data_directory"] = filesystem(reply[1])
    except OSError as exc:
        out["reachable"] = False
        out["error"] = "Redis conversation failed: %s" % (exc.strerror or exc)
    finally:
        sock.close()
    return out


# --- selection -----------------------------------------------------------------------------


def is_postgres(service, policy):
    if service.get("container"):
        return False
    if policy and policy.get("service", "postgresql") == service.get("name"):
        return True
    unit = service.get("unit") or ""
    return service.get("port") == POSTGRES_PORT or unit.startswith("postgresql")


def is_redis(service):
    if service.get("container"):
        return False
    unit = service.get("unit") or ""
    return service.get("port") == REDIS_PORT or unit.startswith("redis")


def main():
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "dict", "default": []},
            "postgres_policy": {"type": "dict"},
            "window_minutes": {"type": "int", "default": 15},
            "sessions_max": {"type": "int", "default": 20},
            "log_bytes_max": {"type": "int", "default": 4 * 1024 * 1024},
            "journal_max": {"type": "int", "default": 20000},
            "connect_timeout": {"type": "int", "default": 5},
            "thresholds": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    policy = params["postgres_policy"]
    services = [s for s in params["services"] if isinstance(s, dict) and s.get("name")]
    pg_services = [s for s in services if is_postgres(s, policy)]
    redis_services = [s for s in services if not is_postgres(s, policy) and is_redis(s)]
    found = clusters() if pg_services else []
    report = {
        "postgres_policy_declared": policy is not None,
        "postgres": [probe_postgres(s, policy, found, params) for s in pg_services],
        "redis": [probe_redis(s, params) for s in redis_services],
        "thresholds": params["thresholds"],
    }
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
