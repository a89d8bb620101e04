"""The Python side of each `handle`: start-up (imports) and reading the inventory.

Side by side, alternating, in fresh processes (what every CLI call pays):

- ``import``: ``python -c "import veris_remediate.cli"`` (every import the CLI makes);
- ``inventory``: ``load_inventory`` of a lab-like inventory with ``ansible-inventory``
  each time, vs ``load_inventory(cache_dir=...)`` served from the on-disk cache
  (inventory_cache.py; the first call fills it and is not counted).

Wall seconds and the process's CPU seconds (user + system, less sensitive to other load),
medians. No lab host is needed.

    .venv/bin/python bench/bench_startup.py [--rounds 10] [-i INVENTORY]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "tests" / "fixtures" / "inventory" / "lab.yml"

LOAD = """
import json, sys, time
from pathlib import Path
from veris_remediate.inventory import load_inventory
cache = Path(sys.argv[2]) if len(sys.argv) > 2 else None
start = time.perf_counter()
inventory = load_inventory([Path(sys.argv[1])], cache_dir=cache)
print(json.dumps({"seconds": time.perf_counter() - start, "hosts": len(inventory.hosts)}))
"""


def measure(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of it and its children, stdout) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("-i", "--inventory", type=Path, default=LAB)
    args = ap.parse_args()
    py = sys.executable
    cache = Path(tempfile.mkdtemp(prefix="veris-bench-inventory-"))
    inventory = str(args.inventory.absolute())
    sides = {
        "import veris_remediate.cli": [py, "-c", "import veris_remediate.cli"],
        "load_inventory, ansible-inventory": [py, "-c", LOAD, inventory],
        "load_inventory, cached": [py, "-c", LOAD, inventory, str(cache)],
    }
    measure(sides["load_inventory, cached"])  # fills the cache
    wall: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    inner: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for n in range(args.rounds):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            w, c, out = measure(sides[name])
            wall[name].append(w)
            cpu[name].append(c)
            if out.strip():
                inner[name].append(json.loads(out)["seconds"])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.rounds} rounds, medians")
    print(f"{'':36} {'wall s':>7} {'cpu s':>7} {'in-process s':>13}")
    for name in names:
        own = f"{statistics.median(inner[name]):13.3f}" if inner[name] else f"{'':13}"
        print(f"{name:36} {statistics.median(wall[name]):7.3f} {statistics.median(cpu[name]):7.3f} "
              f"{own}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
