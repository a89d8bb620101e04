"""Each fix family's full loop vs a bare `ansible-playbook` making the same change.

For every family, on one lab host put in the family's fault before each run:

- ours: ``veris-remediate handle`` (diagnose, check, decide, apply, verify; config repair
  includes the restart's check run that hands it over);
- pair: a playbook making only the same change, run with ``--check`` and then for real
  (the floor of any tool that previews before it applies);
- bare: that playbook run once, for real.

Every side starts without a warm SSH master: veris closes its master when a remediation
ends, and each bare run (each pair) gets a fresh control path directory, closed after.
Both use pipelining. Sides rotate order each round so warm caches favour none; the fault
is set up (untimed) before every run. Prints medians and both ratios per family, and where
ours spends its time. Needs root (lab).

    .venv/bin/python bench/bench_fixes.py --rounds 5 [--families service_restart,ufw_harden]

A/B of a change, side by side in the same run (docs/BENCHMARKS.md has the levers):

    cp -r veris_remediate roles playbooks /tmp/before/        # before the change
    .venv/bin/python bench/bench_fixes.py --families service_restart \\
        --tree before=/tmp/before --env free:ANSIBLE_STRATEGY=free

``--tree LABEL=DIR[:K=V,...]`` adds a side running ``python -m veris_remediate`` from another
copy of the package with its roles and playbooks (with extra environment, if given);
``--env LABEL:K=V[,K=V]`` adds a side running this tree with extra environment.
``--tasks`` also prints each Ansible task's median seconds per side (from the runs' event
files). Use ``--lab-state-dir DIR --prefix P --first-subnet N`` to run on a lab of your own
(booted if needed, kept afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veris_remediate.lab import Lab  # noqa: E402

CONF = "/etc/nginx/nginx.conf"
CACHE_FILES = "for i in $(seq 1 200); do head -c 100000 /dev/urandom > /var/cache/nginx/f$i; done"

BARE = {
    "service_restart": """
- name: Restart nginx, nothing else
  hosts: {host}
  gather_facts: false
  tasks:
    - name: Restart nginx
      ansible.builtin.systemd_service:
        name: nginx.service
        state: restarted
""",
    "config_repair": """
- name: Put back the good nginx.conf and restart nginx, nothing else
  hosts: {host}
  gather_facts: false
  tasks:
    - name: Restore nginx.conf
      ansible.builtin.copy:
        src: {good}
        dest: /etc/nginx/nginx.conf
        mode: "0644"
    - name: Restart nginx
      ansible.builtin.systemd_service:
        name: nginx.service
        state: restarted
""",
    "ufw_harden": """
- name: Harden with ufw, nothing else
  hosts: {host}
  gather_facts: false
  tasks:
    - name: Allow SSH and HTTP
      community.general.ufw:
        rule: allow
        port: "{{{{ item }}}}"
        proto: tcp
      loop: ["22", "80"]
    - name: Deny incoming by default
      community.general.ufw:
        default: deny
        direction: incoming
    - name: Enable ufw
      community.general.ufw:
        state: enabled
""",
    "cache_clear": """
- name: Empty the nginx cache, nothing else
  hosts: {host}
  gather_facts: false
  tasks:
    - name: Delete everything inside /var/cache/nginx
      ansible.builtin.command:
        argv: [find, /var/cache/nginx, -mindepth, "1", -delete]
      changed_when: true
""",
}


@dataclass
class Side:
    """One way of fixing the fault: a veris tree (with extra env), or bare ansible-playbook."""

    label: str
    tree: Path | None = None  # None: bare or pair
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Family:
    name: str
    payload: dict[str, object]
    fault: Callable[[], None]
    times: dict[str, list[float]] = field(default_factory=dict)
    # controller CPU seconds (user + system of every process the side started and reaped)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    # per veris side: phase name -> seconds, and the seconds outside the Ansible runs
    phases: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # per veris side: "<run>: <task>" (or "<run> events", first to last event) -> seconds
    tasks: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def _alert(name: str, labels: dict[str, str], summary: str) -> dict[str, object]:
    return {
        "version": "4",
        "status": "firing",
        "alerts": [{
            "status": "firing", "labels": {"alertname": name, **labels},
            "annotations": {"summary": summary}, "startsAt": "2026-12-01T00:00:00Z",
            "fingerprint": "0123456789abcdef",
        }],
    }  # fmt: skip


def _parse_sides(trees: list[str], envs: list[str], ap: argparse.ArgumentParser) -> list[Side]:
    sides = [Side("ours", ROOT)]
    for spec in trees:
        label, sep, rest = spec.partition("=")
        path, _, pairs = rest.partition(":")
        tree = Path(path).resolve()
        if not sep or not label or not (tree / "veris_remediate" / "__init__.py").is_file():
            ap.error(f"--tree {spec!r}: want LABEL=DIR[:K=V,...], DIR holding veris_remediate/")
        sides.append(Side(label, tree, dict(p.split("=", 1) for p in pairs.split(",") if "=" in p)))
    for spec in envs:
        label, sep, pairs = spec.partition(":")
        extra = dict(p.split("=", 1) for p in pairs.split(",") if "=" in p)
        if not sep or not label or not extra:
            ap.error(f"--env {spec!r}: want LABEL:KEY=VALUE[,KEY=VALUE]")
        sides.append(Side(label, ROOT, extra))
    labels = [s.label for s in sides] + ["pair", "bare"]
    if len(set(labels)) != len(labels):
        ap.error("side labels must be unique (and not ours, pair or bare)")
    return sides


def _task_seconds(run_dir: Path) -> dict[str, float]:
    """Each Ansible task's duration in one remediation's runs, from its recorded events."""
    out: dict[str, float] = {}
    for events in sorted(run_dir.glob("*/*/artifacts/*/job_events")):
        slot = events.parents[3].name.split("-", 1)[0]
        run = events.parent.name if slot == "0" else f"{slot}.{events.parent.name}"
        created = []
        for path in events.glob("*.json"):
            event = json.loads(path.read_text())
            created.append(event.get("created", ""))
            data = event.get("event_data") or {}
            if event.get("event", "").startswith("runner_on_") and "duration" in data:
                key = f"{run}: {data.get('task', '?')}"
                out[key] = out.get(key, 0.0) + float(data["duration"])
        stamps = sorted(c for c in created if c)
        if stamps:
            first, last = (datetime.fromisoformat(c) for c in (stamps[0], stamps[-1]))
            out[f"{run} events"] = (last - first).total_seconds()
    return out


def _close_masters(control: Path) -> None:
    for sock in control.iterdir() if control.is_dir() else ():
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
                       capture_output=True, timeout=10, check=False)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--families", default=",".join(BARE))
    ap.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR[:K=V,...]",
        help="another veris tree to run side by side (e.g. a copy before a change)",
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="LABEL:K=V[,K=V]",
        help="this tree with extra environment, side by side",
    )
    ap.add_argument(
        "--lab-state-dir",
        type=Path,
        help="--state-dir of a lab to use (booted if needed, kept); default: temp",
    )
    ap.add_argument("--prefix", default="bn", help="lab host prefix (default bn)")
    ap.add_argument("--first-subnet", type=int, default=60, help="lab subnet (default 60)")
    ap.add_argument("--json", type=Path, help="also write every measurement to this file")
    ap.add_argument("--tasks", action="store_true", help="print each Ansible task's median")
    args = ap.parse_args()  # fmt: skip
    wanted = [f for f in args.families.split(",") if f]
    if set(wanted) - set(BARE):
        ap.error(f"unknown families: {', '.join(sorted(set(wanted) - set(BARE)))}")
    veris_sides = _parse_sides(args.tree, args.env, ap)
    host = f"{args.prefix}1"
    bindir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="veris-bench-"))
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    lab = Lab(args.lab_state_dir or work / "lab", cache, prefix=args.prefix,
              first_subnet=args.first_subnet)  # fmt: skip
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "False"}
    try:
        inventory = lab.up(1)
        ssh = lab.ssh_argv(host)

        def on_host(command: str) -> None:
            subprocess.run([*ssh, command], check=True, timeout=120, capture_output=True)

        def veris(side: Side, *argv: str) -> list[str]:
            state = work / f"state-{side.label}"
            return [sys.executable, "-m", "veris_remediate", "--state-dir", str(state), *argv]

        good = work / "nginx.conf"
        good.write_bytes(subprocess.run([*ssh, f"cat {CONF}"], capture_output=True,
                                        check=True).stdout)  # fmt: skip
        if "config_repair" in wanted:
            for side in veris_sides:
                done = subprocess.run(veris(side, "baseline", "-i", str(inventory)), cwd=side.tree,
                                      env={**env, **side.env}, capture_output=True, text=True,
                                      check=False)  # fmt: skip
                assert done.returncode == 0, done.stderr[-2000:]

        def restart_fault() -> None:
            on_host("systemctl stop nginx")

        def config_fault() -> None:
            on_host(f"echo 'not nginx syntax' >> {CONF}; systemctl stop nginx")

        def ufw_fault() -> None:
            lab.reset_host(host)  # ufw inactive, as booted

        def cache_fault() -> None:
            on_host(f"mkdir -p /var/cache/nginx; rm -rf /var/cache/nginx/*; {CACHE_FILES}")

        families = [
            Family("service_restart", _alert("HttpProbeFailed", {"instance": f"http://{host}/",
                   "service": "nginx"}, "nginx down"), restart_fault),
            Family("config_repair", _alert("HttpProbeFailed", {"instance": f"http://{host}/",
                   "service": "nginx"}, "nginx down, config broken"), config_fault),
            Family("ufw_harden", _alert("FirewallInactive", {"instance": f"{host}:9100"},
                   "ufw inactive"), ufw_fault),
            Family("cache_clear", _alert("CacheDirFull", {"instance": host,
                   "path": "/var/cache/nginx"}, "cache full"), cache_fault),
        ]  # fmt: skip

        def timed(
            argv: list[str], extra: dict[str, str] | None = None, cwd: Path | None = None
        ) -> tuple[float, subprocess.CompletedProcess[str]]:
            start = time.monotonic()
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600,
                                  env={**env, **(extra or {})}, check=False)  # fmt: skip
            return time.monotonic() - start, proc

        def run_veris(fam: Family, side: Side, alert: Path) -> float:
            # Each round is a fresh incident: a resolved one must not count against the
            # next decision, nor trip the restart-storm breaker (both live in the store).
            state = work / f"state-{side.label}"
            for suffix in ("", "-wal", "-shm"):
                (state / f"state.db{suffix}").unlink(missing_ok=True)
            argv = veris(side, "handle", str(alert), "-i", str(inventory), "--json")
            t, proc = timed(argv, side.env, side.tree)
            try:
                report = json.loads(proc.stdout)
            except ValueError as exc:
                detail = f"{side.label}: {shlex.join(argv)}\n{proc.stderr[-3000:]}"
                raise AssertionError(detail) from exc
            assert report["outcome"] == "resolved", (side.label, report.get("reasons"))
            phases = fam.phases.setdefault(side.label, {})
            runs = 0.0
            for phase in report["remediations"][0]["phases"]:
                phases.setdefault(phase["name"], []).append(phase["seconds"])
                runs += phase["seconds"]
            phases.setdefault("outside phases", []).append(t - runs)
            tasks = fam.tasks.setdefault(side.label, {})
            for key, seconds in _task_seconds(state / "runs" / report["run_id"]).items():
                tasks.setdefault(key, []).append(seconds)
            return t

        def run_bare(playbook: Path, check_first: bool) -> float:
            control = Path(tempfile.mkdtemp(dir=work, prefix="cp-"))
            extra = {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(control)}
            bare = [str(bindir / "ansible-playbook"), "-i", str(inventory), str(playbook)]
            try:
                total = 0.0
                for argv in ([[*bare, "--check"]] if check_first else []) + [bare]:
                    t, proc = timed(argv, extra)
                    assert proc.returncode == 0, proc.stdout[-2000:]
                    total += t
                return total
            finally:
                _close_masters(control)

        for fam in (f for f in families if f.name in wanted):
            alert = work / f"{fam.name}.json"
            alert.write_text(json.dumps(fam.payload))
            playbook = work / f"{fam.name}.yml"
            playbook.write_text(BARE[fam.name].format(host=host, good=good))
            order = [s.label for s in veris_sides] + ["pair", "bare"]
            by_label = {s.label: s for s in veris_sides}
            for n in range(args.rounds):
                k = n % len(order)
                for label in order[k:] + order[:k]:  # rotate who goes first
                    fam.fault()
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if label in by_label:
                        t = run_veris(fam, by_label[label], alert)
                    else:
                        t = run_bare(playbook, check_first=label == "pair")
                    fam.times.setdefault(label, []).append(t)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                    fam.cpu.setdefault(label, []).append(used)
            on_host("systemctl start nginx || true")

        extra_sides = [s.label for s in veris_sides[1:]]
        print(f"rounds: {args.rounds} per side; lab host {host} over SSH; medians in seconds")
        columns = ["ours", "pair", "bare", "ours/pair", "ours/bare"]
        for label in extra_sides:
            columns += [label, f"{label}/pair"]
        print(f"{'fix family':16} " + " ".join(f"{c:>{max(len(c), 7)}}" for c in columns))
        for fam in families:
            if not fam.times:
                continue
            med = {k: statistics.median(v) for k, v in fam.times.items()}
            cells = [med["ours"], med["pair"], med["bare"], med["ours"] / med["pair"],
                     med["ours"] / med["bare"]]  # fmt: skip
            for label in extra_sides:
                cells += [med[label], med[label] / med["pair"]]
            row = []
            for c, v in zip(columns, cells, strict=True):
                width = max(len(c), 7)
                row.append(f"{v:{width - 1}.2f}x" if "/" in c else f"{v:{width}.2f}")
            print(f"{fam.name:16} " + " ".join(row))
        print("controller CPU seconds (user+system, medians; less sensitive to other load):")
        for fam in families:
            if fam.cpu:
                cpu = {k: statistics.median(v) for k, v in fam.cpu.items()}
                parts = [f"{k} {v:.2f}" for k, v in cpu.items()]
                parts += [f"{k}/pair {v / cpu['pair']:.2f}x" for k, v in cpu.items()
                          if k not in ("pair", "bare")]  # fmt: skip
                print(f"  {fam.name:16} " + ", ".join(parts))
        print("where each veris side goes (median seconds per phase; outside phases = Python")
        print("start-up, intake, routing and inventory, reports):")
        for fam in families:
            for label, phases in fam.phases.items():
                parts = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in phases.items()
                                  if statistics.median(v) >= 0.01)  # fmt: skip
                print(f"  {fam.name:16} {label:8} {parts}")
        if args.tasks:
            print("each veris side's Ansible tasks (median seconds; events = first to last event):")
            for fam in families:
                for label, tasks in fam.tasks.items():
                    print(f"  {fam.name} {label}:")
                    for key, values in tasks.items():
                        if statistics.median(values) >= 0.01:
                            print(f"    {statistics.median(values):6.2f}  {key}")
        if args.json:
            args.json.write_text(json.dumps(
                {
                    f.name: {"times": f.times, "cpu": f.cpu, "phases": f.phases, "tasks": f.tasks}
                    for f in families
                    if f.times
                },
                indent=1,
            ))  # fmt: skip
    finally:
        if args.lab_state_dir is None:
            lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
