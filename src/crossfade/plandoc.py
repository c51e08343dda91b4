"""The migration plan: a Markdown document a team can circulate, rendered from a spec and its simulations."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from crossfade.judge import enabled_gates, gate_alpha
from crossfade.simulate import SimResult, Workload, parse_arm, simulate_many
from crossfade.spec import Spec, Stage, Trigger, format_duration, format_percent

FAULTY = "errors=3% latency=x1.5 cost=x2"


@dataclass(frozen=True, slots=True)
class Estimates:
    """Simulated runs behind the plan: a candidate that behaves like legacy, and a faulty one."""

    rps: float
    healthy: tuple[SimResult, ...]
    faulty: tuple[SimResult, ...]
    faulty_arm: str


def estimate(spec: Spec, *, rps: float, runs: int = 20, seed: int = 0) -> Estimates:
    """Simulate `runs` migrations with a healthy candidate and `runs` with a faulty one at `rps`."""
    base = Workload(rps=rps)
    healthy = simulate_many(spec, base, runs=runs, seed=seed)
    faulty_workload = Workload(rps=rps, candidate=parse_arm(FAULTY, base=base.legacy, label="faulty candidate"))
    faulty = simulate_many(spec, faulty_workload, runs=runs, seed=seed + runs)
    return Estimates(rps, tuple(healthy), tuple(faulty), FAULTY)


def render(spec: Spec, estimates: Estimates | None = None) -> str:
    """The plan as Markdown: purpose and owner, phases, success criteria, rollback, testing, timeline and
    communication."""
    parts = [
        _purpose(spec),
        _phases(spec),
        _criteria(spec),
        _rollback(spec),
        _testing(spec, estimates),
        _timeline(spec, estimates),
        _communication(spec),
    ]
    return "\n\n".join(p.strip() for p in parts) + "\n"


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
    rows += ["", f"Entering the last stage ({spec.stages[-1].name}) completes the migration."]
    return "\n".join(rows)


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


def _trigger_sentence(t: Trigger) -> str:
    metric = t.metric
    if metric.endswith("_ratio"):
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
        lines += [f"- {_trigger_sentence(t)}" for t in spec.triggers]
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


def _entry_times(result: SimResult) -> dict[str, float]:
    entered: dict[str, float] = {}
    for entry in result.timeline:
        if entry.kind in ("started", "promoted", "restarted") and entry.stage and entry.stage not in entered:
            entered[entry.stage] = entry.elapsed
    return entered


def _timeline(spec: Spec, estimates: Estimates | None) -> str:
    lines = ["## Estimated timeline", ""]
    holds = sum(s.hold or 0.0 for s in spec.stages)
    if estimates is None:
        lines.append(f"At least {format_duration(holds)} (the sum of the holds); run `crossfade plan` with `--rps` "
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
    lines.append("")
    if done:
        durations = [r.duration_s for r in done]
        lines.append(f"**Completion:** median {format_duration(round(statistics.median(durations)))} "
                     f"(fastest {format_duration(round(min(durations)))}, slowest "
                     f"{format_duration(round(max(durations)))}; {len(done)} of {len(estimates.healthy)} runs "
                     f"completed; the holds alone take {format_duration(holds)}).")
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
