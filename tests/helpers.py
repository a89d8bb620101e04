"""Test helpers: fixture paths, and the CLI run the way a user runs it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from veris_remediate.store import Approval

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).parent.parent / "examples" / "alerts"


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def run_cli(
    state_dir: Path, *args: str, stdin: str | None = None, cwd: Path | None = None
) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "veris_remediate", "--state-dir", str(state_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )
    return CliResult(proc)


def role_module(role: str, name: str, *, kind: str = "library", as_name: str = "") -> ModuleType:
    """A Python file of a role (``library/`` or ``module_utils/``), imported for testing.

    ``as_name`` also registers it in sys.modules under that name, the way Ansible ships a
    role's module_utils (``ansible.module_utils.<name>``) to the modules importing it.
    """
    from veris_remediate.resources import roles_dir

    path = roles_dir() / role / kind / f"{name}.py"
    spec = importlib.util.spec_from_file_location(as_name or name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if as_name:
        sys.modules[as_name] = module
    spec.loader.exec_module(module)
    return module


def nginx_down_group(hosts: Sequence[str], summaries: Mapping[str, str] | None = None) -> str:
    """One Alertmanager group (webhook JSON): nginx's HTTP probe failing on each of
    ``hosts``, each alert's fingerprint derived from its host; ``summaries`` replaces the
    summary annotation of some hosts' alerts."""
    summaries = summaries or {}
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "HttpProbeFailed", "instance": f"http://{h}/",
                       "job": "blackbox-http", "severity": "critical", "service": "nginx"},
            "annotations": {"summary": summaries.get(h, f"HTTP probe of http://{h}/ failing")},
            "startsAt": "2026-11-29T12:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": hashlib.sha256(h.encode()).hexdigest()[:16],
        }
        for h in hosts
    ]  # fmt: skip
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="HttpProbeFailed"}',
            "status": "firing",
            "receiver": "veris-remediate",
            "groupLabels": {"alertname": "HttpProbeFailed"},
            "commonLabels": {"alertname": "HttpProbeFailed", "service": "nginx"},
            "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "alerts": alerts,
        }
    )


def pending_approval(host: str = "lab1") -> Approval:
    """An approval waiting for a person about the example nginx alert on ``host``, for an
    hour from now."""
    created = datetime.now(UTC)
    return Approval(
        id="20261129T120000Z-abcdef", run_id="20261129T120000Z-abcdef", slot=f"0-{host}",
        host=host, fix="service_restart", alert="HttpProbeFailed", state="pending",
        reasons=("low confidence",), preview=(), digest="0" * 64, created=created,
        expires=created + timedelta(hours=1),
    )  # fmt: skip
