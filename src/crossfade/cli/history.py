"""`crossfade history`, `replay` and `audit verify`: what happened to a migration, how another spec would
have judged it, and whether its log is intact."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from crossfade.backends.base import UnknownMigration
from crossfade.cli.common import AsJson, Name, Url, _client, _colour, _fail, _utc, err, out, shown
from crossfade.events import ChainBreak, Event, spec_digest, verify, verify_snapshot, verify_specs
from crossfade.spec import SpecError, format_duration, format_percent, load_spec

audit_app = typer.Typer(help="Check the tamper-evident event log.", no_args_is_help=True)


def history(name: Name, url: Url = None, as_json: AsJson = False) -> None:
    """Every event of a migration, oldest first."""
    with _client(url) as cf:
        events = cf.migration(name).history()
        if not events:
            raise UnknownMigration(f"no migration named {name!r}")
        if as_json:
            sys.stdout.write(json.dumps([e.to_dict() for e in events], indent=2) + "\n")
            return
        for e in events:
            head = f"#{e.seq:<4} {_utc(e.time)}  [bold]{shown(e.type):<18}[/bold] by {shown(e.actor)}"
            if e.type == "verdict":
                out.print(head)
                for g in e.payload["gates"]:
                    out.print(f"      {_colour(g['verdict'])} {shown(g['message'])}")
                continue
            detail = shown(", ".join(f"{k}={_show(v)}" for k, v in e.payload.items() if k != "digest"))
            out.print(head + (f": {shown(e.reason)}" if e.reason else "") + (f" [dim]({detail})[/dim]" if detail else ""))


def replay(
    name: Name,
    spec_file: Annotated[Path, typer.Option("--spec", help="The spec to judge the recorded windows under.")],
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Re-judge a past or running migration's recorded windows under another spec: stage by stage, when it
    would have promoted, held or rolled back, beside what was recorded. Tune gates on real data."""
    from crossfade.metrics import SourceError, create_source
    from crossfade.replay import replay as rejudge
    from crossfade.replay import stay

    try:
        other = load_spec(spec_file)
    except SpecError as exc:
        _fail(str(exc), 2)
    with _client(url) as cf:
        mig = cf.migration(name)
        events = mig.history()
        if not events:
            raise UnknownMigration(f"no migration named {name!r}; `crossfade status` lists them")
        recorded = mig.spec()
        if not any(e.type == "started" for e in events):
            _fail(f"{name} was never started: there are no recorded windows to replay")
        source = create_source(recorded.source)
        backend = cf.backend()
        try:
            result = rejudge(other, name, events, lambda p: [
                w for w in source.windows(backend, stay(name, p), recorded, p.end) if w.start < p.end], cf.time())
        except SourceError as exc:
            _fail(f"cannot read the recorded windows of {name}: {exc}")
        def at(t: float | None) -> float | None:
            return None if t is None else t - result.origin

        if as_json:
            recorded, replayed = result.recorded_failure, result.replayed_failure
            sys.stdout.write(json.dumps({
                "migration": name, "spec": str(spec_file), "summary": result.summary(),
                "recorded_failure": None if recorded is None else {
                    "decision": recorded.decision, "stage": recorded.stage, "at_s": at(recorded.decided_at)},
                "replayed_failure": None if replayed is None else {
                    "decision": replayed.decision, "stage": replayed.period.stage, "at_s": at(replayed.decided_at)},
                "recorded_end_s": result.recorded_end - result.origin,
                "stages": [s.to_dict(result.origin) for s in result.stages]}, indent=2) + "\n")
            return
        table = Table(box=None, pad_edge=False)
        for column in ("stage", "entered", "recorded", f"under {spec_file.name}"):
            table.add_column(column)

        def when(t: float | None) -> str:
            return "-" if t is None else f"+{format_duration(t - result.origin)}"

        for s in result.stages:
            table.add_row(escape(s.period.stage), when(s.period.start),
                          f"{s.period.decision} at {when(s.period.decided_at)}" if s.period.decided_at else "held",
                          f"{s.decision} at {when(s.decided_at)}" if s.decided_at else "held")
        out.print(table)
        for s in result.stages:
            out.print(f"  {escape(s.period.stage)}: {escape(s.reason)}")
        out.print(f"{escape(name)} under {escape(str(spec_file))}: {escape(result.summary())}")


def _show(value: Any) -> str:
    return format_percent(value) if isinstance(value, float) and 0 <= value <= 1 else str(value)


@audit_app.command("verify")
def audit_verify(
    name: Name,
    url: Url = None,
    expect: Annotated[str | None, typer.Option(
        "--expect", help="SEQ:HASH of a head recorded earlier outside the database (see the README): the log "
                         "must still hold that event with that hash.")] = None,
    as_json: AsJson = False,
) -> None:
    """Check a migration's hash chain, that the state snapshot routing reads is the fold of its events, and
    that every stored spec version matches the digest its event recorded; exit 1 naming the first problem.

    Prints the head (SEQ:HASH): keep it outside the database, and pass it back as --expect to detect a
    rewritten history, which an unkeyed chain alone cannot.
    """
    anchor = None
    if expect is not None:
        seq_text, _, hash_text = expect.partition(":")
        if not seq_text.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", hash_text):
            _fail("--expect takes SEQ:HASH as audit verify printed it, e.g. 12:3f2a...(64 hex digits)", 2)
        anchor = (int(seq_text), hash_text)
    with _client(url) as cf:
        backend = cf.backend()
        state = backend.state(name)
        events = backend.events(name)
        if state is None and not events:
            raise UnknownMigration(f"no migration named {name!r}")
        problem = (verify(events, head=(state.seq, state.head) if state is not None else None)
                   or verify_snapshot(events, state) or verify_specs(events, lambda v: _stored_digest(backend, name, v))
                   or (_check_anchor(events, anchor) if anchor is not None else None))
        head = f"{events[-1].seq}:{events[-1].hash}" if events else "0:"
        if as_json:
            sys.stdout.write(json.dumps({"migration": name, "events": len(events), "ok": problem is None,
                                         "head": head, "first_bad_event": None if problem is None else problem.seq,
                                         "problem": None if problem is None else problem.problem}) + "\n")
        elif problem is None:
            out.print(f"{shown(name)}: audit log intact ({len(events)} events; the state snapshot and every stored "
                      f"spec match them); head {head}")
        else:
            err.print(f"[red]{shown(name)}: audit log BROKEN at {shown(problem)}[/red]")
        if problem is not None:
            raise typer.Exit(1)


def _stored_digest(backend: Any, name: str, version: int) -> str | None:
    data = backend.spec(name, version)
    return None if data is None else spec_digest(data)


def _check_anchor(events: list[Event], anchor: tuple[int, str]) -> ChainBreak | None:
    seq, digest = anchor
    if seq > len(events):
        return ChainBreak(seq, f"the recorded head {seq} is beyond the log's end ({len(events)}): events were removed")
    if events[seq - 1].hash != digest:
        return ChainBreak(seq, "differs from the head recorded outside the database: history was rewritten")
    return None
