"""Planted secrets never reach anything veris writes or prints, and the state dir is private.

Each test plants fresh, unique secrets where an operator's and a sender's secrets really are,
runs real ``handle`` loops through the CLI against a lab host, then reads every byte of the
state dir (audit log, state database, report.json, the stored payload, every run's
env/extravars, target inventory, ansible-runner artifacts: job_events, stdout, stderr,
status, rc, fetched files) and the CLI's stdout and stderr, looking for each secret as
plain text and in base64 at any alignment.

- **Become password**, used for real: the run's SSH user is an unprivileged ``veris`` whose
  sudo asks for the planted password (no NOPASSWD), so every task of every run has
  Ansible answer sudo's prompt with it.
- **Database password**, live on the feature host: role ``app`` logs in with it, a session
  holds it open, and the server's own log carries it (a failed ``ALTER ROLE … PASSWORD``
  is logged with its statement); the diagnosis reads that log and those sessions. The
  lab's real ``postgres`` password and the app's password are planted as host vars too.
- **Webhook tokens**, in the payload and the environment: an ``authorization: Bearer``
  label, an ``api_token`` label, a ``?token=`` and an ``Authorization: Bearer`` inside
  annotations, and ``VERIS_WEBHOOK_TOKEN`` in the CLI's environment.

Then every directory of the state dir is 0700 and no file in it is readable by group or
others (ansible-runner itself makes ``artifacts/`` 0755 and ``stderr`` 0644).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import EXAMPLES, FIXTURES, CliResult
from tests.integration.conftest import LabHandle

pytestmark = pytest.mark.integration

SUDO_USER = "veris"
PG_UNIT = "postgresql@15-main.service"
DB_RULES = FIXTURES / "rules" / "db-relief.yml"


def _secret(kind: str) -> str:
    return f"planted-{kind}-{secrets.token_hex(12)}"


def _b64_forms(secret: str) -> set[str]:
    """The base64 characters that encode ``secret`` wherever it sits in a longer text."""
    raw = secret.encode()
    forms = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        # Only the characters made of the secret's bits alone, not the padding's.
        inner = encoded[-(-8 * offset // 6) : 8 * (offset + len(raw)) // 6]
        forms |= {inner, inner.replace("+", "-").replace("/", "_")}
    return forms


def _cli(state: Path, *args: str, stdin: str | None = None, env: dict[str, str]) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "veris_remediate", "--state-dir", str(state), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **env},
    )
    return CliResult(proc)


def _sh(lab: LabHandle, host: str, script: str) -> str:
    return lab.ssh(host, "sh", "-c", script).stdout


def _sudo_user(lab: LabHandle, host: str, password: str) -> None:
    """User ``veris`` with the lab's SSH key, whose sudo asks for ``password``."""
    _sh(
        lab,
        host,
        f"set -e; useradd -m -s /bin/sh {SUDO_USER}; "
        f"printf '%s:%s\\n' {SUDO_USER} {shlex.quote(password)} | chpasswd; "
        f"install -d -m 700 -o {SUDO_USER} -g {SUDO_USER} /home/{SUDO_USER}/.ssh; "
        f"install -m 600 -o {SUDO_USER} -g {SUDO_USER} /root/.ssh/authorized_keys "
        f"/home/{SUDO_USER}/.ssh/authorized_keys; "
        f"echo '{SUDO_USER} ALL=(ALL:ALL) ALL' > /etc/sudoers.d/{SUDO_USER}; "
        f"chmod 440 /etc/sudoers.d/{SUDO_USER}; visudo -cf /etc/sudoers.d/{SUDO_USER} >/dev/null",
    )
    # Without the password sudo refuses: the runs below cannot succeed without using it.
    refused = lab.ssh(host, "runuser", "-u", SUDO_USER, "--", "sudo", "-n", "true", check=False)
    assert refused.returncode != 0, "sudo must ask the planted become password"


def _override(tmp_path: Path, host: str, hostvars: dict[str, Any]) -> Path:
    """Host vars given after the lab's inventory (a later source wins)."""
    path = tmp_path / "secrets-inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {host: hostvars}}}))
    return path


def _become(password: str) -> dict[str, Any]:
    return {
        "ansible_user": SUDO_USER,
        "ansible_become": True,
        "ansible_become_method": "sudo",
        "ansible_become_password": password,
    }


def _webhook_secrets() -> dict[str, str]:
    return {kind: _secret(kind) for kind in ("bearer", "label-token", "url-token", "header")}


def _with_webhook_secrets(alert: dict[str, Any], planted: dict[str, str]) -> None:
    """Plant the sender's secrets in one Alertmanager alert (labels and annotations)."""
    alert["labels"]["authorization"] = f"Bearer {planted['bearer']}"
    alert["labels"]["api_token"] = planted["label-token"]
    notes = alert.setdefault("annotations", {})
    notes["summary"] = (
        f"{notes.get('summary', 'alert')}; ack at "
        f"https://hooks.example.test/ack?alert=1&token={planted['url-token']}"
    )
    notes["runbook"] = f'curl -H "Authorization: Bearer {planted["header"]}" https://x.test/'


def _leaks(state: Path, outputs: list[str], planted: dict[str, str]) -> list[str]:
    """Every place a planted secret (or its base64) shows up: 'kind in where: context'."""
    sources: list[tuple[str, bytes]] = [
        (f"CLI output {i}", o.encode()) for i, o in enumerate(outputs)
    ]
    for path in sorted(state.rglob("*")):
        if path.is_file() and not path.is_symlink():
            sources.append((str(path.relative_to(state)), path.read_bytes()))
    assert len(sources) > 20, f"the state dir holds too little to mean anything: {sources}"
    found = []
    for kind, secret in planted.items():
        needles = {secret, *_b64_forms(secret)}
        for where, data in sources:
            for needle in needles:
                at = data.find(needle.encode())
                if at >= 0:
                    context = data[max(0, at - 80) : at + len(needle) + 20]
                    found.append(f"{kind} in {where}: {context!r}")
    return found


def _loose_modes(state: Path) -> list[str]:
    """Anything in the state dir group or others may use; directories that are not 0700."""
    wrong = []
    for path in [state, *state.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if (stat.S_ISDIR(st.st_mode) and mode != 0o700) or mode & 0o077:
            wrong.append(f"{oct(mode)} {path.relative_to(state)}")
    return wrong


def _check_private(state: Path, outputs: list[str], planted: dict[str, str]) -> None:
    runs = sorted((state / "runs").iterdir())
    assert runs, "no run directory was written"
    artifacts = list(state.glob("runs/*/*/*/artifacts"))
    assert artifacts, "no ansible-runner artifacts were written"
    events = list(state.glob("runs/*/*/*/artifacts/*/job_events/*.json"))
    assert len(events) > 20, "the runs left (almost) no job events to search"
    assert not list(state.glob("runs/*/*/*/artifacts/*/command")), "env copies left behind"
    problems = [f"leaked: {leak}" for leak in _leaks(state, outputs, planted)]
    problems += [f"beyond its owner: {entry}" for entry in _loose_modes(state)]
    assert not problems, "\n".join(problems)


def _outputs(*results: CliResult) -> list[str]:
    return [text for r in results for text in (r.stdout, r.stderr)]


@pytest.fixture
def lean_host(lab: LabHandle) -> Iterator[str]:
    """Host 1 of the lean lab, booted clean again afterwards (it gets a sudo user)."""
    name = lab.name(1)
    try:
        yield name
    finally:
        lab.reset(name)


def test_a_resolved_nginx_run_leaks_no_secret(
    tmp_path: Path, lab: LabHandle, lean_host: str
) -> None:
    host = lean_host
    planted = {
        "become": _secret("become"),
        "db-hostvar": _secret("db"),
        "env-token": _secret("env-token"),
        **_webhook_secrets(),
    }
    _sudo_user(lab, host, planted["become"])
    override = _override(
        tmp_path, host, {**_become(planted["become"]), "app_db_password": planted["db-hostvar"]}
    )
    payload = json.loads((EXAMPLES / "alertmanager-nginx-down.json").read_text())
    alert = payload["alerts"][0]
    alert["labels"]["instance"] = f"http://{host}/"
    _with_webhook_secrets(alert, planted)
    lab.ssh(host, "systemctl", "stop", "nginx")

    state = tmp_path / "state"
    env = {"VERIS_WEBHOOK_TOKEN": planted["env-token"]}
    inventory = ["-i", str(lab.inventory), "-i", str(override)]
    handled = _cli(state, "handle", "-", *inventory, "--json", stdin=json.dumps(payload), env=env)

    assert handled.rc == 0, handled.stdout + handled.stderr
    report = handled.json
    assert (report["outcome"], report["remediation"]) == ("resolved", "service_restart")
    assert lab.is_active(host, "nginx") == "active"  # sudo (with the password) did it
    run_id = report["run_id"]
    shown = [
        _cli(state, "report", run_id, "--format", "md", env=env),
        _cli(state, "runs", "show", run_id, env=env),
        _cli(state, "audit", "tail", "-n", "100", "--json", env=env),
    ]
    assert all(r.rc == 0 for r in shown), [r.stderr for r in shown]
    audit = (state / "audit.jsonl").read_text()
    assert '"authorization": "[REDACTED]"' in audit  # the labels were logged, masked
    _check_private(state, _outputs(handled, *shown), planted)


@pytest.fixture
def db_host(feature_lab: LabHandle) -> Iterator[str]:
    name = feature_lab.name(1)
    try:
        yield name
    finally:
        feature_lab.reset(name)


def _psql(lab: LabHandle, host: str, sql: str, *, check: bool = True) -> None:
    command = shlex.join(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c", sql])
    lab.ssh(host, "sh", "-c", f"cd / && {command}", check=check)


def test_database_diagnosis_and_relief_leak_no_secret(
    tmp_path: Path, feature_lab: LabHandle, db_host: str
) -> None:
    host = db_host
    planted = {
        "become": _secret("become"),
        "app-db": _secret("db"),
        "wrong-db": _secret("wrong-db"),
        "postgres-db": feature_lab.lab.postgres_password(),  # the lab's real one
        "env-token": _secret("env-token"),
        **_webhook_secrets(),
    }
    _sudo_user(feature_lab, host, planted["become"])
    # Live on the host: a role logging in with the password, a session holding it open,
    # the server's log carrying it, and refused logins the diagnosis must count.
    _psql(feature_lab, host, f"CREATE ROLE app LOGIN PASSWORD '{planted['app-db']}'")
    _psql(feature_lab, host, f"ALTER ROLE nosuch PASSWORD '{planted['app-db']}'", check=False)
    dsn = "host=127.0.0.1 user=app dbname=postgres sslmode=disable"
    _sh(
        feature_lab,
        host,
        f"systemd-run --quiet --collect --unit=veris-db-secret "
        f"-E PGPASSWORD={planted['app-db']} psql '{dsn} application_name=veris-test-secret' "
        "-c 'select pg_sleep(3600)'; "
        f"for i in 1 2 3 4 5 6; do PGPASSWORD={planted['wrong-db']} psql '{dsn}' -c 'select 1' "
        "2>/dev/null; done; true",
    )
    assert planted["app-db"] in _sh(
        feature_lab, host, "cat /var/log/postgresql/postgresql-15-main.log"
    )
    override = _override(
        tmp_path,
        host,
        {
            **_become(planted["become"]),
            "postgresql_password": planted["postgres-db"],
            "app_db_password": planted["app-db"],
        },
    )
    inventory = ["-i", str(feature_lab.inventory), "-i", str(override), "--rules", str(DB_RULES)]
    state = tmp_path / "state"
    env = {"VERIS_WEBHOOK_TOKEN": planted["env-token"]}

    refused_logins = {
        "alertname": "PostgresqlAuthFailures",
        "host": host,
        "service": "postgresql",
        "severity": "warning",
        "summary": f"failed logins; silence with https://am.test/s?token={planted['url-token']}",
        "labels": {"authorization": f"Bearer {planted['bearer']}"},
        "annotations": {
            "runbook": f'curl -H "Authorization: Bearer {planted["header"]}"',
            "api_token": planted["label-token"],
        },
    }
    auth = _cli(
        state, "handle", "-", *inventory, "--json", stdin=json.dumps(refused_logins), env=env
    )
    assert auth.rc == 4, auth.stdout + auth.stderr  # a diagnosis with no fix escalates
    causes = {c["code"]: c for c in auth.json["causes"]}
    assert "db_auth_failures" in causes, auth.json["causes"]  # it read the server's log
    assert any("users: app x6" in e for e in causes["db_auth_failures"]["evidence"])

    crowded = json.loads((FIXTURES / "payloads" / "db-too-many-connections.json").read_text())
    alert = crowded["alerts"][0]
    alert["labels"]["instance"] = alert["labels"]["instance"].replace("lab1", host)
    _with_webhook_secrets(alert, planted)
    relief = _cli(state, "handle", "-", *inventory, "--json", stdin=json.dumps(crowded), env=env)
    assert relief.rc == 0, relief.stdout + relief.stderr
    assert relief.json["remediation"] == "db_connection_relief"
    assert "check" in [p["name"] for p in relief.json["phases"]]  # the relief role ran
    diagnosed = _cli(
        state, "diagnose", "-", *inventory, "--json", stdin=json.dumps(crowded), env=env
    )
    assert diagnosed.rc == 0, diagnosed.stdout + diagnosed.stderr

    sessions = _sh(
        feature_lab,
        host,
        "cd / && runuser -u postgres -- psql -XAtq -c "
        "\"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'veris-test-secret'\"",
    )
    assert sessions.strip() == "1"  # the session with the password was there all along
    _check_private(state, _outputs(auth, relief, diagnosed), planted)
