"""Short-lived SSH certificates against a real lab host whose sshd trusts the lab's CA.

The certificate's key pair is fresh and in no authorized_keys, and the runner makes it
the run's only key even though the lab inventory names the lab's own key: a valid
certificate is what gets a real ansible-runner run in, an expired one gets nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.conftest import LabHandle
from veris_remediate.exceptions import LabError
from veris_remediate.lab import Lab, require_root_and_tools
from veris_remediate.planner import PlaybookStep
from veris_remediate.runner import (
    AnsibleRunnerExecutor,
    RunRequest,
    RunResult,
    close_control_masters,
)
from veris_remediate.sshca import Certificate, issue_certificate
from veris_remediate.workspace import Workspace

pytestmark = pytest.mark.integration

PLAYBOOK = """
- name: Log in and say who we are
  hosts: veris_targets
  gather_facts: false
  tasks:
    - name: Ask the host which user the run is
      ansible.builtin.command:
        argv: [id, -un]
      changed_when: false
"""


@pytest.fixture(scope="module")
def ca_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHandle]:
    """Host ca1 on 198.18.120.0/30 (VERIS_TEST_CA_LAB_PREFIX/_SUBNET override it)."""
    try:
        require_root_and_tools()
    except LabError as exc:
        pytest.fail(f"integration tests need lab hosts: {exc.message}")
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    prefix = os.environ.get("VERIS_TEST_CA_LAB_PREFIX", "ca")
    subnet = int(os.environ.get("VERIS_TEST_CA_LAB_SUBNET", "120"))
    the_lab = Lab(tmp_path_factory.mktemp("ca-lab-state"), cache, prefix=prefix,
                  first_subnet=subnet)  # fmt: skip
    try:
        yield LabHandle(the_lab, the_lab.up(1))
    finally:
        the_lab.down()


@pytest.fixture
def control_dir() -> Iterator[Path]:
    # Short, like the workspace's: a socket path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="vcp-", dir="/tmp"))
    try:
        yield path
    finally:
        close_control_masters(path)


def _request(tmp_path: Path, lab: LabHandle, cert: Certificate, control_dir: Path) -> RunRequest:
    """A run on ca1 through the lab's own inventory, which names the lab's key."""
    playbook = tmp_path / "whoami.yml"
    playbook.write_text(PLAYBOOK)
    ws = Workspace(tmp_path / "state")
    step = PlaybookStep(phase="check", playbook="whoami.yml", check=False, extravars={})
    prepared = ws.prepare_step(ws.new_run_id(), "0", step, lab.name(1), idle_timeout=60)
    return RunRequest(
        phase="check",
        private_data_dir=prepared.private_data_dir,
        playbook=playbook,
        inventories=(lab.inventory, prepared.target_inventory),
        check=False,
        roles_path=tmp_path,
        control_dir=control_dir,
        job_timeout=120,
        ssh_identity=cert.identity_file,
        ssh_certificate=cert.certificate_file,
    )


def _sshd_log(lab: LabHandle, needle: str, timeout: float = 10.0) -> list[str]:
    """Lines of the host's sshd journal that contain ``needle`` (read with the lab's key)."""
    deadline = time.monotonic() + timeout
    while True:
        out = lab.ssh(lab.name(1), "journalctl", "-u", "ssh.service", "--no-pager", "-o", "cat")
        lines = [line for line in out.stdout.splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.3)


def _plain_ssh(lab: LabHandle, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
         "-o", "IdentitiesOnly=yes", *options, f"root@{lab.address(1)}", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _masters(control_dir: Path) -> list[int]:
    """Pids of ssh masters listening in ``control_dir`` (a master retitles itself
    ``ssh: <control path> [mux]``)."""
    marker = str(control_dir).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ssh") and marker in cmdline:
                pids.append(int(entry.name))
    return pids


def _run(request: RunRequest) -> RunResult:
    return AnsibleRunnerExecutor().run(request)


def test_issue_certificate_makes_a_short_lived_certificate(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
    cert = issue_certificate(ca, tmp_path / "certs", minutes=15, identity="run-20240101-abc")
    assert stat.S_IMODE(cert.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(cert.identity_file.stat().st_mode) == 0o600
    assert cert.certificate_file == cert.identity_file.with_name("id_ed25519-cert.pub")
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert.certificate_file)],
        capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"},
    ).stdout  # fmt: skip
    assert "user certificate" in shown
    assert 'Key ID: "run-20240101-abc"' in shown
    assert f"Serial: {cert.serial}" in shown
    after, before = cert.valid_after, cert.valid_before
    assert f"Valid: from {after:%Y-%m-%dT%H:%M:%S} to {before:%Y-%m-%dT%H:%M:%S}" in shown
    assert before - after == timedelta(minutes=16)  # a minute of skew before issue
    assert datetime.now(UTC) - timedelta(minutes=2) < after < datetime.now(UTC)
    principals = shown.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["root"]
    # No forwarding of any kind and no ~/.ssh/rc: only a PTY is permitted.
    assert shown.split("Extensions:")[1].split() == ["permit-pty"]
    cert.destroy()
    assert not cert.directory.exists()
    cert.destroy()  # idempotent


def test_run_with_a_valid_certificate_logs_in_with_it(
    ca_lab: LabHandle, tmp_path: Path, control_dir: Path
) -> None:
    identity = f"veris-test-{os.getpid()}-{time.time_ns() % 10**9}"
    cert = issue_certificate(
        ca_lab.lab.ssh_ca_key(), tmp_path / "certs", minutes=5, identity=identity
    )
    try:
        result = _run(_request(tmp_path, ca_lab, cert, control_dir))
        assert result.status == "successful", result
        host = result.summary.host(ca_lab.name(1))
        assert not host.unreachable
        assert [t.status for t in host.tasks] == ["ok"]
        # sshd says which credential it accepted: this certificate, by key id and serial.
        accepted = _sshd_log(ca_lab, f"ID {identity} (serial {cert.serial})")
        assert accepted, "sshd did not log a login with the run's certificate"
        assert all("Accepted publickey for root" in line for line in accepted)
        assert all("ED25519-CERT" in line for line in accepted)

        # The run's master is still open (ControlPersist) ...
        sockets = list(control_dir.iterdir())
        assert sockets
        assert all(s.is_socket() for s in sockets)
        assert _masters(control_dir)
    finally:
        cert.destroy()
    # ... until close_control_masters, after which no socket and no master is left.
    close_control_masters(control_dir)
    assert not control_dir.exists()
    deadline = time.monotonic() + 5
    while _masters(control_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _masters(control_dir) == []
    assert not cert.directory.exists()


def test_run_with_an_expired_certificate_is_refused(
    ca_lab: LabHandle, tmp_path: Path, control_dir: Path
) -> None:
    identity = f"veris-expired-{os.getpid()}"
    cert = issue_certificate(
        ca_lab.lab.ssh_ca_key(), tmp_path / "certs", minutes=15, identity=identity,
        now=datetime(2020, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    try:
        assert cert.expired()
        result = _run(_request(tmp_path, ca_lab, cert, control_dir))
    finally:
        cert.destroy()
    # The inventory's own key (the lab's, in authorized_keys) was not tried behind it.
    assert result.status == "failed"
    assert result.summary.host(ca_lab.name(1)).unreachable
    assert _sshd_log(ca_lab, "Certificate invalid: expired")
    assert list(control_dir.iterdir()) == []  # no master was ever opened


def test_only_the_certificate_lets_the_fresh_key_in(ca_lab: LabHandle, tmp_path: Path) -> None:
    cert = issue_certificate(
        ca_lab.lab.ssh_ca_key(), tmp_path / "certs", minutes=5, identity="veris-bare-key"
    )
    try:
        # ssh picks up <key>-cert.pub next to a key: a copy elsewhere is the bare key.
        bare = tmp_path / "bare" / "key"
        bare.parent.mkdir()
        shutil.copy(cert.identity_file, bare)
        bare.chmod(0o600)
        refused = _plain_ssh(ca_lab, "-i", str(bare))
        assert refused.returncode == 255, refused
        assert "Permission denied" in refused.stderr
        with_cert = _plain_ssh(
            ca_lab, "-i", str(bare), "-o", f"CertificateFile={cert.certificate_file}"
        )
        assert with_cert.returncode == 0, with_cert.stderr
    finally:
        cert.destroy()


def test_a_certificate_for_another_user_is_refused(ca_lab: LabHandle, tmp_path: Path) -> None:
    cert = issue_certificate(
        ca_lab.lab.ssh_ca_key(), tmp_path / "certs", principal="nobody", minutes=5,
        identity="veris-wrong-principal",
    )  # fmt: skip
    try:
        refused = _plain_ssh(
            ca_lab, "-i", str(cert.identity_file), "-o", f"CertificateFile={cert.certificate_file}"
        )
    finally:
        cert.destroy()
    assert refused.returncode == 255, refused
    assert _sshd_log(ca_lab, "not a listed principal")


def test_the_lab_key_still_logs_in(ca_lab: LabHandle) -> None:
    assert ca_lab.ssh(ca_lab.name(1), "id", "-un").stdout.strip() == "root"
