"""Locate the reviewed roles and playbooks (checkout or wheel) and the Ansible executables."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def ansible_dir() -> Path:
    """Directory holding ``roles/`` and ``playbooks/``.

    A wheel carries them in ``veris_remediate/_ansible``; a checkout (editable install)
    keeps them beside the package.
    """
    bundled = _PACKAGE / "_ansible"
    if (bundled / "playbooks").is_dir():
        return bundled
    return _PACKAGE.parent


def playbooks_dir() -> Path:
    return ansible_dir() / "playbooks"


def roles_dir() -> Path:
    return ansible_dir() / "roles"


def default_rules_file() -> Path:
    return _PACKAGE / "rules" / "default.yml"


def find_tool(name: str) -> str | None:
    """An Ansible executable installed with this interpreter (an unactivated venv), else PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)
