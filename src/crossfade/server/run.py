"""Running the control plane: in the foreground for `crossfade serve`, or in a thread for the demo and tests."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

import uvicorn

from crossfade.backends import Backend, BackendError, open_backend
from crossfade.program import Program
from crossfade.server.app import create_app
from crossfade.server.feed import RoutingFeed
from crossfade.server.guard import default_backlog, default_max_connections, guarded_protocol


class _Server(uvicorn.Server):
    """uvicorn's server, which first answers the long polls, so shutting down waits for no one."""

    def __init__(self, config: uvicorn.Config, feed: RoutingFeed,
                 on_ready: Callable[[int], None] | None = None) -> None:
        super().__init__(config)
        self.feed = feed
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Bind as uvicorn does, then tell `on_ready` the port bound (the one the OS chose for port 0)."""
        await super().startup(sockets)
        if self.started and self.on_ready is not None and self.servers and self.servers[0].sockets:
            self.on_ready(self.servers[0].sockets[0].getsockname()[1])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """On SIGINT or SIGTERM: release the long polls, then stop as uvicorn does."""
        self.feed.release()
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Stop from another thread."""
        self.feed.release()
        self.should_exit = True


@dataclass(frozen=True, slots=True)
class Limits:
    """What clients can hold of the server: open connections, seconds to send a request's head, seconds an
    idle kept-alive connection stays open, and connections queued (and accepted at once) by the kernel."""

    max_connections: int = field(default_factory=default_max_connections)
    header_timeout: float = 10.0
    keep_alive: float = 5.0
    backlog: int = field(default_factory=default_backlog)


def _server(backend: Backend, host: str, port: int, *, open_reads: bool, controller: bool, log_level: str,
            allowed_hosts: Sequence[str] = (), trusted_proxies: Sequence[str] = (),
            limits: Limits | None = None, on_ready: Callable[[int], None] | None = None,
            programs: Sequence[Program] = ()) -> _Server:
    limits = limits or Limits()
    app = create_app(backend, open_reads=open_reads, controller=controller, allowed_hosts=allowed_hosts,
                     programs=programs)
    # X-Forwarded-For is believed only from the proxies named: otherwise any local process could pose as
    # any address (and have the limiter lock that address out).
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on",
                            http=guarded_protocol(limits.max_connections, limits.header_timeout),
                            timeout_keep_alive=int(max(1, limits.keep_alive)), backlog=limits.backlog,
                            proxy_headers=bool(trusted_proxies), forwarded_allow_ips=list(trusted_proxies) or None)
    return _Server(config, app.state.feed, on_ready)


def serve(backend_url: str, *, host: str = "127.0.0.1", port: int = 8765, open_reads: bool = False,
          controller: bool = True, allowed_hosts: Sequence[str] = (), trusted_proxies: Sequence[str] = (),
          limits: Limits | None = None, on_ready: Callable[[int], None] | None = None,
          programs: Sequence[Program] = ()) -> None:
    """Serve until interrupted (SIGINT or SIGTERM), then release the controller's leases. `on_ready` is
    called with the port bound once the server listens; the dashboard and `GET /v1/programs` show the
    `programs`' progress."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Alembic narrates a schema creation at INFO; the log is for what the control plane does.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    backend = open_backend(backend_url)
    try:
        _server(backend, host, port, open_reads=open_reads, controller=controller, log_level="info",
                allowed_hosts=allowed_hosts, trusted_proxies=trusted_proxies, limits=limits,
                on_ready=on_ready, programs=programs).run()
    finally:
        backend.close()


def serve_in_background(
    backend_url: str | Backend,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    open_reads: bool = True,
    controller: bool = True,
    log_level: str = "warning",
    limits: Limits | None = None,
    programs: Sequence[Program] = (),
) -> tuple[str, Callable[[], None]]:
    """Start the control plane in a daemon thread; returns its base URL and a function that stops it.

    `port=0` picks a free port. A backend passed as a URL is opened here and closed by `stop`; a Backend
    object stays its caller's. Reads are open to loopback by default: the demo's dashboard needs no token.
    """
    owned = isinstance(backend_url, str)
    backend = open_backend(backend_url) if isinstance(backend_url, str) else backend_url
    server = _server(backend, host, port, open_reads=open_reads, controller=controller, log_level=log_level,
                     limits=limits, programs=programs)
    # uvicorn installs signal handlers only on the main thread; here it must not.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, name="crossfade-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.stop()
            if owned:
                backend.close()
            raise BackendError(f"the control plane did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.stop()
        thread.join(timeout=10)
        if owned:
            backend.close()

    return f"http://{host}:{bound}", stop
