"""Mask secrets in untrusted data before anything veris writes can carry them.

Alert payloads are written by other systems and sometimes carry credentials: a label
``authorization: Bearer …``, an annotation with a callback URL ``…?token=…``, a Sentinel
detail named ``api_key``. None of that is needed to route or fix anything, and none of it
may reach a run directory, the extra vars Ansible prints, a report or the audit log.

Three rules, applied recursively:

- a mapping key named like a secret (``password``, ``db_pass``, ``api_key``, ``token``,
  ``authorization``, ``cookie``, …) has its whole value masked;
- a ``{name: …, value: …}`` pair (how labels travel as extra vars) whose name is named like
  a secret has its value masked;
- in every string: credentials after an auth scheme (``Bearer x``, ``Basic x``), after a
  secret-named key (``token=x``, ``password: x``, ``"api_key": "x"``) and in a URL's user
  info (``https://user:x@host``) are masked.

Masking is idempotent: redacting redacted data changes nothing, so a payload stored
redacted parses to the same alerts as the payload it came from, once both are redacted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

# "pass" only where no letter follows (db_pass, pass=…), so "passed" and "passive" are kept;
# "auth" likewise ("http_auth" yes, "author" no).
_NAMES = (
    r"pass(?:word|wd|phrase)?(?![a-z])|pwd|secret|token|api_?key|apikey|access_?key"
    r"|private_?key|auth(?:orization)?(?![a-z])|credential|cookie|session_?id|signature"
)
SECRET_NAME = re.compile(_NAMES, re.IGNORECASE)
_SCHEME = re.compile(r"(?i)\b(bearer|basic|digest)(\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/-]+=*")
_ASSIGNED = re.compile(
    # Bounded around the name: unbounded, a long run of word characters backtracks
    # quadratically (a 300 kB label value took minutes).
    rf"(?i)([\w.-]{{0,64}}(?:{_NAMES})[\w.-]{{0,64}})"  # the key
    r"([\"']?\s*[:=]\s*)"  # = or : (a JSON key's closing quote before it)
    r"(\"[^\"]*\"|'[^']*'|[^\s&;,\"'<>]+)"  # the value: quoted, or up to a separator
)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,31}://[^\s/:@]*):(?!\[REDACTED\]@)[^\s/@]+@")
_SCHEME_WORDS = frozenset({"bearer", "basic", "digest"})


def is_secret_name(name: str) -> bool:
    """Is ``name`` (a key, a label name) named like something holding a secret?"""
    return SECRET_NAME.search(name) is not None


def _assigned(match: re.Match[str]) -> str:
    value = match[3]
    # "Authorization: Bearer x": the scheme rule has masked x already; keep the scheme word.
    if value.strip("\"'").lower() in _SCHEME_WORDS or value.strip("\"'") == REDACTED:
        return match[0]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match[1]}{match[2]}{quote}{REDACTED}{quote}"


def redact_text(text: str) -> str:
    """``text`` with credentials after auth schemes, secret-named keys and in URLs masked."""
    text = _SCHEME.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
    if SECRET_NAME.search(text):
        text = _ASSIGNED.sub(_assigned, text)
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m[1]}:{REDACTED}@", text)
    return text


def redact(value: Any) -> Any:
    """A copy of ``value`` (JSON-like data) with every secret masked; other values unchanged."""
    if isinstance(value, Mapping):
        name = value.get("name")
        secret_pair = "value" in value and isinstance(name, str) and is_secret_name(name)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if is_secret_name(str(key)) or (secret_pair and key == "value"):
                out[str(key)] = REDACTED
            else:
                out[str(key)] = redact(item)
        return out
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_payload(raw: bytes | str) -> bytes:
    """A received payload with its secrets masked, as bytes to store (JSON when it was)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        data = json.loads(text)
    except ValueError:
        return redact_text(text).encode()
    return json.dumps(redact(data), ensure_ascii=False).encode()
