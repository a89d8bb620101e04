"""The typed channel from roles to Python: the report roles, the registry, the parser.

**The mechanism.** A role reports with one task whose result carries ``veris_report``, a
mapping with a ``kind`` (``ansible.builtin.debug`` with ``var: veris_report`` returns the
variable under its own name). The report arrives in that task's ``runner_on_ok`` event
the moment the task has run, so a snapshot taken just before a run is cut short (timeout,
brake, lost host) still reaches Python; ``set_stats`` would only deliver it with
``playbook_on_stats`` at the very end, and lose it exactly then. The event folder hands
each raw report to :func:`parse_report`, which validates it against the frozen model
registered for its kind; nothing else a role says crosses into Python.

**The roles a report plays for a fix** (the fix's spec names the kind of each):

- :class:`Assessment` — the check run's answer to "is the problem present, and can this
  fix help?", with risks the role observed (:class:`Signal`) and reasons it cannot help
  (:class:`Blocker`).
- :class:`Snapshot` — what the apply run saved before it changed anything.
- :class:`Verification` — the apply run's health check after the change.
- :class:`Restoration` — the rollback run's answer to "is the prior state back?".

Any report may also name likely root causes (:class:`Cause`, from ``causes()``) with the
evidence they rest on; the decision refuses a fix that a cause rules out.

A kind is one model; a model may serve several kinds and several roles (a service's
``health`` before the fix and ``verify`` after it are the same model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from ..exceptions import describe_problems

Severity = Literal["info", "warning", "critical"]


class ReportError(ValueError):
    """A role sent a report Python cannot accept (unknown kind, wrong shape)."""


class Finding(BaseModel):
    """One thing a person should know about a host, from a report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    severity: Severity
    message: str


class Cause(BaseModel):
    """A likely root cause, named from what a report saw, with the evidence for it.

    ``implied_fix`` is the fix family that addresses it, or None: escalate, no safe fix.
    ``rules_out`` are fix families that cannot help while it holds (a restart does not
    free a port another process holds): the decision refuses them, with this cause.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    summary: str
    confidence: float = Field(ge=0.0, le=1.0)
    evidence: tuple[str, ...]
    implied_fix: str | None = None
    rules_out: tuple[str, ...] = ()

    def merged(self, other: Cause) -> Cause:
        """The same cause seen twice: the surer confidence, both sets of evidence."""
        return self.model_copy(
            update={
                "confidence": max(self.confidence, other.confidence),
                "evidence": tuple(dict.fromkeys((*self.evidence, *other.evidence))),
                "rules_out": tuple(dict.fromkeys((*self.rules_out, *other.rules_out))),
                "implied_fix": self.implied_fix or other.implied_fix,
            }
        )


class Signal(BaseModel):
    """A risk the role saw in the check run; it lowers the fix's confidence by ``penalty``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str
    penalty: float = Field(ge=0.0, le=1.0)


class Blocker(BaseModel):
    """Why this fix cannot help here. ``code`` is what a rule's ``on_blocked`` keys on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    reason: str


class Scope(BaseModel):
    """What one plan may touch on its host, from the inventory (and the baseline store).

    Reports come back from the host; before any of one is handed to a later run, it is
    cut down to this scope, so a host can never widen what a fix acts on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    services: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    config_files: tuple[str, ...] = ()
    cache_dirs: tuple[str, ...] = ()
    baseline_sha256: tuple[str, ...] = ()


class Report(BaseModel):
    """Base of every report model; ``kind`` says which registered model it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str

    def describe(self) -> str:
        """One line for a person."""
        return self.kind

    def findings(self, host: str) -> list[Finding]:
        """What a person should know, as findings (none by default)."""
        return []

    def causes(self) -> list[Cause]:
        """Likely root causes this report's evidence points to (none by default).

        Rule-based and explainable: each names the facts it rests on. A diagnosis report
        gives the causes of its workflow; ``causes.synthesize`` merges them across reports.
        """
        return []


class Assessment(Report):
    """The check run's diagnosis, as far as one fix is concerned."""

    def problem_present(self) -> bool:
        raise NotImplementedError

    def blocker(self) -> Blocker | None:
        """A reason this fix cannot help, or None."""
        return None

    def signals(self) -> list[Signal]:
        """Risks the role observed that lower confidence (none by default)."""
        return []

    def restricted(self, scope: Scope) -> Self:
        """This assessment as the apply run may see it: nothing outside ``scope``."""
        return self

    def preview_diff(self) -> str:
        """The change as the role computed it, before → after, in unified-diff form.

        For fixes whose modules show no diff of their own (a firewall's rule set); empty
        when the modules' own ``--diff`` output says it all.
        """
        return ""


class Snapshot(Report):
    """What was saved before the change; the rollback run gets it back, restricted."""

    def restricted(self, scope: Scope) -> Self:
        return self


class Verification(Report):
    """The health check after the change."""

    def passed(self) -> bool:
        raise NotImplementedError


class Restoration(Report):
    """The rollback run's own account of what it restored."""

    def is_restored(self) -> bool:
        raise NotImplementedError

    def mismatches(self, snapshot: Snapshot) -> list[str]:
        """Where the state now differs from ``snapshot``, checked on the Python side too."""
        return []


_REGISTRY: dict[str, type[Report]] = {}
R = TypeVar("R", bound=type[Report])


def report_kind(*kinds: str) -> Callable[[R], R]:
    """Class decorator: ``kinds`` are reported with this model."""

    def register(cls: R) -> R:
        for kind in kinds:
            if kind in _REGISTRY and _REGISTRY[kind] is not cls:
                raise ValueError(f"report kind {kind} is registered twice")
            _REGISTRY[kind] = cls
        return cls

    return register


def report_model(kind: str) -> type[Report] | None:
    """The model registered for ``kind``."""
    return _REGISTRY.get(kind)


def known_kinds() -> frozenset[str]:
    return frozenset(_REGISTRY)


def parse_report(raw: Mapping[str, Any]) -> Report:
    """Validate one raw ``veris_report`` against its kind's model."""
    kind = raw.get("kind")
    model = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ReportError(f"report of unknown kind {str(kind)[:60]!r}")
    try:
        return model.model_validate(dict(raw))
    except PydanticValidationError as exc:
        raise ReportError(f"report {kind}: {describe_problems(exc, 'report')}"[:500]) from exc
