"""Prometheus exposition: per migration its stage, traffic, verdicts and rollbacks; per arm calls, errors and
latency histograms; the controller's lag. Read from the store at scrape time, so every replica agrees."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from crossfade.backends.base import Backend
from crossfade.controller import stage_cells
from crossfade.events import ROLLBACK_STARTED, ROLLED_BACK, ROLLING_BACK, State
from crossfade.sketch import Sketch
from crossfade.stagedata import stage_windows as read_stage
from crossfade.telemetry import Window

# Latency bucket bounds (seconds) for the per-arm histograms: 1 ms to 10 s, the range call sites live in.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE", "NODATA")


def histogram_buckets(sketch: Sketch) -> list[tuple[str, float]]:
    """Cumulative counts at each bound (the sketch's 1% accuracy carries over), then +Inf."""
    out = []
    values = list(sketch.buckets())
    for bound in BUCKETS:
        out.append((repr(bound), float(sum(n for value, n in values if value <= bound))))
    out.append(("+Inf", float(sketch.count)))
    return out


class _Rollbacks:
    """Rollbacks per migration, counted by folding each log once, then only its new events."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[State, int]] = {}
        self._lock = threading.Lock()

    def count(self, backend: Backend, state: State) -> int:
        with self._lock:
            folded, total = self._seen.get(state.name, (State(state.name), 0))
            if folded.seq < state.seq:
                for event in backend.events(state.name, after=folded.seq):
                    # A gradual rollback is one rollback: its start counts, its final step does not.
                    if event.type == ROLLBACK_STARTED or (event.type == ROLLED_BACK and folded.status != ROLLING_BACK):
                        total += 1
                    folded = folded.apply(event)
                self._seen[state.name] = (folded, total)
            return total


class CrossfadeCollector(Collector):
    """Collects the migrations' figures from the backend at each scrape."""

    def __init__(self, backend: Backend, *, controller_lag: Callable[[], float | None],
                 feed_age: Callable[[], float | None],
                 stage_windows: Callable[[State], Sequence[Window]] | None = None) -> None:
        self.backend = backend
        self.stage_windows = stage_windows or (lambda state: read_stage(backend, state))
        self.controller_lag = controller_lag
        self.feed_age = feed_age
        self._rollbacks = _Rollbacks()

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read now."""
        info = GaugeMetricFamily("crossfade_migration_info", "A migration's status and stage (always 1)",
                                 labels=["migration", "status", "stage"])
        stage = GaugeMetricFamily("crossfade_migration_stage_index", "Index of the current stage (-1: not started)",
                                  labels=["migration"])
        traffic = GaugeMetricFamily("crossfade_migration_traffic_ratio", "Share of keys the candidate serves",
                                    labels=["migration"])
        shadow = GaugeMetricFamily("crossfade_migration_shadow_ratio", "Share of legacy calls shadowed",
                                   labels=["migration"])
        verdict = GaugeMetricFamily("crossfade_gate_verdict", "1 for each gate's current verdict, 0 for the others",
                                    labels=["migration", "gate", "verdict"])
        rollbacks = CounterMetricFamily("crossfade_rollbacks", "Rollbacks begun", labels=["migration"])
        calls = CounterMetricFamily("crossfade_arm_calls", "Calls per arm in the current stage",
                                    labels=["migration", "stage", "arm"])
        errors = CounterMetricFamily("crossfade_arm_errors", "Failed calls per arm in the current stage",
                                     labels=["migration", "stage", "arm"])
        fallbacks = CounterMetricFamily("crossfade_arm_fallbacks", "Candidate calls answered by legacy",
                                        labels=["migration", "stage", "arm"])
        latency = HistogramMetricFamily("crossfade_arm_latency_seconds", "Call latency per arm in the current stage",
                                        labels=["migration", "stage", "arm"])
        for state in self.backend.states():
            name = state.name
            info.add_metric([name, state.status, state.stage or ""], 1.0)
            stage.add_metric([name], float(state.stage_index))
            traffic.add_metric([name], state.traffic)
            shadow.add_metric([name], state.shadow)
            for gate, current in state.verdicts:
                for v in VERDICTS:
                    verdict.add_metric([name, gate, v], 1.0 if v == current else 0.0)
            rollbacks.add_metric([name], float(self._rollbacks.count(self.backend, state)))
            if not state.stage:
                continue
            for arm, cell in sorted(stage_cells(state, self.stage_windows(state)).items()):
                labels = [name, state.stage, arm]
                calls.add_metric(labels, float(cell.calls))
                errors.add_metric(labels, float(cell.errors))
                fallbacks.add_metric(labels, float(cell.fallbacks))
                latency.add_metric(labels, histogram_buckets(cell.latency), cell.latency.total)
        yield from (info, stage, traffic, shadow, verdict, rollbacks, calls, errors, fallbacks, latency)
        skipped = CounterMetricFamily("crossfade_telemetry_rows_skipped", "Stored telemetry rows that could not be "
                                      "read as cells, skipped by every reader")
        skipped.add_metric([], float(getattr(self.backend, "skipped_rows", 0)))
        yield skipped
        lag = GaugeMetricFamily("crossfade_controller_lag_seconds",
                                "Seconds since the controller loop last completed a pass (-1: not running)")
        value = self.controller_lag()
        lag.add_metric([], -1.0 if value is None else value)
        yield lag
        age = GaugeMetricFamily("crossfade_routing_feed_age_seconds",
                                "Seconds since the routing feed last read the store (-1: never)")
        value = self.feed_age()
        age.add_metric([], -1.0 if value is None else value)
        yield age


def registry(collector: CrossfadeCollector) -> CollectorRegistry:
    """A registry of one server's metrics (not the process-wide default, so several apps can coexist)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg
