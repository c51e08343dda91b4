"""Running the proxy: in the foreground for `crossfade proxy`, or in a thread for tests and benchmarks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import uvicorn

from crossfade.client import Client
from crossfade.proxy.app import Proxy, ProxySettings


def _server(proxy: Proxy, host: str, port: int, log_level: str) -> uvicorn.Server:
    # uvloop and httptools when installed (the `server` extra, in `proxy`, brings them): the added latency is mostly
    # the HTTP parsing and the event loop.
    config = uvicorn.Config(proxy, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve(client: Client, name: str, settings: ProxySettings, *, host: str = "127.0.0.1", port: int = 8080,
          ignore: tuple[str, ...] = ()) -> None:
    """Serve until interrupted (SIGINT or SIGTERM)."""
    _server(Proxy(client.migration(name), settings, ignore=ignore), host, port, "info").run()


def serve_in_background(client: Client, name: str, settings: ProxySettings, *, host: str = "127.0.0.1",
                        port: int = 0, ignore: tuple[str, ...] = ()) -> tuple[str, Callable[[], None]]:
    """Start the proxy in a daemon thread; returns its base URL and a function that stops it."""
    server = _server(Proxy(client.migration(name), settings, ignore=ignore), host, port, "warning")
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=server.run, name="crossfade-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the proxy did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://{host}:{bound}", stop
