"""The fix model: one typed spec per fix family, kept next to its role, loaded from here only.

A fix family is a role plus ``roles/<role>/meta/veris_fix.yml``. The spec says, once:

- ``scope``: ``service`` (acts on one declared service) or ``host`` (acts on the host; a
  service the alert names narrows it);
- ``risk`` (``low``/``medium``/``high``) and ``reversible``; an irreversible fix is decided
  by its own rule (see ``decision.py``) and has no rollback;
- ``expected_changes``: the modules whose predicted changes are this fix's job; any other
  predicted change is a surprise that lowers confidence;
- ``snapshot``: what is saved before the change (for people: it is shown in the report);
- ``playbook`` and ``rollback_playbook``: the reviewed entry playbooks;
- ``reports``: the report kinds (``role_reports``) that answer "is the problem present?"
  (``assess``, read from the check run), "did it work?" (``verify``), what was saved
  (``snapshot``) and "is the prior state back?" (``rollback``);
- ``params``: the rule ``params`` the fix accepts; param ``x`` sets the role variable
  ``<role>_x``, typed by the role's ``meta/argument_specs.yml`` (``main``) and validated when
  the rules file loads;
- ``requires``: what the inventory (or the baseline store) must declare for the fix to be
  planned at all; otherwise the alert escalates with the reason;
- ``blockers``: codes the assessment may give for "this fix cannot help"; a rule's
  ``on_blocked`` maps a code to another fix to try instead.

Routing, planning, the decision, verify and the report read these specs; adding a family
is a role, its spec, its report models (one module in ``role_reports``) and its tests.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from .exceptions import FixSpecError, describe_problems
from .resources import playbooks_dir, roles_dir
from .role_reports import Assessment, Report, Restoration, Snapshot, Verification, report_model

FixScope = Literal["host", "service"]
Risk = Literal["low", "medium", "high"]
# What a fix may need declared before it is planned; each is checked by planner.py.
Requirement = Literal[
    "service", "firewall_policy", "cache_dirs", "config_validator", "baseline", "postgres_policy"
]
ParamValue = StrictStr | StrictBool | StrictInt
SPEC_FILE = Path("meta") / "veris_fix.yml"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PARAM_TYPES = {"str": str, "path": str, "int": int, "bool": bool}


class ReportKinds(BaseModel):
    """Which report kind answers which question."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    assess: str
    verify: str
    snapshot: str | None = None
    rollback: str | None = None


class ParamSpec(BaseModel):
    """One rule param a fix accepts, typed by the role's argument_specs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    role_var: str
    type: Literal["str", "path", "int", "bool"]
    choices: tuple[ParamValue, ...] = ()
    description: str = ""


class FixSpec(BaseModel):
    """One fix family, as its role's ``meta/veris_fix.yml`` describes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    role: str
    summary: str
    scope: FixScope
    risk: Risk
    reversible: bool
    expected_changes: frozenset[str]
    snapshot: str
    playbook: str
    rollback_playbook: str | None
    reports: ReportKinds
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    requires: tuple[Requirement, ...] = ()
    blockers: dict[str, str] = Field(default_factory=dict)

    def role_params(self, params: Mapping[str, object], where: str) -> dict[str, ParamValue]:
        """Rule params → role variables, each checked against the role's argument_specs.

        Raises ValueError naming ``where`` and the param for anything the role does not take.
        """
        out: dict[str, ParamValue] = {}
        for name, raw in params.items():
            spec = self.params.get(name)
            if spec is None:
                accepted = ", ".join(sorted(self.params)) or "none"
                raise ValueError(
                    f"{where}: fix {self.name} takes no param {name!r} (it takes: {accepted})"
                )
            wanted = _PARAM_TYPES[spec.type]
            # bool is an int in Python: an int param must not take true/false.
            if not isinstance(raw, wanted) or (wanted is int and isinstance(raw, bool)):
                raise ValueError(
                    f"{where}: param {name} of fix {self.name} must be {spec.type}, "
                    f"not {type(raw).__name__}"
                )
            value: ParamValue = raw  # type: ignore[assignment]  # checked just above
            if spec.choices and value not in spec.choices:
                choices = ", ".join(map(str, spec.choices))
                raise ValueError(f"{where}: param {name} must be one of {choices}")
            out[spec.role_var] = value
        return out


class _SpecFile(BaseModel):
    """The YAML as written; ``load_fixes`` checks it against the role and the registry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrictStr
    summary: StrictStr
    scope: FixScope
    risk: Risk
    reversible: StrictBool
    expected_changes: tuple[StrictStr, ...]
    snapshot: StrictStr
    playbook: StrictStr
    rollback_playbook: StrictStr | None = None
    reports: ReportKinds
    params: tuple[StrictStr, ...] = ()
    requires: tuple[Requirement, ...] = ()
    blockers: dict[StrictStr, StrictStr] = Field(default_factory=dict)


class FixCatalog(BaseModel):
    """Every fix family this installation has, by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fixes: dict[str, FixSpec]

    def get(self, name: str) -> FixSpec | None:
        return self.fixes.get(name)

    def names(self) -> list[str]:
        return sorted(self.fixes)


# libyaml's safe loader when PyYAML has it: the fix specs and role specs every process reads
# parse ~9x faster (docs/BENCHMARKS.md); the pure-Python one otherwise, the same documents.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)  # noqa: S506
    except (OSError, yaml.YAMLError) as exc:
        raise FixSpecError(f"{path}: cannot read it: {exc}") from exc


def _check_kind(path: Path, role: str, kind: str | None, base: type[Report]) -> None:
    if kind is None:
        return
    model = report_model(kind)
    if model is None:
        raise FixSpecError(f"{path}: report kind {kind!r} has no model in role_reports")
    if not issubclass(model, base):
        raise FixSpecError(f"{path}: report {kind!r} ({model.__name__}) is not a {base.__name__}")


def _argument_specs(role_dir: Path) -> Mapping[str, Any]:
    specs = _yaml(role_dir / "meta" / "argument_specs.yml")
    entry_points = specs.get("argument_specs") if isinstance(specs, Mapping) else None
    if not isinstance(entry_points, Mapping):
        raise FixSpecError(f"{role_dir}/meta/argument_specs.yml has no argument_specs mapping")
    return entry_points


def _param(path: Path, role: str, name: str, options: Mapping[str, Any]) -> ParamSpec:
    role_var = f"{role}_{name}"
    option = options.get(role_var)
    if not isinstance(option, Mapping):
        raise FixSpecError(f"{path}: param {name!r} needs option {role_var} in argument_specs main")
    kind = option.get("type", "str")
    if kind not in _PARAM_TYPES:
        raise FixSpecError(f"{path}: param {name!r} is {kind}; params must be str, int or bool")
    description = option.get("description", "")
    if isinstance(description, list):
        description = " ".join(str(line) for line in description)
    return ParamSpec(
        name=name,
        role_var=role_var,
        type=kind,
        choices=tuple(option.get("choices") or ()),
        description=str(description),
    )


def load_spec(role_dir: Path) -> FixSpec:
    """Read and check one role's fix spec."""
    path = role_dir / SPEC_FILE
    role = role_dir.name
    try:
        raw = _SpecFile.model_validate(_yaml(path))
    except PydanticValidationError as exc:
        raise FixSpecError(f"{path}: {describe_problems(exc, 'spec')}") from exc
    if not _NAME.fullmatch(raw.name):
        raise FixSpecError(f"{path}: fix name {raw.name!r} must match {_NAME.pattern}")
    if not raw.expected_changes:
        raise FixSpecError(f"{path}: expected_changes is empty: the fix would change nothing")
    if raw.reversible != (raw.rollback_playbook is not None):
        raise FixSpecError(f"{path}: a rollback_playbook is needed exactly when reversible")
    if raw.reversible and (raw.reports.snapshot is None or raw.reports.rollback is None):
        raise FixSpecError(f"{path}: a reversible fix needs snapshot and rollback reports")
    for playbook in (raw.playbook, raw.rollback_playbook):
        if playbook is not None and not (playbooks_dir() / playbook).is_file():
            raise FixSpecError(f"{path}: playbook {playbook} is not in {playbooks_dir()}")
    _check_kind(path, role, raw.reports.assess, Assessment)
    _check_kind(path, role, raw.reports.verify, Verification)
    _check_kind(path, role, raw.reports.snapshot, Snapshot)
    _check_kind(path, role, raw.reports.rollback, Restoration)
    entry_points = _argument_specs(role_dir)
    for needed in ("main", "rollback"):
        if needed not in entry_points:
            raise FixSpecError(f"{role_dir}/meta/argument_specs.yml lacks entry point {needed}")
    options = entry_points["main"].get("options") or {}
    return FixSpec(
        name=raw.name,
        role=role,
        summary=raw.summary,
        scope=raw.scope,
        risk=raw.risk,
        reversible=raw.reversible,
        expected_changes=frozenset(raw.expected_changes),
        snapshot=raw.snapshot,
        playbook=raw.playbook,
        rollback_playbook=raw.rollback_playbook,
        reports=raw.reports,
        params={name: _param(path, role, name, options) for name in raw.params},
        requires=raw.requires,
        blockers=dict(raw.blockers),
    )


@functools.cache
def _load(directory: Path) -> FixCatalog:
    fixes: dict[str, FixSpec] = {}
    for spec_path in sorted(directory.glob(f"*/{SPEC_FILE}")):
        spec = load_spec(spec_path.parents[1])
        if spec.name in fixes:
            raise FixSpecError(f"fix {spec.name} is specified twice ({spec_path})")
        fixes[spec.name] = spec
    return FixCatalog(fixes=fixes)


def load_fixes(directory: Path | None = None) -> FixCatalog:
    """Every fix spec under ``directory`` (default: the installed roles), read once."""
    return _load((directory or roles_dir()).resolve())
