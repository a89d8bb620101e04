"""routing: rules file, rule matching, service selection, dedupe, and hostile input end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from veris_remediate.alerts import Alert, parse_payload
from veris_remediate.exceptions import (
    NoRuleError,
    PayloadError,
    RejectedError,
    RoutingError,
    TargetError,
    UsageError,
    ValidationError,
)
from veris_remediate.fixes import FixCatalog, ParamSpec, load_fixes
from veris_remediate.inventory import Inventory, InventoryHost, ServiceSpec, parse_inventory_listing
from veris_remediate.resources import default_rules_file
from veris_remediate.routing import (
    WORKFLOWS,
    Route,
    Rule,
    RuleSet,
    dedupe_routes,
    load_rules,
    route_alert,
)
from veris_remediate.targeting import Target, resolve_target

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RULES = load_rules(None)


def lab() -> Inventory:
    listing: dict[str, Any] = json.loads((FIXTURES / "inventory" / "lab.listing.json").read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


def with_host(name: str, *services: ServiceSpec) -> Inventory:
    base = lab()
    host = InventoryHost(name=name, address=None, groups=(), services={s.name: s for s in services})
    return Inventory(sources=base.sources, hosts={**base.hosts, name: host})


def alert(alertname: str, /, source: str = "alertmanager", **labels: str) -> Alert:
    return Alert.model_validate(
        {
            "source": source,
            "status": "firing",
            "name": alertname,
            "fingerprint": "0123456789abcdef",
            "labels": {"alertname": alertname, **labels},
            "annotations": {},
            "severity": None,
            "starts_at": None,
        }
    )


def route(a: Alert, inventory: Inventory | None = None, rules: RuleSet = RULES) -> Route:
    inv = inventory or lab()
    return route_alert(a, resolve_target(a, inv), inv, rules)


def handle(raw: bytes | str, inventory: Inventory | None = None) -> list[Route]:
    """Intake, targeting and routing, the way the pipeline chains them."""
    inv = inventory or lab()
    batch = parse_payload(raw)
    return dedupe_routes([route(a, inv) for a in batch.firing])


def sample(name: str) -> bytes:
    return (FIXTURES / "payloads" / name).read_bytes()


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yml"
    path.write_text(text)
    return path


# --- the default rules file ------------------------------------------------------------------


def test_default_rules_load_and_cover_the_documented_alerts() -> None:
    assert load_rules(default_rules_file()) == RULES
    names = {n for r in RULES.rules for n in r.match_alertnames}
    assert names >= {
        "HttpProbeFailed", "TcpProbeFailed", "ProbeFailed", "SystemdUnitFailed",
        "SystemdUnitDown", "ServiceDown", "NginxDown", "RedisDown", "S1-probes",
        "HighMemoryUsage", "CacheDirFull", "DiskFull", "FirewallInactive",
        "S11-firewall-status", "PostgresqlDown",
    }  # fmt: skip
    assert all(r.workflow in WORKFLOWS for r in RULES.rules)
    assert all(r.fix is None or r.fix in load_fixes().fixes for r in RULES.rules)


@pytest.mark.parametrize(
    ("name", "workflow", "fix"),
    [
        ("HttpProbeFailed", "service_health", "service_restart"),
        ("TcpProbeFailed", "service_health", "service_restart"),
        ("ProbeFailed", "service_health", "service_restart"),
        ("SystemdUnitFailed", "service_health", "service_restart"),
        ("SystemdUnitDown", "service_health", "service_restart"),
        ("ServiceDown", "service_health", "service_restart"),
        ("NginxDown", "service_health", "service_restart"),
        ("RedisDown", "service_health", "service_restart"),
        ("HighMemoryUsage", "performance", None),
        ("CacheDirFull", "performance", "cache_clear"),
        ("DiskFull", "performance", "cache_clear"),
        ("NodeFilesystemAlmostOutOfSpace", "performance", "cache_clear"),
    ],
)
def test_default_routes(name: str, workflow: str, fix: str | None) -> None:
    r = route(alert(name, instance="lab2", service="redis-server"))
    assert (r.workflow, r.fix, r.service.name, r.target.host) == (
        workflow,
        fix,
        "redis-server",
        "lab2",
    )


def test_postgres_down_restarts_the_declared_server() -> None:
    postgres = ServiceSpec(name="postgresql", unit="postgresql@15-main.service", port=5432)
    app = ServiceSpec(name="app", unit="app.service")
    r = route(alert("PostgresqlDown", instance="pg1:9187"), with_host("pg1", postgres, app))
    assert (r.rule, r.workflow, r.fix, r.service) == (
        "postgres-down", "service_health", "service_restart", postgres
    )  # fmt: skip
    assert r.on_blocked == {"config_invalid": "config_repair"}


@pytest.mark.parametrize(
    ("check", "workflow", "fix"),
    [
        ("S1-probes", "service_health", "service_restart"),
        ("S2-golden-fact-recall", "database_connectivity", None),
        ("S3-paraphrase-robustness", "general", None),
        ("S4-metrics-wiring", "general", None),
        ("S5-security-negatives", "security", None),
        ("S6-backup-restore", "database_connectivity", None),
        ("S7-config-parity", "general", None),
        ("S8-capacity-smoke", "performance", None),
        ("S9-graph-intent", "database_connectivity", None),
        ("S10-content-pipeline", "general", None),
        ("S11-firewall-status", "firewall", "ufw_harden"),
    ],
)
def test_every_sentinel_check_is_routed(check: str, workflow: str, fix: str | None) -> None:
    r = route(alert(check, source="sentinel", host="lab1", service="nginx"))
    assert (r.workflow, r.fix) == (workflow, fix)
    # A longer id of the same check (S10-content-pipeline-ingest) goes the same way.
    longer = route(alert(f"{check}-x", source="sentinel", host="lab1", service="nginx"))
    assert (longer.workflow, longer.fix) == (workflow, fix)


@pytest.mark.parametrize(
    ("name", "workflow", "fix"),
    [
        ("NodeSystemdServiceFailed", "service_health", "service_restart"),
        ("HostOutOfDiskSpace", "performance", "cache_clear"),
        ("HostOomKillDetected", "performance", None),
        ("NodeClockNotSynchronising", "general", None),
        ("SshBruteForce", "security", None),
        ("RedisTooManyConnections", "database_connectivity", None),
        ("PostgresqlTooManyConnections", "database_connectivity", "db_connection_relief"),
    ],
)
def test_exporter_alerts_are_routed(name: str, workflow: str, fix: str | None) -> None:
    r = route(alert(name, instance="lab1:9100", name="redis-server.service"))
    assert (r.workflow, r.fix) == (workflow, fix)


# --- the sample payloads end to end ------------------------------------------------------------


def test_nginx_down_sample() -> None:
    (r,) = handle(sample("alertmanager-nginx-down.json"))
    assert (r.target.host, r.rule, r.workflow, r.fix, r.service.name) == (
        "lab1",
        "blackbox-probe-failed",
        "service_health",
        "service_restart",
        "nginx",
    )
    assert r.service.unit == "nginx.service"


def test_mixed_sample_routes_only_the_firing_alerts() -> None:
    routes = handle(sample("alertmanager-group-mixed.json"))
    assert [(r.alert.name, r.target.host, r.service.name) for r in routes] == [
        ("SystemdUnitFailed", "lab1", "redis-server"),
        ("TcpProbeFailed", "lab2", "redis-server"),
    ]
    assert all(r.alert.status == "firing" for r in routes)


def test_sentinel_s1_sample() -> None:
    (r,) = handle(sample("sentinel-s1-probes.json"))
    assert (r.target.host, r.rule, r.workflow, r.fix, r.service.name) == (
        "lab1",
        "sentinel-probes",
        "service_health",
        "service_restart",
        "nginx",
    )


@pytest.mark.parametrize(
    ("name", "host", "rule", "fix"),
    [
        ("alertmanager-firewall-exposed.json", "lab1", "ufw-harden-inactive", "ufw_harden"),
        ("sentinel-s11-firewall.json", "lab1", "ufw-harden-inactive", "ufw_harden"),
        ("generic-disk-cache.json", "lab2", "cache-dir-full", "cache_clear"),
    ],
)
def test_host_wide_samples_route_on_a_host_with_two_services(
    name: str, host: str, rule: str, fix: str
) -> None:
    # lab1 and lab2 declare nginx and redis-server; these alerts name neither: routed.
    assert len(lab().hosts[host].services) == 2
    (r,) = handle(sample(name))
    assert (r.target.host, r.rule, r.fix, r.service) == (host, rule, fix, None)


def test_a_host_diagnosis_workflow_routes_without_a_service() -> None:
    # Memory is about the host: diagnosed host-wide, whichever services it declares.
    (r,) = handle(sample("grafana-high-memory.json"))
    assert (r.target.host, r.workflow, r.fix, r.service) == ("lab2", "performance", None, None)
    nginx = ServiceSpec(name="nginx", unit="nginx.service", port=80)
    (one,) = handle(sample("grafana-high-memory.json"), with_host("lab2", nginx))
    assert one.service is None  # not guessed from "the only service" either


def test_a_service_diagnosis_without_a_service_escalates() -> None:
    # A valid alert, no automatic fix, and the host has two services: a human must look.
    rules = RuleSet(rules=(Rule(name="svc", match_alertnames=("Odd",), workflow="service_health"),))
    with pytest.raises(NoRuleError, match="does not say which of the services") as caught:
        route(alert("Odd", instance="lab1"), rules=rules)
    assert caught.value.exit_code == 4
    nginx = ServiceSpec(name="nginx", unit="nginx.service", port=80)
    assert route(alert("Odd", instance="h1"), with_host("h1", nginx), rules).service == nginx


# --- rule matching -----------------------------------------------------------------------------


def test_no_matching_rule_escalates() -> None:
    with pytest.raises(NoRuleError, match="no routing rule matches alert Mystery") as caught:
        route(alert("Mystery", instance="lab1", service="nginx"))
    assert caught.value.exit_code == 4


def test_sentinel_check_id_prefix_matches_only_at_a_dash() -> None:
    rules = RuleSet(
        rules=(
            Rule(name="s1", match_alertnames=("S1",), workflow="general", fix=None),
            Rule(name="other", match_alertnames=("S11-firewall-status",), workflow="firewall"),
        )
    )
    s1 = alert("S1-probes-liveness", source="sentinel", host="lab1", service="nginx")
    s11 = alert("S11-firewall-status", source="sentinel", host="lab1", service="nginx")
    assert route(s1, rules=rules).rule == "s1"
    assert route(s11, rules=rules).rule == "other"
    assert route(alert("S1-probes-x", source="sentinel", host="lab1", service="nginx")).rule == (
        "sentinel-probes"
    )
    # Prefixes are a Sentinel convenience only.
    with pytest.raises(NoRuleError):
        route(alert("S1-probes-x", host="lab1", service="nginx"))


def test_first_matching_rule_wins_and_labels_must_all_match() -> None:
    rules = RuleSet(
        rules=(
            Rule(
                name="critical-web",
                match_alertnames=("ServiceDown",),
                match_labels={"severity": "critical", "team": "web"},
                workflow="general",
            ),
            Rule(name="any-down", match_alertnames=("ServiceDown",), workflow="service_health"),
            Rule(name="by-label", match_labels={"team": "web"}, workflow="security"),
        )
    )
    both = alert("ServiceDown", host="lab1", service="nginx", severity="critical", team="web")
    one = alert("ServiceDown", host="lab1", service="nginx", severity="warning", team="web")
    other = alert("Other", host="lab1", service="nginx", team="web")
    assert route(both, rules=rules).rule == "critical-web"
    assert route(one, rules=rules).rule == "any-down"
    assert route(other, rules=rules).rule == "by-label"


def test_rule_without_matchers_never_matches() -> None:
    rules = RuleSet(rules=(Rule(name="all", workflow="general"),))
    with pytest.raises(NoRuleError):
        route(alert("X", host="lab1", service="nginx"), rules=rules)


# --- service selection ---------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["service", "name"])
def test_undeclared_service_label_is_rejected(label: str) -> None:
    a = alert("ServiceDown", instance="lab1", **{label: "sshd"})
    with pytest.raises(
        RoutingError, match=r"service 'sshd' .* is not declared in veris_services of host lab1"
    ) as caught:
        route(a)
    assert caught.value.exit_code == 3


def test_service_declared_on_another_host_is_rejected() -> None:
    postgres = ServiceSpec(name="postgresql", unit="postgresql.service")
    a = alert("ServiceDown", instance="lab1", service="postgresql")
    with pytest.raises(RoutingError, match="not declared in veris_services of host lab1"):
        route(a, with_host("pg1", postgres))


def test_host_without_services_is_rejected_for_a_fix() -> None:
    with pytest.raises(RoutingError, match="host db1 declares no veris_services"):
        route(alert("ServiceDown", instance="db1"))


@pytest.mark.parametrize("value", ["redis-server.service", "redis-server"])
def test_unit_names_are_normalised(value: str) -> None:
    assert route(alert("SystemdUnitFailed", instance="lab1:9558", name=value)).service.name == (
        "redis-server"
    )


def test_unit_name_matches_a_service_with_a_different_unit() -> None:
    web = ServiceSpec(name="web", unit="openresty.service", port=80)
    other = ServiceSpec(name="other", unit="other.service")
    inv = with_host("h1", web, other)
    assert (
        route(alert("SystemdUnitFailed", instance="h1", name="openresty.service"), inv).service
        == web
    )
    with pytest.raises(RoutingError, match=r"'web\.socket'"):
        route(alert("SystemdUnitFailed", instance="h1", name="web.socket"), inv)


def test_job_that_is_not_a_service_is_skipped() -> None:
    r = route(alert("HttpProbeFailed", instance="http://lab2/", job="blackbox-http"))
    assert r.service.name == "nginx"  # from the URL's port 80


def test_job_that_is_a_declared_service_selects_it() -> None:
    r = route(alert("HttpProbeFailed", instance="lab2", job="redis-server"))
    assert r.service.name == "redis-server"


def test_service_label_wins_over_the_port() -> None:
    r = route(alert("TcpProbeFailed", instance="lab2:80", service="redis-server"))
    assert r.service.name == "redis-server"


@pytest.mark.parametrize(
    ("instance", "service"),
    [("lab2:6379", "redis-server"), ("lab2:80", "nginx"), ("https://lab1:6379/", "redis-server")],
)
def test_port_of_the_targeting_label_selects_the_service(instance: str, service: str) -> None:
    assert route(alert("TcpProbeFailed", instance=instance)).service.name == service


def test_rule_param_service_is_the_next_fallback() -> None:
    assert route(alert("RedisDown", instance="lab2:9121")).service.name == "redis-server"
    assert route(alert("NginxDown", instance="lab2:9113")).service.name == "nginx"


def test_rule_param_service_must_be_declared() -> None:
    nginx = ServiceSpec(name="nginx", unit="nginx.service")
    with pytest.raises(
        RoutingError, match="service redis-server \\(rule redis-down\\) is not declared"
    ):
        route(alert("RedisDown", instance="h1"), with_host("h1", nginx))


def test_single_declared_service_is_the_last_fallback() -> None:
    only = ServiceSpec(name="app", unit="app.service")
    assert route(alert("ServiceDown", instance="h1:9100"), with_host("h1", only)).service == only


def test_ambiguous_service_with_a_fix_is_rejected() -> None:
    with pytest.raises(
        RoutingError,
        match=r"does not say which of the services of host lab2 \(nginx, redis-server\)",
    ):
        route(alert("ServiceDown", instance="lab2:9100"))


def test_custom_service_labels() -> None:
    rules = RuleSet(
        rules=(
            Rule(
                name="custom",
                match_alertnames=("AppDown",),
                workflow="service_health",
                fix="service_restart",
                service_labels=("app",),
            ),
        )
    )
    r = route(alert("AppDown", instance="lab1", app="redis-server", service="nginx"), rules=rules)
    assert r.service.name == "redis-server"


# --- dedupe --------------------------------------------------------------------------------


def test_duplicates_are_deduped_keeping_the_first() -> None:
    first = alert("HttpProbeFailed", instance="http://lab1/", service="nginx")
    second = alert("NginxDown", instance="lab1:9113")
    third = alert("ServiceDown", instance="198.18.1.2", service="nginx")
    other_host = alert("ServiceDown", instance="lab2", service="nginx")
    other_service = alert("ServiceDown", instance="lab1", service="redis-server")
    routes = [route(a) for a in (first, second, third, other_host, other_service)]
    unique = dedupe_routes(routes)
    assert [r.alert for r in unique] == [first, other_host, other_service]
    assert unique[0] is routes[0]


def test_same_alert_twice_in_a_payload_gives_one_route() -> None:
    raw = json.loads(sample("alertmanager-nginx-down.json"))
    raw["alerts"] = raw["alerts"] * 3
    assert len(handle(json.dumps(raw))) == 1


def test_diagnosis_routes_of_different_workflows_are_not_duplicates() -> None:
    nginx = ServiceSpec(name="nginx", unit="nginx.service")
    inv = with_host("h1", nginx)
    rules = RuleSet(
        rules=(
            Rule(name="mem", match_alertnames=("Mem", "Swap"), workflow="performance"),
            Rule(name="fw", match_alertnames=("Fw",), workflow="firewall"),
        )
    )
    routes = [route(alert(n, instance="h1"), inv, rules) for n in ("Mem", "Fw", "Swap")]
    assert [r.workflow for r in dedupe_routes(routes)] == ["performance", "firewall"]


# --- hostile input, end to end: every one is refused with exit 3 --------------------------


def am(**labels: str) -> str:
    alert_ = {
        "status": "firing",
        "labels": {"alertname": "HttpProbeFailed", **labels},
        "annotations": {},
        "fingerprint": "5e3f0a7c2b1d4e6f",
    }
    return json.dumps({"version": "4", "alerts": [alert_]})


HOSTILE: list[tuple[str, bytes | str, type[RejectedError]]] = [
    (
        "jinja lookup",
        am(instance="lab1", service="{{ lookup('pipe', 'touch /tmp/x') }}"),
        ValidationError,
    ),
    ("jinja block", am(instance="lab1", service="{% for x in y %}"), ValidationError),
    ("shell separator", am(instance="lab1", service="; touch /tmp/x"), ValidationError),
    ("command substitution", am(instance="lab1", service="$(touch /tmp/x)"), ValidationError),
    ("backticks", am(instance="lab1", service="`touch /tmp/x`"), ValidationError),
    ("newline and YAML", am(instance="lab1", service="nginx\nfoo: bar"), ValidationError),
    ("jinja in instance", am(instance="{{ groups.all }}"), ValidationError),
    ("undeclared service", am(instance="lab1", service="sshd"), RoutingError),
    ("instance all", am(instance="all", service="nginx"), TargetError),
    ("instance star", am(instance="*", service="nginx"), TargetError),
    ("instance union", am(instance="lab1:lab2", service="nginx"), TargetError),
    ("instance exclusion", am(instance="!lab1", service="nginx"), TargetError),
    ("instance regex", am(instance="~lab.*", service="nginx"), TargetError),
    ("instance list", am(instance="lab1,lab2", service="nginx"), TargetError),
    ("unknown host", am(instance="evil.example.org", service="nginx"), TargetError),
    ("invalid JSON", b'{"version": "4", "alerts": [', PayloadError),
    ("2 MiB payload", b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}', PayloadError),
    ("non-object JSON", b'["alerts"]', PayloadError),
]


@pytest.mark.parametrize(("case", "raw", "error"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_payload_is_rejected_with_exit_3(
    case: str, raw: bytes | str, error: type[RejectedError]
) -> None:
    with pytest.raises(error) as caught:
        handle(raw)
    assert caught.value.exit_code == 3, case


# --- load_rules errors ----------------------------------------------------------------------

GOOD_RULE = """
  - name: r1
    match_alertnames: [A]
    workflow: service_health
    fix: service_restart
"""


def test_load_rules_from_a_file(tmp_path: Path) -> None:
    text = (
        "version: 1\nrules:"
        + GOOD_RULE
        + """
  - name: r2
    match_labels: {team: web}
    workflow: general
    service_labels: [app]
    params: {service: nginx}
"""
    )
    rules = load_rules(rules_file(tmp_path, text))
    assert [r.name for r in rules.rules] == ["r1", "r2"]
    assert rules.rules[1].params == {"service": "nginx"}
    assert rules.rules[1].fix is None
    assert rules.rules[0].service_labels == ("service", "name", "job")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: [", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("rules:" + GOOD_RULE, "version must be 1"),
        ("version: 2\nrules:" + GOOD_RULE, "version must be 1"),
        ("version: 1\nrules: []\n", "non-empty list"),
        ("version: 1\nextra: 1\nrules:" + GOOD_RULE, "expected a mapping"),
        ("version: 1\nversion: 1\nrules:" + GOOD_RULE, "duplicate key"),
        (
            "version: 1\nrules:"
            + GOOD_RULE.replace("workflow: service_health", "workflow: reboot"),
            "workflow",
        ),
        ("version: 1\nrules:" + GOOD_RULE.replace("fix: service_restart", "fix: rm_rf"), "fix"),
        ("version: 1\nrules:" + GOOD_RULE + "    params: {retries: 3}\n", "takes no param"),
        (
            "version: 1\nrules:\n  - name: r\n    match_alertnames: [A]\n    workflow: general\n"
            "    params: {notify: true}\n",
            "need a fix",
        ),
        ("version: 1\nrules:" + GOOD_RULE + "    on_blocked: {cosmic_rays: x}\n", "never reports"),
        (
            "version: 1\nrules:" + GOOD_RULE + "    on_blocked: {config_invalid: rm_rf}\n",
            "not another known fix",
        ),
        (
            "version: 1\nrules:"
            + GOOD_RULE
            + "    on_blocked: {config_invalid: service_restart}\n",
            "not another known fix",
        ),
        ("version: 1\nrules:" + GOOD_RULE + "    matchlabels: {a: b}\n", "matchlabels"),
        ("version: 1\nrules:" + GOOD_RULE + "    fix: null\n", "duplicate key"),
        ("version: 1\nrules:" + GOOD_RULE + GOOD_RULE, "used twice"),
        ("version: 1\nrules:\n  - name: r\n    workflow: general\n", "needs match_alertnames"),
        (
            "version: 1\nrules:\n  - name: bad name\n    match_alertnames: [A]\n"
            "    workflow: general\n",
            "name",
        ),
        ("version: 1\nrules:" + GOOD_RULE + "    params: {cmd: '{{ x }}'}\n", "Jinja2"),
        ("version: 1\nrules:" + GOOD_RULE + "    params: {list: [1]}\n", "params"),
        ("version: 1\nrules:" + GOOD_RULE + "    service_labels: [a-b]\n", "service_labels"),
        ("version: 1\nrules:" + GOOD_RULE + "    match_labels: {a: 1}\n", "match_labels"),
        ("version: 1\nrules:\n  - just a string\n", "rules[0]"),
        (
            "version: 1\nrules:" + GOOD_RULE + "  - !!python/object/apply:os.system [id]\n",
            "not valid YAML",
        ),
    ],
)
def test_bad_rules_file_is_a_usage_error(tmp_path: Path, text: str, problem: str) -> None:
    path = rules_file(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_rules(path)
    assert caught.value.exit_code == 2
    assert str(path) in caught.value.message
    assert problem in caught.value.message


def test_missing_rules_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read it"):
        load_rules(tmp_path / "nope.yml")


def test_route_is_frozen() -> None:
    r = route(alert("ServiceDown", instance="lab1", service="nginx"))
    with pytest.raises(ValueError, match="frozen"):
        r.fix = None  # type: ignore[misc]


def test_target_must_be_in_the_inventory() -> None:
    a = alert("ServiceDown", instance="lab1", service="nginx")
    with pytest.raises(RoutingError, match="not in the inventory"):
        route_alert(a, Target(host="ghost", label="instance", value="ghost"), lab(), RULES)


# --- fix params, on_blocked and host-scoped fixes, against a catalog -----------------------


def catalog_with(**changes: Any) -> FixCatalog:
    """The installed catalog plus ``probe``: service_restart's spec with ``changes``."""
    base = load_fixes()
    probe = base.fixes["service_restart"].model_copy(update={"name": "probe", **changes})
    return FixCatalog(fixes={**base.fixes, "probe": probe})


PARAMS = {
    "retries": ParamSpec(name="retries", role_var="probe_retries", type="int"),
    "mode": ParamSpec(name="mode", role_var="probe_mode", type="str", choices=("soft", "hard")),
    "force": ParamSpec(name="force", role_var="probe_force", type="bool"),
}
PROBE_RULE = (
    "version: 1\nrules:\n  - name: p\n    match_alertnames: [P]\n    workflow: general\n"
    "    fix: probe\n"
)


def test_rule_params_become_typed_role_variables(tmp_path: Path) -> None:
    catalog = catalog_with(params=PARAMS)
    text = PROBE_RULE + "    params: {retries: 3, mode: hard, force: false, service: nginx}\n"
    rules = load_rules(rules_file(tmp_path, text), catalog)
    r = route_alert(
        alert("P", instance="lab1"), resolve_target(alert("P", instance="lab1"), lab()), lab(),
        rules, catalog,
    )  # fmt: skip
    # params.service is routing's own; the rest go to the role, under its variable names.
    assert r.service is not None
    assert r.service.name == "nginx"
    assert r.fix_params == {"probe_retries": 3, "probe_mode": "hard", "probe_force": False}


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ("{retries: many}", "must be int"),
        ("{retries: true}", "must be int"),
        ("{force: 1}", "must be bool"),
        ("{mode: medium}", "must be one of soft, hard"),
        ("{color: red}", "takes no param 'color' (it takes: force, mode, retries)"),
    ],
)
def test_rule_params_the_role_does_not_take_are_refused(
    tmp_path: Path, params: str, problem: str
) -> None:
    path = rules_file(tmp_path, PROBE_RULE + f"    params: {params}\n")
    with pytest.raises(UsageError, match="rule p: ") as caught:
        load_rules(path, catalog_with(params=PARAMS))
    assert problem in caught.value.message


def test_on_blocked_names_a_blocker_and_another_fix(tmp_path: Path) -> None:
    text = PROBE_RULE + "    on_blocked: {config_invalid: service_restart}\n"
    rules = load_rules(rules_file(tmp_path, text), catalog_with())
    assert rules.rules[0].on_blocked == {"config_invalid": "service_restart"}


def test_a_host_scoped_fix_routes_without_a_service() -> None:
    catalog = catalog_with(scope="host")
    rules = RuleSet(
        rules=(Rule(name="p", match_alertnames=("P",), workflow="firewall", fix="probe"),)
    )

    def host_route(**labels: str) -> Route:
        a = alert("P", **labels)
        return route_alert(a, resolve_target(a, lab()), lab(), rules, catalog)

    # lab1 declares two services; a host-wide alert names none and is routed, not refused.
    assert host_route(instance="lab1:9100").service is None
    # Not even narrowed by the port, or to "the only service".
    only = with_host("h1", ServiceSpec(name="app", unit="app.service", port=9100))
    a = alert("P", instance="h1:9100")
    assert route_alert(a, resolve_target(a, only), only, rules, catalog).service is None
    # A service label narrows it; an undeclared one is refused as before.
    narrowed = host_route(instance="lab1", service="redis-server").service
    assert narrowed is not None
    assert narrowed.name == "redis-server"
    with pytest.raises(RoutingError, match="not declared"):
        host_route(instance="lab1", service="ssh")


def test_dedupe_keeps_host_wide_routes_apart_from_service_routes() -> None:
    catalog = catalog_with(scope="host")
    rules = RuleSet(
        rules=(Rule(name="p", match_alertnames=("P",), workflow="firewall", fix="probe"),)
    )
    routes = [
        route_alert(a, resolve_target(a, lab()), lab(), rules, catalog)
        for a in (alert("P", instance="lab1"), alert("P", instance="lab1", service="nginx"),
                  alert("P", instance="lab1:22"))
    ]  # fmt: skip
    assert [r.service_name for r in dedupe_routes(routes)] == [None, "nginx"]
