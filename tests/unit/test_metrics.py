"""The receiver's metrics, as Prometheus parses them, and the dashboard and rules built on them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from veris_remediate.metrics import CONFIDENCE_BUCKETS, Metrics
from veris_remediate.report import PhaseRecord, RemediationResult, RunReport, build_report
from veris_remediate.store import BreakerRow, QueueStats

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "veris-remediate-dashboard.json"
RULES = ROOT / "examples" / "prometheus" / "veris-remediate-rules.yml"
PROMTOOL = shutil.which("promtool")
METRIC_NAME = re.compile(r"\b(veris_[a-zA-Z0-9_]+)")
# Prometheus' own series a rule may use besides ours.
PROMETHEUS_SERIES = {"up"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False)


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered exposition: (name, sorted labels) -> value."""
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return _samples(metrics).get((name, tuple(sorted(labels.items()))))


def _phase(name: str, seconds: float, status: str = "ok") -> PhaseRecord:
    return PhaseRecord(name=name, status=status, seconds=seconds)  # type: ignore[arg-type]


def _result(
    outcome: str,
    fix: str | None,
    *,
    confidence: float = 0.0,
    rolled_back: bool = False,
    phases: tuple[PhaseRecord, ...] = (),
    decision: str = "apply",
) -> RemediationResult:
    return RemediationResult(
        host="web1" if fix else None,
        alert="NginxDown" if fix else None,
        fingerprint="f1" if fix else None,
        remediation=fix,
        decision=decision,  # type: ignore[arg-type]
        confidence=confidence,
        outcome=outcome,  # type: ignore[arg-type]
        rolled_back=rolled_back,
        phases=phases,
    )


def _report(*results: RemediationResult, phases: tuple[PhaseRecord, ...] = ()) -> RunReport:
    return build_report(
        run_id="r1",
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:00:42+00:00",
        source="alertmanager",
        check_only=False,
        results=results,
        phases=phases,
    )


def _exercised() -> Metrics:
    """A Metrics with every method called once, so every family has samples."""
    m = Metrics()
    m.alert_received("alertmanager")
    m.alert_rejected("auth")
    m.alert_deduplicated()
    scored = (_phase("check", 1.0), _phase("decide", 0.01), _phase("apply", 3.0))
    m.run_finished(_report(_result("resolved", "service_restart", confidence=0.9, phases=scored)))
    m.run_finished(
        _report(_result("rolled_back", "config_repair", rolled_back=True, phases=scored))
    )
    m.queue_observed(QueueStats(queued=1, running=1, oldest_queued_seconds=2.0))
    m.brake_observed(False)
    m.breaker_observed([BreakerRow(host="web1", fix="service_restart", state="open")])
    m.notification("slack", "failed")
    return m


def _exported_names() -> set[str]:
    return {name for name, _ in _samples(_exercised())}


# -- the exposition ----------------------------------------------------------------------


def test_render_is_prometheus_text_with_its_content_type():
    m = Metrics()
    body, content_type = m.render()
    assert isinstance(body, bytes)
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert families["veris_alerts_received"] == "counter"
    assert families["veris_phase_duration_seconds"] == "histogram"
    assert families["veris_decision_confidence"] == "histogram"
    assert families["veris_queue_depth"] == "gauge"


def test_known_label_values_start_at_zero():
    m = Metrics()
    for source in ("alertmanager", "grafana", "sentinel", "generic"):
        assert _value(m, "veris_alerts_received_total", source=source) == 0
    for reason in ("auth", "size", "payload", "full"):
        assert _value(m, "veris_alerts_rejected_total", reason=reason) == 0
    assert _value(m, "veris_runs_total", outcome="rolled_back") == 0


def test_each_metrics_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.alert_received("grafana")
    assert _value(a, "veris_alerts_received_total", source="grafana") == 1
    assert _value(b, "veris_alerts_received_total", source="grafana") == 0
    assert REGISTRY.get_sample_value("veris_alerts_received_total", {"source": "grafana"}) is None


def test_intake_counters_and_bounded_labels():
    m = Metrics()
    m.alert_received("alertmanager")
    m.alert_received("alertmanager")
    m.alert_received("<script>")  # never expected; must not become a series of its own
    m.alert_rejected("size")
    m.alert_rejected("bogus")  # type: ignore[arg-type]
    m.alert_deduplicated()
    assert _value(m, "veris_alerts_received_total", source="alertmanager") == 2
    assert _value(m, "veris_alerts_received_total", source="other") == 1
    assert _value(m, "veris_alerts_rejected_total", reason="size") == 1
    assert _value(m, "veris_alerts_rejected_total", reason="other") == 1
    assert _value(m, "veris_alerts_deduplicated_total") == 1
    names = {labels for name, labels in _samples(m) if name == "veris_alerts_received_total"}
    assert (("source", "<script>"),) not in names


def test_run_finished_counts_runs_remediations_and_rollbacks():
    m = Metrics()
    scored = (_phase("check", 2.0), _phase("decide", 0.01), _phase("apply", 4.0))
    report = _report(
        _result("resolved", "service_restart", confidence=0.92, phases=scored),
        _result("rolled_back", "config_repair", confidence=0.75, rolled_back=True, phases=scored),
        phases=(_phase("intake", 0.02), _phase("route", 0.03)),
    )
    assert report.outcome == "rolled_back"
    m.run_finished(report)
    assert _value(m, "veris_runs_total", outcome="rolled_back") == 1
    assert _value(m, "veris_runs_total", outcome="resolved") == 0
    assert _value(m, "veris_remediations_total", outcome="resolved", fix="service_restart") == 1
    assert _value(m, "veris_remediations_total", outcome="rolled_back", fix="config_repair") == 1
    assert _value(m, "veris_rollbacks_total", fix="config_repair") == 1
    assert _value(m, "veris_rollbacks_total", fix="service_restart") is None
    assert _value(m, "veris_run_duration_seconds_count") == 1
    assert _value(m, "veris_run_duration_seconds_sum") == 42


def test_phase_durations_count_each_phase_once():
    """build_report repeats the worst remediation's phases at the top: not counted twice."""
    m = Metrics()
    scored = (_phase("check", 2.0), _phase("decide", 0.01), _phase("apply", 4.0, "failed"))
    report = _report(
        _result("rolled_back", "config_repair", rolled_back=True, phases=scored),
        phases=(_phase("intake", 0.02), _phase("route", 0.03)),
    )
    assert len(report.phases) == 5  # intake, route + the head's three
    m.run_finished(report)
    count = "veris_phase_duration_seconds_count"
    assert _value(m, count, phase="intake", status="ok") == 1
    assert _value(m, count, phase="check", status="ok") == 1
    assert _value(m, count, phase="apply", status="failed") == 1
    assert _value(m, "veris_phase_duration_seconds_sum", phase="apply", status="failed") == 4.0
    # 4 s falls in the 5 s bucket, not the 2.5 s one.
    bucket = "veris_phase_duration_seconds_bucket"
    assert _value(m, bucket, phase="apply", status="failed", le="2.5") == 0
    assert _value(m, bucket, phase="apply", status="failed", le="5.0") == 1


def test_confidence_histogram_holds_scored_decisions_only():
    m = Metrics()
    scored = (_phase("decide", 0.01),)
    m.run_finished(
        _report(
            _result("escalated", "ufw_harden", confidence=0.55, phases=scored, decision="escalate"),
            # escalated by an open breaker before any scoring: confidence 0.0 is not a score
            _result("escalated", "service_restart", decision="escalate"),
        )
    )
    assert _value(m, "veris_decision_confidence_count", fix="ufw_harden") == 1
    assert _value(m, "veris_decision_confidence_count", fix="service_restart") is None
    bucket = "veris_decision_confidence_bucket"
    assert _value(m, bucket, fix="ufw_harden", le="0.5") == 0
    assert _value(m, bucket, fix="ufw_harden", le="0.6") == 1
    assert {f"{b:.1f}" for b in CONFIDENCE_BUCKETS} >= {"0.7"}  # the default threshold


def test_rejected_payload_counts_under_fix_none():
    m = Metrics()
    m.run_finished(_report(_result("rejected", None, decision="reject")))
    assert _value(m, "veris_runs_total", outcome="rejected") == 1
    assert _value(m, "veris_remediations_total", outcome="rejected", fix="none") == 1


def test_state_gauges_absent_until_observed_then_replaced_whole():
    m = Metrics()
    names = {name for name, _ in _samples(m)}
    assert not names & {"veris_queue_depth", "veris_brake_engaged", "veris_breaker_open"}
    m.queue_observed(QueueStats(queued=3, running=1, oldest_queued_seconds=75.5))
    m.brake_observed(True)
    assert _value(m, "veris_queue_depth", status="queued") == 3
    assert _value(m, "veris_queue_depth", status="running") == 1
    assert _value(m, "veris_queue_oldest_age_seconds") == 75.5
    assert _value(m, "veris_brake_engaged") == 1
    m.queue_observed(QueueStats(queued=0, running=0, oldest_queued_seconds=0.0))
    m.brake_observed(False)
    assert _value(m, "veris_queue_depth", status="queued") == 0
    assert _value(m, "veris_brake_engaged") == 0


def test_breakers_open_series_and_state_counts():
    m = Metrics()
    m.breaker_observed(
        [
            BreakerRow(host="web1", fix="service_restart", state="open"),
            BreakerRow(host="web2", fix="service_restart", state="half_open"),
            BreakerRow(host="web3", fix="cache_clear", state="closed"),
        ]
    )
    assert _value(m, "veris_breakers", state="open") == 1
    assert _value(m, "veris_breakers", state="half_open") == 1
    assert _value(m, "veris_breaker_open", host="web1", fix="service_restart") == 1
    assert _value(m, "veris_breaker_open", host="web3", fix="cache_clear") is None
    # A breaker that closed disappears: no stale series.
    m.breaker_observed([BreakerRow(host="web1", fix="service_restart", state="closed")])
    assert _value(m, "veris_breaker_open", host="web1", fix="service_restart") is None
    assert _value(m, "veris_breakers", state="open") == 0


def test_breaker_series_are_capped():
    m = Metrics(max_breaker_series=3)
    rows = [BreakerRow(host=f"h{i:02d}", fix="service_restart", state="open") for i in range(10)]
    m.breaker_observed(rows)
    series = {
        labels: v for (name, labels), v in _samples(m).items() if name == "veris_breaker_open"
    }
    assert len(series) == 4  # three hosts, then one overflow series
    assert series[(("fix", "_other"), ("host", "_other"))] == 7
    assert sum(series.values()) == 10
    assert _value(m, "veris_breakers", state="open") == 10


def test_metrics_are_safe_across_threads():
    m = Metrics()
    report = _report(_result("resolved", "service_restart", phases=(_phase("decide", 0.1),)))

    def work() -> None:
        for _ in range(200):
            m.alert_received("sentinel")
            m.run_finished(report)
            m.queue_observed(QueueStats(queued=1, running=0, oldest_queued_seconds=1.0))
            m.render()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _value(m, "veris_alerts_received_total", source="sentinel") == 800
    assert _value(m, "veris_runs_total", outcome="resolved") == 800


def test_notifications_counter():
    m = Metrics()
    m.notification("generic", "sent")
    m.notification("slack", "dropped")
    assert _value(m, "veris_notifications_total", kind="generic", result="sent") == 1
    assert _value(m, "veris_notifications_total", kind="slack", result="dropped") == 1


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_exposition_passes_promtool_lint():
    """Prometheus' own linter: naming (_total, _seconds), help text, exposition syntax."""
    body, _ = _exercised().render()
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == b""


# -- the Grafana dashboard ---------------------------------------------------------------


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_is_a_grafana_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    assert dash["uid"]
    assert dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dash["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


def test_dashboard_queries_name_only_exported_metrics():
    exported = _exported_names()
    exprs = _dashboard_exprs()
    used: set[str] = set()
    for expr in exprs:
        names = set(METRIC_NAME.findall(expr))
        assert names, f"no veris metric in {expr!r}"
        assert names <= exported, f"{expr!r} names {names - exported}"
        used |= names
    # Every family is on the dashboard somewhere.
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in exported}
    on_dashboard = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert families - on_dashboard == set()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_dashboard_queries_are_valid_promql(tmp_path: Path):
    """promtool parses each query (Grafana's variables replaced by values) as a recording rule."""
    grafana = {"$__rate_interval": "1m", "$__range": "6h", "$instance": ".*"}
    rules = []
    for i, query in enumerate(_dashboard_exprs()):
        expr = query
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the Prometheus alert rules ----------------------------------------------------------


def _rules() -> list[dict[str, object]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_rules_name_only_exported_metrics_and_cover_the_receiver():
    exported = _exported_names() | PROMETHEUS_SERIES
    alerts = {}
    for rule in _rules():
        expr = str(rule["expr"])
        names = set(METRIC_NAME.findall(expr)) | (PROMETHEUS_SERIES & set(re.findall(r"\w+", expr)))
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{rule['alert']} names {names - exported}"
        assert rule["labels"]["component"] == "veris-remediate"  # type: ignore[index]
        assert rule["labels"]["severity"] in ("warning", "critical")  # type: ignore[index]
        alerts[rule["alert"]] = expr
    for needed in (
        "VerisQueueStuck",
        "VerisBrakeEngaged",
        "VerisRollbacks",
        "VerisRemediationsFailed",
    ):
        assert needed in alerts


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_rules_pass_promtool_check():
    proc = _promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_rules_fire_when_they_should(tmp_path: Path):
    """promtool's rule unit tests: each alert fires on the series that mean trouble, not before.

    Annotations are stripped from a copy (promtool compares them verbatim); expressions,
    ``for`` and labels are the shipped ones.
    """
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(data))
    inst = 'instance="r1",job="veris-remediate"'
    base = {"instance": "r1", "job": "veris-remediate", "component": "veris-remediate"}

    def fired(severity: str = "warning", **labels: str) -> list[dict[str, object]]:
        return [{"exp_labels": {**base, "severity": severity, **labels}}]

    tests = [
        {
            "interval": "1m",
            "input_series": [
                {"series": f"veris_brake_engaged{{{inst}}}", "values": "0 0 1x10"},
                {"series": f"veris_queue_oldest_age_seconds{{{inst}}}", "values": "0+60x30"},
                {
                    "series": f'veris_rollbacks_total{{fix="config_repair",{inst}}}',
                    "values": "0 0 0 1x10",
                },
                {
                    "series": "veris_remediations_total"
                    f'{{outcome="failed",fix="cache_clear",{inst}}}',
                    "values": "0 0 0 0 1x10",
                },
                {
                    "series": f'veris_remediations_total{{outcome="resolved",fix="svc",{inst}}}',
                    "values": "0+1x30",
                },
                {
                    "series": f'veris_breaker_open{{host="web1",fix="svc",{inst}}}',
                    "values": "1x10",
                },
                {"series": f"up{{{inst}}}", "values": "1 1 0x10"},
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "VerisBrakeEngaged", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "VerisBrakeEngaged", "exp_alerts": fired()},
                {"eval_time": "12m", "alertname": "VerisQueueStuck", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "VerisQueueStuck", "exp_alerts": fired()},
                {"eval_time": "2m", "alertname": "VerisRollbacks", "exp_alerts": []},
                {
                    "eval_time": "5m",
                    "alertname": "VerisRollbacks",
                    "exp_alerts": fired(fix="config_repair"),
                },
                {
                    "eval_time": "6m",
                    "alertname": "VerisRemediationsFailed",
                    "exp_alerts": fired("critical", fix="cache_clear", outcome="failed"),
                },
                {
                    "eval_time": "2m",
                    "alertname": "VerisBreakerOpen",
                    "exp_alerts": fired(host="web1", fix="svc"),
                },
                {
                    "eval_time": "5m",
                    "alertname": "VerisReceiverDown",
                    "exp_alerts": fired("critical"),
                },
            ],
        },
        {
            # Work queued and no run finishing: not draining. Runs finishing: quiet.
            "interval": "1m",
            "input_series": [
                {"series": 'veris_queue_depth{status="queued",instance="stuck"}', "values": "3x40"},
                {
                    "series": 'veris_runs_total{outcome="resolved",instance="stuck"}',
                    "values": "5x40",
                },
                {"series": 'veris_queue_depth{status="queued",instance="busy"}', "values": "3x40"},
                {
                    "series": 'veris_runs_total{outcome="resolved",instance="busy"}',
                    "values": "0+1x40",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "35m",
                    "alertname": "VerisQueueNotDraining",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "instance": "stuck",
                                "severity": "warning",
                                "component": "veris-remediate",
                            }
                        }
                    ],
                }
            ],
        },
    ]
    unit = tmp_path / "rules_test.yml"
    unit.write_text(yaml.safe_dump({"rule_files": [str(rules)], "tests": tests}))
    proc = _promtool("test", "rules", str(unit))
    assert proc.returncode == 0, proc.stdout + proc.stderr
