"""The HTML report in a real browser: Debian's headless Chromium renders it, and the test reads
what a person sees (the page's innerText, which leaves out what CSS hides), what the page
tried to fetch (nothing: it is one self-contained file), and whether it fits a narrow window.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands
on fd 3, answers on fd 4, each a JSON message ending in NUL), so no port and no client
library are needed. Chromium comes from apt (scripts/setup.sh installs it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES
from tests.unit.recorded import RecordedExecutor, inventory, payload
from veris_remediate.pipeline import Remediator
from veris_remediate.report import RunReport, to_html
from veris_remediate.role_reports import Finding
from veris_remediate.settings import Settings

pytestmark = pytest.mark.integration


def _high(*fds: int) -> tuple[int, ...]:
    """The fds moved to 10 and above: the child's `3<&R 4>&W` must not overwrite R or W."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved


class Browser:
    """Headless Chromium, one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path) -> None:
        chromium = shutil.which("chromium")
        if chromium is None:
            pytest.fail("Debian's chromium is not installed: run scripts/setup.sh "
                        "(apt-get install chromium)")  # fmt: skip
        to_browser_r, self._to_browser = _high(*os.pipe())
        self._from_browser, from_browser_w = _high(*os.pipe())
        argv = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        # Chromium expects the pipe on fds 3 and 4 exactly (both moved above 10 first, so
        # neither dup2 overwrites the other's source).
        self._pid = os.posix_spawn(
            chromium,
            argv,
            {**os.environ, "HOME": str(profile)},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, to_browser_r, 3),
                (os.POSIX_SPAWN_DUP2, from_browser_w, 4),
            ],
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def close(self) -> None:
        """Browser.close, and SIGKILL if it has not exited 10 s later."""
        with contextlib.suppress(OSError):
            os.write(self._to_browser, b'{"id": 0, "method": "Browser.close"}\0')
        deadline = time.monotonic() + 10
        while os.waitpid(self._pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
                break
            time.sleep(0.1)
        os.close(self._to_browser)
        os.close(self._from_browser)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                pytest.fail("Chromium did not answer over the DevTools pipe in time")
            chunk = os.read(self._from_browser, 65536)
            if not chunk:
                pytest.fail("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        data: dict[str, Any] = json.loads(message)
        return data

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = session
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            message = self._read(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    pytest.fail(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, self.session, **params)

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            for n, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(n)
            self.events.append(self._read(deadline))

    def open(self, path: Path, width: int = 1280) -> None:
        self.events.clear()
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=900,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        self.page("Network.enable")
        self.page("Page.enable")
        self.page("Page.navigate", url=path.as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def requested(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    the_browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield the_browser
    finally:
        the_browser.close()


def _report(tmp_path: Path, scenario: str, *, check_only: bool = False) -> RunReport:
    remediator = Remediator(
        inventory(scenario), Settings(state_dir=tmp_path / "state"),
        executor=RecordedExecutor(scenario),
    )  # fmt: skip
    return remediator.handle(payload(scenario), check_only=check_only)


def _page(tmp_path: Path, report: RunReport) -> Path:
    path = tmp_path / "report.html"
    path.write_text(to_html(report), encoding="utf-8")
    return path


def _visible(browser: Browser) -> list[str]:
    text: str = browser.evaluate("document.body.innerText")
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_a_rolled_back_run_reads_as_a_story(tmp_path: Path, browser: Browser) -> None:
    report = _report(tmp_path, "rolled_back")
    page = _page(tmp_path, report)
    browser.open(page)
    seen = _visible(browser)
    assert seen[0] == "HttpProbeFailed on lab1: rolled_back"
    assert seen[1] == (
        "rolled_back the fix did not make it healthy: rolled back to the prior state (exit 5)"
    )
    headings = browser.evaluate("[...document.querySelectorAll('h2')].map(h => h.innerText)")
    assert headings == [
        "Likely cause", "Health", "Preview (check run, --check --diff, on lab1)",
        "Decision: apply (confidence 1.00)", "Applied", "Rollback", "Findings", "Timeline",
    ]  # fmt: skip
    text = "\n".join(seen)
    assert "before\tnginx.service is inactive (dead), port 80 closed" in text
    assert "after the fix\tnginx.service is active (running), port 80 open" in text
    assert "rolled back: nginx.service=inactive" in text
    assert f"run\t{report.run_id}" in text
    phases = browser.evaluate(
        "[...document.querySelectorAll('table.timeline tr')].slice(1)"
        ".map(r => r.cells[1].innerText + ' ' + r.cells[3].innerText)"
    )
    assert phases == ["intake ok", "route ok", "plan ok", "check ok", "decide ok", "apply ok",
                      "verify failed", "rollback ok"]  # fmt: skip
    assert browser.requested() == [page.as_uri()]  # one file: nothing else fetched


def test_a_check_only_preview_shows_its_diff_and_applies_nothing(
    tmp_path: Path, browser: Browser
) -> None:
    browser.open(_page(tmp_path, _report(tmp_path, "fw_previewed", check_only=True)))
    seen = _visible(browser)
    assert seen[:2] == [
        "FirewallInactive on rfw1: previewed",
        "previewed previewed only: nothing was applied (exit 0)",
    ]
    text = "\n".join(seen)
    assert "decision\twould apply (confidence 0.85); --check-only: nothing applied" in text
    assert "nothing: previewed only: nothing was applied" in text
    assert "Rollback" not in seen
    diff = browser.evaluate(
        "[...document.querySelectorAll('pre.diff span')].map(s => s.className + ' ' + s.innerText)"
    )
    assert "add +ufw active" in diff
    assert "del -ufw inactive" in diff
    # Added and removed lines look different to a person: their backgrounds differ.
    colours = browser.evaluate(
        "['add', 'del'].map(c => getComputedStyle(document.querySelector('pre.diff .' + c))"
        ".backgroundColor)"
    )
    assert colours[0] != colours[1]


def test_it_fits_a_narrow_window(tmp_path: Path, browser: Browser) -> None:
    browser.open(_page(tmp_path, _report(tmp_path, "rolled_back")), width=420)
    overflow = browser.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0


def test_hostile_text_stays_text_and_fetches_nothing(tmp_path: Path, browser: Browser) -> None:
    base = _report(tmp_path, "resolved")
    hostile = (
        '<img src="http://198.18.0.1:9/pixel.png"><script>document.title="owned"</script>'
        '<link rel="stylesheet" href="http://198.18.0.1:9/x.css">'
    )
    first = base.remediations[0]
    poisoned = first.model_copy(
        update={"findings": (*first.findings, Finding(host="lab1", severity="critical",
                                                       message=hostile))}
    )  # fmt: skip
    report = base.model_copy(update={"remediations": (poisoned,)})
    page = _page(tmp_path, report)
    browser.open(page)
    assert hostile in browser.evaluate("document.body.innerText")
    assert browser.evaluate("document.querySelectorAll('body img, body script, link').length") == 0
    assert browser.evaluate("document.title").startswith("HttpProbeFailed on lab1: resolved")
    assert browser.requested() == [page.as_uri()]


def test_the_example_alerts_render(tmp_path: Path, browser: Browser) -> None:
    """A rejected payload (no host resolved) still renders a readable page."""
    remediator = Remediator(inventory("resolved"), Settings(state_dir=tmp_path / "state"),
                            executor=RecordedExecutor("resolved"))  # fmt: skip
    sentinel = json.loads((EXAMPLES / "sentinel-s11-firewall.json").read_text())
    sentinel["details"] = {}
    report = remediator.handle(sentinel)
    browser.open(_page(tmp_path, report))
    seen = _visible(browser)
    assert seen[0] == "S11-firewall-status: rejected"
    assert "hosts\tnone resolved" in "\n".join(seen)
