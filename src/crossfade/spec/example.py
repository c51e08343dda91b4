"""The commented example spec that ``crossfade init`` writes, which loads to the same spec as the tests' full one."""

from __future__ import annotations

from typing import Final

__all__ = ["EXAMPLE"]

EXAMPLE: Final = """\
# A crossfade migration: moves live traffic from a legacy implementation to a candidate, stage by stage.
# Percentages may be written 10% or as fractions (0.1); durations as 250ms, 30s, 5m, 1h30m or 1d.
name: checkout-pricing            # [a-z0-9-], unique per backend
description: Move pricing from the rules engine to the new service
owner: payments-team
key: customer id                  # what the sticky key is (documentation only)
salt: checkout-pricing            # default: name; keeps buckets stable across restarts and hosts

# The ramp. Each stage sends `traffic` of the keys to the candidate; raising it never moves an enrolled
# key back. `shadow` also runs the candidate, off the request path, on that share of legacy calls.
# `noise` runs legacy twice on that share of shadow runs, so fields legacy itself answers differently each time
# (ids, timestamps) are reported as noise, not as mismatches. `shadow_legacy` runs legacy in the shadow of
# candidate calls while legacy is ramped down; `dual_write` writes both sides at `write` call sites.
# `hold` is the least time in a stage; `min_samples` the least candidate calls; `approval` waits for a human.
stages:
  - {name: shadow, traffic: 0%, shadow: 100%, noise: 10%, dual_write: true, hold: 10m}
  - {name: canary-1, traffic: 1%, hold: 30m, min_samples: 500}
  - {name: canary-10, traffic: 10%, hold: 1h}
  - {name: rollout-25, traffic: 25%, hold: 2h, approval: true}
  - {name: rollout-50, traffic: 50%, shadow_legacy: 10%, hold: 4h}
  - {name: complete, traffic: 100%}   # the last stage is always 100%

# Candidate compared with legacy, with statistics that stay valid however often they are looked at.
# Leave `gates` out for the defaults (error_rate +1%, p95 latency x1.25); `gates: {}` turns them all off.
gates:
  error_rate: {max_increase: 0.5%}          # absolute: 1.0% -> 1.5% is the most allowed
  latency: {quantile: p95, max_ratio: 1.2}  # p50 | p90 | p95 | p99
  cost: {max_ratio: 1.5}
  mismatch_rate: {max: 1%}                  # share of shadowed calls whose output differs

# Instant rollback on absolute thresholds, without waiting for a gate's verdict.
triggers:
  - {metric: error_rate, above: 5%, window: 5m, min_samples: 100}
  - {metric: latency_p95_ratio, above: 2.0, for: 3m}

# Custom metrics the call site records (obs.metric, metrics=, mig.record), judged like the built-in gates;
# triggers may watch them too ({metric: lost, above: 0}). similarity: scores of graded comparisons.
# metrics:
#   delivery: {rate: delivered / sent, min: 99.9%}
#   lost: {kind: count, max: 0}
#   similarity: {quantile: p10, min: 0.85}

on_failure: rollback              # when a gate fails: rollback | step_back | pause
rollback: {mode: gradual, steps: [50%, 25%, 10%, 0%], every: 1m}   # or {mode: immediate}
analysis: {interval: 30s, confidence: 99%, on_nodata: hold, promote_when: no_regression}
# A stage whose gate estimate is past its limit without the evidence to fail yet is extended
# (hold_past_limit: last_promotion lets live earlier stages move on and the next decide); add e.g.
# `max_stage_time: 12h, on_inconclusive: pause` to analysis to hand it to a person after a while.
fallback: {on_error: true, timeout: 5s}   # retry failed candidate calls on legacy
shadow: {timeout: 2s, threads: 4, max_pending: 64}   # shadow runs: bounded, dropped (and counted) when full
dual_write_retry: {attempts: 3, backoff: 50ms}        # the non-authoritative side of a dual write
dual_write_after_rollback: true   # a rollback keeps both stores written (legacy first)

allow: [test_agent_alpha]         # keys always sent to the candidate
deny: []                          # keys always kept on legacy
notify:                           # who is told of what; secrets only by environment variable name
  - name: ci
    slack: {url_env: SLACK_WEBHOOK_URL, channel: "#ci-migration"}
    events: [rolled_back, rollback_started, gate_failed, approval_requested, completed]
# Where the judge reads each arm's metrics (default: the telemetry SDK hosts post). When a mesh splits the
# traffic, read Prometheus instead (presets: istio, envoy, nginx; or your own per-arm PromQL queries):
# source: {prometheus: {url: "http://prometheus:9090", preset: istio, arms: {legacy: v1, candidate: v2}}}
# routers: where traffic is split outside the app (default: the SDK in the app), e.g.
#   - nginx: {conf: /etc/nginx/conf.d/checkout.conf, listen: 127.0.0.1:8080, key: "header:X-User-Id",
#             legacy: 127.0.0.1:8001, candidate: 127.0.0.1:8002}
"""
"""The commented example spec that ``crossfade init`` writes."""
