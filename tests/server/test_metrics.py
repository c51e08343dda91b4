"""Prometheus exposition read from the store: stage, traffic, per-arm counters and histograms, verdicts,
rollbacks and the controller's lag."""

from __future__ import annotations

import re
import time

import pytest

from crossfade.sketch import Sketch
from crossfade.server.metrics import histogram_buckets
from crossfade.telemetry import Cell


def test_histogram_buckets_are_cumulative_and_end_with_every_value():
    sketch = Sketch()
    for v in (0.0005, 0.003, 0.003, 0.2, 20.0):
        sketch.add(v)
    buckets = dict(histogram_buckets(sketch))
    assert buckets["0.001"] == 1 and buckets["0.005"] == 3 and buckets["0.25"] == 4 and buckets["10.0"] == 4
    assert buckets["+Inf"] == 5


def test_metrics_show_each_migration_and_arm(control_plane):
    control_plane.call("PUT", "/v1/migrations/m", {"spec": {"stages": [{"name": "canary", "traffic": "20%"},
                                                                       {"name": "all", "traffic": "100%"}]}})
    control_plane.call("POST", "/v1/migrations/m/start", {"reason": "go"})
    cell = Cell()
    cell.calls, cell.errors = 40, 3
    for _ in range(40):
        cell.latency.add(0.004)
    window = {"migration": "m", "stage": "canary", "arm": "candidate", "start": time.time(), "length": 10.0,
              "cell": cell.to_dict()}
    control_plane.call("POST", "/v1/telemetry", {"windows": [window]}, role="sdk")
    control_plane.call("POST", "/v1/migrations/m/rollback", {"reason": "errors"})
    status, text, headers = control_plane.call("GET", "/metrics", role="viewer")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'crossfade_migration_info{migration="m",stage="canary",status="rolled_back"} 1.0' in text
    assert 'crossfade_migration_traffic_ratio{migration="m"} 0.0' in text
    assert 'crossfade_rollbacks_total{migration="m"} 1.0' in text
    assert 'crossfade_arm_calls_total{arm="candidate",migration="m",stage="canary"} 40.0' in text
    assert 'crossfade_arm_errors_total{arm="candidate",migration="m",stage="canary"} 3.0' in text
    assert 'crossfade_arm_latency_seconds_bucket{arm="candidate",le="0.005",migration="m",stage="canary"} 40.0' in text
    lag = float(re.search(r"^crossfade_controller_lag_seconds (\S+)$", text, re.M).group(1))
    assert lag >= -1.0


def test_metrics_add_cost_timeouts_comparisons_gates_events_and_notifications(metrics_text):
    text = metrics_text
    arm = 'arm="candidate",migration="m",stage="canary"'
    assert f"crossfade_arm_timeouts_total{{{arm}}} 2.0" in text
    assert f"crossfade_arm_cost_total{{{arm}}} 0.8" in text  # 400 calls x 0.002, summed
    assert f"crossfade_arm_costed_calls_total{{{arm}}} 400.0" in text
    assert f"crossfade_arm_compared_total{{{arm}}} 100.0" in text
    assert f"crossfade_arm_mismatches_total{{{arm}}} 4.0" in text
    limit = float(re.search(r'^crossfade_gate_limit\{gate="error_rate",migration="m"\} (\S+)$', text, re.M).group(1))
    lower = float(re.search(r'^crossfade_gate_lower\{gate="error_rate",migration="m"\} (\S+)$', text, re.M).group(1))
    upper = float(re.search(r'^crossfade_gate_upper\{gate="error_rate",migration="m"\} (\S+)$', text, re.M).group(1))
    estimate = float(re.search(r'^crossfade_gate_estimate\{gate="error_rate",migration="m"\} (\S+)$', text,
                               re.M).group(1))
    assert limit == 0.01 and lower <= estimate <= upper and estimate == pytest.approx(0.005)
    assert 'crossfade_events_total{migration="m",type="started"} 1.0' in text
    assert re.search(r'^crossfade_notifications\{migration="m",status="(pending|delivered)",target="hook"\} 1.0$',
                     text, re.M)


def test_promtool_accepts_the_exposition(metrics_text, tmp_path):
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (Debian package prometheus)"
    checked = subprocess.run([promtool, "check", "metrics"], input=metrics_text, capture_output=True, text=True)
    # promtool exits 3 for lint advice only (e.g. a counter's name), 1 for an exposition it cannot parse.
    assert checked.returncode == 0, checked.stdout + checked.stderr
