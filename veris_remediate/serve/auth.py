"""Who may post alerts: the listen address, the bearer token and its constant-time check."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path
from typing import Literal

from ..exceptions import UsageError
from ..private_files import read_private_file
from ..settings import Settings

MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096

AuthVerdict = Literal["ok", "missing", "wrong"]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port); the host must be an IP address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text[:80]!r} is not HOST:PORT (e.g. 127.0.0.1:9095)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(
            f"--listen {text[:80]!r}: the host must be an IP address (127.0.0.1, ::1, 0.0.0.0)"
        ) from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _checked(token: str, where: str) -> str:
    token = token.strip()
    if not token:
        raise UsageError(f"the serve token in {where} is empty")
    if len(token) < MIN_TOKEN_CHARS or len(token) > MAX_TOKEN_CHARS:
        raise UsageError(
            f"the serve token in {where} must be {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} "
            "characters (e.g. `openssl rand -hex 32`)"
        )
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise UsageError(f"the serve token in {where} must be printable ASCII without spaces")
    return token


def read_token_file(path: Path) -> str:
    """The token in ``path``: a regular file only its owner can read (0600 or 0400)."""
    raw = read_private_file(path, "the serve token file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read the serve token file {path}: not UTF-8") from exc
    return _checked(text, str(path))


def load_token(settings: Settings, *, insecure_no_auth: bool, host: str) -> str | None:
    """The bearer token ``serve`` requires, or None when auth is off (loopback only).

    From ``serve_token_file`` (``--token-file``, VERIS_SERVE_TOKEN_FILE) or ``serve_token``
    (VERIS_SERVE_TOKEN) -- exactly one of them. Without either, ``serve`` refuses to start
    unless ``--insecure-no-auth`` was given and it listens on loopback only.
    """
    from_env = settings.serve_token.get_secret_value()
    file = settings.serve_token_file
    if insecure_no_auth:
        if file is not None or from_env:
            raise UsageError("--insecure-no-auth and a serve token contradict each other")
        if not is_loopback(host):
            raise UsageError(
                f"--insecure-no-auth is refused on {host}: without a token, serve only "
                "listens on loopback (127.0.0.1 or ::1)"
            )
        return None
    if file is not None and from_env:
        raise UsageError("both a serve token file and VERIS_SERVE_TOKEN are set: use one")
    if file is not None:
        return read_token_file(file)
    if from_env:
        return _checked(from_env, "VERIS_SERVE_TOKEN")
    raise UsageError(
        "serve needs a bearer token: --token-file FILE (0600) or VERIS_SERVE_TOKEN, the same "
        "one Alertmanager sends (http_config.authorization); --insecure-no-auth on loopback "
        "only for trying it out"
    )


class BearerAuth:
    """``Authorization: Bearer <token>``, compared in constant time (RFC 6750 scheme case)."""

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()

    def check(self, header: str | None) -> AuthVerdict:
        if not header:
            return "missing"
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return "wrong"
        # Hashing first makes the comparison independent of the token's length too.
        given = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
        return "ok" if hmac.compare_digest(given, self._digest) else "wrong"
