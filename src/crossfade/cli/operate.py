"""`crossfade start`, `promote`, `pause`, `resume`, `rollback`, `step-back`, `approve`, `abort` and `restart`:
an operator moves a migration, and every move is an event in its audit log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from crossfade.cli.common import Actor, DryRun, Name, Url, _client, _fail, _name, _print_event, _print_state_line
from crossfade.events import Event


def _operation(name: str, url: str | None, act: Callable[[Any], Event], dry_run: bool, reason: str | None) -> None:
    _name(name)
    if reason is not None and not reason.strip():
        _fail("--reason is empty: say why (it goes into the audit log)", 2)
    with _client(url, changes=True) as cf:
        event = act(cf.migration(name))
        _print_event(event, dry_run=dry_run)
        if not dry_run:
            _print_state_line(cf.migration(name).state())


Reason = Annotated[str | None, typer.Option("--reason", help="Why; recorded in the audit log.")]
RequiredReason = Annotated[str, typer.Option("--reason", help="Why; required, recorded in the audit log.")]


def start(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Start a migration at its first stage."""
    _operation(name, url, lambda m: m.start(reason, actor=actor, dry_run=dry_run), dry_run, reason)


def promote(
    name: Name,
    reason: Reason = None,
    force: Annotated[bool, typer.Option("--force", help="Promote past a failing gate (recorded).")] = False,
    url: Url = None,
    actor: Actor = None,
    dry_run: DryRun = False,
) -> None:
    """Move a running migration to its next stage."""
    _operation(name, url, lambda m: m.promote(reason, actor=actor, force=force, dry_run=dry_run), dry_run, reason)


def pause(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Route every key to legacy and hold the stage."""
    _operation(name, url, lambda m: m.pause(reason, actor=actor, dry_run=dry_run), dry_run, reason)


def resume(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Return a paused migration to its stage's traffic."""
    _operation(name, url, lambda m: m.resume(reason, actor=actor, dry_run=dry_run), dry_run, reason)


def rollback(
    name: Name,
    reason: RequiredReason,
    url: Url = None,
    actor: Actor = None,
    dry_run: DryRun = False,
) -> None:
    """Send every key back to legacy at once."""
    _operation(name, url, lambda m: m.rollback(reason, actor=actor, dry_run=dry_run), dry_run, reason)


def step_back(
    name: Name,
    to: Annotated[str | None, typer.Option("--to", help="Return to the latest earlier stage at or below this "
                                           "traffic (10%); default: the stage before.")] = None,
    reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False,
) -> None:
    """A partial rollback: return a running migration to an earlier stage, keeping that stage's traffic."""
    from crossfade.spec import parse_percent

    try:
        fraction = None if to is None else parse_percent(to)
    except ValueError as exc:
        _fail(f"--to {to!r}: {exc}", 2)
    _operation(name, url, lambda m: m.step_back(reason, to=fraction, actor=actor, dry_run=dry_run), dry_run, reason)


def approve(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Approve the stage a migration awaits: it is entered at once."""
    _operation(name, url, lambda m: m.approve(reason, actor=actor, dry_run=dry_run), dry_run, reason)


def abort(
    name: Name,
    reason: RequiredReason,
    url: Url = None,
    actor: Actor = None,
    dry_run: DryRun = False,
) -> None:
    """Give the attempt up: every key to legacy, nothing more until `restart`."""
    _operation(name, url, lambda m: m.abort(reason, actor=actor, dry_run=dry_run), dry_run, reason)


def restart(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Begin a new attempt at the first stage after a rollback or an abort (same salt, same buckets)."""
    _operation(name, url, lambda m: m.restart(reason, actor=actor, dry_run=dry_run), dry_run, reason)
