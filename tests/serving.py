"""``veris-remediate serve`` as a user runs it: a real process on a loopback port.

    with ServeProcess(state_dir, inventory, token=token) as serve:
        status, answer = serve.post(body)
        entry = serve.wait_for_entry(lambda e: e.status == "done")

The process runs the installed CLI (``python -m veris_remediate``) with its own state dir;
its stderr goes to ``<state_dir>/../serve-<port>.log``, quoted in every failure message.
Leaving the ``with`` block stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from veris_remediate.store import QueueEntry, StateStore

HOST = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def write_token(path: Path, token: str) -> Path:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token + "\n")
    return path


def alertmanager_payload(
    instance: str,
    *,
    status: str = "firing",
    fingerprint: str = "5e3f0a7c2b1d4e6f",
    starts_at: str = "2026-11-29T12:00:00.000Z",
    service: str = "nginx",
) -> bytes:
    """An Alertmanager v4 webhook with one HttpProbeFailed alert, as Alertmanager sends it."""
    labels = {
        "alertname": "HttpProbeFailed",
        "instance": instance,
        "job": "blackbox-http",
        "severity": "critical",
        "service": service,
    }
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="HttpProbeFailed"}',
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "veris",
            "groupLabels": {"alertname": "HttpProbeFailed", "instance": instance},
            "commonLabels": labels,
            "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:19093",
            "alerts": [
                {
                    "status": status,
                    "labels": labels,
                    "annotations": {"summary": f"HTTP probe of {instance} failing"},
                    "startsAt": starts_at,
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://127.0.0.1:19090/graph",
                    "fingerprint": fingerprint,
                }
            ],
        }
    ).encode()


class ServeProcess:
    def __init__(
        self,
        state_dir: Path,
        inventory: Path,
        *,
        token: str | None,
        port: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.inventory = inventory
        self.token = token
        self.port = port or free_port()
        self.args = list(args)
        self.env = dict(env or {})
        self.log_path = state_dir.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token_file = state_dir.parent / f"serve-{self.port}.token"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def alerts_url(self) -> str:
        return f"{self.url}/alerts"

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "veris_remediate", "--state-dir", str(self.state_dir),
            "serve", "-i", str(self.inventory), "--listen", f"{HOST}:{self.port}", *self.args,
        ]  # fmt: skip
        if self.token is not None:
            argv += ["--token-file", str(write_token(self.token_file, self.token))]
        return argv

    # -- life cycle -------------------------------------------------------------------

    def start(self, timeout: float = 60) -> ServeProcess:
        env = {**os.environ, **self.env}
        env.pop("VERIS_SERVE_TOKEN", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer /healthz in {timeout}s:\n{self.log()}")
            time.sleep(0.2)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 150) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        assert proc is not None
        proc.kill()
        proc.wait()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])
        except OSError:
            return "(no log)"

    # -- HTTP -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        timeout: float = 10,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, headers=all_headers, method=method)
        try:
            with _OPENER.open(req, timeout=timeout) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def post(
        self, body: bytes, *, token: str | None = "default", **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        """POST /alerts with the serve token (``token=None``: none; a string: that one)."""
        use = self.token if token == "default" else token
        status, data, _ = self.request("POST", "/alerts", body, token=use, **kwargs)
        return status, json.loads(data) if data else {}

    def get(self, path: str, *, token: str | None = None) -> tuple[int, bytes]:
        status, data, _ = self.request("GET", path, token=token)
        return status, data

    def metrics(self) -> str:
        status, data = self.get("/metrics", token=self.token)
        assert status == 200, (status, data)
        return data.decode()

    # -- state ------------------------------------------------------------------------

    def entries(self) -> list[QueueEntry]:
        url = self.env.get("VERIS_STATE_URL") or os.environ.get("VERIS_STATE_URL")
        store = StateStore(self.state_dir, url=url)
        try:
            return store.queue_entries()
        finally:
            store.close()

    def wait_for_entry(
        self, predicate: Callable[[QueueEntry], bool], timeout: float = 120, what: str = ""
    ) -> QueueEntry:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.entries() if predicate(e)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                summary = [(e.id, e.incident, e.status, e.outcome, e.error) for e in self.entries()]
                raise AssertionError(
                    f"no queue entry {what} within {timeout}s: {summary}\n{self.log()}"
                )
            time.sleep(0.5)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def audited(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.audit() if r["kind"] == kind]
