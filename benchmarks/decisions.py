"""Decision quality: how often each judge fails a good candidate, and how fast it catches a bad one.

    python benchmarks/decisions.py [--runs 200] [--quick] [--jobs N] [--json]

Every run is a `crossfade.simulate` run: synthetic traffic in virtual time through the real SDK, the real
controller loop and a temporary backend. Each workload is judged three ways, on the same seeds:

- crossfade: the spec's gates (anytime-valid confidence sequences, alpha spent across looks and stages);
- threshold: no gates, one trigger `error_rate > 5% over 5m` (the fixed-threshold rule alerting uses), acted on
  by the real controller;
- kayenta: no gates; an outside judge, as Kayenta's NetflixACAJudge works: every interval, per metric (error
  rate, p95 latency, mean cost), a two-sided Mann-Whitney test (`crossfade.stats.mann_whitney`) at 98% on
  the per-interval values of each arm since the stage began, failing the metric when the candidate is
  significantly higher and its mean exceeds the gate's allowance (Kayenta's effect-size tolerance); any
  failing metric rolls back (a score below a 75 marginal with three metrics). No alpha spending.

Scenarios: (a) a candidate identical to legacy, and one exactly at each gate's limit (error rate + the
allowed increase, p95 x the allowed ratio, cost x the allowed ratio): a rollback there is a false FAIL,
which crossfade bounds by 1 - confidence; (b) a regressed candidate (errors 1% -> 3%, p95 x1.5, cost x2),
also each regression alone and as a step fault half an hour in: detection rate and the delay from the fault
to the rollback, in candidate calls served and simulated minutes. Rates come with 95% Wilson intervals.

Keys: a key per call (routing by request), so calls split between the arms as the traffic says. The last
row uses 10,000 Zipf-popular sticky keys instead: there the candidate's share of calls is the popularity of
its keys (a 10% stage sees about 5% of the calls) and the sample-ratio check is only reported, as
`analysis.sample_ratio: report` (the default) says; with `hold` every such run would stay at its first stage.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from crossfade.simulate import SimTick, Workload, median, parse_arm, parse_fault, simulate, wilson  # noqa: E402
from crossfade.sketch import Sketch  # noqa: E402
from crossfade.spec import load_spec  # noqa: E402
from crossfade.stats import mann_whitney  # noqa: E402

SPEC = """\
name: bench
stages:
  - {name: canary-1, traffic: 1%, hold: 15m}
  - {name: canary-10, traffic: 10%, hold: 30m}
  - {name: rollout-50, traffic: 50%, hold: 1h}
  - {name: complete, traffic: 100%}
gates:
  error_rate: {max_increase: 1%}
  latency: {quantile: p95, max_ratio: 1.25}
  cost: {max_ratio: 1.5}
analysis: {interval: 1m, confidence: 99%}
"""
THRESHOLD_TRIGGER = {"metric": "error_rate", "above": "5%", "window": "5m"}
KAYENTA_CONFIDENCE = 0.98
RPS = 200.0
LEGACY = "errors=1% latency=lognormal(50ms,0.4) cost=0.001"

# name, candidate, fault (kind, at), is the candidate bad?
SCENARIOS: list[tuple[str, str, tuple[str, str] | None, bool]] = [
    ("a: identical", "", None, False),
    ("a: errors at limit (+1pp)", "errors=2%", None, False),
    ("a: p95 at limit (x1.25)", "latency=x1.25", None, False),
    ("a: cost at limit (x1.5)", "cost=x1.5", None, False),
    ("b: errors 3%, p95 x1.5, cost x2", "errors=3% latency=x1.5 cost=x2", None, True),
    ("b: errors 1% -> 3% only", "errors=3%", None, True),
    ("b: p95 x1.5 only", "latency=x1.5", None, True),
    ("b: cost x2 only", "cost=x2", None, True),
    ("b: step to errors 3% at 30m", "errors=3%", ("step", "30m"), True),
]
JUDGES = ("crossfade", "threshold", "kayenta")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One run's end as the table needs it."""

    outcome: str
    detected_s: float | None
    exposed: int
    stage: str | None
    reason: str


def _specs() -> dict[str, dict[str, Any]]:
    gated = load_spec(SPEC).to_dict()
    open_ = {**gated, "gates": {}}
    return {"crossfade": gated, "threshold": {**open_, "triggers": [THRESHOLD_TRIGGER]}, "kayenta": open_}


class KayentaJudge:
    """A Kayenta-like outside judge: Mann-Whitney at 98% on per-interval values since the stage began."""

    def __init__(self, spec: dict[str, Any]) -> None:
        gates = spec["gates"]
        self.error_allowance = gates["error_rate"]["max_increase"]
        self.latency_allowance = gates["latency"]["max_ratio"]
        self.cost_allowance = gates["cost"]["max_ratio"]
        self.stage: str | None = None
        self.series: dict[str, dict[str, list[float]]] = {}

    def __call__(self, tick: SimTick) -> str | None:
        if tick.stage != self.stage:
            self.stage = tick.stage
            self.series = {m: {"candidate": [], "legacy": []} for m in ("error rate", "p95 latency", "cost")}
        for arm in ("candidate", "legacy"):
            cell = tick.last.get(arm)
            if cell is None or not cell.calls:
                continue
            self.series["error rate"][arm].append(cell.errors / cell.calls)
            self.series["p95 latency"][arm].append(cell.latency.quantile(0.95))
            if cell.costed:
                self.series["cost"][arm].append(cell.cost_sum / cell.costed)
        for metric, arms in self.series.items():
            c, l = arms["candidate"], arms["legacy"]  # noqa: E741 - l for legacy, beside c
            if len(c) < 2 or len(l) < 2:
                continue
            test = mann_whitney(_sketch(c), _sketch(l))
            mean_c, mean_l = sum(c) / len(c), sum(l) / len(l)
            if metric == "error rate":
                beyond = mean_c - mean_l > self.error_allowance
            else:
                allowance = self.latency_allowance if metric == "p95 latency" else self.cost_allowance
                beyond = mean_l > 0 and mean_c / mean_l > allowance
            if test.p_value < 1 - KAYENTA_CONFIDENCE and test.effect > 0.5 and beyond:
                return f"kayenta: {metric} higher (Mann-Whitney p={test.p_value:.2g}, {len(c)} intervals)"
        return None


def _sketch(values: list[float]) -> Sketch:
    sketch = Sketch()
    for v in values:
        sketch.add(v)
    return sketch


def run_one(task: tuple[int, str, int]) -> tuple[int, str, Outcome]:
    """One scenario under one judge with one seed (a process-pool task)."""
    index, judge, seed = task
    _, candidate, fault, _ = SCENARIOS[index] if index >= 0 else ("zipf", "", None, False)
    legacy = parse_arm(LEGACY, label="legacy")
    workload = Workload(rps=RPS, legacy=legacy, candidate=parse_arm(candidate, base=legacy, label="candidate"),
                        fault=parse_fault(*fault) if fault else None, keys=10_000 if index < 0 else 0,
                        mode="aggregate")
    spec = _specs()[judge]
    hook = KayentaJudge(_specs()["crossfade"]) if judge == "kayenta" else None
    until = 3 * 3600.0 if index < 0 else None
    result = simulate(spec, workload, seed=seed, rollback_when=hook, until=until)
    return index, judge, Outcome(result.outcome, result.detected_s, result.exposed, result.stage, result.reason)


def _row(name: str, judge: str, bad: bool, fault_at: float, outcomes: list[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    rolled = sum(o.outcome == "rolled_back" for o in outcomes)
    low, high = wilson(rolled, n)
    # A rollback before the fault began is a false FAIL, not a detection.
    caught = [o for o in outcomes if o.outcome == "rolled_back" and (o.detected_s or 0.0) >= fault_at]
    rolled = len(caught) if bad else rolled
    low, high = wilson(rolled, n)
    delay_min = median([(o.detected_s - fault_at) / 60 for o in caught])  # type: ignore[operator]
    delay_calls = median([float(o.exposed) for o in caught])
    return {"scenario": name, "judge": judge, "runs": n, "rolled_back": rolled, "rate": rolled / n,
            "low": low, "high": high, "measure": "detected" if bad else "false FAIL",
            "completed": sum(o.outcome == "completed" for o in outcomes),
            "running": sum(o.outcome == "running" for o in outcomes),
            "median_delay_min": delay_min if bad else None, "median_delay_calls": delay_calls if bad else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per scenario and judge (default 200)")
    parser.add_argument("--quick", action="store_true", help="30 runs each, for a first look")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: cores)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    runs = 30 if args.quick else args.runs
    zipf_runs = min(runs, 30)
    tasks = [(i, judge, seed) for i in range(len(SCENARIOS)) for judge in JUDGES for seed in range(runs)]
    tasks += [(-1, "crossfade", seed) for seed in range(zipf_runs)]
    started = time.perf_counter()
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    results: dict[tuple[int, str], list[Outcome]] = {}
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        for index, judge, outcome in pool.map(run_one, tasks, chunksize=8):
            results.setdefault((index, judge), []).append(outcome)
    elapsed = time.perf_counter() - started
    rows = []
    for i, (name, _, fault, bad) in enumerate(SCENARIOS):
        fault_at = parse_fault(*fault).at if fault else 0.0  # type: ignore[union-attr]
        for judge in JUDGES:
            rows.append(_row(name, judge, bad, fault_at, results[(i, judge)]))
    zipf = _row("a: identical, 10,000 Zipf(1.1) keys", "crossfade", False, 0.0, results[(-1, "crossfade")])
    rows.append(zipf)
    if args.json:
        print(json.dumps({"spec": SPEC, "legacy": LEGACY, "rps": RPS, "runs": runs, "seconds": elapsed,
                          "rows": rows}, indent=2))
        return 0
    print(f"spec (confidence 99%: crossfade's false-FAIL bound is 1%):\n{SPEC}")
    print(f"legacy: {LEGACY}; {RPS:g} rps, a key per call; {runs} runs per row "
          f"({len(tasks)} runs in {elapsed:.0f} s on {args.jobs} processes)\n")
    header = (f"{'scenario':<34} {'judge':<10} {'runs':>4}  {'measure':<10} {'rate':>6}  {'95% interval':<15} "
              f"{'completed':>9}  {'median delay':>12}  {'in calls':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        interval = f"{r['low'] * 100:.1f}%..{r['high'] * 100:.1f}%"
        delay = "-" if r["median_delay_min"] is None else f"{r['median_delay_min']:.0f} min"
        calls = "-" if r["median_delay_calls"] is None else f"{r['median_delay_calls']:,.0f}"
        print(f"{r['scenario']:<34} {r['judge']:<10} {r['runs']:>4}  {r['measure']:<10} {r['rate'] * 100:>5.1f}%  "
              f"{interval:<15} {r['completed']:>9}  {delay:>12}  {calls:>9}")
    if zipf["running"]:
        print(f"\nZipf keys: {zipf['running']} of {zipf['runs']} runs were still running after 3h.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
