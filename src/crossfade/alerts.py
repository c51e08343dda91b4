"""Prometheus alerting rules over the control plane's /metrics: a rollback happened, a gate fails, the
controller lags, the routing feed is stale, a router or metric source fails, notifications are not getting out."""

from __future__ import annotations

from typing import Any


def _rule(name: str, expr: str, summary: str, *, wait: str = "0m", severity: str = "warning") -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": wait, "labels": {"severity": severity},
            "annotations": {"summary": summary}}


def rules() -> dict[str, Any]:
    """The rules file (`groups:`), ready for Prometheus' `rule_files`."""
    return {"groups": [{"name": "crossfade", "rules": [
        _rule("CrossfadeRollback", "increase(crossfade_rollbacks_total[10m]) > 0",
              "{{ $labels.migration }} rolled back to legacy (crossfade history {{ $labels.migration }})",
              severity="critical"),
        _rule("CrossfadeGateFailing", 'crossfade_gate_verdict{verdict="FAIL"} == 1',
              "{{ $labels.migration }}: gate {{ $labels.gate }} FAILs"),
        _rule("CrossfadeControllerLag", "crossfade_controller_lag_seconds > 60",
              "the controller has not completed a pass for {{ $value | humanizeDuration }}", wait="2m",
              severity="critical"),
        _rule("CrossfadeRoutingFeedStale", "crossfade_routing_feed_age_seconds > 30",
              "the routing feed last read the store {{ $value | humanizeDuration }} ago", wait="2m",
              severity="critical"),
        _rule("CrossfadeRouterFailing", 'increase(crossfade_events_total{type="router_failed"}[10m]) > 0',
              "{{ $labels.migration }}: a traffic router failed to apply or verify the split"),
        _rule("CrossfadeMetricSourceFailing", 'increase(crossfade_events_total{type="source_failed"}[10m]) > 0',
              "{{ $labels.migration }}: a metric source failed; gates may lack data"),
        _rule("CrossfadeNotificationsPending", 'crossfade_notifications{status="pending"} > 0',
              "{{ $value }} notifications to {{ $labels.target }} not yet received (crossfade notify status)",
              wait="30m"),
        _rule("CrossfadeNotificationsFailed", 'crossfade_notifications{status="failed"} > 0',
              "{{ $value }} notifications to {{ $labels.target }} were given up after 48 h"),
    ]}]}
