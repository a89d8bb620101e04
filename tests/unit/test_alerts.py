"""alerts.parse_payload: the sample payloads, every format, and hostile input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from veris_remediate.alerts import Alert, AlertBatch, parse_payload
from veris_remediate.exceptions import PayloadError, RejectedError, ValidationError

PAYLOADS = Path(__file__).resolve().parent.parent / "fixtures" / "payloads"


def sample(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def sample_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sample(name))
    return data


def webhook(*alerts: dict[str, Any], version: str = "4") -> str:
    return json.dumps({"version": version, "groupKey": "{}:{}", "alerts": list(alerts)})


def am_alert(**labels: Any) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "HttpProbeFailed", **labels},
        "annotations": {},
        "startsAt": "2026-11-29T12:00:00Z",
        "fingerprint": "5e3f0a7c2b1d4e6f",
    }


def one(batch: AlertBatch) -> Alert:
    assert len(batch.firing) + len(batch.resolved) == 1
    return (batch.firing or batch.resolved)[0]


# --- the sample payloads --------------------------------------------------------------


def test_alertmanager_nginx_down() -> None:
    batch = parse_payload(sample("alertmanager-nginx-down.json"))
    assert batch.source == "alertmanager"
    assert batch.group_key == '{}/{severity="critical"}:{alertname="HttpProbeFailed"}'
    assert batch.resolved == ()
    alert = one(batch)
    assert alert.name == "HttpProbeFailed"
    assert alert.status == "firing"
    assert alert.fingerprint == "5e3f0a7c2b1d4e6f"
    assert alert.labels["instance"] == "http://lab1/"
    assert alert.labels["service"] == "nginx"
    assert alert.severity == "critical"
    assert alert.annotations["description"] == "probe_success == 0"
    assert alert.starts_at == datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_mixed_group_keeps_resolved_out_of_firing() -> None:
    batch = parse_payload(sample("alertmanager-group-mixed.json"))
    assert [a.name for a in batch.firing] == ["SystemdUnitFailed", "TcpProbeFailed"]
    assert [a.name for a in batch.resolved] == ["HttpProbeFailed"]
    assert all(a.status == "firing" for a in batch.firing)
    assert all(a.status == "resolved" for a in batch.resolved)
    assert "5e3f0a7c2b1d4e6f" not in {a.fingerprint for a in batch.firing}


def test_only_resolved_alerts_give_an_empty_firing_tuple() -> None:
    resolved = {**am_alert(instance="lab1"), "status": "resolved"}
    batch = parse_payload(webhook(resolved, resolved))
    assert batch.firing == ()
    assert len(batch.resolved) == 2


def test_alertmanager_firewall_sample() -> None:
    alert = one(parse_payload(sample("alertmanager-firewall-exposed.json")))
    assert (alert.name, alert.labels["instance"], alert.severity) == (
        "FirewallInactive",
        "lab1:9100",
        "warning",
    )


def test_grafana_tolerates_its_extra_fields() -> None:
    batch = parse_payload(sample("grafana-high-memory.json"))
    assert batch.source == "grafana"
    alert = one(batch)
    assert alert.source == "grafana"
    assert alert.name == "HighMemoryUsage"
    assert alert.labels["grafana_folder"] == "Infra"
    assert alert.fingerprint == "3c2b1a0f9e8d7c6b"


def test_grafana_detected_by_org_id_even_without_version() -> None:
    data = sample_json("grafana-high-memory.json")
    del data["version"]
    assert parse_payload(json.dumps(data)).source == "grafana"


def test_sentinel_wrapped_in_repository_dispatch() -> None:
    batch = parse_payload(sample("sentinel-s1-probes.json"))
    assert batch.source == "sentinel"
    alert = one(batch)
    assert alert.status == "firing"
    assert alert.name == "S1-probes"
    assert alert.labels["host"] == "lab1"
    assert alert.labels["service"] == "nginx"
    assert alert.labels["endpoint"] == "/health/live"
    assert alert.annotations["summary"] == "Liveness check error: connection refused on :80"
    assert alert.severity == "critical"
    assert alert.starts_at == datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert len(alert.fingerprint) == 16


def test_sentinel_bare() -> None:
    alert = one(parse_payload(sample("sentinel-s11-firewall.json")))
    assert alert.source == "sentinel"
    assert alert.name == "S11-firewall-status"
    assert alert.labels["ufw_status"] == "inactive"
    assert alert.annotations["summary"] == "UFW firewall is inactive"


def test_sentinel_bare_and_wrapped_are_the_same_alert() -> None:
    bare = sample_json("sentinel-s1-probes.json")["client_payload"]
    assert one(parse_payload(json.dumps(bare))) == one(
        parse_payload(sample("sentinel-s1-probes.json"))
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("fail", "firing"),
        ("error", "firing"),
        ("critical", "firing"),
        ("FAIL", "firing"),
        ("pass", "resolved"),
        ("ok", "resolved"),
        ("resolved", "resolved"),
    ],
)
def test_sentinel_status_words(status: str, expected: str) -> None:
    data = {**sample_json("sentinel-s11-firewall.json"), "status": status}
    batch = parse_payload(json.dumps(data))
    assert one(batch).status == expected
    assert batch.firing if expected == "firing" else batch.resolved


@pytest.mark.parametrize("status", ["warn", "", None, 1, "fail; rm"])
def test_sentinel_unknown_status_is_rejected(status: object) -> None:
    data = {**sample_json("sentinel-s11-firewall.json"), "status": status}
    with pytest.raises(ValidationError, match="status"):
        parse_payload(json.dumps(data))


def test_sentinel_fail_and_pass_share_a_fingerprint() -> None:
    fail = sample_json("sentinel-s11-firewall.json")
    passed = {**fail, "status": "pass", "details": {"host": "lab1", "ufw_status": "active"}}
    assert (
        one(parse_payload(json.dumps(fail))).fingerprint
        == one(parse_payload(json.dumps(passed))).fingerprint
    )


def test_sentinel_extra_fields_and_nested_details_are_tolerated() -> None:
    data = {
        **sample_json("sentinel-s11-firewall.json"),
        "runbook": "https://example.org/x",
        "details": {"host": "lab1", "ports": [22, 80], "probe": {"rtt": 1}, "retries": 3},
    }
    alert = one(parse_payload(json.dumps(data)))
    assert alert.labels["retries"] == "3"
    assert "ports" not in alert.labels
    assert "probe" not in alert.labels


def test_sentinel_hostile_detail_is_rejected() -> None:
    data = {**sample_json("sentinel-s11-firewall.json"), "details": {"host": "lab1;reboot"}}
    with pytest.raises(ValidationError, match=r"details\.host"):
        parse_payload(json.dumps(data))


def test_client_payload_that_is_not_sentinel_is_rejected() -> None:
    with pytest.raises(PayloadError, match="client_payload"):
        parse_payload(json.dumps({"event_type": "x", "client_payload": {"foo": 1}}))


def test_generic_sample() -> None:
    batch = parse_payload(sample("generic-disk-cache.json"))
    assert batch.source == "generic"
    assert batch.group_key is None
    alert = one(batch)
    assert alert.name == "CacheDirFull"
    assert alert.labels == {
        "alertname": "CacheDirFull",
        "host": "lab2",
        "severity": "warning",
        "path": "/var/cache/nginx",
        "usage_percent": "97",
    }
    assert alert.severity == "warning"
    assert alert.starts_at is None


def test_generic_with_type_instance_service_and_numbers() -> None:
    raw = {"type": "ServiceDown", "instance": "lab1:80", "service": "nginx", "labels": {"n": 3}}
    alert = one(parse_payload(json.dumps(raw)))
    assert alert.name == "ServiceDown"
    assert alert.labels["instance"] == "lab1:80"
    assert alert.labels["service"] == "nginx"
    assert alert.labels["n"] == "3"
    assert alert.status == "firing"


def test_generic_resolved() -> None:
    batch = parse_payload(json.dumps({"alertname": "X", "host": "lab1", "status": "resolved"}))
    assert batch.firing == ()
    assert one(batch).status == "resolved"


@pytest.mark.parametrize(
    "raw",
    [
        {"alertname": "A", "type": "B", "host": "lab1"},
        {"alertname": "A", "host": "lab1", "labels": {"host": "lab2"}},
        {"alertname": "A", "labels": {"alertname": "B"}},
        {"alertname": "", "host": "lab1"},
        {"alertname": ["A"], "host": "lab1"},
    ],
)
def test_generic_inconsistent_or_bad_names_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_payload(json.dumps(raw))


def test_generic_unknown_field_is_rejected() -> None:
    with pytest.raises(PayloadError, match="unknown fields: 'command'"):
        parse_payload(json.dumps({"alertname": "X", "host": "lab1", "command": "reboot"}))


# --- hostile label values ------------------------------------------------------------

HOSTILE_VALUES = [
    "{{ lookup('pipe', 'touch /tmp/x') }}",
    "{% for x in y %}",
    "{# comment #}",
    "; touch /tmp/x",
    "$(touch /tmp/x)",
    "${HOME}",
    "`touch /tmp/x`",
    "nginx\nfoo: bar",
    "nginx\rfoo",
    "nginx\x00",
    "nginx\tx",
    "a | b",
    "a & b",
    "a < b",
    "a > b",
    "a\\b",
    "{a}",
    "nginx # x",
    "nginx\u202e",
    "ngïnx",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hostile_label_value_is_rejected(value: str) -> None:
    with pytest.raises(ValidationError, match=r"alerts\[0\]\.labels\.service") as caught:
        parse_payload(webhook(am_alert(instance="lab1", service=value)))
    assert caught.value.exit_code == 3
    assert "forbidden character" in caught.value.message


@pytest.mark.parametrize("value", HOSTILE_VALUES[:8])
def test_hostile_value_in_generic_and_sentinel_is_rejected(value: str) -> None:
    with pytest.raises(ValidationError):
        parse_payload(json.dumps({"alertname": "ServiceDown", "host": "lab1", "service": value}))
    sentinel = {**sample_json("sentinel-s11-firewall.json"), "details": {"service": value}}
    with pytest.raises(ValidationError):
        parse_payload(json.dumps(sentinel))


def test_hostile_alertname_is_rejected() -> None:
    alert = am_alert(instance="lab1")
    alert["labels"]["alertname"] = "{{ 7*7 }}"
    with pytest.raises(ValidationError, match="alertname"):
        parse_payload(webhook(alert))


def test_error_message_shows_at_most_a_short_prefix_of_the_value() -> None:
    value = "{{ " + "A" * 400 + " }}"
    with pytest.raises(ValidationError) as caught:
        parse_payload(webhook(am_alert(instance="lab1", service=value)))
    assert "A" * 61 not in caught.value.message
    assert len(caught.value.message) < 300


def test_allowed_punctuation_passes() -> None:
    value = "a-b_c.d,e:f/g@h%i+j=k~l[m](n)*o!p?q'r\"s t"
    alert = one(parse_payload(webhook(am_alert(instance="lab1", note=value))))
    assert alert.labels["note"] == value


@pytest.mark.parametrize("key", ["1abc", "a-b", "a.b", "", "a" * 101, "ключ", "a b"])
def test_bad_label_name_is_rejected(key: str) -> None:
    with pytest.raises(ValidationError, match="label name"):
        parse_payload(webhook(am_alert(instance="lab1", **{key: "x"})))


def test_label_value_length_limit() -> None:
    parse_payload(webhook(am_alert(instance="lab1", note="x" * 512)))
    with pytest.raises(ValidationError, match="longer than 512"):
        parse_payload(webhook(am_alert(instance="lab1", note="x" * 513)))


def test_label_count_limit() -> None:
    labels = {f"l{i}": "x" for i in range(63)}
    parse_payload(webhook(am_alert(**labels)))  # 63 + alertname = 64
    with pytest.raises(ValidationError, match="64"):
        parse_payload(webhook(am_alert(extra="x", **labels)))


@pytest.mark.parametrize("value", [1, True, None, ["x"], {"a": "b"}])
def test_alertmanager_label_values_must_be_strings(value: object) -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        parse_payload(webhook(am_alert(instance=value)))


def test_alert_without_alertname_is_rejected() -> None:
    alert = am_alert(instance="lab1")
    del alert["labels"]["alertname"]
    with pytest.raises(ValidationError, match="no alertname"):
        parse_payload(webhook(alert))


@pytest.mark.parametrize("status", ["pending", "FIRING", None, ""])
def test_alertmanager_bad_status_is_rejected(status: object) -> None:
    with pytest.raises(ValidationError, match="status"):
        parse_payload(webhook({**am_alert(instance="lab1"), "status": status}))


# --- annotations are inert text ---------------------------------------------------------


def test_annotations_keep_text_and_templates_but_lose_control_characters() -> None:
    notes = {
        "summary": "{{ lookup('pipe', 'id') }} ; $(x) `y`",
        "description": "line1\nline2\tcol\r\x1b[31mred\x00\u202eevil\x85",
    }
    alert = one(parse_payload(webhook({**am_alert(instance="lab1"), "annotations": notes})))
    assert alert.annotations["summary"] == notes["summary"]
    assert alert.annotations["description"] == (
        "line1\nline2\tcol\ufffd\ufffd[31mred\ufffd\ufffdevil\ufffd"
    )


def test_lone_surrogate_in_annotation_is_replaced() -> None:
    raw = webhook(am_alert(instance="lab1")).replace(
        '"annotations": {}', '"annotations": {"a": "x\\ud800"}'
    )
    assert one(parse_payload(raw)).annotations["a"] == "x\ufffd"


def test_annotation_limits() -> None:
    long_note = {**am_alert(instance="lab1"), "annotations": {"summary": "x" * 4097}}
    with pytest.raises(ValidationError, match="4096"):
        parse_payload(webhook(long_note))
    many = {**am_alert(instance="lab1"), "annotations": {f"a{i}": "x" for i in range(33)}}
    with pytest.raises(ValidationError, match="32"):
        parse_payload(webhook(many))
    ok = {**am_alert(instance="lab1"), "annotations": {f"a{i}": "x" * 4096 for i in range(32)}}
    assert len(one(parse_payload(webhook(ok))).annotations) == 32


def test_annotation_must_be_a_string() -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        parse_payload(webhook({**am_alert(instance="lab1"), "annotations": {"a": 1}}))


# --- payload-level limits and shapes -------------------------------------------------------


def test_two_mebibyte_payload_is_rejected() -> None:
    big = webhook(am_alert(instance="lab1")).encode() + b" " * (2 * 1024 * 1024)
    with pytest.raises(PayloadError, match="larger than") as caught:
        parse_payload(big)
    assert caught.value.exit_code == 3
    with pytest.raises(PayloadError, match="larger than"):
        parse_payload(big.decode())


def test_multibyte_text_is_measured_in_bytes() -> None:
    text = '{"alertname": "X", "summary": "' + "é" * 600_000 + '"}'
    assert len(text) < 1024 * 1024 < len(text.encode())
    with pytest.raises(PayloadError, match="larger than"):
        parse_payload(text)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"alertname": "X"', "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"alertname": "X", "host": NaN}', "NaN"),
        (b'{"alertname": "X", "alertname": "Y"}', "repeats the key"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    ],
)
def test_malformed_payload_is_rejected(raw: bytes, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        parse_payload(raw)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("[]", "an array"),
        ('"x"', "a string"),
        ("42", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ],
)
def test_non_object_json_is_rejected(raw: str, kind: str) -> None:
    with pytest.raises(PayloadError, match=f"JSON object, not {kind}"):
        parse_payload(raw)


def test_unknown_shape_is_rejected() -> None:
    with pytest.raises(PayloadError, match="unknown payload shape"):
        parse_payload(json.dumps({"hello": "world"}))


@pytest.mark.parametrize("version", ["3", 4, None, "5"])
def test_unknown_webhook_version_is_rejected(version: object) -> None:
    raw = json.dumps({"version": version, "alerts": [am_alert(instance="lab1")]})
    with pytest.raises(PayloadError, match="version"):
        parse_payload(raw)


@pytest.mark.parametrize("alerts", [[], {}, "x", None])
def test_alerts_must_be_a_non_empty_array(alerts: object) -> None:
    with pytest.raises(PayloadError, match="non-empty array"):
        parse_payload(json.dumps({"version": "4", "alerts": alerts}))


def test_alert_entry_must_be_an_object() -> None:
    with pytest.raises(PayloadError, match=r"alerts\[0\]"):
        parse_payload(json.dumps({"version": "4", "alerts": ["x"]}))


def test_alert_count_limit() -> None:
    assert len(parse_payload(webhook(*[am_alert(instance="lab1")] * 200)).firing) == 200
    with pytest.raises(PayloadError, match="at most 200"):
        parse_payload(webhook(*[am_alert(instance="lab1")] * 201))


# --- fingerprints and timestamps ----------------------------------------------------------


@pytest.mark.parametrize("given", ["ABCDEF0123456789", "abc", "x" * 16, "0" * 65, 12345678, None])
def test_unusable_fingerprint_is_replaced_by_a_label_digest(given: object) -> None:
    alert = one(parse_payload(webhook({**am_alert(instance="lab1"), "fingerprint": given})))
    assert alert.fingerprint != given
    assert len(alert.fingerprint) == 16
    assert set(alert.fingerprint) <= set("0123456789abcdef")


def test_label_digest_ignores_label_order() -> None:
    first = {**am_alert(instance="lab1", service="nginx"), "fingerprint": ""}
    second = {**first, "labels": dict(reversed(list(first["labels"].items())))}
    other = {**am_alert(instance="lab2", service="nginx"), "fingerprint": ""}
    fp1, fp2, fp3 = (one(parse_payload(webhook(a))).fingerprint for a in (first, second, other))
    assert fp1 == fp2 != fp3


def test_go_zero_time_and_nanoseconds() -> None:
    zero = one(
        parse_payload(webhook({**am_alert(instance="lab1"), "startsAt": "0001-01-01T00:00:00Z"}))
    )
    assert zero.starts_at is None
    nano = {**am_alert(instance="lab1"), "startsAt": "2026-11-29T12:00:00.123456789+02:00"}
    assert one(parse_payload(webhook(nano))).starts_at == datetime(
        2026, 11, 29, 10, 0, 0, 123456, tzinfo=UTC
    )


@pytest.mark.parametrize("value", ["yesterday", 1764417600, "2026-13-40T00:00:00Z", "x" * 100])
def test_bad_timestamp_is_rejected(value: object) -> None:
    with pytest.raises(ValidationError, match="startsAt"):
        parse_payload(webhook({**am_alert(instance="lab1"), "startsAt": value}))


# --- values are frozen ------------------------------------------------------------------------


def test_alert_and_batch_are_frozen() -> None:
    batch = parse_payload(sample("alertmanager-nginx-down.json"))
    with pytest.raises(PydanticValidationError):
        batch.firing[0].name = "other"  # type: ignore[misc]
    with pytest.raises(PydanticValidationError):
        batch.source = "generic"  # type: ignore[misc]


def test_every_rejection_is_exit_3() -> None:
    for raw in ("[]", "{", webhook(am_alert(instance="a;b"))):
        with pytest.raises(RejectedError) as caught:
            parse_payload(raw)
        assert caught.value.exit_code == 3
