#!/usr/bin/python
# Copyright: veris-remediate contributors; Apache-2.0
"""Read-only probe of a host's firewall, and of its declared ports from outside (diag_firewall)."""

DOCUMENTATION = r"""
---
module: diag_firewall_probe
short_description: Read ufw, INPUT policies, declared ports; or connect to them (changes nothing)
description:
  - On the managed host (no O(connect_to)) - ufw installed, C(ENABLED) in
    C(/etc/ufw/ufw.conf), active (ufw's chains loaded, C(iptables-save)), the default
    policies (C(/etc/default/ufw)), logging level, the tuple lines (the rules) of
    C(user.rules)/C(user6.rules); the filter INPUT chain policies and rule counts of
    C(iptables-save), C(ip6tables-save) and C(nft -j list ruleset) (input-hook chains);
    C(ss -Htlnup) listeners (with the systemd unit of an undeclared one's process,
    from C(/proc/PID/cgroup)). Then every declared port (SSH, public services, veris_firewall
    allow entries) with whether it listens on a non-loopback address, whether ufw's rules
    let the controller (the peer of this run's C($SSH_CONNECTION)) in, and whether it can be
    probed from the controller (a single TCP port that listens, open to the controller's
    address); and every undeclared non-loopback listener with whether ufw lets it be reached.
  - On the controller (O(connect_to) set, C(delegate_to localhost)) - one TCP connect to
    each of O(ports), all at once, each waiting at most O(timeout) seconds.
  - Never changes anything, in check mode or not.
options:
  services:
    description: Declared services (C(name), C(port), C(public)); public ports must be reachable.
    type: list
    elements: dict
    default: []
  allow:
    description: veris_firewall.allow entries (C(port), C(proto), C(source), C(comment)).
    type: list
    elements: dict
    default: []
  firewall_declared:
    description: Whether the host declares veris_firewall (returned in the report).
    type: bool
    default: false
  fallback_ssh_port:
    description: SSH port when C($SSH_CONNECTION) is not visible.
    type: int
    default: 22
  connect_to:
    description: Address to connect to (controller side); unset reads the host instead.
    type: str
  ports:
    description: TCP ports to connect to (with O(connect_to)).
    type: list
    elements: int
    default: []
  timeout:
    description: Seconds each connect waits (with O(connect_to)).
    type: float
    default: 1.0
author: veris-remediate
"""

EXAMPLES = r"""
- name: Read the firewall and the declared ports
  diag_firewall_probe:
    services: [{name: nginx, port: 80, public: true}]
  register: probe

- name: Connect to them from the controller
  diag_firewall_probe:
    connect_to: 198.18.1.2
    ports: [22, 80]
  delegate_to: localhost
  register: reach
"""

RETURN = r"""
report:
  description: The host's part of the diag.firewall report (role_reports/diagnosis.py).
  returned: without connect_to
  type: dict
reachability:
  description: One C({port, reachable, error, seconds}) per port.
  returned: with connect_to
  type: list
"""

import errno  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

UFW_CONF = "/etc/ufw/ufw.conf"
UFW_DEFAULT = "/etc/default/ufw"
USER_RULES = ("/etc/ufw/user.rules", "/etc/ufw/user6.rules")
POLICIES = {"DROP": "deny", "REJECT": "reject", "ACCEPT": "allow"}
LIST_MAX = 200
PORT_MAX = 64  # ports probed from the controller at most


def shown(text, limit=200):
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text[:limit]


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def run(module, argv):
    path = module.get_bin_path(argv[0])
    if path is None:
        return None
    rc, out, _ = module.run_command([path] + argv[1:], environ_update={"LC_ALL": "C"})
    return out if rc == 0 else None


# --- ufw -------------------------------------------------------------------------------------


def parse_shell_vars(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip("\"'")
    return out


def parse_tuple(line, v6):
    """One ``### tuple ###`` line of user.rules/user6.rules (ufw's backend_iptables format).

    action proto dport dst sport src [dapp sapp] direction[_iface] [comment=HEX]; action may
    be ``route:ACTION`` and carry ``_log``/``_log-all``.
    """
    if not line.startswith("### tuple ###"):
        return None
    body = line[len("### tuple ###"):].strip()
    comment = ""
    if " comment=" in " " + body:
        body, _, hexed = (" " + body).partition(" comment=")
        body = body.strip()
        try:
            comment = bytes.fromhex(hexed.strip()).decode("utf-8", "replace")
        except ValueError:
            comment = hexed.strip()
    fields = body.split()
    if len(fields) not in (7, 9):
        return None
    action, route = fields[0], False
    if action.startswith("route:"):
        action, route = action[len("route:"):], True
    action, _, log = action.partition("_")
    direction, _, interface = fields[-1].partition("_")
    dapp = sapp = ""
    if len(fields) == 9:
        dapp = "" if fields[6] == "-" else fields[6].replace("%20", " ")
        sapp = "" if fields[7] == "-" else fields[7].replace("%20", " ")
    return {"action": action, "log": log, "proto": fields[1], "port": fields[2],
            "dst": fields[3], "sport": fields[4], "src": fields[5], "direction": direction,
            "interface": interface, "dapp": dapp, "sapp": sapp, "route": route, "v6": v6,
            "comment": shown(comment, 64)}


def net(text):
    """ufw's address field as a network: None is everything, False is unparseable."""
    if text in ("any", ""):
        return None
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return None if network.prefixlen == 0 else network


def port_matches(spec, port):
    if spec == "any":
        return True
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and int(low) <= port <= int(high or low):
            return True
    return False


def ufw_allows(ufw, rules, proto, port, peer, v6):
    """Would ufw let a new connection from ``peer`` (None: from anywhere) in?

    The first matching user rule decides, else the default incoming policy; rules bound to
    an interface, to a source port or to a destination address are not counted.
    """
    if not ufw["active"]:
        return True
    peer_ip = None
    if peer is not None:
        try:
            peer_ip = ipaddress.ip_address(peer)
        except ValueError:
            peer_ip = None
    for rule in rules:
        if rule["route"] or rule["direction"] != "in" or rule["interface"] or rule["v6"] != v6:
            continue
        if rule["proto"] not in ("any", proto) or not port_matches(rule["port"], port):
            continue
        if rule["sport"] != "any" or net(rule["dst"]) is not None:
            continue
        src = net(rule["src"])
        if src is False:
            continue
        if src is not None and (peer_ip is None or peer_ip.version != src.version
                                or peer_ip not in src):
            continue
        return rule["action"] in ("allow", "limit")
    return ufw["default_incoming"] == "allow"


def read_ufw(module, live):
    conf = parse_shell_vars(read(UFW_CONF))
    defaults = parse_shell_vars(read(UFW_DEFAULT))
    ipv6 = defaults.get("IPV6", "yes").lower() == "yes"
    rules = []
    for path, v6 in zip(USER_RULES, (False, True)):
        if not v6 or ipv6:
            parsed = (parse_tuple(line.strip(), v6) for line in read(path).splitlines())
            rules += [rule for rule in parsed if rule]

    def policy(key, default):
        return POLICIES.get(defaults.get(key, default).upper(), "allow")

    return {
        "installed": module.get_bin_path("ufw") is not None,
        "enabled": conf.get("ENABLED", "no").lower() == "yes",
        "active": bool(re.search(r"^:ufw6?-user-input ", live, re.M)),
        "default_incoming": policy("DEFAULT_INPUT_POLICY", "ACCEPT"),
        "default_outgoing": policy("DEFAULT_OUTPUT_POLICY", "ACCEPT"),
        "default_routed": policy("DEFAULT_FORWARD_POLICY", "ACCEPT"),
        "ipv6": ipv6,
        "logging": shown(conf.get("LOGLEVEL", "off"), 16),
    }, rules[:LIST_MAX]


# --- kernel policies -------------------------------------------------------------------------


def iptables_policies(text, source):
    """The filter table's INPUT chain of ``iptables-save`` output: policy and rule count."""
    table, policy, rules = None, None, 0
    for line in (text or "").splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "filter" and line.startswith(":INPUT "):
            policy = line.split()[1]
        elif table == "filter" and line.startswith("-A INPUT "):
            rules += 1
    if policy is None:
        return []
    return [{"source": source, "family": "ipv6" if source == "ip6tables" else "ipv4",
             "table": "filter", "chain": "INPUT", "policy": policy.lower(), "rules": rules}]


def nft_policies(text):
    """Base chains on the input hook in ``nft -j list ruleset``: policy and rule count."""
    try:
        items = json.loads(text or "{}").get("nftables", [])
    except (ValueError, AttributeError):
        return []
    chains, counts = [], {}
    for item in items if isinstance(items, list) else []:
        chain, rule = item.get("chain"), item.get("rule")
        if isinstance(chain, dict) and chain.get("hook") == "input":
            chains.append(chain)
        elif isinstance(rule, dict):
            key = (rule.get("family"), rule.get("table"), rule.get("chain"))
            counts[key] = counts.get(key, 0) + 1
    return [{"source": "nft", "family": shown(c.get("family", ""), 16),
             "table": shown(c.get("table", ""), 64), "chain": shown(c.get("name", ""), 64),
             "policy": shown(c.get("policy", "accept"), 16),
             "rules": counts.get((c.get("family"), c.get("table"), c.get("name")), 0)}
            for c in chains][:LIST_MAX]


# --- listeners and declared ports ------------------------------------------------------------


def split_endpoint(text):
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    host = host.strip("[]").split("%", 1)[0]
    return ("*" if host in ("*", "") else host), int(port)


def parse_listeners(text):
    out = []
    for line in (text or "").splitlines():
        fields = line.split(None, 6)
        if len(fields) < 6 or fields[0] not in ("tcp", "udp"):
            continue
        local = split_endpoint(fields[4])
        if local is not None:
            users = re.findall(r'\("([^"]*)",pid=(\d+)', fields[6] if len(fields) > 6 else "")
            out.append({"proto": fields[0], "address": local[0], "port": local[1],
                        "process": shown(",".join(sorted(set(n for n, _ in users))), 64),
                        "pid": min(int(p) for _, p in users) if users else None})
    return out


def unit_of(pid):
    """The systemd unit (.service/.scope) process ``pid`` runs in, from /proc/PID/cgroup."""
    if pid is None:
        return None
    paths = dict(line.split(":", 2)[1:] for line in read("/proc/%d/cgroup" % pid).splitlines()
                 if line.count(":") >= 2)
    for key in ("", "name=systemd"):
        for part in reversed(paths.get(key, "").split("/")):
            if re.match(r"[^/]+\.(service|scope)\Z", part):
                return shown(part, 256)
    return None


def is_loopback(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def families(address, ipv6):
    if address in ("*", "::"):
        return [False, True] if ipv6 else [False]
    return [":" in address]


def listening(listeners, proto, port):
    """Non-loopback listeners of (proto, port)."""
    return [item for item in listeners if item["proto"] == proto and item["port"] == port
            and (item["address"] == "*" or not is_loopback(item["address"]))]


def declared_ports(services, allow, ssh_port):
    """SSH first, then public services, then veris_firewall.allow entries (as ufw_harden)."""
    out = [{"label": "%d/tcp (ssh)" % ssh_port, "reason": "ssh", "port": str(ssh_port),
            "proto": "tcp", "source": "any"}]
    for service in services:
        if service.get("public") and isinstance(service.get("port"), int):
            name = shown(service.get("name", "?"), 64)
            out.append({"label": "%d/tcp (%s)" % (service["port"], name),
                        "reason": "service %s (public)" % name, "port": str(service["port"]),
                        "proto": "tcp", "source": "any"})
    for entry in allow:
        port, proto = str(entry.get("port", "")), entry.get("proto") or "tcp"
        source = entry.get("source") or "any"
        out.append({"label": "%s/%s from %s" % (port, proto, source), "reason": "declared",
                    "port": port, "proto": proto, "source": source})
    seen, unique = set(), []
    for item in out:
        key = (item["port"], item["proto"], item["source"])
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique[:LIST_MAX]


def covers(source, address):
    if source in ("any", ""):
        return True
    if address is None:
        return False
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(source, strict=False)
    except ValueError:
        return False


def judge_declared(item, ufw, rules, listeners, controller):
    single = item["port"].isdigit()
    port = int(item["port"]) if single else None
    protos = ["tcp", "udp"] if item["proto"] == "any" else [item["proto"]]
    found = [item for p in protos for item in listening(listeners, p, port)] if single else []
    allows = None
    if single and found:
        peer = controller if controller and covers(item["source"], controller) else None
        allows = any(ufw_allows(ufw, rules, item["proto"], port, peer, v6)
                     for item in found for v6 in families(item["address"], ufw["ipv6"]))
    return dict(item, listening=bool(found), ufw_allows=allows,
                probe=bool(single and "tcp" in protos and listening(listeners, "tcp", port)
                           and controller is not None and covers(item["source"], controller)))


def exposed(listeners, declared, services, ufw, rules):
    """Non-loopback listeners on ports the firewall policy does not keep open.

    ``service`` names the declared (not public) service a port belongs to; None is a port
    nothing declares.
    """
    wanted = set()
    for item in declared:
        low, _, high = item["port"].partition(":")
        if low.isdigit():
            for proto in (["tcp", "udp"] if item["proto"] == "any" else [item["proto"]]):
                wanted.update((proto, p) for p in range(int(low), int(high or low) + 1))
    owners = {}
    for service in services:
        if isinstance(service.get("port"), int):
            owners.setdefault(service["port"], shown(service.get("name", "?"), 64))
    out, seen = [], set()
    for item in listeners:
        key = (item["proto"], item["port"])
        loopback = item["address"] != "*" and is_loopback(item["address"])
        if key in wanted or key in seen or loopback:
            continue
        if item["proto"] == "udp" and item["port"] in (68, 546):
            continue  # DHCP clients' sockets: ufw's before.rules let the replies in
        seen.add(key)
        out.append(dict(item, unit=unit_of(item["pid"]), service=owners.get(item["port"]),
                        ufw_allows=any(ufw_allows(ufw, rules, item["proto"], item["port"], None, v6)
                                       for v6 in families(item["address"], ufw["ipv6"]))))
    return out[:LIST_MAX]


def ssh_connection():
    fields = os.environ.get("SSH_CONNECTION", "").split()
    if len(fields) != 4 or not fields[3].isdigit():
        return None, None
    address = fields[0]
    try:
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            address = str(ip.ipv4_mapped)
    except ValueError:
        return None, None
    return address, int(fields[3])


def read_host(module):
    params = module.params
    v4 = run(module, ["iptables-save"])
    v6 = run(module, ["ip6tables-save"])
    ufw, rules = read_ufw(module, (v4 or "") + (v6 or ""))
    listeners = parse_listeners(run(module, ["ss", "-Htlnup"]))[:LIST_MAX]
    controller, own_port = ssh_connection()
    ssh_port = own_port or params["fallback_ssh_port"]
    declared = [judge_declared(d, ufw, rules, listeners, controller)
                for d in declared_ports(params["services"], params["allow"], ssh_port)]
    return dict(
        ufw=dict(ufw, rules=rules),
        policies=iptables_policies(v4, "iptables") + iptables_policies(v6, "ip6tables")
        + nft_policies(run(module, ["nft", "-j", "list", "ruleset"])),
        listeners=listeners,
        ssh_port=ssh_port,
        ssh_port_source="connection" if own_port else "fallback",
        controller_address=controller,
        declared=declared,
        exposed=exposed(listeners, declared, params["services"], ufw, rules),
        firewall_declared=params["firewall_declared"],
    )


# --- from the controller ---------------------------------------------------------------------


def connect_all(address, ports, timeout):
    """One non-blocking TCP connect per port, all in flight at once; each waits ``timeout``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    pending, results = {}, {}
    start = time.monotonic()
    for port in ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex((address, port))
        if code in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            pending[sock] = port
        else:
            results[port] = (False, os.strerror(code), 0.0)
            sock.close()
    while pending:
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            break
        _, writable, _ = select.select([], list(pending), [], left)
        for sock in writable:
            port = pending.pop(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            results[port] = (code == 0, None if code == 0 else os.strerror(code),
                             round(time.monotonic() - start, 3))
            sock.close()
    for sock, port in pending.items():
        results[port] = (False, "timed out after %gs" % timeout, round(timeout, 3))
        sock.close()
    return [{"port": p, "reachable": results[p][0], "error": results[p][1],
             "seconds": results[p][2]} for p in ports]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict", default=[]),
            allow=dict(type="list", elements="dict", default=[]),
            firewall_declared=dict(type="bool", default=False),
            fallback_ssh_port=dict(type="int", default=22),
            connect_to=dict(type="str"),
            ports=dict(type="list", elements="int", default=[]),
            timeout=dict(type="float", default=1.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["connect_to"] is None:
        module.exit_json(changed=False, report=read_host(module))
    try:
        address = str(ipaddress.ip_address(params["connect_to"]))
    except ValueError:
        try:  # an inventory name: resolve it, as ssh would
            address = socket.getaddrinfo(params["connect_to"], None, 0, socket.SOCK_STREAM)[0][4][0]
        except (socket.gaierror, UnicodeError) as exc:
            module.fail_json(msg="cannot resolve %s: %s" % (shown(params["connect_to"], 100), exc))
    ports = sorted(set(p for p in params["ports"] if 0 < p < 65536))[:PORT_MAX]
    timeout = min(max(params["timeout"], 0.1), 10.0)
    module.exit_json(changed=False, address=address,
                     reachability=connect_all(address, ports, timeout))


if __name__ == "__main__":
    main()
