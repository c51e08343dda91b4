"""Metric sources: where the judge reads each arm's cells for a stage, one module per source.

`telemetry` (the default) reads the windows the SDK, `crossfade proxy` or any client posting to
`/v1/telemetry` stored in the backend; `prometheus` turns an existing Prometheus' counters and histogram
buckets into the same cells. A spec picks one with `source: {prometheus: {...}}`. Whatever the source, the
gates, triggers, statistics, `status` and the dashboard read the same `Window`s. A source that cannot answer
raises `SourceError`: the controller then holds (NODATA) and records `source_failed`, and never rolls back or
promotes on missing evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from crossfade.registry import Registry

if TYPE_CHECKING:
    from crossfade.backends.base import Backend
    from crossfade.events import State
    from crossfade.spec import Spec
    from crossfade.telemetry import Window

DEFAULT: Final = "telemetry"


class SourceError(Exception):
    """A metric source could not answer now (unreachable, refused, malformed answer); the message says which."""


class MetricSource(Protocol):
    """Per-arm cells of one stage of a migration over a time range, cut into windows."""

    name: str

    def windows(self, backend: Backend, state: State, spec: Spec, now: float) -> list[Window]:
        """The windows (arms `legacy` and `candidate`) of the stage `state` is in, from when it was entered
        (`state.stage_entered_at`) to `now`, in time order; raises `SourceError` when it cannot be read."""
        ...


REGISTRY: Final[Registry[MetricSource]] = Registry("metric source", "crossfade.metrics")


def source_name(config: Mapping[str, Any] | None) -> tuple[str, Mapping[str, Any] | None]:
    """The source a spec's `source:` entry names, and that source's own settings (the default when unset)."""
    if not config:
        return DEFAULT, None
    (name, settings), = config.items()
    return name, settings


def create_source(config: Mapping[str, Any] | None) -> MetricSource:
    """The source a spec's `source:` entry describes (already validated by `load_spec`)."""
    name, settings = source_name(config)
    return REGISTRY.create(name, settings, f"source.{name}")


def read_stage(backend: Backend, state: State, spec: Spec, now: float, *, telemetry: MetricSource | None = None
               ) -> list[Window]:
    """The current stage's windows through the spec's metric source; `telemetry` is the telemetry source to
    use (one that reads incrementally) when the spec names that one. Raises `SourceError`."""
    if not state.stage:
        return []
    name = source_name(spec.source)[0]
    if name == DEFAULT and telemetry is not None:
        return telemetry.windows(backend, state, spec, now)
    return create_source(spec.source).windows(backend, state, spec, now)
