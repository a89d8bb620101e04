#!/usr/bin/python
# Copyright: veris-remediate contributors; Apache-2.0
"""Terminate idle PostgreSQL sessions older than a declared age, predicting exactly which.

Runs on the managed host. A session is identified by (pid, backend_start): PIDs are reused,
and a PID the check run listed that now belongs to a new session is never touched. The
termination re-checks every condition in the same statement that signals the backend
(still idle, still that old, still not a superuser's), so a session that became active or
changed since the preview is left alone.
"""

DOCUMENTATION = r"""
---
module: veris_pg_terminate
short_description: Terminate idle PostgreSQL sessions older than a declared age, exactly as previewed
description:
  - Connects over the local socket as the C(postgres) role (the module forks a child that
    drops to the cluster owner's uid for peer authentication; psycopg2) and reads
    C(max_connections) and every client session of C(pg_stat_activity) joined with
    C(pg_roles.rolsuper) (its own connection excluded).
  - A session is eligible when its state is C(idle), C(now() - state_change) is at least
    O(idle_age) seconds, and its role is not a superuser (unless O(terminate_superuser)).
    Active sessions, C(idle in transaction) ones and younger idle ones never are.
  - In check mode it returns the plan (every session, which would be terminated and why
    not the others, whether terminating is enough to bring connections below
    O(near_limit_percent) of C(max_connections), whether the last-resort restart would
    follow) and touches nothing; it predicts C(changed) with a C(diff) listing the sessions
    when connections are at the limit and terminating is enough (or the restart may
    follow).
  - For real it terminates only the sessions of O(plan) (the check run's list of pid and
    C(backend_start_us)); without a plan, the eligible ones it has just read, on the same
    condition as check mode predicts a change. Each is terminated with
    C(pg_terminate_backend) only if, in that same statement, it still has the same
    C(backend_start), is idle, old enough and not a superuser's; then it waits for them to
    exit (O(terminate_wait)), reads the sessions again and reports what was terminated,
    skipped (and why), still alive, and the connections left.
  - With O(measure_only) it only reads (after a restart).
options:
  unit:
    description: The systemd unit of the PostgreSQL server (finds the Debian cluster).
    type: str
    required: true
  port:
    description: The server's port (declared), used when no cluster matches the unit.
    type: int
  policy_service:
    description: Whether the routed service is the one veris_postgres names; false reads nothing.
    type: bool
    default: true
  idle_age:
    description: Seconds a session must have been idle to be terminated.
    type: int
    required: true
  near_limit_percent:
    description: Connections at or above this percent of max_connections are the problem.
    type: int
    default: 90
  terminate_superuser:
    description: Whether superusers' idle sessions may be terminated too.
    type: bool
    default: false
  restart_last_resort:
    description: Whether the plan may end with a restart when terminating is not enough.
    type: bool
    default: false
  plan:
    description:
      - Real runs - the sessions to terminate, each C(pid) and C(backend_start_us)
        (C(backend_start) in microseconds since the epoch).
    type: list
    elements: dict
  measure_only:
    description: Only read the server (after a restart); never terminates.
    type: bool
    default: false
  sessions_max:
    description: Sessions listed at most (eligible ones first, oldest first).
    type: int
    default: 1000
  connect_timeout:
    description: Seconds a connection may take.
    type: int
    default: 5
  terminate_wait:
    description: Seconds to wait for the terminated backends to exit.
    type: int
    default: 5
  connect_retries:
    description: With O(measure_only), connection attempts one second apart (a server starting).
    type: int
    default: 15
author: veris-remediate
"""

EXAMPLES = r"""
- name: Terminate idle sessions older than 10 minutes
  veris_pg_terminate:
    unit: postgresql@15-main.service
    idle_age: 600
"""

RETURN = r"""
plan:
  description: The db.plan report without its kind (see veris_remediate/role_reports/database.py).
  returned: always
  type: dict
result:
  description: Real runs - what was terminated, skipped, failed, and the connections left.
  returned: when not check mode
  type: dict
"""

import json
import math
import os
import pwd
import re
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

POSTGRES_PORT = 5432
UNIT_INSTANCE = re.compile(r"postgresql@(?P<version>[0-9]+)-(?P<cluster>[^.]+)\.service")
CHILD_OUTPUT_MAX = 16 * 1024 * 1024

SESSIONS_SQL = """
SELECT a.pid, a.usename, a.datname, host(a.client_addr), a.application_name, a.state,
       a.backend_start::text, (EXTRACT(EPOCH FROM a.backend_start) * 1000000)::bigint,
       EXTRACT(EPOCH FROM now() - a.state_change)::float8, COALESCE(r.rolsuper, false)
  FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
 WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
 ORDER BY a.state_change NULLS LAST, a.pid
"""

# A session is (pid, backend_start); backend_start travels as integer microseconds since
# the epoch, exact, and no YAML loader on the way takes an integer for anything else.
BACKEND_START_US = "(EXTRACT(EPOCH FROM a.backend_start) * 1000000)::bigint"
# One statement per listed session: it is signalled only if, as this statement sees it,
# it is the same session (pid and backend_start), idle, old enough and allowed.
TERMINATE_SQL = """
SELECT a.pid IS NOT NULL, a.state, EXTRACT(EPOCH FROM now() - a.state_change)::float8,
       COALESCE(r.rolsuper, false),
       CASE WHEN a.pid IS NOT NULL AND a.state = 'idle'
                 AND now() - a.state_change >= make_interval(secs => %(idle_age)s)
                 AND (NOT COALESCE(r.rolsuper, false) OR %(superuser)s)
            THEN pg_terminate_backend(a.pid) END
  FROM (SELECT 1) one
  LEFT JOIN pg_stat_activity a
         ON a.pid = %(pid)s AND {start} = %(start_us)s
        AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
  LEFT JOIN pg_roles r ON r.oid = a.usesysid
""".format(start=BACKEND_START_US)
ALIVE_SQL = "SELECT a.pid, {start} FROM pg_stat_activity a WHERE a.pid = ANY(%(pids)s)".format(
    start=BACKEND_START_US
)


def one_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def as_user(uid, gid, work):
    """Run ``work()`` in a child that dropped to ``uid``/``gid`` (peer authentication)."""
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


def cluster_for(unit, port):
    """Socket dir, port and owner of the Debian cluster behind ``unit`` (pg_lsclusters)."""
    try:
        done = subprocess.run(
            ["pg_lsclusters", "--json"], capture_output=True, text=True, timeout=15, check=False
        )
        found = json.loads(done.stdout) if done.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        found = []
    match = UNIT_INSTANCE.fullmatch(unit or "")
    chosen = None
    for cluster in found if isinstance(found, list) else []:
        key = (str(cluster.get("version")), cluster.get("cluster"))
        if match and key == (match["version"], match["cluster"]):
            chosen = cluster
            break
        if chosen is None and port is not None and str(cluster.get("port")) == str(port):
            chosen = cluster
    if chosen is None:
        return "/var/run/postgresql", port or POSTGRES_PORT, None
    return chosen.get("socketdir") or "/var/run/postgresql", int(chosen["port"]), chosen.get(
        "owneruid"
    )


def connect(socket_dir, port, timeout):
    import psycopg2  # python3-psycopg2 on the host

    conn = psycopg2.connect(
        host=socket_dir,
        port=port,
        user="postgres",
        dbname="postgres",
        connect_timeout=timeout,
        application_name="veris-db-connection-relief",
        options="-c DateStyle=ISO -c TimeZone=UTC -c statement_timeout=30000",
    )
    conn.set_session(autocommit=True)
    return conn


def read_state(cur):
    cur.execute(
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int,"
        " COALESCE(NULLIF(current_setting('reserved_connections', true), ''), '0')::int"
    )
    max_connections, su_reserved, reserved = cur.fetchone()
    cur.execute(SESSIONS_SQL)
    sessions = [
        {
            "pid": r[0],
            "user": r[1] or "",
            "database": r[2] or "",
            "client_addr": r[3],
            "application_name": (r[4] or "")[:64],
            "state": r[5] or "unknown",
            "backend_start": r[6],
            "backend_start_us": int(r[7]),
            "state_age_seconds": round(r[8], 1) if r[8] is not None else None,
            "superuser": bool(r[9]),
        }
        for r in cur.fetchall()
    ]
    return {
        "max_connections": max_connections,
        "reserved_connections": su_reserved + reserved,
        "sessions": sessions,
    }


def terminate(cur, targets, idle_age, superuser, wait_seconds):
    """Signal each target that is still the same eligible session, then wait for them to go.

    Each check-and-signal is one statement of its own (autocommit: a fresh view of
    pg_stat_activity each time). Signalling all first and then waiting keeps a run with many
    sessions short.
    """
    outcomes = []
    for target in targets:
        cur.execute(
            TERMINATE_SQL,
            {
                "pid": int(target["pid"]),
                "start_us": int(target["backend_start_us"]),
                "idle_age": float(idle_age),
                "superuser": bool(superuser),
            },
        )
        found, state, age, is_super, signalled = cur.fetchone()
        outcomes.append(
            {
                "pid": int(target["pid"]),
                "backend_start_us": int(target["backend_start_us"]),
                "found": bool(found),
                "state": state,
                "age": age,
                "superuser": bool(is_super),
                "signalled": signalled,
            }
        )
    pending = {(o["pid"], o["backend_start_us"]) for o in outcomes if o["signalled"]}
    deadline = time.monotonic() + wait_seconds
    while pending and time.monotonic() < deadline:
        cur.execute(ALIVE_SQL, {"pids": sorted(pid for pid, _ in pending)})
        alive = {(row[0], int(row[1])) for row in cur.fetchall()}
        pending &= alive
        if pending:
            time.sleep(0.05)
    return outcomes


def work_read(socket_dir, port, timeout, retries):
    def work():
        last = None
        for attempt in range(max(retries, 1)):
            try:
                conn = connect(socket_dir, port, timeout)
            except Exception as exc:  # noqa: BLE001 - psycopg2.OperationalError and kin
                last = exc
                if attempt + 1 < retries:
                    time.sleep(1)
                continue
            try:
                return {"before": read_state(conn.cursor())}
            finally:
                conn.close()
        raise last

    return work


def work_terminate(socket_dir, port, timeout, targets, params):
    idle_age, superuser = params["idle_age"], params["terminate_superuser"]
    wait_seconds = params["terminate_wait"]

    def work():
        conn = connect(socket_dir, port, timeout)
        try:
            cur = conn.cursor()
            before = read_state(cur)
            chosen = targets
            if chosen is None:  # no plan: what this run reads, as a check run would plan it
                plan = build_plan(params, before, "", False)
                chosen = [s for s in plan["sessions"] if s["terminate"]] if acts(plan) else []
            outcomes = terminate(cur, chosen, idle_age, superuser, wait_seconds)
            after = read_state(cur)
            return {"before": before, "outcomes": outcomes, "after": after}
        finally:
            conn.close()

    return work


def eligibility(session, idle_age, superuser):
    """(terminate?, why not) for one session."""
    if session["state"] != "idle":
        return False, "%s, not idle" % session["state"]
    age = session["state_age_seconds"]
    if age is None or age < idle_age:
        return False, "idle %ss, younger than %ds" % ("?" if age is None else int(age), idle_age)
    if session["superuser"] and not superuser:
        return False, "a superuser's session"
    return True, ""


def limit_of(max_connections, percent, reserved):
    """The count that is "near the limit": percent of max_connections, rounded up, but never
    above the slots ordinary roles may use (max_connections less the reserved ones): when
    those are all taken, clients are already refused."""
    return min(int(math.ceil(max_connections * percent / 100.0)), max_connections - reserved)


def build_plan(params, read, error, too_many):
    base = {
        "service": params["service"],
        "unit": params["unit"],
        "postgres_service": params["policy_service"],
        "policy": {
            "idle_age": params["idle_age"],
            "near_limit_percent": params["near_limit_percent"],
            "terminate_superuser": params["terminate_superuser"],
            "restart_last_resort": params["restart_last_resort"],
        },
        "reachable": read is not None,
        "error": error,
        "too_many_connections": too_many,
        "max_connections": None,
        "reserved_connections": None,
        "connections": None,
        "limit": None,
        "sessions": [],
        "sessions_truncated": False,
        "after": None,
        "restart": False,
        "restart_reason": "",
    }
    restart_ok = params["restart_last_resort"] and params["policy_service"]
    if read is None:
        if too_many and restart_ok:
            base["restart"] = True
            base["restart_reason"] = (
                "no connection slot is left, not even a superuser's: sessions cannot be "
                "terminated, so the last resort, a restart, is the only relief"
            )
        return base
    sessions = []
    for s in read["sessions"]:
        ok, why = eligibility(s, params["idle_age"], params["terminate_superuser"])
        sessions.append({**s, "terminate": ok, "why": why})
    # Eligible first (oldest first), then the others: the list is bounded, the plan never.
    sessions.sort(key=lambda s: (not s["terminate"], -(s["state_age_seconds"] or 0), s["pid"]))
    listed = sessions[: params["sessions_max"]]
    limit = limit_of(
        read["max_connections"], params["near_limit_percent"], read["reserved_connections"]
    )
    connections = len(read["sessions"])
    after = connections - sum(1 for s in listed if s["terminate"])
    base.update(
        {
            "max_connections": read["max_connections"],
            "reserved_connections": read["reserved_connections"],
            "connections": connections,
            "limit": limit,
            "sessions": listed,
            "sessions_truncated": len(sessions) > len(listed),
            "after": after,
        }
    )
    if connections >= limit and after >= limit and restart_ok:
        base["restart"] = True
        base["restart_reason"] = (
            "terminating the %d eligible idle session(s) would leave %d connections, still "
            "at or above %d (%d%% of max_connections %d, at most the unreserved slots): the last resort, a restart, follows "
            "if the count is still that high after terminating"
            % (connections - after, after, limit, params["near_limit_percent"],
               read["max_connections"])
        )  # fmt: skip
    return base


def acts(plan):
    """Whether the plan would change anything: near the limit, and terminating is enough
    or the last-resort restart may follow (else a person decides; nothing is touched)."""
    if plan["connections"] is None or plan["connections"] < plan["limit"]:
        return False
    return plan["after"] < plan["limit"] or plan["restart"]


def session_line(s):
    who = "%s@%s" % (s["user"] or "?", s["database"] or "?")
    where = " from %s" % s["client_addr"] if s["client_addr"] else " (local socket)"
    age = s["state_age_seconds"]
    return "pid %d %s%s, %s %ss (backend_start %s)" % (
        s["pid"], who, where, s["state"], "?" if age is None else int(age), s["backend_start"]
    )  # fmt: skip


def diff_of(plan):
    doomed = [s for s in plan["sessions"] if s["terminate"]]
    before = "".join(session_line(s) + "\n" for s in doomed)
    after = ""
    if plan["restart"]:
        after = "restart %s (last resort): every session is cut\n" % plan["unit"]
    return {
        "before": before,
        "after": after,
        "before_header": "sessions terminated (%d)" % len(doomed),
        "after_header": "after",
    }


def main():
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "default": "postgresql"},
            "unit": {"type": "str", "required": True},
            "port": {"type": "int"},
            "policy_service": {"type": "bool", "default": True},
            "idle_age": {"type": "int", "required": True},
            "near_limit_percent": {"type": "int", "default": 90},
            "terminate_superuser": {"type": "bool", "default": False},
            "restart_last_resort": {"type": "bool", "default": False},
            "plan": {"type": "list", "elements": "dict"},
            "measure_only": {"type": "bool", "default": False},
            "sessions_max": {"type": "int", "default": 1000},
            "connect_timeout": {"type": "int", "default": 5},
            "terminate_wait": {"type": "int", "default": 5},
            "connect_retries": {"type": "int", "default": 15},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["idle_age"] < 1 or not 1 <= p["near_limit_percent"] <= 100:
        module.fail_json(msg="idle_age must be >= 1 and near_limit_percent 1-100")
    if not p["policy_service"]:
        module.exit_json(changed=False, plan=build_plan(p, None, "not the veris_postgres service", False))
    socket_dir, port, owner = cluster_for(p["unit"], p["port"])
    try:
        user = pwd.getpwuid(owner) if owner is not None else pwd.getpwnam("postgres")
    except KeyError:
        module.exit_json(changed=False, plan=build_plan(p, None, "no postgres user on the host", False))
    real = not module.check_mode and not p["measure_only"]
    if real:
        targets = None
        if p["plan"] is not None:
            targets = [t for t in p["plan"] if "pid" in t and "backend_start_us" in t]
        work = work_terminate(socket_dir, port, p["connect_timeout"], targets, p)
    else:
        retries = p["connect_retries"] if p["measure_only"] else 1
        work = work_read(socket_dir, port, p["connect_timeout"], retries)
    done = as_user(user.pw_uid, user.pw_gid, work)
    if not done.get("ok"):
        error = done.get("error", "")
        if "No module named 'psycopg2'" in error:
            error = "python3-psycopg2 is not installed on the host: cannot ask the server"
        too_many = "too many clients" in error or "remaining connection slots" in error
        plan = build_plan(p, None, error, too_many)
        if real:
            result = outcome(p, plan, None, error)
            module.exit_json(changed=False, plan=plan, result=result)
        module.exit_json(changed=False, plan=plan)
    value = done["value"]
    plan = build_plan(p, value["before"], "", False)
    if module.check_mode:
        doomed = [s for s in plan["sessions"] if s["terminate"]] if acts(plan) else []
        extra = {"diff": diff_of(plan)} if doomed else {}
        module.exit_json(changed=bool(doomed), plan=plan, **extra)
    if p["measure_only"]:
        module.exit_json(changed=False, plan=plan)
    result = outcome(p, plan, value, "")
    module.exit_json(changed=bool(result["terminated"]), plan=plan, result=result)


def outcome(p, plan, value, error):
    """The result of a real run: per listed session what happened, and what is left."""
    result = {
        "reachable": value is not None,
        "error": error,
        "terminated": [],
        "skipped": [],
        "failed": [],
        "still_alive": [],
        "others_ended": [],
        "others_kept": 0,
        "max_connections": None,
        "connections": None,
        "limit": None,
        "still_near_limit": plan["too_many_connections"],
    }
    if value is None:
        return result
    before = {(s["pid"], s["backend_start_us"]): s for s in value["before"]["sessions"]}
    after = {(s["pid"], s["backend_start_us"]): s for s in value["after"]["sessions"]}
    chosen = set()
    for o in value["outcomes"]:
        key = (o["pid"], o["backend_start_us"])
        chosen.add(key)
        seen = before.get(key)
        if o["signalled"] is True:
            entry = dict(seen) if seen else {"pid": o["pid"], "backend_start_us": o["backend_start_us"]}
            result["terminated"].append(normal(entry))
            if key in after:
                result["still_alive"].append(o["pid"])
        elif o["signalled"] is False:
            result["failed"].append({"pid": o["pid"], "error": "pg_terminate_backend returned false"})
        elif not o["found"]:
            result["skipped"].append(
                {"pid": o["pid"], "reason": "gone, or the pid now belongs to another session"}
            )
        else:
            why = eligibility(
                {"state": o["state"] or "unknown", "state_age_seconds": o["age"],
                 "superuser": o["superuser"]},
                p["idle_age"], p["terminate_superuser"],
            )[1]  # fmt: skip
            result["skipped"].append({"pid": o["pid"], "reason": why or "no longer eligible"})
    for key in before:
        if key in chosen:
            continue
        if key in after:
            result["others_kept"] += 1
        else:
            result["others_ended"].append(key[0])
    limit = limit_of(
        value["after"]["max_connections"], p["near_limit_percent"],
        value["after"]["reserved_connections"],
    )  # fmt: skip
    result["max_connections"] = value["after"]["max_connections"]
    result["connections"] = len(value["after"]["sessions"])
    result["limit"] = limit
    result["still_near_limit"] = result["connections"] >= limit
    return result


def normal(s):
    return {
        "pid": s["pid"],
        "user": s.get("user", ""),
        "database": s.get("database", ""),
        "client_addr": s.get("client_addr"),
        "state_age_seconds": s.get("state_age_seconds"),
        "backend_start": s.get("backend_start", ""),
        "backend_start_us": s["backend_start_us"],
    }


if __name__ == "__main__":
    main()
