"""Simulation: a virtual clock and synthetic traffic driven through the real SDK and controller, hours in seconds.

`simulate(spec, workload, seed=...)` applies the spec to a temporary backend, starts it, and steps virtual time
one analysis interval at a time: synthetic calls for the interval are recorded through the SDK's recorder,
flushed, and `ControllerLoop.tick()` (the loop production runs) judges and acts; routing is refreshed after
every change, approvals are granted by the `approve` policy (actor "simulation"), and an optional outside
judge (`rollback_when`) may roll the migration back through the SDK. The result is the outcome, the event log
and a timeline.

Two ways to make traffic, chosen by `Workload.mode` ("auto" picks by the expected number of calls, and always
aggregate for a spec with shadow stages):

- "calls": every call is a real `mig.run(key, legacy, candidate)`: bucketing, fallback, timing and recording
  are the SDK's own; the arm functions advance the virtual clock by their latency and raise their errors.
  About 5 us per call, so 200 rps for ten simulated hours (7.2M calls) would take most of a minute.
- "aggregate": per interval and arm, the calls are drawn in aggregate into the recorder's real cells
  (`client.recorder.cell(...)`): the number of calls (Poisson), the candidate's share as the real routing
  table gives it (its threshold, or for a keyed population the popularity of the keys `decide` sends to the
  candidate), errors and timeouts (binomial), latency counts per sketch bucket (multinomial over each bucket's
  probability mass) and the cost sum and sum of squares (bivariate normal, exact moments). Cost per interval
  is independent of the call rate: a run takes 0.1-0.5 s, so `--runs 200` takes about a minute on 2 cores
  (`simulate_many` spreads runs over processes). Binomials are exact below a mean of 30 and normal above.

The temporary backend is SQLite in memory for events, states, specs and leases, with the telemetry windows
kept in memory and rolled up into one per arm once they are older than the longest trigger window (legacy's)
or change detection's horizon (the candidate's, which it reads window by window): the controller re-reads a
stage's windows at every look, which in SQL costs 150 us a row and made a 4-hour stage quadratic (tens of
seconds a run). The controller sees the same merged numbers either way, to the last bit (an arm's windows are
added in time order both ways); a test pins seeded runs draw for draw.

Shadow runs are drawn in aggregate as the SDK records them (calls, errors, latency and, for the answered
ones, cost of the arm that ran, as a handle with `cost=` records it), and each is compared with the served
answer: the candidate's `mismatch=` share of them differ (the mismatch gate's data). In "calls" mode the SDK's
shadow workers run on their own threads, which virtual time does not drive, so a spec with shadow stages is
simulated in aggregate. Not modelled: per-key differences in behaviour, and calls overlapping in time.

Time does not cost what it simulates: after a stage's first 20 intervals the controller looks when the stage's
age has grown by 5% (and at every hold's end, `max_stage_time` and fault edge), the calls of the skipped
intervals drawn at once, so a week-long hold at 0.06 calls/s takes about as many looks as an hour-long one.

The package, by seam: `workload` (arms, the arm language, faults, the key population), `draws` (the random
draws in aggregate), `clock` (virtual time), `backend` (the temporary store), `results` (timeline, looks,
outcomes and summaries over runs) and `runner` (one run, and many over processes).
"""

from crossfade.simulate.clock import VirtualClock
from crossfade.simulate.results import (
    OUTCOMES,
    SimResult,
    SimTick,
    TimelineEntry,
    median,
    outcome_counts,
    wilson,
)
from crossfade.simulate.runner import default_until, simulate, simulate_many
from crossfade.simulate.workload import (
    LEGACY_DEFAULT,
    Arm,
    Fault,
    Latency,
    StageShare,
    Workload,
    WorkloadError,
    check_workload,
    key_shares,
    parse_arm,
    parse_fault,
)

__all__ = [
    "LEGACY_DEFAULT",
    "OUTCOMES",
    "Arm",
    "Fault",
    "Latency",
    "SimResult",
    "SimTick",
    "StageShare",
    "TimelineEntry",
    "VirtualClock",
    "Workload",
    "WorkloadError",
    "check_workload",
    "default_until",
    "key_shares",
    "median",
    "outcome_counts",
    "parse_arm",
    "parse_fault",
    "simulate",
    "simulate_many",
    "wilson",
]
