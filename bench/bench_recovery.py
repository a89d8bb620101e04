"""Fault → recovered with the real alerting stack: `serve` vs a receiver that only restarts.

Two lab hosts, each probed by its own copy of the real stack (Debian's Prometheus,
blackbox exporter and Alertmanager on loopback; 1 s scrape and evaluation, ``for: 2s``,
``group_wait: 1s``, tests/alertstack.py):

- veris: host 1's Alertmanager posts to ``veris-remediate serve`` (the product: queue,
  check run, decision, apply run, verify);
- restart-only: host 2's Alertmanager posts to a tiny receiver inside this bench that
  answers 200 and runs ``ssh HOST systemctl restart nginx`` for each firing alert.

Each fault stops nginx over SSH; the bench polls the host's HTTP port every 50 ms until it
answers again (recovered). Sides alternate which goes first; a host is faulted again only
35 s after its ``resolved`` notification, so that Alertmanager has dropped the empty
alert group and a new fault waits ``group_wait`` (1 s), not ``group_interval`` (5 s).
Prints the medians of both sides and their ratio, and where the time goes: the probe
failing (Prometheus's samples), the alert firing (its ``ALERTS`` series), the webhook
arriving (serve: the queue row's ``received``), the claim, the run's phases, recovered,
the run finished. Needs root (lab) and the three Debian packages.

    .venv/bin/python bench/bench_recovery.py --faults 5 [--prefix rc --first-subnet 70]

The serve side runs with the restart-storm breaker's cooldown off and its open threshold
out of reach: faulting one host every ~40 s is exactly the storm the breaker exists to
stop, and that is not what is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.alertstack import AlertStack  # noqa: E402
from tests.serving import ServeProcess  # noqa: E402
from veris_remediate.lab import Lab  # noqa: E402
from veris_remediate.store import QueueEntry, StateStore  # noqa: E402

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
REGROUP_SECONDS = 35.0  # Alertmanager drops an empty alert group within 30 s
POLL = 0.05
SERVE_ENV = {
    "VERIS_BREAKER_COOLDOWN_SECONDS": "0",
    "VERIS_BREAKER_OPEN_AFTER": "1000",
}


def _wall(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def _get_json(url: str) -> Any:
    with _OPENER.open(url, timeout=5) as response:
        return json.loads(response.read())


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# -- the restart-only receiver ------------------------------------------------------------------


@dataclass
class Restart:
    posted: float
    instance: str
    done: float = 0.0
    rc: int = -1


class RestartOnly:
    """Alertmanager's webhook → ``ssh HOST systemctl restart nginx``, nothing else."""

    def __init__(self, token: str, hosts: dict[str, list[str]]) -> None:
        self.token = token
        self.hosts = hosts  # instance URL → ssh argv prefix
        self.restarts: list[Restart] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                posted = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                self.send_response(200)
                self.end_headers()
                for alert in json.loads(body).get("alerts", []):
                    instance = alert.get("labels", {}).get("instance", "")
                    if alert.get("status") == "firing" and instance in outer.hosts:
                        restart = Restart(posted, instance)
                        with outer._lock:
                            outer.restarts.append(restart)
                        threading.Thread(target=outer._restart, args=(restart,)).start()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _restart(self, restart: Restart) -> None:
        argv = [*self.hosts[restart.instance], "systemctl restart nginx"]
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        restart.rc, restart.done = done.returncode, time.time()

    def since(self, t: float) -> list[Restart]:
        with self._lock:
            return [r for r in self.restarts if r.posted >= t]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- one fault -----------------------------------------------------------------------------------


@dataclass
class Trial:
    side: str
    fault: float
    marks: dict[str, float] = field(default_factory=dict)  # seconds after the fault
    phases: list[tuple[str, float]] = field(default_factory=list)
    outcome: str = ""

    @property
    def recovered(self) -> float:
        return self.marks["recovered"]


class Side:
    def __init__(self, name: str, lab: Lab, host: str, address: str, stack: AlertStack) -> None:
        self.name = name
        self.host = host
        self.target = f"http://{address}/"
        self.ssh = lab.ssh_argv(host)
        self.stack = stack
        self.ready_at = 0.0

    def prometheus(self, query: str) -> list[tuple[float, str]]:
        """Raw samples of a range-vector selector (one series)."""
        url = f"http://127.0.0.1:{self.stack.prometheus_port}/api/v1/query?" + (
            urllib.parse.urlencode({"query": query})
        )
        result = _get_json(url)["data"]["result"]
        return [(float(ts), value) for ts, value in result[0]["values"]] if result else []

    def prometheus_marks(self, fault: float) -> dict[str, float]:
        marks: dict[str, float] = {}
        inst = f'instance="{self.target}"'
        for ts, value in self.prometheus(f"probe_success{{{inst}}}[3m]"):
            if ts >= fault and value == "0":
                marks["probe failed"] = ts - fault
                break
        for state, name in (("pending", "alert pending"), ("firing", "alert firing")):
            query = f'ALERTS{{alertname="HttpProbeFailed",alertstate="{state}",{inst}}}[3m]'
            for ts, _ in self.prometheus(query):
                if ts >= fault:
                    marks[name] = ts - fault
                    break
        return marks

    def quiet(self) -> bool:
        """nginx answers, and Alertmanager holds no alert for this host."""
        active = [
            a for a in self.stack.active_alerts() if a["labels"].get("instance") == self.target
        ]
        return not active and _answers(self.target)

    def fault(self, timeout: float = 120) -> Trial:
        wait = self.ready_at - time.time()
        if wait > 0:
            time.sleep(wait)
        _until(self.quiet, 120, f"{self.host} healthy and no alert active")
        delivered = self.stack.deliveries()[0]
        subprocess.run([*self.ssh, "systemctl stop nginx"], check=True, timeout=60)
        trial = Trial(self.name, time.time())
        while not _answers(self.target):
            if time.time() - trial.fault > timeout:
                raise RuntimeError(f"{self.name}: {self.host} not recovered in {timeout}s")
            time.sleep(POLL)
        trial.marks["recovered"] = time.time() - trial.fault
        return self.finish(trial, delivered)

    def finish(self, trial: Trial, delivered: int) -> Trial:
        # The resolved notification, then the time Alertmanager needs to drop the group.
        _until(lambda: self.quiet() and self.stack.deliveries()[0] >= delivered + 2, 90,
               f"{self.host}: the resolved notification")  # fmt: skip
        self.ready_at = time.time() + REGROUP_SECONDS
        trial.marks.update(self.prometheus_marks(trial.fault))
        return trial


class VerisSide(Side):
    def __init__(self, *args: Any, serve: ServeProcess) -> None:
        super().__init__(*args)
        self.serve = serve

    def _row(self, fault: float) -> QueueEntry | None:
        store = StateStore(self.serve.state_dir)
        try:
            rows = [e for e in store.queue_entries() if e.received.timestamp() >= fault - 1]
        finally:
            store.close()
        return rows[-1] if rows else None

    def finish(self, trial: Trial, delivered: int) -> Trial:
        _until(lambda: (r := self._row(trial.fault)) is not None and r.finished is not None,
               120, f"{self.host}: the run finished")  # fmt: skip
        row = self._row(trial.fault)
        assert row is not None
        for name, when in (("webhook received", row.received), ("claimed", row.started),
                           ("run finished", row.finished)):  # fmt: skip
            if when is not None:
                trial.marks[name] = when.timestamp() - trial.fault
        trial.outcome = row.outcome or row.status
        report = self.serve.state_dir / "runs" / str(row.run_id) / "report.json"
        if report.exists():
            data = json.loads(report.read_text())
            trial.phases = [(p["name"], p["seconds"]) for p in data["phases"]]
            started = _wall(data["started_at"])
            if started is not None:
                trial.marks["run started"] = at = started - trial.fault
                for name, seconds in trial.phases:  # the phases run one after another
                    at += seconds
                    if name in ("check", "apply"):
                        trial.marks[f"{name} run done"] = at
        return super().finish(trial, delivered)


class RestartSide(Side):
    def __init__(self, *args: Any, receiver: RestartOnly) -> None:
        super().__init__(*args)
        self.receiver = receiver

    def finish(self, trial: Trial, delivered: int) -> Trial:
        _until(lambda: any(r.done for r in self.receiver.since(trial.fault)), 60,
               f"{self.host}: the restart")  # fmt: skip
        first = self.receiver.since(trial.fault)[0]
        trial.marks["webhook received"] = first.posted - trial.fault
        trial.marks["restart done"] = first.done - trial.fault
        trial.outcome = "restarted" if first.rc == 0 else f"ssh rc {first.rc}"
        return super().finish(trial, delivered)


def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise RuntimeError(f"no {what} within {timeout}s")
        time.sleep(0.2)


# -- report -------------------------------------------------------------------------------------

MARKS = ("probe failed", "alert pending", "alert firing", "webhook received", "claimed",
         "run started", "check run done", "restart done", "recovered", "apply run done",
         "run finished")  # fmt: skip


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f}" if values else "     -"


def report(trials: list[Trial]) -> dict[str, Any]:
    sides = ["veris", "restart-only"]
    by = {s: [t for t in trials if t.side == s] for s in sides}
    rec = {s: [t.recovered for t in by[s]] for s in sides}
    med = {s: statistics.median(rec[s]) for s in sides}
    print(f"\nfault → recovered, {len(rec['veris'])} faults per side (seconds):")
    for s in sides:
        values = " ".join(f"{v:.2f}" for v in rec[s])
        print(f"  {s:13s} median {med[s]:6.2f}  min {min(rec[s]):6.2f}  max {max(rec[s]):6.2f}"
              f"   [{values}]")  # fmt: skip
    ratio = med["veris"] / med["restart-only"]
    print(f"  ratio veris / restart-only: {ratio:.2f}x\n")
    print("where the time goes (median seconds after the fault):")
    print(f"  {'mark':18s} {'veris':>8s} {'restart-only':>13s}")
    for mark in MARKS:
        cells = [_median([t.marks[mark] for t in by[s] if mark in t.marks]) for s in sides]
        print(f"  {mark:18s} {cells[0]:>8s} {cells[1]:>13s}")
    names: list[str] = []
    for t in by["veris"]:
        names += [n for n, _ in t.phases if n not in names]
    print("\nveris run phases (median seconds):")
    for name in names:
        values = [s for t in by["veris"] for n, s in t.phases if n == name]
        print(f"  {name:12s} {_median(values)}")
    outcomes = sorted({t.outcome for t in by["veris"]})
    print(f"\nveris outcomes: {', '.join(outcomes)}")
    return {
        "median": med,
        "ratio": ratio,
        "trials": [
            {"side": t.side, "marks": t.marks, "phases": t.phases, "outcome": t.outcome}
            for t in trials
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=5, help="faults per side (default 5)")
    ap.add_argument(
        "--lab-state-dir",
        type=Path,
        help="--state-dir of a lab to use (booted if needed, kept); default: temp",
    )
    ap.add_argument("--prefix", default="rc", help="lab host prefix (default rc)")
    ap.add_argument("--first-subnet", type=int, default=70, help="lab subnet (default 70)")
    ap.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = ap.parse_args()  # fmt: skip
    if args.faults < 1:
        ap.error("--faults must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="veris-bench-recovery-"))
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    lab = Lab(args.lab_state_dir or work / "lab", cache, prefix=args.prefix,
              first_subnet=args.first_subnet)  # fmt: skip
    token = secrets.token_urlsafe(24)
    hosts = [f"{args.prefix}1", f"{args.prefix}2"]
    address = [f"198.18.{args.first_subnet + i}.2" for i in range(2)]
    trials: list[Trial] = []
    receiver: RestartOnly | None = None
    try:
        inventory = lab.up(2)
        for host in hosts:
            subprocess.run([*lab.ssh_argv(host), "systemctl start nginx"], check=True, timeout=60)
        (work / "serve").mkdir()
        serve = ServeProcess(work / "serve" / "state", inventory, token=token, env=SERVE_ENV)
        receiver = RestartOnly(token, {f"http://{address[1]}/": lab.ssh_argv(hosts[1])})
        with (
            serve,
            AlertStack(work / "stack-veris", [f"http://{address[0]}/"], token, serve.alerts_url,
                       ports=None) as veris_stack,
            AlertStack(work / "stack-restart", [f"http://{address[1]}/"], token, receiver.url,
                       ports=None) as restart_stack,
        ):  # fmt: skip
            sides: list[Side] = [
                VerisSide("veris", lab, hosts[0], address[0], veris_stack, serve=serve),
                RestartSide("restart-only", lab, hosts[1], address[1], restart_stack,
                            receiver=receiver),
            ]  # fmt: skip
            print(f"lab hosts {', '.join(hosts)}; serve {serve.url}; {args.faults} faults per "
                  f"side, alternating; faults on one host {REGROUP_SECONDS:.0f} s after its "
                  "resolved notification", flush=True)  # fmt: skip
            for side in sides:  # the first probe samples and rule evaluations are in
                _until(side.quiet, 60, f"{side.host} healthy")
            time.sleep(5)
            for n in range(args.faults):
                order = sides if n % 2 == 0 else sides[::-1]
                for side in order:
                    trial = side.fault()
                    trials.append(trial)
                    print(f"  fault {n + 1} {side.name:13s} recovered in "
                          f"{trial.recovered:5.2f} s ({trial.outcome})", flush=True)  # fmt: skip
        summary = report(trials)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    except Exception as exc:
        print(f"bench_recovery: {exc}", file=sys.stderr)
        for log in sorted(work.glob("**/*.log")):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            print(f"--- {log}\n{tail}", file=sys.stderr)
        return 1
    finally:
        if receiver is not None:
            receiver.close()
        if args.lab_state_dir is None:
            lab.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
