"""What every command shares: the consoles, the common options, others' text shown safely, and a backend
whose errors become one line and an exit code."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from crossfade.backends import open_backend
from crossfade.backends.base import BackendError, InvalidURL, OutcomeUnknown, UnknownMigration
from crossfade.client import DEFAULT_URL, Client
from crossfade.events import Event, State, TransitionError
from crossfade.spec import SpecError, format_percent

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Where crossfade comes from decides how its extra is installed: from PyPI, or from a clone of the repository.
SERVER_EXTRA = "pip install 'crossfade[server]' (from a clone of the repository: pip install '.[server]')"

Url = Annotated[
    str | None,
    typer.Option("--url", help=f"Backend URL (default: $CROSSFADE_URL, else {DEFAULT_URL}).", show_default=False),
]
Name = Annotated[str, typer.Argument(help="The migration's name.")]
Actor = Annotated[str | None, typer.Option("--actor", help="Who acts (default: the OS user).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the event it would write; write nothing.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


# C0 and C1 controls, DEL, line and paragraph separators, bidirectional overrides, lone surrogates: what could
# move the cursor, rewrite the terminal or hide text, when it comes from someone else.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def shown(value: object) -> str:
    """Text from outside (a reason, an actor, a name, a path, an example) as it may be printed: control
    characters escaped (an ESC shows as \\x1b) and Rich markup inert (`[/x]` prints as itself)."""
    text = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode(), str(value))
    return escape(text)


def shown_lines(value: object) -> str:
    """Like `shown`, keeping line breaks (for messages of several lines, such as a spec's problems)."""
    return "\n".join(shown(line) for line in str(value).split("\n"))


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit: 1 when refused, 2 for invalid input."""
    # Escaped: a message's own brackets (an extra such as crossfade[server], a path) are text, not markup;
    # control characters from others' text (a reason, a name) are shown escaped.
    err.print(f"[red]error:[/red] {shown_lines(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _message(exc: BaseException) -> str:
    """An exception's text as written (a LookupError's str() would wrap it in quotes); a spec's one problem
    as its one line."""
    if isinstance(exc, SpecError) and len(exc.problems) == 1:
        return f"{exc.source}: {exc.problems[0]}"
    return exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)


def _target(url: str | None, *, changes: bool = False) -> str:
    """The backend URL a command uses (--url, else $CROSSFADE_URL, else the default); exits 2 on an empty
    one, and, for a command that changes state (`changes`), on an in-memory database that would vanish."""
    if url is not None and not url.strip():
        _fail("--url is empty: give a backend URL (sqlite:///crossfade.db, postgresql://..., http://host:8765), "
              "or leave --url out to use $CROSSFADE_URL", 2)
    target = url or os.environ.get("CROSSFADE_URL") or DEFAULT_URL
    if changes and target.startswith("sqlite:") and target.removeprefix("sqlite:").lstrip("/") in ("", ":memory:"):
        _fail(f"{target} is an in-memory database: what this command writes would vanish when it exits; "
              "use a file, e.g. sqlite:///crossfade.db", 2)
    return target


def _open(url: str | None, *, changes: bool = False) -> Any:
    """The backend a command uses, or one line and exit 2 (a URL that names no store) or 1 (unreachable)."""
    target = _target(url, changes=changes)
    if not changes and target.startswith("sqlite:///") and "?" not in target:
        path = Path(target.removeprefix("sqlite:///")).expanduser()
        if path.parent.is_dir() and not path.exists():
            # A command that only reads must not leave an empty store behind a mistyped path.
            _fail(f"{target}: {path.absolute()} does not exist; nothing has been applied there yet "
                  "(crossfade apply SPEC --url ... creates it)")
    try:
        # A control plane URL (http://...) authenticates with $CROSSFADE_TOKEN; the events name the token.
        return open_backend(target, token=os.environ.get("CROSSFADE_TOKEN"))
    except InvalidURL as exc:
        _fail(_message(exc), 2)
    except BackendError as exc:
        _fail(_message(exc))


def _name(name: str | None) -> str | None:
    """A migration name given on the command line: an empty one is invalid input (exit 2)."""
    if name is not None and not name.strip():
        _fail("the migration name is empty: give one (crossfade status lists them)", 2)
    return name


@contextmanager
def _client(url: str | None, *, changes: bool = False) -> Iterator[Client]:
    """A client for one command, whose errors become one clear line and an exit code, not a traceback."""
    # The backend is opened first, so an unreachable one is this command's one error line, not a warning
    # from the SDK (which would route to legacy and go on) followed by the error.
    backend = _open(url, changes=changes)
    try:
        backend.states()
    except BackendError as exc:
        backend.close()
        _fail(_message(exc))
    client = Client(backend, refresh=3600, background=False)
    try:
        yield client
    except SpecError as exc:
        _fail(_message(exc), 2)
    except OutcomeUnknown as exc:
        # Never "failed": the change may have been written. Exit 3 tells a script to re-read, not to retry.
        err.print(f"[yellow]unknown:[/yellow] {shown_lines(exc)}", soft_wrap=True)
        raise typer.Exit(3) from None
    except (TransitionError, UnknownMigration, BackendError) as exc:
        _fail(_message(exc))
    finally:
        client.close()


def _print_event(event: Event, *, dry_run: bool = False) -> None:
    prefix = "[yellow]would write[/yellow] " if dry_run else ""
    detail = shown(", ".join(f"{k}={v}" for k, v in event.payload.items() if k not in ("digest",)))
    out.print(f"{prefix}{shown(event.migration)} #{event.seq} [bold]{shown(event.type)}[/bold] by {shown(event.actor)}"
              + (f": {shown(event.reason)}" if event.reason else "") + (f" ({detail})" if detail else ""))


def _print_state_line(state: State) -> None:
    stage = f"stage {shown(state.stage)} ({state.stage_index + 1})" if state.stage else "not started"
    out.print(f"{shown(state.name)}: [bold]{shown(state.status)}[/bold], {stage}, candidate traffic "
              f"{format_percent(state.traffic)}")
    for router, status, candidate, detail in state.routers:
        colour = "green" if status == "verified" else "red" if status == "failed" else "yellow"
        out.print(f"  router {router}: [{colour}]{status}[/{colour}] at {format_percent(candidate)} candidate"
                  + (f" ({detail})" if detail else ""))


def _write(path: Path, text: str) -> None:
    """Write a file the user named; a missing directory is invalid input (2), another failure refused (1)."""
    if not path.parent.is_dir():
        _fail(f"cannot write {path}: directory {path.parent} does not exist", 2)
    try:
        path.write_text(text)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")


def _seconds(option: str, text: str) -> float:
    from crossfade.spec import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{option} {text}: {exc}") from None


def _colour(verdict: str) -> str:
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}.get(verdict, "dim")
    return f"[{colour}]{shown(verdict):<12}[/{colour}]"


def _utc(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
