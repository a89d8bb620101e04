"""inventory: the recorded lab listing, strict veris_services checks, restart order."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from veris_remediate.exceptions import InventoryError
from veris_remediate.inventory import (
    InventoryHost,
    ServiceSpec,
    dependency_order,
    load_inventory,
    parse_inventory_listing,
)

INVENTORY = Path(__file__).resolve().parent.parent / "fixtures" / "inventory"
LAB = INVENTORY / "lab.yml"


def lab_listing() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((INVENTORY / "lab.listing.json").read_text())
    return data


def with_services(services: object, host: str = "lab1") -> dict[str, Any]:
    listing = lab_listing()
    listing["_meta"]["hostvars"][host]["veris_services"] = services
    return listing


def host_with(*specs: ServiceSpec) -> InventoryHost:
    return InventoryHost(name="h1", address=None, groups=(), services={s.name: s for s in specs})


def spec(name: str, *depends_on: str) -> ServiceSpec:
    return ServiceSpec(name=name, unit=f"{name}.service", depends_on=depends_on)


# --- the recorded listing -------------------------------------------------------------------


def test_lab_listing_hosts_addresses_and_groups() -> None:
    inventory = parse_inventory_listing(lab_listing(), [LAB])
    assert inventory.sources == (LAB,)
    assert sorted(inventory.hosts) == ["db1", "lab1", "lab2"]
    assert inventory.hosts["lab1"].address == "198.18.1.2"
    assert inventory.hosts["lab2"].address == "198.18.2.2"
    assert inventory.hosts["lab1"].groups == ("web",)
    assert inventory.hosts["db1"].groups == ("databases",)


def test_lab_listing_services() -> None:
    inventory = parse_inventory_listing(lab_listing(), [LAB])
    for name in ("lab1", "lab2"):
        services = inventory.hosts[name].services
        assert sorted(services) == ["nginx", "redis-server"]
        nginx = services["nginx"]
        assert nginx == ServiceSpec(
            name="nginx",
            unit="nginx.service",
            port=80,
            health_url="http://127.0.0.1/",
            public=True,
            config_files=("/etc/nginx/nginx.conf",),
            validate="nginx -t -c %s",
            cache_dirs=("/var/cache/nginx",),
        )
        assert nginx.validate == "nginx -t -c %s"
        redis = services["redis-server"]
        assert redis.unit == "redis-server.service"  # the default unit
        assert redis.port == 6379
        assert redis.public is False
        assert redis.health_url is None
        assert redis.depends_on == redis.config_files == redis.cache_dirs == ()


def test_host_without_services_is_kept_with_none() -> None:
    inventory = parse_inventory_listing(lab_listing(), [LAB])
    assert inventory.hosts["db1"].services == {}


def test_groups_are_inherited_through_children_and_implicit_ones_dropped() -> None:
    listing = {
        "_meta": {"hostvars": {"a": {}}},
        "all": {"children": ["ungrouped", "prod"]},
        "prod": {"children": ["web"]},
        "web": {"hosts": ["a"], "children": []},
        "ungrouped": {"hosts": ["b"]},
    }
    inventory = parse_inventory_listing(listing, [])
    assert inventory.hosts["a"].groups == ("prod", "web")
    # b has no hostvars entry but is listed in a group: still a host.
    assert inventory.hosts["b"].groups == ()
    assert inventory.hosts["b"].address is None


@pytest.mark.parametrize(
    "listing",
    [{}, {"_meta": {}}, {"_meta": {"hostvars": []}}, {"_meta": []}],
)
def test_listing_without_hostvars_is_an_inventory_error(listing: dict[str, Any]) -> None:
    with pytest.raises(InventoryError, match="hostvars"):
        parse_inventory_listing(listing, [])


def test_non_string_ansible_host_is_an_inventory_error() -> None:
    listing = lab_listing()
    listing["_meta"]["hostvars"]["lab1"]["ansible_host"] = ["198.18.1.2"]
    with pytest.raises(InventoryError, match=r"lab1.*ansible_host"):
        parse_inventory_listing(listing, [])


# --- veris_services validation ---------------------------------------------------------------


def test_null_service_body_takes_every_default() -> None:
    inventory = parse_inventory_listing(with_services({"memcached": None}), [])
    assert inventory.hosts["lab1"].services["memcached"] == ServiceSpec(
        name="memcached", unit="memcached.service"
    )


def test_valid_variants_are_accepted() -> None:
    services = {
        "app@1": {"unit": "app@1.service", "container": "app_1", "depends_on": ["db"]},
        "db": {"unit": "dev-disk-by\\x2duuid.mount", "health_url": "https://db:8443/h?x=1"},
        "sock": {"unit": "docker.socket", "validate": "sshd -t -f %s"},
    }
    host = parse_inventory_listing(with_services(services), []).hosts["lab1"]
    assert host.services["app@1"].container == "app_1"
    assert [s.name for s in dependency_order(host, "app@1")] == ["db", "app@1"]


BAD_SERVICES: list[tuple[str, object, str]] = [
    ("Nginx", {}, "service name"),
    ("-nginx", {}, "service name"),
    ("nginx;x", {}, "service name"),
    ("n" * 65, {}, "service name"),
    ("nginx", {"unit": "nginx"}, "unit"),
    ("nginx", {"unit": "nginx.service; reboot"}, "unit"),
    ("nginx", {"unit": "-nginx.service"}, "unit"),
    ("nginx", {"unit": "nginx.slice"}, "unit"),
    ("nginx", {"unit": "{{ unit }}.service"}, "unit"),
    ("nginx", {"unit": 5}, "unit"),
    ("nginx", {"port": 0}, "port"),
    ("nginx", {"port": 65536}, "port"),
    ("nginx", {"port": "80"}, "port"),
    ("nginx", {"port": True}, "port"),
    ("nginx", {"port": "{{ nginx_port }}"}, "port"),
    ("nginx", {"health_url": "ftp://127.0.0.1/"}, "health_url"),
    ("nginx", {"health_url": "javascript:alert(1)"}, "health_url"),
    ("nginx", {"health_url": "http://"}, "health_url"),
    ("nginx", {"health_url": "http://a b/"}, "health_url"),
    ("nginx", {"health_url": "http://{{ host }}/"}, "health_url"),
    ("nginx", {"public": "yes"}, "public"),
    ("nginx", {"config_files": ["nginx.conf"]}, "config_files"),
    ("nginx", {"config_files": ["/etc/nginx/../shadow"]}, "config_files"),
    ("nginx", {"config_files": ["/etc//nginx.conf"]}, "config_files"),
    ("nginx", {"config_files": ["/etc/nginx/"]}, "config_files"),
    ("nginx", {"config_files": ["/etc/nginx/a b.conf"]}, "config_files"),
    ("nginx", {"config_files": "/etc/nginx/nginx.conf"}, "config_files"),
    ("nginx", {"cache_dirs": ["/"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/etc"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/usr"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/var"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/home"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/root"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/boot"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/bin"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/lib"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/sbin"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/var/lib"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/proc/1"]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["/var/cache/nginx/.."]}, "cache_dirs"),
    ("nginx", {"cache_dirs": ["var/cache/nginx"]}, "cache_dirs"),
    ("nginx", {"validate": "nginx -t"}, "validate"),
    ("nginx", {"validate": "nginx -t -c %s; rm -rf /"}, "validate"),
    ("nginx", {"validate": "nginx -t -c %s | tee x"}, "validate"),
    ("nginx", {"validate": "nginx -t -c $(echo %s)"}, "validate"),
    ("nginx", {"validate": "nginx -t -c `x` %s"}, "validate"),
    ("nginx", {"validate": "nginx -t -c %s && reboot"}, "validate"),
    ("nginx", {"validate": "nginx -t -c '%s'"}, "validate"),
    ("nginx", {"validate": "nginx -t -c %s\nreboot"}, "validate"),
    ("nginx", {"validate": "nginx -t -c %s %d"}, "validate"),
    ("nginx", {"validate": "-x %s"}, "validate"),
    ("nginx", {"depends_on": ["Redis"]}, "depends_on"),
    ("nginx", {"depends_on": ["php-fpm"]}, "php-fpm"),
    ("nginx", {"depends_on": ["nginx"]}, "cycle"),
    ("nginx", {"ports": [80]}, "ports"),
    ("nginx", {"name": "other"}, "the key is the name"),
    ("nginx", "nginx.service", "mapping"),
    ("nginx", ["x"], "mapping"),
]


@pytest.mark.parametrize(("name", "body", "problem"), BAD_SERVICES)
def test_bad_service_entry_names_host_service_and_problem(
    name: str, body: object, problem: str
) -> None:
    services = {"redis-server": {"port": 6379}, name: body}
    with pytest.raises(InventoryError) as caught:
        parse_inventory_listing(with_services(services, host="lab2"), [])
    message = caught.value.message
    assert caught.value.exit_code == 2
    assert "host lab2" in message
    assert repr(name[:80]) in message
    assert problem in message


@pytest.mark.parametrize("services", ["nginx", ["nginx"], 1])
def test_veris_services_must_be_a_mapping(services: object) -> None:
    with pytest.raises(InventoryError, match="host lab1: veris_services must be a mapping"):
        parse_inventory_listing(with_services(services), [])


def test_templated_values_are_refused_not_rendered() -> None:
    listing = with_services({"nginx": {"config_files": ["/etc/{{ x }}"]}})
    with pytest.raises(InventoryError, match="config_files"):
        parse_inventory_listing(listing, [])


# --- dependency_order -------------------------------------------------------------------------


def test_dependency_order_puts_dependencies_first() -> None:
    host = host_with(spec("app", "cache", "db"), spec("cache", "db"), spec("db"), spec("other"))
    assert [s.name for s in dependency_order(host, "app")] == ["db", "cache", "app"]
    assert [s.name for s in dependency_order(host, "db")] == ["db"]


def test_dependency_order_of_lab_service() -> None:
    host = parse_inventory_listing(lab_listing(), [LAB]).hosts["lab1"]
    order = dependency_order(host, "nginx")
    assert order == [host.services["nginx"]]


def test_dependency_cycle_is_an_inventory_error() -> None:
    host = host_with(spec("a", "b"), spec("b", "c"), spec("c", "a"))
    with pytest.raises(InventoryError, match=r"host h1: depends_on cycle a -> b -> c -> a"):
        dependency_order(host, "a")


def test_undeclared_dependency_is_an_inventory_error() -> None:
    host = host_with(spec("a", "ghost"))
    with pytest.raises(InventoryError, match="service ghost \\(needed by a\\) is not declared"):
        dependency_order(host, "a")


def test_unknown_service_is_an_inventory_error() -> None:
    with pytest.raises(InventoryError, match="service nope is not declared"):
        dependency_order(host_with(spec("a")), "nope")


def test_cycle_in_the_listing_fails_the_load() -> None:
    listing = with_services({"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}})
    with pytest.raises(InventoryError, match="cycle"):
        parse_inventory_listing(listing, [])


# --- load_inventory without a process -----------------------------------------------------------


def test_missing_source_is_a_clear_inventory_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(InventoryError, match=f"inventory source {missing} does not exist"):
        load_inventory([LAB, missing])


def test_no_source_is_an_inventory_error() -> None:
    with pytest.raises(InventoryError, match="no inventory source"):
        load_inventory([])


def test_ansible_inventory_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InventoryError, match="ansible-inventory not found"):
        load_inventory([LAB])


class FakeRun:
    """Stands in for subprocess.run; records the call instead of starting a process."""

    def __init__(self, returncode: int, stdout: str, stderr: str = "") -> None:
        self.result = subprocess.CompletedProcess[str]([], returncode, stdout, stderr)
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, kwargs))
        return self.result


def test_load_runs_ansible_inventory_as_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(0, json.dumps(lab_listing()))
    monkeypatch.setattr(subprocess, "run", fake)
    inventory = load_inventory([LAB, LAB])
    assert inventory == parse_inventory_listing(lab_listing(), [LAB, LAB])
    ((argv, kwargs),) = fake.calls
    assert Path(argv[0]).name == "ansible-inventory"
    assert argv[1:] == ["-i", str(LAB), "-i", str(LAB), "--list"]
    assert not kwargs.get("shell")
    assert kwargs["env"]["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] == "true"


def test_ansible_inventory_failure_carries_its_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(1, "", "[ERROR]: Unable to parse lab.yml as an inventory source\n")
    monkeypatch.setattr(subprocess, "run", fake)
    with pytest.raises(InventoryError, match=r"exit 1.*Unable to parse lab\.yml"):
        load_inventory([LAB])


@pytest.mark.parametrize("stdout", ["not json", "[]"])
def test_ansible_inventory_bad_output(monkeypatch: pytest.MonkeyPatch, stdout: str) -> None:
    monkeypatch.setattr(subprocess, "run", FakeRun(0, stdout))
    with pytest.raises(InventoryError, match="JSON"):
        load_inventory([LAB])


def test_listing_is_not_mutated() -> None:
    listing = lab_listing()
    before = copy.deepcopy(listing)
    parse_inventory_listing(listing, [LAB])
    assert listing == before


@pytest.mark.integration
def test_real_ansible_inventory_matches_the_recorded_listing() -> None:
    assert load_inventory([LAB]) == parse_inventory_listing(lab_listing(), [LAB])
