"""A throwaway PostgreSQL server for tests: its own cluster in a temp dir, on 127.0.0.1.

Debian's server binaries (``/usr/lib/postgresql/*/bin``, package ``postgresql``) run
the cluster; as root they run as the ``postgres`` user, who owns the data dir (PostgreSQL
refuses to run as root). Password authentication over TCP, as a deployment would use it.
``stop()`` stops the server and removes everything. Nothing here skips: a server that
cannot start raises ``PgServerError`` and the test using it fails.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

PG_ROOT = Path("/usr/lib/postgresql")


class PgServerError(RuntimeError):
    pass


def server_bin() -> Path:
    """The newest installed server's bin dir."""
    found = sorted(
        (p.parent for p in PG_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()),
        key=lambda b: int(re.sub(r"\D", "", b.parent.name) or 0),
    )
    if not found:
        raise PgServerError(
            f"no PostgreSQL server under {PG_ROOT}/*/bin: install Debian's postgresql "
            "(scripts/setup.sh does)"
        )
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    def __init__(self, root: Path, port: int, user: str, password: str, as_user: list[str]):
        self.root = root
        self.data = root / "data"
        self.port = port
        self.user = user
        self.password = password
        self._as_user = as_user
        self._bin = server_bin()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, *argv],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _start(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        init = self._run(
            str(self._bin / "initdb"), "-D", str(self.data), "-U", self.user,
            f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        if init.returncode != 0:
            raise PgServerError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=100"
        )
        start = self._run(
            str(self._bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        if start.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise PgServerError(f"pg_ctl start failed: {start.stderr.strip()}\n{log[-2000:]}")

    def _own(self, path: Path) -> None:
        if self._as_user:
            shutil.chown(path, "postgres", "postgres")
        path.chmod(0o600 if path.is_file() else 0o700)

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_server(user: str = "veris") -> PgServer:
    """Start a fresh cluster on a free loopback port (a few tries, should one be taken)."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PgServerError("running as root needs runuser to start PostgreSQL as postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    last: PgServerError | None = None
    for _ in range(3):
        root = Path(tempfile.mkdtemp(prefix="veris-pg-"))
        server = PgServer(root, _free_port(), user, secrets.token_hex(12), as_user)
        try:
            server._own(root)
        except (KeyError, LookupError, OSError) as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise PgServerError(f"cannot hand {root} to the postgres user: {exc}") from exc
        try:
            server._start()
        except (PgServerError, subprocess.TimeoutExpired) as exc:
            server.stop()
            last = exc if isinstance(exc, PgServerError) else PgServerError(str(exc))
            continue
        return server
    assert last is not None
    raise last


@contextmanager
def pgserver(user: str = "veris") -> Iterator[PgServer]:
    server = start_server(user)
    try:
        yield server
    finally:
        server.stop()
