"""sshca's refusals and arguments, and how the runner hands a certificate to Ansible.

No process is started here: every refusal happens before ssh-keygen would run. The
signing itself is proven in tests/integration/test_ssh_certificates.py.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError as PydanticValidationError

from veris_remediate.exceptions import UsageError
from veris_remediate.runner import RunRequest, ansible_env, connection_extravars, ssh_args
from veris_remediate.sshca import (
    Certificate,
    check_ca_key,
    issue_certificate,
    run_certificate,
    signing_argv,
)

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def _ca(tmp_path: Path, mode: int = 0o600) -> Path:
    key = tmp_path / "ca"
    key.write_text("not read before the checks pass\n")
    key.chmod(mode)
    return key


def _request(tmp_path: Path, **ssh: Path | None) -> RunRequest:
    return RunRequest(
        phase="check", private_data_dir=tmp_path / "pdd", playbook=tmp_path / "play.yml",
        inventories=(tmp_path / "inv.yml",), check=True, roles_path=tmp_path / "roles",
        control_dir=tmp_path / "cp", job_timeout=60, **ssh,
    )  # fmt: skip


# -- the CA key -------------------------------------------------------------------------------
def test_a_missing_ca_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        check_ca_key(tmp_path / "nope")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_ca_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(UsageError, match=f"group or others \\(mode {mode:04o}\\)"):
        check_ca_key(_ca(tmp_path, mode))


def test_a_ca_key_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(UsageError, match="not a regular file"):
        check_ca_key(tmp_path / "dir")


def test_a_private_ca_key_passes(tmp_path: Path) -> None:
    assert check_ca_key(_ca(tmp_path)) == tmp_path / "ca"


def test_an_unprotected_ca_key_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="chmod 600"):
        issue_certificate(_ca(tmp_path, 0o644), tmp_path / "certs", minutes=5, identity="r")
    assert not (tmp_path / "certs").exists()


# -- what a certificate may say -----------------------------------------------------------------
@pytest.mark.parametrize("minutes", [0, -1, 16, 60])
def test_validity_is_at_most_fifteen_minutes(tmp_path: Path, minutes: int) -> None:
    with pytest.raises(UsageError, match=r"1\.\.15 minutes"):
        issue_certificate(_ca(tmp_path), tmp_path / "c", minutes=minutes, identity="run-1")


@pytest.mark.parametrize("identity", ["", "run 1", "$(touch x)", "a\nb", "-V", "x" * 129])
def test_an_odd_identity_is_refused(tmp_path: Path, identity: str) -> None:
    with pytest.raises(UsageError, match="certificate identity"):
        issue_certificate(_ca(tmp_path), tmp_path / "c", minutes=5, identity=identity)


@pytest.mark.parametrize("principal", ["", "root,admin", "Root", "-n", "a b", "x" * 33])
def test_an_odd_principal_is_refused(tmp_path: Path, principal: str) -> None:
    with pytest.raises(UsageError, match="user name"):
        issue_certificate(
            _ca(tmp_path), tmp_path / "c", principal=principal, minutes=5, identity="run-1"
        )


def test_signing_argv_names_everything_explicitly(tmp_path: Path) -> None:
    argv = signing_argv(
        tmp_path / "ca", tmp_path / "id_ed25519.pub", identity="20250304T050607Z-abcdef",
        principals=("root",), serial=42, valid_after=T0 - timedelta(minutes=1),
        valid_before=T0 + timedelta(minutes=15),
    )  # fmt: skip
    assert argv[:2] == ["ssh-keygen", "-q"]
    assert argv[-1] == str(tmp_path / "id_ed25519.pub")
    pairs = dict(zip(argv[2:-1:2], argv[3:-1:2], strict=True))
    assert pairs["-s"] == str(tmp_path / "ca")
    assert pairs["-I"] == "20250304T050607Z-abcdef"
    assert pairs["-n"] == "root"
    assert pairs["-z"] == "42"
    # Absolute UTC times: the validity is known exactly, without reading the certificate.
    assert pairs["-V"] == "20250304050507Z:20250304052107Z"
    options = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-O"]
    assert set(options) == {
        "no-agent-forwarding", "no-port-forwarding", "no-x11-forwarding", "no-user-rc"
    }  # fmt: skip


def test_expired_compares_with_valid_before(tmp_path: Path) -> None:
    cert = Certificate(
        directory=tmp_path, identity_file=tmp_path / "k", certificate_file=tmp_path / "k-cert.pub",
        key_id="r", serial=1, principals=("root",), valid_after=T0 - timedelta(minutes=1),
        valid_before=T0 + timedelta(minutes=15),
    )  # fmt: skip
    assert not cert.expired(T0)
    assert not cert.expired(T0 + timedelta(minutes=14, seconds=59))
    assert cert.expired(T0 + timedelta(minutes=15))


def test_destroy_removes_the_key_material(tmp_path: Path) -> None:
    directory = tmp_path / "sshcert-x"
    directory.mkdir()
    (directory / "id_ed25519").write_text("secret")
    cert = Certificate(
        directory=directory, identity_file=directory / "id_ed25519",
        certificate_file=directory / "id_ed25519-cert.pub", key_id="r", serial=1,
        principals=("root",), valid_after=T0, valid_before=T0,
    )  # fmt: skip
    cert.destroy()
    assert not directory.exists()
    cert.destroy()


def test_no_ca_means_no_certificate(tmp_path: Path) -> None:
    with run_certificate(None, tmp_path / "certs", minutes=15, identity="run-1") as cert:
        assert cert is None
    assert not (tmp_path / "certs").exists()


# -- the runner -----------------------------------------------------------------------------------
def test_without_a_certificate_the_run_is_as_before(tmp_path: Path) -> None:
    request = _request(tmp_path)
    assert ssh_args(request) == "-o ControlMaster=auto -o ControlPersist=120s"
    assert ansible_env(request)["ANSIBLE_SSH_ARGS"] == ssh_args(request)
    assert connection_extravars(request) == {}


def test_a_certificate_is_the_runs_only_ssh_credential(tmp_path: Path) -> None:
    key, cert = tmp_path / "c d" / "id_ed25519", tmp_path / "c d" / "id_ed25519-cert.pub"
    request = _request(tmp_path, ssh_identity=key, ssh_certificate=cert)
    # Ansible splits ssh_args with shlex; ssh keeps the first value of each option.
    args = shlex.split(ansible_env(request)["ANSIBLE_SSH_ARGS"])
    options = dict(arg.split("=", 1) for arg in args[1::2])
    assert args[::2] == ["-o"] * len(options)
    assert options == {
        "ControlMaster": "auto", "ControlPersist": "120s", "IdentitiesOnly": "yes",
        "IdentityFile": str(key), "CertificateFile": str(cert),
    }  # fmt: skip
    # Extra vars outrank the inventory's ansible_ssh_private_key_file (both spellings).
    assert connection_extravars(request) == {
        "ansible_private_key_file": str(key),
        "ansible_ssh_private_key_file": str(key),
    }


def test_identity_and_certificate_come_together(tmp_path: Path) -> None:
    with pytest.raises(PydanticValidationError, match="together"):
        _request(tmp_path, ssh_identity=tmp_path / "k")
    with pytest.raises(PydanticValidationError, match="together"):
        _request(tmp_path, ssh_certificate=tmp_path / "k-cert.pub")


@pytest.mark.parametrize(
    "name", ["{{ lookup('pipe', 'id') }}", "{% raw %}", "k%h", 'k"q', "k'q", "k\\q"]
)
def test_credential_paths_ansible_or_ssh_would_interpret_are_refused(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(PydanticValidationError, match="unusable SSH credential path"):
        _request(tmp_path, ssh_identity=tmp_path / name, ssh_certificate=tmp_path / "c")


def test_relative_credential_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PydanticValidationError, match="unusable SSH credential path"):
        _request(tmp_path, ssh_identity=Path("k"), ssh_certificate=Path("k-cert.pub"))


@pytest.mark.parametrize("name", ["{{ x }}", "50%", "it's"])
def test_a_certificate_directory_ansible_or_ssh_would_interpret_is_refused(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(UsageError, match="SSH certificate directory"):
        issue_certificate(_ca(tmp_path), tmp_path / name, minutes=5, identity="run-1")
    assert not (tmp_path / name).exists()
