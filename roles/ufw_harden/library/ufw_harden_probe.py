#!/usr/bin/python
"""Read-only probe of a host's ufw firewall, and the plan that hardening would carry out."""

DOCUMENTATION = r"""
---
module: ufw_harden_probe
short_description: Read the ufw firewall state and plan the hardening (changes nothing)
description:
  - Reads, in one task, everything the ufw_harden role needs to decide and to verify
    that /etc/ufw and the live rule set are as declared; it never changes anything,
    in check mode or not.
  - State - ufw enabled (C(ENABLED=yes) in C(/etc/ufw/ufw.conf)) and active (ufw's
    user chain loaded), the default incoming policy (C(/etc/default/ufw)), the user
    rules parsed from the C(### tuple ###) lines of C(user.rules)/C(user6.rules),
    listening sockets (C(ss -Htlnup)), established TCP connections
    (C(ss -Htn state established)), the host's own addresses (C(ip -j addr)), the SSH
    port, a sha256 of /etc/ufw and /etc/default/ufw (paths, types, modes, owners,
    contents) and a sha256 of the normalized live rule set.
  - Live rule set normalization - C(iptables-save) and C(ip6tables-save) without the
    generated comment lines and counters; ufw's own chains (C(ufw-*), C(ufw6-*)) that
    hold no rule, and plain jumps to them, count as absent (what C(ufw disable) leaves
    behind); a table of built-in chains with ACCEPT policies and no rules counts as
    empty. So "never enabled" and "enabled, then disabled" compare equal.
  - Plan - the rules to add (SSH first, then public services, then declared entries),
    undeclared allow rules to delete when I(prune), whether the default incoming policy
    and the enabled state change, the listening ports that would close and the clients
    connected to them that would be shut out.
options:
  ssh_port:
    description: SSH port to keep open; null detects the port this run uses.
    type: int
  fallback_ssh_port:
    description: Port used when C($SSH_CONNECTION) is not visible to the module.
    type: int
    default: 22
  services:
    description: Declared services (C(name), C(port), C(public)); public ones stay open.
    type: list
    elements: dict
    default: []
  allow:
    description: Declared entries (C(port), C(proto), C(source), C(comment)).
    type: list
    elements: dict
    default: []
  prune:
    description: Plan to delete ufw allow rules that are not declared.
    type: bool
    default: true
  snapshot_dir:
    description: A snapshot directory whose revert markers are reported, or null.
    type: path
author: veris-remediate
"""

EXAMPLES = r"""
- name: Read the firewall and plan the hardening
  ufw_harden_probe:
    services: [{name: nginx, port: 80, public: true}]
    allow: [{port: 9100, proto: tcp, source: 198.18.0.0/15}]
  register: probe
"""

RETURN = r"""
state:
  description: The firewall as it is (see the role's firewall report models).
  returned: always
  type: dict
plan:
  description: What hardening would change, and what it would close.
  returned: always
  type: dict
"""

import grp  # noqa: E402
import hashlib  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pwd  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

UFW_CONF = "/etc/ufw/ufw.conf"
UFW_DEFAULT = "/etc/default/ufw"
UFW_DIR = "/etc/ufw"
USER_RULES = ("/etc/ufw/user.rules", "/etc/ufw/user6.rules")
ANY4 = ipaddress.ip_network("0.0.0.0/0")
ANY6 = ipaddress.ip_network("::/0")
POLICIES = {"DROP": "deny", "REJECT": "reject", "ACCEPT": "allow"}
UFW_CHAIN = re.compile(r"ufw6?-")
# ufw's comment is passed on a command line by community.general.ufw: plain words only.
SAFE_COMMENT = re.compile(r"[A-Za-z0-9 _.,:/@+=-]{0,64}\Z")
PORT_SPEC = re.compile(r"(any|[0-9]+(:[0-9]+)?(,[0-9]+(:[0-9]+)?)*)\Z")
LIST_LIMIT = 200  # listeners, connections, rules reported: bounded


# --- parsing ---------------------------------------------------------------------------------


def parse_tuple(line, v6):
    """One ``### tuple ###`` line of user.rules/user6.rules as a rule dict (None if not one).

    Format (ufw's backend_iptables): action proto dport dst sport src [dapp sapp] direction
    [comment=HEX]; action may be ``route:ACTION`` and carry ``_log``/``_log-all``; the
    direction may carry an interface (``in_eth0``).
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
    return {
        "action": action,
        "log": log,
        "proto": fields[1],
        "port": fields[2],
        "dst": fields[3],
        "sport": fields[4],
        "src": fields[5],
        "direction": direction,
        "interface": interface,
        "dapp": dapp,
        "sapp": sapp,
        "route": route,
        "v6": v6,
        "comment": comment,
    }


def parse_rules(texts):
    """Rules of user.rules (v4) and user6.rules (v6), in file order."""
    rules = []
    for text, v6 in texts:
        for line in text.splitlines():
            rule = parse_tuple(line.strip(), v6)
            if rule is not None:
                rules.append(rule)
    return rules


def parse_shell_vars(text):
    """KEY=value lines of a shell-style config file (quotes removed)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip("\"'")
    return out


def split_endpoint(text):
    """``addr:port`` as ss prints it (``[::]:22``, ``*:80``, ``127.0.0.53%lo:53``)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    host = host.strip("[]")
    host = host.split("%", 1)[0]
    if host in ("*", ""):
        host = "*"
    return host, int(port)


def process_names(text):
    return sorted(set(re.findall(r'\(\("([^"]*)"', text or "")))


def parse_listeners(text):
    """``ss -Htlnup``: Netid State Recv-Q Send-Q Local Peer [Process]."""
    out = []
    for line in text.splitlines():
        fields = line.split(None, 6)
        if len(fields) < 6 or fields[0] not in ("tcp", "udp"):
            continue
        local = split_endpoint(fields[4])
        if local is None:
            continue
        out.append(
            {
                "proto": fields[0],
                "address": local[0],
                "port": local[1],
                "process": ",".join(process_names(fields[6] if len(fields) > 6 else "")),
            }
        )
    return out


def parse_connections(text):
    """``ss -Htn state established``: Recv-Q Send-Q Local Peer (no state column)."""
    out = []
    for line in text.splitlines():
        endpoints = [split_endpoint(f) for f in line.split() if ":" in f]
        endpoints = [e for e in endpoints if e is not None]
        if len(endpoints) < 2:
            continue
        (laddr, lport), (paddr, pport) = endpoints[0], endpoints[1]
        out.append(
            {
                "local_address": unmapped(laddr),
                "local_port": lport,
                "peer_address": unmapped(paddr),
                "peer_port": pport,
            }
        )
    return out


def unmapped(address):
    """An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) as the IPv4 address it carries."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_addresses(text):
    """The host's own addresses from ``ip -j addr``."""
    try:
        links = json.loads(text or "[]")
    except ValueError:
        return []
    out = []
    for link in links if isinstance(links, list) else []:
        for info in link.get("addr_info", []) or []:
            if info.get("local"):
                out.append(info["local"])
    return sorted(set(out))


# --- the live rule set -------------------------------------------------------------------------


def normalize_ruleset(text):
    """iptables-save output as canonical text (see DOCUMENTATION: what counts as equal)."""
    tables = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        line = re.sub(r"^\[[0-9]+:[0-9]+\]\s+", "", line)
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {"chains": {}, "rules": []})
        elif current is None:
            continue
        elif line.startswith(":"):
            parts = line[1:].split()
            current["chains"][parts[0]] = parts[1] if len(parts) > 1 else "-"
        else:
            current["rules"].append(re.sub(r"\s+-c\s+[0-9]+\s+[0-9]+", "", line))
    out = []
    for name in sorted(tables):
        chains, rules = tables[name]["chains"], tables[name]["rules"]
        while True:
            used = set(r.split()[1] for r in rules if r.startswith("-A "))
            empty = set(
                c for c, policy in chains.items()
                if policy == "-" and UFW_CHAIN.match(c) and c not in used
            )
            if not empty:
                break
            for chain in empty:
                del chains[chain]
            rules = [
                r for r in rules
                if not (len(r.split()) == 4 and r.split()[2] == "-j" and r.split()[3] in empty)
            ]
        if not rules and all(p == "ACCEPT" for p in chains.values()):
            continue
        out.append("*" + name)
        out.extend(":%s %s" % (c, chains[c]) for c in sorted(chains))
        out.extend(rules)
    return "\n".join(out) + ("\n" if out else "")


def tree_digest(paths):
    """sha256 over paths, types, modes, owners and contents of files and directories."""
    digest = hashlib.sha256()

    def add(path):
        try:
            st = os.lstat(path)
        except OSError:
            digest.update(("%s missing\n" % path).encode())
            return
        mode = stat.S_IMODE(st.st_mode)
        kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
        digest.update(("%s %s %o %d %d\n" % (path, kind, mode, st.st_uid, st.st_gid)).encode())
        if kind == "l":
            digest.update(os.readlink(path).encode() + b"\n")
        elif kind == "f" and stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                digest.update(hashlib.sha256(fh.read()).hexdigest().encode() + b"\n")
        elif kind == "d":
            for name in sorted(os.listdir(path)):
                add(os.path.join(path, name))

    for path in paths:
        add(path)
    return digest.hexdigest()


def owner_name(uid, gid):
    try:
        return pwd.getpwuid(uid).pw_name, grp.getgrgid(gid).gr_name
    except KeyError:
        return str(uid), str(gid)


# --- rule matching -----------------------------------------------------------------------------


def net(text):
    """ufw's address field as a network (``any`` and ``0.0.0.0/0`` are everything)."""
    if text in ("any", ""):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False  # unparseable: matches nothing


def is_everything(text):
    network = net(text)
    return network is None or (network is not False and network.prefixlen == 0)


def port_matches(spec, port):
    if spec == "any":
        return True
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and int(low) <= port <= int(high or low):
            return True
    return False


def rule_key(rule):
    """What makes two rules the same rule for ufw, apart from action, log and comment."""
    return (
        rule["proto"], rule["port"], rule["sport"], rule["direction"], rule["interface"],
        rule["dapp"], rule["sapp"], rule["route"], rule["v6"],
        str(net(rule["src"]) or "any"), str(net(rule["dst"]) or "any"),
    )


def desired_tuples(entry, ipv6):
    """The ufw rules (v4, and v6 when enabled) one desired allow entry becomes."""
    source = entry["source"]
    families = []
    network = net(source)
    if network is None or network is False:
        families = [False, True] if ipv6 else [False]
    else:
        families = [network.version == 6]
    out = []
    for v6 in families:
        anynet = str(ANY6 if v6 else ANY4)
        out.append({
            "action": "allow", "log": "", "proto": entry["proto"], "port": entry["port"],
            "dst": anynet, "sport": "any",
            "src": anynet if network is None or network is False else str(network),
            "direction": "in", "interface": "", "dapp": "", "sapp": "", "route": False,
            "v6": v6, "comment": entry.get("comment") or "",
        })
    return out


def evaluate(rules, policy, active, proto, port, peer, v6, peer_port=None):
    """Would ufw let a new connection in? First matching user rule wins, else the policy.

    ``peer`` None asks about a client from anywhere: only rules open to every source
    apply. Rules bound to an interface are not counted (conservative: "would close").
    """
    if not active:
        return True
    if proto == "udp" and port == 68:
        return True  # ufw's before.rules let DHCP replies in
    peer_ip = ipaddress.ip_address(peer) if peer else None
    for rule in rules:
        if rule["route"] or rule["direction"] != "in" or rule["interface"] or rule["v6"] != v6:
            continue
        if rule["proto"] not in ("any", proto) or not port_matches(rule["port"], port):
            continue
        if not is_everything(rule["dst"]):
            continue
        if rule["sport"] != "any" and (peer_port is None or not port_matches(rule["sport"], peer_port)):
            continue
        src = net(rule["src"])
        if peer_ip is None:
            if not is_everything(rule["src"]):
                continue
        elif src is False or (src is not None and peer_ip not in src):
            continue
        return rule["action"] in ("allow", "limit")
    return policy == "allow"


def rule_label(rule, paired=True):
    """A rule as a person reads it: ``allow 8081/tcp from any``."""
    what = rule["dapp"] or "%s/%s" % (rule["port"], rule["proto"])
    source = "any" if is_everything(rule["src"]) else rule["src"]
    action = rule["action"] + ("_" + rule["log"] if rule["log"] else "")
    text = "%s %s from %s" % (action, what, source)
    if rule["interface"]:
        text += " on " + rule["interface"]
    if not paired and is_everything(rule["src"]):
        text += " (v6 only)" if rule["v6"] else " (v4 only)"
    return text


def deletion_args(rule, pair):
    """community.general.ufw arguments that delete ``rule`` (both families when paired)."""
    args = {
        "rule": rule["action"],
        "direction": rule["direction"],
        "from_ip": "any" if pair else rule["src"],
        "to_ip": "any" if pair else rule["dst"],
        "log": rule["log"] == "log",
    }
    if rule["dapp"]:
        args["name"] = rule["dapp"]
    else:
        if rule["port"] != "any":
            args["to_port"] = rule["port"]
        if rule["proto"] != "any":
            args["proto"] = rule["proto"]
    if rule["sport"] != "any":
        args["from_port"] = rule["sport"]
    if rule["interface"]:
        args["interface"] = rule["interface"]
    if rule["comment"]:
        args["comment"] = rule["comment"]
    return args


def prunable(rule):
    """Why an undeclared rule is kept (None: hardening may delete it)."""
    if rule["route"] or rule["direction"] != "in" or rule["action"] != "allow":
        return "not an incoming allow rule"
    if rule["log"] not in ("", "log"):
        return "its log-all setting cannot be expressed by community.general.ufw"
    if rule["sapp"]:
        return "a source application rule cannot be expressed by community.general.ufw"
    if not SAFE_COMMENT.match(rule["comment"]):
        return "its comment cannot be passed to community.general.ufw"
    return None


# --- the plan ----------------------------------------------------------------------------------


def desired_policy(ssh_port, services, allow):
    """SSH first, then public services, then the declared entries; duplicates dropped."""
    entries = [{"port": str(ssh_port), "proto": "tcp", "source": "any", "comment": "veris ssh",
                "reason": "ssh"}]
    for service in services:
        if service.get("public") and service.get("port"):
            entries.append({"port": str(service["port"]), "proto": "tcp", "source": "any",
                            "comment": "veris %s" % service.get("name", "service"),
                            "reason": "service %s (public)" % service.get("name", "?")})
    for item in allow:
        port = str(item["port"])
        protos = [item.get("proto") or "tcp"]
        if protos == ["any"] and ":" in port:
            protos = ["tcp", "udp"]  # ufw needs a protocol for a port range
        for proto in protos:
            entries.append({"port": port, "proto": proto, "source": item.get("source") or "any",
                            "comment": item.get("comment") or "veris declared",
                            "reason": "declared"})
    seen, out = set(), []
    for entry in entries:
        key = (entry["port"], entry["proto"], str(net(entry["source"]) or "any"))
        if key not in seen:
            seen.add(key)
            entry["label"] = "%s/%s from %s" % (entry["port"], entry["proto"], entry["source"])
            out.append(entry)
    return out


GRANTS = ("allow", "limit")


def make_plan(state, desired, prune):
    """Rules to add and delete, policy changes, ports that would close, clients shut out."""
    rules, ipv6 = state["rules"], state["ipv6"]
    by_key = {}
    for index, rule in enumerate(rules):
        by_key.setdefault(rule_key(rule), []).append(index)

    def granted(key):
        return any(rules[i]["action"] in GRANTS for i in by_key.get(key, []))

    wanted, to_add, added = {}, [], set()
    for entry in desired:
        tuples = desired_tuples(entry, ipv6)
        for t in tuples:
            wanted.setdefault(rule_key(t), t)
        if not all(granted(rule_key(t)) for t in tuples):
            to_add.append(dict(entry))
            added.update(rule_key(t) for t in tuples if not granted(rule_key(t)))

    to_delete, kept, dropped = [], [], set()
    for index, rule in enumerate(rules):
        if index in dropped or rule_key(rule) in wanted:
            continue
        if rule["action"] != "allow" or rule["direction"] != "in" or rule["route"]:
            continue  # deny, reject, limit, outgoing and routed rules are never pruned
        why = prunable(rule) if prune else "prune is off"
        if why:
            kept.append({"label": rule_label(rule), "why": why})
            continue
        twin = None
        if is_everything(rule["src"]) and is_everything(rule["dst"]):
            other = str(ANY4 if rule["v6"] else ANY6)
            twin_key = rule_key(dict(rule, v6=not rule["v6"], src=other, dst=other))
            twin = next(
                (i for i in by_key.get(twin_key, [])
                 if i not in dropped and rules[i]["action"] == rule["action"]
                 and rules[i]["log"] == rule["log"]),
                None,
            )
        dropped.add(index)
        if twin is not None:
            dropped.add(twin)
        to_delete.append({"label": rule_label(rule, paired=twin is not None or not ipv6),
                          "args": deletion_args(rule, twin is not None)})

    # The rule set after hardening, in ufw's order: an added allow replaces the action of
    # a rule that differs only in it, in place; other added rules come last.
    after, present = [], set()
    for index, rule in enumerate(rules):
        if index in dropped:
            continue
        key = rule_key(rule)
        present.add(key)
        after.append(wanted[key] if key in added else rule)
    after += [t for key, t in wanted.items() if key not in present]

    closing, cut, seen = [], [], set()
    for listener in state["listeners"]:
        if listener["address"] != "*" and is_loopback(listener["address"]):
            continue
        args = (listener["proto"], listener["port"], None)
        families = families_of(listener["address"], ipv6)
        open_now = any(
            evaluate(rules, state["default_incoming"], state["active"], *args, v6=f)
            for f in families
        )
        open_after = any(evaluate(after, "deny", True, *args, v6=f) for f in families)
        if open_now and not open_after and (listener["proto"], listener["port"]) not in seen:
            seen.add((listener["proto"], listener["port"]))  # one entry for 0.0.0.0 and ::
            who = " (%s)" % listener["process"] if listener["process"] else ""
            closing.append(dict(listener, allowed_from=allowed_sources(after, listener),
                                label="%s/%s%s" % (listener["port"], listener["proto"], who)))
    own, own_port_closing = state["connection"], False
    for conn in state["connections"]:
        peer = conn["peer_address"]
        if not is_listening(state["listeners"], conn):
            continue  # an outgoing connection: its local port is not a service
        if is_loopback(peer) or peer in state["addresses"]:
            continue  # the host's own traffic comes in over loopback, which ufw allows
        v6 = ipaddress.ip_address(peer).version == 6
        args = ("tcp", conn["local_port"], peer)
        if not evaluate(rules, state["default_incoming"], state["active"], *args, v6=v6,
                        peer_port=conn["peer_port"]):
            continue  # shut out already
        if evaluate(after, "deny", True, *args, v6=v6, peer_port=conn["peer_port"]):
            continue
        if own is not None and (own["peer_address"], own["peer_port"], own["local_port"]) == (
                peer, conn["peer_port"], conn["local_port"]):
            own_port_closing = True  # this run's own session: the fresh-SSH check covers it
            continue
        cut.append({"peer_address": peer, "peer_port": conn["peer_port"],
                    "local_address": conn["local_address"], "port": conn["local_port"],
                    "proto": "tcp", "label": "%s on %s/tcp" % (peer, conn["local_port"])})
    set_default = state["default_incoming"] != "deny"
    enable = not (state["enabled"] and state["active"])
    return {
        "to_add": to_add,
        "to_delete": to_delete,
        "kept": kept[:LIST_LIMIT],
        "set_default": set_default,
        "enable": enable,
        "closing": closing[:LIST_LIMIT],
        "cut": cut[:LIST_LIMIT],
        "own_port_closing": own_port_closing,
        "compliant": not (to_add or to_delete or set_default or enable),
    }


def is_loopback(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def families_of(address, ipv6):
    if address == "*" or address == "::":
        return [False, True] if ipv6 else [False]
    try:
        return [ipaddress.ip_address(address).version == 6]
    except ValueError:
        return [False]


def is_listening(listeners, conn):
    for listener in listeners:
        if listener["proto"] == "tcp" and listener["port"] == conn["local_port"] and \
                listener["address"] in ("*", "0.0.0.0", "::", conn["local_address"]):
            return True
    return False


def allowed_sources(rules, listener):
    out = []
    for rule in rules:
        if rule["action"] in ("allow", "limit") and rule["direction"] == "in" and not rule["route"] \
                and rule["proto"] in ("any", listener["proto"]) \
                and port_matches(rule["port"], listener["port"]) and not is_everything(rule["src"]):
            out.append(rule["src"])
    return sorted(set(out))


# --- the module --------------------------------------------------------------------------------


def read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def run(module, argv):
    path = module.get_bin_path(argv[0])
    if path is None:
        return ""
    rc, out, _ = module.run_command([path] + argv[1:], environ_update={"LC_ALL": "C"})
    return out if rc == 0 else ""


def ssh_endpoint():
    """This run's own SSH connection, from $SSH_CONNECTION (client ip, port, server ip, port)."""
    fields = os.environ.get("SSH_CONNECTION", "").split()
    if len(fields) != 4 or not fields[1].isdigit() or not fields[3].isdigit():
        return None
    return {"peer_address": unmapped(fields[0]), "peer_port": int(fields[1]),
            "local_address": unmapped(fields[2]), "local_port": int(fields[3])}


def revert_markers(directory):
    """When the on-host revert (timer) or the rollback restored from ``directory``."""
    out = {"fired": False, "fired_at": None, "rolled_back_at": None, "saved": False}
    if not directory:
        return out
    timer = read(os.path.join(directory, "restored-by-timer")).strip()
    rollback = read(os.path.join(directory, "restored-by-rollback")).strip()
    out["fired"] = bool(timer)
    out["fired_at"] = timer or None
    out["rolled_back_at"] = rollback or None
    out["saved"] = os.path.exists(os.path.join(directory, "saved"))
    return out


def probe_state(module):
    params = module.params
    conf = parse_shell_vars(read(UFW_CONF))
    defaults = parse_shell_vars(read(UFW_DEFAULT))
    ipv6 = defaults.get("IPV6", "yes").lower() == "yes"
    rules = parse_rules([(read(USER_RULES[0]), False)] + ([(read(USER_RULES[1]), True)] if ipv6 else []))
    raw4 = run(module, ["iptables-save"])
    raw6 = run(module, ["ip6tables-save"])
    live = "# ipv4\n" + normalize_ruleset(raw4) + "# ipv6\n" + normalize_ruleset(raw6)
    own = ssh_endpoint()
    if params["ssh_port"]:
        ssh_port, source = params["ssh_port"], "param"
    elif own is not None:
        ssh_port, source = own["local_port"], "connection"
    else:
        ssh_port, source = params["fallback_ssh_port"], "fallback"
    listeners = parse_listeners(run(module, ["ss", "-Htlnup"]))
    st = os.stat(UFW_DIR) if os.path.isdir(UFW_DIR) else None
    owner = owner_name(st.st_uid, st.st_gid) if st else ("", "")
    return {
        "ufw_installed": module.get_bin_path("ufw") is not None,
        "enabled": conf.get("ENABLED", "no").lower() == "yes",
        "active": bool(re.search(r"^:ufw6?-user-input ", raw4 + raw6, re.M)),
        "default_incoming": POLICIES.get(defaults.get("DEFAULT_INPUT_POLICY", "ACCEPT").upper(), "allow"),
        "ipv6": ipv6,
        "rules": rules[:LIST_LIMIT],
        "listeners": listeners[:LIST_LIMIT],
        "connections": parse_connections(run(module, ["ss", "-Htn", "state", "established"]))[:LIST_LIMIT],
        "addresses": parse_addresses(run(module, ["ip", "-j", "addr"]))[:LIST_LIMIT],
        "connection": own,
        "ssh_port": ssh_port,
        "ssh_port_source": source,
        "ssh_port_listening": any(
            item["proto"] == "tcp" and item["port"] == ssh_port and not is_loopback(item["address"])
            for item in listeners
        ),
        "etc_owner": "%s:%s" % owner,
        "etc_sha256": tree_digest([UFW_DIR, UFW_DEFAULT]),
        "live_sha256": hashlib.sha256(live.encode()).hexdigest(),
        "revert": revert_markers(params["snapshot_dir"]),
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ssh_port=dict(type="int"),
            fallback_ssh_port=dict(type="int", default=22),
            services=dict(type="list", elements="dict", default=[]),
            allow=dict(type="list", elements="dict", default=[]),
            prune=dict(type="bool", default=True),
            snapshot_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    # The inventory was validated on the controller; refuse anything else all the same.
    for item in module.params["allow"]:
        port = str(item.get("port", ""))
        proto = item.get("proto") or "tcp"
        if not PORT_SPEC.match(port) or port == "any" or proto not in ("tcp", "udp", "any"):
            module.fail_json(msg="allow entry %r: port must be N or LOW:HIGH, proto tcp|udp|any"
                             % (item,))
        if net(item.get("source") or "any") is False:
            module.fail_json(msg="allow entry %r: source must be any, an address or a CIDR"
                             % (item,))
        if not SAFE_COMMENT.match(item.get("comment") or ""):
            module.fail_json(msg="allow entry %r: comment may only use [A-Za-z0-9 _.,:/@+=-]"
                             % (item,))
    state = probe_state(module)
    desired = desired_policy(state["ssh_port"], module.params["services"], module.params["allow"])
    plan = make_plan(state, desired, module.params["prune"])
    module.exit_json(changed=False, state=state, plan=plan)


if __name__ == "__main__":
    main()
