"""Decision quality: how often each judge fails a good candidate, and how fast it catches a bad one, by traffic.

    python benchmarks/decisions.py [--runs 1000] [--rps 2,20,200] [--rows 'RPS/WORD/JUDGE;...'] [--budget S]
                                   [--jobs N] [--out rows.jsonl] [--first-seed K] [--markdown] [--json]
    python benchmarks/decisions.py --late [--runs 200] [--rps 20] [--late-minutes 45,100,...]
    python benchmarks/decisions.py --table rows.jsonl ...   # the README's side-by-side table from saved rows

Rows (rate x scenario x judge) run one after another, each over `--jobs` processes in chunks of seeds; with
`--budget` a row starts no run after that many seconds and keeps the runs done (the table says how many).

Every run is a `crossfade.simulate` run: synthetic traffic in virtual time through the real SDK, the real
controller loop and a temporary backend. Each workload is judged four ways, on the same seeds:

- crossfade: the spec's gates (anytime-valid confidence sequences, alpha spent across looks and stages; a stage
  is not left while a gate's estimate is past its limit);
- growthbook: no gates; an outside judge as GrowthBook's sequential testing works: the attempt's data pooled over
  every stage of the ramp, per metric (error rate difference, mean latency ratio, mean cost ratio) GrowthBook's
  own `gbstats` SequentialTwoSidedTTest (`pip install gbstats`; without it the same asymptotic confidence
  sequence from `crossfade.stats`), its lower bound one-sided at 1% / 3 metrics, rolling back when it is past
  the gate's allowance (the mean latency against the p95 gate's ratio: with a lognormal scaled as a whole, both
  move together). It has no bake: in the last stage legacy has no calls and it judges nothing;
- kayenta: no gates; an outside judge, as Kayenta's NetflixACAJudge works: every interval, per metric (error
  rate, p95 latency, mean cost), a two-sided Mann-Whitney test (`crossfade.stats.mann_whitney`) at 98% on
  the per-interval values of each arm since the stage began, failing the metric when the candidate is
  significantly higher and its mean exceeds the gate's allowance (Kayenta's effect-size tolerance); any
  failing metric rolls back (a score below a 75 marginal with three metrics). No alpha spending;
- threshold (with --threshold): no gates, one trigger `error_rate > 5% over 5m`, acted on by the controller.

crossfade's spec has `bake: 1h`: the last stage is judged for an hour against the legacy measured before it, with
change detection (`crossfade.changes`) and the gates, before the migration completes.

Scenarios: (a) a candidate identical to legacy, and one exactly at each gate's limit (error rate + the
allowed increase, p95 x the allowed ratio, cost x the allowed ratio): a rollback there is a false FAIL, which
crossfade bounds by 1 - confidence overall (each gate's share is printed beside it); (b) a regressed candidate
(each regression alone: errors 1% -> 3%, p95 x1.5, cost x2; all three; a step to errors 3% half an hour in):
detection rate and the delay from the fault to the rollback, in candidate calls served and simulated minutes,
and how many runs completed anyway (a regression promoted to 100%). Rates come with 95% Wilson intervals.

Keys: a key per call (routing by request), so calls split between the arms as the traffic says.

--late (issue 10, item 8): crossfade alone, a step to errors 3% at each of `--late-minutes` (by default every
5 minutes of the last judged stage and the bake, and each of the last 5 minutes of both): the share of runs
rolled back after the fault, with its Wilson interval, per fault minute (goal: >= 95% at 20 calls/s); and the
runs where change detection failed an identical candidate and one exactly at the error limit (bounded by the
detector's alpha share, printed beside them).
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

from crossfade.changes import change_alpha  # noqa: E402
from crossfade.judge import gate_alpha  # noqa: E402
from crossfade.simulate import (  # noqa: E402
    SimTick,
    Workload,
    median,
    parse_arm,
    parse_fault,
    simulate,
    wilson,
)
from crossfade.sketch import Sketch  # noqa: E402
from crossfade.spec import load_spec  # noqa: E402
from crossfade.stats import mann_whitney, mean_diff_cs, proportion_diff_cs  # noqa: E402
from crossfade.telemetry import Cell  # noqa: E402

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
bake: 1h
"""
THRESHOLD_TRIGGER = {"metric": "error_rate", "above": "5%", "window": "5m"}
KAYENTA_CONFIDENCE = 0.98
RATES = (2.0, 20.0, 200.0)
LEGACY = "errors=1% latency=lognormal(50ms,0.4) cost=0.001"

# name, candidate, fault (kind, at), is the candidate bad?, the gate it concerns (None: all)
SCENARIOS: list[tuple[str, str, tuple[str, str] | None, bool, str | None]] = [
    ("a: identical", "", None, False, None),
    ("a: errors at limit (+1pp)", "errors=2%", None, False, "error_rate"),
    ("a: p95 at limit (x1.25)", "latency=x1.25", None, False, "latency"),
    ("a: cost at limit (x1.5)", "cost=x1.5", None, False, "cost"),
    ("b: errors 1% -> 3%", "errors=3%", None, True, "error_rate"),
    ("b: p95 x1.5", "latency=x1.5", None, True, "latency"),
    ("b: cost x2", "cost=x2", None, True, "cost"),
    ("b: errors 3%, p95 x1.5, cost x2", "errors=3% latency=x1.5 cost=x2", None, True, None),
    ("b: step to errors 3% at 30m", "errors=3%", ("step", "30m"), True, "error_rate"),
    # The last promotion is due at 1h45m (15m + 30m + 1h of holds): a fault 5 minutes before it, and a drift
    # that starts with the last judged stage and is complete when it ends.
    ("b: late step (errors 3% 5m before 100%)", "errors=3%", ("step", "100m"), True, "error_rate"),
    ("b: drift to errors 3% over 1h", "errors=3%", ("drift", "45m", "1h"), True, "error_rate"),
]
JUDGES = ("crossfade", "growthbook", "kayenta")
# Which gate a rollback reason names (crossfade's sentences; the outside judges name their metric).
# A rollback's cause from its reason: change detection first (its reasons name a gate too), then the gates.
REASONS = {"change": ("change in",), "error_rate": ("candidate error rate", "error rate"), "latency": ("latency",),
           "cost": ("cost per call", "cost")}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One run's end as the table needs it: its seed, how it ended, when and after how many faulty candidate calls it
    was caught, where, and by which gate (or "trigger")."""

    seed: int
    outcome: str
    detected_s: float | None
    exposed: int
    stage: str | None
    gate: str


def _specs() -> dict[str, dict[str, Any]]:
    gated = load_spec(SPEC).to_dict()
    open_ = {**gated, "gates": {}}
    return {"crossfade": gated, "threshold": {**open_, "triggers": [THRESHOLD_TRIGGER]}, "kayenta": open_,
            "growthbook": open_}


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


class GrowthBookJudge:
    """A GrowthBook-like outside judge: one sequence per metric over the attempt's data pooled across stages."""

    def __init__(self, spec: dict[str, Any]) -> None:
        gates = spec["gates"]
        self.error_allowance = gates["error_rate"]["max_increase"]
        self.latency_allowance = gates["latency"]["max_ratio"]
        self.cost_allowance = gates["cost"]["max_ratio"]
        self.alpha = (1.0 - spec["analysis"]["confidence"]) / 3
        self.stages: dict[str, dict[str, Cell]] = {}

    def __call__(self, tick: SimTick) -> str | None:
        if tick.stage is None:
            return None
        self.stages[tick.stage] = dict(tick.cells)
        c, l = Cell(), Cell()  # noqa: E741 - l for legacy, beside c
        for cells in self.stages.values():
            for arm, pooled in (("candidate", c), ("legacy", l)):
                if arm in cells:
                    pooled.merge(cells[arm])
        if c.calls < 2 or l.calls < 2:
            return None
        lower = _gbstats_error_lower(c, l, self.alpha)
        if lower > self.error_allowance:
            return (f"growthbook: error rate {(c.errors / c.calls - l.errors / l.calls) * 100:+.2f} pp, lower bound "
                    f"{lower * 100:+.2f} pp")
        for metric, allowance, moments in (("latency", self.latency_allowance, _latency_moments),
                                           ("cost", self.cost_allowance, _cost_moments)):
            candidate, legacy = moments(c), moments(l)
            (mean_c, _, n_c), (mean_l, _, n_l) = candidate, legacy
            if n_c < 2 or n_l < 2 or mean_l <= 0:
                continue
            if _gbstats_ratio_beyond(candidate, legacy, allowance, self.alpha):
                return f"growthbook: mean {metric} x{mean_c / mean_l:.2f}, above x{allowance:g}"
        return None


def _gbstats() -> Any:
    try:
        from gbstats.frequentist.tests import SequentialConfig, SequentialTwoSidedTTest
        from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic
    except ImportError:
        return None
    return SequentialConfig, SequentialTwoSidedTTest, ProportionStatistic, SampleMeanStatistic


def _gbstats_error_lower(c: Cell, l: Cell, alpha: float) -> float:  # noqa: E741 - l for legacy
    """The lower bound of the error-rate difference, one-sided at alpha (gbstats' two-sided at 2 alpha)."""
    found = _gbstats()
    if found is None:
        return proportion_diff_cs(c.errors, c.calls, l.errors, l.calls, alpha=alpha, sided="lower").lower
    config, test, proportion, _ = found
    result = test(proportion(n=l.calls, sum=l.errors), proportion(n=c.calls, sum=c.errors),
                  config(alpha=2 * alpha, difference_type="absolute", sequential_tuning_parameter=5000))
    return float(result.confidence_interval[0])


def _gbstats_ratio_beyond(c: tuple[float, float, int], l: tuple[float, float, int], allowance: float,  # noqa: E741
                          alpha: float) -> bool:
    """Whether the candidate's mean over legacy's is surely above `allowance` (gbstats' relative lift)."""
    (mean_c, var_c, n_c), (mean_l, var_l, n_l) = c, l
    found = _gbstats()
    if found is None:
        low = mean_diff_cs(mean_c, var_c, n_c, allowance * mean_l, allowance**2 * var_l, n_l, alpha=alpha,
                           sided="lower")
        return low.lower > 0
    config, test, _, sample_mean = found

    def stat(mean: float, var: float, n: int) -> Any:
        return sample_mean(n=n, sum=mean * n, sum_squares=var * (n - 1) + mean * mean * n)

    result = test(stat(mean_l, var_l, n_l), stat(mean_c, var_c, n_c),
                  config(alpha=2 * alpha, difference_type="relative", sequential_tuning_parameter=5000))
    return float(result.confidence_interval[0]) > allowance - 1.0


def _latency_moments(cell: Cell) -> tuple[float, float, int]:
    n = cell.latency.count
    if n < 2:
        return 0.0, 0.0, n
    total = sum(v * k for v, k in cell.latency.buckets())
    squares = sum(v * v * k for v, k in cell.latency.buckets())
    mean = total / n
    return mean, max(squares - total * mean, 0.0) / (n - 1), n


def _cost_moments(cell: Cell) -> tuple[float, float, int]:
    n = cell.costed
    if n < 2:
        return 0.0, 0.0, n
    mean = cell.cost_sum / n
    return mean, max(cell.cost_sq - cell.cost_sum * mean, 0.0) / (n - 1), n


def _sketch(values: list[float]) -> Sketch:
    sketch = Sketch()
    for v in values:
        sketch.add(v)
    return sketch


def run_one(task: tuple[float, int, str, int]) -> tuple[float, int, str, Outcome]:
    """One scenario under one judge at one rate with one seed."""
    rps, index, judge, seed = task
    _, candidate, fault, _, _ = SCENARIOS[index]
    legacy = parse_arm(LEGACY, label="legacy")
    workload = Workload(rps=rps, legacy=legacy, candidate=parse_arm(candidate, base=legacy, label="candidate"),
                        fault=parse_fault(*fault) if fault else None, keys=0, mode="aggregate")
    spec = _specs()[judge]
    hook = {"kayenta": KayentaJudge, "growthbook": GrowthBookJudge}.get(judge)
    result = simulate(spec, workload, seed=seed, rollback_when=hook(_specs()["crossfade"]) if hook else None)
    return rps, index, judge, Outcome(seed, result.outcome, result.detected_s, result.exposed, result.stage,
                                      _gate_of(result.reason))


def run_chunk(row: tuple[float, int, str], seeds: range) -> list[Outcome]:
    """A row's runs for these seeds (a process-pool task: a few runs each, so a row's budget is checked often)."""
    return [run_one((*row, seed))[3] for seed in seeds]


def run_row(pool: concurrent.futures.Executor, jobs: int, row: tuple[float, int, str], runs: int,
            budget: float | None, chunk: int, first_seed: int = 0) -> tuple[list[Outcome], float]:
    """Up to `runs` runs of one row over the pool (seeds first_seed, first_seed + 1, ...), submitting no more
    once `budget` seconds have passed: the runs done and the seconds taken. Seeds are submitted in order and
    every chunk submitted is waited for, so a row cut short by its budget holds a run of consecutive seeds."""
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    pending: set[concurrent.futures.Future[list[Outcome]]] = set()
    seeds = iter(range(first_seed, first_seed + runs, chunk))
    exhausted = False
    while True:
        while not exhausted and len(pending) < 2 * jobs and (budget is None
                                                               or time.perf_counter() - started < budget):
            first = next(seeds, None)
            if first is None:
                exhausted = True
                break
            pending.add(pool.submit(run_chunk, row, range(first, min(first + chunk, first_seed + runs))))
        if not pending:
            return outcomes, time.perf_counter() - started
        done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            outcomes.extend(future.result())
        if budget is not None and time.perf_counter() - started >= budget:
            exhausted = True


def _gate_of(reason: str) -> str:
    for gate, words in REASONS.items():
        if any(w in reason for w in words):
            return gate
    return "trigger"


def _row(rps: float, index: int, judge: str, outcomes: list[Outcome]) -> dict[str, Any]:
    name, _, fault, bad, gate = SCENARIOS[index]
    fault_at = parse_fault(*fault).at if fault else 0.0  # type: ignore[union-attr]
    n = len(outcomes)
    rolled = [o for o in outcomes if o.outcome in ("rolled_back", "paused")]
    # A rollback before the fault began is a false FAIL, not a detection.
    caught = [o for o in rolled if (o.detected_s or 0.0) >= fault_at] if bad else []
    count = len(caught) if bad else len(rolled)
    low, high = wilson(count, n)
    by_gate: dict[str, int] = {}
    for o in rolled:
        by_gate[o.gate] = by_gate.get(o.gate, 0) + 1
    delays = [(o.detected_s - fault_at) / 60 for o in caught]  # type: ignore[operator]
    return {"rps": rps, "scenario": name, "judge": judge, "gate": gate, "runs": n, "count": count, "rate": count / n,
            "low": low, "high": high, "measure": "detected" if bad else "false FAIL", "by_gate": by_gate,
            "completed": sum(o.outcome == "completed" for o in outcomes),
            "running": sum(o.outcome == "running" for o in outcomes),
            "median_delay_min": median(delays) if bad else None,
            "median_delay_calls": median([float(o.exposed) for o in caught]) if bad else None,
            "first_seed": min((o.seed for o in outcomes), default=0),
            "outcomes": [[o.seed, o.outcome, o.detected_s, o.exposed, o.stage, o.gate] for o in outcomes]}


def merge_saved(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the saved parts of it (runs of distinct seeds, e.g. a row topped up with --first-seed): from
    their runs when every part kept them, else by adding the counts (a false-FAIL row needs nothing else)."""
    parts: list[dict[str, Any]] = []
    taken: set[int] = set()
    for r in sorted(rows, key=lambda r: (r.get("first_seed", 0), -r["runs"])):
        seeds = set(range(r.get("first_seed", 0), r.get("first_seed", 0) + r["runs"]))
        if not seeds & taken:
            parts.append(r)
            taken |= seeds
    if all("outcomes" in r for r in parts):
        index = next(i for i, sc in enumerate(SCENARIOS) if sc[0] == parts[0]["scenario"])
        outcomes = [Outcome(*o) for r in parts for o in r["outcomes"]]
        return _row(parts[0]["rps"], index, parts[0]["judge"], outcomes)
    merged = dict(parts[0])
    for r in parts[1:]:
        for field in ("runs", "count", "completed", "running"):
            merged[field] += r[field]
        for gate, k in r["by_gate"].items():
            merged["by_gate"][gate] = merged["by_gate"].get(gate, 0) + k
        merged["median_delay_min"] = merged["median_delay_calls"] = None
    merged["rate"] = merged["count"] / merged["runs"]
    merged["low"], merged["high"] = wilson(merged["count"], merged["runs"])
    return merged


def _chosen_rows(args: argparse.Namespace) -> list[tuple[float, int, str]]:
    """The rows `--rps`, `--scenarios`, `--judges` and `--rows` select, in table order."""
    rates = [float(r) for r in args.rps.split(",")]
    judges = tuple(args.judges.split(",")) + (("threshold",) if args.threshold else ())
    words = [w for w in args.scenarios.split(",") if w]
    rows = [(rps, i, judge) for rps in rates for i, sc in enumerate(SCENARIOS)
            if not words or any(w in sc[0] for w in words) for judge in judges]
    if not args.rows:
        return rows
    picked = []
    for rps, i, judge in rows:
        for entry in args.rows.split(";"):
            want_rps, want_word, want_judge = (entry.split("/") + ["", ""])[:3]
            if ((not want_rps or float(want_rps) == rps) and want_word in SCENARIOS[i][0]
                    and (not want_judge or want_judge == judge)):
                picked.append((rps, i, judge))
                break
    return picked


def _line(r: dict[str, Any]) -> str:
    interval = f"{r['low'] * 100:.2f}%..{r['high'] * 100:.2f}%"
    delay = "-" if r["median_delay_min"] is None else f"{r['median_delay_min']:.0f} min"
    calls = "-" if r["median_delay_calls"] is None else f"{r['median_delay_calls']:,.0f}"
    gates = ", ".join(f"{g} {k}" for g, k in sorted(r["by_gate"].items())) or "-"
    return (f"{r['rps']:>4g} {r['scenario']:<32} {r['judge']:<10} {r['runs']:>5}  {r['measure']:<10} "
            f"{r['rate'] * 100:>5.2f}%  {interval:<15} {r['completed']:>9} {r['running']:>5}  {delay:>12}  "
            f"{calls:>9}  {gates}")


HEADER = (f"{'rps':>4} {'scenario':<32} {'judge':<10} {'runs':>5}  {'measure':<10} {'rate':>6}  "
          f"{'95% interval':<15} {'completed':>9} {'held':>5}  {'median delay':>12}  {'in calls':>9}  by gate")
JUDGE_NAMES = {"crossfade": "crossfade", "growthbook": "GrowthBook-like (pooled)", "kayenta": "Kayenta-like",
               "threshold": "threshold rule"}


def _cell(r: dict[str, Any]) -> str:
    """One judge's figure for one scenario, as the README's table gives it."""
    if r["runs"] == 0:
        return "-"
    rate = f"{r['count']:,} of {r['runs']:,} = {r['rate'] * 100:.2f}% ({r['low'] * 100:.2f}-{r['high'] * 100:.2f}%)"
    if r["measure"] == "false FAIL":
        return f"{rate}; {r['running']:,} held" if r["running"] else rate
    delay = "" if r["median_delay_min"] is None else f", median {r['median_delay_min']:.0f} min"
    promoted = r["completed"]
    return f"{rate}{delay}; **{promoted:,} promoted**, {r['running']:,} held"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table: a line per rate and scenario, a column per judge."""
    judges = list(dict.fromkeys(r["judge"] for r in rows))
    by_key = {(r["rps"], r["scenario"], r["judge"]): r for r in rows}
    lines = ["| calls/s | scenario | measure | " + " | ".join(JUDGE_NAMES.get(j, j) for j in judges) + " |",
             "|---|---|---|" + "---|" * len(judges)]
    for rps, scenario in dict.fromkeys((r["rps"], r["scenario"]) for r in rows):
        measure = next(r["measure"] for r in rows if (r["rps"], r["scenario"]) == (rps, scenario))
        measure = "false FAIL" if measure == "false FAIL" else "caught; median delay; promoted"
        cells = [_cell(by_key[(rps, scenario, j)]) if (rps, scenario, j) in by_key else "-" for j in judges]
        lines.append(f"| {rps:g} | {scenario[3:]} | {measure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The last promotion is due at 1h45m (15m + 30m + 1h of holds) and the bake ends at 2h45m.
LAST_JUDGED, BAKE_START, BAKE_END = 45, 105, 165
LATE_MINUTES = sorted({*range(LAST_JUDGED, BAKE_END, 5), *range(BAKE_START - 5, BAKE_START),
                       *range(BAKE_END - 5, BAKE_END)})
# The candidates whose change-detection alarms are false: identical, and exactly at the error rate's limit.
LATE_NULLS = (("identical", ""), ("errors at limit (2%)", "errors=2%"))


def run_late(task: tuple[float, str, int | None, int]) -> tuple[float, str, int | None, Outcome]:
    """One run of --late: a candidate (a step to it at `minute`, or from the start when None) at one rate."""
    rps, candidate, minute, seed = task
    legacy = parse_arm(LEGACY, label="legacy")
    workload = Workload(rps=rps, legacy=legacy, candidate=parse_arm(candidate, base=legacy, label="candidate"),
                        fault=parse_fault("step", f"{minute}m") if minute is not None else None, keys=0,
                        mode="aggregate")
    result = simulate(_specs()["crossfade"], workload, seed=seed)
    return rps, candidate, minute, Outcome(seed, result.outcome, result.detected_s, result.exposed, result.stage,
                                           _gate_of(result.reason))


def late(args: argparse.Namespace, rates: list[float], runs: int) -> int:
    """--late: caught share per fault minute, and change detection's false alarms on null candidates."""
    minutes = [int(m) for m in args.late_minutes.split(",")] if args.late_minutes else LATE_MINUTES
    tasks = [(rps, "errors=3%", m, seed) for rps in rates for m in minutes for seed in range(runs)]
    tasks += [(rps, candidate, None, seed) for rps in rates for _, candidate in LATE_NULLS for seed in range(runs)]
    started = time.perf_counter()
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    results: dict[tuple[float, str, int | None], list[Outcome]] = {}
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        for rps, candidate, minute, outcome in pool.map(run_late, tasks, chunksize=4):
            results.setdefault((rps, candidate, minute), []).append(outcome)
    elapsed = time.perf_counter() - started
    spec = load_spec(SPEC)
    share = (1.0 - spec.analysis.confidence) * spec.analysis.change_share
    print(f"spec:\n{SPEC}\nlegacy: {LEGACY}; candidate: a step to errors=3% at the minute given; {runs} runs per "
          f"row ({len(tasks)} runs in {elapsed:.0f} s on {args.jobs} processes). The last judged stage runs from "
          f"{LAST_JUDGED} to {BAKE_START} min, the bake from {BAKE_START} to {BAKE_END} min.\n")
    header = (f"{'rps':>4} {'fault at':>8} {'in':<10} {'runs':>5} {'caught':>7} {'rate':>7}  {'95% interval':<15} "
              f"{'completed':>9} {'held':>5} {'before':>6}  {'median delay':>12} {'max':>5}")
    print(header)
    print("-" * len(header))
    for rps in rates:
        for m in minutes:
            outcomes = results[(rps, "errors=3%", m)]
            rolled = [o for o in outcomes if o.outcome in ("rolled_back", "paused")]
            caught = [o for o in rolled if (o.detected_s or 0.0) >= m * 60]
            low, high = wilson(len(caught), len(outcomes))
            delays = [((o.detected_s or 0.0) - m * 60) / 60 for o in caught]
            delay = median(delays)
            print(f"{rps:>4g} {m:>5} min {'bake' if m >= BAKE_START else 'last stage':<10} {len(outcomes):>5} "
                  f"{len(caught):>7} {len(caught) / len(outcomes) * 100:>6.1f}%  "
                  f"{low * 100:.1f}%..{high * 100:.1f}%{'':<3} {sum(o.outcome == 'completed' for o in outcomes):>9} "
                  f"{sum(o.outcome == 'running' for o in outcomes):>5} {len(rolled) - len(caught):>6}  "
                  f"{'-' if delay is None else f'{delay:.0f} min':>12} {max(delays, default=0):>5.0f}")
    print(f"\nfalse alarms of change detection (its alpha share: {share:.2%} in all, {change_alpha(spec):.3%} per "
          f"gate in each of the three judged stages and the bake):")
    for rps in rates:
        for name, candidate in LATE_NULLS:
            outcomes = results[(rps, candidate, None)]
            alarms = sum(o.gate == "change" for o in outcomes)
            others = sum(o.outcome in ("rolled_back", "paused") for o in outcomes) - alarms
            low, high = wilson(alarms, len(outcomes))
            print(f"{rps:>4g} {name:<22} {len(outcomes):>5} runs: {alarms} change alarms ({alarms / len(outcomes):.2%}, "
                  f"{low:.2%}..{high:.2%}), {others} other rollbacks, "
                  f"{sum(o.outcome == 'completed' for o in outcomes)} completed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs per scenario, judge and rate (default 1000)")
    parser.add_argument("--rps", default=",".join(f"{r:g}" for r in RATES), help="calls/s, comma-separated")
    parser.add_argument("--quick", action="store_true", help="30 runs each, for a first look")
    parser.add_argument("--threshold", action="store_true", help="also judge by the threshold trigger alone")
    parser.add_argument("--judges", default=",".join(JUDGES), help="which judges, comma-separated")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: cores)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--scenarios", default="", help="only the scenarios whose name contains one of these "
                        "comma-separated words (e.g. late,drift,identical)")
    parser.add_argument("--late", action="store_true", help="late faults: caught share per fault minute, and "
                        "change detection's false alarms")
    parser.add_argument("--late-minutes", default="", help="with --late: the fault minutes, comma-separated")
    parser.add_argument("--rows", default="", help="only these rows: RPS/WORD/JUDGE entries separated by ';', any "
                        "part left empty matching all (e.g. '2/identical/;20/errors 1%%/crossfade')")
    parser.add_argument("--budget", type=float, default=None, help="seconds per row: no more runs of a row are "
                        "started after it (the row keeps the runs done, and says how many)")
    parser.add_argument("--out", type=Path, default=None, help="append each finished row to this file, a JSON "
                        "object a line")
    parser.add_argument("--table", type=Path, nargs="*", default=None, help="run nothing: print the side-by-side "
                        "markdown table of the rows saved in these --out files (a row's parts of distinct seeds "
                        "added up)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed of each row (default 0): "
                        "to add runs to saved rows, e.g. --first-seed 1000 --runs 1000")
    parser.add_argument("--markdown", action="store_true", help="print the side-by-side markdown table at the end")
    args = parser.parse_args()
    if args.table is not None:
        saved: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
        for path in args.table:
            for text in path.read_text().splitlines():
                r = json.loads(text)
                saved.setdefault((r["rps"], r["scenario"], r["judge"]), []).append(r)
        order = {sc[0]: i for i, sc in enumerate(SCENARIOS)}
        print(markdown(sorted((merge_saved(parts) for parts in saved.values()), key=lambda r: (r["rps"], order.get(r["scenario"], 99),
                                                             JUDGES.index(r["judge"]) if r["judge"] in JUDGES
                                                             else 9))))
        return 0
    runs = 30 if args.quick else args.runs
    if args.late:
        return late(args, [float(r) for r in args.rps.split(",")], runs)
    chosen = _chosen_rows(args)
    share = gate_alpha(load_spec(SPEC)) * 4  # one gate's share over the three judged stages and the bake
    if not args.json:
        print(f"spec (confidence 99%: crossfade's false-FAIL bound is 1% in all, {share:.2%} per gate):\n{SPEC}")
        print(f"legacy: {LEGACY}; a key per call; up to {runs} runs per row"
              f"{f', {args.budget:g} s per row' if args.budget else ''}, {args.jobs} processes\n")
        print(HEADER)
        print("-" * len(HEADER), flush=True)
    started = time.perf_counter()
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    rows = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        for rps, i, judge in chosen:
            outcomes, seconds = run_row(pool, args.jobs, (rps, i, judge), runs, args.budget, chunk=5,
                                        first_seed=args.first_seed)
            row = {**_row(rps, i, judge, outcomes), "seconds": round(seconds, 1)}
            rows.append(row)
            if args.out is not None:
                with args.out.open("a") as out:
                    out.write(json.dumps(row) + "\n")
            if not args.json:
                print(_line(row), flush=True)
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({"spec": SPEC, "legacy": LEGACY, "runs": runs, "seconds": elapsed, "gate_alpha": share,
                          "rows": rows}, indent=2))
    elif args.markdown:
        print()
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
