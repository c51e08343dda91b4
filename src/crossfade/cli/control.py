"""`crossfade run-controller`, `render`, `proxy` and `serve`: the long-running parts, and what a router
would apply."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from crossfade.backends.base import BackendError, InvalidURL, UnknownMigration, redact_url
from crossfade.cli.common import (
    SERVER_EXTRA,
    Name,
    Url,
    _client,
    _colour,
    _fail,
    _message,
    _open,
    _print_event,
    _target,
    out,
    shown,
)
from crossfade.spec import SpecError


def run_controller(
    names: Annotated[list[str] | None, typer.Argument(help="Migrations to run (default: every active one).")] = None,
    url: Url = None,
    once: Annotated[bool, typer.Option("--once", help="One tick, then exit.")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.01, max=3600,
                                        help="Seconds between looks for due migrations.")] = 1.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="One tick: print the events it would write, "
                                          "write nothing.")] = False,
) -> None:
    """Run the controller: judge each active migration every analysis interval and act on it.

    Several may run against one backend: a lease per migration lets exactly one act. Stop with Ctrl-C.
    """
    import logging
    import signal
    import threading

    from crossfade.loop import ControllerLoop, NotificationOutbox

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # Alembic narrates a schema creation at INFO; crossfade's own lines are the ones an operator reads.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    target = _target(url, changes=True)
    backend = _open(target, changes=True)
    loop = ControllerLoop(backend, names=names or None, on_tick=_print_dry_tick if dry_run else _print_tick,
                          dry_run=dry_run)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Notifications go out from wherever the controller runs (not in a dry run: it sends nothing).
    outbox = NotificationOutbox(backend, holder=loop.holder, link=os.environ.get("CROSSFADE_PUBLIC_URL"))
    # Its own pace, not the controller's --poll: a second is soon enough to tell people.
    notifier = threading.Thread(target=outbox.run, args=(stop,), kwargs={"poll": max(poll, 1.0)},
                                name="crossfade-notifier", daemon=True)
    try:
        if once or dry_run:
            loop.tick()
            loop.release()
            if not dry_run:
                outbox.pump()
                outbox.release()
        else:
            out.print(f"controller {shown(loop.holder)} on {shown(redact_url(target))}")
            notifier.start()
            loop.run(stop, poll=poll)
    except KeyboardInterrupt:
        loop.release()
    except BackendError as exc:
        _fail(_message(exc))
    finally:
        stop.set()
        if notifier.is_alive():
            notifier.join(timeout=15)
        backend.close()


def _print_tick(tick: Any) -> None:
    for event in tick.events:
        _print_event(event)


def _print_dry_tick(tick: Any) -> None:
    for event in tick.events:
        if event.type == "verdict":
            out.print(f"[yellow]would write[/yellow] {event.migration} #{event.seq} [bold]verdict[/bold] by "
                      f"{event.actor}")
            for gate in event.payload["gates"]:
                out.print(f"      {_colour(gate['verdict'])} {escape(gate['message'])}")
            continue
        _print_event(event, dry_run=True)
    if not tick.events:
        out.print(f"{shown(tick.migration)}: nothing to do now" + (f" (waiting for {shown(tick.assessment.waiting_for)})"
                                                             if tick.assessment and tick.assessment.waiting_for else ""))


def render(
    name: Name,
    router: Annotated[str, typer.Option("--router", help="Which of the spec's routers (istio, gateway_api, nginx).")],
    stage: Annotated[str | None, typer.Option("--stage", help="Render this stage (default: where the migration "
                                               "stands now).")] = None,
    url: Url = None,
) -> None:
    """Print what a router would apply (Kubernetes manifests, an nginx config), for GitOps or review."""
    from crossfade.registry import ProviderConfigError
    from crossfade.routers import ROUTERS, Renders, RouterError, Target, create

    with _client(url) as cf:
        mig = cf.migration(name)
        state, spec = mig.state(), mig.spec()
        entries = [(i, e) for i, e in enumerate(spec.routers) if isinstance(e, dict) and router in e]
        if not entries:
            named = ", ".join(next(iter(e)) for e in spec.routers if isinstance(e, dict)) or "none"
            _fail(f"the spec of {name} names no {router} router (it names: {named}); add it to the spec, e.g. "
                  f"routers: [{{{router}: {{...}}}}], and apply it (known routers: {', '.join(ROUTERS.names())})", 2)
        try:
            provider = create(entries[0][1], f"routers[{entries[0][0]}]")
            target = Target.for_stage(spec, stage) if stage else Target.from_state(state, spec)
        except KeyError as exc:
            _fail(str(exc).strip("'\""), 2)
        except ProviderConfigError as exc:
            _fail(str(exc), 2)
        if not isinstance(provider, Renders):
            _fail(f"the {router} router has nothing to render: it applies no files", 2)
        try:
            sys.stdout.write(provider.render(target))
        except RouterError as exc:
            _fail(str(exc))


def proxy(
    name: Name,
    legacy: Annotated[str, typer.Option("--legacy", help="The legacy upstream's base URL, e.g. http://127.0.0.1:8001.")],
    candidate: Annotated[str, typer.Option("--candidate", help="The candidate upstream's base URL.")],
    key: Annotated[str, typer.Option("--key", help="Where the sticky key is: header:NAME, cookie:NAME or query:NAME.")],
    listen: Annotated[str, typer.Option("--listen", help="host:port to serve on.")] = "127.0.0.1:8080",
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="A path left out of the comparison, "
                                                     "e.g. '$.body.request_id' (repeatable).")] = None,
    compare_header: Annotated[list[str] | None, typer.Option("--compare-header", help="A response header "
                                                             "compared (repeatable; default content-type).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds to wait for an upstream.")] = 30.0,
    url: Url = None,
) -> None:
    """Serve a reverse proxy that routes each request to legacy or candidate by its sticky key, falls back,
    mirrors and compares as the stage says, and records telemetry as the SDK does (needs the proxy extra: pip install '.\\[proxy]' from a clone)."""
    try:
        from crossfade.proxy import KeySource, ProxySettings
        from crossfade.proxy.run import serve as serve_proxy
    except ImportError as exc:
        _fail(f"crossfade proxy needs the proxy extra: pip install 'crossfade[proxy]' ({exc.name} is missing)")
    from crossfade.shadow import compile_path

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"--listen {listen!r}: expected host:port, e.g. 127.0.0.1:8080", 2)
    try:
        settings = ProxySettings(legacy, candidate, KeySource.parse(key),
                                 tuple(compare_header) if compare_header else ("content-type",), timeout)
        for path in ignore or ():
            compile_path(path)
    except ValueError as exc:
        _fail(str(exc), 2)
    with _client(url) as cf:
        if cf.backend().state(name) is None:
            raise UnknownMigration(f"no migration named {name!r}; apply its spec first (crossfade apply FILE)")
        out.print(f"crossfade proxy for {name} on http://{listen}: legacy {legacy}, candidate {candidate}, key {key}")
        serve_proxy(cf, name, settings, host=host, port=int(port), ignore=tuple(ignore or ()))


def serve(
    url: Url = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8765,
    open_reads: Annotated[bool, typer.Option(
        "--open-reads", help="Let callers on loopback read (GET) without a token, when the Host header is "
                             "localhost, 127.0.0.1, [::1] or an --allowed-host.")] = False,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="Another Host name under which --open-reads answers (repeatable).")] = None,
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        "--trusted-proxy", help="Address of a reverse proxy whose X-Forwarded-For is believed (repeatable); "
                                "without one, the connection's own address is the client's.")] = None,
    max_connections: Annotated[int | None, typer.Option(
        "--max-connections", min=1, help="Open connections allowed (default: 1000, and 64 below the process's "
                                         "descriptor limit).")] = None,
    no_controller: Annotated[bool, typer.Option(
        "--no-controller", help="Serve the API only; run the controller elsewhere.")] = False,
    program: Annotated[list[Path] | None, typer.Option(
        "--program", help="A program file whose progress the dashboard shows (repeatable).")] = None,
) -> None:
    """Run the control plane: HTTP API, SDK routing feed, dashboard at /, /metrics, and the controller loop.

    Needs the server extra (`pip install '.\\[server]'` from a clone). Several replicas may share one database: a lease per migration
    lets one controller act. Stop with Ctrl-C.
    """
    target = _target(url, changes=True)
    if target.startswith(("http:", "https:")):
        _fail("serve needs a database URL (sqlite:///... or postgresql://...), not another control plane", 2)
    try:
        from crossfade.server import Limits
        from crossfade.server import serve as run_server
    except ModuleNotFoundError as exc:
        _fail(f"the control plane needs its extra: {SERVER_EXTRA} ({exc})")
    _open(target, changes=True).close()  # a wrong or unreachable URL is one line before anything is served
    from crossfade.program import load_program

    try:
        programs = [load_program(path) for path in program or ()]
    except SpecError as exc:
        _fail(_message(exc), 2)

    def ready(bound: int) -> None:  # after binding, so --port 0 prints the port the OS chose
        where = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
        out.print(f"crossfade control plane on {where}: dashboard at {where}/ (sign in with a token), API at "
                  f"{where}/v1, metrics at {where}/metrics (they need a viewer token"
                  + (", except from loopback)" if open_reads else ")") + "; Ctrl-C stops it")

    limits = Limits() if max_connections is None else Limits(max_connections=max_connections)
    try:
        run_server(target, host=host, port=port, open_reads=open_reads, controller=not no_controller,
                   allowed_hosts=allowed_host or (), trusted_proxies=trusted_proxy or (), limits=limits,
                   programs=programs, on_ready=ready)
    except InvalidURL as exc:
        _fail(_message(exc), 2)
    except BackendError as exc:
        _fail(_message(exc))
