"""Each read-only diagnosis workflow through `veris-remediate diagnose` vs a bare one-task run.

On one lab host (healthy, as booted), for every workflow:

- ours: ``veris-remediate diagnose ALERT --json`` (intake, route, plan, the workflow's one
  Ansible run, the report); ``run`` is that Ansible run alone (its ``diagnose`` phase);
- bare: one ``ansible-playbook`` run of a one-task playbook (``ansible.builtin.ping``), no
  fact gathering — the floor of any Ansible run against the host.

Both sides use pipelining and start without a warm SSH master (veris closes its masters
after each run; the bare run gets a fresh control path directory each time). Sides
alternate order each round. Prints medians and ratios. Needs root (lab).

    .venv/bin/python bench/bench_workflows.py --rounds 5 [--workflows performance,general]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veris_remediate.lab import Lab  # noqa: E402

HOST = "bw1"
RULES = ROOT / "tests" / "fixtures" / "rules" / "diag-workflows.yml"
# workflow -> (alert name, labels, rules file: None = the shipped default rules)
ALERTS: dict[str, tuple[str, dict[str, str], Path | None]] = {
    "performance": ("HostOomKillDetected", {}, RULES),
    "security": ("SshBruteForce", {}, RULES),
    "firewall": ("FirewallInactive", {}, RULES),
    "general": ("HostOutOfDiskSpace", {}, RULES),
    "service_health": ("HttpProbeFailed", {"service": "nginx"}, None),
}
BARE = """
- name: One task, nothing else
  hosts: {host}
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def _alert(name: str, labels: dict[str, str]) -> dict[str, object]:
    return {
        "version": "4",
        "status": "firing",
        "alerts": [{
            "status": "firing", "labels": {"alertname": name, "instance": HOST, **labels},
            "annotations": {"summary": f"bench {name}"}, "startsAt": "2026-12-01T00:00:00Z",
            "fingerprint": "0123456789abcdef",
        }],
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workflows", default=",".join(ALERTS))
    args = ap.parse_args()
    wanted = [w for w in args.workflows.split(",") if w]
    unknown = set(wanted) - set(ALERTS)
    if unknown:
        ap.error(f"unknown workflow(s): {', '.join(sorted(unknown))}")
    bindir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="veris-bench-workflows-"))
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    lab = Lab(work / "lab", cache, prefix="bw", first_subnet=157)
    state = work / "state"
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "False"}
    times: dict[str, dict[str, list[float]]] = {}
    try:
        inventory = lab.up(1)
        playbook = work / "bare.yml"
        playbook.write_text(BARE.format(host=HOST))

        def timed(argv: list[str], extra: dict[str, str]) -> tuple[float, str]:
            start = time.monotonic()
            proc = subprocess.run(argv, capture_output=True, text=True, env={**env, **extra},
                                  timeout=600, check=False)  # fmt: skip
            elapsed = time.monotonic() - start
            assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-2000:])
            return elapsed, proc.stdout

        for workflow in wanted:
            name, labels, rules = ALERTS[workflow]
            alert = work / f"{workflow}.json"
            alert.write_text(json.dumps(_alert(name, labels)))
            ours = [str(bindir / "veris-remediate"), "--state-dir", str(state), "diagnose",
                    str(alert), "-i", str(inventory), "--json"]  # fmt: skip
            ours += ["--rules", str(rules)] if rules else []
            bare = [str(bindir / "ansible-playbook"), "-i", str(inventory), str(playbook)]
            slot = times.setdefault(workflow, {"ours": [], "run": [], "bare": []})
            for n in range(args.rounds):
                for side in ("ours", "bare") if n % 2 == 0 else ("bare", "ours"):
                    if side == "ours":
                        elapsed, out = timed(ours, {})
                        report = json.loads(out)
                        (result,) = report["remediations"]
                        assert result["workflow"] == workflow, result
                        run = next(p for p in result["phases"] if p["name"] == "diagnose")
                        assert run["status"] == "ok", run
                        slot["ours"].append(elapsed)
                        slot["run"].append(run["seconds"])
                    else:
                        control = tempfile.mkdtemp(dir=work, prefix="cp-")
                        elapsed, _ = timed(bare, {"ANSIBLE_SSH_CONTROL_PATH_DIR": control})
                        slot["bare"].append(elapsed)

        print(f"rounds: {args.rounds} per side; lab host {HOST} over SSH; medians in seconds")
        print("ours = veris-remediate diagnose (CLI, whole loop); run = its Ansible run alone;")
        print("bare = ansible-playbook with one ping task")
        columns = ("ours", "run", "bare", "ours/bare", "run/bare")
        print(f"{'workflow':16} " + " ".join(f"{c:>{10 if '/' in c else 7}}" for c in columns))
        for workflow, slot in times.items():
            o, r, b = (statistics.median(slot[s]) for s in ("ours", "run", "bare"))
            print(f"{workflow:16} {o:7.2f} {r:7.2f} {b:7.2f} {o / b:9.1f}x {r / b:9.1f}x")
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
