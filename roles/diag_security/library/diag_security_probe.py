#!/usr/bin/python
# Copyright: veris-remediate contributors; Apache-2.0
"""Read-only probe of failed SSH logins, sudo use, listeners and ufw state (diag_security)."""

DOCUMENTATION = r"""
---
module: diag_security_probe
short_description: Read SSH login failures, sudo use, listeners and ufw (changes nothing)
description:
  - SSH - the sshd journal of the last O(window_minutes) (C(journalctl -o json), entries of
    C(SYSLOG_IDENTIFIER) C(sshd) and C(sshd-session)). Only sshd's own message forms are
    matched (C(Invalid user U from A port P), C(Failed METHOD for [invalid user] U from A
    port P), C(Connection closed|reset by invalid|authenticating user U A port P [preauth]),
    C(Disconnected from invalid|authenticating user U A port P [preauth]), C(error maximum
    authentication attempts exceeded for …), C(Accepted METHOD for U from A port P)). A
    connection is one (address, port); a connection that logged a failure and no
    C(Accepted) line is one failed login with as many attempts as C(Failed) lines (at least
    one). Failures and successful logins are counted per source address.
  - sudo - journal entries of C(SYSLOG_IDENTIFIER=sudo) in the same window, in sudo's own
    form (the user, a colon, an optional event, then C(TTY), C(PWD), C(USER) and C(COMMAND)
    fields separated by semicolons); commands, authentication failures and refusals per
    user, and the program (not the arguments) of the last command.
  - Listeners - C(ss -Htlnup) (TCP listening and bound UDP sockets) on non-loopback
    addresses, with the process's systemd unit (C(/proc/PID/cgroup)), each marked declared
    (a veris_services port, a veris_firewall.allow port, the SSH port, or one of
    O(expected)) or not, and whether ufw lets a connection from anywhere in.
  - ufw - C(ENABLED) in C(/etc/ufw/ufw.conf), whether ufw's chains are loaded
    (C(iptables-save)), the default incoming policy and the tuple lines (the rules) of
    C(/etc/ufw/user.rules) and C(user6.rules).
  - Never changes anything, in check mode or not.
options:
  window_minutes:
    description: How far back the journal is read.
    type: int
    default: 60
  services:
    description: Declared services (C(name), C(port)); their ports are expected to listen.
    type: list
    elements: dict
    default: []
  allow:
    description: veris_firewall.allow entries (C(port), C(proto)); expected to listen.
    type: list
    elements: dict
    default: []
  firewall_declared:
    description: Whether the host declares veris_firewall (returned in the report).
    type: bool
    default: false
  expected:
    description: Other ports expected to listen, as C(PORT/PROTO) (C(68/udp)).
    type: list
    elements: str
    default: []
  fallback_ssh_port:
    description: SSH port when C($SSH_CONNECTION) is not visible.
    type: int
    default: 22
  thresholds:
    description: The role's thresholds, returned in the report unchanged (numbers only).
    type: dict
    default: {}
  journal_max:
    description: Journal entries read at most.
    type: int
    default: 20000
author: veris-remediate
"""

EXAMPLES = r"""
- name: Read the host's security state
  diag_security_probe:
    services: [{name: nginx, port: 80}]
  register: probe
"""

RETURN = r"""
report:
  description: The diag.security report without its kind (role_reports/diagnosis.py).
  returned: always
  type: dict
"""

import datetime  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

ENDPOINT = r"(?P<addr>\S+) port (?P<port>\d+)"
SSHD_FORMS = (
    ("invalid", re.compile(r"^Invalid user (?P<user>.*) from " + ENDPOINT + r"\s*$")),
    ("failed", re.compile(r"^Failed (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*) "
                          r"from " + ENDPOINT + r"(?: ssh2)?(?::.*)?$")),
    ("closed", re.compile(r"^(?:Connection (?:closed|reset) by|Disconnected from) "
                          r"(?P<kind>invalid|authenticating) user (?P<user>.*) " + ENDPOINT
                          + r" \[preauth\]$")),
    ("maxauth", re.compile(r"^(?:error: )?maximum authentication attempts exceeded for "
                           r"(?P<invalid>invalid user )?(?P<user>.*) from " + ENDPOINT)),
    ("accepted", re.compile(r"^Accepted (?P<method>\S+) for (?P<user>.*) from " + ENDPOINT)),
)
LIST_MAX = 100
USERS_MAX = 10
TEXT_MAX = 200
UFW_CONF = "/etc/ufw/ufw.conf"
UFW_DEFAULT = "/etc/default/ufw"
USER_RULES = ("/etc/ufw/user.rules", "/etc/ufw/user6.rules")
POLICIES = {"DROP": "deny", "REJECT": "reject", "ACCEPT": "allow"}


def shown(text, limit=TEXT_MAX):
    """Text from the host (attacker-chosen user names among it) for people: printable, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text[:limit]


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def iso(micros):
    try:
        seconds = int(micros) / 1e6
    except (TypeError, ValueError):
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds")


def unmapped(address):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# --- the journal ----------------------------------------------------------------------------


def journal_entries(lines):
    """(identifier, pid, message, time) of ``journalctl -o json`` lines with a text MESSAGE."""
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, str):
            yield (entry.get("SYSLOG_IDENTIFIER", ""), entry.get("_PID", ""), message,
                   iso(entry.get("__REALTIME_TIMESTAMP")))


def ssh_logins(entries):
    """Failed logins and successful ones by source address, from sshd's messages."""
    connections = {}
    for identifier, pid, message, when in entries:
        if identifier not in ("sshd", "sshd-session"):
            continue
        for form, pattern in SSHD_FORMS:
            match = pattern.match(message)
            if match is None:
                continue
            # One sshd process serves one connection: its pid tells reused source ports apart.
            key = (unmapped(match.group("addr")), int(match.group("port")), pid)
            conn = connections.setdefault(key, {"failed": 0, "failure": False, "invalid": False,
                                                "accepted": None, "users": [], "first": when,
                                                "last": when})
            conn["last"] = when or conn["last"]
            user = shown(match.group("user"), 32)
            if user not in conn["users"]:
                conn["users"].append(user)
            if form == "accepted":
                conn["accepted"] = user
            else:
                conn["failure"] = True
                conn["failed"] += form == "failed"
                conn["invalid"] = conn["invalid"] or form == "invalid" or bool(
                    match.groupdict().get("invalid")) or match.groupdict().get("kind") == "invalid"
            break
    failures, logins = {}, {}
    for (address, _, _), conn in sorted(connections.items(), key=lambda kv: kv[1]["first"] or ""):
        if conn["accepted"] is not None:
            login = logins.setdefault((address, conn["accepted"]), {
                "address": address, "user": conn["accepted"], "count": 0, "last_seen": None})
            login["count"] += 1
            login["last_seen"] = conn["last"]
            continue
        if not conn["failure"]:
            continue
        source = failures.setdefault(address, {
            "address": address, "attempts": 0, "connections": 0, "invalid_user_connections": 0,
            "users": [], "first_seen": conn["first"], "last_seen": conn["last"]})
        source["connections"] += 1
        source["attempts"] += max(conn["failed"], 1)
        source["invalid_user_connections"] += conn["invalid"]
        source["last_seen"] = conn["last"] or source["last_seen"]
        for user in conn["users"]:
            if user not in source["users"] and len(source["users"]) < USERS_MAX:
                source["users"].append(user)
    ranked = sorted(failures.values(), key=lambda s: (-s["attempts"], s["address"]))
    return ranked[:LIST_MAX], sorted(logins.values(), key=lambda s: (-s["count"], s["address"],
                                                                     s["user"]))[:LIST_MAX]


def parse_sudo(message):
    """(user, event or None, fields) of one sudo log line, or None for PAM and other lines."""
    user, sep, rest = message.partition(" : ")
    user = user.strip()
    if not sep or not user or " " in user:
        return None
    rest, has_command, command = rest.partition("COMMAND=")  # the command may hold " ; "
    event, fields = None, {"COMMAND": command.strip()} if has_command else {}
    for part in rest.split(" ; "):
        key, eq, value = part.partition("=")
        if eq and key.strip().isupper():
            fields[key.strip()] = value.strip()
        elif part.strip():
            event = part.strip()
    if not fields:
        return None
    return user, event, fields


def sudo_use(entries):
    users = {}
    for identifier, _, message, when in entries:
        if identifier != "sudo":
            continue
        parsed = parse_sudo(message)
        if parsed is None:
            continue
        user, event, fields = parsed
        row = users.setdefault(user, {"user": shown(user, 32), "commands": 0, "failures": 0,
                                      "denied": 0, "last_command": None, "last_seen": None})
        row["last_seen"] = when
        if event is None:
            row["commands"] += 1
            # The program only: arguments may carry secrets, and reports travel.
            row["last_command"] = shown(fields.get("COMMAND", "").split(" ", 1)[0]) or None
        elif "NOT in sudoers" in event or "not allowed" in event:
            row["denied"] += 1
        else:
            row["failures"] += 1
    return sorted(users.values(), key=lambda r: r["user"])[:LIST_MAX]


# --- ufw and listeners ----------------------------------------------------------------------


def parse_shell_vars(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip("\"'")
    return out


def parse_tuple(line, v6):
    """One ``### tuple ###`` line of user.rules: action, proto, port, src, direction, route."""
    if not line.startswith("### tuple ###"):
        return None
    fields = line[len("### tuple ###"):].split(" comment=")[0].split()
    if len(fields) not in (7, 9):
        return None
    action = fields[0]
    route = action.startswith("route:")
    action = action.partition(":")[2] if route else action
    return {"action": action.partition("_")[0], "proto": fields[1], "port": fields[2],
            "dst": fields[3], "src": fields[5], "direction": fields[-1].partition("_")[0],
            "interface": fields[-1].partition("_")[2], "route": route, "v6": v6}


def port_matches(spec, port):
    if spec == "any":
        return True
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and int(low) <= port <= int(high or low):
            return True
    return False


def everything(text):
    if text in ("any", ""):
        return True
    try:
        return ipaddress.ip_network(text, strict=False).prefixlen == 0
    except ValueError:
        return False


def ufw_allows(ufw, proto, port, v6):
    """Would ufw let a new connection from anywhere in? First matching rule, else the policy."""
    if not ufw["active"]:
        return True
    for rule in ufw["rules"]:
        if rule["route"] or rule["direction"] != "in" or rule["interface"] or rule["v6"] != v6:
            continue
        if rule["proto"] not in ("any", proto) or not port_matches(rule["port"], port):
            continue
        if not everything(rule["src"]) or not everything(rule["dst"]):
            continue
        return rule["action"] in ("allow", "limit")
    return ufw["default_incoming"] == "allow"


def read_ufw(module):
    conf = parse_shell_vars(read(UFW_CONF))
    defaults = parse_shell_vars(read(UFW_DEFAULT))
    ipv6 = defaults.get("IPV6", "yes").lower() == "yes"
    rules = []
    for path, v6 in zip(USER_RULES, (False, True)):
        if v6 and not ipv6:
            continue
        for line in read(path).splitlines():
            rule = parse_tuple(line.strip(), v6)
            if rule is not None:
                rules.append(rule)
    live = run(module, ["iptables-save"]) + run(module, ["ip6tables-save"])
    return {
        "installed": module.get_bin_path("ufw") is not None,
        "enabled": conf.get("ENABLED", "no").lower() == "yes",
        "active": bool(re.search(r"^:ufw6?-user-input ", live, re.M)),
        "default_incoming": POLICIES.get(defaults.get("DEFAULT_INPUT_POLICY", "ACCEPT").upper(),
                                         "allow"),
        "rules": rules,
    }


def split_endpoint(text):
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    host = host.strip("[]").split("%", 1)[0]
    return ("*" if host in ("*", "") else host), int(port)


def parse_listeners(text):
    """``ss -Htlnup``: Netid State Recv-Q Send-Q Local Peer [users:(("name",pid=N,fd=N),…)]."""
    out = []
    for line in text.splitlines():
        fields = line.split(None, 6)
        if len(fields) < 6 or fields[0] not in ("tcp", "udp"):
            continue
        local = split_endpoint(fields[4])
        if local is None:
            continue
        users = re.findall(r'\("([^"]*)",pid=(\d+)', fields[6] if len(fields) > 6 else "")
        out.append({"proto": fields[0], "address": local[0], "port": local[1],
                    "process": shown(",".join(sorted(set(n for n, _ in users))), 64),
                    "pid": min(int(p) for _, p in users) if users else None})
    return out


def unit_of(cgroup_text):
    """The systemd unit (.service/.scope) a process runs in, from /proc/PID/cgroup."""
    paths = dict(line.split(":", 2)[1:] for line in (cgroup_text or "").splitlines()
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


def expected_ports(params, ssh_port):
    """(proto, port) -> why it may listen: SSH, services, veris_firewall.allow, expected."""
    out = {("tcp", ssh_port): "ssh"}
    for service in params["services"]:
        port = service.get("port")
        if isinstance(port, int):
            for proto in ("tcp", "udp"):
                out.setdefault((proto, port), "service %s" % shown(service.get("name", "?"), 64))
    for entry in params["allow"]:
        spec = str(entry.get("port", ""))
        protos = ("tcp", "udp") if entry.get("proto") == "any" else (entry.get("proto") or "tcp",)
        low, _, high = spec.partition(":")
        if low.isdigit():
            for port in range(int(low), int(high or low) + 1):
                for proto in protos:
                    out.setdefault((proto, port), "veris_firewall.allow")
    for item in params["expected"]:
        port, _, proto = str(item).partition("/")
        if port.isdigit():
            out.setdefault((proto or "tcp", int(port)), "expected")
    return out


def listeners(module, params, ufw, ssh_port):
    raw = run(module, ["ss", "-Htlnup"])
    wanted = expected_ports(params, ssh_port)
    out, seen = [], set()
    for item in parse_listeners(raw):
        if item["address"] != "*" and is_loopback(item["address"]):
            continue
        key = (item["proto"], item["address"], item["port"])
        if key in seen:
            continue
        seen.add(key)
        families = [False, True] if item["address"] in ("*", "0.0.0.0", "::") else [
            ":" in item["address"]]
        why = wanted.get((item["proto"], item["port"]))
        unit = unit_of(read("/proc/%d/cgroup" % item["pid"])) if item["pid"] else None
        out.append(dict(item, unit=unit, declared=why is not None, expected_as=why,
                        exposed=any(ufw_allows(ufw, item["proto"], item["port"], v6)
                                    for v6 in families)))
    return out[:LIST_MAX]


def run(module, argv):
    path = module.get_bin_path(argv[0])
    if path is None:
        return ""
    rc, out, _ = module.run_command([path] + argv[1:], environ_update={"LC_ALL": "C"})
    return out if rc == 0 else ""


def ssh_connection():
    fields = os.environ.get("SSH_CONNECTION", "").split()
    if len(fields) != 4 or not fields[3].isdigit():
        return None, None
    return unmapped(fields[0]), int(fields[3])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            window_minutes=dict(type="int", default=60),
            services=dict(type="list", elements="dict", default=[]),
            allow=dict(type="list", elements="dict", default=[]),
            firewall_declared=dict(type="bool", default=False),
            expected=dict(type="list", elements="str", default=[]),
            fallback_ssh_port=dict(type="int", default=22),
            thresholds=dict(type="dict", default={}),
            journal_max=dict(type="int", default=20000),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for key, value in params["thresholds"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            module.fail_json(msg="threshold %s must be a number, not %r" % (key, value))
    window = max(params["window_minutes"], 1)
    limit = max(params["journal_max"], 1)
    path = module.get_bin_path("journalctl")
    lines, readable = [], False
    if path is not None:
        rc, out, _ = module.run_command(
            [path, "--no-pager", "-o", "json", "--since=-%dmin" % window, "-n", str(limit),
             "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,_PID",
             "SYSLOG_IDENTIFIER=sshd", "+", "SYSLOG_IDENTIFIER=sshd-session", "+",
             "SYSLOG_IDENTIFIER=sudo"],
            environ_update={"LC_ALL": "C"})
        readable = rc == 0
        lines = out.splitlines() if rc == 0 else []
    entries = list(journal_entries(lines))
    failures, logins = ssh_logins(entries)
    controller, own_port = ssh_connection()
    ssh_port = own_port or params["fallback_ssh_port"]
    ufw = read_ufw(module)
    report = {
        "window_minutes": window,
        "thresholds": params["thresholds"],
        "journal": {"readable": readable, "entries": len(entries),
                    "truncated": len(lines) >= limit},
        "controller_address": controller,
        "ssh_port": ssh_port,
        "ssh_failures": failures,
        "ssh_logins": logins,
        "sudo": sudo_use(entries),
        "listeners": listeners(module, params, ufw, ssh_port),
        "ufw": {"installed": ufw["installed"], "enabled": ufw["enabled"], "active": ufw["active"],
                "default_incoming": ufw["default_incoming"], "rules": len(ufw["rules"])},
        "firewall_declared": params["firewall_declared"],
    }
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
