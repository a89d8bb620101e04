"""The thin command line: parse, call the library, print, map VerisError to the exit status."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from .audit import AuditLog
from .exceptions import UsageError, VerisError
from .report import RunReport, to_json, to_markdown
from .settings import Settings, settings_from_env
from .workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])
_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


def _fail(exc: VerisError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"error": exc.message, "exit_code": exc.exit_code}))
    _err.print(f"[bold red]error:[/] {exc.message}", markup=True)
    sys.exit(exc.exit_code)


def _read_payload(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read(2 * 1024 * 1024)
        with open(path, "rb") as fh:
            return fh.read(2 * 1024 * 1024)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _remediator(ctx: click.Context, inventory: tuple[str, ...], rules: str | None = None) -> Any:
    from .pipeline import Remediator  # keeps `lab`, `audit`, `brake` start-up light

    settings = _settings(ctx)
    if rules:
        settings = settings.model_copy(update={"rules_file": Path(rules)})
    return Remediator([Path(p) for p in inventory], settings)


def _print_report(report: RunReport) -> None:
    colour = {0: "green", 4: "yellow", 5: "yellow"}.get(report.exit_code, "red")
    _out.print(
        f"[bold]{report.run_id}[/]  {report.alert_type or '-'} on {', '.join(report.hosts) or '-'}"
        f"  → [bold {colour}]{report.outcome}[/] (decision {report.decision}, "
        f"confidence {report.confidence:.2f})"
    )
    for reason in report.reasons:
        _out.print(f"  • {reason}", markup=False)
    for cause in report.causes:
        fix = f"fix: {cause.implied_fix}" if cause.implied_fix else "escalate: no safe fix"
        _out.print(f"  likely cause: {cause.summary} ({cause.confidence:.2f}; {fix})", markup=False)
        for evidence in cause.evidence[:5]:
            _out.print(f"      - {evidence}", markup=False)
    for finding in report.findings:
        _out.print(f"  [{finding.severity}] {finding.host}: {finding.message}", markup=False)
    if report.preview:
        _out.print("predicted by the check run:" if report.check_only else "changes:")
        for change in report.preview:
            _out.print(f"  ~ {change.task} ({change.action})", markup=False)
            for line in change.diff.splitlines()[:40]:
                _out.print(f"      {line}", markup=False, highlight=False)
    table = Table("phase", "status", "seconds", "detail", box=None, pad_edge=False)
    for phase in report.phases:
        table.add_row(phase.name, phase.status, f"{phase.seconds:.2f}", phase.detail)
    _out.print(table)


def _run_and_exit(produce: Callable[[], RunReport], as_json: bool) -> None:
    """Print a report (JSON or text) and exit with its outcome's code."""
    try:
        report = produce()
    except VerisError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        click.echo(to_json(report))
    else:
        _print_report(report)
    sys.exit(report.exit_code)


def _inventory_option(fn: F) -> F:
    return click.option(
        "-i",
        "--inventory",
        "inventory",
        multiple=True,
        required=True,
        type=click.Path(exists=True),
        help="Ansible inventory (repeatable).",
    )(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="VERIS_STATE_DIR",
    help="Where runs, audit log and locks live (default ~/.local/state/veris-remediate).",
)
@click.pass_context
def main(ctx: click.Context, state_dir: str | None) -> None:
    """veris-remediate: alerts in, previewed, scored, verified and reversible fixes out."""
    try:
        ctx.obj = {"settings": settings_from_env(state_dir=Path(state_dir) if state_dir else None)}
    except VerisError as exc:
        _fail(exc, False)


@main.command()
@click.argument("alert_file")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help="Routing rules file.")
@click.option("--check-only", is_flag=True, help="Diagnose and preview; apply nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def handle(
    ctx: click.Context,
    alert_file: str,
    inventory: tuple[str, ...],
    rules: str | None,
    check_only: bool,
    as_json: bool,
) -> None:
    """Run the whole loop for one alert payload (a file, or - for stdin)."""
    _run_and_exit(
        lambda: _remediator(ctx, inventory, rules).handle(
            _read_payload(alert_file), check_only=check_only
        ),
        as_json,
    )


@main.command()
@click.argument("alert_file")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def diagnose(
    ctx: click.Context,
    alert_file: str,
    inventory: tuple[str, ...],
    rules: str | None,
    as_json: bool,
) -> None:
    """Read-only diagnosis: findings, nothing changed."""
    _run_and_exit(
        lambda: _remediator(ctx, inventory, rules).diagnose(_read_payload(alert_file)), as_json
    )


@main.command()
@click.argument("alert_file")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Write the rendered run files here.")
@click.pass_context
def plan(
    ctx: click.Context,
    alert_file: str,
    inventory: tuple[str, ...],
    rules: str | None,
    out: str | None,
) -> None:
    """Show (and with --out, write) what would run; run nothing."""
    from .render import render_extravars, render_target_inventory
    from .resources import playbooks_dir

    try:
        plans = _remediator(ctx, inventory, rules).plan(_read_payload(alert_file))
    except VerisError as exc:
        _fail(exc, False)
        return
    for n, p in enumerate(plans):
        steps = [s for s in (p.diagnose, p.preview, p.apply) if s is not None]
        target = f"service {p.service.name} (units: {', '.join(p.units)})" if p.service else "host"
        fix = (
            f"{p.fix.name} ({p.fix.scope}, risk {p.fix.risk}, "
            f"{'reversible' if p.fix.reversible else 'irreversible'})"
            if p.fix
            else "no fix"
        )
        _out.print(f"[bold]{p.host}[/]: {p.workflow} / {fix} for {target}", markup=True)
        for s in steps:
            _out.print(f"  {s.phase:8} {s.playbook}{'  --check --diff' if s.check else ''}")
            if out:
                d = Path(out) / f"{n}-{p.host}" / s.phase
                d.mkdir(parents=True, exist_ok=True)
                (d / "extravars.yml").write_text(render_extravars(s.extravars))
                (d / "target_inventory.yml").write_text(render_target_inventory(p.host))
                (d / s.playbook).write_text((playbooks_dir() / s.playbook).read_text())
    if out:
        _out.print(f"written to {out}")


@main.command()
@_inventory_option
@click.option("--limit", help="Only this inventory host.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def baseline(
    ctx: click.Context, inventory: tuple[str, ...], limit: str | None, as_json: bool
) -> None:
    """Record last-known-good copies of declared config files while services are healthy.

    Only services that are healthy right now and whose validator passes are recorded;
    config repair restores the newest copy that still validates.
    """
    try:
        result = _remediator(ctx, inventory).baseline(limit=limit)
    except VerisError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json")))
    else:
        table = Table("host", "service", "file", "status", "detail", box=None, pad_edge=False)
        for e in result.entries:
            detail = e.reason or (e.sha256[:12] if e.sha256 else "")
            table.add_row(e.host, e.service or "-", e.path or "-", e.status, detail)
        _out.print(f"baseline run {result.run_id}")
        _out.print(table)
    sys.exit(result.exit_code)


@main.command("report")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md")
@click.pass_context
def report_cmd(ctx: click.Context, run_id: str, fmt: str) -> None:
    """The incident report of a run."""
    try:
        data = Workspace(_settings(ctx).state_dir).read_record(run_id, "report")
    except VerisError as exc:
        _fail(exc, False)
        return
    report = RunReport.model_validate(data)
    click.echo(to_json(report) if fmt == "json" else to_markdown(report), nl=fmt == "json")


@main.group()
def runs() -> None:
    """Run history."""


@runs.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs_list(ctx: click.Context, as_json: bool) -> None:
    """List past runs: id, alert, hosts and outcome."""
    ws = Workspace(_settings(ctx).state_dir)
    rows = []
    for run_id in ws.list_runs():
        try:
            r = ws.read_record(run_id, "report")
        except VerisError:
            r = {"outcome": "incomplete"}
        rows.append(
            {
                "run_id": run_id,
                "alert_type": r.get("alert_type"),
                "hosts": r.get("hosts", []),
                "outcome": r.get("outcome"),
                "exit_code": r.get("exit_code"),
            }
        )
    if as_json:
        click.echo(json.dumps({"runs": rows}))
        return
    table = Table("run", "alert", "hosts", "outcome", box=None)
    for row in rows:
        table.add_row(
            row["run_id"],
            str(row["alert_type"] or "-"),
            ", ".join(row["hosts"]),
            str(row["outcome"]),
        )
    _out.print(table)


@runs.command("show")
@click.argument("run_id")
@click.pass_context
def runs_show(ctx: click.Context, run_id: str) -> None:
    """Show one run's stored report (JSON)."""
    try:
        click.echo(json.dumps(Workspace(_settings(ctx).state_dir).read_record(run_id, "report")))
    except VerisError as exc:
        _fail(exc, True)


@main.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Check the audit log's hash chain; exit 6 at the first edited or missing record."""
    check = AuditLog(_settings(ctx).state_dir / "audit.jsonl").verify()
    click.echo(json.dumps(check.model_dump()))
    sys.exit(0 if check.ok else 6)


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True)
@click.pass_context
def audit_tail(ctx: click.Context, count: int) -> None:
    """Print the last N audit records."""
    for record in AuditLog(_settings(ctx).state_dir / "audit.jsonl").tail(count):
        click.echo(json.dumps(record, sort_keys=True))


@main.group()
def brake() -> None:
    """Emergency brake: while engaged, no fix is applied and running fixes are cancelled."""


@brake.command("engage")
@click.option("--reason", required=True)
@click.pass_context
def brake_engage(ctx: click.Context, reason: str) -> None:
    """Engage the brake: no fix is applied until it is released."""
    settings = _settings(ctx)
    Workspace(settings.state_dir).engage_brake(reason)
    AuditLog(settings.state_dir / "audit.jsonl").append("brake.engaged", {"reason": reason})
    click.echo("brake engaged")


@brake.command("release")
@click.pass_context
def brake_release(ctx: click.Context) -> None:
    """Release the brake: fixes may be applied again."""
    settings = _settings(ctx)
    Workspace(settings.state_dir).release_brake()
    AuditLog(settings.state_dir / "audit.jsonl").append("brake.released", {})
    click.echo("brake released")


@brake.command("status")
@click.pass_context
def brake_status(ctx: click.Context) -> None:
    """Say whether the brake is engaged, since when and why."""
    state = Workspace(_settings(ctx).state_dir).brake()
    click.echo(json.dumps({"engaged": state is not None, **(state or {})}))


@main.group()
def lab() -> None:
    """Disposable systemd hosts (root, systemd-nspawn) to try remediations on."""


def _lab(ctx: click.Context, prefix: str, first_subnet: int, features: tuple[str, ...] = ()) -> Any:
    from .lab import Lab

    settings = _settings(ctx)
    return Lab(
        settings.state_dir, settings.lab_cache_dir, prefix=prefix, first_subnet=first_subnet,
        features=features,
    )  # fmt: skip


_prefix = click.option("--prefix", default="lab", show_default=True, help="Host name prefix.")
_subnet = click.option(
    "--first-subnet",
    default=1,
    show_default=True,
    type=int,
    help="Host k uses 198.18.(first-subnet+k-1).0/30.",
)


@lab.command("up")
@click.option("--hosts", default=1, show_default=True, type=click.IntRange(1, 50))
@click.option(
    "--with",
    "features",
    multiple=True,
    type=click.Choice(["postgres", "docker"]),
    help="Also run PostgreSQL and/or Docker (with a container 'web') on every host; "
    "repeatable. Lean hosts mask them.",
)
@_prefix
@_subnet
@click.pass_context
def lab_up(
    ctx: click.Context, hosts: int, features: tuple[str, ...], prefix: str, first_subnet: int
) -> None:
    """Boot lab hosts (or keep those running) and print their inventory's path."""
    try:
        path = _lab(ctx, prefix, first_subnet, features).up(hosts)
    except VerisError as exc:
        _fail(exc, False)
        return
    click.echo(str(path))


@lab.command("down")
@_prefix
@_subnet
@click.pass_context
def lab_down(ctx: click.Context, prefix: str, first_subnet: int) -> None:
    """Remove every host of the lab and all it left on this machine."""
    try:
        _lab(ctx, prefix, first_subnet).down()
    except VerisError as exc:
        _fail(exc, False)
    click.echo("lab down")


@lab.command("status")
@_prefix
@_subnet
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lab_status(ctx: click.Context, prefix: str, first_subnet: int, as_json: bool) -> None:
    """List the lab's hosts: address, running, ready."""
    hosts = _lab(ctx, prefix, first_subnet).status()
    if as_json:
        click.echo(json.dumps({"hosts": [h.model_dump() for h in hosts]}))
        return
    table = Table("host", "address", "running", "ready", box=None)
    for h in hosts:
        table.add_row(h.name, h.address, str(h.running), str(h.ready))
    _out.print(table)


@lab.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_prefix
@_subnet
@click.pass_context
def lab_ssh(
    ctx: click.Context, host: str, command: tuple[str, ...], prefix: str, first_subnet: int
) -> None:
    """Run COMMAND as root on a lab host (an interactive shell without one)."""
    import os
    import shlex

    argv = _lab(ctx, prefix, first_subnet).ssh_argv(host)
    # ssh hands the remote shell one string: quote each word so it arrives as given.
    os.execvp(argv[0], [*argv, shlex.join(command)] if command else argv)  # noqa: S606


@lab.command("inventory")
@_prefix
@_subnet
@click.pass_context
def lab_inventory(ctx: click.Context, prefix: str, first_subnet: int) -> None:
    """Print the path of the lab's Ansible inventory."""
    click.echo(str(_lab(ctx, prefix, first_subnet).inventory_path()))
