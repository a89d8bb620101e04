"""Plan → file texts: the ``!unsafe`` extra-vars file and the one-host target inventory.

Playbooks and roles are static, reviewed files and are never rendered. Alert-derived
values reach Ansible only through the extra-vars text made here, where every string is
tagged ``!unsafe`` so Ansible treats ``{{ ... }}`` in it as text, never as a template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

TARGET_GROUP = "veris_targets"
_KEY = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


class _UnsafeText(str):
    """A string that must be emitted with Ansible's ``!unsafe`` tag."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_unsafe(dumper: yaml.SafeDumper, data: _UnsafeText) -> yaml.ScalarNode:
    # Double-quoted style: newlines and any character survive as escapes, never as YAML.
    return dumper.represent_scalar("!unsafe", str(data), style='"')


_Dumper.add_representer(_UnsafeText, _represent_unsafe)


def _tag(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return _UnsafeText(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            # Keys are ours, never alert data; refuse anything else rather than tag it.
            if not isinstance(key, str) or not _KEY.match(key):
                raise ValueError(f"extra-vars key {path}{key!r} is not a plain identifier")
            out[key] = _tag(item, f"{path}{key}.")
        return out
    if isinstance(value, list | tuple):
        return [_tag(item, path) for item in value]
    raise TypeError(f"extra-vars value at {path!r} has unsupported type {type(value).__name__}")


def render_extravars(extravars: Mapping[str, Any]) -> str:
    """YAML text for ``env/extravars`` with every string tagged ``!unsafe``."""
    header = "# Written by veris-remediate. Every string is !unsafe: data, never a template.\n"
    body = yaml.dump(
        _tag(dict(extravars), ""),
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=True,
        allow_unicode=False,
        width=10_000,
    )
    return header + body


def render_target_inventory(*hosts: str) -> str:
    """An inventory that only adds the resolved host(s) to the group every play targets.

    It is passed beside the operator's inventory, so a host keeps its own vars and
    connection settings while no play can reach any other host. A remediation targets
    one host; only ``baseline`` reads several at once.
    """
    members = dict.fromkeys(hosts)
    return yaml.safe_dump({"all": {"children": {TARGET_GROUP: {"hosts": members}}}})
