"""The Backend protocol every store implements, its errors, and opening one from a URL."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from crossfade.events import Event, State
    from crossfade.backends.totals import StageSnapshot
    from crossfade.shadow import Example, FieldWindow
    from crossfade.telemetry import Window
    from crossfade.tokens import TokenRecord


_SECRET_PARAMS: Final = ("password", "passwd", "pwd", "token", "secret", "sslpassword", "access_token", "key")


def redact_url(url: str) -> str:
    """The URL with its credentials replaced by `***` (the password, and query values such as `password=`):
    the only form of a backend URL crossfade prints, logs or puts in an error."""
    try:
        parts = urlsplit(url)
        secret_query = any(item.partition("=")[0].lower() in _SECRET_PARAMS for item in parts.query.split("&"))
        if parts.password is None and not secret_query:
            return url
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        query = "&".join(
            f"{k}=***" if k.lower() in _SECRET_PARAMS else (f"{k}={v}" if v or "=" in item else k)
            for item in parts.query.split("&") if item for k, _, v in [item.partition("=")]
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL: show nothing that could be a secret
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"


class BackendError(Exception):
    """A store refused or failed an operation; the message says which and why."""


class BackendUnavailable(BackendError):
    """The store cannot be reached now (file gone, server down); the operation may succeed later."""


class OutcomeUnknown(BackendUnavailable):
    """A change was sent but its answer was lost, and re-reading could not tell whether it was written: the
    outcome is unknown (never "failed"); re-read the migration before doing it again."""


class InvalidURL(BackendError):
    """A backend URL that names no store crossfade can use (its scheme, its form); the message says what would."""


class UnknownMigration(LookupError):
    """No spec was ever applied under this name."""


class ConflictError(BackendError):
    """Another writer appended to the migration first: the expected sequence number is taken."""


@runtime_checkable
class Backend(Protocol):
    """Durable storage of migrations. Every method is safe to call from several threads."""

    url: str

    def append(
        self,
        migration: str,
        expected_seq: int,
        events: Sequence[Event],
        *,
        state: State,
        spec: Mapping[str, Any] | None = None,
    ) -> Sequence[Event] | None:
        """Atomically append events numbered `expected_seq + 1...`, store `state` as the migration's
        snapshot and, when given, `spec` as the spec version numbered by the first event's seq.
        Raises ConflictError when `expected_seq` is no longer the last event's number. A store that seals
        events itself (a control plane, whose actor is the token's name) returns the events it stored."""

    def events(self, migration: str, *, after: int = 0, limit: int | None = None) -> list[Event]:
        """The migration's events with seq > `after`, in order, at most `limit` of them."""

    def state(self, migration: str) -> State | None:
        """The migration's stored state snapshot, or None if it was never applied."""

    def states(self) -> list[State]:
        """Every migration's state snapshot, ordered by name."""

    def spec(self, migration: str, version: int | None = None) -> dict[str, Any] | None:
        """The spec stored at `version` (the latest when None), as its `to_dict` form."""

    def write_windows(self, windows: Sequence[Window]) -> None:
        """Store telemetry windows. Rows from many processes for one window add up."""

    def windows(
        self, migration: str, *, stage: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[Window]:
        """Telemetry windows of a migration (one stage, windows starting in [since, until)), in time order."""

    def write_comparisons(self, rows: Sequence[FieldWindow], examples: Sequence[Example], *, keep: int = 20) -> None:
        """Store shadow comparison counts (rows for one stage and path add up) and mismatch examples,
        keeping only the newest `keep` examples per migration and field path."""

    def comparisons(self, migration: str, *, stage: str | None = None) -> list[FieldWindow]:
        """Comparison counts of a migration, one row per stage and field path, summed over all windows."""

    def examples(self, migration: str, *, stage: str | None = None, path: str | None = None,
                 limit: int | None = None) -> list[Example]:
        """Kept mismatch examples of a migration (one stage, one path), newest first, at most `limit`."""

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """Take or renew a lease until `now + ttl`; False while another holder's has not expired."""

    def acquire_leases(self, ttls: Mapping[str, float], holder: str, now: float) -> set[str]:
        """Take or renew many leases at once (name -> ttl), each as `acquire_lease` would; the names taken."""

    def lease_holders(self, prefix: str, now: float) -> list[str]:
        """The holders of the unexpired leases whose names start with `prefix`, sorted."""

    def release_lease(self, name: str, holder: str) -> None:
        """Give a lease up if `holder` holds it."""

    def create_token(self, name: str, role: str, token_hash: str, now: float, *,
                     migrations: Sequence[str] = ()) -> TokenRecord:
        """Store a new token by its hash, bound to `migrations` when given (none: every migration).
        ConflictError when an unrevoked token already has this name."""

    def tokens(self) -> list[TokenRecord]:
        """Every token ever created (revoked ones too), oldest first."""

    def revoke_token(self, name: str, now: float) -> int:
        """Revoke the unrevoked tokens named `name`; returns how many were revoked."""

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        """The unrevoked token with this hash, or None."""

    def close(self) -> None:
        """Release connections. The backend is not used afterwards."""


@runtime_checkable
class IncrementalTelemetry(Protocol):
    """A store that hands out only the telemetry rows written after a given one, so a reader that keeps
    what it read pays for news, not for history. Row ids grow, but (on PostgreSQL) a row may become
    visible after rows with higher ids: a reader re-checks recent ids for late ones."""

    def telemetry_ids(self, migration: str, *, stage: str, after_id: int, upto: int,
                      rolled_after: int | None = None) -> list[int]:
        """The ids of one stage's rows in (after_id, upto]; with `rolled_after`, only those not rolled up
        into its totals by then (by a generation up to it)."""

    def telemetry_rows(self, migration: str, *, stage: str, after_id: int,
                       also: Collection[int] = ()) -> list[tuple[int, Window]]:
        """One stage's rows with an id above `after_id` or in `also`, unmerged, with their ids, in id order."""


@runtime_checkable
class RolledUpStage(Protocol):
    """A store that hands out a stage's telemetry already rolled up as the controller reads it (a control
    plane answers from its own incremental reader), so a reader far from the database pays for a few hundred
    windows, not for every window of the stage."""

    def stage_telemetry(self, migration: str, *, stage: str, entered: float | None) -> list[Window] | None:
        """The current stay's windows (old ones by hour, recent ones with each window's rows merged), or None
        when the store's current stay of the migration is not this one (it moved on meanwhile)."""


@runtime_checkable
class StageTotals(Protocol):
    """A store that keeps running totals of each stage's stay, rolled up from its rows by hour and, for the
    newest hour, by window, so that the first look at a stage reads its hours, a total per recent window and
    arm, and the rows written since the last roll-up, instead of every row."""

    def roll_up(self, migration: str, *, stage: str, entered: float, before: float,
                windows_before: float | None = None) -> int:
        """Add the stay's rows of windows that ended by `before` into its hourly totals and of those that
        ended by `windows_before` into per-window totals, a page at a time; returns the rows taken (call again
        while that is a full page). Each row is added once, whoever runs it."""

    def stage_snapshot(self, migration: str, *, stage: str, entered: float) -> StageSnapshot:
        """The stay's totals and its rows not rolled into them, read in one snapshot."""
