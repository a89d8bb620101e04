"""The thin command line: parse, call the library, print, map VerisError to the exit status.

Text for people on stdout by default, one JSON object with ``--json``; progress and errors
on stderr. Every error ends as one line and its exit code (``--debug``: the traceback too).
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.table import Table
from rich.text import Text

from .audit import AuditLog
from .console import StreamConsole, command_line, fields, report_view
from .exceptions import UsageError, VerisError
from .progress import ConsoleProgress
from .report import RunReport, to_html, to_json, to_markdown
from .settings import Settings, default_state_dir, settings_from_env
from .workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])
_out = StreamConsole()
_err = StreamConsole(stderr=True)
_JSON_HELP = "Print one JSON object on stdout instead of text."
_RULES_HELP = "Routing rules file (YAML) instead of the shipped rules (env VERIS_RULES_FILE)."


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


def _fail(exc: VerisError, as_json: bool) -> NoReturn:
    """Hand the error to the group (``_Cli.main``): one line, its exit code, JSON if asked."""
    raise exc


def _before_dashdash(argv: Sequence[str]) -> list[str]:
    return list(argv[: argv.index("--")] if "--" in argv else argv)


def _error_hint(exc: BaseException, argv: Sequence[str]) -> str | None:
    """What to try next, when the message does not already say it."""
    if isinstance(exc, click.UsageError):
        path = exc.ctx.command_path if exc.ctx else "veris-remediate"
        return f"see `{path} --help`"
    if isinstance(exc, UsageError) and exc.message.startswith("no run "):
        return (
            "runs stay in the state dir that made them: pass that --state-dir "
            "(`make demo` uses ./.state), or see `veris-remediate runs list`"
        )
    if isinstance(exc, VerisError):
        return None
    return "this is a bug: rerun with --debug for the traceback, and report it"


def _show_error(exc: BaseException, argv: Sequence[str], exit_code: int) -> NoReturn:
    """The one error line (and hint) on stderr; with --json also one JSON object on stdout."""
    words = _before_dashdash(argv)
    if "--debug" in words and not isinstance(exc, click.UsageError):
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, click.ClickException):
        message = exc.format_message()
    elif isinstance(exc, VerisError):
        message = exc.message
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
    message = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    hint = _error_hint(exc, argv)
    if "--json" in words or "--format=json" in words or _option_value(words, "--format") == "json":
        body: dict[str, Any] = {"error": message, "exit_code": exit_code}
        if hint:
            body["hint"] = hint
        click.echo(json.dumps(body))
    line = Text("error: ", style="bold red")
    line.append(message)
    if hint:
        line.append(f" (hint: {hint})", style="dim")
    _err.print(line, soft_wrap=True)
    sys.exit(exit_code)


def _option_value(words: Sequence[str], option: str) -> str | None:
    for n, word in enumerate(words[:-1]):
        if word == option:
            return words[n + 1]
    return None


class _Cli(click.Group):
    """The command group; every error ends here as one line and its exit code."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        kwargs["standalone_mode"] = False
        if not rest:  # the name hints and --help show, also under `python -m veris_remediate`
            kwargs["prog_name"] = "veris-remediate"
        try:
            return super().main(argv, *rest, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            _err.print("aborted")
            sys.exit(130)
        except click.ClickException as exc:
            _show_error(exc, argv, exc.exit_code)
        except VerisError as exc:
            _show_error(exc, argv, exc.exit_code)
        except KeyboardInterrupt:
            _err.print("interrupted")
            sys.exit(130)
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away (| head): nothing left to say
            sys.exit(1)
        except Exception as exc:
            _show_error(exc, argv, 6)


def _read_payload(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read(2 * 1024 * 1024)
        with open(path, "rb") as fh:
            return fh.read(2 * 1024 * 1024)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _progress(ctx: click.Context) -> ConsoleProgress | None:
    """Progress on stderr: on a terminal unless --json, or whenever --progress asks."""
    wanted: bool | None = ctx.find_root().params.get("progress")
    if wanted is None:
        as_json = bool(ctx.params.get("as_json")) or ctx.params.get("fmt") == "json"
        wanted = not as_json and _err.is_terminal
    if not wanted:
        return None
    progress = ConsoleProgress(_err.console)
    ctx.call_on_close(progress.close)  # stops a spinner, whatever happened
    return progress


def _remediator(ctx: click.Context, inventory: tuple[str, ...], rules: str | None = None) -> Any:
    from .pipeline import Remediator  # keeps `lab`, `audit`, `brake` start-up light

    settings = _settings(ctx)
    if rules:
        settings = settings.model_copy(update={"rules_file": Path(rules)})
    remediator = Remediator([Path(p) for p in inventory], settings, progress=_progress(ctx))

    def terminate(signum: int, frame: object) -> None:
        # Not an exception: the fix run in flight is cancelled, rolled back and reported.
        remediator.terminating = True
        _err.print("SIGTERM: cancelling the fix in flight, then rolling back", markup=False)

    signal.signal(signal.SIGTERM, terminate)
    return remediator


def _command(*words: str) -> str:
    """A veris-remediate command line to copy, with --state-dir when it is not the default."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    argv = ["veris-remediate"]
    if root is not None and isinstance(root.obj, dict) and "settings" in root.obj:
        state = _settings(root).state_dir
        if state.absolute() != default_state_dir().absolute():
            argv += ["--state-dir", str(state)]
    return shlex.join([*argv, *words])


def _print_report(report: RunReport) -> None:
    _out.print(report_view(report))
    _out.print(command_line("report", _command("report", report.run_id)), soft_wrap=True)


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
        help="Ansible inventory: a file or directory (repeatable; hosts must declare "
        "veris_services).",
    )(fn)


@click.group(
    cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(package_name="veris-remediate", prog_name="veris-remediate")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="VERIS_STATE_DIR",
    help="Where runs, audit log and locks live (env VERIS_STATE_DIR; "
    "default ~/.local/state/veris-remediate).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr (default: only on a terminal, and never with --json).",
)
@click.option("--debug", is_flag=True, help="On an error, also print the traceback.")
@click.pass_context
def main(ctx: click.Context, state_dir: str | None, progress: bool | None, debug: bool) -> None:
    """veris-remediate: alerts in, previewed, scored, verified and reversible fixes out.

    Text for people by default, one JSON object with --json. Exit codes: 0 resolved or
    nothing to do, 2 usage, 3 rejected, 4 escalated, 5 rolled back, 6 failed, 7 brake.
    """
    try:
        ctx.obj = {"settings": settings_from_env(state_dir=Path(state_dir) if state_dir else None)}
    except VerisError as exc:
        _fail(exc, False)


@main.command()
@click.argument("alert_file")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help=_RULES_HELP)
@click.option(
    "--check-only", is_flag=True, help="Diagnose and preview (--check --diff); apply nothing."
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def handle(
    ctx: click.Context,
    alert_file: str,
    inventory: tuple[str, ...],
    rules: str | None,
    check_only: bool,
    as_json: bool,
) -> None:
    """Run the whole loop for one alert payload (a file, or - for stdin).

    Alertmanager/Grafana webhooks, Sentinel payloads and generic alerts: route to a host
    and fix, check-run it, decide, apply, verify, and roll back if health fails. The exit
    code is the outcome's (see `veris-remediate --help`).
    """
    _run_and_exit(
        lambda: _remediator(ctx, inventory, rules).handle(
            _read_payload(alert_file), check_only=check_only
        ),
        as_json,
    )


@main.command()
@click.argument("alert_file")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help=_RULES_HELP)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def diagnose(
    ctx: click.Context,
    alert_file: str,
    inventory: tuple[str, ...],
    rules: str | None,
    as_json: bool,
) -> None:
    """Read-only diagnosis of an alert payload (a file, or - for stdin): findings and likely
    causes, nothing changed."""
    _run_and_exit(
        lambda: _remediator(ctx, inventory, rules).diagnose(_read_payload(alert_file)), as_json
    )


@main.command()
@click.argument("alert_file")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help=_RULES_HELP)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Also write each run's playbook, extra vars and target inventory under this directory.",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def plan(
    ctx: click.Context,
    alert_file: str,
    inventory: tuple[str, ...],
    rules: str | None,
    out: str | None,
    as_json: bool,
) -> None:
    """Show (and with --out, write) the runs an alert payload would make; run nothing."""
    from .render import render_extravars, render_target_inventory
    from .resources import playbooks_dir

    try:
        plans = _remediator(ctx, inventory, rules).plan(_read_payload(alert_file))
    except VerisError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"plans": [p.model_dump(mode="json") for p in plans]}, default=str))
    for n, p in enumerate(plans):
        steps = [s for s in (p.diagnose, p.preview, p.apply) if s is not None]
        target = f"service {p.service.name} (units: {', '.join(p.units)})" if p.service else "host"
        fix = (
            f"{p.fix.name} ({p.fix.scope}, risk {p.fix.risk}, "
            f"{'reversible' if p.fix.reversible else 'irreversible'})"
            if p.fix
            else "no fix"
        )
        if not as_json:
            _out.print(Text(f"{p.host}: {p.workflow} / {fix} for {target}", style="bold"))
        for s in steps:
            if not as_json:
                _out.print(f"  {s.phase:8} {s.playbook}{'  --check --diff' if s.check else ''}")
            if out:
                d = Path(out) / f"{n}-{p.host}" / s.phase
                d.mkdir(parents=True, exist_ok=True)
                (d / "extravars.yml").write_text(render_extravars(s.extravars))
                (d / "target_inventory.yml").write_text(render_target_inventory(p.host))
                (d / s.playbook).write_text((playbooks_dir() / s.playbook).read_text())
    if out and not as_json:
        _out.print(f"written to {out}")


@main.command()
@_inventory_option
@click.option("--limit", help="Only this inventory host.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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


def _stored_report(ctx: click.Context, run_id: str) -> RunReport:
    from pydantic import ValidationError as PydanticValidationError

    data = Workspace(_settings(ctx).state_dir).read_record(run_id.strip(), "report")
    try:
        return RunReport.model_validate(data)
    except PydanticValidationError as exc:
        raise UsageError(f"run {run_id}: its report.json is not a report ({exc.error_count()} "
                         "problems); it may come from another version") from exc  # fmt: skip


@main.command("report")
@click.argument("run_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "json", "html"]),
    default="md",
    show_default=True,
    help="md: Markdown to paste as an issue or PR body; json: the stored report; "
    "html: one self-contained page.",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the report to this file (and print its path) instead of stdout.",
)
@click.pass_context
def report_cmd(
    ctx: click.Context, run_id: str, fmt: str, as_json: bool, output: str | None
) -> None:
    """The incident report of a run: alert, likely cause, preview with diffs, decision,
    what was applied, health before and after, rollback, and a timeline of phases."""
    report = _stored_report(ctx, run_id)
    fmt = "json" if as_json else fmt
    render = {"json": to_json, "md": to_markdown, "html": to_html}[fmt]
    text = render(report)
    text = text if text.endswith("\n") else text + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from exc
    click.echo(json.dumps({"written": output}) if as_json else output)


@main.group()
def runs() -> None:
    """Run history: list runs, show one, recover runs a killed process left half-done."""


@runs.command("list")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def runs_list(ctx: click.Context, as_json: bool) -> None:
    """List past runs, oldest first: id, alert, hosts and outcome."""
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
    if not rows:
        _out.print(f"no runs yet in {_settings(ctx).state_dir}")
        return
    table = Table("run", "alert", "hosts", "outcome", box=None, pad_edge=False,
                  header_style="dim")  # fmt: skip
    for row in rows:
        table.add_row(
            row["run_id"],
            str(row["alert_type"] or "-"),
            ", ".join(row["hosts"]) or "-",
            str(row["outcome"]),
        )
    _out.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def runs_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show one run: what happened, why, and its phases (`report` for the full report)."""
    if as_json:  # the stored record as it is
        data = Workspace(_settings(ctx).state_dir).read_record(run_id.strip(), "report")
        click.echo(json.dumps(data))
        return
    _print_report(_stored_report(ctx, run_id))


@main.group()
def audit() -> None:
    """The tamper-evident audit log: verify its chain, or show its last records."""


@audit.command("verify")
@click.option(
    "--log",
    "log_file",
    type=click.Path(dir_okay=False),
    help="Another log (e.g. one rotated away); default <state-dir>/audit.jsonl.",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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
@click.option(
    "-n",
    "count",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many records (0: none, only the damaged-line count).",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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

    def pairs(data: Any) -> str:  # key=value, values quoted only when they need it
        if not isinstance(data, dict):
            return json.dumps(data, default=str)
        out = []
        for key, value in sorted(data.items()):
            text = value if isinstance(value, str) else None
            plain = text is not None and text.isprintable() and text and " " not in text
            shown = text if plain else json.dumps(value, separators=(",", ":"), default=str)
            if isinstance(value, list) and any(isinstance(v, dict) for v in value):
                shown = f"[{len(value)} entries: --json shows them]"
            out.append(f"{show(key)}={shown}")
        return " ".join(out)

    for r in records:
        click.echo(
            f"{r['seq']:>6}  {show(r['ts'])}  {show(r['kind'])}  {show(r['run_id'])}  "
            f"{pairs(r['data'])}"
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

    return StateStore.from_settings(_settings(ctx))


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, default=str))


@main.group()
def brake() -> None:
    """Emergency brake: while engaged, no fix is applied and running fixes are cancelled.

    Read-only work (diagnose, handle --check-only, the check run of handle) still runs.
    """


@brake.command("engage")
@click.option("--reason", required=True, help="Why: shown by `brake status` and in reports.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def brake_status(ctx: click.Context, as_json: bool) -> None:
    """Whether the brake is engaged: by whom or by what (the latch), when and why."""
    state = _store(ctx).brake()
    if as_json:
        _echo_json(
            {"engaged": state is not None, **(state.model_dump(mode="json") if state else {})}
        )
    elif state is None:
        _out.print("brake not engaged: fixes may be applied")
    else:
        who = "the latch (automatically)" if state.source == "latch" else state.by
        _out.print(Text("brake engaged: no fix is applied", style="bold red"))
        _out.print(fields([("by", who), ("since", f"{state.since:%Y-%m-%d %H:%M:%S} UTC"),
                           ("reason", str(state.reason))]))  # fmt: skip


def _print_approval(a: Any) -> None:
    from .console import bullets

    head = Text(a.id, style="bold")
    head.append(f"  {a.state}  {a.fix} on {a.host} ({a.alert or '-'})")
    preview = Text()
    for n, change in enumerate(a.preview):
        preview.append(("\n" if n else "") + f"~ {change.get('task')} ({change.get('action')})")
        for line in str(change.get("diff", "")).splitlines()[:20]:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
            preview.append(f"\n    {line}", style=style)
    rows: list[tuple[str, Any]] = [
        ("asked", f"{a.created:%Y-%m-%d %H:%M} UTC"),
        ("expires", f"{a.expires:%Y-%m-%d %H:%M} UTC"),
    ]
    if a.reasons:
        rows.append(("why", bullets(a.reasons)))
    if a.preview:
        rows.append(("preview", preview))
    if a.state == "pending":
        rows.append(("decide", f"{_command('approve', a.id)} -i INVENTORY  or  "
                               f"{_command('reject', a.id)}"))  # fmt: skip
    _out.print(head)
    _out.print(fields(rows))


@main.command("approvals")
@click.option("--all", "show_all", is_flag=True, help="Also decided, expired and closed ones.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def approvals_cmd(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Fixes waiting for a person, with the preview each would apply."""
    found = _store(ctx).approvals(None if show_all else "pending")
    if as_json:
        _echo_json({"approvals": [a.model_dump(mode="json") for a in found]})
        return
    if not found:
        click.echo("no approvals pending" if not show_all else "no approvals")
    for n, a in enumerate(found):
        if n:
            _out.print("")
        _print_approval(a)


@main.command()
@click.argument("approval_id")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help=_RULES_HELP)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help=_RULES_HELP)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def rollback(
    ctx: click.Context, run_id: str, inventory: tuple[str, ...], rules: str | None, as_json: bool
) -> None:
    """Restore the snapshot a run took before its fix, and verify it (works under the brake)."""
    _run_and_exit(lambda: _remediator(ctx, inventory, rules).rollback(run_id), as_json)


@runs.command("recover")
@_inventory_option
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help=_RULES_HELP)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
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
    table = Table("host", "fix", "state", "failures", "ineffective", "last fix", "reason",
                  box=None, pad_edge=False, header_style="dim")  # fmt: skip
    for r in rows:
        last = f"{r.last_fix_at:%m-%d %H:%M:%S} {r.last_outcome}" if r.last_fix_at else "-"
        table.add_row(r.host, r.fix, r.state, str(r.failures), str(r.ineffective), last,
                      r.reason or "")  # fmt: skip
    _out.print(table)


@breaker.command("reset")
@click.argument("host")
@click.option("--fix", help="Only this fix (default: every fix on HOST).")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def breaker_reset(ctx: click.Context, host: str, fix: str | None, as_json: bool) -> None:
    """Close the breaker for HOST after a person fixed the cause."""
    from .store import operator

    try:
        count = _store(ctx).reset_breaker(host, fix)
        AuditLog.from_settings(_settings(ctx)).append(
            "breaker.reset", {"host": host, "fix": fix, "by": operator(), "rows": count}
        )
    except VerisError as exc:
        _fail(exc, as_json)
    if as_json:
        _echo_json({"host": host, "fix": fix, "reset": count})
        return
    click.echo(f"breaker reset for {host}" + (f" / {fix}" if fix else "") + f" ({count} row(s))")


@main.command()
@_inventory_option
@click.option(
    "--listen",
    help="HOST:PORT to listen on (default 127.0.0.1:9095, env VERIS_SERVE_LISTEN).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File (0600) holding the bearer token Alertmanager sends (or env VERIS_SERVE_TOKEN).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Accept alerts without a token: only on a loopback address, only to try it out.",
)
@click.option("--workers", type=click.IntRange(1, 32), help="Runs at once (default 2).")
@click.option("--queue-limit", type=click.IntRange(1), help="Queued incidents before 503.")
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), help=_RULES_HELP)
@click.pass_context
def serve(
    ctx: click.Context,
    inventory: tuple[str, ...],
    listen: str | None,
    token_file: str | None,
    insecure_no_auth: bool,
    workers: int | None,
    queue_limit: int | None,
    rules: str | None,
) -> None:
    """Receive alerts (POST /alerts), queue them durably and remediate them in the background.

    Answers Alertmanager in milliseconds; also GET /metrics, /healthz and /readyz.
    SIGTERM stops intake and lets runs in flight finish (a second one cancels their fixes).
    """
    import logging
    import os

    from pydantic import ValidationError as PydanticValidationError

    from .serve import run_server

    given = {
        "serve_listen": listen,
        "serve_token_file": Path(token_file) if token_file else None,
        "serve_workers": workers,
        "serve_queue_limit": queue_limit,
        "rules_file": Path(rules) if rules else None,
    }
    settings = _settings(ctx)
    try:
        settings = Settings.model_validate(
            {**dict(settings), **{k: v for k, v in given.items() if v is not None}}
        )
    except PydanticValidationError as exc:
        _fail(UsageError(f"invalid serve settings: {exc.errors()[0]['msg']}"), False)
    log = logging.getLogger("veris_remediate.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        code = run_server(settings, [Path(p) for p in inventory], insecure_no_auth=insecure_no_auth)
    except VerisError as exc:
        _fail(exc, False)
        return
    sys.stderr.flush()
    if code:
        os._exit(code)  # runs still in flight: their threads must not hold the exit
    sys.exit(code)


@main.group()
def lab() -> None:
    """Disposable systemd hosts (root, systemd-nspawn) to try remediations on.

    Hosts PREFIX1..N run real systemd, sshd, ufw, nginx and redis, each in its own network
    namespace on 198.18.(first-subnet+k-1).2. A state dir holds one lab: without --prefix,
    every command works on the lab recorded there.
    """


def _lab(
    ctx: click.Context, prefix: str | None, first_subnet: int | None, features: tuple[str, ...] = ()
) -> Any:
    """The lab the options name; what they leave out comes from the lab the state dir holds."""
    from .lab import Lab

    settings = _settings(ctx)
    recorded = Lab.recorded(settings.state_dir, settings.lab_cache_dir)
    if recorded is not None and prefix in (None, recorded.prefix):
        prefix = recorded.prefix
        first_subnet = recorded.first_subnet if first_subnet is None else first_subnet
        features = features or recorded.features
    return Lab(
        settings.state_dir, settings.lab_cache_dir, prefix=prefix or "lab",
        first_subnet=1 if first_subnet is None else first_subnet, features=features,
        progress=_progress(ctx),
    )  # fmt: skip


_prefix = click.option(
    "--prefix",
    help="Host name prefix, 1-6 lowercase letters (default: the lab recorded in the state "
    "dir, else 'lab').",
)
_subnet = click.option(
    "--first-subnet",
    type=click.IntRange(1, 255),
    help="Host k uses 198.18.(first-subnet+k-1).0/30 (default: the recorded lab's, else 1).",
)


@lab.command("up")
@click.option(
    "--hosts",
    default=1,
    show_default=True,
    type=click.IntRange(1, 50),
    help="How many hosts (running ones are kept; more are booted).",
)
@click.option(
    "--with",
    "features",
    multiple=True,
    type=click.Choice(["postgres", "docker", "execnode"]),
    help="Also run PostgreSQL and/or Docker (with a container 'web') on every host; "
    "repeatable. Lean hosts mask them.",
)
@_prefix
@_subnet
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def lab_up(
    ctx: click.Context,
    hosts: int,
    features: tuple[str, ...],
    prefix: str | None,
    first_subnet: int | None,
    as_json: bool,
) -> None:
    """Boot lab hosts (or keep those running) and print their inventory's path.

    In a pipe only the path is printed (`INV=$(veris-remediate lab up)`); on a terminal
    also the hosts and what to try next. The first run builds the root file system.
    """
    the_lab = _lab(ctx, prefix, first_subnet, features)
    path = the_lab.up(hosts)
    names = the_lab.host_names()
    if as_json:
        _echo_json({"inventory": str(path), "prefix": the_lab.prefix,
                    "first_subnet": the_lab.first_subnet, "hosts": names})  # fmt: skip
    elif not _out.is_terminal:
        click.echo(str(path))
    else:
        first = names[0] if names else f"{the_lab.prefix}1"
        _out.print(fields([("hosts", ", ".join(names)), ("inventory", str(path))]))
        for command in (
            _command("lab", "ssh", first, "--", "systemctl", "is-active", "nginx"),
            _command("handle", "ALERT.json", "-i", str(path), "--check-only"),
        ):
            _out.print(command_line("try", command), soft_wrap=True)


@lab.command("down")
@_prefix
@_subnet
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def lab_down(
    ctx: click.Context, prefix: str | None, first_subnet: int | None, as_json: bool
) -> None:
    """Remove every host of the lab and all it left on this machine."""
    removed = _lab(ctx, prefix, first_subnet).down()
    if as_json:
        _echo_json({"removed": removed})
    elif removed:
        _out.print(f"removed {', '.join(removed)}")
    else:
        _out.print("no lab hosts to remove")


@lab.command("status")
@_prefix
@_subnet
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def lab_status(
    ctx: click.Context, prefix: str | None, first_subnet: int | None, as_json: bool
) -> None:
    """List the lab's hosts: address, running, ready (systemd up and SSH answering)."""
    the_lab = _lab(ctx, prefix, first_subnet)
    hosts = the_lab.status()
    if as_json:
        click.echo(json.dumps({"hosts": [h.model_dump() for h in hosts]}))
        return
    if not hosts:
        _out.print(
            f"no lab hosts in {_settings(ctx).state_dir}; boot some with {_command('lab', 'up')}"
        )
        return
    table = Table("host", "address", "running", "ready", box=None, pad_edge=False,
                  header_style="dim")  # fmt: skip
    for h in hosts:
        table.add_row(
            h.name,
            h.address,
            Text("yes", style="green") if h.running else Text("no", style="red"),
            Text("yes", style="green") if h.ready else Text("no", style="yellow"),
        )
    _out.print(table)


@lab.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_prefix
@_subnet
@click.pass_context
def lab_ssh(
    ctx: click.Context,
    host: str,
    command: tuple[str, ...],
    prefix: str | None,
    first_subnet: int | None,
) -> None:
    """Run COMMAND as root on a lab host (an interactive shell without one).

    Put -- before a COMMAND with options: `lab ssh lab1 -- systemctl stop nginx`. The exit
    status is the command's.
    """
    import os

    the_lab = _lab(ctx, prefix, first_subnet)
    the_lab.require_running(host)
    argv = the_lab.ssh_argv(host)
    # ssh hands the remote shell one string: quote each word so it arrives as given.
    os.execvp(argv[0], [*argv, shlex.join(command)] if command else argv)  # noqa: S606


@lab.command("inventory")
@_prefix
@_subnet
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def lab_inventory(
    ctx: click.Context, prefix: str | None, first_subnet: int | None, as_json: bool
) -> None:
    """Print the path of the lab's Ansible inventory (for -i)."""
    from .exceptions import LabError

    path = _lab(ctx, prefix, first_subnet).inventory_path()
    if not path.is_file():
        raise LabError(
            f"no lab is up in {_settings(ctx).state_dir}, so there is no inventory; "
            f"boot one with {_command('lab', 'up')}"
        )
    click.echo(json.dumps({"inventory": str(path)}) if as_json else str(path))


@lab.command("ca-key")
@_prefix
@_subnet
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def lab_ca_key(
    ctx: click.Context, prefix: str | None, first_subnet: int | None, as_json: bool
) -> None:
    """Print the path of the SSH CA private key the lab's sshd trusts (for VERIS_SSH_CA_KEY)."""
    path = str(_lab(ctx, prefix, first_subnet).ssh_ca_key())
    click.echo(json.dumps({"ca_key": path}) if as_json else path)
