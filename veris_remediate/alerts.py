"""Turn one untrusted webhook payload into a validated, frozen AlertBatch.

Every byte here came from the network. Values are checked against allowlists and
limits and refused with a message naming the field and the reason; a hostile value
is never echoed in full, never interpolated, never evaluated.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .exceptions import PayloadError, ValidationError
from .redaction import is_secret_name, redact, redact_text

Source = Literal["alertmanager", "grafana", "sentinel", "generic"]
Status = Literal["firing", "resolved"]

MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_ALERTS = 200
MAX_LABELS = 64
MAX_LABEL_VALUE = 512
MAX_ANNOTATIONS = 32
MAX_ANNOTATION_VALUE = 4096
MAX_NAME = 200
SHOWN_CHARS = 60  # of a refused value, so an error message never carries a payload

LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
# No braces, $, backtick, ;, |, &, <, >, \, # or control characters: nothing a shell,
# Jinja2 or YAML would give meaning to. Always used with fullmatch (``$`` would
# accept a trailing newline).
LABEL_VALUE = re.compile(r"[A-Za-z0-9 _.,:/@%+=~\-\[\]()*!?'\"]*")
FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")

SENTINEL_FIRING = frozenset({"fail", "error", "critical"})
SENTINEL_RESOLVED = frozenset({"pass", "ok", "resolved"})
# Sentinel details that say *what* is affected; a fail and the later pass of one check
# share them, so they (not the changing measurements) make the fingerprint.
SENTINEL_IDENTITY = (
    "host",
    "hostname",
    "instance",
    "nodename",
    "target",
    "service",
    "name",
    "environment",
)
GENERIC_KEYS = frozenset(
    {
        "alertname",
        "type",
        "host",
        "instance",
        "service",
        "severity",
        "labels",
        "annotations",
        "status",
        "fingerprint",
        "summary",
        "description",
    }
)
# Bidirectional overrides can make an annotation display differently from what it says.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class Alert(BaseModel):
    """One alert, validated: labels are safe identifiers, annotations inert text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Source
    status: Status
    name: str
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    severity: str | None
    starts_at: datetime | None


class AlertBatch(BaseModel):
    """Every alert of one payload; resolved alerts are kept apart from firing ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Source
    group_key: str | None
    firing: tuple[Alert, ...]
    resolved: tuple[Alert, ...]


def shown(value: object) -> str:
    """A short, quoted rendering of a refused value for error messages."""
    text = value if isinstance(value, str) else type(value).__name__
    if len(text) > SHOWN_CHARS:
        return repr(text[:SHOWN_CHARS]) + "…"
    return repr(text)


def parse_payload(raw: bytes | str) -> AlertBatch:
    """Parse an Alertmanager, Grafana, Sentinel or generic payload, detected by shape."""
    data = _decode(raw)
    if not isinstance(data, dict):
        raise PayloadError(f"payload must be a JSON object, not {_json_type(data)}")
    if isinstance(data.get("client_payload"), dict):  # GitHub repository_dispatch
        inner = data["client_payload"]
        if "check_id" not in inner:
            raise PayloadError("client_payload is not a Sentinel alert (no check_id)")
        return _batch("sentinel", None, [_sentinel(inner)])
    if "alerts" in data:
        return _webhook(data)
    if "check_id" in data:
        return _batch("sentinel", None, [_sentinel(data)])
    if "alertname" in data or "type" in data:
        return _batch("generic", None, [_generic(data)])
    raise PayloadError(
        "unknown payload shape: expected an Alertmanager/Grafana webhook (alerts), a Sentinel "
        "alert (check_id, optionally in client_payload) or a generic alert (alertname or type)"
    )


def _decode(raw: bytes | str) -> Any:
    # Check the size before decoding so a huge body costs nothing.
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"payload is not valid UTF-8 (byte {exc.start})") from exc
    else:
        text = raw
        if len(text.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD_BYTES:
            raise PayloadError(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    except (ValueError, RecursionError) as exc:  # NaN, giant integers, absurd nesting
        raise PayloadError(f"payload is not acceptable JSON: {type(exc).__name__}") from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may pick different duplicates; refuse the ambiguity instead.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PayloadError(f"payload repeats the key {shown(key)}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise PayloadError(f"payload contains {name}, which is not JSON")


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _batch(source: Source, group_key: str | None, alerts: list[Alert]) -> AlertBatch:
    return AlertBatch(
        source=source,
        group_key=group_key,
        firing=tuple(a for a in alerts if a.status == "firing"),
        resolved=tuple(a for a in alerts if a.status == "resolved"),
    )


def _webhook(data: dict[str, Any]) -> AlertBatch:
    version = data.get("version")
    if "orgId" in data or version == "1":
        source: Source = "grafana"
    elif version == "4":
        source = "alertmanager"
    else:
        raise PayloadError(f"unsupported webhook version {shown(version)} (expected '4' or '1')")
    items = data["alerts"]
    if not isinstance(items, list) or not items:
        raise PayloadError("alerts must be a non-empty array")
    if len(items) > MAX_ALERTS:
        raise PayloadError(f"payload has {len(items)} alerts; at most {MAX_ALERTS} are accepted")
    group_key = data.get("groupKey")
    if group_key is not None:
        group_key = _text("groupKey", group_key)
    return _batch(source, group_key, [_webhook_alert(source, i, a) for i, a in enumerate(items)])


def _webhook_alert(source: Source, index: int, item: object) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(item, dict):
        raise PayloadError(f"{where} must be an object")
    status = item.get("status")
    if status not in ("firing", "resolved"):
        raise ValidationError(f"{where}.status must be 'firing' or 'resolved', not {shown(status)}")
    labels = _labels(f"{where}.labels", item.get("labels"))
    if "alertname" not in labels:
        raise ValidationError(f"{where}.labels has no alertname")
    return _alert(
        source,
        status,
        name=_name(f"{where}.labels.alertname", labels["alertname"]),
        labels=labels,
        annotations=_annotations(f"{where}.annotations", item.get("annotations")),
        severity=labels.get("severity"),
        starts_at=_time(f"{where}.startsAt", item.get("startsAt")),
        fingerprint=item.get("fingerprint"),
    )


def _sentinel(data: Mapping[str, Any]) -> Alert:
    status = data.get("status")
    word = status.lower() if isinstance(status, str) else None
    if word in SENTINEL_FIRING:
        state: Status = "firing"
    elif word in SENTINEL_RESOLVED:
        state = "resolved"
    else:
        words = sorted(SENTINEL_FIRING | SENTINEL_RESOLVED)
        raise ValidationError(f"status must be one of {words}, not {shown(status)}")
    name = _name("check_id", data.get("check_id"))
    details = data.get("details", {})
    if details is None:
        details = {}
    if not isinstance(details, dict):
        raise ValidationError("details must be an object")
    # Only scalar details become labels; nested measurements are not selectors.
    raw_labels = {k: v for k, v in details.items() if isinstance(v, str | int | float)}
    labels = _labels("details", raw_labels, lax=True)
    labels["alertname"] = name
    if data.get("environment") is not None:
        labels["environment"] = _label_value("environment", data["environment"], lax=True)
    annotations: dict[str, str] = {}
    for key, field in (("summary", "message"), ("alert_id", "alert_id")):
        if data.get(field) is not None:
            annotations[key] = _text(field, data[field])
    identity = {k: v for k, v in labels.items() if k in SENTINEL_IDENTITY}
    identity["alertname"] = name
    severity = data.get("severity")
    return _alert(
        "sentinel",
        state,
        name=name,
        labels=labels,
        annotations=annotations,
        severity=None if severity is None else _label_value("severity", severity, lax=True),
        starts_at=_time("timestamp", data.get("timestamp")),
        fingerprint=_digest(identity),
    )


def _generic(data: Mapping[str, Any]) -> Alert:
    unknown = sorted(set(data) - GENERIC_KEYS)
    if unknown:
        listed = ", ".join(shown(k) for k in unknown[:5])
        raise PayloadError(f"generic alert has unknown fields: {listed}")
    names = {_name(k, data[k]) for k in ("alertname", "type") if data.get(k) is not None}
    if len(names) != 1:
        raise ValidationError("generic alert needs one name (alertname or type, not two different)")
    name = names.pop()
    labels = _labels("labels", data.get("labels", {}), lax=True)
    for key in ("host", "instance", "service", "severity"):
        if data.get(key) is None:
            continue
        value = _label_value(key, data[key], lax=True)
        if labels.get(key, value) != value:
            raise ValidationError(f"{key} disagrees with labels.{key}")
        labels[key] = value
    if labels.get("alertname", name) != name:
        raise ValidationError("alertname disagrees with labels.alertname")
    labels["alertname"] = name
    annotations = _annotations("annotations", data.get("annotations", {}))
    for key in ("summary", "description"):
        if data.get(key) is not None:
            annotations[key] = _text(key, data[key])
    status = data.get("status", "firing")
    if status not in ("firing", "resolved"):
        raise ValidationError(f"status must be 'firing' or 'resolved', not {shown(status)}")
    return _alert(
        "generic",
        status,
        name=name,
        labels=labels,
        annotations=annotations,
        severity=labels.get("severity"),
        starts_at=None,
        fingerprint=data.get("fingerprint"),
    )


def _alert(
    source: Source,
    status: Status,
    *,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    severity: str | None,
    starts_at: datetime | None,
    fingerprint: object,
) -> Alert:
    if len(labels) > MAX_LABELS:
        raise ValidationError(f"alert {name} has more than {MAX_LABELS} labels")
    given = isinstance(fingerprint, str) and FINGERPRINT.fullmatch(fingerprint)
    # Secrets are masked on the way in, so the stored (masked) payload replays to the
    # very same alerts, fingerprints included.
    labels = {k: str(v) for k, v in redact(labels).items()}
    annotations = {k: str(v) for k, v in redact(annotations).items()}
    return Alert(
        source=source,
        status=status,
        name=name,
        fingerprint=fingerprint if given else _digest(labels),
        labels=labels,
        annotations=annotations,
        severity=severity,
        starts_at=starts_at,
    )


def _value_shown(where: str, value: str) -> str:
    """A refused value as an error may quote it: never one named like a secret."""
    if is_secret_name(where.rsplit(".", 1)[-1]):
        return "value not shown"
    return f"value {redact_text(shown(value))}"


def _digest(labels: Mapping[str, str]) -> str:
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _labels(where: str, raw: object, *, lax: bool = False) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationError(f"{where} must be an object")
    if len(raw) > MAX_LABELS:
        raise ValidationError(f"{where} has {len(raw)} labels; at most {MAX_LABELS} are accepted")
    result: dict[str, str] = {}
    for key, value in raw.items():
        if not LABEL_KEY.fullmatch(key):
            raise ValidationError(f"{where}: label name {shown(key)} is not [A-Za-z_][A-Za-z0-9_]*")
        result[key] = _label_value(f"{where}.{key}", value, lax=lax)
    return result


def _label_value(where: str, value: object, *, lax: bool = False) -> str:
    # Alertmanager and Grafana always send strings; hand-written generic and Sentinel
    # payloads may send numbers or booleans, kept in their JSON spelling.
    if lax and isinstance(value, bool | int | float):
        value = json.dumps(value)
    if not isinstance(value, str):
        raise ValidationError(f"{where} must be a string")
    if len(value) > MAX_LABEL_VALUE:
        raise ValidationError(f"{where} is longer than {MAX_LABEL_VALUE} characters")
    if not LABEL_VALUE.fullmatch(value):
        bad = next(c for c in value if not LABEL_VALUE.fullmatch(c))
        raise ValidationError(
            f"{where} contains the forbidden character {bad!r} "
            f"({_value_shown(where, value)}); label "
            "values may only use letters, digits, space and _.,:/@%+=~-[]()*!?'\""
        )
    return value


def _name(where: str, value: object) -> str:
    name = _label_value(where, value)
    if not name.strip() or len(name) > MAX_NAME:
        raise ValidationError(f"{where} must be 1 to {MAX_NAME} characters")
    return name


def _annotations(where: str, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationError(f"{where} must be an object")
    if len(raw) > MAX_ANNOTATIONS:
        raise ValidationError(f"{where} has more than {MAX_ANNOTATIONS} entries")
    result: dict[str, str] = {}
    for key, value in raw.items():
        if not LABEL_KEY.fullmatch(key):
            raise ValidationError(f"{where}: name {shown(key)} is not [A-Za-z_][A-Za-z0-9_]*")
        result[key] = _text(f"{where}.{key}", value)
    return result


def _text(where: str, value: object) -> str:
    """Free text kept as inert data: bounded, with invisible control characters replaced."""
    if not isinstance(value, str):
        raise ValidationError(f"{where} must be a string")
    if len(value) > MAX_ANNOTATION_VALUE:
        raise ValidationError(f"{where} is longer than {MAX_ANNOTATION_VALUE} characters")
    if value.isprintable():
        # Holds no Cc, Cs or Cf character (the bidi controls are Cf): nothing to replace. The
        # common case, and ~25% of an intake's parse (docs/BENCHMARKS.md).
        return value
    return "".join(
        "\ufffd"
        if (c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cs")) or c in _BIDI
        else c
        for c in value
    )


def _time(where: str, value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationError(f"{where} must be an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(f"{where} is not an RFC 3339 timestamp: {shown(value)}") from exc
    if moment.year <= 1:  # Go's zero time: "not set"
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
