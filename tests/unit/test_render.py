from __future__ import annotations

import pytest
import yaml

from veris_remediate.render import TARGET_GROUP, render_extravars, render_target_inventory


class _TagLoader(yaml.SafeLoader):
    """Loads ``!unsafe`` scalars as a marker type so tests can see the tag survived."""


class Unsafe(str):
    pass


_TagLoader.add_constructor("!unsafe", lambda loader, node: Unsafe(loader.construct_scalar(node)))


def _load(text: str) -> object:
    return yaml.load(text, Loader=_TagLoader)


def _strings(value: object) -> list[object]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_every_string_is_tagged_unsafe_at_any_depth() -> None:
    data = {
        "veris_alert_summary": "{{ lookup('pipe', 'id') }}",
        "veris_service": {"name": "nginx", "config_files": ["/etc/nginx/nginx.conf"], "port": 80},
        "veris_prior_states": [{"unit": "nginx.service", "active_state": "inactive"}],
        "veris_health_retries": 10,
        "flag": True,
        "nothing": None,
    }
    loaded = _load(render_extravars(data))
    strings = _strings(loaded)
    assert len(strings) == 5
    assert all(isinstance(s, Unsafe) for s in strings)
    assert loaded == data  # values round-trip exactly, numbers stay numbers


@pytest.mark.parametrize(
    "text",
    ["a\nb: c", "x: {{ y }}", "'quoted' \"double\"", "\x00\x1b[31m", "---\n- list", "ümlaut ☃"],
)
def test_hostile_text_round_trips_as_one_scalar(text: str) -> None:
    loaded = _load(render_extravars({"veris_alert_summary": text}))
    assert loaded == {"veris_alert_summary": text}


def test_keys_must_be_plain_identifiers() -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        render_extravars({"veris_service": {"{{ x }}": "y"}})
    with pytest.raises(TypeError):
        render_extravars({"veris_x": object()})


def test_target_inventory_holds_only_the_target() -> None:
    inv = yaml.safe_load(render_target_inventory("lab1"))
    assert inv == {"all": {"children": {TARGET_GROUP: {"hosts": {"lab1": None}}}}}
