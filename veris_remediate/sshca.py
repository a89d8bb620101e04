"""Short-lived SSH user certificates: a fresh key pair per fix run, signed by the operator's CA.

A remediation's check, apply and rollback runs log in with one certificate valid for at
most ``ssh_cert_minutes`` (15). Its key pair is made for that remediation alone and is in
no ``authorized_keys``: once the certificate expires, or ``destroy()`` deletes the key, the
access is gone. The start of the validity lies a minute in the past to tolerate clock
skew between controller and hosts. docs/SSH_CERTIFICATES.md describes the host side.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .exceptions import RunnerError, UsageError
from .private_files import check_private_file

MAX_MINUTES = 15
SKEW = timedelta(minutes=1)
# Ansible's SSH needs neither forwarding nor ~/.ssh/rc; a PTY stays allowed (ansible may ask
# for one with -tt when it does not pipeline).
_RESTRICTIONS = ("no-agent-forwarding", "no-port-forwarding", "no-x11-forwarding", "no-user-rc")
_IDENTITY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_PRINCIPAL_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_KEY_NAME = "id_ed25519"
# The key's path reaches Ansible as an extra var (templated) and ssh as IdentityFile
# (%-tokens): a directory holding any of these cannot carry it.
_UNSAFE_PATH_CHARS = frozenset("{}%#'\"\\")


class Certificate(BaseModel):
    """One issued certificate and its private key, in a directory of their own (0700)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    directory: Path
    identity_file: Path  # the private key
    certificate_file: Path  # <identity_file>-cert.pub: ssh also finds it there by itself
    key_id: str
    serial: int
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.valid_before

    def destroy(self) -> None:
        """Delete the key material (idempotent). Close the run's SSH masters too: a master
        opened with the certificate outlives both its expiry and this deletion."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _ssh_time(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y%m%d%H%M%S}Z"


def check_ca_key(ca_key: Path) -> Path:
    """The CA private key's absolute path; refuse one that is missing or readable by others."""
    path = Path(ca_key).expanduser().absolute()
    info = check_private_file(path, "the SSH CA key (VERIS_SSH_CA_KEY)")
    if info.st_uid != os.geteuid():
        raise UsageError(f"SSH CA key {path} is not owned by the user running veris-remediate")
    return path


def signing_argv(
    ca_key: Path,
    public_key: Path,
    *,
    identity: str,
    principals: tuple[str, ...],
    serial: int,
    valid_after: datetime,
    valid_before: datetime,
) -> list[str]:
    """``ssh-keygen -s``: sign ``public_key`` into ``<key>-cert.pub`` next to it."""
    restrictions = [arg for option in _RESTRICTIONS for arg in ("-O", option)]
    return [
        "ssh-keygen", "-q", "-s", str(ca_key), "-I", identity, "-n", ",".join(principals),
        "-z", str(serial), "-V", f"{_ssh_time(valid_after)}:{_ssh_time(valid_before)}",
        *restrictions, str(public_key),
    ]  # fmt: skip


def _run(argv: list[str], what: str) -> None:
    try:
        # No terminal (new session) and no stdin: a CA key with a passphrase fails at
        # once instead of prompting a service for it.
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise RunnerError("ssh-keygen not found: install openssh-client") from exc
    except subprocess.TimeoutExpired as exc:
        raise RunnerError(f"{what}: ssh-keygen timed out") from exc
    if done.returncode != 0:
        detail = " ".join(done.stderr.split())[-300:] or f"exit {done.returncode}"
        raise RunnerError(f"{what} failed: {detail}")


def issue_certificate(
    ca_key: Path,
    workdir: Path,
    *,
    principal: str = "root",
    minutes: int,
    identity: str,
    now: datetime | None = None,
) -> Certificate:
    """Make a fresh ed25519 key pair under ``workdir`` and sign it with ``ca_key``.

    The certificate names ``identity`` (key id: the run id, logged by sshd on every login)
    and is valid for ``principal`` from a minute before ``now`` (default: this instant)
    until ``minutes`` after it. The caller must ``destroy()`` it when the run ends.
    """
    if not 1 <= minutes <= MAX_MINUTES:
        raise UsageError(f"SSH certificates are valid for 1..{MAX_MINUTES} minutes, not {minutes}")
    if not _IDENTITY_RE.fullmatch(identity):
        raise UsageError(f"not a usable certificate identity: {identity[:60]!r}")
    if not _PRINCIPAL_RE.fullmatch(principal):
        raise UsageError(f"not a user name a certificate can be issued for: {principal[:40]!r}")
    workdir = Path(workdir).expanduser().absolute()
    if _UNSAFE_PATH_CHARS & set(str(workdir)):
        raise UsageError(
            f"SSH certificate directory {str(workdir)[:80]!r} contains one of {{ }} % # ' \" \\"
        )
    ca = check_ca_key(ca_key)
    issued = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    valid_after, valid_before = issued - SKEW, issued + timedelta(minutes=minutes)
    try:
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory = Path(tempfile.mkdtemp(prefix="sshcert-", dir=workdir))  # mode 0700
    except OSError as exc:
        raise RunnerError(f"cannot make a directory for an SSH certificate: {exc}") from exc
    key = directory / _KEY_NAME
    serial = secrets.randbits(63)  # RevokedKeys can name it; sshd logs it with the key id
    try:
        _run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", identity, "-f", str(key)],
            "making a key pair for the SSH certificate",
        )
        _run(
            signing_argv(
                ca, key.with_name(f"{_KEY_NAME}.pub"), identity=identity,
                principals=(principal,), serial=serial, valid_after=valid_after,
                valid_before=valid_before,
            ),
            f"signing the SSH certificate with {ca}",
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Certificate(
        directory=directory,
        identity_file=key,
        certificate_file=key.with_name(f"{_KEY_NAME}-cert.pub"),
        key_id=identity,
        serial=serial,
        principals=(principal,),
        valid_after=valid_after,
        valid_before=valid_before,
    )


@contextlib.contextmanager
def run_certificate(
    ca_key: Path | None,
    workdir: Path,
    *,
    principal: str = "root",
    minutes: int,
    identity: str,
) -> Iterator[Certificate | None]:
    """A certificate for the duration of a ``with`` block (None when no CA is configured);
    its key material is deleted on the way out, whatever happens."""
    if ca_key is None:
        yield None
        return
    cert = issue_certificate(
        ca_key, workdir, principal=principal, minutes=minutes, identity=identity
    )
    try:
        yield cert
    finally:
        cert.destroy()
