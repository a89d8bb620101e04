"""Secret files (keys, tokens) the operator points us at: refused unless private.

One rule for the audit key, the serve and notify tokens and the SSH CA key: a regular
file that neither group nor others can open. A secret anyone on the host can read is no
secret, and saying so at start-up beats finding out after an incident.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .exceptions import UsageError, VerisError


def check_private_file(
    path: Path, what: str, error: type[VerisError] = UsageError
) -> os.stat_result:
    """``path``'s stat when it is a regular file closed to group and others; else ``error``."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise error(f"cannot read {what} {path}: it does not exist") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file")
    if info.st_mode & 0o077:
        raise error(
            f"{what} {path} is open to group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    return info


def read_private_file(path: Path, what: str, error: type[VerisError] = UsageError) -> bytes:
    """The bytes of a private file (see ``check_private_file``)."""
    check_private_file(path, what, error)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
