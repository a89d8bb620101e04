"""targeting.resolve_target: exactly one inventory host, never a pattern."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from veris_remediate.alerts import Alert, parse_payload
from veris_remediate.exceptions import TargetError
from veris_remediate.inventory import Inventory, InventoryHost, parse_inventory_listing
from veris_remediate.targeting import Target, resolve_target, split_host

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def lab() -> Inventory:
    listing: dict[str, Any] = json.loads((FIXTURES / "inventory" / "lab.listing.json").read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


def with_hosts(*hosts: tuple[str, str | None]) -> Inventory:
    extra = {
        name: InventoryHost(name=name, address=address, groups=(), services={})
        for name, address in hosts
    }
    base = lab()
    return Inventory(sources=base.sources, hosts={**base.hosts, **extra})


def alert(**labels: str) -> Alert:
    # Built directly, so targeting is tested on values the parser would also let through.
    return Alert(
        source="alertmanager",
        status="firing",
        name="HttpProbeFailed",
        fingerprint="0123456789abcdef",
        labels={"alertname": "HttpProbeFailed", **labels},
        annotations={},
        severity=None,
        starts_at=None,
    )


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("lab1", "lab1", None),
        ("lab1.", "lab1", None),
        ("db1", "db1", None),
        ("198.18.1.2", "lab1", None),
        ("198.18.2.2:9100", "lab2", 9100),
        ("lab2:6379", "lab2", 6379),
        ("http://lab1/", "lab1", 80),
        ("https://lab2", "lab2", 443),
        ("http://198.18.1.2:8080/x", "lab1", 8080),
        ("http://lab1:8080/health?x=1#y", "lab1", 8080),
        ("redis://lab2:6379", "lab2", 6379),
        ("tcp://lab2", "lab2", None),
    ],
)
def test_resolves_by_name_address_url_and_host_port(
    value: str, host: str, port: int | None
) -> None:
    target = resolve_target(alert(instance=value), lab())
    assert target == Target(host=host, label="instance", value=value, port=port)


@pytest.mark.parametrize(
    ("value", "port"),
    [
        ("[2001:db8::2]:9100", 9100),
        ("[2001:db8::2]", None),
        ("2001:db8::2", None),
        ("http://[2001:db8::2]:8080/", 8080),
        ("[2001:0db8:0::2]:80", 80),
    ],
)
def test_resolves_ipv6_addresses(value: str, port: int | None) -> None:
    inventory = with_hosts(("v6host", "2001:db8::2"))
    assert resolve_target(alert(instance=value), inventory) == Target(
        host="v6host", label="instance", value=value, port=port
    )


@pytest.mark.parametrize("label", ["instance", "host", "hostname", "nodename", "target"])
def test_every_targeting_label_is_consulted(label: str) -> None:
    target = resolve_target(alert(**{label: "lab2"}), lab())
    assert (target.host, target.label) == ("lab2", label)


def test_first_label_in_order_is_reported_and_agreement_is_fine() -> None:
    target = resolve_target(alert(target="198.18.1.2", host="lab1", instance="lab1:9100"), lab())
    assert (target.host, target.label, target.port) == ("lab1", "instance", 9100)


def test_sample_payloads_resolve() -> None:
    for name, expected in [
        ("alertmanager-nginx-down.json", ["lab1"]),
        ("alertmanager-group-mixed.json", ["lab1", "lab2"]),
        ("generic-disk-cache.json", ["lab2"]),
        ("grafana-high-memory.json", ["lab2"]),
        ("sentinel-s1-probes.json", ["lab1"]),
        ("sentinel-s11-firewall.json", ["lab1"]),
    ]:
        batch = parse_payload((FIXTURES / "payloads" / name).read_bytes())
        assert [resolve_target(a, lab()).host for a in batch.firing] == expected, name


def test_no_targeting_label_is_rejected() -> None:
    with pytest.raises(TargetError, match="none of the host labels") as caught:
        resolve_target(alert(job="node", service="nginx"), lab())
    assert caught.value.exit_code == 3


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("all", "group"),
        ("ALL", "reserved"),
        ("ungrouped", "group"),
        ("web", "group"),
        ("databases", "group"),
        ("*", "host pattern"),
        ("lab*", "host pattern"),
        ("lab?", "host pattern"),
        ("lab1:lab2", "host pattern"),
        ("lab1:&lab2", "host pattern"),
        ("web:!lab2", "host pattern"),
        ("!lab1", "host pattern"),
        ("&lab1", "host pattern"),
        ("~lab.*", "host pattern"),
        ("lab1,lab2", "host pattern"),
        ("lab1, lab2", "host pattern"),
        ("lab[1:3]", "host pattern"),
        ("lab[1]", "host pattern"),
        ("localhost", "reserved"),
        ("localhost:9100", "reserved"),
        ("localhost.localdomain", "reserved"),
        ("127.0.0.1", "controller"),
        ("127.0.0.2:9100", "controller"),
        ("[::1]:80", "controller"),
        ("::1", "controller"),
        ("0.0.0.0", "controller"),
        ("http://127.0.0.1/", "controller"),
        ("lab1:0", "not a port"),
        ("lab1:65536", "not a port"),
        ("lab1:", "not a port"),
        ("lab1:٣", "not a port"),
        (":80", "host pattern"),
        ("", "empty"),
        (" lab1", "host pattern"),
        ("lab1 ", "host pattern"),
        ("-lab1", "host pattern"),
        ("lab1..x", "host pattern"),
        ("a" * 64 + ".example", "host pattern"),
        ("http://user@lab1/", "credentials"),
        ("http:///x", "host pattern"),
        ("1http://lab1/", "scheme"),
        ("[lab1]:80", "IPv6"),
        ("[2001:db8::2]x", "IPv6"),
        ("[2001:db8::2", "IPv6"),
    ],
)
def test_patterns_and_non_hosts_are_rejected(value: str, why: str) -> None:
    with pytest.raises(TargetError, match=why) as caught:
        resolve_target(alert(instance=value), lab())
    assert caught.value.exit_code == 3


@pytest.mark.parametrize(
    "value", ["nope", "lab3:9100", "198.18.9.9", "http://example.org/", "LAB1"]
)
def test_unknown_host_is_rejected(value: str) -> None:
    with pytest.raises(TargetError, match="does not name a host of the inventory"):
        resolve_target(alert(instance=value), lab())


def test_localhost_is_accepted_when_it_is_literally_an_inventory_name() -> None:
    inventory = with_hosts(("localhost", None), ("127.0.0.1", None))
    assert resolve_target(alert(instance="localhost"), inventory).host == "localhost"
    assert resolve_target(alert(instance="127.0.0.1"), inventory).host == "127.0.0.1"


def test_loopback_address_of_an_inventory_host_is_still_rejected() -> None:
    inventory = with_hosts(("forwarded", "127.0.0.1"))
    with pytest.raises(TargetError, match="controller"):
        resolve_target(alert(instance="127.0.0.1:2222"), inventory)


def test_value_matching_two_hosts_is_rejected() -> None:
    inventory = with_hosts(("twin", "198.18.1.2"))
    with pytest.raises(TargetError, match="matches 2 inventory hosts"):
        resolve_target(alert(instance="198.18.1.2"), inventory)


def test_name_of_one_host_and_address_of_another_is_rejected() -> None:
    inventory = with_hosts(("alias", "lab1"))
    with pytest.raises(TargetError, match=r"matches 2 inventory hosts \(alias, lab1\)"):
        resolve_target(alert(instance="lab1"), inventory)


def test_labels_naming_different_hosts_are_rejected() -> None:
    with pytest.raises(
        TargetError, match="labels disagree on the host: instance names lab1, host names lab2"
    ):
        resolve_target(alert(instance="lab1:9100", host="lab2"), lab())


def test_one_known_and_one_unknown_host_is_rejected() -> None:
    with pytest.raises(TargetError, match=r"host='elsewhere'.*while instance names lab1"):
        resolve_target(alert(instance="lab1:9100", host="elsewhere"), lab())


def test_pattern_in_a_second_label_is_rejected() -> None:
    with pytest.raises(TargetError, match="group"):
        resolve_target(alert(instance="lab1:9100", nodename="all"), lab())


def test_error_message_is_short_for_long_values() -> None:
    with pytest.raises(TargetError) as caught:
        resolve_target(alert(instance="x" * 400), lab())
    assert "x" * 61 not in caught.value.message


def test_split_host() -> None:
    assert split_host("lab1") == ("lab1", None)
    assert split_host("http://lab1:81/") == ("lab1", 81)
    assert split_host("[2001:db8::1]:443") == ("2001:db8::1", 443)
    with pytest.raises(TargetError):
        split_host("a:b")
