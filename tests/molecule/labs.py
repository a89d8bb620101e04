"""Lab hosts shared by the molecule scenarios: booted once per session, reset before each use.

A scenario asks for a host with exactly the lab features its molecule.yml names
(MOLECULE_LAB_FEATURES: none, postgres, docker). The first scenario of a feature set boots
that host; every later one gets it reset first (``Lab.reset_host``: killed and booted
again from the clean, read-only root, so nothing an earlier scenario did survives). The
scenario then runs with MOLECULE_LAB_INVENTORY set (tests/molecule/create.yml links that
inventory instead of booting) and ``--destroy=never``.

Names: ``<base><worker><slot>1`` on subnet ``<first> + 5 * worker + slot``: base and first
are MOLECULE_LAB_PREFIX and MOLECULE_LAB_SUBNET (default mol and 100); worker is "" without
pytest-xdist, a and b for xdist workers gw0 and gw1; the slot is "" (lean), p (postgres),
d (docker), pd (both) or s (the standalone create/destroy check's own host). Every prefix
this gives for the defaults is in the Makefile's LAB_PREFIXES, so `make lab-down` removes
them whatever happens (test_molecule.py checks it).
"""

from __future__ import annotations

import os
from pathlib import Path

from veris_remediate.exceptions import LabError
from veris_remediate.lab import Lab

# Lab features of each slot; the order gives the subnet offsets.
SLOTS: dict[str, tuple[str, ...]] = {
    "": (),
    "p": ("postgres",),
    "d": ("docker",),
    "pd": ("docker", "postgres"),
    "s": (),
}
STANDALONE = "s"
WORKER_LETTERS = "ab"  # xdist workers gw0, gw1; more need letters here and in the Makefile
DEFAULT_BASE = "mol"
DEFAULT_SUBNET = 100


def slot_name(base: str, first_subnet: int, worker: str | None, slot: str) -> tuple[str, int]:
    """(prefix, first subnet) of a slot's lab for an xdist worker id (None: no xdist)."""
    letter, index = "", 0
    if worker:
        index = int(worker.removeprefix("gw"))
        if index >= len(WORKER_LETTERS):
            raise LabError(
                f"xdist worker {worker}: molecule labs are named for {len(WORKER_LETTERS)} "
                "workers only; add a letter to WORKER_LETTERS and its prefixes to the "
                "Makefile's LAB_PREFIXES"
            )
        letter = WORKER_LETTERS[index]
    return f"{base}{letter}{slot}", first_subnet + len(SLOTS) * index + list(SLOTS).index(slot)


def slot_for(features: tuple[str, ...]) -> str:
    wanted = tuple(sorted(set(features)))
    for slot, have in SLOTS.items():
        if slot != STANDALONE and have == wanted:
            return slot
    raise LabError(f"no molecule lab slot has features {', '.join(wanted)}: add one to SLOTS")


class SharedHosts:
    """One lab host per feature set for this pytest process, reset between scenarios."""

    def __init__(self, root: Path, cache: Path, base: str, first_subnet: int) -> None:
        self.root = root
        self.cache = cache
        self._base = base
        self._first_subnet = first_subnet
        self._worker = os.environ.get("PYTEST_XDIST_WORKER")
        self._labs: dict[str, Lab] = {}

    def lab(self, slot: str, state_dir: Path | None = None) -> Lab:
        """The lab of ``slot`` for this process (state under ``state_dir`` if given)."""
        prefix, subnet = slot_name(self._base, self._first_subnet, self._worker, slot)
        state = state_dir or self.root / (slot or "lean")
        return Lab(state, self.cache, prefix=prefix, first_subnet=subnet, features=SLOTS[slot])

    def clean_host(self, features: tuple[str, ...]) -> Path:
        """Inventory of a host with these features, freshly booted.

        Booted on first use; reset (killed and booted again from the clean root) on every
        later use, so nothing an earlier scenario did is left.
        """
        slot = slot_for(features)
        lab = self._labs.get(slot)
        if lab is None:
            lab = self._labs[slot] = self.lab(slot)
            return lab.up(1)
        lab.reset_host(f"{lab.prefix}1", timeout=120)  # as long as `up` waits: a busy CI
        return lab.inventory_path()

    def down(self) -> None:
        """Remove every host booted here; all are tried, failures reported together."""
        errors = []
        for lab in self._labs.values():
            try:
                lab.down()
            except LabError as exc:
                errors.append(exc.message)
        self._labs.clear()
        if errors:
            raise LabError("; ".join(errors))
