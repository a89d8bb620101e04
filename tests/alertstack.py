"""The real alerting stack on loopback: Prometheus, blackbox exporter, Alertmanager.

Debian's packages (``prometheus prometheus-alertmanager prometheus-blackbox-exporter``),
each started with our own configuration and data directory under ``workdir``, listening on
127.0.0.1 only. Prometheus probes the given lab URLs through the blackbox exporter, fires
``HttpProbeFailed`` two seconds after a probe fails, and Alertmanager posts the group, with
``Authorization: Bearer <token>``, to ``webhook_url``: ``veris-remediate serve``.

    with AlertStack(tmp_path, ["http://198.18.1.2/"], token, serve.url) as stack:
        stack.wait_for_deliveries(1)     # Alertmanager's own count of webhooks it sent

Nothing but loopback and the lab range 198.18.0.0/15 is ever contacted. Leaving the
``with`` block stops every daemon (SIGTERM, then SIGKILL), on success and on failure
alike; the daemons also get SIGKILL if this process dies abruptly.

For the demo: ``python -m tests.alertstack --target URL --webhook URL --token-file F``
runs the stack until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

__all__ = ["ALERT_NAME", "AlertStack", "AlertStackError"]

ALERT_NAME = "HttpProbeFailed"
JOB = "blackbox-http"
HOST = "127.0.0.1"
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
DEFAULT_PORTS = (19090, 19093, 19115)  # prometheus, alertmanager, blackbox exporter
PR_SET_PDEATHSIG = 1

# Never a proxy: every URL we open is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AlertStackError(RuntimeError):
    """The stack could not start, or no matching webhook arrived in time."""


def _check_target(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"target {url!r} is not an http(s) URL")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise ValueError(f"target {url!r} must name an IP address, not a host name") from None
    if not (address.is_loopback or address in LAB_NETWORK):
        raise ValueError(f"target {url!r} is neither loopback nor a lab address (198.18.0.0/15)")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the thread that started it goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


class _Daemon:
    def __init__(self, name: str, argv: list[str], log: Path, ready_url: str) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.ready_url = ready_url
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self) -> None:
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (no other thread runs yet)
        )

    def wait_ready(self, deadline: float) -> None:
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AlertStackError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            try:
                with _OPENER.open(self.ready_url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AlertStackError(
                    f"{self.name} did not answer {self.ready_url} in time:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def log_tail(self) -> str:
        return _tail(self.log)


class AlertStack:
    """Prometheus + blackbox exporter + Alertmanager on 127.0.0.1, posting to ``webhook_url``.

    ``ports`` are (prometheus, alertmanager, blackbox exporter); None picks free ones.
    """

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        token: str,
        webhook_url: str,
        *,
        ports: tuple[int, int, int] | None = DEFAULT_PORTS,
    ) -> None:
        if not targets:
            raise ValueError("at least one target URL is needed")
        if not token or any(c.isspace() for c in token):
            raise ValueError("the token must be non-empty and without whitespace")
        for target in targets:
            _check_target(target)
        hook = urllib.parse.urlsplit(webhook_url)
        if hook.scheme != "http" or hook.hostname not in (HOST, "::1", "localhost"):
            raise ValueError(f"webhook {webhook_url!r} must be an http URL on loopback")
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.token = token
        self.webhook_url = webhook_url
        chosen = ports or (_free_port(), _free_port(), _free_port())
        self.prometheus_port, self.alertmanager_port, self.blackbox_port = chosen
        self.ready_at: float | None = None  # time.monotonic() when __enter__ finished
        self._daemons: list[_Daemon] = []

    # -- configuration ------------------------------------------------------------

    def write_configs(self) -> None:
        """blackbox.yml, prometheus.yml, rules.yml and alertmanager.yml, in workdir."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        blackbox = {
            "modules": {
                "http_2xx": {
                    "prober": "http",
                    "timeout": "2s",
                    "http": {"preferred_ip_protocol": "ip4", "ip_protocol_fallback": False},
                }
            }
        }
        rules = {
            "groups": [
                {
                    "name": "veris-lab",
                    "interval": "1s",
                    "rules": [
                        {
                            "alert": ALERT_NAME,
                            "expr": f'probe_success{{job="{JOB}"}} == 0',
                            "for": "2s",
                            "labels": {"severity": "critical", "service": "nginx"},
                            "annotations": {
                                "summary": "HTTP probe of {{ $labels.instance }} failing"
                            },
                        }
                    ],
                }
            ]
        }
        prometheus = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.workdir / "rules.yml")],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [f"{HOST}:{self.alertmanager_port}"]}]}
                ]
            },
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/probe",
                    "params": {"module": ["http_2xx"]},
                    "static_configs": [{"targets": self.targets}],
                    "relabel_configs": [
                        {"source_labels": ["__address__"], "target_label": "__param_target"},
                        {"source_labels": ["__param_target"], "target_label": "instance"},
                        {
                            "target_label": "__address__",
                            "replacement": f"{HOST}:{self.blackbox_port}",
                        },
                    ],
                }
            ],
        }
        alertmanager = {
            "route": {
                "receiver": "veris",
                "group_by": ["alertname", "instance"],
                "group_wait": "1s",
                "group_interval": "5s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "veris",
                    "webhook_configs": [
                        {
                            "url": self.webhook_url,
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {
                                    "type": "Bearer",
                                    "credentials_file": str(self.workdir / "webhook-token"),
                                }
                            },
                        }
                    ],
                }
            ],
        }
        self._write("blackbox.yml", blackbox)
        self._write("rules.yml", rules)
        self._write("prometheus.yml", prometheus)
        self._write("alertmanager.yml", alertmanager)
        token_file = self.workdir / "webhook-token"
        token_file.touch(mode=0o600)
        token_file.chmod(0o600)
        token_file.write_text(self.token)

    def _write(self, name: str, data: dict[str, Any], mode: int = 0o644) -> None:
        path = self.workdir / name
        path.touch(mode=mode)
        path.chmod(mode)
        path.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))

    def _argvs(self) -> list[tuple[str, list[str], str]]:
        w = self.workdir
        prom = f"{HOST}:{self.prometheus_port}"
        am = f"{HOST}:{self.alertmanager_port}"
        bb = f"{HOST}:{self.blackbox_port}"
        return [
            (
                "blackbox",
                [
                    "prometheus-blackbox-exporter",
                    f"--config.file={w / 'blackbox.yml'}",
                    f"--web.listen-address={bb}",
                ],
                f"http://{bb}/",
            ),
            (
                "alertmanager",
                [
                    "prometheus-alertmanager",
                    f"--config.file={w / 'alertmanager.yml'}",
                    f"--storage.path={w / 'alertmanager-data'}",
                    f"--web.listen-address={am}",
                    f"--web.external-url=http://{am}",
                    "--cluster.listen-address=",  # no gossip: nothing leaves loopback
                ],
                f"http://{am}/-/ready",
            ),
            (
                "prometheus",
                [
                    "prometheus",
                    f"--config.file={w / 'prometheus.yml'}",
                    f"--storage.tsdb.path={w / 'prometheus-data'}",
                    f"--web.listen-address={prom}",
                    f"--web.external-url=http://{prom}",
                ],
                f"http://{prom}/-/ready",
            ),
        ]

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> AlertStack:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _start(self) -> None:
        ports = (self.prometheus_port, self.alertmanager_port, self.blackbox_port)
        # A stale daemon on one of our ports would answer the readiness check for us.
        busy = [p for p in ports if not _port_is_free(p)]
        if busy:
            raise AlertStackError(f"port(s) {busy} on {HOST} already in use: stale stack?")
        self.write_configs()
        for name, argv, ready_url in self._argvs():
            daemon = _Daemon(name, argv, self.workdir / f"{name}.log", ready_url)
            self._daemons.append(daemon)
            (self.workdir / f"{name}-data").mkdir(exist_ok=True)
            daemon.start()
        deadline = time.monotonic() + READY_TIMEOUT
        for daemon in self._daemons:
            daemon.wait_ready(deadline)
        self.ready_at = time.monotonic()

    def _stop(self) -> None:
        errors: list[BaseException] = []
        for daemon in reversed(self._daemons):
            try:
                daemon.stop()
            except BaseException as exc:  # stop the others whatever happens
                errors.append(exc)
        self._daemons = []
        if errors:
            raise errors[0]

    # -- what Alertmanager did ------------------------------------------------------

    def deliveries(self) -> tuple[int, int]:
        """(webhooks Alertmanager sent, of which failed): its own counters."""
        url = f"http://{HOST}:{self.alertmanager_port}/metrics"
        with _OPENER.open(url, timeout=5) as response:
            text = response.read().decode()
        counts = {"total": 0, "failed": 0}
        for line in text.splitlines():
            for kind in counts:
                prefix = f"alertmanager_notifications_{'failed_' if kind == 'failed' else ''}total"
                if line.startswith(prefix + "{") and 'integration="webhook"' in line:
                    counts[kind] += int(float(line.rsplit(" ", 1)[1]))
        return counts["total"], counts["failed"]

    def active_alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds right now (its v2 API)."""
        url = f"http://{HOST}:{self.alertmanager_port}/api/v2/alerts?active=true"
        with _OPENER.open(url, timeout=5) as response:
            data: list[dict[str, Any]] = json.loads(response.read())
        return data

    def wait_for_deliveries(self, count: int, timeout: float = 60) -> None:
        """Until Alertmanager has sent ``count`` webhooks that did not fail."""
        deadline = time.monotonic() + timeout
        while True:
            total, failed = self.deliveries()
            if total - failed >= count:
                return
            if time.monotonic() > deadline:
                raise AlertStackError(
                    f"Alertmanager sent {total} webhook(s), {failed} failed, within "
                    f"{timeout:g}s; wanted {count} delivered"
                )
            time.sleep(0.5)

    def log_tails(self) -> str:
        """The end of each daemon's log, for a failure message."""
        names = ("blackbox", "alertmanager", "prometheus")
        return "\n".join(f"--- {n}.log\n{_tail(self.workdir / f'{n}.log')}" for n in names)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# -- demo -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.alertstack",
        description="Run the real alerting stack against lab URLs, posting to a webhook "
        "(veris-remediate serve), until SIGTERM or Ctrl-C.",
    )
    parser.add_argument(
        "--target", action="append", required=True, help="URL to probe (repeatable)"
    )
    parser.add_argument("--webhook", required=True, help="where Alertmanager posts")
    parser.add_argument("--token-file", type=Path, required=True, help="the bearer token")
    parser.add_argument("--workdir", type=Path, help="configs, data and logs (default: temp)")
    args = parser.parse_args(argv)

    # SIGTERM unwinds like Ctrl-C, so the daemons are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    token = args.token_file.read_text().strip()
    with tempfile.TemporaryDirectory(prefix="alertstack-") as tmp:
        workdir = args.workdir or Path(tmp)
        try:
            with AlertStack(workdir, args.target, token, args.webhook) as stack:
                print(
                    f"alerting stack ready: Prometheus :{stack.prometheus_port}, Alertmanager "
                    f":{stack.alertmanager_port}, blackbox :{stack.blackbox_port} -> "
                    f"{args.webhook}",
                    flush=True,
                )
                while True:
                    time.sleep(3600)
        except (AlertStackError, ValueError) as exc:
            print(f"alertstack: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
