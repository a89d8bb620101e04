"""Typed reports from roles (see ``base`` for the channel); one module per fix family.

Every module of this package is imported here, so a family's models register their kinds
by existing: adding a family adds a module, and touches no list.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    Assessment,
    Blocker,
    Cause,
    Finding,
    Report,
    ReportError,
    Restoration,
    Scope,
    Severity,
    Signal,
    Snapshot,
    Verification,
    known_kinds,
    parse_report,
    report_kind,
    report_model,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Assessment",
    "Blocker",
    "Cause",
    "Finding",
    "Report",
    "ReportError",
    "Restoration",
    "Scope",
    "Severity",
    "Signal",
    "Snapshot",
    "Verification",
    "known_kinds",
    "parse_report",
    "report_kind",
    "report_model",
]
