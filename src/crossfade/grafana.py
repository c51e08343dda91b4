"""A ready-made Grafana dashboard over the control plane's /metrics: traffic, per-arm error rate, latency
quantiles against the legacy baseline, cost, shadow mismatches, gates with their intervals against their
limits, rollbacks, notifications and the spec's custom metrics per arm."""

from __future__ import annotations

from typing import Any, Final

# Grafana's dashboard JSON model at this schema version (the dashboard kind's default; Grafana migrates it up).
SCHEMA_VERSION: Final = 36
RATE: Final = "[$__rate_interval]"
_DS: Final = {"type": "prometheus", "uid": "${datasource}"}
M: Final = 'migration=~"$migration"'


def _panel(id: int, title: str, x: int, y: int, targets: list[tuple[str, str]], *, unit: str = "short",
           description: str = "", kind: str = "timeseries", w: int = 12, h: int = 8) -> dict[str, Any]:
    return {
        "id": id, "type": kind, "title": title, "description": description, "datasource": _DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": _DS, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }


def _ratio(numerator: str, denominator: str, by: str = "migration, arm") -> str:
    return (f"sum by ({by}) (rate({numerator}{{{M}}}{RATE})) / "
            f"sum by ({by}) (rate({denominator}{{{M}}}{RATE}))")


def _quantile(q: float) -> tuple[str, str]:
    expr = f"histogram_quantile({q}, sum by (le, migration, arm) (rate(crossfade_arm_latency_seconds_bucket{{{M}}}{RATE})))"
    return expr, f"p{round(q * 100)} {{{{arm}}}} ({{{{migration}}}})"


def dashboard(migration: str | None = None) -> dict[str, Any]:
    """The dashboard JSON; with `migration`, titled for it and showing it by default (the selector stays)."""
    title = f"crossfade: {migration}" if migration else "crossfade migrations"
    uid = f"crossfade-{migration}"[:40] if migration else "crossfade"
    panels = [
        _panel(1, "Candidate traffic", 0, 0, [(f"crossfade_migration_traffic_ratio{{{M}}}", "{{migration}}")],
               unit="percentunit", description="Share of keys the candidate serves (the stage's traffic)."),
        _panel(2, "Error rate per arm", 12, 0, [(_ratio("crossfade_arm_errors_total", "crossfade_arm_calls_total"),
                                                 "{{arm}} ({{migration}})")], unit="percentunit"),
        _panel(3, "Latency quantiles (legacy is the baseline)", 0, 8, [_quantile(0.5), _quantile(0.95),
                                                                       _quantile(0.99)], unit="s"),
        _panel(4, "Cost per call per arm", 12, 8, [(_ratio("crossfade_arm_cost_total",
                                                           "crossfade_arm_costed_calls_total"),
                                                    "{{arm}} ({{migration}})")],
               description="Mean recorded cost per call, in the unit the application records."),
        _panel(5, "Gates: estimate and interval against the limit", 0, 16, [
            (f"crossfade_gate_estimate{{{M}}}", "{{gate}} estimate"),
            (f"crossfade_gate_lower{{{M}}}", "{{gate}} lower"),
            (f"crossfade_gate_upper{{{M}}}", "{{gate}} upper"),
            (f"crossfade_gate_limit{{{M}}}", "{{gate}} limit"),
        ], description="A gate FAILs when its interval lies past its limit; the interval narrows with samples."),
        _panel(6, "Shadow mismatch rate per arm", 12, 16, [(_ratio("crossfade_arm_mismatches_total",
                                                                   "crossfade_arm_compared_total"),
                                                            "{{arm}} ({{migration}})")], unit="percentunit"),
        _panel(7, "Rollbacks", 0, 24, [(f"increase(crossfade_rollbacks_total{{{M}}}[1h])", "{{migration}}")],
               description="Rollbacks begun in the last hour.", w=8),
        _panel(8, "Timeouts per arm", 8, 24, [(f"sum by (migration, arm) (rate(crossfade_arm_timeouts_total{{{M}}}"
                                               f"{RATE}))", "{{arm}} ({{migration}})")], unit="reqps", w=8),
        _panel(9, "Notifications by status", 16, 24, [(f"sum by (status) (crossfade_notifications{{{M}}})",
                                                       "{{status}}")], w=8),
        _panel(10, "Custom metrics per arm (as the spec judges them)", 0, 32, [
            (f"crossfade_arm_metric{{{M}}}", "{{metric}} {{arm}} ({{migration}})"),
        ], description="Each metric declared under the spec's metrics: in the current stage: its rate, count, "
                        "mean or quantile per arm (legacy is the baseline).", w=24),
    ]
    return {
        "uid": uid, "title": title, "tags": ["crossfade"], "timezone": "browser", "editable": True,
        "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": [{
            "name": "Rollbacks", "enable": True, "iconColor": "red", "datasource": _DS,
            "expr": f"changes(crossfade_rollbacks_total{{{M}}}[2m]) > 0", "titleFormat": "rollback: {{migration}}",
        }]},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "migration", "type": "query", "datasource": _DS, "label": "Migration", "multi": True,
             "includeAll": True, "refresh": 2, "query": "label_values(crossfade_migration_info, migration)",
             "current": {"text": migration, "value": migration} if migration else {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
    }
