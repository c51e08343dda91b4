"""The default metric source: telemetry windows stored in the backend (SDK hosts, proxies, posted JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crossfade.registry import ConfigProblem, ProviderConfigError
from crossfade.stagedata import StageTelemetry, stage_windows

if TYPE_CHECKING:
    from crossfade.backends.base import Backend
    from crossfade.events import State
    from crossfade.spec import Spec
    from crossfade.telemetry import Window


@dataclass(frozen=True, slots=True)
class TelemetrySource:
    """Reads the backend's telemetry windows of a stage: whole, or through an incremental reader that keeps
    what it read (the controller loop's and the server's, which look at the same stage again and again)."""

    incremental: StageTelemetry | None = None
    name: str = "telemetry"

    def windows(self, backend: Backend, state: State, spec: Spec, now: float) -> list[Window]:
        """The stage's stored windows, from a minute before it was entered (newer ones too: `now` is now)."""
        # A store that fails raises BackendError, which the loop already retries: it is not a source failure.
        if self.incremental is not None:
            return self.incremental.windows(backend, state, spec, now)
        return stage_windows(backend, state)


def create(config: Mapping[str, Any], path: str) -> TelemetrySource:
    """The telemetry source; it takes no settings."""
    if config:
        raise ProviderConfigError([ConfigProblem(f"{path}.{key}", "unknown setting; the telemetry source takes "
                                                 "none (write source: {telemetry: {}})") for key in config])
    return TelemetrySource()
