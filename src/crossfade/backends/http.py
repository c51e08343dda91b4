"""The Backend protocol over a control plane's HTTP API: app hosts need a token, not database credentials.

Built on the standard library's http.client, so an app host installs nothing beyond crossfade itself and
`import crossfade` stays light. One keep-alive connection per thread; a long-poll thread (started when a
client subscribes) learns of a change as soon as the server does and wakes the client's refresh.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from crossfade.backends.base import (
    BackendError,
    BackendUnavailable,
    ConflictError,
    InvalidURL,
    OutcomeUnknown,
    UnknownMigration,
    redact_url,
)
from crossfade.events import APPLIED, Event, State, TransitionError
from crossfade.shadow import Example, FieldWindow
from crossfade.telemetry import Window, check_cell
from crossfade.tokens import TokenRecord

log = logging.getLogger("crossfade")

# The operation a sealed event stands for: the server re-decides it from its own state and seals it itself.
_ACTIONS = {
    "started": "start", "promoted": "promote", "approved": "approve", "paused": "pause", "resumed": "resume",
    "rolled_back": "rollback", "aborted": "abort", "restarted": "restart",
}
LONG_POLL = 30.0


class HTTPBackend:
    """A client of `crossfade serve` at `url` (`http://host:8765`), authenticated by a bearer `token`.

    Reads and telemetry need a token of role sdk; operations (apply, start, rollback, ...) an operator's,
    and the events they write name the token, not the local user. Leases and tokens live in the server's
    database: asking for them here is refused with what to run instead.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidURL(f"not a control plane URL: {redact_url(url)!r}; use http://host:8765")
        self.url = redact_url(url)
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._base = parts.path.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._local = threading.local()
        self._etag: str | None = None
        self._states: list[State] = []
        self._specs: dict[tuple[str, int], dict[str, Any]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()

    # -- transport -------------------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=timeout)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def request(self, method: str, path: str, body: Any = None, *, query: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, timeout: float | None = None,
                ok: tuple[int, ...] = (200,)) -> tuple[int, Any, http.client.HTTPResponse]:
        """Send one request; returns (status, decoded JSON or None, response). Errors become the exceptions
        the SDK and CLI already handle: BackendUnavailable, ConflictError, TransitionError, SpecError, ..."""
        target = self._base + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            target += "?" + urlencode(params)
        sent = {"Accept": "application/json", **(headers or {})}
        if self._token:
            sent["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), default=repr).encode()
            sent["Content-Type"] = "application/json"
        # A kept-alive connection the server closed meanwhile fails on first use: retry once on a fresh one.
        maybe_written = False
        for attempt in (1, 2):
            conn = self._connection(timeout or self.timeout)
            try:
                conn.request(method, target, body=data, headers=sent)
                # From here on the server may have acted on a change even if its answer never arrives.
                maybe_written = maybe_written or method not in ("GET", "HEAD")
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if attempt == 2 or self._closed.is_set():
                    kind = OutcomeUnknown if maybe_written else BackendUnavailable
                    raise kind(f"cannot reach the control plane at {self.url}: {exc}") from None
        payload = json.loads(raw) if raw and "json" in (response.getheader("Content-Type") or "") else None
        if response.status in ok:
            return response.status, payload, response
        raise _error(response.status, payload, self.url)

    # -- routing ---------------------------------------------------------------------------------

    def states(self) -> list[State]:
        """Every migration's state (a conditional GET: unchanged tables cost a 304)."""
        self._fetch_routing(wait=0.0)
        return list(self._states)

    def _fetch_routing(self, wait: float) -> bool:
        headers = {"If-None-Match": self._etag} if self._etag else {}
        status, body, response = self.request("GET", "/v1/routing", query={"wait": wait or None}, headers=headers,
                                              timeout=self.timeout + wait, ok=(200, 304))
        if status == 304:
            return False
        with self._lock:
            for item in body["specs"]:
                self._specs[(item["migration"], int(item["version"]))] = item["spec"]
            self._states = [State.from_dict(s) for s in body["states"]]
            self._etag = response.getheader("ETag") or body.get("etag")
        return True

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from a background thread) whenever the server's routing changes."""
        with self._lock:
            self._listeners.append(listener)
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="crossfade-long-poll", daemon=True)
                self._watcher.start()

    def _watch(self) -> None:
        backoff = 0.5
        while not self._closed.is_set():
            started = time.monotonic()
            try:
                changed = self._fetch_routing(wait=LONG_POLL)
                backoff = 0.5
            except BackendError as exc:
                log.debug("crossfade: long poll of %s failed: %s", self.url, exc)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if changed:
                for listener in list(self._listeners):
                    listener()
            elif time.monotonic() - started < 1.0:
                # An unchanged answer before the wait is up: the server is shutting down; do not spin.
                self._closed.wait(0.5)

    def state(self, migration: str) -> State | None:
        """The migration's state, or None if it was never applied."""
        status, body, _ = self.request("GET", f"/v1/migrations/{quote(migration, safe='')}/state", ok=(200, 404))
        return State.from_dict(body) if status == 200 else None

    def spec(self, migration: str, version: int | None = None) -> dict[str, Any] | None:
        """A stored spec version (the latest when None); routing fetches bring the ones in use along."""
        if version is not None and (migration, version) in self._specs:
            return self._specs[(migration, version)]
        status, body, _ = self.request("GET", f"/v1/migrations/{quote(migration, safe='')}/spec",
                                       query={"version": version}, ok=(200, 404))
        if status == 404:
            return None
        self._specs[(migration, int(body["version"]))] = body["spec"]
        return body["spec"]

    # -- the log ---------------------------------------------------------------------------------

    def append(self, migration: str, expected_seq: int, events: Sequence[Event], *, state: State,
               spec: Mapping[str, Any] | None = None) -> list[Event]:
        """Ask the server for the operation these events stand for; it seals them itself (actor: the token's
        name) at `expected_seq` or answers 409. Returns the events as the server stored them."""
        try:
            return self._operate(migration, expected_seq, events, spec)
        except (ConflictError, OutcomeUnknown) as exc:
            # The answer was lost, or a retry found the sequence number taken: perhaps by this very change.
            return self._reconcile(migration, expected_seq, events, exc)

    def _reconcile(self, migration: str, expected_seq: int, events: Sequence[Event],
                   exc: ConflictError | OutcomeUnknown) -> list[Event]:
        """The events as stored when the change was written after all; else `exc` (a conflict), or
        OutcomeUnknown when the log cannot be re-read now."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                found = self.events(migration, after=expected_seq, limit=len(events))
                break
            except BackendError as err:
                if time.monotonic() >= deadline or self._closed.is_set():
                    raise OutcomeUnknown(
                        f"{migration}: {events[0].type} was sent but the control plane's answer was lost, and the "
                        f"log cannot be re-read now ({err}): the outcome is unknown, not failed; re-read it "
                        f"(crossfade history {migration}) before doing it again") from None
                self._closed.wait(0.25)
        if [_gist(e) for e in found] == [_gist(e) for e in events]:
            log.info("crossfade: %s: the answer to %s was lost; re-read: it was written", migration, events[0].type)
            return found
        raise exc

    def _operate(self, migration: str, expected_seq: int, events: Sequence[Event],
                 spec: Mapping[str, Any] | None) -> list[Event]:
        name = quote(migration, safe="")
        first = events[0]
        if first.type == APPLIED and spec is not None:
            _, body, _ = self.request("PUT", f"/v1/migrations/{name}",
                                      {"spec": dict(spec), "expected_seq": expected_seq})
        elif first.type in _ACTIONS:
            request: dict[str, Any] = {"reason": first.reason, "expected_seq": expected_seq}
            if first.payload.get("forced"):
                request["force"] = True
            _, body, _ = self.request("POST", f"/v1/migrations/{name}/{_ACTIONS[first.type]}", request)
        else:
            raise BackendError(f"{first.type} events are written by the control plane's own controller, not sent to it")
        return [Event.from_dict(e) for e in body["events"]]

    def events(self, migration: str, *, after: int = 0, limit: int | None = None) -> list[Event]:
        """The migration's events with seq > `after`, page by page."""
        out: list[Event] = []
        cursor: int | None = after
        while cursor is not None and (limit is None or len(out) < limit):
            page = 1000 if limit is None else min(1000, limit - len(out))
            status, body, _ = self.request("GET", f"/v1/migrations/{quote(migration, safe='')}/events",
                                           query={"after": cursor, "limit": page}, ok=(200, 404))
            if status == 404:
                return []
            out += [Event.from_dict(e) for e in body["events"]]
            cursor = body["next_after"]
        return out

    # -- telemetry -------------------------------------------------------------------------------

    def write_windows(self, windows: Sequence[Window]) -> None:
        """Send telemetry windows to the server (role sdk), each with its idempotency key: a retry of a write
        whose answer was lost adds nothing."""
        if windows:
            _, body, _ = self.request("POST", "/v1/telemetry", {"windows": [
                {"migration": w.migration, "stage": w.stage, "arm": w.arm, "start": w.start, "length": w.length,
                 "cell": w.cell.to_dict(), **({"key": w.key} if w.key else {})} for w in windows]})
            skipped = (body or {}).get("skipped") or []
            if skipped:
                log.warning("crossfade: the control plane skipped %d of %d telemetry windows; first: %s",
                            len(skipped), len(windows), skipped[0].get("reason"))

    def windows(self, migration: str, *, stage: str | None = None, since: float | None = None,
                until: float | None = None) -> list[Window]:
        """Stored telemetry windows of a migration, in time order."""
        _, body, _ = self.request("GET", f"/v1/migrations/{quote(migration, safe='')}/telemetry",
                                  query={"stage": stage, "since": since, "until": until})
        return self._checked(migration, body["windows"])

    def stage_telemetry(self, migration: str, *, stage: str, entered: float | None) -> list[Window] | None:
        """The current stay's windows as the server's controller reads them (role viewer): old ones by hour,
        recent ones with each window's rows merged; None when the server's current stay is another one, or
        the server is older than this route (then the caller reads the stage whole, as before)."""
        status, body, _ = self.request("GET", f"/v1/migrations/{quote(migration, safe='')}/stage-telemetry",
                                       ok=(200, 404))
        if status == 404:
            if isinstance(body, dict) and body.get("kind") == "UnknownMigration":
                raise _error(status, body, self.url)
            return None
        if body["stage"] != stage or body["entered"] != entered:
            return None
        return self._checked(migration, body["windows"])

    def _checked(self, migration: str, windows: list[dict[str, Any]]) -> list[Window]:
        out = []
        for w in windows:
            try:
                out.append(Window(w["migration"], w["stage"], w["arm"], w["start"], w["length"], check_cell(w["cell"])))
            except ValueError as exc:  # a server older than the checks may hand back a bad row: skip it
                log.warning("crossfade: skipped a bad telemetry window of %s: %s", migration, exc)
        return out

    def write_comparisons(self, rows: Sequence[FieldWindow], examples: Sequence[Example], *, keep: int = 20) -> None:
        """Send shadow comparison counts and examples to the server (role sdk)."""
        if rows or examples:
            self.request("POST", "/v1/comparisons", {
                "rows": [{"migration": r.migration, "stage": r.stage, "path": r.path, "start": r.start,
                          "length": r.length, "counts": dict(r.counts)} for r in rows],
                "examples": [{"migration": e.migration, "stage": e.stage, "path": e.path, "time": e.time,
                              "detail": dict(e.detail)} for e in examples],
                "keep": keep})

    def comparisons(self, migration: str, *, stage: str | None = None) -> list[FieldWindow]:
        """Comparison counts, one row per stage and field path."""
        _, body, _ = self.request("GET", f"/v1/migrations/{quote(migration, safe='')}/comparisons",
                                  query={"stage": stage})
        return [FieldWindow(r["migration"], r["stage"], r["path"], r["start"], r["length"], r["counts"])
                for r in body["rows"]]

    def examples(self, migration: str, *, stage: str | None = None, path: str | None = None,
                 limit: int | None = None) -> list[Example]:
        """Kept mismatch examples, newest first."""
        _, body, _ = self.request("GET", f"/v1/migrations/{quote(migration, safe='')}/examples",
                                  query={"stage": stage, "path": path, "limit": limit})
        return [Example(e["migration"], e["stage"], e["path"], e["time"], e["detail"]) for e in body["examples"]]

    # -- what stays on the server ----------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """Refused: the controller runs inside `crossfade serve`, next to the database."""
        raise BackendError("the controller runs inside `crossfade serve`; run-controller needs a database URL")

    def acquire_leases(self, ttls: Mapping[str, float], holder: str, now: float) -> set[str]:
        """Refused, like `acquire_lease`."""
        raise BackendError("the controller runs inside `crossfade serve`; run-controller needs a database URL")

    def lease_holders(self, prefix: str, now: float) -> list[str]:
        """Refused, like `acquire_lease`."""
        raise BackendError("the controller runs inside `crossfade serve`; run-controller needs a database URL")

    def release_lease(self, name: str, holder: str) -> None:
        """Refused, like `acquire_lease`."""
        raise BackendError("the controller runs inside `crossfade serve`; run-controller needs a database URL")

    def create_token(self, name: str, role: str, token_hash: str, now: float, *,
                     migrations: Sequence[str] = ()) -> TokenRecord:
        """Refused: tokens are made on the server's database."""
        raise BackendError("tokens are made on the control plane's database: crossfade token create --url DB_URL")

    def tokens(self) -> list[TokenRecord]:
        """The tokens' names, roles and lifetimes (role admin); hashes are never sent."""
        _, body, _ = self.request("GET", "/v1/tokens")
        return [TokenRecord(t["name"], t["role"], "", t["created_at"], t["revoked_at"]) for t in body]

    def revoke_token(self, name: str, now: float) -> int:
        """Refused: tokens are revoked on the server's database."""
        raise BackendError("tokens are revoked on the control plane's database: crossfade token revoke NAME --url DB_URL")

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        """Refused: only the server checks tokens."""
        raise BackendError("only the control plane checks tokens")

    def after_fork(self) -> None:
        """In a forked child: the parent's connections and long-poll thread are not ours."""
        self._local = threading.local()
        self._lock = threading.Lock()
        listeners, self._listeners, self._watcher = self._listeners, [], None
        for listener in listeners:
            self.subscribe(listener)

    def close(self) -> None:
        """Stop the long poll and drop this thread's connection."""
        self._closed.set()
        self._drop_connection()

    def __repr__(self) -> str:
        return f"HTTPBackend({self.url!r})"


def _gist(event: Event) -> tuple[str, str | None, Any]:
    """What identifies a change regardless of who sealed it and when: its type, reason and spec digest."""
    return event.type, event.reason, event.payload.get("digest")


def _error(status: int, body: Any, url: str) -> Exception:
    from crossfade.spec import Problem, SpecError

    message = body.get("error") if isinstance(body, dict) else None
    kind = body.get("kind") if isinstance(body, dict) else None
    message = message or f"HTTP {status} from {url}"
    if kind == "SpecError":
        return SpecError("<server>", [Problem(p["path"], p["message"]) for p in body.get("problems") or []])
    if kind == "TransitionError":
        return TransitionError(message)
    if kind == "ConflictError":
        return ConflictError(message)
    if kind == "UnknownMigration":
        return UnknownMigration(message)
    if status in (502, 503, 504) or kind == "BackendUnavailable":
        return BackendUnavailable(f"the control plane at {url} cannot serve now: {message}")
    return BackendError(f"the control plane at {url} refused (HTTP {status}): {message}")
