"""`crossfade db`, `token`, `notify`, `grafana` and `alerts`: the control plane's store, access, notifications
and monitoring."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from crossfade.backends.base import BackendError, InvalidURL
from crossfade.cli.common import (
    AsJson,
    Name,
    Url,
    _client,
    _fail,
    _message,
    _open,
    _seconds,
    _target,
    _utc,
    _write,
    err,
    out,
    shown,
)
from crossfade.client import DEFAULT_URL, Client

db_app = typer.Typer(help="Manage the backend's schema.", no_args_is_help=True)
token_app = typer.Typer(help="Manage the control plane's API tokens (on its database).", no_args_is_help=True)
notify_app = typer.Typer(help="Notifications: what was sent to whom, and test messages.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    url: Url = None,
    init_empty: Annotated[bool, typer.Option(
        "--init-empty", help="Make an existing empty (0-byte) SQLite file a new store; crossfade never leaves "
                             "one, so it is refused otherwise.")] = False,
) -> None:
    """Bring the backend's schema to this version of crossfade."""
    from crossfade.backends.sql import upgrade

    target = _target(url, changes=True)
    if target.startswith(("http:", "https:")):
        _fail("db upgrade needs a database URL (sqlite:///... or postgresql://...), not a control plane", 2)
    try:
        before, after = upgrade(target, init_empty=init_empty)
    except InvalidURL as exc:
        _fail(_message(exc), 2)
    except BackendError as exc:
        _fail(_message(exc))
    out.print(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db_app.command("prune")
def db_prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Delete telemetry, shadow comparisons and "
                                                                   "examples that ended longer ago than this "
                                                                   "(e.g. 30d), except the stages running now.")],
    compact_after: Annotated[str, typer.Option("--compact-after", help="Merge each window's rows (one a process) "
                                                                       "into one once it is this old.")] = "1h",
    url: Url = None,
) -> None:
    """Keep the store bounded: merge old windows' per-process rows into one, and delete what is past retention.

    Run it daily (cron, a Kubernetes CronJob). Merging is exact (cells add up); what a running stage's
    controller reads is never deleted."""
    import time

    from crossfade.backends.sql import SQLBackend
    from crossfade.controller import is_active

    try:
        retention, compaction = _seconds("--older-than", older_than), _seconds("--compact-after", compact_after)
    except ValueError as exc:
        _fail(str(exc), 2)
    target = url or os.environ.get("CROSSFADE_URL") or DEFAULT_URL
    if not target.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
        _fail(f"db prune works on the store itself (sqlite:/// or postgresql://), not a {target.split(':')[0]} URL", 2)
    now = time.time()
    try:
        backend = SQLBackend(target)
        try:
            running = [(s.name, s.stage) for s in backend.states() if s.stage and is_active(s)]
            before, after = backend.compact_telemetry(before=now - compaction)
            removed = backend.prune(before=now - retention, keep=running)
        finally:
            backend.close()
    except BackendError as exc:
        _fail(str(exc))
    out.print(f"compacted {before} telemetry rows into {after}; deleted {removed['telemetry']} telemetry rows, "
              f"{removed['totals']} stage totals, {removed['comparisons']} comparison rows and "
              f"{removed['examples']} examples older than {older_than}")


def _token_backend(url: str | None, *, changes: bool) -> Any:
    target = _target(url, changes=changes)
    if target.startswith(("http:", "https:")):
        _fail("tokens are managed on the control plane's database: pass its sqlite:// or postgresql:// URL", 2)
    return _open(target, changes=changes)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who or what holds it; the actor of the events it causes.")],
    role: Annotated[str, typer.Option("--role", help="viewer, sdk, operator or admin.")] = "viewer",
    migration: Annotated[list[str] | None, typer.Option(
        "--migration", help="Bind the token to this migration (repeatable): it may send telemetry and "
                            "comparisons for these only. Default: every migration.")] = None,
    url: Url = None,
) -> None:
    """Make a token and print it once: only its hash is stored."""
    import time

    from crossfade.tokens import ROLES, new_token, token_hash

    if role not in ROLES:
        _fail(f"unknown role {role!r}: use one of {', '.join(ROLES)}", 2)
    if not name.strip() or len(name) > 200 or any(not ch.isprintable() for ch in name):
        _fail("--name must be printable text of 1 to 200 characters", 2)
    from crossfade.spec import NAME_PATTERN

    bound = migration or []
    bad = [m for m in bound if not re.fullmatch(NAME_PATTERN, m)]
    if bad:
        _fail(f"--migration {shown(bad[0])!s} is not a migration name ([a-z0-9-], 1 to 63 characters)", 2)
    secret = new_token()
    backend = _token_backend(url, changes=True)
    try:
        backend.create_token(name, role, token_hash(secret), time.time(), migrations=bound)
    except BackendError as exc:
        _fail(_message(exc))
    finally:
        backend.close()
    sys.stdout.write(secret + "\n")
    err.print(f"token {shown(repr(name))} ({role}) created; it is shown only this once")


@token_app.command("list")
def token_list(url: Url = None, as_json: AsJson = False) -> None:
    """Every token's name, role and dates (never the token itself)."""
    backend = _token_backend(url, changes=False)
    try:
        records = backend.tokens()
    except BackendError as exc:
        _fail(_message(exc))
    finally:
        backend.close()
    rows = [{"name": t.name, "role": t.role, "created_at": t.created_at, "revoked_at": t.revoked_at}
            for t in records]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("name", "role", "created", "revoked"):
        table.add_column(column)
    for r in rows:
        table.add_row(shown(r["name"]), shown(r["role"]), _utc(r["created_at"]),
                      "-" if r["revoked_at"] is None else _utc(r["revoked_at"]))
    out.print(table if rows else "no tokens yet: crossfade token create --role ROLE --name NAME")


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")], url: Url = None) -> None:
    """Revoke a token; the server refuses it within seconds."""
    import time

    backend = _token_backend(url, changes=True)
    try:
        count = backend.revoke_token(name, time.time())
    except BackendError as exc:
        _fail(_message(exc))
    finally:
        backend.close()
    if not count:
        _fail(f"no active token named {name!r} (crossfade token list shows them)")
    out.print(f"revoked {shown(name)}")


def _notifications(cf: Client, migration: str | None, limit: int) -> list[dict[str, Any]]:
    backend = cf.backend()
    if hasattr(backend, "request"):  # a control plane: ask its API
        return backend.request("GET", "/v1/notifications", query={"migration": migration, "limit": limit})[1]
    outbox = getattr(backend, "outbox", None)
    return [] if outbox is None else [d.to_dict() for d in outbox.list(migration, limit=limit)]


@notify_app.command("status")
def notify_status(
    name: Annotated[str | None, typer.Argument(help="One migration (default: all).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many, newest first.")] = 20,
    url: Url = None, as_json: AsJson = False,
) -> None:
    """Each notification queued from the event log: to whom, of what, delivered, pending (why, next try) or failed."""
    with _client(url) as cf:
        if name:
            cf.migration(name).state()  # an unknown name is an error, not an empty list
        rows = _notifications(cf, name, limit)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        out.print("no notifications yet (targets are the spec's `notify:`; `crossfade notify test NAME` sends one)")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("migration", "event", "kind", "target", "status", "tries", "when / next", "last error"):
        table.add_column(column)
    for r in rows:
        when = _utc(r["delivered_at"]) if r["status"] == "delivered" else f"next {_utc(r['next_at'])}"
        colour = {"delivered": "green", "pending": "yellow", "failed": "red"}[r["status"]]
        table.add_row(r["migration"], str(r["seq"]), r["kind"], r["target"], f"[{colour}]{r['status']}[/{colour}]",
                      str(r["attempts"]), when, r["last_error"] or "")
    out.print(table)


@notify_app.command("test")
def notify_test(
    name: Name,
    target: Annotated[str | None, typer.Option("--target", help="One target (default: every target).")] = None,
    url: Url = None,
) -> None:
    """Queue a test message to the migration's notification targets; the control plane delivers it."""
    from crossfade.loop import NotificationOutbox
    from crossfade.notify import UnknownTarget, targets

    with _client(url) as cf:
        spec = cf.migration(name).spec()
        names = [target] if target else [t.name for t in targets(spec.notify)]
        if not names:
            _fail(f"{name} has no notification targets: add one under `notify:` in its spec")
        backend = cf.backend()
        for each in names:
            try:
                if hasattr(backend, "request"):
                    backend.request("POST", "/v1/notifications/test", {"migration": name, "target": each})
                else:
                    NotificationOutbox(backend).test(name, each)
            except UnknownTarget as exc:
                _fail(str(exc).strip("'\""))
            out.print(f"{name}: test message queued for {each}; `crossfade notify status {name}` shows its delivery")


Out = Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")]


def _emit(text: str, path: Path | None) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    _write(path, text)
    out.print(f"wrote {path}")


def grafana(name: Annotated[str | None, typer.Argument(help="Show this migration by default.")] = None,
            output: Out = None) -> None:
    """Write a Grafana dashboard (JSON) over the control plane's /metrics: traffic, error rate, latency against
    legacy, cost, mismatches, gates with intervals against limits, rollbacks, notifications."""
    from crossfade.grafana import dashboard
    from crossfade.spec import NAME_PATTERN

    if name is not None and not re.fullmatch(NAME_PATTERN, name):
        _fail(f"{name!r} is not a migration name (lower-case letters, digits and '-', like checkout-pricing)", 2)
    _emit(json.dumps(dashboard(name), indent=2) + "\n", output)


def alerts(output: Out = None) -> None:
    """Write Prometheus alerting rules (YAML) over /metrics: rollbacks, failing gates, controller lag, a stale
    routing feed, failing routers and metric sources, notifications not getting out."""
    import yaml

    from crossfade.alerts import rules

    _emit(yaml.safe_dump(rules(), sort_keys=False, width=120), output)
