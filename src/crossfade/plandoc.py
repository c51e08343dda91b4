"""The migration plan: a Markdown document a team can circulate, rendered from a spec and its simulations."""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from crossfade.changes import FINAL_LOOK_SHARE
from crossfade.judge import enabled_gates, gate_alpha
from crossfade.program import Component, Program
from crossfade.simulate import LEGACY_DEFAULT, Arm, SimResult, Workload, key_shares, parse_arm, simulate_many
from crossfade.spec import Spec, Stage, Trigger, format_duration, format_percent
from crossfade.stats import detectable_increase, detectable_mean_ratio, detectable_quantile_ratio, look_alpha

FAULTY = "errors=3% latency=x1.5 cost=x2"


@dataclass(frozen=True, slots=True)
class Estimates:
    """Simulated runs behind the plan: a candidate that behaves like legacy, and a faulty one."""

    rps: float
    healthy: tuple[SimResult, ...]
    faulty: tuple[SimResult, ...]
    faulty_arm: str
    legacy: Arm = field(default=LEGACY_DEFAULT)


def estimate(spec: Spec, *, rps: float, runs: int = 20, seed: int = 0, legacy: Arm | None = None,
             mode: str = "auto") -> Estimates:
    """Simulate `runs` migrations with a healthy candidate and `runs` with a faulty one at `rps`; `legacy`
    behaves as given (default: 1% errors, 50 ms median) and the healthy candidate like it. `mode` is the
    simulation's (`crossfade.simulate.Workload.mode`)."""
    base = Workload(rps=rps, legacy=legacy or LEGACY_DEFAULT, candidate=legacy or LEGACY_DEFAULT, mode=mode)
    healthy = simulate_many(spec, base, runs=runs, seed=seed)
    faulty_workload = Workload(rps=rps, legacy=base.legacy, mode=mode,
                               candidate=parse_arm(FAULTY, base=base.legacy, label="faulty candidate"))
    faulty = simulate_many(spec, faulty_workload, runs=runs, seed=seed + runs)
    return Estimates(rps, tuple(healthy), tuple(faulty), FAULTY, base.legacy)


def render(spec: Spec, estimates: Estimates | None = None) -> str:
    """The plan as Markdown: purpose and owner, phases, success criteria, rollback, testing, timeline and
    communication."""
    parts = [
        _purpose(spec),
        _phases(spec),
        _criteria(spec),
        _rollback(spec),
        _testing(spec, estimates),
        _detectable(spec, estimates),
        _timeline(spec, estimates),
        _communication(spec),
    ]
    return "\n\n".join(p.strip() for p in parts if p.strip()) + "\n"


def _purpose(spec: Spec) -> str:
    lines = [f"# Migration plan: {spec.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [
        f"- **Owner:** {spec.owner or 'not set (add `owner:` to the spec)'}",
        f"- **Routing key:** {spec.key or 'not described (add `key:` to the spec)'}; every key keeps its arm "
        f"while traffic rises (sticky buckets, salt `{spec.salt}`)",
        f"- **Spec digest:** `{spec.digest()[:16]}` (the `applied` event in the audit log records the same)",
    ]
    if spec.allow:
        lines.append(f"- **Always on the candidate:** {', '.join(spec.allow)}")
    if spec.deny:
        lines.append(f"- **Never on the candidate:** {', '.join(spec.deny)}")
    return "\n".join(lines)


def _hold(stage: Stage) -> str:
    return format_duration(stage.hold) if stage.hold else "-"


def _phases(spec: Spec) -> str:
    rows = ["## Phases", "", "| # | stage | candidate traffic | shadow | hold | minimum samples per arm | approval |",
            "|---|---|---:|---:|---:|---:|---|"]
    for i, stage in enumerate(spec.stages, start=1):
        shadow = format_percent(stage.shadow) if stage.shadow else "-"
        if stage.shadow_legacy:
            shadow = f"legacy {format_percent(stage.shadow_legacy)}"
        approval = "yes: a person approves entering it" if stage.approval else "-"
        rows.append(f"| {i} | {stage.name} | {format_percent(stage.traffic)} | {shadow} | {_hold(stage)} | "
                    f"{stage.min_samples or '-'} | {approval} |")
    rows += ["", _completion(spec)]
    return "\n".join(rows)


def _completion(spec: Spec) -> str:
    """How the migration completes: on entering its last stage, or once that stage has baked."""
    last = spec.stages[-1].name
    if not spec.bake:
        return f"Entering the last stage ({last}) completes the migration."
    return (f"The last stage ({last}) bakes for {format_duration(spec.bake)}: still judged (the gates against the "
            "legacy measured in the stage before, change detection on the candidate's recent calls, the triggers), "
            "and a failure rolls back. Its end then waits for a final look, at most "
            f"{format_duration(spec.bake * FINAL_LOOK_SHARE)} more, until the calls since its last interval would "
            "show a step past a limit; the migration completes after it.")


def _planned_time(spec: Spec) -> float:
    """The seconds the holds and the bake take at the least."""
    return sum(s.hold or 0.0 for s in spec.stages) + spec.bake


def _gate_sentences(spec: Spec) -> list[str]:
    g = spec.gates
    out = []
    if g.error_rate is not None:
        out.append(f"**error rate**: the candidate's may exceed legacy's by at most "
                   f"{g.error_rate.max_increase * 100:g} percentage points")
    if g.latency is not None:
        out.append(f"**latency**: the candidate's p{g.latency.quantile * 100:g} may be at most "
                   f"{g.latency.max_ratio:g}x legacy's")
    if g.cost is not None:
        out.append(f"**cost**: the candidate's mean cost per call may be at most {g.cost.max_ratio:g}x legacy's")
    if g.mismatch_rate is not None:
        out.append(f"**answers**: at most {format_percent(g.mismatch_rate.max)} of the candidate's answers may "
                   "differ from legacy's (shadow comparisons, noise cancelled)")
    return out


def _criteria(spec: Spec) -> str:
    gates = _gate_sentences(spec)
    confidence = spec.analysis.confidence
    rule = ("no gate fails" if spec.analysis.promote_when == "no_regression"
            else "every gate passes (proven no worse)")
    lines = ["## Success criteria", ""]
    for stage in spec.stages[:-1]:
        needs = []
        if stage.hold:
            needs.append(f"its hold of {format_duration(stage.hold)} has passed")
        if stage.min_samples:
            needs.append(f"each arm has at least {stage.min_samples} calls")
        needs.append(rule)
        lines.append(f"- **{stage.name}** advances when " + ", ".join(needs) + ".")
    if spec.bake:
        lines.append(f"- **{spec.stages[-1].name}** completes when its bake of {format_duration(spec.bake)} and its "
                     f"final look have passed and {rule}, no change was detected and no trigger fired.")
    lines += ["", "The gates, judged at every look (every "
              f"{format_duration(spec.analysis.interval)}) on the current stage's data:", ""]
    lines += [f"- {g}" for g in gates] or ["- none: stages advance on their holds and samples alone"]
    if gates:
        alpha = 1 - confidence
        lines += [
            "",
            f"The statistics stay honest however often they look: at {format_percent(confidence)} confidence, a "
            f"candidate exactly at every limit is failed anywhere in the migration with probability at most "
            f"{format_percent(alpha)}. That {format_percent(alpha)} is split over {len(spec.stages) - 1} judged "
            f"stages and {len(enabled_gates(spec))} gates ({gate_alpha(spec):.2g} each); rates and means use "
            "anytime-valid confidence sequences, latency quantiles spend their share look by look.",
        ]
    return "\n".join(lines)


def _trigger_sentence(t: Trigger, spec: Spec) -> str:
    metric = t.metric
    custom = spec.metric(metric)
    if custom is not None:
        from crossfade.spec.metrics import format_amount

        side, limit = ("exceeds", t.above) if t.above is not None else ("falls below", t.below)
        what = f"the candidate's {custom.label} {side} {format_amount(custom, limit)}"  # type: ignore[arg-type]
    elif metric.endswith("_ratio"):
        what = f"the candidate's {metric.removesuffix('_ratio').replace('_', ' ')} exceeds {t.above:g}x legacy's"
    elif metric.startswith("latency_p"):
        what = f"the candidate's {metric.replace('_', ' ')} exceeds {format_duration(t.above)}"
    else:
        what = f"the candidate's {metric.replace('_', ' ')} exceeds {format_percent(t.above)}"
    extra = f" (at least {t.min_samples} samples)" if t.min_samples else ""
    held = f", for {format_duration(t.for_)} in a row" if t.for_ else ""
    return f"{what} over {format_duration(t.window)}{extra}{held}"


def _failure_sentence(spec: Spec) -> str:
    if spec.on_failure == "pause":
        return "the migration **pauses** (every key to legacy, the stage kept) until an operator resumes it"
    if spec.on_failure == "step_back":
        return "the migration **steps back** to the previous stage (from the first stage: rolls back)"
    if spec.rollback.mode == "gradual":
        steps = ", ".join(format_percent(s) for s in spec.rollback.steps)
        return (f"the migration **rolls back gradually**: candidate traffic steps down through {steps}, one "
                f"step every {format_duration(spec.rollback.every)}, dropping to 0% at once if a trigger fires "
                "during the ramp-down")
    return "the migration **rolls back at once**: every key to legacy"


def _rollback(spec: Spec) -> str:
    name = spec.name
    lines = ["## Rollback", "", "### Automatic", ""]
    if spec.triggers:
        lines.append("Triggers act at once, without waiting for a gate:")
        lines += [f"- {_trigger_sentence(t, spec)}" for t in spec.triggers]
        lines.append("")
    else:
        lines += ["No instant triggers are set (add `triggers:` for absolute thresholds such as "
                  "`{metric: error_rate, above: 5%, window: 5m}`).", ""]
    lines += [
        f"When a gate fails or a trigger fires, {_failure_sentence(spec)}. Every such decision is an event in the "
        "audit log with the gate's numbers and the sentence that explains it.",
        "",
        f"With no data after a stage's hold, the controller {'pauses' if spec.analysis.on_nodata == 'pause' else 'holds the stage'}: "
        "missing evidence never promotes and never rolls back.",
        "",
        "A candidate call that fails or times out is answered by legacy "
        f"({'on' if spec.fallback.on_error else 'off'}"
        + (f", timeout {format_duration(spec.fallback.timeout)}" if spec.fallback.timeout else "")
        + "): callers do not see the candidate's errors while the gates look at them.",
        "",
        "### Manual",
        "",
        "```sh",
        f"crossfade status {name}                               # where it stands, each gate's verdict",
        f'crossfade pause {name} --reason "..."                # every key to legacy, stage kept',
        f"crossfade resume {name}",
        f'crossfade rollback {name} --reason "..."             # every key to legacy at once',
        f'crossfade abort {name} --reason "..."                # give this attempt up',
        f"crossfade restart {name}                              # a new attempt from the first stage",
        f'crossfade promote {name} --force --reason "..."      # past a failing gate (recorded as forced)',
        f"crossfade history {name}; crossfade audit verify {name}",
        "```",
    ]
    return "\n".join(lines)


def _outcomes(results: Sequence[SimResult]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return ", ".join(f"{n} {outcome.replace('_', ' ')}" for outcome, n in sorted(counts.items()))


def _testing(spec: Spec, estimates: Estimates | None) -> str:
    shadows = [s.name for s in spec.stages if s.shadow]
    lines = ["## Testing strategy", ""]
    if shadows:
        noise = [s.name for s in spec.stages if s.noise]
        lines.append(f"- **Shadow comparison** in {', '.join(shadows)}: the candidate runs off the request path on "
                     "the same arguments and its answers are compared with legacy's, field by field"
                     + (f"; legacy runs twice on a sample in {', '.join(noise)} so that fields which differ "
                        "anyway (ids, timestamps) are reported as noise" if noise else "")
                     + f". `crossfade mismatches {spec.name}` lists the differing fields with examples.")
    else:
        lines.append("- **No shadow stage**: the candidate's answers are not compared before it serves users "
                     "(add a first stage `{traffic: 0%, shadow: 100%}` to compare them first).")
    lines.append("- **Gates** judge every stage statistically against legacy (see Success criteria).")
    if estimates is not None:
        faulty = estimates.faulty
        caught = [r for r in faulty if r.outcome in ("rolled_back", "paused") or r.detected_s is not None]
        delays = [r.detected_s for r in faulty if r.detected_s is not None]
        lines.append(
            f"- **Simulation** at {estimates.rps:g} calls/s: {len(estimates.healthy)} runs with a candidate that "
            f"behaves like legacy ended {_outcomes(estimates.healthy)}; {len(faulty)} runs with a faulty "
            f"candidate (`{estimates.faulty_arm}`) ended {_outcomes(faulty)}"
            + (f", caught after a median of {format_duration(round(statistics.median(delays)))}" if delays else "")
            + f" ({len(caught)} of {len(faulty)} caught)."
        )
        lines.append(f"  Re-run with `crossfade simulate SPEC --rps {estimates.rps:g} --runs 200`.")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Detectable:
    """What one stage can catch by the end of its hold at a traffic level: expected calls per arm and, per gate,
    the smallest regression caught with 90% probability (None: the gate is off), and the gates whose own
    limit is out of reach (the smallest catchable excess more than twice the limit's)."""

    stage: str
    candidate_calls: float
    legacy_calls: float
    error_rate: float | None
    latency: float | None
    cost: float | None
    out_of_reach: tuple[str, ...]


def detectable(spec: Spec, rps: float, legacy: Arm = LEGACY_DEFAULT) -> list[Detectable]:
    """Per judged stage with a hold, what its gates can catch at `rps` by the hold's end (normal approximations
    of the gates' own bounds at their alpha; see `crossfade.stats.detectable_increase`)."""
    alpha = gate_alpha(spec)
    g = spec.gates
    rows = []
    for stage in spec.stages[:-1]:
        if not stage.hold:
            continue
        n_c = rps * stage.hold * (stage.traffic + (1 - stage.traffic) * stage.shadow)
        n_l = rps * stage.hold * ((1 - stage.traffic) + stage.traffic * stage.shadow_legacy)
        far: list[str] = []
        error = latency = cost = None
        if g.error_rate is not None:
            error = detectable_increase(legacy.errors, n_c, n_l, g.error_rate.max_increase, alpha=alpha)
            if error > 2 * g.error_rate.max_increase:
                far.append("error_rate")
        if g.latency is not None:
            looks = max(1, math.ceil(stage.hold / spec.analysis.interval))
            latency = detectable_quantile_ratio(legacy.latency.sigma, g.latency.quantile, n_c, n_l,
                                                g.latency.max_ratio, alpha=look_alpha(alpha, looks))
            if latency - 1 > 2 * (g.latency.max_ratio - 1):
                far.append("latency")
        if g.cost is not None:
            cv = math.sqrt(math.exp(legacy.cost_sigma**2) - 1)
            cost = detectable_mean_ratio(cv, n_c, n_l, g.cost.max_ratio, alpha=alpha)
            if cost - 1 > 2 * (g.cost.max_ratio - 1):
                far.append("cost")
        rows.append(Detectable(stage.name, n_c, n_l, error, latency, cost, tuple(far)))
    return rows


def _shown(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "nothing"
    return f"+{value * 100:.2g} pp" if kind == "pp" else f"x{value:.2f}"


def _detectable(spec: Spec, estimates: Estimates | None) -> str:
    rows = [] if estimates is None else detectable(spec, estimates.rps, estimates.legacy)
    if estimates is None or not rows:
        return ""
    lines = ["## What each stage can detect", "",
             f"At {estimates.rps:g} calls/s (legacy `{estimates.legacy.describe()}`), the smallest regression each "
             "gate catches with 90% probability by the end of the stage's hold:", "",
             "| stage | candidate calls | legacy calls | error rate | latency | cost |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.stage} | {r.candidate_calls:,.0f} | {r.legacy_calls:,.0f} | {_shown(r.error_rate, 'pp')} "
                     f"| {_shown(r.latency, 'x')} | {_shown(r.cost, 'x')} |")
    shares = key_shares(spec, Workload(rps=estimates.rps))
    if shares:
        lines += ["", "With 10,000 Zipf-popular sticky keys (as simulated), a stage's share of calls is the popularity "
                  f"of the keys its salt (`{spec.salt}`) puts below its threshold, not its traffic:", "",
                  "| stage | traffic | share of calls, this salt | over 20 other salts (median, range) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {s.stage} | {format_percent(s.traffic)} | {s.share:.1%} | {s.median:.1%} "
                  f"({s.low:.1%}..{s.high:.1%}) |" for s in shares]
    lines += ["", *(f"- **Warning, {r.stage}**: at this traffic its hold is too short for {', '.join(r.out_of_reach)} "
                    "to catch a regression near its limit. A regression past a limit is held in the stage, not "
                    "promoted, until the evidence decides: lengthen the hold, or set `analysis.max_stage_time` and "
                    "`on_inconclusive`." for r in rows if r.out_of_reach)]
    return "\n".join(lines)


def _entry_times(result: SimResult) -> dict[str, float]:
    entered: dict[str, float] = {}
    for entry in result.timeline:
        if entry.kind in ("started", "promoted", "restarted") and entry.stage and entry.stage not in entered:
            entered[entry.stage] = entry.elapsed
    return entered


def _timeline(spec: Spec, estimates: Estimates | None) -> str:
    lines = ["## Estimated timeline", ""]
    holds = _planned_time(spec)
    summed = "the sum of the holds and the bake" if spec.bake else "the sum of the holds"
    if estimates is None:
        lines.append(f"At least {format_duration(holds)} ({summed}); run `crossfade plan` with `--rps` "
                     "for an estimate from simulated traffic.")
        return "\n".join(lines)
    done = [r for r in estimates.healthy if r.outcome == "completed"]
    lines.append(f"Simulated at {estimates.rps:g} calls/s with a candidate that behaves like legacy, approvals "
                 "given at once (a person's reaction time comes on top):")
    lines += ["", "| stage | entered after (median) |", "|---|---:|"]
    per_stage = [_entry_times(r) for r in estimates.healthy]
    for stage in spec.stages:
        times = [t[stage.name] for t in per_stage if stage.name in t]
        when = format_duration(round(statistics.median(times))) if times else "not reached"
        lines.append(f"| {stage.name} | {when} |")
    if spec.bake:
        ends = [r.duration_s for r in done]
        when = format_duration(round(statistics.median(ends))) if ends else "not reached"
        lines.append(f"| bake of {spec.stages[-1].name} ({format_duration(spec.bake)} and its final look) ends: "
                     f"completed | {when} |")
    lines.append("")
    if done:
        durations = [r.duration_s for r in done]
        lines.append(f"**Completion:** median {format_duration(round(statistics.median(durations)))} "
                     f"(fastest {format_duration(round(min(durations)))}, slowest "
                     f"{format_duration(round(max(durations)))}; {len(done)} of {len(estimates.healthy)} runs "
                     f"completed; {'the holds and the bake' if spec.bake else 'the holds'} alone take "
                     f"{format_duration(holds)}).")
    else:
        reasons = {r.reason for r in estimates.healthy}
        lines.append("**No simulated run completed**: " + "; ".join(sorted(reasons)[:3]))
    return "\n".join(lines)


def _communication(spec: Spec) -> str:
    approvals = [s.name for s in spec.stages if s.approval]
    owner = spec.owner or "the owner (not set)"
    lines = ["## Communication", ""]
    if spec.notify:
        from crossfade.notify import KINDS, targets

        for target in targets(spec.notify):
            told = "everything" if set(target.kinds) == set(KINDS) else ", ".join(target.kinds)
            lines.append(f"- **Notified:** {target.build().describe()} (`{target.name}`) of {told}; "
                         f"delivered from the control plane's outbox, retried until received.")
    else:
        lines.append("- **Notified:** no one is configured (`notify:` is empty); watch `crossfade status` or the "
                     "dashboard, and the audit log with `crossfade history`.")
    if approvals:
        lines.append(f"- **Approvals:** an operator approves entering {', '.join(approvals)} with "
                     f"`crossfade approve {spec.name}`; until then the migration waits at the stage before.")
    else:
        lines.append("- **Approvals:** none; the controller advances on the evidence alone.")
    lines += [
        f"- **Escalation:** an automatic rollback or pause records its reason in the audit log; {owner} "
        "investigates (`crossfade history`, `crossfade mismatches`), fixes the candidate, and starts a new "
        f"attempt with `crossfade restart {spec.name}`.",
        "- **Who may act:** anyone with an operator role on the control plane; every action records its actor.",
    ]
    return "\n".join(lines)


# -- programs -----------------------------------------------------------------------------------

TEMPLATES: Final = {
    "started": "{program}: {component} has started its migration ({first} first). Progress: {status}. "
               "Nothing is expected of you; we will tell you when each stage passes.",
    "stage_passed": "{program}: {component} passed stage {stage} (every gate within its limits, numbers in "
                    "`crossfade history {migration}`); the candidate now serves {traffic}.",
    "rolled_back": "{program}: {component} was rolled back at stage {stage}: {reason}. Every call is on legacy "
                   "again; no action is needed from you. The owner, {owner}, investigates and restarts it.",
    "completed": "{program}: {component} is complete; the candidate serves all traffic. Next: {next}.",
}


@dataclass(frozen=True, slots=True)
class ProgramEstimates:
    """Simulated runs of each component of a program, keyed by component name."""

    components: Mapping[str, Estimates]


def estimate_program(program: Program, *, rps: float | None = None, runs: int = 20,
                     seed: int = 0) -> ProgramEstimates:
    """Simulate each component at its own traffic (or `rps`), with its legacy's behaviour.

    Calls are drawn in aggregate: a program's components run for days, where running each call through the
    SDK tells nothing more and costs a run minutes."""
    found = {}
    for i, c in enumerate(program.components):
        legacy = parse_arm(c.legacy, label=f"{c.name}.legacy") if c.legacy else None
        found[c.name] = estimate(c.spec, rps=c.rps or rps or 1.0, runs=runs, seed=seed + 1000 * i, legacy=legacy,
                                 mode="aggregate")
    return ProgramEstimates(found)


def render_program(program: Program, estimates: ProgramEstimates | None = None, *, source: str = "PROGRAM"
                   ) -> str:
    """The program's strategy package as Markdown: phases and critical path, timeline, success criteria,
    acceptance, rollback with data preservation and its rehearsal, testing, shadow's cost, communication."""
    durations = _component_durations(program, estimates)
    parts = [
        _program_purpose(program, source),
        _program_phases(program, durations),
        _per_component(program, "Success criteria", lambda c: _criteria(c.spec)),
        _program_acceptance(program),
        _per_component(program, "Rollback", lambda c: _rollback(c.spec) + "\n\n" + _preservation(c)),
        _program_rehearsal(program, estimates, source),
        _per_component(program, "Testing strategy",
                       lambda c: _testing(c.spec, estimates.components[c.name] if estimates else None)),
        _program_shadow_cost(program, estimates),
        _program_communication(program, source),
    ]
    return "\n\n".join(p.strip() for p in parts) + "\n"


def to_html(markdown: str, title: str) -> str:
    """A self-contained HTML page of a Markdown plan (tables included)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;"
            "line-height:1.45}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
            f"</style></head><body>\n{body}</body></html>\n")


def _component_durations(program: Program, estimates: ProgramEstimates | None) -> dict[str, float]:
    """Each component's expected time to completion: the median simulated one, else the sum of its holds."""
    out = {}
    for c in program.components:
        holds = _planned_time(c.spec)
        done = [r.duration_s for r in estimates.components[c.name].healthy if r.outcome == "completed"] \
            if estimates else []
        out[c.name] = statistics.median(done) if done else holds
    return out


def _program_purpose(program: Program, source: str) -> str:
    lines = [f"# Migration program: {program.name}", ""]
    if program.description:
        lines += [program.description, ""]
    lines += [
        f"- **Owner:** {program.owner or 'not set (add `owner:` to the program)'}",
        f"- **Components:** {len(program.components)} migrations in {len(program.phases())} phases",
        f"- **Status updates:** every {format_duration(program.cadence)} (`crossfade status --program {source}`)",
    ]
    return "\n".join(lines)


def _program_phases(program: Program, durations: Mapping[str, float]) -> str:
    path, total = program.critical_path(durations)
    finish: dict[str, float] = {}
    lines = ["## Phases and timeline", "",
             "Components move in dependency order: a phase starts when everything its components wait for is "
             "complete. Durations are the median simulated time to completion (or the stages' holds without "
             "`--rps`); approvals are given at once in the simulation, so a person's reaction time comes on top.",
             ""]
    for number, phase in enumerate(program.phases(), start=1):
        start = max((finish[a] for c in phase for a in c.after), default=0.0)
        lines += [f"### Phase {number}", "",
                  "| component | owner | waits for | stages | starts after | takes | complete after |",
                  "|---|---|---|---|---:|---:|---:|"]
        for c in phase:
            begins = max((finish[a] for a in c.after), default=0.0)
            finish[c.name] = begins + durations[c.name]
            marker = " (critical)" if c.name in path else ""
            lines.append(
                f"| {c.name}{marker} | {c.owner or c.spec.owner or '-'} | {', '.join(c.after) or '-'} | "
                f"{' -> '.join(s.name for s in c.spec.stages)} | {format_duration(round(begins))} | "
                f"{format_duration(round(durations[c.name]))} | {format_duration(round(finish[c.name]))} |")
        end = max(finish[c.name] for c in phase)
        lines += ["", f"Phase {number} runs from {format_duration(round(start))} to {format_duration(round(end))}.",
                  ""]
    lines.append(f"**Critical path:** {' -> '.join(path)}, {format_duration(round(total))} in all; a delay to any "
                 "of these delays the program's end, and the others have slack.")
    return "\n".join(lines)


def _demote(markdown: str, levels: int) -> str:
    """The same Markdown with every heading `levels` deeper, to nest a migration's section in a program's (lines
    of fenced code, such as a shell comment, are not headings)."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        lines.append("#" * levels + line if line.startswith("#") and not fenced else line)
    return "\n".join(lines)


def _per_component(program: Program, title: str, section: Callable[[Component], str]) -> str:
    lines = [f"## {title}", ""]
    for number, phase in enumerate(program.phases(), start=1):
        for c in phase:
            body = _demote(section(c), 1).split("\n", 1)  # drop the section's own heading
            lines += [f"### Phase {number}: {c.name}", "", body[1].strip() if len(body) > 1 else "", ""]
    return "\n".join(lines)


def _program_acceptance(program: Program) -> str:
    lines = ["## Acceptance and validation", ""]
    for number, phase in enumerate(program.phases(), start=1):
        lines += [f"### Phase {number}", ""]
        for c in phase:
            name = c.spec.name
            checks = list(c.acceptance) or ["(no acceptance checks listed: add `acceptance:` to the component)"]
            lines += [f"**{c.name}** is accepted when:", ""]
            lines += [f"- {check}" for check in checks]
            lines += [
                f"- its migration `{name}` completes: every gate within its limit in every stage "
                f"(`crossfade status {name}` shows the verdicts with their intervals);",
                f"- its audit log verifies (`crossfade audit verify {name}`) and `crossfade history {name}` shows "
                "no forced promotion;",
            ]
            if any(s.shadow for s in c.spec.stages):
                lines.append(f"- `crossfade mismatches {name}` shows no field outside the noise it expects.")
            lines.append("")
        lines.append(f"Phase {number} is done when each of its components is accepted; the next phase may start.")
        lines.append("")
    return "\n".join(lines)


def _preservation(c: Component) -> str:
    dual = [s.name for s in c.spec.stages if s.dual_write]
    lines = ["### Data preservation", ""]  # beside the rollback section's own Automatic and Manual
    if dual:
        lines.append(f"- `write` call sites write both stores in {', '.join(dual)} (the one the key is routed to "
                     "answers; the other is retried and any divergence recorded), so a rollback loses nothing "
                     "written meanwhile.")
    lines += [f"- {d}" for d in c.data]
    if not dual and not c.data:
        lines.append("- Nothing is said about the data this component writes: add `data:` to the component (which "
                     "stores, dual-written or snapshotted), or `dual_write: true` to its stages.")
    return "\n".join(lines)


def _program_rehearsal(program: Program, estimates: ProgramEstimates | None, source: str) -> str:
    lines = ["## Rollback rehearsal", "",
             "Before each phase starts, rehearse its rollback on simulated traffic: a candidate that turns faulty "
             f"(`{FAULTY}`) must be rolled back by the gates or triggers, not promoted.", ""]
    for number, phase in enumerate(program.phases(), start=1):
        for c in phase:
            rps = c.rps if c.rps else (estimates.components[c.name].rps if estimates else 1.0)
            legacy = f' --legacy "{c.legacy}"' if c.legacy else ""
            lines.append(f"- **Phase {number}, {c.name}:** `crossfade simulate SPEC --rps {rps:g}{legacy} "
                         f'--candidate "{FAULTY}" --runs 20`')
            if estimates is not None:
                faulty = estimates.components[c.name].faulty
                stopped = [r for r in faulty if r.outcome in ("rolled_back", "paused")]
                stages = sorted({r.stage for r in stopped if r.stage})
                delays = [r.detected_s for r in faulty if r.detected_s is not None]
                promoted = sum(r.outcome == "completed" for r in faulty)
                lines.append(
                    f"  rehearsed: {len(stopped)} of {len(faulty)} simulated faulty runs were stopped"
                    + (f" (at {', '.join(stages)})" if stages else "")
                    + (f", a median of {format_duration(round(statistics.median(delays)))} after the start"
                       if delays else "")
                    + f"; {promoted} completed{' — tighten the gates before this phase' if promoted else ''}.")
    return "\n".join(lines)


def _program_shadow_cost(program: Program, estimates: ProgramEstimates | None) -> str:
    lines = ["## Shadow's extra cost", "",
             "A shadow run executes the other arm beside the one that answers: it costs compute and money without "
             "serving anyone. Noise cancellation runs legacy a second time on a sample. Per component, for the "
             "stages that shadow (each for its hold, or its simulated median time):", "",
             "| component | stage | extra runs | extra compute | extra cost | against the stage's own |",
             "|---|---|---:|---:|---:|---:|"]
    any_shadow = False
    for c in program.components:
        legacy = parse_arm(c.legacy, label="legacy") if c.legacy else LEGACY_DEFAULT
        candidate = parse_arm(c.candidate, base=legacy, label="candidate") if c.candidate else legacy
        rps = c.rps or (estimates.components[c.name].rps if estimates else 0.0)
        spent = _stage_times(c, estimates)
        for stage in c.spec.stages:
            if not (stage.shadow or stage.shadow_legacy):
                continue
            any_shadow = True
            calls = rps * spent.get(stage.name, 0.0)
            by_legacy, by_candidate = calls * (1 - stage.traffic), calls * stage.traffic
            runs_candidate = by_legacy * stage.shadow
            runs_legacy = by_candidate * stage.shadow_legacy + runs_candidate * stage.noise
            compute = runs_candidate * _mean(candidate) + runs_legacy * _mean(legacy)
            own = by_legacy * _mean(legacy) + by_candidate * _mean(candidate)
            money = runs_candidate * candidate.cost + runs_legacy * legacy.cost
            share = f"+{compute / own * 100:.0f}% compute" if own else "-"
            lines.append(f"| {c.name} | {stage.name} | {runs_candidate + runs_legacy:,.0f} | "
                         f"{format_duration(round(compute))} | {money:,.2f} | {share} |")
    if not any_shadow:
        return "## Shadow's extra cost\n\nNo component shadows: nothing runs twice."
    if not estimates and not any(c.rps for c in program.components):
        lines += ["", "Without `rps:` on the components or `--rps`, no calls are assumed: give the traffic to price "
                  "the shadow stages."]
    return "\n".join(lines)


def _mean(arm: Arm) -> float:
    """The mean latency of an arm in seconds (a lognormal's mean is its median times exp(sigma^2 / 2))."""
    return arm.latency.median * math.exp(arm.latency.sigma ** 2 / 2)


def _stage_times(c: Component, estimates: ProgramEstimates | None) -> dict[str, float]:
    """Seconds spent in each stage: the median over simulated runs, else the stage's hold."""
    spent = {s.name: s.hold or 0.0 for s in c.spec.stages}
    if c.spec.bake:
        # The last stage is spent baking.
        spent[c.spec.stages[-1].name] = c.spec.bake
    if estimates is None:
        return spent
    order = [s.name for s in c.spec.stages]
    samples: dict[str, list[float]] = {}
    for run in estimates.components[c.name].healthy:
        entered = _entry_times(run)
        for i, name in enumerate(order):
            if name in entered:
                leave = entered.get(order[i + 1]) if i + 1 < len(order) else None
                samples.setdefault(name, []).append((leave if leave is not None else run.duration_s) - entered[name])
    spent.update({name: statistics.median(times) for name, times in samples.items()})
    return spent


def _program_communication(program: Program, source: str) -> str:
    lines = ["## Communication plan", "", "### Who is told of what", ""]
    if program.stakeholders:
        lines += ["| who | where | told of |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.contact} | {', '.join(m.replace('_', ' ') for m in s.told)} |"
                  for s in program.stakeholders]
    else:
        lines.append("No stakeholders are listed: add `stakeholders:` ({name, contact, told}) to the program.")
    notified = [(c.name, c.spec.notify) for c in program.components if c.spec.notify]
    lines += ["", "Automatic notifications from each migration's `notify:`:" if notified else
              "No migration has `notify:` targets: the messages below are sent by the owner by hand.", ""]
    lines += [f"- **{name}:** {', '.join(str(n) for n in targets)}" for name, targets in notified]
    first = program.components[0] if program.components else None
    order = [c.name for phase in program.phases() for c in phase]
    lines += ["", "### Templates", ""]
    if first is not None:
        values = {"program": program.name, "component": first.name, "migration": first.spec.name,
                  "first": first.spec.stages[0].name, "stage": first.spec.stages[0].name,
                  "traffic": format_percent(first.spec.stages[min(1, len(first.spec.stages) - 1)].traffic),
                  "reason": "<the verdict sentence from the rollback event>",
                  "owner": first.owner or first.spec.owner or program.owner or "the owner",
                  "status": f"`crossfade status --program {source}`",
                  "next": order[1] if len(order) > 1 else "the program is complete"}
        for moment, template in TEMPLATES.items():
            lines.append(f"- **{moment.replace('_', ' ')}:** " + template.format(**values))
    lines += ["", "### Cadence and escalation", "",
              f"- Every {format_duration(program.cadence)}, the owner posts `crossfade status --program {source}` "
              "(each component's phase, stage, traffic and gate verdicts) to every stakeholder.",
              "- An automatic rollback or pause is told at once to those who asked for it; the owner answers within "
              "the day with the cause and the next attempt."]
    if program.escalation:
        lines.append("- Escalation, in order, when a rollback is not understood within a day or a phase slips past "
                     "its timeline: " + " -> ".join(program.escalation) + ".")
    else:
        lines.append("- No escalation path is listed: add `escalation:` to the program.")
    return "\n".join(lines)
