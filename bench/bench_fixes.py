"""Each fix family's full loop vs a bare `ansible-playbook` making the same change.

For every family, on one lab host put in the family's fault before each run:

- ours: ``veris-remediate handle`` (diagnose, check, decide, apply, verify; config repair
  includes the restart's check run that hands it over);
- bare: one ``ansible-playbook`` run of a playbook that makes only the same change;
- bare pair: that playbook with ``--check``, then for real (the floor of any tool that
  previews before it applies).

Sides alternate order each round so warm caches favour neither; the fault is set up
(untimed) before every run. Prints medians and both ratios per family. Needs root (lab).

    .venv/bin/python bench/bench_fixes.py --rounds 5 [--families service_restart,ufw_harden]
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veris_remediate.lab import Lab  # noqa: E402

HOST = "bn1"
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
class Family:
    name: str
    payload: dict[str, object]
    fault: Callable[[], None]
    times: dict[str, list[float]] = field(default_factory=dict)
    phases: dict[str, list[float]] = field(default_factory=dict)


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--families", default=",".join(BARE))
    args = ap.parse_args()
    wanted = args.families.split(",")
    bindir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="veris-bench-"))
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    lab = Lab(work / "lab", cache, prefix="bn", first_subnet=60)
    state = work / "state"
    try:
        inventory = lab.up(1)
        ssh = lab.ssh_argv(HOST)

        def on_host(command: str) -> None:
            subprocess.run([*ssh, command], check=True, timeout=120, capture_output=True)

        def veris(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(bindir / "veris-remediate"), "--state-dir", str(state), *argv],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip

        good = work / "nginx.conf"
        good.write_bytes(subprocess.run([*ssh, f"cat {CONF}"], capture_output=True,
                                        check=True).stdout)  # fmt: skip
        if "config_repair" in wanted:
            assert veris("baseline", "-i", str(inventory)).returncode == 0

        def restart_fault() -> None:
            on_host("systemctl stop nginx")

        def config_fault() -> None:
            on_host(f"echo 'not nginx syntax' >> {CONF}; systemctl stop nginx")

        def ufw_fault() -> None:
            lab.reset_host(HOST)  # ufw inactive, as booted

        def cache_fault() -> None:
            on_host(f"mkdir -p /var/cache/nginx; rm -rf /var/cache/nginx/*; {CACHE_FILES}")

        families = [
            Family("service_restart", _alert("HttpProbeFailed", {"instance": f"http://{HOST}/",
                   "service": "nginx"}, "nginx down"), restart_fault),
            Family("config_repair", _alert("HttpProbeFailed", {"instance": f"http://{HOST}/",
                   "service": "nginx"}, "nginx down, config broken"), config_fault),
            Family("ufw_harden", _alert("FirewallInactive", {"instance": f"{HOST}:9100"},
                   "ufw inactive"), ufw_fault),
            Family("cache_clear", _alert("CacheDirFull", {"instance": HOST,
                   "path": "/var/cache/nginx"}, "cache full"), cache_fault),
        ]  # fmt: skip
        env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "False"}

        def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
            start = time.monotonic()
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600,
                                  check=False)  # fmt: skip
            return time.monotonic() - start, proc

        for fam in (f for f in families if f.name in wanted):
            alert = work / f"{fam.name}.json"
            alert.write_text(json.dumps(fam.payload))
            playbook = work / f"{fam.name}.yml"
            playbook.write_text(BARE[fam.name].format(host=HOST, good=good))
            bare = [str(bindir / "ansible-playbook"), "-i", str(inventory), str(playbook)]
            ours = [str(bindir / "veris-remediate"), "--state-dir", str(state), "handle",
                    str(alert), "-i", str(inventory), "--json"]  # fmt: skip
            sides = ["ours", "bare", "pair"]
            for n in range(args.rounds):
                for side in sides[n % 3 :] + sides[: n % 3]:  # rotate who goes first
                    fam.fault()
                    if side == "ours":
                        # Each round is a fresh incident: a resolved one must not count
                        # against the next decision, nor trip the restart-storm breaker
                        # (history and breaker live in the state dir's store).
                        (state / "state.db").unlink(missing_ok=True)
                        for suffix in ("-wal", "-shm"):
                            (state / f"state.db{suffix}").unlink(missing_ok=True)
                        t, proc = timed(ours)
                        report = json.loads(proc.stdout)
                        assert report["outcome"] == "resolved", report["reasons"]
                        for phase in report["remediations"][0]["phases"]:
                            fam.phases.setdefault(phase["name"], []).append(phase["seconds"])
                    elif side == "bare":
                        t, proc = timed(bare)
                        assert proc.returncode == 0, proc.stdout[-2000:]
                    else:
                        t1, check = timed([*bare, "--check"])
                        t2, proc = timed(bare)
                        assert check.returncode == 0, check.stdout[-2000:]
                        assert proc.returncode == 0, proc.stdout[-2000:]
                        t = t1 + t2
                    fam.times.setdefault(side, []).append(t)
            on_host("systemctl start nginx || true")

        print(f"rounds: {args.rounds} per side; lab host {HOST} over SSH; medians in seconds")
        columns = ("ours", "bare", "pair", "ours/bare", "ours/pair")
        print(f"{'fix family':16} " + " ".join(f"{c:>{10 if '/' in c else 7}}" for c in columns))
        for fam in families:
            if not fam.times:
                continue
            o, b, p = (statistics.median(fam.times[s]) for s in ("ours", "bare", "pair"))
            print(f"{fam.name:16} {o:7.2f} {b:7.2f} {p:7.2f} {o / b:9.1f}x {o / p:9.1f}x")
        print("where ours goes (median seconds per phase):")
        for fam in families:
            if fam.phases:
                parts = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in fam.phases.items()
                                  if statistics.median(v) >= 0.01)  # fmt: skip
                print(f"  {fam.name:16} {parts}")
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
