"""The thin command line: parse, call the library, print, map VerisError to the exit status."""

from __future__ import annotations

import json
import signal
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
    _err.print(f"[bold red]error:[/] {exc.message}", markup=True, soft_wrap=True)
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
    remediator = Remediator([Path(p) for p in inventory], settings)

    def terminate(signum: int, frame: object) -> None:
        # Not an exception: the fix run in flight is cancelled, rolled back and reported.
        remediator.terminating = True
        _err.print("SIGTERM: cancelling the fix in flight, then rolling back", markup=False)

    signal.signal(signal.SIGTERM, terminate)
    return remediator


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
@click.option(
    "--log",
    "log_file",
    type=click.Path(dir_okay=False),
    help="Another log (e.g. one rotated away); default <state-dir>/audit.jsonl.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def audit_verify(ctx: click.Context, log_file: str | None, as_json: bool) -> None:
    """Check the audit log's chain, key and head anchor; exit 6 at the first bad record."""
    try:
        log = AuditLog.from_settings(_settings(ctx), Path(log_file) if log_file else None)
    except VerisError as exc:
        _fail(exc, as_json)
        return
    check = log.verify()
    if as_json:
        click.echo(json.dumps(check.model_dump(mode="json")))
    elif check.ok:
        keyed = "keyed (hmac-sha256)" if check.keyed else "not keyed"
        anchored = "anchored" if check.anchored else "not anchored"
        click.echo(f"ok: {check.records} records, {keyed}, {anchored}")
    else:
        where = " ".join(
            part
            for part in (
                f"line {check.line}" if check.line else "",
                f"(seq {check.seq})" if check.seq is not None else "",
            )
            if part
        )
        click.echo(
            f"FAILED: {where + ': ' if where else ''}{check.problem} "
            f"({check.records} records check out before it)"
        )
    if not as_json:
        for warning in check.warnings:
            _err.print(f"warning: {warning}", markup=False, soft_wrap=True)
    from .exceptions import AuditError  # the exit code of a failed check

    sys.exit(0 if check.ok else AuditError.exit_code)


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def audit_tail(ctx: click.Context, count: int, as_json: bool) -> None:
    """Print the last N audit records (damaged lines are skipped and counted)."""
    try:
        read = AuditLog.from_settings(_settings(ctx)).read()
    except VerisError as exc:
        _fail(exc, as_json)
        return
    records = read.records[-count:] if count else ()
    if as_json:
        out = {"records": list(records), "skipped_lines": list(read.skipped_lines)}
        click.echo(json.dumps(out, sort_keys=True))
        return

    def show(value: Any) -> str:  # the log is data, not terminal control sequences
        text = "-" if value is None else str(value)
        return text if text.isprintable() else json.dumps(text)

    for r in records:
        data = json.dumps(r["data"], sort_keys=True, separators=(",", ":"), default=str)
        click.echo(
            f"{r['seq']:>6}  {show(r['ts'])}  {show(r['kind'])}  {show(r['run_id'])}  {data}"
        )
    if read.skipped:
        lines = ", ".join(str(n) for n in read.skipped_lines[:10])
        more = ", ..." if read.skipped > 10 else ""
        _err.print(
            f"warning: skipped {read.skipped} damaged line(s): {lines}{more}; "
            "run `veris-remediate audit verify`",
            markup=False,
            soft_wrap=True,
        )


def _store(ctx: click.Context) -> Any:
    from .store import StateStore

    return StateStore(_settings(ctx).state_dir)


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, default=str))


@main.group()
def brake() -> None:
    """Emergency brake: while engaged, no fix is applied and running fixes are cancelled.

    Read-only work (diagnose, handle --check-only, the check run of handle) still runs.
    """


@brake.command("engage")
@click.option("--reason", required=True, help="Why: shown by `brake status` and in reports.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def brake_engage(ctx: click.Context, reason: str, as_json: bool) -> None:
    """Engage the brake: fix runs in flight are cancelled, no fix is applied until release."""
    from .store import operator

    settings = _settings(ctx)
    try:
        fresh = _store(ctx).engage_brake(reason, by=operator(), source="operator")
        if fresh:  # engaged first: a broken audit log must not keep the brake off
            AuditLog.from_settings(settings).append(
                "brake.engaged", {"reason": reason, "by": operator()}
            )
    except VerisError as exc:
        _fail(exc, as_json)
    state = _store(ctx).brake()
    if as_json:
        _echo_json({"engaged": True, "already": not fresh, **state.model_dump(mode="json")})
    elif fresh:
        click.echo(f"brake engaged by {state.by}: {state.reason}")
    else:
        click.echo(f"brake was already engaged: {state.describe()}")


@brake.command("release")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def brake_release(ctx: click.Context, as_json: bool) -> None:
    """Release the brake: fixes may be applied again."""
    from .store import operator

    try:
        # Audited before the release: an unwritable audit log keeps the brake on.
        was = _store(ctx).brake()
        if was is not None:
            AuditLog.from_settings(_settings(ctx)).append(
                "brake.released", {"by": operator(), "was": was.model_dump(mode="json")}
            )
            _store(ctx).release_brake()
    except VerisError as exc:
        _fail(exc, as_json)
    if as_json:
        _echo_json({"released": was is not None})
    else:
        click.echo(f"brake released (it was {was.describe()})" if was else "brake was not engaged")


@brake.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def brake_status(ctx: click.Context, as_json: bool) -> None:
    """Whether the brake is engaged: by whom or by what (the latch), when and why."""
    state = _store(ctx).brake()
    if as_json:
        _echo_json(
            {"engaged": state is not None, **(state.model_dump(mode="json") if state else {})}
        )
    else:
        click.echo(f"brake {state.describe()}" if state else "brake not engaged")


def _print_approval(a: Any) -> None:
    _out.print(
        f"[bold]{a.id}[/]  {a.state}  {a.fix} on {a.host} ({a.alert or '-'}), "
        f"asked {a.created:%Y-%m-%d %H:%M} UTC, expires {a.expires:%Y-%m-%d %H:%M} UTC",
        markup=True,
    )
    for reason in a.reasons:
        _out.print(f"  • {reason}", markup=False)
    for change in a.preview:
        _out.print(f"  ~ {change.get('task')} ({change.get('action')})", markup=False)
        for line in str(change.get("diff", "")).splitlines()[:20]:
            _out.print(f"      {line}", markup=False)


@main.command("approvals")
@click.option("--all", "show_all", is_flag=True, help="Also decided, expired and closed ones.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def approvals_cmd(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Fixes waiting for a person, with the preview each would apply."""
    found = _store(ctx).approvals(None if show_all else "pending")
    if as_json:
        _echo_json({"approvals": [a.model_dump(mode="json") for a in found]})
        return
    if not found:
        click.echo("no approvals pending" if not show_all else "no approvals")
    for a in found:
        _print_approval(a)


@main.command()
@click.argument("approval_id")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help="Routing rules file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def approve(
    ctx: click.Context, approval_id: str, inventory: tuple[str, ...], rules: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Approve a pending fix: a fresh check run; applied only if its preview is unchanged."""
    _run_and_exit(lambda: _remediator(ctx, inventory, rules).approve(approval_id), as_json)


@main.command()
@click.argument("approval_id")
@click.option("--reason", default="", help="Why not: kept in the audit log.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def reject(ctx: click.Context, approval_id: str, reason: str, as_json: bool) -> None:
    """Reject a pending fix: it is closed and nothing runs."""
    from .pipeline import Remediator

    try:
        closed = Remediator([], _settings(ctx)).reject(approval_id, reason)
    except VerisError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        _echo_json(closed.model_dump(mode="json"))
    else:
        click.echo(f"{closed.id} rejected: {closed.fix} on {closed.host} will not run")


@main.command()
@click.argument("run_id")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help="Routing rules file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def rollback(
    ctx: click.Context, run_id: str, inventory: tuple[str, ...], rules: str | None, as_json: bool
) -> None:
    """Restore the snapshot a run took before its fix, and verify it (works under the brake)."""
    _run_and_exit(lambda: _remediator(ctx, inventory, rules).rollback(run_id), as_json)


@runs.command("recover")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help="Routing rules file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def runs_recover(
    ctx: click.Context, inventory: tuple[str, ...], rules: str | None, as_json: bool
) -> None:
    """Finish fixes a killed process left half-done: re-verify, then complete or roll back."""
    try:
        reports = _remediator(ctx, inventory, rules).recover()
    except VerisError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        _echo_json({"recovered": [r.model_dump(mode="json") for r in reports]})
    elif not reports:
        click.echo("nothing to recover")
    for report in reports if not as_json else ():
        _print_report(report)
    sys.exit(max((r.exit_code for r in reports), default=0))


@main.group()
def breaker() -> None:
    """The restart-storm breaker, per host and fix (see docs/SAFETY.md)."""


@breaker.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def breaker_status(ctx: click.Context, as_json: bool) -> None:
    """Every host and fix the breaker tracks: state, failures, ineffective fixes, last fix."""
    rows = _store(ctx).breakers()
    if as_json:
        _echo_json({"breakers": [r.model_dump(mode="json") for r in rows]})
        return
    if not rows:
        click.echo("no fix has run yet")
        return
    table = Table("host", "fix", "state", "failures", "ineffective", "last fix", "reason", box=None)
    for r in rows:
        last = f"{r.last_fix_at:%m-%d %H:%M:%S} {r.last_outcome}" if r.last_fix_at else "-"
        table.add_row(r.host, r.fix, r.state, str(r.failures), str(r.ineffective), last,
                      r.reason or "")  # fmt: skip
    _out.print(table)


@breaker.command("reset")
@click.argument("host")
@click.option("--fix", help="Only this fix (default: every fix on HOST).")
@click.pass_context
def breaker_reset(ctx: click.Context, host: str, fix: str | None) -> None:
    """Close the breaker for HOST after a person fixed the cause."""
    from .store import operator

    try:
        count = _store(ctx).reset_breaker(host, fix)
        AuditLog.from_settings(_settings(ctx)).append(
            "breaker.reset", {"host": host, "fix": fix, "by": operator(), "rows": count}
        )
    except VerisError as exc:
        _fail(exc, False)
        return
    click.echo(f"breaker reset for {host}" + (f" / {fix}" if fix else "") + f" ({count} row(s))")


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


@lab.command("ca-key")
@_prefix
@_subnet
@click.pass_context
def lab_ca_key(ctx: click.Context, prefix: str, first_subnet: int) -> None:
    """Print the path of the SSH CA private key the lab's sshd trusts (for VERIS_SSH_CA_KEY)."""
    click.echo(str(_lab(ctx, prefix, first_subnet).ssh_ca_key()))
