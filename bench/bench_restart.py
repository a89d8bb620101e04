"""Full `handle` loop vs a bare `ansible-playbook` restart of the same unit on the same lab host.

Both sides run as separate processes, alternately, against one lab host whose nginx is
stopped before every round. Prints each side's median and the ratio. Needs root (lab).

    .venv/bin/python bench/bench_restart.py --rounds 5
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

BARE_PLAYBOOK = """
- name: Restart nginx, nothing else
  hosts: {host}
  gather_facts: false
  tasks:
    - name: Restart nginx
      ansible.builtin.systemd_service:
        name: nginx.service
        state: restarted
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    bindir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="veris-bench-"))
    lab = Lab(
        work / "state",
        Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate")),
        prefix="bn",
        first_subnet=60,
    )
    try:
        inventory = lab.up(1)
        host = "bn1"
        payload = json.loads((ROOT / "examples/alerts/alertmanager-nginx-down.json").read_text())
        payload["alerts"][0]["labels"]["instance"] = f"http://{host}/"
        alert = work / "alert.json"
        alert.write_text(json.dumps(payload))
        playbook = work / "bare.yml"
        playbook.write_text(BARE_PLAYBOOK.format(host=host))
        env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "False"}
        ssh = lab.ssh_argv(host)

        def stop_nginx() -> None:
            subprocess.run([*ssh, "systemctl", "stop", "nginx"], check=True, timeout=60)

        def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
            start = time.monotonic()
            proc = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=600, check=False
            )
            return time.monotonic() - start, proc

        ours: list[float] = []
        bare: list[float] = []
        phases: dict[str, list[float]] = {}
        handle = [str(bindir / "veris-remediate"), "--state-dir", str(work / "state"),
                  "handle", str(alert), "-i", str(inventory), "--json"]  # fmt: skip
        restart = [str(bindir / "ansible-playbook"), "-i", str(inventory), str(playbook)]
        for n in range(args.rounds):
            # Alternate which side goes first so warm caches favour neither.
            order = ["ours", "bare"] if n % 2 == 0 else ["bare", "ours"]
            for side in order:
                stop_nginx()
                if side == "ours":
                    t, proc = timed(handle)
                    report = json.loads(proc.stdout)
                    assert report["outcome"] == "resolved", report
                    ours.append(t)
                    for phase in report["remediations"][0]["phases"]:
                        phases.setdefault(phase["name"], []).append(phase["seconds"])
                else:
                    t, proc = timed(restart)
                    assert proc.returncode == 0, proc.stdout[-2000:]
                    bare.append(t)
        mo, mb = statistics.median(ours), statistics.median(bare)
        print(f"rounds: {args.rounds} (nginx stopped before each run, one lab host over SSH)")
        print(f"{'side':52} {'median s':>9} {'min s':>7} {'max s':>7}")
        rows = [
            ("veris-remediate handle (check+decide+apply+verify)", ours),
            ("bare ansible-playbook (restart only)", bare),
        ]
        for label, times in rows:
            med = statistics.median(times)
            print(f"{label:52} {med:9.2f} {min(times):7.2f} {max(times):7.2f}")
        print(f"ratio (ours / bare): {mo / mb:.2f}x")
        print("where ours goes (median s per phase; the rest is start-up and inventory):")
        for name, times in phases.items():
            print(f"  {name:10} {statistics.median(times):6.2f}")
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
