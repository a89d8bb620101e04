"""N lab hosts whose nginx stops at once: time to all resolved, and the ratio to one host.

Three sides, each starting from every target's nginx stopped (set up untimed):

- group: one Alertmanager payload holding one group of N alerts, one ``handle`` call
  (a fleet: one check run and one apply run over all N hosts, fleet.py);
- separate: N payloads of one alert each, N ``handle`` calls, ``--jobs`` at a time
  (default 2, as many as ``serve`` has workers by default: VERIS_SERVE_WORKERS);
- serve: N payloads of one alert each posted at once into a real ``veris-remediate serve``
  (default workers): its workers claim the same alert on other hosts as a fleet, up to
  ``VERIS_MAX_HOSTS`` (serve/worker.py); time runs until every queue row is done;
- one: one payload, one alert, one host (host 1).

Time runs from the first ``handle`` start to the last one's exit; every host must then
report ``resolved`` and have nginx active, else the round counts as failed. Prints the
medians and the ratios N-hosts / one-host side by side. Needs root (lab).

    .venv/bin/python bench/bench_fleet.py --hosts 30 --rounds 3 \\
        --lab-state-dir /work/fleet-lab --prefix ft --first-subnet 220

``--lab-state-dir DIR --prefix P --first-subnet N`` runs on a lab of your own (booted if
needed — the boot time is printed — and kept afterwards); without it a lab is booted in a
temporary directory and removed at the end. ``VERIS_MAX_HOSTS`` is set to N for the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import nginx_down_group as payload  # noqa: E402
from tests.serving import ServeProcess  # noqa: E402
from veris_remediate.lab import Lab  # noqa: E402


class Bench:
    def __init__(self, lab: Lab, inventory: Path, work: Path, hosts: list[str]) -> None:
        self.lab = lab
        self.inventory = inventory
        self.work = work
        self.hosts = hosts
        self.env = {**os.environ, "VERIS_MAX_HOSTS": str(len(hosts))}
        self.rounds = 0

    def on_hosts(self, hosts: Sequence[str], command: str) -> None:
        def one(host: str) -> None:
            subprocess.run(
                [*self.lab.ssh_argv(host), command], check=True, timeout=120, capture_output=True
            )

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(one, hosts))

    def active(self, hosts: Sequence[str]) -> list[str]:
        """The hosts whose nginx is not active."""
        bad: list[str] = []

        def one(host: str) -> None:
            argv = [*self.lab.ssh_argv(host), "systemctl is-active nginx"]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if out.stdout.strip() != "active":
                bad.append(host)

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(one, hosts))
        return bad

    def host_cpu(self, hosts: Sequence[str]) -> float:
        """CPU seconds the lab hosts' processes used so far (their cgroups, cgroup v1 or v2)."""
        total = 0.0
        for host in hosts:
            for path in (Path("/sys/fs/cgroup/cpuacct/veris-lab") / host / "cpuacct.usage",):
                if path.is_file():
                    total += int(path.read_text()) / 1e9
            stat = Path("/sys/fs/cgroup/unified/veris-lab") / host / "cpu.stat"
            if not (Path("/sys/fs/cgroup/cpuacct/veris-lab") / host).is_dir() and stat.is_file():
                usage = dict(line.split() for line in stat.read_text().splitlines())
                total += int(usage.get("usage_usec", 0)) / 1e6
        return total

    def handle(self, state: Path, text: str) -> dict[str, Any]:
        argv = [sys.executable, "-m", "veris_remediate", "--state-dir", str(state),
                "handle", "-", "-i", str(self.inventory), "--json"]  # fmt: skip
        out = subprocess.run(argv, input=text, capture_output=True, text=True, env=self.env,
                             timeout=1800, check=False)  # fmt: skip
        try:
            report: dict[str, Any] = json.loads(out.stdout)
        except json.JSONDecodeError:
            return {"remediations": [], "error": out.stderr[-500:]}
        return report

    def serve(self, state: Path, texts: Sequence[str]) -> tuple[list[dict[str, Any]], float]:
        """Post every payload into a fresh serve at once; wait until every row is done.
        One pseudo-report per row (its host and outcome), as ``handle`` would give, and the
        seconds from the first post (serve's own start-up is not counted)."""
        state.mkdir(parents=True)
        env = {"VERIS_MAX_HOSTS": str(len(self.hosts))}
        with ServeProcess(
            state / "state", self.inventory, token="bench-token-" + "0" * 16, env=env
        ) as srv:
            start = time.monotonic()
            with ThreadPoolExecutor(max_workers=16) as pool:
                posted = list(pool.map(lambda t: srv.post(t.encode(), timeout=60), texts))
            if any(status != 202 for status, _ in posted):
                return [{"remediations": [], "error": f"posts answered {posted}"}], 0.0
            deadline = time.monotonic() + 1800
            while True:
                rows = srv.entries()
                if len(rows) >= len(texts) and all(r.status not in ("queued", "running")
                                                   for r in rows):  # fmt: skip
                    break
                if time.monotonic() > deadline:
                    return [{"remediations": [], "error": "serve did not finish in 1800 s"}], 0.0
                time.sleep(0.1)
            seconds = time.monotonic() - start
        runs = len({r.run_id for r in rows})
        print(f"  serve: {len(rows)} rows in {runs} run(s) (fleets)", file=sys.stderr)
        return [{"remediations": [{"host": r.host, "outcome": r.outcome}]} for r in rows], seconds

    def side(self, name: str, jobs: int) -> tuple[float, list[str], dict[str, float]]:
        """One timed round: seconds, the hosts not resolved, and the phases' seconds (plus
        ``cpu-controller``/``cpu-hosts``: CPU seconds of the handle processes and their
        children, and of the lab hosts)."""
        targets = self.hosts[:1] if name == "one" else self.hosts
        self.on_hosts(targets, "systemctl stop nginx")
        self.rounds += 1
        state = self.work / f"state-{name}-{self.rounds}"
        texts = [payload(targets)] if name in ("group", "one") else [payload([h]) for h in targets]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        host0 = self.host_cpu(targets)
        start = time.monotonic()
        if name == "serve":
            reports, seconds = self.serve(state, texts)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                reports = list(pool.map(lambda t: self.handle(state, t), texts))
            seconds = time.monotonic() - start
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = {
            "cpu-controller": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
            "cpu-hosts": self.host_cpu(targets) - host0,
        }
        resolved = {r["host"] for rep in reports for r in rep.get("remediations", [])
                    if r.get("outcome") == "resolved"}  # fmt: skip
        bad = sorted(set(targets) - resolved) + self.active(targets)
        phases: dict[str, float] = {}
        for rep in reports:
            for r in rep.get("remediations", [])[:1]:  # one host's phases per report
                for p in r.get("phases", []):
                    phases[p["name"]] = phases.get(p["name"], 0.0) + p["seconds"]
        for rep in reports:
            if rep.get("error"):
                print(f"  handle failed: {rep['error']}", file=sys.stderr)
        return seconds, sorted(set(bad)), {**phases, **cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=30, help="lab hosts failing at once (30)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per side (default 1)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="separate payloads handled at once (default 2, serve's workers)",
    )
    ap.add_argument("--sides", default="one,group,serve,separate", help="sides, in order")
    ap.add_argument("--lab-state-dir", type=Path, help="use (and keep) this lab")
    ap.add_argument("--prefix", default="ft", help="lab host prefix (default ft)")
    ap.add_argument("--first-subnet", type=int, default=220, help="lab subnet (default 220)")
    ap.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = ap.parse_args()  # fmt: skip
    sides = [s for s in args.sides.split(",") if s]
    if set(sides) - {"one", "group", "separate", "serve"}:
        ap.error("sides are one, group, separate, serve")
    work = Path(tempfile.mkdtemp(prefix="veris-bench-fleet-"))
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    lab = Lab(args.lab_state_dir or work / "lab", cache, prefix=args.prefix,
              first_subnet=args.first_subnet)  # fmt: skip
    try:
        started = time.monotonic()
        inventory = lab.up(args.hosts, timeout=600)
        print(f"lab: {args.hosts} hosts up in {time.monotonic() - started:.1f} s "
              "(hosts already running are kept)", file=sys.stderr)  # fmt: skip
        bench = Bench(lab, inventory, work, [f"{args.prefix}{i}" for i in range(1, args.hosts + 1)])
        times: dict[str, list[float]] = {s: [] for s in sides}
        failed: dict[str, list[list[str]]] = {s: [] for s in sides}
        phases: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
        for r in range(args.rounds):
            for s in sides:
                seconds, bad, ph = bench.side(s, args.jobs if s == "separate" else 1)
                note = f", NOT resolved: {', '.join(bad)}" if bad else ""
                print(f"round {r + 1} {s}: {seconds:.1f} s{note}", file=sys.stderr)
                times[s].append(seconds)
                failed[s].append(bad)
                phases[s].append(ph)
        bench.on_hosts(bench.hosts, "systemctl start nginx")
        med = {s: statistics.median(v) for s, v in times.items() if v}
        n = args.hosts
        print(f"\n{n} hosts, nginx stopped at once; median of {args.rounds} round(s), seconds")
        print(f"{'side':<44}{'seconds':>9}{'/ one host':>12}")
        labels = {
            "one": "one host, one alert",
            "group": f"one payload, one group of {n} alerts (fleet)",
            "separate": f"{n} payloads, {n} handle calls, {args.jobs} at once",
            "serve": f"{n} payloads posted into serve at once",
        }
        for s in sides:
            ratio = f"{med[s] / med['one']:.2f}x" if "one" in med and s != "one" else ""
            unresolved = sum(1 for b in failed[s] if b)
            note = f"  ({unresolved} round(s) not all resolved)" if unresolved else ""
            print(f"{labels[s]:<44}{med[s]:>9.1f}{ratio:>12}{note}")
        print("\nphases (seconds, summed over the round's reports, first round), and CPU:")
        for s in sides:
            shown = ", ".join(f"{k} {v:.1f}" for k, v in phases[s][0].items())
            print(f"  {s}: {shown}")
        cores = os.cpu_count() or 1
        print(
            f"\nCPU floor ({cores} cores: controller + lab hosts CPU seconds / cores), first round:"
        )
        for s in sides:
            used = phases[s][0]["cpu-controller"] + phases[s][0]["cpu-hosts"]
            per = used / (1 if s == "one" else n)
            print(f"  {s}: {used:.1f} CPU s ({per:.2f} per host) -> floor {used / cores:.1f} s"
                  f" of {times[s][0]:.1f} s wall")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(
                {"hosts": n, "jobs": args.jobs, "times": times, "failed": failed,
                 "phases": phases}, indent=1))  # fmt: skip
    finally:
        if args.lab_state_dir is None:
            lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
