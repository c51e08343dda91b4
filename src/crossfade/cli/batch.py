"""`crossfade batch ...` and `crossfade convert`: migrate items with snapshots, reconcile stores, convert files."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from crossfade.cli.common import Url, _client, _fail, err, out
from crossfade.registry import ProviderConfigError
from crossfade.spec import SpecError, load_spec, parse_duration

batch_app = typer.Typer(help="Migrate items (rows, files) stage by stage, with snapshots and restore.",
                        no_args_is_help=True)

Source = Annotated[str, typer.Option("--source", help="Where the items are: a database URL (with --table) or a "
                                     "directory.", show_default=False)]
TableName = Annotated[str | None, typer.Option("--table", help="The table holding the items (SQL sources).")]
KeyColumn = Annotated[str, typer.Option("--key-column", help="The table's key column.")]
ValueColumn = Annotated[str, typer.Option("--value-column", help="The column holding each item's content.")]
Pattern = Annotated[str, typer.Option("--pattern", help="Which files of a directory are items (a glob).")]
TransformRef = Annotated[str, typer.Option("--transform", help="module:function, path/to/file.py:function, or "
                                           "convert:NAME for a converter.", show_default=False)]


def _store(target: str, table: str | None, key: str, value: str, pattern: str) -> Any:
    from crossfade.batch import open_store

    options: dict[str, Any] = {}
    if target.startswith(("sqlite:", "postgres")):
        if not table:
            _fail(f"{target} is a database: name the table of items with --table NAME")
        options = {"table": table, "key": key, "value": value}
    else:
        options = {"pattern": pattern}
    try:
        return open_store(target, **options)
    except (ProviderConfigError, ValueError) as e:
        _fail(str(e))


def _function(ref: str, what: str) -> tuple[Callable[..., Any], Any]:
    """The function `ref` names, and the converter behind it when it is `convert:NAME`."""
    if ref.startswith("convert:"):
        from crossfade.convert import as_transform, converter

        try:
            conv = converter(ref.removeprefix("convert:"))
        except ValueError as e:
            _fail(f"--{what}: {e}")
        return as_transform(conv), conv
    module_name, _, name = ref.rpartition(":")
    if not module_name or not name:
        _fail(f"--{what} {ref!r}: write module:function (my_pkg.migrate:to_v2), path/to/file.py:function or "
              "convert:json-to-toml")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None or not path.is_file():
                _fail(f"--{what} {ref!r}: no file {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        _fail(f"--{what} {ref!r}: cannot import {module_name} ({e})")
    fn = getattr(module, name, None)
    if not callable(fn):
        _fail(f"--{what} {ref!r}: {module_name} has no function {name!r}")
    return fn, None


@batch_app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="The batch migration's name (its spec is applied first with --spec).")],
    source: Source,
    transform: TransformRef,
    table: TableName = None,
    key_column: KeyColumn = "id",
    value_column: ValueColumn = "data",
    pattern: Pattern = "**/*",
    target: Annotated[str | None, typer.Option("--target", help="Write the new contents here instead of in "
                                               "place (same forms as --source).")] = None,
    target_table: Annotated[str | None, typer.Option("--target-table", help="The target's table.")] = None,
    rename: Annotated[str | None, typer.Option("--rename", help="OLD=NEW: an item whose key ends with OLD is "
                                               "written under the key ending with NEW (.json=.toml, "
                                               "CLAUDE.md=AGENTS.md).")] = None,
    validator: Annotated[str | None, typer.Option("--validator", help="module:function(key, before, after) "
                                                  "returning None or the problem.")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Apply this spec first.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Items in flight at most.")] = 256,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Threads for synchronous transforms.")] = 8,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries of connection errors and "
                                         "timeouts per item.")] = 4,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Transform and validate every item; write "
                                          "nothing.")] = False,
    failed_report: Annotated[Path | None, typer.Option("--failed-report", help="Write the failed items "
                                                       "and their errors to this JSON file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    url: Url = None,
) -> None:
    """Migrate every item of a source with a transform, stage by stage under the migration's spec: each item is
    snapshotted before it is written, a failing gate rolls back and restores every item, and a run killed
    at any point is resumed by running it again."""
    from crossfade.batch import BatchRun, Retry

    fn, conv = _function(transform, "transform")
    check = _function(validator, "validator")[0] if validator else None
    if check is None and conv is not None:
        from crossfade.convert import as_validator

        check = as_validator(conv)
    items = _store(source, table, key_column, value_column, pattern)
    into = _store(target, target_table, key_column, value_column, pattern) if target else None
    renamed = _renaming(rename) if rename else None
    with _client(url, changes=True) as client, _progress(as_json) as progress:
        if spec is not None:
            try:
                client.apply(load_spec(spec))
            except SpecError as e:
                _fail(str(e), 2)
        tasks: dict[str, Any] = {}

        def moved(stage: str, done: int, total: int, failed: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total, failed=0)
            progress.update(tasks[stage], completed=done, failed=failed)

        try:
            report = BatchRun(client, name, items, fn, target=into, rename=renamed, validate=check,
                              concurrency=concurrency,
                              threads=threads, dry_run=dry_run, progress=moved,
                              retry={ConnectionError: Retry(attempts=retries + 1),
                                     TimeoutError: Retry(attempts=retries + 1)}).run()
        except ValueError as e:
            _fail(str(e))
    if failed_report is not None:
        failed_report.write_text(json.dumps(report.to_dict()["failed"], indent=2, ensure_ascii=False) + "\n")
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        _print_report(report)
    raise typer.Exit(0 if report.status == "completed" and not report.failed else 1)


def _renaming(rule: str) -> Callable[[str], str]:
    old, sep, new = rule.partition("=")
    if not sep or not old or not new:
        _fail(f"--rename {rule!r}: write OLD=NEW, e.g. --rename .json=.toml or --rename CLAUDE.md=AGENTS.md")

    def renamed(key: str) -> str:
        return key[: -len(old)] + new if key.endswith(old) else key

    return renamed


class _Rate(ProgressColumn):
    """Items per second, as measured over the last seconds."""

    def render(self, task: Task) -> Text:
        """The task's speed."""
        return Text(f"{task.speed or 0:,.0f} items/s", style="cyan")


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
        TextColumn("{task.fields[failed]} failed"), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, disable=quiet,
    )


def _print_report(report: Any) -> None:
    verb = "would transform" if report.dry_run else "transformed"
    out.print(f"{report.name}: {report.status}" + (f" at stage {report.stage}" if report.stage else "")
              + f"; {verb} {report.transformed} items in {report.seconds:.1f} s "
              f"({report.items_per_second:.0f} items/s), {report.written} written, {report.retries} retries")
    if report.skipped or report.rewritten:
        out.print(f"resumed: {report.skipped} items already done, {report.rewritten} re-written from their "
                  "snapshot")
    if report.restored:
        out.print(f"restored {report.restored} items as they were before the batch")
    if report.stopped:
        out.print(f"stopped: {report.stopped}")
    if report.failed:
        table = Table("key", "status", "tries", "error", title=f"{len(report.failed)} failed items")
        for item in report.failed[:20]:
            table.add_row(item.key, item.status, str(item.tries), item.error)
        out.print(table)
        if len(report.failed) > 20:
            out.print(f"... and {len(report.failed) - 20} more (--failed-report FILE writes them all)")


@batch_app.command("report")
def report(name: Annotated[str, typer.Argument(help="The batch migration's name.")], url: Url = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Items of a batch migration by status, and the failed ones with their errors."""
    from crossfade.backends.batch import FAILED, INVALID, BatchLedger

    with _client(url) as client:
        state = client.backend().state(name)
        if state is None:
            _fail(f"no migration named {name!r}; run `crossfade batch run {name} --spec FILE ...` first")
        ledger = BatchLedger(client.backend())
        counts = ledger.counts(name, attempt=state.attempt)
        failed = sorted(ledger.items(name, statuses=[FAILED, INVALID]).values(), key=lambda r: r.key)
    data = {"name": name, "status": state.status, "stage": state.stage, "attempt": state.attempt,
            "items": counts, "failed": [{"key": r.key, "status": r.status, "error": r.error} for r in failed]}
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    out.print(f"{name}: {state.status} at stage {state.stage} (attempt {state.attempt}); items: "
              + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"))
    for r in failed[:50]:
        out.print(f"  {r.key}: {r.status}: {r.error}")


@batch_app.command("prune")
def prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Forget snapshots of items last changed "
                                            "longer ago than this (30d, 12h).", show_default=False)],
    migration: Annotated[str | None, typer.Option("--migration", help="Only this migration's items.")] = None,
    url: Url = None,
) -> None:
    """Delete old item snapshots (a pruned item can no longer be restored by a rollback)."""
    from crossfade.backends.batch import BatchLedger

    try:
        age = parse_duration(older_than)
    except ValueError as e:
        _fail(f"--older-than {older_than!r}: {e}")
    with _client(url, changes=True) as client:
        items, snapshots = BatchLedger(client.backend()).prune(time.time() - age, migration=migration)
    out.print(f"pruned {items} items and {snapshots} snapshots no item uses any more")


@batch_app.command("reconcile")
def reconcile_command(
    source: Source,
    target: Annotated[str, typer.Option("--target", help="The new store (same forms as --source).",
                                        show_default=False)],
    table: TableName = None,
    target_table: Annotated[str | None, typer.Option("--target-table", help="The target's table.")] = None,
    key_column: KeyColumn = "id",
    value_column: ValueColumn = "data",
    pattern: Pattern = "**/*",
    transform: Annotated[str | None, typer.Option("--transform", help="What makes the new shape of an old "
                                                  "item (module:function); default: compare as they are.")] = None,
    identity: Annotated[str | None, typer.Option("--identity", help="A JSON field naming what an item is "
                                                 "about; two target items with the same value are duplicates.")
                        ] = None,
    fix: Annotated[bool, typer.Option("--backfill", help="Write the missing and differing items into the "
                                      "target and drop duplicates.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare two stores item by item after dual writes (counts, missing, differing, duplicates); with
    --backfill, bring the target in line with the source."""
    from crossfade.batch.reconcile import backfill, reconcile

    old = _store(source, table, key_column, value_column, pattern)
    new = _store(target, target_table or table, key_column, value_column, pattern)
    fn = _function(transform, "transform")[0] if transform else None
    named = None
    if identity:
        def named(key: str, data: bytes) -> str | None:
            try:
                value = json.loads(data).get(identity)
            except (ValueError, AttributeError):
                return None
            return None if value is None else str(value)
    result = reconcile(old, new, transform=fn, identity=named)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        out.print(f"source {result.source_items} items, target {result.target_items}: {result.matching} match, "
                  f"{len(result.missing)} missing, {len(result.differing)} differ, {len(result.extra)} only in the "
                  f"target, {len(result.duplicates)} duplicated, {len(result.errors)} transform errors")
        for label, keys in (("missing", result.missing), ("differ", result.differing)):
            if keys:
                out.print(f"  {label}: {', '.join(keys[:20])}" + (" ..." if len(keys) > 20 else ""))
    if fix:
        changed = backfill(old, new, result.missing + result.differing, transform=fn,
                           drop_duplicates=result.duplicates)
        err.print(f"backfilled: {changed} items written or removed")
        raise typer.Exit(0)
    raise typer.Exit(0 if result.consistent else 1)


def convert(
    name: Annotated[str, typer.Argument(help="json-to-toml, toml-to-json or claude-to-agents.")],
    inputs: Annotated[list[Path], typer.Argument(help="Files to convert.")],
    output: Annotated[Path | None, typer.Option("--out", help="Output file (one input) or directory; "
                                                "default: print the output.")] = None,
    snake_case: Annotated[bool, typer.Option("--snake-case", help="json-to-toml: camelCase keys to "
                                             "snake_case.")] = False,
    settings: Annotated[Path | None, typer.Option("--settings", help="claude-to-agents: a "
                                                  ".claude/settings.json to map to Codex's config.toml.")] = None,
    mcp: Annotated[Path | None, typer.Option("--mcp", help="claude-to-agents: a .mcp.json.")] = None,
    keep_imports: Annotated[bool, typer.Option("--keep-imports", help="claude-to-agents: keep @imports as "
                                               "text instead of including the files.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when any value could not be carried "
                                         "over.")] = False,
) -> None:
    """Convert configuration files; everything that could not be carried over is reported on stderr."""
    from crossfade.convert import CONVERTERS, converter

    config: dict[str, Any] = {}
    kind = name.replace("-", "_")
    if kind not in CONVERTERS.names():
        _fail(f"unknown converter {name!r}; known: {', '.join(n.replace('_', '-') for n in CONVERTERS.names())}")
    if snake_case:
        config["snake_case"] = True
    if kind == "claude_to_agents":
        config.update({k: str(v) for k, v in (("settings", settings), ("mcp", mcp)) if v is not None})
        if keep_imports:
            config["imports"] = "keep"
    try:
        conv = converter(kind, config)
    except ValueError as e:
        _fail(str(e))
    lost = False
    for path in inputs:
        try:
            result = conv.convert(path.read_bytes(), source=str(path))
        except (OSError, ValueError) as e:
            _fail(f"{path}: {e}")
        for loss in result.losses:
            err.print(f"{path}: {loss}", markup=False)
        lost = lost or not result.lossless
        destination = _destination(kind, path, output, len(inputs))
        if destination is None:
            sys.stdout.write(result.output.decode())
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(result.output)
            out.print(f"{path} -> {destination}")
        for extra, data in result.extra.items():
            where = (destination.parent if destination is not None else path.parent) / extra
            where.write_bytes(data)
            out.print(f"{path} -> {where}")
    raise typer.Exit(1 if strict and lost else 0)


_SUFFIX = {"json_to_toml": ".toml", "toml_to_json": ".json"}


def _destination(kind: str, path: Path, output: Path | None, count: int) -> Path | None:
    if output is None:
        return None
    if count == 1 and not output.is_dir() and output.suffix:
        return output
    name = "AGENTS.md" if kind == "claude_to_agents" else path.with_suffix(_SUFFIX[kind]).name
    return output / name
