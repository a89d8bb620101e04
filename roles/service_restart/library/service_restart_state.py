#!/usr/bin/python
"""Read systemd units' and Docker containers' states (and validate configs) in one task."""

DOCUMENTATION = r"""
---
module: service_restart_state
short_description: Read units' and containers' states for a snapshot (changes nothing)
description:
  - One C(systemctl show) for every unit, one C(docker container inspect) per container;
    never changes anything, in check mode or not.
  - With I(config_files) and I(validate), also validates the config files: the gate
    before a restart costs no task of its own.
  - A container's state is put in systemd's words (running C(active), restarting
    C(activating), exited 0 or created C(inactive), exited otherwise C(failed)).
  - With I(requires_of), also reads that unit's own C(Requires=)/C(BindsTo=) (slices and
    targets aside) and, when any unit is a container, the Docker engine C(docker.service),
    leaving out units already listed; in the order their own C(After=) gives.
  - With I(report_kind), the result also carries C(veris_report) with that C(kind), the
    I(units) as C(units) and the required units as C(required) (the C(units.snapshot)
    report): the task is the report, no task of its own emits it.
options:
  units:
    description: Units in order, each C(unit) and C(container) (null for a systemd unit).
    type: list
    elements: dict
    required: true
  requires_of:
    description: Unit whose C(Requires=)/C(BindsTo=) are read too; null for none.
    type: str
  config_files:
    description:
      - Config files validated with I(validate) in the same task (the gate before a
        restart); empty for none.
    type: list
    elements: str
    default: []
  validate:
    description: Validator command, C(%s) replaced by each file; split on whitespace, no shell.
    type: str
  config_errors_max:
    description: Validator error lines reported.
    type: int
    default: 20
  line_max:
    description: Length each error line is cut to.
    type: int
    default: 500
  report_kind:
    description: Also return C(veris_report) (C(units), C(required)) with this C(kind); null for none.
    type: str
author: veris-remediate
"""

EXAMPLES = r"""
- name: Read redis and nginx
  service_restart_state:
    units: [{unit: redis-server.service}, {unit: nginx.service}]
    requires_of: nginx.service
  register: states
"""

RETURN = r"""
states:
  description:
    - One C({unit, active_state, unit_file_state}) per unit; a container adds C(container)
      and C(restart_count).
  returned: always
  type: list
required:
  description: The same for the required units of I(requires_of) not in I(units).
  returned: always
  type: list
details:
  description: Per unit, C(sub_state), C(result) and C(error), to explain a failure.
  returned: always
  type: dict
config_checked:
  description: Whether config files were validated.
  returned: always
  type: bool
config_valid:
  description: Whether every config file validates; null when none was checked.
  returned: always
  type: bool
config_errors:
  description: The failing validators' error lines.
  returned: always
  type: list
veris_report:
  description: C({kind, units, required}), I(units) and I(required) as above.
  returned: when report_kind is set
  type: dict
"""

import json  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

PROPERTIES = ("Id", "ActiveState", "SubState", "UnitFileState", "Result", "NRestarts",
              "Requires", "BindsTo", "After")
ENGINE = "docker.service"


def parse_show(text):
    blocks, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    return blocks


def show(module, units):
    """``systemctl show`` of several units in one call, in the order given."""
    if not units:
        return []
    rc, out, err = module.run_command(
        ["systemctl", "show", "--property=" + ",".join(PROPERTIES), "--"] + list(units)
    )
    if rc != 0:
        module.fail_json(msg="systemctl show failed: %s" % err.strip()[-300:])
    blocks = parse_show(out)
    if len(blocks) != len(units):
        by_id = {b.get("Id"): b for b in blocks}
        blocks = [by_id.get(u, {}) for u in units]
    return blocks


def as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def unit_state(unit, props):
    # Exactly three fields for a unit: other roles' rollback entry points take those.
    return {
        "unit": unit,
        "active_state": props.get("ActiveState") or "unknown",
        "unit_file_state": props.get("UnitFileState", ""),
    }, {"sub_state": props.get("SubState", ""), "result": props.get("Result", ""), "error": "",
        "restarts": as_int(props.get("NRestarts"))}  # fmt: skip


def container_state(module, unit, name):
    rc, out, err = module.run_command(["docker", "container", "inspect", "--", name])
    try:
        data = json.loads(out) if rc == 0 and out.strip() else []
    except ValueError:
        data = []
    if not data:
        missing = "No such" in err
        return {
            "unit": unit, "active_state": "inactive" if missing else "unknown",
            "unit_file_state": "", "container": name, "restart_count": None,
        }, {"sub_state": "missing" if missing else "unknown", "result": "",
            "error": err.strip()[-300:]}  # fmt: skip
    item = data[0]
    state = item.get("State") or {}
    if state.get("Restarting"):
        active = "activating"
    elif state.get("Running"):
        active = "active"
    elif state.get("ExitCode") not in (0, None) or state.get("Error"):
        active = "failed"
    else:
        active = "inactive"
    policy = ((item.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "no"
    return {
        "unit": unit, "active_state": active, "unit_file_state": "restart=" + policy,
        "container": name, "restart_count": int(item.get("RestartCount") or 0),
    }, {"sub_state": state.get("Status", ""), "result": "exit-code %s" % state.get("ExitCode"),
        "error": state.get("Error") or ""}  # fmt: skip


def after_first(units, props):
    """``(unit, props)`` pairs ordered so that a unit comes after those its After= names."""
    pending = list(zip(units, props))
    ordered = []
    while pending:
        for index, (unit, p) in enumerate(pending):
            waits = set(p.get("After", "").split()) & {u for u, _ in pending if u != unit}
            if not waits:
                break
        else:
            index = 0  # an ordering cycle: keep the listed order
        unit, p = pending.pop(index)
        ordered.append((unit, p))
    return ordered


def validate_configs(module):
    """(checked, valid, errors): each file through the validator, as argv (no shell)."""
    params = module.params
    command = (params["validate"] or "").strip()
    if not command or not params["config_files"]:
        return False, None, []
    errors = []
    for path in params["config_files"]:
        argv = [part.replace("%s", path) for part in command.split()]
        rc, out, err = module.run_command(argv)
        if rc != 0:
            errors.extend(err.splitlines() or out.splitlines()
                          or ["%s exited %d for %s" % (argv[0], rc, path)])
    limit = params["line_max"]
    errors = [e if len(e) <= limit else e[: max(limit - 3, 0)] + "..."
              for e in errors[: params["config_errors_max"]]]
    return True, not errors, errors


def main():
    module = AnsibleModule(
        argument_spec=dict(
            units=dict(type="list", elements="dict", required=True),
            requires_of=dict(type="str"),
            config_files=dict(type="list", elements="str", default=[]),
            validate=dict(type="str"),
            config_errors_max=dict(type="int", default=20),
            line_max=dict(type="int", default=500),
            report_kind=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    members = [(str(m.get("unit") or ""), m.get("container") or None)
               for m in module.params["units"]]
    requires_of = module.params["requires_of"]
    for unit, container in members + [(requires_of or "x", None)]:
        if not unit or unit.startswith("-") or (container or "x").startswith("-"):
            module.fail_json(msg="bad unit or container name: %r %r" % (unit, container))

    plain = [u for u, c in members if not c]
    if any(c for _, c in members) and ENGINE not in plain:
        plain.append(ENGINE)
    shown = dict(zip(plain, show(module, plain)))
    # Docker is asked only when its engine runs: with docker.socket, asking would start it.
    engine_up = shown.get(ENGINE, {}).get("ActiveState") == "active"
    states, details = [], {}
    for unit, container in members:
        if container and not engine_up:
            state = {"unit": unit, "active_state": "unknown", "unit_file_state": "",
                     "container": container, "restart_count": None}
            detail = {"sub_state": "unknown", "result": "",
                      "error": "the Docker engine (%s) is not running" % ENGINE}
        elif container:
            state, detail = container_state(module, unit, container)
        else:
            state, detail = unit_state(unit, shown.get(unit, {}))
        states.append(state)
        details[unit] = detail

    required_units = []
    if requires_of:
        props = shown.get(requires_of) or (show(module, [requires_of]) or [{}])[0]
        for name in (props.get("Requires", "") + " " + props.get("BindsTo", "")).split():
            if not name.endswith((".slice", ".target")) and name not in required_units:
                required_units.append(name)
    if any(c for _, c in members):
        required_units.append(ENGINE)
    listed = {u for u, _ in members}
    required_units = [u for u in dict.fromkeys(required_units) if u not in listed]
    required = []
    for unit, props in after_first(required_units, show(module, required_units)):
        state, detail = unit_state(unit, props)
        required.append(state)
        details[unit] = detail
    checked, valid, errors = validate_configs(module)
    extra = {}
    if module.params["report_kind"]:
        extra["veris_report"] = {"kind": module.params["report_kind"], "units": states,
                                 "required": required}
    module.exit_json(changed=False, states=states, required=required, details=details,
                     config_checked=checked, config_valid=valid, config_errors=errors, **extra)


if __name__ == "__main__":
    main()
