"""Plan → file texts: the ``!unsafe`` extra-vars file and the one-host target inventory.

Playbooks and roles are static, reviewed files and are never rendered. Alert-derived
values reach Ansible only through the extra-vars text made here, whose whole document is
tagged ``!unsafe``: everything constructed beneath that tag is untrusted, so Ansible
treats ``{{ ... }}`` in any value as text, never as a template.

The tag sits on the root mapping, not on each string: ansible-core 2.19 resolves a scalar
tagged ``!unsafe`` as if it were unquoted, so ``!unsafe "yes"`` would arrive as ``True``,
``"0123"`` as 83, ``"null"`` as None and a timestamp as a datetime. Beneath a tagged
mapping, each string is an ordinary double-quoted scalar and stays a string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

TARGET_GROUP = "veris_targets"
_KEY = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


class _Text(str):
    """A string emitted double-quoted, so no YAML resolver reads it as another type."""


class _UnsafeRoot(dict[str, Any]):
    """The document's root mapping, emitted with Ansible's ``!unsafe`` tag."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_text(dumper: yaml.SafeDumper, data: _Text) -> yaml.ScalarNode:
    # Double-quoted style: newlines and any character survive as escapes, never as YAML.
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')


def _represent_root(dumper: yaml.SafeDumper, data: _UnsafeRoot) -> yaml.MappingNode:
    return dumper.represent_mapping("!unsafe", dict(data))


_Dumper.add_representer(_Text, _represent_text)
_Dumper.add_representer(_UnsafeRoot, _represent_root)


def _tag(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return _Text(value)
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
    """YAML text for ``env/extravars``: an ``!unsafe`` root, every string double-quoted."""
    header = (
        "# Written by veris-remediate. The whole document is !unsafe: every value is data,\n"
        "# never a template. Strings are quoted so they stay strings.\n"
    )
    body = yaml.dump(
        _UnsafeRoot(_tag(dict(extravars), "")),
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
