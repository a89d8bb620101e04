"""Route a validated alert on a resolved host to a workflow, a fix and (maybe) a service.

Rules come from a YAML file (the shipped default or the operator's own); the first
rule that matches wins. A rule's fix must be one the fix catalog knows, its ``params``
must be ones that fix's role takes (typed by its argument_specs), and its ``on_blocked``
must name blockers the fix can report — all checked when the rules file loads.

Alert labels only *select* among what the host declares in ``veris_services``; they can
never add to it. A fix of ``service`` scope needs exactly one declared service; a fix of
``host`` scope acts on the host, narrowed to a service only when the alert names one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError

from .alerts import Alert, shown
from .exceptions import NoRuleError, RoutingError, UsageError, describe_problems
from .fixes import FixCatalog, FixSpec, ParamValue, load_fixes
from .inventory import Inventory, InventoryHost, ServiceSpec
from .resources import default_rules_file
from .targeting import Target

# A service or name label is a claim about *which* service failed: if the host does not
# declare it, refuse. Other labels (job: blackbox-http) merely might name a service.
AUTHORITATIVE_LABELS = frozenset({"service", "name"})
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# params.service is routing's own (the fallback service); every other param goes to the fix.
ROUTING_PARAMS = frozenset({"service"})


class Workflow(BaseModel):
    """A read-only diagnosis workflow: one Ansible run, one report of its own kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    playbook: str
    report: str  # the role_reports kind it emits
    needs_service: bool  # diagnoses one declared service, or the host


# The six workflows rules route to; each playbook runs one read-only role.
WORKFLOWS: dict[str, Workflow] = {
    w.name: w
    for w in (
        Workflow(name="service_health", playbook="service_diagnose.yml", report="health",
                 needs_service=True),
        Workflow(name="database_connectivity", playbook="diagnose_database.yml",
                 report="diag.database", needs_service=False),
        Workflow(name="performance", playbook="diagnose_performance.yml",
                 report="diag.performance", needs_service=False),
        Workflow(name="security", playbook="diagnose_security.yml", report="diag.security",
                 needs_service=False),
        Workflow(name="firewall", playbook="diagnose_firewall.yml", report="diag.firewall",
                 needs_service=False),
        Workflow(name="general", playbook="diagnose_general.yml", report="diag.general",
                 needs_service=False),
    )
}  # fmt: skip


class Rule(BaseModel):
    """One routing rule: which alerts it matches and what they are routed to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrictStr
    match_alertnames: tuple[StrictStr, ...] = ()
    match_labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    workflow: StrictStr
    fix: StrictStr | None = None
    service_labels: tuple[StrictStr, ...] = ("service", "name", "job")
    params: dict[StrictStr, ParamValue] = Field(default_factory=dict)
    # blocker code the fix may report -> the fix to try instead (see fixes.py)
    on_blocked: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    # "always": a person approves every application of this rule's fix, whatever the score.
    approval: Literal["score", "always"] = "score"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not RULE_NAME.fullmatch(value):
            raise ValueError("rule name must match [A-Za-z0-9][A-Za-z0-9_.-]*")
        return value

    @field_validator("workflow")
    @classmethod
    def _workflow(cls, value: str) -> str:
        if value not in WORKFLOWS:
            raise ValueError(f"workflow {value!r} is not one of {sorted(WORKFLOWS)}")
        return value

    @field_validator("match_labels", "service_labels")
    @classmethod
    def _label_names(
        cls, value: dict[str, str] | tuple[str, ...], info: ValidationInfo
    ) -> dict[str, str] | tuple[str, ...]:
        for key in value:  # a dict's keys, or the tuple's entries
            if not IDENTIFIER.fullmatch(key):
                raise ValueError(f"{info.field_name} entry {key!r} is not a label name")
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key, item in value.items():
            if not IDENTIFIER.fullmatch(key):
                raise ValueError(f"params key {key!r} is not an identifier")
            # Params travel to Ansible as data; a template in one would be a trap.
            if isinstance(item, str) and any(m in item for m in ("{{", "{%", "{#")):
                raise ValueError(f"params.{key} contains a Jinja2 delimiter")
        return value

    def matches(self, alert: Alert) -> bool:
        if not self.match_alertnames and not self.match_labels:
            return False  # load_rules refuses such rules; never match everything by accident
        if self.match_alertnames and not any(
            _name_matches(alert, pattern) for pattern in self.match_alertnames
        ):
            return False
        return all(alert.labels.get(k) == v for k, v in self.match_labels.items())


def _name_matches(alert: Alert, pattern: str) -> bool:
    if alert.name == pattern:
        return True
    # Sentinel check ids grow suffixes (S1-probes-liveness); "S1-probes" or "S1" cover
    # them, but "S1" never covers "S11-firewall-status".
    return alert.source == "sentinel" and alert.name.startswith(pattern + "-")


class RuleSet(BaseModel):
    """The ordered routing rules; the first match wins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[Rule, ...]


class Route(BaseModel):
    """An alert routed: the host, the workflow, the fix and the declared service, if any."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert: Alert
    target: Target
    rule: str
    workflow: str
    fix: str | None
    service: ServiceSpec | None
    # Role variables from the rule's params, already checked against the fix's role.
    fix_params: dict[str, ParamValue] = Field(default_factory=dict)
    on_blocked: dict[str, str] = Field(default_factory=dict)
    approval: Literal["score", "always"] = "score"

    @property
    def service_name(self) -> str | None:
        return self.service.name if self.service else None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice (YAML would keep the last silently)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(key, deep=True) for key, _ in node.value]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate key(s) {', '.join(duplicates)}", node.start_mark
        )
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_rules(path: Path | None, catalog: FixCatalog | None = None) -> RuleSet:
    """Load and validate a rules file; None means the shipped default rules.

    Fixes, their params and ``on_blocked`` are checked against ``catalog`` (default: the
    installed fix specs), so a rule that could not run is refused here, not at 3 a.m.
    """
    source = default_rules_file() if path is None else path
    fixes = catalog or load_fixes()
    try:
        document = yaml.load(source.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except OSError as exc:
        raise UsageError(f"rules file {source}: cannot read it: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"rules file {source}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or set(document) - {"version", "rules"}:
        raise UsageError(f"rules file {source}: expected a mapping with 'version: 1' and 'rules'")
    if document.get("version") != 1:
        raise UsageError(f"rules file {source}: version must be 1")
    items = document.get("rules")
    if not isinstance(items, list) or not items:
        raise UsageError(f"rules file {source}: 'rules' must be a non-empty list")
    rules: list[Rule] = []
    for index, item in enumerate(items):
        try:
            rule = Rule.model_validate(item)
        except PydanticValidationError as exc:
            problems = describe_problems(exc, "rule")
            raise UsageError(f"rules file {source}: rules[{index}]: {problems}") from exc
        if not rule.match_alertnames and not rule.match_labels:
            raise UsageError(
                f"rules file {source}: rule {rule.name} needs match_alertnames or match_labels"
            )
        if any(r.name == rule.name for r in rules):
            raise UsageError(f"rules file {source}: rule name {rule.name} is used twice")
        try:
            _check_fix(rule, fixes)
        except ValueError as exc:
            raise UsageError(f"rules file {source}: rule {rule.name}: {exc}") from exc
        rules.append(rule)
    return RuleSet(rules=tuple(rules))


def _check_fix(rule: Rule, fixes: FixCatalog) -> None:
    fix_params = {k: v for k, v in rule.params.items() if k not in ROUTING_PARAMS}
    if rule.fix is None:
        if fix_params or rule.on_blocked:
            raise ValueError("params (other than service) and on_blocked need a fix")
        return
    spec = fixes.get(rule.fix)
    if spec is None:
        raise ValueError(f"fix {rule.fix!r} is not one of {', '.join(fixes.names())} (or null)")
    spec.role_params(fix_params, f"fix {spec.name}")
    for code, other in rule.on_blocked.items():
        if code not in spec.blockers:
            known = ", ".join(sorted(spec.blockers)) or "none"
            raise ValueError(f"fix {spec.name} never reports blocker {code!r} (it may: {known})")
        if fixes.get(other) is None or other == spec.name:
            raise ValueError(f"on_blocked.{code}: {other!r} is not another known fix")


def route_alert(
    alert: Alert,
    target: Target,
    inventory: Inventory,
    rules: RuleSet,
    catalog: FixCatalog | None = None,
) -> Route:
    """The first matching rule, applied to the alert's host and what the fix acts on."""
    rule = next((r for r in rules.rules if r.matches(alert)), None)
    if rule is None:
        raise NoRuleError(f"no routing rule matches alert {alert.name}; a human must look")
    host = inventory.hosts.get(target.host)
    if host is None:
        raise RoutingError(f"host {target.host} is not in the inventory")
    spec = (catalog or load_fixes()).get(rule.fix) if rule.fix else None
    if rule.fix and spec is None:  # a catalog other than the one the rules were loaded with
        raise NoRuleError(f"fix {rule.fix} of rule {rule.name} is not installed")
    service = _select_service(alert, target, host, rule, spec)
    fix_params = {k: v for k, v in rule.params.items() if k not in ROUTING_PARAMS}
    return Route(
        alert=alert,
        target=target,
        rule=rule.name,
        workflow=rule.workflow,
        fix=rule.fix,
        service=service,
        fix_params=spec.role_params(fix_params, f"rule {rule.name}") if spec else {},
        on_blocked=dict(rule.on_blocked),
        approval=rule.approval,
    )


def _select_service(
    alert: Alert, target: Target, host: InventoryHost, rule: Rule, spec: FixSpec | None
) -> ServiceSpec | None:
    """The declared service the alert is about; None for a host-wide fix that names none."""
    named = _named_service(alert, host, rule)
    if named is not None:
        return named
    host_wide = spec.scope == "host" if spec else not WORKFLOWS[rule.workflow].needs_service
    if host_wide:
        return None  # guessing by port or "the only service" would narrow host-wide work
    if target.port is not None:
        by_port = [s for s in host.services.values() if s.port == target.port]
        if len(by_port) == 1:
            return by_port[0]
    if len(host.services) == 1:
        return next(iter(host.services.values()))
    problem = (
        f"host {host.name} declares no veris_services"
        if not host.services
        else f"alert {alert.name} does not say which of the services of host {host.name} "
        f"({', '.join(sorted(host.services))}) it is about"
    )
    if rule.fix is None:
        # Nothing would be fixed anyway: the alert is valid, a human must look.
        raise NoRuleError(f"{problem}; rule {rule.name} has no automatic fix")
    raise RoutingError(problem)


def _named_service(alert: Alert, host: InventoryHost, rule: Rule) -> ServiceSpec | None:
    """The service a label or the rule's params.service names; refuses an undeclared one."""
    for label in rule.service_labels:
        value = alert.labels.get(label)
        if value is None:
            continue
        spec = _declared(host, value)
        if spec is not None:
            return spec
        if label in AUTHORITATIVE_LABELS:
            raise RoutingError(
                f"service {shown(value)} (label {label}) is not declared in veris_services "
                f"of host {host.name}"
            )
    wanted = rule.params.get("service")
    if isinstance(wanted, str):
        spec = _declared(host, wanted)
        if spec is None:
            raise RoutingError(
                f"service {wanted} (rule {rule.name}) is not declared in veris_services "
                f"of host {host.name}"
            )
        return spec
    return None


def _declared(host: InventoryHost, value: str) -> ServiceSpec | None:
    """The declared service a label value names, by service name or by unit name."""
    if value in host.services:
        return host.services[value]
    for spec in host.services.values():
        if spec.unit == value:
            return spec
    stem = value.removesuffix(".service")
    if stem != value and stem in host.services:
        return host.services[stem]  # redis-server.service names redis-server
    return None


def dedupe_routes(routes: Sequence[Route]) -> list[Route]:
    """One route per host, fix and service; the first one of each is kept."""
    seen: set[tuple[str, ...]] = set()
    unique: list[Route] = []
    for route in routes:
        # Diagnosis-only routes (fix null) of different workflows are different work.
        key = (
            route.target.host,
            route.fix or f"diagnose:{route.workflow}",
            route.service_name or "",
        )
        if key not in seen:
            seen.add(key)
            unique.append(route)
    return unique
