"""The `crossfade` command: write and check specs, move migrations, and read their state and history."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from crossfade import __version__
from crossfade.cli import admin, batch, control, history, operate, plans, read, specs
from crossfade.cli.common import err, out

app = typer.Typer(
    name="crossfade",
    help="Replace a running system without breaking it: staged, measured, reversible migrations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Registered here, in the order `crossfade --help` lists them: writing a spec, moving a migration, running it,
# then reading it; the groups of subcommands come after.
for command in (
    specs.init, specs.validate, specs.schema, specs.apply,
    operate.start, operate.promote, operate.pause, operate.resume, operate.rollback, operate.step_back,
    operate.approve, operate.abort, operate.restart,
    control.run_controller, plans.simulate, plans.plan, read.status, control.render, control.proxy,
    read.mismatches, history.history, history.replay, control.serve, admin.grafana, admin.alerts, plans.demo,
    batch.convert,
):
    app.command()(command)
app.add_typer(history.audit_app, name="audit")
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.token_app, name="token")
app.add_typer(admin.notify_app, name="notify")
app.add_typer(batch.batch_app, name="batch")

# Without a terminal (a pipe, a file, CI) Rich would cut tables to 80 columns: lines are as long as they need.
_UNCUT = 1_000


def _version(show: bool) -> None:
    if show:
        sys.stdout.write(f"crossfade {__version__}\n")
        raise typer.Exit()


@app.callback()
def _setup(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    for console in (out, err):
        if not console.is_terminal:
            console.width = _UNCUT


def main() -> None:
    """Entry point of the `crossfade` console script."""
    app()
