"""Prometheus exposition: per migration its stage, traffic, verdicts, rollbacks and events; per arm calls, errors,
timeouts, cost, compared and mismatched answers and latency histograms; per gate its estimate, bounds and limit;
notifications by status; the controller's lag. Read from the store at scrape time, so every replica agrees."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from crossfade.backends.base import Backend
from crossfade.controller import assess, is_active, stage_cells
from crossfade.events import ROLLBACK_STARTED, ROLLED_BACK, ROLLING_BACK, State
from crossfade.metricjudge import declared_figures
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.sketch import Sketch
from crossfade.spec import Spec
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


class _EventCounts:
    """Per migration, rollbacks and events by type, counted by folding each log once, then only its new events."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[State, int, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def count(self, backend: Backend, state: State) -> tuple[int, dict[str, int]]:
        """(rollbacks begun, events by type) of one migration."""
        with self._lock:
            folded, total, types = self._seen.get(state.name, (State(state.name), 0, {}))
            if folded.seq < state.seq:
                types = dict(types)
                for event in backend.events(state.name, after=folded.seq):
                    # A gradual rollback is one rollback: its start counts, its final step does not.
                    if event.type == ROLLBACK_STARTED or (event.type == ROLLED_BACK and folded.status != ROLLING_BACK):
                        total += 1
                    types[event.type] = types.get(event.type, 0) + 1
                    folded = folded.apply(event)
                self._seen[state.name] = (folded, total, types)
            return total, types


class CrossfadeCollector(Collector):
    """Collects the migrations' figures from the backend at each scrape."""

    def __init__(self, backend: Backend, *, controller_lag: Callable[[], float | None],
                 feed_age: Callable[[], float | None],
                 stage_windows: Callable[[State], Sequence[Window]] | None = None,
                 spec: Callable[[str, int], Spec] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.stage_windows = stage_windows or (lambda state: read_stage(backend, state))
        self.controller_lag = controller_lag
        self.feed_age = feed_age
        self.spec = spec
        self.clock = clock
        self._events = _EventCounts()

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
        source = GaugeMetricFamily("crossfade_metric_source_failing",
                                   "1 while the migration's metric source cannot be read (its stage holds)",
                                   labels=["migration"])
        calls = CounterMetricFamily("crossfade_arm_calls", "Calls per arm in the current stage",
                                    labels=["migration", "stage", "arm"])
        errors = CounterMetricFamily("crossfade_arm_errors", "Failed calls per arm in the current stage",
                                     labels=["migration", "stage", "arm"])
        fallbacks = CounterMetricFamily("crossfade_arm_fallbacks", "Candidate calls answered by legacy",
                                        labels=["migration", "stage", "arm"])
        latency = HistogramMetricFamily("crossfade_arm_latency_seconds", "Call latency per arm in the current stage",
                                        labels=["migration", "stage", "arm"])
        arm = ["migration", "stage", "arm"]
        timeouts = CounterMetricFamily("crossfade_arm_timeouts", "Calls per arm that timed out", labels=arm)
        cost = CounterMetricFamily("crossfade_arm_cost", "Sum of the recorded cost per arm (the spec's unit)",
                                   labels=arm)
        costed = CounterMetricFamily("crossfade_arm_costed_calls", "Calls per arm that recorded a cost", labels=arm)
        compared = CounterMetricFamily("crossfade_arm_compared", "Answers per arm compared with the other arm's",
                                       labels=arm)
        mismatched = CounterMetricFamily("crossfade_arm_mismatches", "Compared answers per arm that differed",
                                         labels=arm)
        custom = [*arm, "metric"]
        recorded = CounterMetricFamily("crossfade_arm_metric_values", "Values recorded per arm of each custom metric "
                                       "(obs.metric, metrics=, mig.record; similarity for graded comparisons)",
                                       labels=custom)
        recorded_sum = CounterMetricFamily("crossfade_arm_metric_sum", "Sum of the values recorded per arm of each "
                                           "custom metric", labels=custom)
        declared = GaugeMetricFamily("crossfade_arm_metric", "Each declared custom metric per arm as the spec "
                                     "judges it (a rate, a count, a mean or a quantile; NaN without data)",
                                     labels=custom)
        gate = ["migration", "gate"]
        estimate = GaugeMetricFamily("crossfade_gate_estimate", "A gate's current estimate (NaN without data)",
                                     labels=gate)
        lower = GaugeMetricFamily("crossfade_gate_lower", "Lower bound of the gate's confidence interval", labels=gate)
        upper = GaugeMetricFamily("crossfade_gate_upper", "Upper bound of the gate's confidence interval", labels=gate)
        limit = GaugeMetricFamily("crossfade_gate_limit", "The limit the gate holds the candidate to", labels=gate)
        events = CounterMetricFamily("crossfade_events", "Events recorded per migration and type (router_failed, "
                                     "source_failed, rolled_back, ...)", labels=["migration", "type"])
        for state in self.backend.states():
            name = state.name
            info.add_metric([name, state.status, state.stage or ""], 1.0)
            stage.add_metric([name], float(state.stage_index))
            traffic.add_metric([name], state.traffic)
            shadow.add_metric([name], state.shadow)
            for gate, current in state.verdicts:
                for v in VERDICTS:
                    verdict.add_metric([name, gate, v], 1.0 if v == current else 0.0)
            begun, types = self._events.count(self.backend, state)
            rollbacks.add_metric([name], float(begun))
            for kind, n in sorted(types.items()):
                events.add_metric([name, kind], float(n))
            source.add_metric([name], 0.0 if state.source_error is None else 1.0)
            if not state.stage:
                continue
            windows = self.stage_windows(state)
            for arm_name, cell in sorted(stage_cells(state, windows).items()):
                labels = [name, state.stage, arm_name]
                calls.add_metric(labels, float(cell.calls))
                errors.add_metric(labels, float(cell.errors))
                fallbacks.add_metric(labels, float(cell.fallbacks))
                timeouts.add_metric(labels, float(cell.timeouts))
                cost.add_metric(labels, cell.cost_sum)
                costed.add_metric(labels, float(cell.costed))
                compared.add_metric(labels, float(cell.compared))
                mismatched.add_metric(labels, float(cell.mismatches))
                latency.add_metric(labels, histogram_buckets(cell.latency), cell.latency.total)
                for metric_name, tally in sorted(cell.metrics.items()):
                    recorded.add_metric([*labels, metric_name], float(tally.count))
                    recorded_sum.add_metric([*labels, metric_name], tally.total)
            spec = self.spec(name, state.spec_version) if self.spec is not None else None
            if spec is not None and spec.metrics:
                cells = stage_cells(state, windows)
                for metric_name, shown in declared_figures(spec, cells).items():
                    for arm_name in (CANDIDATE, LEGACY):
                        value = shown[arm_name]
                        declared.add_metric([name, state.stage, arm_name, metric_name],
                                            math.nan if value is None else float(value))
            model = spec if is_active(state) else None
            if model is not None and state.stage_index + 1 < len(model.stages):
                judged = assess(model, state, windows, self.clock())
                for g in judged.judgement.gates:
                    for family, value in ((estimate, g.estimate), (lower, g.lower), (upper, g.upper),
                                          (limit, g.limit)):
                        family.add_metric([name, g.gate], math.nan if value is None else float(value))
        yield from (info, stage, traffic, shadow, verdict, rollbacks, events, source, calls, errors, fallbacks,
                    timeouts, cost, costed, compared, mismatched, latency, recorded, recorded_sum, declared, estimate,
                    lower, upper, limit)
        yield from self._notifications()
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

    def _notifications(self) -> Iterator[Metric]:
        outbox = getattr(self.backend, "outbox", None)
        if outbox is None:
            return
        family = GaugeMetricFamily("crossfade_notifications", "Notifications per migration, target and delivery "
                                   "status (pending: not yet received, retried with backoff)",
                                   labels=["migration", "target", "status"])
        for (migration, target, status), n in sorted(outbox.counts().items()):
            family.add_metric([migration, target, status], float(n))
        yield family


def registry(collector: CrossfadeCollector) -> CollectorRegistry:
    """A registry of one server's metrics (not the process-wide default, so several apps can coexist)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg
