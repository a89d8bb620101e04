"""Reports of the host-wide diagnosis workflows (performance, security, firewall, general).

Each workflow's role reads its host in one probe task (``roles/diag_<workflow>/library``) and
emits one report, ``diag.<workflow>``; these models are that output field for field. A report
judges only what it saw: ``findings()`` for people, ``causes()`` for the decision, each cause
with its evidence, a documented confidence and the fix it implies (None: escalate, no safe
fix). Causes share codes with other reports (``oom_kill`` and ``disk_full`` are also the
service diagnosis's; ``firewall_inactive`` and ``unexpected_listener`` come from both the
security and the firewall workflow): ``causes.synthesize`` merges them.

Thresholds are role variables (``diag_<workflow>_*``, documented in each role's defaults and
overridable per host or group in the inventory); the role sends the ones it judged by with
the report, so the evidence can name them.

One module per workflow; ``_common`` holds what they share.
"""

from __future__ import annotations

from ._common import (
    Load,
    UfwState,
)
from .firewall import (
    ChainPolicy,
    DeclaredPort,
    ExposedPort,
    FirewallDiagnosis,
    FirewallListener,
    FirewallUfw,
    PortProbe,
    UfwRuleTuple,
)
from .general import (
    CacheDirUse,
    Clock,
    DefaultRoute,
    Dns,
    ErrorGroup,
    Filesystem,
    GeneralDiagnosis,
    GeneralMemory,
    GeneralThresholds,
    Lookup,
    RecentErrors,
    Routes,
)
from .performance import (
    CpuUsage,
    OomCounter,
    OomEvent,
    OomKills,
    OomUnit,
    PerformanceDiagnosis,
    PerformanceMemory,
    PerformanceThresholds,
    Pressure,
    ProcessUse,
)
from .security import (
    SecurityDiagnosis,
    SecurityJournal,
    SecurityListener,
    SecurityThresholds,
    SecurityUfw,
    SshFailures,
    SshLogin,
    SudoUse,
)

__all__ = [
    "CacheDirUse",
    "ChainPolicy",
    "Clock",
    "CpuUsage",
    "DeclaredPort",
    "DefaultRoute",
    "Dns",
    "ErrorGroup",
    "ExposedPort",
    "Filesystem",
    "FirewallDiagnosis",
    "FirewallListener",
    "FirewallUfw",
    "GeneralDiagnosis",
    "GeneralMemory",
    "GeneralThresholds",
    "Load",
    "Lookup",
    "OomCounter",
    "OomEvent",
    "OomKills",
    "OomUnit",
    "PerformanceDiagnosis",
    "PerformanceMemory",
    "PerformanceThresholds",
    "PortProbe",
    "Pressure",
    "ProcessUse",
    "RecentErrors",
    "Routes",
    "SecurityDiagnosis",
    "SecurityJournal",
    "SecurityListener",
    "SecurityThresholds",
    "SecurityUfw",
    "SshFailures",
    "SshLogin",
    "SudoUse",
    "UfwRuleTuple",
    "UfwState",
]
