"""The firewall family (ufw_harden): its spec, rules, models, probe logic, and recorded runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, role_module
from tests.unit import recorded
from tests.unit.recorded import RecordedExecutor, summary
from veris_remediate.alerts import Alert, parse_payload
from veris_remediate.audit import AuditLog
from veris_remediate.decision import decide
from veris_remediate.exceptions import NoRuleError
from veris_remediate.fixes import load_fixes
from veris_remediate.inventory import (
    FirewallPolicy,
    Inventory,
    InventoryHost,
    ServiceSpec,
)
from veris_remediate.pipeline import Remediator
from veris_remediate.planner import build_plan
from veris_remediate.role_reports.firewall import (
    CUT_CONNECTION_PENALTY,
    OWN_PORT_PENALTY,
    FirewallPlan,
    FirewallRollback,
    FirewallSnapshot,
    FirewallVerify,
)
from veris_remediate.routing import load_rules, route_alert
from veris_remediate.settings import Settings
from veris_remediate.targeting import resolve_target
from veris_remediate.workspace import History

FIX = load_fixes().fixes["ufw_harden"]
RULES = load_rules(None)
SCENARIOS = ["fw_resolved", "fw_not_needed", "fw_previewed", "fw_client_connected",
             "fw_lockout", "fw_rolled_back"]  # fmt: skip


PROBE = role_module("ufw_harden", "ufw_harden_probe")


def _remediator(tmp_path: Path, scenario: str) -> tuple[Remediator, RecordedExecutor]:
    executor = RecordedExecutor(scenario)
    settings = Settings(state_dir=tmp_path, rules_file=recorded.rules_file(scenario))
    return Remediator(recorded.inventory(scenario), settings, executor=executor), executor


def _report(scenario: str, stem: str, kind: str) -> Any:
    hs = summary(scenario, stem).host(recorded.host(scenario))
    assert hs.report_errors == ()
    return hs.reports[kind]


# --- the spec and the rules -----------------------------------------------------------------


def test_spec_names_the_role_the_reports_and_typed_params() -> None:
    assert (FIX.scope, FIX.risk, FIX.reversible) == ("host", "medium", True)
    assert FIX.expected_changes == frozenset({"community.general.ufw"})
    assert FIX.requires == ("firewall_policy",)
    assert (FIX.playbook, FIX.rollback_playbook) == ("ufw_harden.yml", "ufw_harden_rollback.yml")
    assert {name: p.type for name, p in FIX.params.items()} == {
        "ssh_port": "int", "revert_after": "int", "confirm_timeout": "int"
    }  # fmt: skip
    assert FIX.params["ssh_port"].role_var == "ufw_harden_ssh_port"
    assert set(FIX.blockers) == {"no_ssh_port", "no_ufw"}


@pytest.mark.parametrize(
    "name",
    ["FirewallInactive", "S11-firewall-status", "PortExposed", "FirewallPortExposed",
     "UnexpectedListeningPort"],
)  # fmt: skip
def test_firewall_alerts_route_to_ufw_harden(name: str) -> None:
    rule = next(r for r in RULES.rules if name in r.match_alertnames)
    assert (rule.workflow, rule.fix) == ("firewall", "ufw_harden")
    assert rule.service_labels == ()
    # The diagnosis-only rule is gone: nothing else matches these names.
    assert [r.name for r in RULES.rules if name in r.match_alertnames] == [rule.name]


def _lab() -> Inventory:
    return recorded.inventory("fw_resolved")


def _route(payload: bytes, inventory: Inventory) -> Any:
    (alert,) = parse_payload(payload).firing
    return route_alert(alert, resolve_target(alert, inventory), inventory, RULES)


def test_firewall_alert_on_a_host_with_two_services_is_routed_not_rejected() -> None:
    inventory = _lab()
    host = recorded.host("fw_resolved")
    assert len(inventory.hosts[host].services) == 2
    payload = (EXAMPLES / "alertmanager-firewall-exposed.json").read_bytes()
    route = _route(payload.replace(b"lab1", host.encode()), inventory)
    assert (route.fix, route.workflow, route.service, route.target.host) == (
        "ufw_harden", "firewall", None, host
    )  # fmt: skip
    sentinel = (EXAMPLES / "sentinel-s11-firewall.json").read_bytes()
    assert _route(sentinel.replace(b"lab1", host.encode()), inventory).fix == "ufw_harden"


def test_exposed_port_alert_naming_an_undeclared_process_is_still_routed() -> None:
    inventory = _lab()
    host = recorded.host("fw_resolved")
    alert = Alert.model_validate({
        "source": "alertmanager", "status": "firing", "name": "UnexpectedListeningPort",
        "fingerprint": "0123456789abcdef", "annotations": {}, "severity": None,
        "starts_at": None,
        "labels": {"alertname": "UnexpectedListeningPort", "instance": f"{host}:8081",
                   "service": "python3"},
    })  # fmt: skip
    route = route_alert(alert, resolve_target(alert, inventory), inventory, RULES)
    assert (route.fix, route.service) == ("ufw_harden", None)


def test_a_host_without_veris_firewall_is_not_hardened() -> None:
    inventory = _lab()
    host = recorded.host("fw_resolved")
    bare = InventoryHost(
        name=host, address="198.18.175.2", groups=(),
        services={"nginx": ServiceSpec(name="nginx", unit="nginx.service", port=80)},
    )  # fmt: skip
    without = Inventory(sources=inventory.sources, hosts={host: bare})
    payload = (EXAMPLES / "alertmanager-firewall-exposed.json").read_bytes()
    route = _route(payload.replace(b"lab1", host.encode()), without)
    with pytest.raises(NoRuleError, match="does not declare veris_firewall"):
        build_plan(route, without, Settings(), "20260101T000000Z-abcdef")


def test_the_plan_hands_the_policy_and_the_params_to_the_role() -> None:
    inventory = _lab()
    host = recorded.host("fw_lockout")
    rules = load_rules(recorded.rules_file("fw_lockout"))
    (alert,) = parse_payload(recorded.payload("fw_lockout")).firing
    route = route_alert(alert, resolve_target(alert, inventory), inventory, rules)
    plan = build_plan(route, inventory, Settings(), "20260101T000000Z-abcdef")
    assert plan.preview is not None
    extravars = plan.preview.extravars
    assert extravars["veris_host"]["firewall"] == FirewallPolicy().model_dump(mode="json")
    assert [s["name"] for s in extravars["veris_host"]["services"]] == ["nginx", "redis-server"]
    assert (extravars["ufw_harden_ssh_port"], extravars["ufw_harden_revert_after"]) == (2222, 20)
    assert plan.host == host


# --- recorded runs through the whole loop ------------------------------------------------------


def test_every_firewall_scenario_is_recorded() -> None:
    assert set(SCENARIOS) <= set(recorded.SCENARIOS)


@pytest.mark.parametrize(
    ("scenario", "outcome", "exit_code", "phases"),
    [
        ("fw_resolved", "resolved", 0, ["check", "apply"]),
        ("fw_not_needed", "not_needed", 0, ["check"]),
        ("fw_previewed", "previewed", 0, ["check"]),
        ("fw_client_connected", "escalated", 4, ["check"]),
        ("fw_lockout", "rolled_back", 5, ["check", "apply", "rollback"]),
        ("fw_rolled_back", "rolled_back", 5, ["check", "apply", "rollback"]),
    ],
)
def test_recorded_firewall_runs_reach_their_outcome(
    tmp_path: Path, scenario: str, outcome: str, exit_code: int, phases: list[str]
) -> None:
    remediator, executor = _remediator(tmp_path, scenario)
    mode = (recorded.EVENTS / scenario / "mode").read_text().strip()
    report = remediator.handle(recorded.payload(scenario), check_only=mode == "check_only")
    assert report.outcome == outcome
    assert report.exit_code == exit_code
    assert [r.phase for r in executor.requests] == phases
    assert report.outcome == recorded.recorded_report(scenario)["outcome"]
    assert report.remediation == "ufw_harden"
    assert report.rolled_back is (outcome == "rolled_back")
    assert AuditLog(tmp_path / "audit.jsonl").verify().ok


def test_resolved_run_previews_rules_and_closing_ports_then_verifies(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "fw_resolved")
    report = remediator.handle(recorded.payload("fw_resolved"))
    assert report.confidence == pytest.approx(0.85)
    assert report.preview[0].action == "firewall.plan"  # the role's before/after first
    tasks = [c.task for c in report.preview[1:]]
    assert all(c.action == "community.general.ufw" for c in report.preview[1:])
    assert tasks[0] == "Allow incoming 22/tcp from any, 80/tcp from any"
    assert tasks[-1].startswith("Enable ufw - closes ")
    assert "8081/tcp (python3)" in tasks[-1]
    assert "6379/tcp (redis-server)" in tasks[-1]
    messages = [f.message for f in report.findings]
    assert "would close 8081/tcp (python3) listening on 0.0.0.0" in messages
    assert any("public 80/tcp (nginx) answers from the controller" in r for r in report.reasons)
    # The apply run saw the check run's plan, and the plan only.
    apply = executor.requests[1]
    extravars = (apply.private_data_dir / "env" / "extravars").read_text()
    assert "veris_assessment" in extravars
    assert "firewall.plan" in extravars


def test_a_connected_client_lowers_confidence_below_the_threshold(tmp_path: Path) -> None:
    plan = _report("fw_client_connected", "check", "firewall.plan")
    assert isinstance(plan, FirewallPlan)
    assert [(c.peer_address, c.port) for c in plan.plan.cut] == [("10.99.0.2", 8081)]
    assert plan.signals()[0].penalty == CUT_CONNECTION_PENALTY
    assert "client 10.99.0.2 is connected to 8081/tcp" in plan.signals()[0].reason
    remediator, _ = _remediator(tmp_path, "fw_client_connected")
    report = remediator.handle(recorded.payload("fw_client_connected"))
    assert report.confidence == pytest.approx((1 - CUT_CONNECTION_PENALTY) * 0.85)
    assert report.decision == "escalate"
    assert any("shuts out 10.99.0.2 on 8081/tcp" in c.task for c in report.preview)
    assert any(f.severity == "critical" and "10.99.0.2" in f.message for f in report.findings)


def test_the_preview_opens_with_the_firewall_before_and_after(tmp_path: Path) -> None:
    # community.general.ufw shows no diff: the plan's own before/after leads the preview.
    remediator, _ = _remediator(tmp_path, "fw_client_connected")
    report = remediator.handle(recorded.payload("fw_client_connected"))
    first = report.preview[0]
    assert first.action == "firewall.plan"
    lines = first.diff.splitlines()
    assert lines[:4] == [
        "--- firewall now",
        "+++ firewall after ufw_harden",
        "-ufw inactive",
        "+ufw active",
    ]
    assert "+allow 22/tcp from any  (ssh)" in lines
    assert "-reachable 8081/tcp (python3) on 0.0.0.0" in lines
    assert "-client 10.99.0.2 on 8081/tcp  (its next connection refused)" in lines
    # Nothing to change, nothing to show.
    compliant = _report("fw_not_needed", "check", "firewall.plan")
    assert isinstance(compliant, FirewallPlan)
    assert compliant.preview_diff() == ""


def test_lockout_is_healed_by_the_on_host_revert_and_the_outcome_says_so(tmp_path: Path) -> None:
    remediator, _ = _remediator(tmp_path, "fw_lockout")
    report = remediator.handle(recorded.payload("fw_lockout"))
    assert report.outcome == "rolled_back"
    text = " | ".join(report.reasons)
    assert "this run's own SSH port 22/tcp would close" in text
    assert "apply failed at 'Connect afresh through the new firewall'" in text
    assert "the on-host revert restored the firewall at " in text
    assert "the host was reachable again without the controller" in text
    rollback = _report("fw_lockout", "rollback", "firewall.rollback")
    assert isinstance(rollback, FirewallRollback)
    assert (rollback.revert_fired, rollback.restored_by, rollback.restored) == (True, "timer", True)
    snapshot = _report("fw_lockout", "apply", "firewall.snapshot")
    assert rollback.mismatches(snapshot) == []
    verify = _report("fw_lockout", "apply", "firewall.verify")
    assert isinstance(verify, FirewallVerify)
    assert verify.fresh_ssh is False
    assert verify.passed() is False


def test_rollback_restores_the_exact_prior_rules() -> None:
    snapshot = _report("fw_rolled_back", "apply", "firewall.snapshot")
    rollback = _report("fw_rolled_back", "rollback", "firewall.rollback")
    assert isinstance(snapshot, FirewallSnapshot)
    assert isinstance(rollback, FirewallRollback)
    assert rollback.restored_by == "rollback"
    assert rollback.revert_fired is False
    assert rollback.state.rules == snapshot.state.rules
    assert {r.port for r in snapshot.state.rules} == {"8081", "23", "5000:5010"}
    assert rollback.mismatches(snapshot) == []
    changed = snapshot.model_copy(
        update={"state": snapshot.state.model_copy(update={"live_sha256": "0" * 64})}
    )
    assert rollback.mismatches(changed) == [
        f"the live rule set differs from the snapshot (sha256 {rollback.state.live_sha256[:12]} "
        "now, 000000000000 before)"
    ]
    verify = _report("fw_rolled_back", "apply", "firewall.verify")
    assert isinstance(verify, FirewallVerify)
    assert [(p.port, p.answered) for p in verify.public_ports] == [(80, False)]
    assert verify.plan is not None
    assert verify.plan.compliant
    assert not verify.passed()


def test_snapshot_is_emitted_before_the_first_change() -> None:
    tasks = summary("fw_resolved", "apply").host(recorded.host("fw_resolved")).tasks
    names = [t.task for t in tasks]
    first_change = next(i for i, t in enumerate(tasks) if t.action == "community.general.ufw")
    assert names.index("Emit veris_report firewall.snapshot") < first_change
    assert names.index("Arm the on-host revert (restores the snapshot unless disarmed in time)") \
        < first_change  # fmt: skip
    assert names.index("Disarm the on-host revert") > names.index(
        "Connect afresh through the new firewall"
    )


def test_check_run_changes_nothing_but_predicts_ufw_changes() -> None:
    hs = summary("fw_resolved", "check").host(recorded.host("fw_resolved"))
    assert {t.action for t in hs.changed_tasks} == {"community.general.ufw"}
    assert hs.unpredictable_tasks == ()
    assert "firewall.snapshot" not in hs.reports
    assert "firewall.plan" in hs.reports


# --- the decision on recorded checks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "action", "confidence"),
    [
        ("fw_resolved", "apply", 0.85),
        ("fw_not_needed", "skip", 1.0),
        ("fw_client_connected", "escalate", 0.68),
        ("fw_lockout", "apply", round((1 - OWN_PORT_PENALTY) * 0.85, 3)),
    ],
)
def test_decision_on_recorded_checks(scenario: str, action: str, confidence: float) -> None:
    check = summary(scenario, "check")
    decision = decide(check, recorded.host(scenario), FIX, History(), 0.7)
    assert decision.action == action
    assert decision.confidence == pytest.approx(confidence)


def test_past_rollbacks_of_hardening_need_approval() -> None:
    check = summary("fw_resolved", "check")
    decision = decide(check, recorded.host("fw_resolved"), FIX, History(rolled_back=1), 0.7)
    assert decision.action == "escalate"


# --- the models -----------------------------------------------------------------------------


def _plan_with(**changes: Any) -> FirewallPlan:
    plan = _report("fw_resolved", "check", "firewall.plan")
    assert isinstance(plan, FirewallPlan)
    state = plan.state.model_copy(update=changes)
    return plan.model_copy(update={"state": state})


def test_plan_blockers() -> None:
    assert _plan_with().blocker() is None
    no_ufw = _plan_with(ufw_installed=False).blocker()
    assert no_ufw is not None
    assert no_ufw.code == "no_ufw"
    lost = _plan_with(ssh_port_source="fallback", ssh_port_listening=False).blocker()
    assert lost is not None
    assert lost.code == "no_ssh_port"
    assert _plan_with(ssh_port_source="fallback", ssh_port_listening=True).blocker() is None
    # An explicit ssh_port is the operator's word, listening or not (the lockout drill).
    assert _plan_with(ssh_port_source="param", ssh_port_listening=False).blocker() is None


def test_compliant_plan_means_no_problem() -> None:
    plan = _report("fw_not_needed", "check", "firewall.plan")
    assert isinstance(plan, FirewallPlan)
    assert plan.problem_present() is False
    assert plan.signals() == []
    assert plan.describe().endswith("nothing to change")


def test_models_refuse_what_the_role_did_not_send() -> None:
    raw = json.loads(summary("fw_resolved", "check").host(recorded.host("fw_resolved"))
                     .reports["firewall.plan"].model_dump_json())  # fmt: skip
    FirewallPlan.model_validate(raw)
    with pytest.raises(ValueError, match="extra"):
        FirewallPlan.model_validate({**raw, "surprise": 1})
    raw["state"]["etc_sha256"] = "not a digest"
    with pytest.raises(ValueError, match="etc_sha256"):
        FirewallPlan.model_validate(raw)


# --- the probe module's logic (roles/ufw_harden/library/ufw_harden_probe.py) ----------------

ENABLED_THEN_DISABLED = """# Generated by iptables-save v1.8.9 (nf_tables) on Tue Dec  1 21:51:40
*filter
:INPUT ACCEPT [1:52]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [1:136]
:ufw-after-input - [0:0]
:ufw-before-input - [0:0]
:ufw-user-input - [0:0]
-A INPUT -j ufw-before-input
-A INPUT -j ufw-after-input
-A ufw-before-input -j ufw-user-input
COMMIT
# Completed on Tue Dec  1 21:51:40 2026
"""


def test_ufw_leftovers_and_empty_tables_normalize_to_nothing() -> None:
    assert PROBE.normalize_ruleset("") == ""
    assert PROBE.normalize_ruleset(ENABLED_THEN_DISABLED) == ""
    empty_filter = (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    )
    assert PROBE.normalize_ruleset(empty_filter) == ""


def test_normalization_keeps_real_rules_policies_and_foreign_chains() -> None:
    with_rule = ENABLED_THEN_DISABLED.replace(
        "-A INPUT -j ufw-before-input", "-A INPUT -p tcp -m tcp --dport 80 -j DROP\n"
        "-A INPUT -j ufw-before-input"
    )  # fmt: skip
    assert PROBE.normalize_ruleset(with_rule) == (
        "*filter\n:FORWARD ACCEPT\n:INPUT ACCEPT\n:OUTPUT ACCEPT\n"
        "-A INPUT -p tcp -m tcp --dport 80 -j DROP\n"
    )
    assert PROBE.normalize_ruleset(ENABLED_THEN_DISABLED.replace(":INPUT ACCEPT", ":INPUT DROP"))
    docker = ENABLED_THEN_DISABLED.replace(":ufw-user-input - [0:0]", ":DOCKER-USER - [0:0]")
    assert ":DOCKER-USER -" in PROBE.normalize_ruleset(docker)  # only ufw's chains count as absent
    active = ENABLED_THEN_DISABLED.replace(
        "COMMIT", "-A ufw-user-input -p tcp --dport 22 -j ACCEPT\nCOMMIT"
    )
    assert "ufw-user-input" in PROBE.normalize_ruleset(active)
    counters = ENABLED_THEN_DISABLED.replace("[1:52]", "[99:9999]")
    assert PROBE.normalize_ruleset(counters) == PROBE.normalize_ruleset(ENABLED_THEN_DISABLED)


def test_tuples_parse_with_comments_logs_routes_apps_and_interfaces() -> None:
    parse = PROBE.parse_tuple
    rule = parse(
        "### tuple ### allow udp 8000:8010 0.0.0.0/0 any 10.0.0.0/8 in comment=746573742078", False
    )
    assert (rule["action"], rule["proto"], rule["port"], rule["src"], rule["comment"]) == (
        "allow", "udp", "8000:8010", "10.0.0.0/8", "test x"
    )  # fmt: skip
    assert parse("### tuple ### route:allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 in", False)["route"]
    logged = parse("### tuple ### allow_log-all tcp 80 0.0.0.0/0 any 0.0.0.0/0 in", False)
    assert (logged["action"], logged["log"]) == ("allow", "log-all")
    app = parse("### tuple ### allow tcp 22 ::/0 any ::/0 OpenSSH - in", True)
    assert (app["dapp"], app["sapp"], app["v6"]) == ("OpenSSH", "", True)
    iface = parse("### tuple ### allow tcp 9999 0.0.0.0/0 any 0.0.0.0/0 in_eth0", False)
    assert (iface["direction"], iface["interface"]) == ("in", "eth0")
    assert parse("-A ufw-user-input -p tcp --dport 22 -j ACCEPT", False) is None


def _state(rules: str = "", v6: str = "", **more: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "rules": PROBE.parse_rules([(rules, False), (v6, True)]),
        "ipv6": True, "default_incoming": "deny", "active": False, "enabled": False,
        "listeners": PROBE.parse_listeners(
            'tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=40,fd=3))\n'
            'tcp LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=39,fd=5))\n'
            'tcp LISTEN 0 5 0.0.0.0:8081 0.0.0.0:* users:(("python3",pid=9,fd=5))\n'
            'tcp LISTEN 0 5 [::]:8081 [::]:* users:(("python3",pid=9,fd=6))\n'
            'tcp LISTEN 0 511 127.0.0.1:6379 0.0.0.0:* users:(("redis-server",pid=3,fd=6))\n'
            "udp UNCONN 0 0 0.0.0.0%eth0:68 0.0.0.0:*\n"
        ),
        "connections": PROBE.parse_connections(
            "0 0 198.18.1.2:22 198.18.1.1:50000\n"
            "0 0 198.18.1.2:8081 198.18.1.2:40000\n"
            "0 0 [::ffff:198.18.1.2]:8081 [::ffff:203.0.113.9]:41000\n"
            "0 0 198.18.1.2:45000 203.0.113.80:443\n"
        ),
        "addresses": ["127.0.0.1", "198.18.1.2", "::1"],
        "connection": {"peer_address": "198.18.1.1", "peer_port": 50000,
                       "local_address": "198.18.1.2", "local_port": 22},
    }  # fmt: skip
    return {**base, **more}


NGINX = [{"name": "nginx", "port": 80, "public": True}, {"name": "redis-server", "port": 6379}]


def test_plan_from_an_inactive_firewall() -> None:
    desired = PROBE.desired_policy(22, NGINX, [])
    plan = PROBE.make_plan(_state(), desired, True)
    assert [r["label"] for r in plan["to_add"]] == ["22/tcp from any", "80/tcp from any"]
    assert plan["to_add"][0]["reason"] == "ssh"  # SSH first, always
    assert (plan["enable"], plan["set_default"], plan["compliant"]) == (True, False, False)
    # One entry per port (0.0.0.0 and ::), loopback-only redis and DHCP are not "closing".
    assert [c["label"] for c in plan["closing"]] == ["8081/tcp (python3)"]
    # A client from another address (v4-mapped) is shut out; the host's own and outgoing
    # connections and this run's own session are not.
    assert [c["label"] for c in plan["cut"]] == ["203.0.113.9 on 8081/tcp"]
    assert plan["own_port_closing"] is False


def test_declared_entries_and_a_cidr_rule() -> None:
    allow = [
        {"port": "5000:5010", "proto": "any", "source": "10.0.0.0/8", "comment": None},
        {"port": 8081, "proto": "tcp", "source": "198.18.1.0/24", "comment": "ops"},
    ]
    desired = PROBE.desired_policy(22, NGINX, allow)
    labels = [d["label"] for d in desired]
    assert labels == ["22/tcp from any", "80/tcp from any", "5000:5010/tcp from 10.0.0.0/8",
                      "5000:5010/udp from 10.0.0.0/8", "8081/tcp from 198.18.1.0/24"]  # fmt: skip
    plan = PROBE.make_plan(_state(), desired, True)
    # 8081 closes to the world but stays open to the declared CIDR; 203.0.113.9 is outside it.
    assert plan["closing"][0]["allowed_from"] == ["198.18.1.0/24"]
    assert [c["peer_address"] for c in plan["cut"]] == ["203.0.113.9"]


def test_compliant_firewall_and_pruning() -> None:
    v4 = ("### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n"
          "### tuple ### allow tcp 80 0.0.0.0/0 any 0.0.0.0/0 in comment=7765620a\n")  # fmt: skip
    v6 = ("### tuple ### allow tcp 22 ::/0 any ::/0 in\n"
          "### tuple ### allow tcp 80 ::/0 any ::/0 in\n")  # fmt: skip
    desired = PROBE.desired_policy(22, NGINX, [])
    done = PROBE.make_plan(_state(v4, v6, active=True, enabled=True), desired, True)
    assert done["compliant"] is True
    extra4 = v4 + ("### tuple ### allow tcp 8081 0.0.0.0/0 any 0.0.0.0/0 in\n"
                   "### tuple ### deny any 23 0.0.0.0/0 any 0.0.0.0/0 in\n"
                   "### tuple ### limit tcp 2222 0.0.0.0/0 any 0.0.0.0/0 in\n"
                   "### tuple ### allow_log-all tcp 9000 0.0.0.0/0 any 0.0.0.0/0 in\n")  # fmt: skip
    extra6 = v6 + "### tuple ### allow tcp 8081 ::/0 any ::/0 in\n"
    plan = PROBE.make_plan(_state(extra4, extra6, active=True, enabled=True), desired, True)
    # One deletion for the v4+v6 pair, with the arguments community.general.ufw takes.
    assert plan["to_delete"] == [{
        "label": "allow 8081/tcp from any",
        "args": {"rule": "allow", "direction": "in", "from_ip": "any", "to_ip": "any",
                 "log": False, "to_port": "8081", "proto": "tcp"},
    }]  # fmt: skip
    assert [k["label"] for k in plan["kept"]] == ["allow_log-all 9000/tcp from any"]
    kept = PROBE.make_plan(_state(extra4, extra6, active=True, enabled=True), desired, False)
    assert kept["to_delete"] == []
    assert {k["why"] for k in kept["kept"]} == {"prune is off"}


def test_deny_rule_for_a_declared_port_is_replaced_and_limit_satisfies() -> None:
    v4 = ("### tuple ### limit tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n"
          "### tuple ### deny tcp 80 0.0.0.0/0 any 0.0.0.0/0 in\n")  # fmt: skip
    v6 = ("### tuple ### limit tcp 22 ::/0 any ::/0 in\n"
          "### tuple ### deny tcp 80 ::/0 any ::/0 in\n")  # fmt: skip
    desired = PROBE.desired_policy(22, NGINX, [])
    plan = PROBE.make_plan(_state(v4, v6, active=True, enabled=True), desired, True)
    assert [r["label"] for r in plan["to_add"]] == ["80/tcp from any"]
    assert plan["to_delete"] == []


def test_wrong_ssh_port_closes_this_runs_own_session() -> None:
    desired = PROBE.desired_policy(2222, NGINX, [])
    plan = PROBE.make_plan(_state(), desired, True)
    assert plan["own_port_closing"] is True
    assert "22/tcp (sshd)" in [c["label"] for c in plan["closing"]]
    assert all(c["port"] != 22 for c in plan["cut"])


def test_ss_endpoints() -> None:
    split = PROBE.split_endpoint
    assert split("[::]:22") == ("::", 22)
    assert split("*:80") == ("*", 80)
    assert split("127.0.0.53%lo:53") == ("127.0.0.53", 53)
    assert split("[fe80::1%eth0]:123") == ("fe80::1", 123)
    assert split("0.0.0.0:*") is None
    assert PROBE.unmapped("::ffff:198.18.1.1") == "198.18.1.1"
