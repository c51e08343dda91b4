"""crossfade: replace a running system without breaking it.

Wrap a call site once; crossfade routes each call by a sticky key, runs the candidate beside or instead of
legacy stage by stage, falls back to legacy when the candidate fails, and records every call and change.
Only the SDK's light modules are imported here: the SQL stack, the CLI and the server load when used.
"""

from crossfade.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ConflictError,
    UnknownMigration,
)
from crossfade.client import Client, connect
from crossfade.events import Event, State, TransitionError
from crossfade.migration import Migration, Observation
from crossfade.routing import Decision
from crossfade.spec import Spec, SpecError, load_spec

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendError", "BackendUnavailable", "Client", "ConflictError", "Decision", "Event",
    "Migration", "Observation", "Spec", "SpecError", "State", "TransitionError", "UnknownMigration",
    "__version__", "connect", "load_spec",
]
