"""The one error tree of veris-remediate; each error carries its CLI exit code.

    VerisError(message, exit_code=6)
    ├── UsageError                 exit 2  bad command-line use, bad rules/settings file
    ├── RejectedError              exit 3  untrusted input refused, nothing run
    │   ├── PayloadError                   not a payload we understand (JSON, shape, sizes)
    │   ├── ValidationError                a value fails its character set / length / range
    │   ├── TargetError                    no single inventory host, or a host pattern
    │   └── RoutingError                   no rule, or a service the host does not declare
    ├── InventoryError             exit 2  the operator's inventory cannot be read
    ├── FixSpecError               exit 2  a role's fix spec (meta/veris_fix.yml) is broken
    ├── EscalatedError             exit 4  a human must decide (busy host, low confidence)
    │   └── NoRuleError                    no routing rule or no automatic fix for this alert
    ├── BrakeEngagedError          exit 7  the emergency brake is on
    ├── LabError                   exit 6  lab hosts could not be built, booted or removed
    ├── RunnerError                exit 6  ansible-runner could not run a playbook
    └── AuditError                 exit 6  the audit log cannot be written or is tampered

Foreign errors (ansible-runner, jinja2, pydantic, yaml, OSError) are caught at the
boundary of the stage that meets them and re-raised as one of these with ``from exc``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError as PydanticValidationError


class VerisError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code: int = 6

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(VerisError):
    exit_code = 2


class InventoryError(VerisError):
    exit_code = 2


class FixSpecError(VerisError):
    exit_code = 2


class RejectedError(VerisError):
    exit_code = 3


class PayloadError(RejectedError):
    pass


class ValidationError(RejectedError):
    pass


class TargetError(RejectedError):
    pass


class RoutingError(RejectedError):
    pass


class EscalatedError(VerisError):
    exit_code = 4


class NoRuleError(EscalatedError):
    pass


class BrakeEngagedError(VerisError):
    exit_code = 7


class LabError(VerisError):
    exit_code = 6


class RunnerError(VerisError):
    exit_code = 6


class AuditError(VerisError):
    exit_code = 6


def describe_problems(exc: PydanticValidationError, whole: str) -> str:
    """pydantic's errors as one line, "field: problem; ...", for a message at the boundary.

    ``whole`` names the thing itself when an error is not about one of its fields.
    """
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or whole}: {err['msg']}" for err in exc.errors()
    )
