from __future__ import annotations

import pytest
import yaml

from veris_remediate.render import TARGET_GROUP, render_extravars, render_target_inventory


class _TagLoader(yaml.SafeLoader):
    """Loads an ``!unsafe`` mapping as a marker type so tests can see the tag survived."""


class Unsafe(dict):  # type: ignore[type-arg]
    pass


_TagLoader.add_constructor(
    "!unsafe", lambda loader, node: Unsafe(loader.construct_mapping(node, deep=True))
)


def _load(text: str) -> object:
    return yaml.load(text, Loader=_TagLoader)


def _strings(value: object) -> list[object]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_whole_document_is_unsafe_and_every_string_quoted() -> None:
    data = {
        "veris_alert_summary": "{{ lookup('pipe', 'id') }}",
        "veris_service": {"name": "nginx", "config_files": ["/etc/nginx/nginx.conf"], "port": 80},
        "veris_prior_states": [{"unit": "nginx.service", "active_state": "inactive"}],
        "veris_health_retries": 10,
        "flag": True,
        "nothing": None,
    }
    text = render_extravars(data)
    loaded = _load(text)
    # The root carries the tag: Ansible marks everything constructed beneath it untrusted.
    assert isinstance(loaded, Unsafe)
    assert len(_strings(loaded)) == 5
    assert loaded == data  # values round-trip exactly, numbers stay numbers
    assert [line for line in text.splitlines() if "!unsafe" in line and line[0] != "#"] == [
        "!unsafe"
    ]


@pytest.mark.parametrize("text", ["yes", "no", "on", "0123", "0x1f", "null", "~", "1e3",
                                  "2026-12-01", "2026-12-01 10:00:00", "true", ".inf"])  # fmt: skip
def test_strings_that_look_like_other_types_stay_strings(text: str) -> None:
    # Ansible re-resolves a scalar tagged !unsafe as if unquoted ("yes" -> True): the tag
    # is on the root, and each string is quoted, so a resolver never re-types it.
    rendered = render_extravars({"label": text})
    assert f'label: "{text}"' in rendered
    assert _load(rendered) == {"label": text}


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
