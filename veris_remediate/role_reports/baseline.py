"""The report of config_baseline: which config files were fetched as last-known-good copies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from .base import Report, report_kind


class BaselineFile(BaseModel):
    """One declared config file as the host saw it, and where its copy was fetched to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    exists: bool
    sha256: str | None
    size: int | None
    mode: str | None
    owner: str | None
    group: str | None
    fetched: str  # the copy on the controller (inside the run's controller directory)


class BaselineService(BaseModel):
    """One service: whether it was healthy and valid, so its files are a good baseline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    unit: str
    healthy: bool | None  # None: not probed (no config files or no validator declared)
    config_valid: bool | None
    recorded: bool
    files: tuple[BaselineFile, ...]

    def why_not(self) -> str:
        if self.healthy is None:
            return "no config_files with a validate command declared"
        if not self.healthy:
            return "service is not healthy"
        return "configuration does not validate"


@report_kind("baseline")
class BaselineReport(Report):
    kind: Literal["baseline"]
    services: tuple[BaselineService, ...]

    def describe(self) -> str:
        good = [s.name for s in self.services if s.recorded]
        return f"baseline of {', '.join(good) or 'no service'}"
