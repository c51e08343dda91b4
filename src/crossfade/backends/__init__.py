"""Where crossfade keeps specs, events, state snapshots and telemetry: one protocol, several stores."""

from crossfade.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ConflictError,
    InvalidURL,
    OutcomeUnknown,
    UnknownMigration,
    redact_url,
)

__all__ = ["Backend", "BackendError", "BackendUnavailable", "ConflictError", "InvalidURL", "OutcomeUnknown",
           "UnknownMigration", "open_backend", "redact_url"]


def open_backend(url: str, *, token: str | None = None) -> Backend:
    """The backend a URL names: `sqlite:///path`, `postgresql://...`, or `http(s)://host:port` of a control
    plane (with `token`); each implementation is imported only when used."""
    if url.startswith(("http:", "https:")):
        from crossfade.backends.http import HTTPBackend

        return HTTPBackend(url, token=token)
    if url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
        from crossfade.backends.sql import SQLBackend

        return SQLBackend(url)
    raise InvalidURL(
        f"unsupported backend URL {redact_url(url)!r}: use sqlite:///path/to/file.db, postgresql://user@host/db "
        "or http://host:8765 (a control plane)"
    )
