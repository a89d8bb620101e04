"""Locate the reviewed roles and playbooks, in a source checkout or inside the wheel."""

from __future__ import annotations

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
