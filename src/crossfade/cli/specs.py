"""`crossfade init`, `validate`, `schema` and `apply`: write, check and store specs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from crossfade.cli.common import (
    Actor,
    DryRun,
    Url,
    _client,
    _fail,
    _message,
    _print_event,
    _write,
    err,
    out,
    shown,
    shown_lines,
)
from crossfade.spec import EXAMPLE, SpecError, json_schema, load_spec


def init(
    path: Annotated[Path, typer.Argument(help="Where to write the example spec.")] = Path("migration.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example spec to start from."""
    if path.exists() and not force:
        _fail(f"{path} exists; pass --force to overwrite it, or name another file")
    _write(path, EXAMPLE)
    out.print(f"wrote {shown(path)}: edit it, then `crossfade validate {shown(path)}` and "
              f"`crossfade apply {shown(path)}`")


def validate(files: Annotated[list[Path], typer.Argument(help="Spec files to check.")]) -> None:
    """Check spec files; every problem of every file is reported at once."""
    failed = False
    for path in files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            failed = True
            err.print(shown_lines(exc), soft_wrap=True)
        else:
            out.print(f"{shown(path)}: ok ({spec.name}, {len(spec.stages)} stages)")
    if failed:
        raise typer.Exit(1)


def schema(telemetry: Annotated[bool, typer.Option("--telemetry", help="The schema of the open telemetry form "
                                                   "that POST /v1/telemetry takes from any language.")] = False,
           markdown: Annotated[bool, typer.Option("--markdown", help="The reference of every spec field, as "
                                                  "Markdown (docs/spec.md).")] = False,
           ) -> None:
    """Print the JSON Schema of spec files (point your editor at it for completion)."""
    if markdown:
        from crossfade.spec.schema import markdown_reference

        sys.stdout.write(markdown_reference())
        return
    if telemetry:
        from importlib.resources import files

        sys.stdout.write(files("crossfade").joinpath("schemas/telemetry.schema.json").read_text())
        return
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


def apply(
    file: Annotated[Path, typer.Argument(help="The spec file.")],
    url: Url = None,
    actor: Actor = None,
    dry_run: DryRun = False,
) -> None:
    """Store a spec (a new migration, or a new version of one); idempotent."""
    try:
        spec = load_spec(file)
    except SpecError as exc:
        _fail(_message(exc), 2)
    with _client(url, changes=True) as cf:
        event = cf.apply(spec, actor=actor, dry_run=dry_run)
        if event is None:
            out.print(f"{spec.name}: unchanged (this spec is already applied)")
        else:
            _print_event(event, dry_run=dry_run)
