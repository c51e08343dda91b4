"""The Prometheus metric source: per-arm PromQL counters and histogram buckets turned into the judge's cells.

Each query is a template of counter series for one arm (`$arm` is replaced by the arm's label value from
`arms`, `$selector` by `,` and the extra matchers in `selector`). crossfade reads every series itself with
`query_range` on a grid of `step` seconds anchored at the stage's entry (and `query` at the current moment for
the last partial window), takes each series' increase between grid points (a counter that went down was
reset, so its new value is the increase; a series first seen after the stage began counts from zero), and
sums the series of an arm. Templates should therefore select counters, not `sum()` or `rate()` of them: a
sum hides one process's restart as a drop. Counts are exact at the scrape resolution; latency comes from a
histogram's `_bucket` series, kept as fixed buckets, so a quantile's interval is as wide as its buckets.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING, Any, Final

from crossfade.metrics import SourceError
from crossfade.registry import ConfigProblem, ProviderConfigError
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.sketch import Buckets
from crossfade.telemetry import Cell, Window

if TYPE_CHECKING:
    from crossfade.backends.base import Backend
    from crossfade.events import State
    from crossfade.spec import Spec

# The cell fields a query may fill: counters (whole numbers), sums, and the latency histogram and its sum.
COUNTS: Final = ("calls", "errors", "fallbacks", "timeouts", "costed", "compared", "mismatches")
SUMS: Final = ("cost_sum", "cost_sq")
QUERIES: Final = (*COUNTS, *SUMS, "latency", "latency_sum")
UNITS: Final = {"s": 1.0, "ms": 0.001}
# Prometheus refuses a query_range of more than 11,000 points per series; longer stages get a coarser step.
MAX_POINTS: Final = 10_000

_ISTIO = 'reporter="destination",destination_version="$arm"$selector'
_ENVOY = 'envoy_cluster_name="$arm"$selector'
_NGINX = 'service="$arm"$selector'
PRESETS: Final[dict[str, tuple[dict[str, str], str]]] = {
    # Istio's standard metrics, as each sidecar reports them for the workload version it serves.
    "istio": ({
        "calls": f"istio_requests_total{{{_ISTIO}}}",
        "errors": f'istio_requests_total{{response_code=~"5..",{_ISTIO}}}',
        "latency": f"istio_request_duration_milliseconds_bucket{{{_ISTIO}}}",
        "latency_sum": f"istio_request_duration_milliseconds_sum{{{_ISTIO}}}",
    }, "ms"),
    # Envoy's cluster statistics, one upstream cluster per arm.
    "envoy": ({
        "calls": f"envoy_cluster_upstream_rq_total{{{_ENVOY}}}",
        "errors": f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5",{_ENVOY}}}',
        "latency": f"envoy_cluster_upstream_rq_time_bucket{{{_ENVOY}}}",
        "latency_sum": f"envoy_cluster_upstream_rq_time_sum{{{_ENVOY}}}",
    }, "ms"),
    # The NGINX ingress controller's request metrics, one backend service per arm.
    "nginx": ({
        "calls": f"nginx_ingress_controller_requests{{{_NGINX}}}",
        "errors": f'nginx_ingress_controller_requests{{status=~"5..",{_NGINX}}}',
        "latency": f"nginx_ingress_controller_request_duration_seconds_bucket{{{_NGINX}}}",
        "latency_sum": f"nginx_ingress_controller_request_duration_seconds_sum{{{_NGINX}}}",
    }, "s"),
}
_KEYS: Final = ("url", "preset", "arms", "selector", "queries", "latency_unit", "step", "timeout", "token_env")


@dataclass(frozen=True, slots=True)
class PrometheusSource:
    """Reads a migration's per-arm cells from a Prometheus server's HTTP API."""

    url: str
    queries: Mapping[str, str]
    arms: Mapping[str, str]
    selector: str = ""
    latency_unit: float = 1.0
    step: float = 10.0
    timeout: float = 5.0
    token_env: str | None = None
    name: str = "prometheus"

    def query(self, field: str, arm: str) -> str:
        """The PromQL of one field for one arm."""
        selector = f",{self.selector}" if self.selector else ""
        return Template(self.queries[field]).safe_substitute(arm=self.arms[arm], selector=selector)

    def windows(self, backend: Backend, state: State, spec: Spec, now: float) -> list[Window]:
        """The stage's windows from its entry to `now`, one per `step` (the last one partial)."""
        migration, stage, since, until = state.name, state.stage, state.stage_entered_at, now
        if stage is None or since is None or until <= since:
            return []
        step = max(self.step, (until - since) / MAX_POINTS)
        grid = [since + k * step for k in range(int((until - since) // step) + 1)]
        if until - grid[-1] > 1e-6:
            grid.append(until)
        cells: list[dict[str, Cell]] = [{} for _ in grid[1:]]
        for arm in (LEGACY, CANDIDATE):
            for field in self.queries:
                per_window = self._increases(self.query(field, arm), grid, step, field, arm)
                for k, values in enumerate(per_window):
                    self._fill(cells[k].setdefault(arm, Cell()), field, values)
        out = []
        for k, by_arm in enumerate(cells):
            for arm, cell in sorted(by_arm.items()):
                if cell.calls or cell.latency.count or cell.costed or cell.compared:
                    out.append(Window(migration, stage, arm, grid[k], grid[k + 1] - grid[k], cell))
        return out

    def _fill(self, cell: Cell, field: str, values: Mapping[str, float]) -> None:
        total = sum(values.values())
        if field in COUNTS:
            setattr(cell, field, round(total))
        elif field in SUMS:
            setattr(cell, field, total)
        elif field == "latency_sum":
            cell.latency.total = total * self.latency_unit
        elif values:
            known = cell.latency.total if "latency_sum" in self.queries else math.nan
            cell.latency = self._histogram(values, known)

    def _histogram(self, cumulative: Mapping[str, float], total: float) -> Buckets:
        """Fixed buckets from one window's increases of each `le` series (cumulative counts)."""
        if "+Inf" not in cumulative:
            raise SourceError(f"prometheus: the latency query must select a histogram's _bucket series (with "
                              f"an le label up to +Inf); got le values {sorted(cumulative)}")
        try:
            positive = sorted((float(le), n) for le, n in cumulative.items() if le != "+Inf" and float(le) > 0)
        except ValueError:
            raise SourceError(f"prometheus: le labels must be numbers, got {sorted(cumulative)}") from None
        # Cumulative counts: a bucket holds what its bound counts beyond the bound below it (values at or below
        # 0 are counted by every bound, so they land in the first bucket).
        counts, below = [], 0
        for _, n in positive:
            counts.append(max(0, round(n) - below))
            below = max(below, round(n))
        counts.append(max(0, round(cumulative["+Inf"]) - below))
        return Buckets(tuple(le * self.latency_unit for le, _ in positive), counts, total)

    def _increases(self, query: str, grid: Sequence[float], step: float, field: str, arm: str
                   ) -> list[dict[str, float]]:
        """Per window of the grid, the summed increase of the query's series (keyed by `le` for latency)."""
        where = f"the {field} query for {arm} ({query})"
        out: list[dict[str, float]] = [{} for _ in grid[1:]]
        for labels, points in self._series(query, grid, step, where):
            group = ""
            if field == "latency":
                group = labels.get("le", "")
                group = "+Inf" if group.lower() in ("+inf", "inf") else group
            previous = points.get(0)
            for k in range(1, len(grid)):
                value = points.get(k)
                if value is None:
                    continue
                # A counter below its last value was reset: all of its new value is new.
                increase = value if previous is None or value < previous else value - previous
                previous = value
                out[k - 1][group] = out[k - 1].get(group, 0.0) + increase
        return out

    def _series(self, query: str, grid: Sequence[float], step: float, where: str
                ) -> list[tuple[dict[str, str], dict[int, float]]]:
        """Each series' labels and values at the grid points: `query_range` over the regular part of the grid,
        `query` at its last point when that one is closer than a step."""
        regular = grid if len(grid) < 2 or math.isclose(grid[-1] - grid[-2], step) else grid[:-1]
        found: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], dict[int, float]]] = {}
        data = self._get("/api/v1/query_range", {"query": query, "start": f"{regular[0]:.3f}",
                                                  "end": f"{regular[-1]:.3f}", "step": f"{step:g}"}, where)
        for item in _result(data, "matrix", where):
            labels = dict(item.get("metric") or {})
            points = found.setdefault(_key(labels), (labels, {}))[1]
            for t, v in item.get("values") or ():
                k = round((float(t) - regular[0]) / step)
                if 0 <= k < len(regular):
                    points[k] = float(v)
        if len(regular) < len(grid):
            data = self._get("/api/v1/query", {"query": query, "time": f"{grid[-1]:.3f}"}, where)
            for item in _result(data, "vector", where):
                labels = dict(item.get("metric") or {})
                found.setdefault(_key(labels), (labels, {}))[1][len(grid) - 1] = float(item["value"][1])
        return list(found.values())

    def _get(self, path: str, params: Mapping[str, str], where: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(params)}",
                                         headers={"Accept": "application/json"})
        token = os.environ.get(self.token_env) if self.token_env else None
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise SourceError(f"prometheus at {self.url} refused {where}: {_prometheus_error(exc)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(f"prometheus at {self.url} cannot be read: {reason}") from None


def _key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _result(data: Any, kind: str, where: str) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or data.get("status") != "success":
        message = data.get("error") if isinstance(data, dict) else None
        raise SourceError(f"prometheus answered {where} with an error: {message or 'no status'}")
    result = data.get("data") or {}
    if result.get("resultType") != kind:
        raise SourceError(f"prometheus: {where} must give series of counters, got a {result.get('resultType')}")
    return list(result.get("result") or [])


def _prometheus_error(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error") or exc)
    except (ValueError, AttributeError, OSError):
        return str(exc)


def create(config: Mapping[str, Any], path: str) -> PrometheusSource:
    """The source a spec's `source: {prometheus: {...}}` describes; every problem with its path."""
    from crossfade.spec import parse_duration  # the spec module is loaded by whoever validates a spec

    problems: list[ConfigProblem] = []
    for key in config:
        if key not in _KEYS:
            problems.append(ConfigProblem(f"{path}.{key}", f"unknown setting; known: {', '.join(_KEYS)}"))
    url = config.get("url")
    parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        problems.append(ConfigProblem(f"{path}.url", "required: the Prometheus server's base URL, e.g. "
                                                     "http://prometheus.monitoring:9090"))
    preset = config.get("preset")
    queries: dict[str, str] = {}
    unit = "s"
    if preset is not None:
        if preset not in PRESETS:
            problems.append(ConfigProblem(f"{path}.preset", f"unknown preset {preset!r}; known: "
                                                            f"{', '.join(PRESETS)}"))
        else:
            queries, unit = dict(PRESETS[preset][0]), PRESETS[preset][1]
    given = config.get("queries", {})
    if not isinstance(given, Mapping):
        problems.append(ConfigProblem(f"{path}.queries", "expected a mapping of field to PromQL, e.g. "
                                                         "{calls: 'http_requests_total{version=\"$arm\"}'}"))
        given = {}
    for field, query in given.items():
        if field not in QUERIES:
            problems.append(ConfigProblem(f"{path}.queries.{field}", f"unknown field; known: {', '.join(QUERIES)}"))
        elif not isinstance(query, str) or not query.strip():
            problems.append(ConfigProblem(f"{path}.queries.{field}", "expected a PromQL expression as text"))
        else:
            queries[field] = query
    for needed in ("calls", "errors"):
        if needed not in queries and not any(p.path.startswith(f"{path}.queries") for p in problems):
            problems.append(ConfigProblem(f"{path}.queries.{needed}", "required (or a preset): without it the "
                                          f"judge would see no {needed} and could not tell a failing arm"))
    arms = config.get("arms", {LEGACY: LEGACY, CANDIDATE: CANDIDATE})
    if not isinstance(arms, Mapping) or set(arms) != {LEGACY, CANDIDATE} or not all(
            isinstance(v, str) and v for v in arms.values()):
        problems.append(ConfigProblem(f"{path}.arms", "expected the label value of each arm, e.g. "
                                                      "{legacy: v1, candidate: v2}"))
        arms = {LEGACY: LEGACY, CANDIDATE: CANDIDATE}
    selector = config.get("selector", "")
    if not isinstance(selector, str):
        problems.append(ConfigProblem(f"{path}.selector", "expected label matchers as text, e.g. "
                                                          "'destination_service_name=\"checkout\"'"))
        selector = ""
    unit = config.get("latency_unit", unit)
    if unit not in UNITS:
        problems.append(ConfigProblem(f"{path}.latency_unit", f"expected one of {', '.join(UNITS)}"))
        unit = "s"
    durations = {}
    for key, default in (("step", 10.0), ("timeout", 5.0)):
        try:
            durations[key] = parse_duration(config[key]) if key in config else default
            if durations[key] <= 0 or durations[key] > 86400:
                raise ValueError("expected a duration between 1ms and 1d")
        except ValueError as exc:
            problems.append(ConfigProblem(f"{path}.{key}", str(exc)))
    token_env = config.get("token_env")
    if token_env is not None and not (isinstance(token_env, str) and token_env.isidentifier()):
        problems.append(ConfigProblem(f"{path}.token_env", "expected the name of an environment variable holding "
                                                           "a bearer token (never the token itself)"))
    if problems:
        raise ProviderConfigError(problems)
    return PrometheusSource(str(url).rstrip("/"), queries, dict(arms), selector.strip().strip(","), UNITS[unit],
                            durations["step"], durations["timeout"], token_env)
