"""The default metric source: telemetry windows stored in the backend (SDK hosts, proxies, posted JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from crossfade.registry import ConfigProblem, ProviderConfigError

if TYPE_CHECKING:
    from crossfade.backends.base import Backend
    from crossfade.telemetry import Window

# How far before a stage's entry windows are read: a window that began before the stage was entered may
# hold its first calls (windows are 10 s by default; a minute covers any sensible setting).
WINDOW_MARGIN: Final = 60.0


@dataclass(frozen=True, slots=True)
class TelemetrySource:
    """Reads the backend's telemetry windows of a stage."""

    name: str = "telemetry"

    def windows(self, backend: Backend, migration: str, stage: str, since: float | None, until: float) -> list[Window]:
        """The stage's stored windows from `WINDOW_MARGIN` before `since` (newer ones too: `until` is now)."""
        # A store that fails raises BackendError, which the loop already retries: it is not a source failure.
        return backend.windows(migration, stage=stage, since=None if since is None else since - WINDOW_MARGIN)


def create(config: Mapping[str, Any], path: str) -> TelemetrySource:
    """The telemetry source; it takes no settings."""
    if config:
        raise ProviderConfigError([ConfigProblem(f"{path}.{key}", "unknown setting; the telemetry source takes "
                                                 "none (write source: {telemetry: {}})") for key in config])
    return TelemetrySource()
