"""One remediation run here vs through an execution node, side by side in one run.

On one lab host booted with the ``execnode`` feature (the controller's Python and venv
bind-mounted read-only, so it can run ``ansible-runner worker``), stop nginx before every
run (untimed) and fix it with ``veris-remediate handle``:

- local: ansible-runner runs the check and apply runs on this machine;
- node: the same runs go through the node (``VERIS_EXECUTION_NODE``): transmit → ``ssh
  node ansible-runner worker`` → process. The node targets itself at its own address
  (lab hosts cannot reach each other), with the lab key sent with each run.

Sides alternate order each round. Prints medians of the whole ``handle`` and of its check
and apply runs, the difference per run, and where the difference goes: the SSH handshake
to the node, ``ansible-runner`` starting there, and staging + transmitting one run's
private data dir (its size). Then a one-task run (``ping``) through each executor, the
first of a remediation and the next one, many times: the per-run overhead with less noise
than whole remediations. Also the controller's CPU seconds per ``handle`` (what the
CLI and everything it started used): on the node side, Ansible's CPU is the node's. Needs
root (lab).

    .venv/bin/python bench/bench_execnode.py --rounds 7 --probe-rounds 10

``--lab-state-dir DIR --prefix P --first-subnet N`` runs on a lab of your own (booted with
the execnode feature if needed, kept afterwards); default: a temporary lab xn1 on
198.18.90.0/30, removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veris_remediate.execnode import ExecutionNode, StreamingExecutor, stage_run  # noqa: E402
from veris_remediate.lab import Lab  # noqa: E402
from veris_remediate.planner import PlaybookStep  # noqa: E402
from veris_remediate.resources import playbooks_dir, roles_dir  # noqa: E402
from veris_remediate.runner import (  # noqa: E402
    AnsibleRunnerExecutor,
    RunRequest,
    close_control_masters,
)
from veris_remediate.workspace import Workspace  # noqa: E402

NO_HOST_KEYS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


def _payload(host: str) -> str:
    return json.dumps({
        "version": "4", "status": "firing", "receiver": "veris",
        "groupLabels": {"alertname": "HttpProbeFailed"},
        "commonLabels": {"alertname": "HttpProbeFailed", "service": "nginx"},
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "HttpProbeFailed", "instance": f"http://{host}/",
                       "service": "nginx", "severity": "critical"},
            "annotations": {"summary": "HTTP probe failing"},
            "startsAt": "2026-11-29T12:00:00Z", "fingerprint": "0123456789abcdef",
        }],
    })  # fmt: skip


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        started = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        times.append(time.monotonic() - started)
    return times


def _staging(node: ExecutionNode, inventory: Path, work: Path, host: str) -> tuple[float, int]:
    """Seconds to stage and encode one service_restart apply run, and the bytes sent."""
    import ansible_runner

    ws = Workspace(work / "stage-state")
    step = PlaybookStep(phase="apply", playbook="service_restart.yml", check=False,
                        extravars={"veris_alert_summary": "bench"})  # fmt: skip
    prepared = ws.prepare_step(ws.new_run_id(), "0", step, host, idle_timeout=60)
    request = RunRequest(
        phase="apply", private_data_dir=prepared.private_data_dir,
        playbook=playbooks_dir() / "service_restart.yml",
        inventories=(inventory, prepared.target_inventory), check=False,
        roles_path=roles_dir(), control_dir=work, job_timeout=60,
    )  # fmt: skip
    times, size = [], 0
    for _ in range(5):
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            staged = stage_run(request, node, Path(tmp), "/tmp/veris-0123456789abcdef01234567")
            out = io.BytesIO()
            out.name = "bench"  # type: ignore[misc]
            ansible_runner.run(streamer="transmit", _output=out, cancel_callback=lambda: False,
                               private_data_dir=str(staged.directory), **staged.kwargs)  # fmt: skip
        times.append(time.monotonic() - started)
        size = len(out.getvalue())
    return _median(times), size


PING = """
- name: One task on the target
  hosts: veris_targets
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def _one_task_runs(
    node: ExecutionNode, inventory: Path, work: Path, host: str, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """A one-task run here and through the node: the first of a remediation (no SSH master
    yet) and the next one (the remediation's masters open), ``rounds`` times each."""
    playbooks = work / "ping"
    playbooks.mkdir()
    (playbooks / "ping.yml").write_text(PING)
    (work / "no-roles").mkdir()
    ws = Workspace(work / "ping-state")
    executors = {"local": AnsibleRunnerExecutor(), "node": StreamingExecutor(node)}
    times: dict[str, dict[str, list[float]]] = {s: {"first": [], "next": []} for s in executors}
    for rnd in range(rounds):
        order = list(executors) if rnd % 2 == 0 else list(reversed(executors))
        for side in order:
            control = Path(tempfile.mkdtemp(prefix="veris-cp-", dir="/tmp"))
            run_id = ws.new_run_id()
            for which, phase in (("first", "check"), ("next", "apply")):
                step = PlaybookStep(phase=phase, playbook="ping.yml", check=False, extravars={})
                prepared = ws.prepare_step(run_id, "0", step, host, idle_timeout=60)
                request = RunRequest(
                    phase=phase, private_data_dir=prepared.private_data_dir,
                    playbook=playbooks / "ping.yml",
                    inventories=(inventory, prepared.target_inventory), check=False,
                    roles_path=work / "no-roles", control_dir=control, job_timeout=60,
                )  # fmt: skip
                started = time.monotonic()
                result = executors[side].run(request)
                times[side][which].append(time.monotonic() - started)
                assert result.status == "successful", (side, result.status)
            close_control_masters(control)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--probe-rounds", type=int, default=10, help="one-task runs per side")
    ap.add_argument("--lab-state-dir", type=Path, help="lab state dir (kept); default: temp")
    ap.add_argument("--prefix", default="xn")
    ap.add_argument("--first-subnet", type=int, default=90)
    ap.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = ap.parse_args()
    host = f"{args.prefix}1"
    work = Path(tempfile.mkdtemp(prefix="veris-bench-execnode-"))
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    lab = Lab(args.lab_state_dir or work / "lab", cache, prefix=args.prefix,
              first_subnet=args.first_subnet, features=("execnode",))  # fmt: skip
    runner = str(Path(sys.prefix) / "bin" / "ansible-runner")
    try:
        inventory = lab.up(1)
        ssh = lab.ssh_argv(host)
        address = ssh[-1].split("@", 1)[1]
        key = Path(ssh[ssh.index("-i") + 1])
        node_env = {
            "VERIS_EXECUTION_NODE": f"ssh://root@{address}",
            "VERIS_EXECUTION_NODE_KEY_FILE": str(key),
            "VERIS_EXECUTION_NODE_SSH_ARGS": NO_HOST_KEYS,
            "VERIS_EXECUTION_NODE_RUNNER": runner,
            "VERIS_EXECUTION_NODE_TARGET_KEY_FILE": str(key),
        }
        sides = {"local": {}, "node": node_env}
        results: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
        for rnd in range(args.rounds):
            order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
            for side in order:
                subprocess.run([*ssh, "systemctl stop nginx"], check=True, timeout=60)
                env = {**os.environ, **sides[side], "VERIS_BREAKER_COOLDOWN_SECONDS": "0"}
                argv = [sys.executable, "-m", "veris_remediate", "--state-dir",
                        str(work / f"state-{side}"), "handle", "-", "-i", str(inventory),
                        "--json"]  # fmt: skip
                cpu = _children_cpu()
                started = time.monotonic()
                done = subprocess.run(argv, input=_payload(host), env=env, capture_output=True,
                                      text=True, check=False, timeout=600)  # fmt: skip
                total = time.monotonic() - started
                # Everything the CLI started here (ansible-playbook and its forks when local,
                # ssh when on the node); the node's own CPU is not the controller's.
                results[side].setdefault("controller cpu", []).append(_children_cpu() - cpu)
                report = json.loads(done.stdout)
                assert report["outcome"] == "resolved", (side, report.get("reasons"))
                results[side].setdefault("handle", []).append(total)
                for phase in report["phases"]:
                    if phase["name"] in ("check", "apply"):
                        results[side].setdefault(phase["name"], []).append(phase["seconds"])
                print(f"round {rnd + 1} {side}: handle {total:.2f} s", file=sys.stderr)

        node = ExecutionNode.parse(
            f"ssh://root@{address}", key_file=key, ssh_args=tuple(NO_HOST_KEYS.split()),
            runner=runner, target_key_file=key,
        )  # fmt: skip
        handshake = _timed(node.ssh_argv(["true"]), 5)
        control = Path(tempfile.mkdtemp(prefix="veris-cp-", dir="/tmp"))
        _timed(node.ssh_argv(["true"], control_dir=control), 1)  # opens the master
        warm = _timed(node.ssh_argv(["true"], control_dir=control), 5)
        close_control_masters(control)
        runner_start = _timed(node.ssh_argv([runner, "--version"]), 5)
        stage_seconds, stream_bytes = _staging(node, inventory, work, host)
        probes = _one_task_runs(node, inventory, work, host, args.probe_rounds)

        print(f"\n{'median (s)':<15}{'local':>9}{'node':>9}{'ratio':>8}{'node-local, paired':>21}")
        for key_ in ("handle", "check", "apply", "controller cpu") if args.rounds else ():
            here, there = results["local"][key_], results["node"][key_]
            paired = _median([b - a for a, b in zip(here, there, strict=True)])
            print(f"{key_:<15}{_median(here):>9.2f}{_median(there):>9.2f}"
                  f"{_median(there) / _median(here):>8.2f}{paired:>21.2f}")  # fmt: skip
        print(f"\none-task run ({args.probe_rounds} rounds){'local':>12}{'node':>9}"
              f"{'node-local, paired':>21}")  # fmt: skip
        for which, label in (("first", "first of a remediation"), ("next", "next (masters open)")):
            here, there = probes["local"][which], probes["node"][which]
            paired = _median([b - a for a, b in zip(here, there, strict=True)])
            print(f"{label:<27}{_median(here):>9.2f}{_median(there):>9.2f}{paired:>21.2f}")
        print(f"\nper run on the node, measured apart ({args.rounds} rounds, medians):")
        print(f"  ssh handshake to the node (ssh node true)     {_median(handshake):.2f} s")
        print(f"  the same over the remediation's open master   {_median(warm):.2f} s")
        print(f"  ssh + ansible-runner --version on the node    {_median(runner_start):.2f} s")
        print(f"  stage + encode one apply run (transmit)       {stage_seconds:.2f} s, "
              f"{stream_bytes / 1024:.0f} KiB sent")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({
                "runs": results, "handshake": handshake, "warm_master": warm,
                "runner_start": runner_start,
                "stage_seconds": stage_seconds, "stream_bytes": stream_bytes, "one_task": probes,
            }, indent=2))  # fmt: skip
    finally:
        if args.lab_state_dir is None:
            lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
