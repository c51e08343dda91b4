"""Where crossfade keeps specs, events, state snapshots and telemetry: one protocol, several stores."""

from crossfade.backends.base import Backend, BackendError, BackendUnavailable, ConflictError, open_backend

__all__ = ["Backend", "BackendError", "BackendUnavailable", "ConflictError", "open_backend"]
