"""Read the operator's Ansible inventory and what each host lets veris touch.

The inventory file is trusted, but it decides what a fix may restart, delete or open, so
every veris key is validated strictly and a bad one stops the load:

- ``veris_services``: the services fixes may act on (restart, repair, clear caches of);
- ``veris_firewall``: the host's intended firewall policy; declaring it (even ``{}``) is
  the opt-in to firewall hardening, which closes every port not allowed here, by a
  ``public: true`` service, or by SSH;
- ``veris_cache``: optional host-wide relief that cache clearing may add (journald
  vacuum, ``apt-get clean``, dropping the page cache);
- ``veris_postgres``: how PostgreSQL connection relief may act (idle age, superusers,
  a restart as the last resort); declaring it is the opt-in.
"""

from __future__ import annotations

import ipaddress
import json
import os
import posixpath
import re
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from pydantic import ValidationError as PydanticValidationError

from .exceptions import InventoryError, describe_problems
from .inventory_cache import run_ansible_inventory
from .resources import find_tool

SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
# The unit reaches systemctl as an argument: it must not start with "-".
UNIT = re.compile(
    r"[A-Za-z0-9@._:\\][A-Za-z0-9@._:\\-]{0,199}\.(service|socket|target|timer|mount)"
)
CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
PATH_CHARS = re.compile(r"/[A-Za-z0-9._@%+=:,~/-]{1,4095}")
URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]{1,2048}")
# Split on spaces and run as argv: only characters no shell would ever interpret.
VALIDATE_CHARS = re.compile(r"[A-Za-z0-9 _./:=,@%+-]{1,512}")
# Cache clearing deletes inside cache_dirs; these would take a system down with them.
_SYSTEM_DIRS = """
    / /bin /boot /dev /etc /home /lib /lib32 /lib64 /media /mnt /opt /proc /root /run /sbin
    /snap /srv /sys /tmp /usr /usr/bin /usr/lib /usr/local /usr/sbin /usr/share /var
    /var/cache /var/lib /var/log /var/spool /var/tmp
"""
SYSTEM_DIRS = frozenset(_SYSTEM_DIRS.split())
VIRTUAL_ROOTS = ("/proc/", "/sys/", "/dev/", "/boot/")
# Groups every host is in implicitly; they say nothing about the host.
IMPLICIT_GROUPS = frozenset({"all", "ungrouped"})
TIMEOUT_SECONDS = 120
# An inventory directory is read file by file by Ansible (executables are run as dynamic
# inventory scripts): look before it does, and refuse what is plainly not an inventory.
MAX_DIRECTORY_FILES = 100
MAX_SOURCE_BYTES = 8 * 1024 * 1024
# Names Ansible skips in an inventory directory (ansible.inventory.manager.IGNORED).
_ANSIBLE_SKIPS = re.compile(
    r"^\.|^host_vars$|^group_vars$|^vars_plugins$"
    r"|(\.pyc|\.pyo|\.swp|\.bak|~|\.rpm|\.md|\.txt|\.rst|\.orig|\.cfg|\.retry)$"
)


def _absolute_path(value: str, field: str) -> str:
    if not PATH_CHARS.fullmatch(value):
        raise ValueError(
            f"{field} entry {value!r} must be an absolute path of [A-Za-z0-9._@%+=:,~/-]"
        )
    if ".." in value.split("/") or posixpath.normpath(value) != value:
        raise ValueError(
            f"{field} entry {value!r} must be normalised (no '..', '//', trailing '/')"
        )
    return value


with warnings.catch_warnings():
    # The inventory key is ``validate`` (as in Ansible's own ``validate:``). As a field it
    # shadows pydantic v1's deprecated BaseModel.validate, which nothing here calls;
    # pydantic warns about that once, at class creation, and only here.
    warnings.filterwarnings("ignore", 'Field name "validate"', UserWarning)

    class _ValidateField(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")

        validate: StrictStr | None = None  # type: ignore[assignment]


class ServiceSpec(_ValidateField):
    """One entry of ``veris_services``: a service this host allows fixes to act on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrictStr
    unit: StrictStr
    container: StrictStr | None = None
    port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    health_url: StrictStr | None = None
    public: StrictBool = False
    depends_on: tuple[StrictStr, ...] = ()
    config_files: tuple[StrictStr, ...] = ()
    # validate: str | None, inherited from _ValidateField
    cache_dirs: tuple[StrictStr, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SERVICE_NAME.fullmatch(value):
            raise ValueError("service name must match [a-z0-9][a-z0-9_.@-]{0,63}")
        return value

    @field_validator("depends_on")
    @classmethod
    def _depends_on(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not SERVICE_NAME.fullmatch(name):
                raise ValueError(f"depends_on entry {name!r} is not a service name")
        return value

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        if not UNIT.fullmatch(value):
            raise ValueError(
                f"unit {value!r} must be a systemd unit name ending in "
                ".service/.socket/.target/.timer/.mount"
            )
        return value

    @field_validator("container")
    @classmethod
    def _container(cls, value: str | None) -> str | None:
        if value is not None and not CONTAINER.fullmatch(value):
            raise ValueError(f"container {value!r} is not a Docker container name")
        return value

    @field_validator("health_url")
    @classmethod
    def _health_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value) if URL_CHARS.fullmatch(value) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            shown = repr(value[:80]) if "@" not in value else "(not shown: it has an '@')"
            raise ValueError(f"health_url {shown} must be a plain http:// or https:// URL")
        if "@" in parts.netloc:
            # Never echoed: what precedes "@" is a password. The probe could not use it
            # either, and it would be copied into every run's extra vars and reports.
            raise ValueError(
                "health_url must not carry credentials (user:password@host); "
                "point it at an endpoint that needs none"
            )
        return value

    @field_validator("config_files")
    @classmethod
    def _config_files(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_absolute_path(path, "config_files") for path in value)

    @field_validator("cache_dirs")
    @classmethod
    def _cache_dirs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            _absolute_path(path, "cache_dirs")
            if path in SYSTEM_DIRS or path.startswith(VIRTUAL_ROOTS):
                raise ValueError(f"cache_dirs entry {path!r} is a system directory")
        return value

    @field_validator("validate")
    @classmethod
    def _validate_command(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not VALIDATE_CHARS.fullmatch(value) or value.startswith(("-", " ")):
            raise ValueError(
                f"validate {value[:80]!r} may only use [A-Za-z0-9 _./:=,@%+-]: it is run "
                "as argv, never through a shell"
            )
        if "%s" not in value or "%" in value.replace("%s", ""):
            raise ValueError("validate must contain %s (the file to check) and no other %")
        return value


PORT_RANGE = re.compile(r"([1-9][0-9]{0,4}):([1-9][0-9]{0,4})")
# journalctl --vacuum-size takes bytes with an optional K, M, G or T.
VACUUM_SIZE = re.compile(r"[1-9][0-9]{0,11}[KMGT]?")


class FirewallAllow(BaseModel):
    """One entry of ``veris_firewall.allow``: incoming traffic hardening keeps allowed."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    port: Annotated[StrictInt, Field(ge=1, le=65535)] | StrictStr
    proto: Literal["tcp", "udp", "any"] = "tcp"
    # ``from`` in the inventory (a Python keyword, hence the alias): a CIDR, an address or any.
    source: StrictStr = Field(default="any", alias="from")
    comment: StrictStr | None = None

    @field_validator("port")
    @classmethod
    def _port(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            return value
        match = PORT_RANGE.fullmatch(value)
        if match is None or not 1 <= int(match[1]) < int(match[2]) <= 65535:
            raise ValueError(f"port {value[:40]!r} must be a port or a range LOW:HIGH")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value == "any":
            return value
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise ValueError(f"from {value[:60]!r} must be any, an address or a CIDR") from exc

    @field_validator("comment")
    @classmethod
    def _comment(cls, value: str | None) -> str | None:
        # ufw stores it in its rules file; keep it to plain words.
        if value is not None and not re.fullmatch(r"[A-Za-z0-9 _.,:/@+=-]{1,64}", value):
            raise ValueError("comment may only use [A-Za-z0-9 _.,:/@+=-], at most 64 characters")
        return value


class FirewallPolicy(BaseModel):
    """``veris_firewall``: the host's intended incoming firewall policy (and the opt-in)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: tuple[FirewallAllow, ...] = ()
    # Delete ufw allow rules this policy does not declare (they are restored on rollback).
    prune: StrictBool = True


class CachePolicy(BaseModel):
    """``veris_cache``: host-wide relief cache clearing may add to emptying cache_dirs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    journal_vacuum_size: StrictStr | None = None
    apt_clean: StrictBool = False
    drop_page_cache: StrictBool = False

    @field_validator("journal_vacuum_size")
    @classmethod
    def _vacuum(cls, value: str | None) -> str | None:
        if value is not None and not VACUUM_SIZE.fullmatch(value):
            raise ValueError(f"journal_vacuum_size {value[:20]!r} must be like 200M or 1G")
        return value


class PostgresPolicy(BaseModel):
    """``veris_postgres``: how PostgreSQL connection relief may act (and its opt-in)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The veris_services entry that is this PostgreSQL server.
    service: StrictStr = "postgresql"
    # Idle sessions whose state has not changed for this many seconds may be terminated;
    # younger idle sessions and active ones never are.
    idle_age: Annotated[StrictInt, Field(ge=10)] = 600
    # Connections at or above this share of max_connections is the problem relief solves.
    near_limit_percent: Annotated[StrictInt, Field(ge=1, le=100)] = 90
    # Superusers' sessions are never terminated unless this says so.
    terminate_superuser: StrictBool = False
    # A restart of PostgreSQL as the last, separately gated step (never by default).
    restart_last_resort: StrictBool = False


class InventoryHost(BaseModel):
    """A host of the inventory and what it declares (possibly nothing)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    address: str | None  # ansible_host, when set
    groups: tuple[str, ...]
    services: dict[str, ServiceSpec]
    firewall: FirewallPolicy | None = None  # None: the host does not opt in to hardening
    cache: CachePolicy = Field(default_factory=CachePolicy)
    postgres: PostgresPolicy | None = None  # None: no PostgreSQL connection relief


class Inventory(BaseModel):
    """Every host of the operator's inventory sources."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: tuple[Path, ...]
    hosts: dict[str, InventoryHost]


# The host variables parse_inventory_listing reads; nothing else of a listing is kept on disk.
READ_HOSTVARS = (
    "ansible_host",
    "veris_services",
    "veris_firewall",
    "veris_cache",
    "veris_postgres",
)


def _read_part(stdout: str) -> str:
    """The part of an ``ansible-inventory --list`` listing this module reads: the groups and,
    of each host's variables, only READ_HOSTVARS (others, passwords among them, never reach
    the state dir's inventory cache). Raises ValueError on anything but a listing."""
    listing = json.loads(stdout)
    meta = listing.get("_meta") if isinstance(listing, dict) else None
    hostvars = meta.get("hostvars") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(hostvars, dict):
        raise ValueError("not an ansible-inventory listing")
    meta["hostvars"] = {
        host: (
            {k: v for k, v in variables.items() if k in READ_HOSTVARS}
            if isinstance(variables, dict)
            else variables
        )
        for host, variables in hostvars.items()
    }
    return json.dumps(listing)


def parse_inventory_listing(listing: Mapping[str, Any], sources: Sequence[Path]) -> Inventory:
    """Build an Inventory from the JSON of ``ansible-inventory --list`` (no I/O)."""
    meta = listing.get("_meta")
    hostvars = meta.get("hostvars") if isinstance(meta, Mapping) else None
    if not isinstance(hostvars, Mapping):
        raise InventoryError("inventory listing has no _meta.hostvars mapping")
    groups = _host_groups(listing)
    hosts: dict[str, InventoryHost] = {}
    for name in sorted(set(hostvars) | set(groups)):
        variables = hostvars.get(name) or {}
        if not isinstance(variables, Mapping):
            raise InventoryError(f"host {name}: host variables are not a mapping")
        address = variables.get("ansible_host")
        if address is not None and not isinstance(address, str):
            raise InventoryError(f"host {name}: ansible_host must be a string")
        hosts[name] = InventoryHost(
            name=name,
            address=address,
            groups=tuple(sorted(groups.get(name, set()) - IMPLICIT_GROUPS)),
            services=_services(name, variables.get("veris_services")),
            firewall=_policy(name, "veris_firewall", FirewallPolicy, variables),
            cache=_policy(name, "veris_cache", CachePolicy, variables) or CachePolicy(),
            postgres=_policy(name, "veris_postgres", PostgresPolicy, variables),
        )
    return Inventory(sources=tuple(sources), hosts=hosts)


def _host_groups(listing: Mapping[str, Any]) -> dict[str, set[str]]:
    """Every group each host belongs to, directly or through a parent group."""
    parents: dict[str, set[str]] = {}
    direct: dict[str, set[str]] = {}
    for group, body in listing.items():
        if group == "_meta" or not isinstance(body, Mapping):
            continue
        for child in body.get("children", []):
            parents.setdefault(child, set()).add(group)
        for host in body.get("hosts", []):
            direct.setdefault(host, set()).add(group)
    result: dict[str, set[str]] = {}
    for host, groups in direct.items():
        seen: set[str] = set()
        pending = list(groups)
        while pending:
            group = pending.pop()
            if group not in seen:
                seen.add(group)
                pending.extend(parents.get(group, ()))
        result[host] = seen
    return result


P = TypeVar("P", FirewallPolicy, CachePolicy, PostgresPolicy)


def _policy(host: str, key: str, model: type[P], variables: Mapping[str, Any]) -> P | None:
    """A host-level veris key, validated; None when the host does not declare it."""
    if key not in variables:
        return None
    raw = variables[key]
    if raw is None:
        raw = {}  # `veris_firewall:` with nothing under it still opts in
    if not isinstance(raw, Mapping):
        raise InventoryError(f"host {host}: {key} must be a mapping")
    try:
        return model.model_validate(raw)
    except PydanticValidationError as exc:
        raise InventoryError(f"host {host}, {key}: {describe_problems(exc, key)}") from exc


def _services(host: str, raw: object) -> dict[str, ServiceSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InventoryError(f"host {host}: veris_services must be a mapping of service names")
    services: dict[str, ServiceSpec] = {}
    for name, body in raw.items():
        where = f"host {host}, veris_services entry {str(name)[:80]!r}"
        settings = {} if body is None else body
        if not isinstance(name, str) or not isinstance(settings, Mapping):
            raise InventoryError(f"{where}: must be a name mapped to a mapping of settings")
        if "name" in settings:
            raise InventoryError(f"{where}: 'name' is not a setting; the key is the name")
        values = {"unit": f"{name}.service", **settings, "name": name}
        try:
            services[name] = ServiceSpec.model_validate(values)
        except PydanticValidationError as exc:
            raise InventoryError(f"{where}: {describe_problems(exc, 'entry')}") from exc
    probe = InventoryHost(name=host, address=None, groups=(), services=services)
    for name in services:  # a restart order that cannot be computed is an inventory bug
        try:
            dependency_order(probe, name)
        except InventoryError as exc:
            detail = exc.message.removeprefix(f"host {host}: ")
            raise InventoryError(f"host {host}, veris_services entry {name!r}: {detail}") from exc
    return services


def load_inventory(sources: Sequence[Path], *, cache_dir: Path | None = None) -> Inventory:
    """Run ``ansible-inventory --list`` over the sources and parse its JSON.

    With ``cache_dir``, the listing is kept there and reused while none of its inputs
    changed (inventory_cache.py); it is parsed and checked the same either way.

    Every error is one line naming the file (and line, when Ansible says) and the problem.
    """
    if not sources:
        raise InventoryError("no inventory source given")
    for source in sources:
        if not source.exists():
            raise InventoryError(f"inventory source {source} does not exist")
        _check_source(source)
    argv = [_ansible_inventory()]
    for source in sources:
        argv += ["-i", str(source)]
    argv.append("--list")
    # Without these, a source no plugin can parse is only a warning and an empty inventory.
    env = {
        **os.environ,
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
        "ANSIBLE_NOCOLOR": "true",
    }
    try:
        done = run_ansible_inventory(
            argv, sources, env=env, timeout=TIMEOUT_SECONDS, cache_dir=cache_dir, kept=_read_part
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InventoryError(f"could not run ansible-inventory: {exc}") from exc
    if done.returncode != 0:
        raise InventoryError(ansible_inventory_problem(done.stderr, done.returncode))
    try:
        listing = json.loads(done.stdout)
    except ValueError as exc:
        raise InventoryError(f"ansible-inventory printed no JSON: {exc}") from exc
    if not isinstance(listing, Mapping):
        raise InventoryError("ansible-inventory printed JSON that is not an object")
    inventory = parse_inventory_listing(listing, sources)
    if not inventory.hosts:
        raise InventoryError(_no_hosts(sources))
    return inventory


def _check_source(source: Path) -> None:
    """Refuse, before Ansible reads it, a source that cannot be an inventory."""
    if source.is_dir():
        files = _directory_files(source)
        if not files:
            raise InventoryError(
                f"inventory directory {source} holds no inventory file; "
                "point -i at an inventory file"
            )
        for path in files:
            _check_file(path, f"inventory directory {source}: ")
    else:
        _check_file(source, "")


def _directory_files(directory: Path) -> list[Path]:
    """The files Ansible would read from an inventory directory (at most the cap, plus one)."""
    found: list[Path] = []
    pending = [directory]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            raise InventoryError(
                f"cannot read inventory directory {current}: {exc.strerror}"
            ) from exc
        for entry in entries:
            if _ANSIBLE_SKIPS.search(entry.name):
                continue
            if entry.is_dir():
                pending.append(Path(entry.path))
            elif entry.is_file():
                found.append(Path(entry.path))
            if len(found) > MAX_DIRECTORY_FILES:
                raise InventoryError(
                    f"inventory directory {directory} holds more than {MAX_DIRECTORY_FILES} "
                    "files, and Ansible would read (or run) every one; point -i at the "
                    "inventory file(s)"
                )
    return found


def _check_file(path: Path, where: str) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        raise InventoryError(f"{where}cannot read inventory {path}: {exc.strerror}") from exc
    if b"\0" in head:
        raise InventoryError(
            f"{where}{path} is not an inventory (a binary file); point -i at the inventory file"
        )
    if size > MAX_SOURCE_BYTES:
        raise InventoryError(
            f"{where}{path} is not an inventory ({size // 1048576} MiB); "
            "point -i at the inventory file"
        )


def _no_hosts(sources: Sequence[Path]) -> str:
    """Why an inventory has no hosts: an empty file, an empty directory, or no host named."""
    if len(sources) == 1:
        source = sources[0]
        kind = "inventory directory" if source.is_dir() else "inventory"
        if source.is_file() and not _has_content(source):
            return f"inventory {source} is empty; it must name the hosts veris may act on"
        return f"{kind} {source} names no hosts; it must name the hosts veris may act on"
    shown = ", ".join(str(s) for s in sources)
    return f"the inventories {shown} name no hosts; they must name the hosts veris may act on"


def _has_content(path: Path) -> bool:
    """Anything but blank lines and comments (YAML and INI both comment with # or ;)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return True
    return any(
        line.strip() and not line.lstrip().startswith(("#", ";")) for line in text.splitlines()
    )


# ansible-inventory says what is wrong once per parser it tried, with a banner each time:
#   [WARNING]: Failed to parse inventory with 'auto' plugin: MESSAGE
#   ...
#   Origin: /path/inv.yml:4:6
_PLUGIN_FAILED = re.compile(r"^\[WARNING\]: Failed to parse inventory with '(\w+)' plugin: (.*)$")
_ORIGIN = re.compile(r"^Origin: (/[^:<>]*?)(?::(\d+)(?::(\d+))?)?\s*$")
_ORIGIN_SOURCE = re.compile(r"^Origin: <inventory plugin '\w+' with source '(/[^']*)'>\s*$")
_INI_LINE = re.compile(r"^(?:Failed to parse inventory: )?(/\S+?):(\d+): (.*)$")
_ANSIBLE_ERROR = re.compile(r"^\[ERROR\]: (.*)$")


_PYTHON_TYPE = re.compile(r"\"?<class '(?:[\w.]*\.)?_?(?:Ansible)?(?:Tagged)?(\w+)'>\"?")
_TYPE_WORDS = {"list": "a list", "dict": "a mapping", "str": "a string", "nonetype": "nothing"}


def _locate_ini_problem(path: Path, message: str) -> tuple[str | None, str]:
    """Ansible's INI parser names no line: find it (an unclosed section header, or the
    word it complains about), or leave the line unknown."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None, message
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("[") and not text.endswith("]"):
            return str(n), f"section header {text[:60]!r} has no closing ']'"
    got = re.search(r"got: (\S+)$", message)
    if got:
        hits = [n for n, line in enumerate(lines, 1) if got[1] in line.split()[1:]]
        if len(hits) == 1:
            return str(hits[0]), message
    return None, message


def ansible_inventory_problem(stderr: str, returncode: int) -> str:
    """ansible-inventory's failure as one line: file, line (when known), what is wrong.

    Of the parsers Ansible tried, the one for the file's kind speaks (YAML for .yml/.yaml/
    .json, INI otherwise); its message and origin are taken from the warnings.
    """
    attempts: list[tuple[str, str, str | None, str | None, str | None]] = []
    errors: list[str] = []
    lines = stderr.splitlines()
    for n, line in enumerate(lines):
        if m := _ANSIBLE_ERROR.match(line.strip()):
            errors.append(m[1].strip())
        m = _PLUGIN_FAILED.match(line.strip())
        if m is None:
            continue
        plugin, message = m[1], m[2].strip()
        path = line_no = column = None
        for later in lines[n + 1 : n + 40]:
            if _PLUGIN_FAILED.match(later.strip()) or _ANSIBLE_ERROR.match(later.strip()):
                break
            if o := _ORIGIN.match(later.strip()):
                path, line_no, column = o[1], o[2], o[3]
                break
            if o := _ORIGIN_SOURCE.match(later.strip()):
                path = o[1]
                break
        if i := _INI_LINE.match(message):
            path, line_no, message = path or i[1], line_no or i[2], i[3]
        message = message.removeprefix("Failed to parse inventory: ")
        attempts.append((plugin, message, path, line_no, column))
    if attempts:
        source = next((a[2] for a in attempts if a[2]), "")
        yamlish = source.endswith((".yml", ".yaml", ".json"))
        order = ("yaml", "auto", "ini") if yamlish else ("ini", "yaml", "auto")
        # A message with a line number (a YAML syntax error) says the most.
        best = min(
            attempts, key=lambda a: (a[3] is None, order.index(a[0]) if a[0] in order else 9)
        )
        plugin, message, path, line_no, column = best
        if plugin == "ini" and path and not line_no:
            line_no, message = _locate_ini_problem(Path(path), message)
        message = _PYTHON_TYPE.sub(lambda t: _TYPE_WORDS.get(t[1].lower(), t[1]), message)
        where = path or source or "inventory"
        if line_no:
            where += f", line {line_no}" + (f", column {column}" if column else "")
        return f"inventory {where}: {message.rstrip('.')}"
    detail = (
        errors[-1]
        if errors
        else next((ln.strip() for ln in reversed(lines) if ln.strip()), "no message")
    )
    return f"ansible-inventory failed (exit {returncode}): {detail[:500]}"


def _ansible_inventory() -> str:
    # The ansible installed with this package first, so a virtualenv needs no PATH setup.
    found = find_tool("ansible-inventory")
    if found is None:
        raise InventoryError(
            "ansible-inventory not found next to the Python interpreter or on PATH"
        )
    return found


def dependency_order(host: InventoryHost, service: str) -> list[ServiceSpec]:
    """The service's dependencies, transitively and dependencies first, then the service."""
    order: list[ServiceSpec] = []
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join((*path[path.index(name) :], name))
            raise InventoryError(f"host {host.name}: depends_on cycle {cycle}")
        if name in done:
            return
        spec = host.services.get(name)
        if spec is None:
            needed_by = f" (needed by {path[-1]})" if path else ""
            raise InventoryError(
                f"host {host.name}: service {name}{needed_by} is not declared in veris_services"
            )
        for dependency in spec.depends_on:
            visit(dependency, (*path, name))
        done.add(name)
        order.append(spec)

    visit(service, ())
    return order
