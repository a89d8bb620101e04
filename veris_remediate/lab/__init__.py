"""Boot, probe and remove disposable Debian lab hosts (systemd-nspawn, one netns each).

A lab is hosts ``<prefix>1..N``. They share one cached, read-only Debian bookworm root
file system (``--volatile=overlay``: a host's writes live in its own tmpfs and vanish
when it stops). Each host runs real systemd in its own network namespace, joined to the
controller by a veth pair on 198.18.<s>.0/30 (the benchmarking range, routed nowhere),
and root logs in over SSH with the lab's key, or with a user certificate signed by the
lab's own SSH CA (``Lab.ssh_ca_key()``; every host's sshd trusts it). Everything a host
leaves on the controller (process, cgroups, netns, veth, nspawn run files) is found again
by its name, so ``down`` also works when the state file is lost. Recipes verified in LAB.md.
"""

from __future__ import annotations

from .hosts import NEEDED_UNITS, SSH_OPTIONS, Lab, LabHost, require_root_and_tools
from .rootfs import PACKAGES, POST_SCRIPT, ensure_rootfs, recipe_digest, rootfs_path

__all__ = [
    "NEEDED_UNITS",
    "PACKAGES",
    "POST_SCRIPT",
    "SSH_OPTIONS",
    "Lab",
    "LabHost",
    "ensure_rootfs",
    "recipe_digest",
    "require_root_and_tools",
    "rootfs_path",
]
