"""Resolve an alert's host labels to exactly one inventory host, or refuse.

The host name ends up in the one-host group every play targets; anything Ansible
would read as a pattern (``all``, globs, ``!x``, ``&x``, ``~regex``, ranges, lists)
is refused before it gets near one, and so is every host that is not in the inventory.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict

from .alerts import Alert, shown
from .exceptions import TargetError
from .inventory import IMPLICIT_GROUPS, Inventory

TARGET_LABELS = ("instance", "host", "hostname", "nodename", "target")
# Host-name labels; "_" is allowed because inventory names are Ansible names, not DNS.
DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Names Ansible expands to more than one host, or that mean "this controller".
RESERVED = frozenset({"all", "ungrouped", "localhost"})


class Target(BaseModel):
    """The one inventory host an alert is about, and the label that named it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str  # inventory name
    label: str
    value: str
    port: int | None = None  # from host:port or the URL's scheme; routing uses it


def split_host(value: str) -> tuple[str, int | None]:
    """Host and port of ``host``, ``host:port``, ``[v6]:port``, a bare IPv6 or a URL.

    Raises TargetError for anything else, including every Ansible host pattern.
    """
    if not value:
        raise TargetError("empty host value")
    port: int | None = None
    rest = value
    if "://" in value:
        scheme, _, rest = value.partition("://")
        if not SCHEME.fullmatch(scheme):
            raise TargetError(f"{shown(value)} has an invalid URL scheme")
        rest = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in rest:
            raise TargetError(f"{shown(value)}: URLs with credentials are not accepted")
        port = DEFAULT_PORTS.get(scheme.lower())
    if rest.startswith("["):
        inside, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise TargetError(f"{shown(value)} is not a [IPv6]:port address")
        host = inside
        if tail:
            port = _port(value, tail[1:])
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise TargetError(f"{shown(value)}: only an IPv6 address may be in brackets") from exc
    elif rest.count(":") > 1:  # a bare IPv6 literal, or a pattern such as a:b:c
        host = rest
    elif ":" in rest:
        host, _, tail = rest.partition(":")
        port = _port(value, tail)
    else:
        host = rest
    return _check_host(value, host), port


def _port(value: str, text: str) -> int:
    # Anything but digits after a colon is Ansible's "a:b" group union, not a port.
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise TargetError(f"{shown(value)}: {shown(text)} is not a port (a:b is a host pattern)")
    return int(text)


def _check_host(value: str, host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
        raise TargetError(
            f"{shown(value)} is not a host name or IP address (host patterns are not accepted)"
        )
    return name


def _refuse_reserved(value: str, host: str) -> None:
    """Refuse names Ansible expands or that mean the controller (unless in the inventory)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        lowered = host.lower()
        if lowered in RESERVED or lowered.startswith("localhost."):
            raise TargetError(f"{shown(value)} is a reserved Ansible name or pattern") from None
        return
    if address.is_loopback or address.is_unspecified:
        raise TargetError(f"{shown(value)} names the controller itself, not an inventory host")


def resolve_target(alert: Alert, inventory: Inventory) -> Target:
    """The single inventory host the alert's targeting labels agree on."""
    present = [(label, alert.labels[label]) for label in TARGET_LABELS if label in alert.labels]
    if not present:
        raise TargetError(
            f"alert {alert.name} has none of the host labels {', '.join(TARGET_LABELS)}"
        )
    groups = {group for host in inventory.hosts.values() for group in host.groups}
    found: list[Target] = []
    unknown: list[tuple[str, str]] = []
    for label, value in present:
        target = _lookup(label, value, inventory, groups | IMPLICIT_GROUPS)
        if target is None:
            unknown.append((label, value))
        else:
            found.append(target)
    if unknown:
        label, value = unknown[0]
        also = (
            f" (while {found[0].label} names {found[0].host}: conflicting labels are refused)"
            if found
            else ""
        )
        raise TargetError(
            f"label {label}={shown(value)} does not name a host of the inventory{also}; "
            "alerts for hosts outside the inventory are never acted on"
        )
    for other in found[1:]:
        if other.host != found[0].host:
            raise TargetError(
                f"labels disagree on the host: {found[0].label} names {found[0].host}, "
                f"{other.label} names {other.host}"
            )
    return found[0]


def _lookup(label: str, value: str, inventory: Inventory, groups: set[str]) -> Target | None:
    """The one inventory host a label value names, None if none; TargetError if several."""
    if value in inventory.hosts:
        # Taken as written, even "localhost" when the operator has a host of that name.
        host, port = value, None
    else:
        host, port = split_host(value)
    if host in groups:
        raise TargetError(f"label {label}={shown(value)} names a group, not a host")
    matches = {host} if host in inventory.hosts else set()
    matches |= {h.name for h in inventory.hosts.values() if _same_address(h.address, host)}
    if len(matches) > 1:
        raise TargetError(
            f"label {label}={shown(value)} matches {len(matches)} inventory hosts "
            f"({', '.join(sorted(matches)[:5])}); it must match exactly one"
        )
    if host not in inventory.hosts:
        _refuse_reserved(value, host)
    if not matches:
        return None
    return Target(host=matches.pop(), label=label, value=value, port=port)


def _same_address(address: str | None, host: str) -> bool:
    if address is None:
        return False
    if address == host:
        return True
    try:  # 2001:db8::1 and 2001:0db8:0::1 are one address
        return ipaddress.ip_address(address) == ipaddress.ip_address(host)
    except ValueError:
        return False
