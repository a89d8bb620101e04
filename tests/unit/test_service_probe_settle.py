"""service_health_probe's settle: counted from the unit's activation, not from the probe."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import role_module

PROBE = role_module("service_health", "service_health_probe")


class FakeModule:
    """Answers ``systemctl show`` with the given ActiveState and activation time."""

    def __init__(self, active_state: str, entered_usec: int) -> None:
        self.show = f"ActiveState={active_state}\nActiveEnterTimestampMonotonic={entered_usec}\n"
        self.calls: list[list[str]] = []

    def get_bin_path(self, name: str) -> str:
        return f"/usr/bin/{name}"

    def run_command(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        return 0, self.show, ""


def params(settle: float, container: str | None = None) -> dict[str, Any]:
    return {"settle_seconds": settle, "container": container, "unit": "nginx.service"}


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> float:
    """CLOCK_MONOTONIC as the module reads it, fixed at 1000 s."""
    monkeypatch.setattr(PROBE.time, "monotonic", lambda: 1000.0)
    return 1000.0


def test_a_unit_started_moments_ago_waits_only_the_rest(now: float) -> None:
    module = FakeModule("active", int((now - 0.4) * 1e6))
    assert PROBE.settle_wait(module, params(1)) == pytest.approx(0.6)
    (argv,) = module.calls
    assert argv[:2] == ["systemctl", "show"]
    assert argv[-1] == "nginx.service"


def test_a_unit_active_for_longer_than_the_settle_waits_nothing(now: float) -> None:
    module = FakeModule("active", int((now - 30) * 1e6))
    assert PROBE.settle_wait(module, params(1)) == 0


@pytest.mark.parametrize("state", ["activating", "failed", "inactive"])
def test_a_unit_that_is_not_active_waits_it_all(now: float, state: str) -> None:
    assert PROBE.settle_wait(FakeModule(state, int((now - 30) * 1e6)), params(1)) == 1


def test_an_unknown_activation_time_waits_it_all(now: float) -> None:
    assert PROBE.settle_wait(FakeModule("active", 0), params(1)) == 1
    # A timestamp from the future (another clock): trust nothing, wait it all.
    assert PROBE.settle_wait(FakeModule("active", int((now + 5) * 1e6)), params(1)) == 1


def test_a_container_waits_it_all_and_asks_systemd_nothing(now: float) -> None:
    module = FakeModule("active", int((now - 30) * 1e6))
    assert PROBE.settle_wait(module, params(1, container="web")) == 1
    assert module.calls == []


def test_no_settle_asks_nothing(now: float) -> None:
    module = FakeModule("active", int(now * 1e6))
    assert PROBE.settle_wait(module, params(0)) == 0
    assert module.calls == []
