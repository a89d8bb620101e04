"""veris-remediate: alerts in, previewed, scored, verified and reversible Ansible fixes out."""

from __future__ import annotations

from .exceptions import (
    BrakeEngagedError,
    EscalatedError,
    InventoryError,
    RejectedError,
    RunnerError,
    UsageError,
    VerisError,
)
from .pipeline import Remediator
from .progress import ProgressCallback, ProgressEvent
from .report import RemediationResult, RunReport
from .settings import Settings, settings_from_env

__all__ = [
    "BrakeEngagedError",
    "EscalatedError",
    "InventoryError",
    "ProgressCallback",
    "ProgressEvent",
    "RejectedError",
    "RemediationResult",
    "Remediator",
    "RunReport",
    "RunnerError",
    "Settings",
    "UsageError",
    "VerisError",
    "settings_from_env",
]
