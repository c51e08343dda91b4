"""The agent-CLI migration, end to end: configs converted and validated, manifests rendered, the CLIs judged.

    python migrate.py DIR [--build 1.0 | 1.1-grep | 1.1-slow | 1.1-verbose] [--webhook URL]

1. Planning: the workspace is copied to DIR; `CLAUDE.md` becomes `AGENTS.md` (imports resolved) and Claude
   Code's settings a Codex `config.toml` (crossfade's `claude_to_agents` converter); the agent's JSON settings
   become TOML (`json_to_toml`, read back with `toml_to_json`). Every conversion is validated: no line of the
   instructions lost, no value of the settings lost, and the candidate CLI starts on the result. What Codex
   cannot express (per-command allow and deny rules) is listed, not hidden.
2. Routers: where the CLIs run as services, Istio, the Gateway API or nginx split the agents between them;
   each router's manifests are rendered for every stage and for a rollback into DIR/manifests.
3. Testing, canary, rollout: 300 agents call the CLIs through `mig.run` (one call a second, the agent id as
   the sticky key) while the controller judges every 30 s; the model's time is virtual, so two hours of
   stages take seconds. Triggers from the seed: errors > 5% over 5 m, p95 > 2x legacy's for 3 m, cost > 1.5x
   over 1 h. Rollbacks and the completion are posted to the webhook (signed, from the outbox).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import tomlkit
import yaml

import crossfade
from crossfade.convert import converter
from crossfade.convert.claude_to_agents import CONFIG_NAME
from crossfade.loop import ControllerLoop, NotificationOutbox
from crossfade.routers import Target, routers_for
from crossfade.simulate import VirtualClock

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import agent_cli  # noqa: E402

MIGRATION = "agent-cli"
AGENTS = 300
CALLS_PER_SECOND = 1
UNTIL = 3 * 3600.0  # virtual seconds: every stage's hold, and room to spare
CANDIDATE_MODEL = "gpt-5-codex"


def convert(workspace: Path) -> dict[str, object]:
    """Convert the workspace's Claude configuration to Codex's in place, validate it, and say what was lost."""
    claude = converter("claude-to-agents", {"settings": str(workspace / ".claude" / "settings.json")})
    source = workspace / "CLAUDE.md"
    memory = claude.convert(source.read_bytes(), source=str(source))
    (workspace / "AGENTS.md").write_bytes(memory.output)
    # The converter copies the model's name and says so (a note): the migration chooses the Codex model.
    config = tomlkit.parse(memory.extra[CONFIG_NAME].decode())
    config["model"] = CANDIDATE_MODEL
    (workspace / ".codex").mkdir(exist_ok=True)
    (workspace / ".codex" / "config.toml").write_text(tomlkit.dumps(config))
    instructions_lost = claude.validate(source.read_bytes(), memory.output, source=str(source))

    to_toml = converter("json-to-toml", {"snake_case": True})
    agent_json = (workspace / ".claude" / "agent.json").read_bytes()
    agent = to_toml.convert(agent_json)
    (workspace / ".codex" / "agent.toml").write_bytes(agent.output)
    back = converter("toml-to-json").convert(agent.output)
    settings_lost = [loss for loss in to_toml.validate(agent_json, agent.output) if loss.kind == "data"]

    agent_cli.load_codex_config(workspace)  # the candidate CLI refuses a configuration it cannot use
    return {
        "instructions_lost": [str(loss) for loss in instructions_lost],
        "settings_lost": [str(loss) for loss in settings_lost],
        "not_carried": [str(loss) for loss in memory.losses if loss.kind == "data"],
        "agent_toml_round_trip": json.loads(back.output) == {
            "agent_name": "payments-helper", "max_turns": 8, "context_window": 200000, "tool_timeout_seconds": 30,
            "retry_policy": {"max_attempts": 2, "backoff_seconds": 1.5},
            "allowed_paths": ["src", "docs", "README.md"]},
    }


def render_manifests(spec: dict, directory: Path) -> dict[str, dict[str, str]]:
    """Each router's rendering of every stage and of a rollback, also written under DIR/manifests."""
    entries = yaml.safe_load((HERE / "routers.yaml").read_text())
    for entry in entries:
        if "nginx" in entry:
            entry["nginx"]["conf"] = str(directory / entry["nginx"]["conf"])
    # Loading the spec with its routers checks their settings, each problem with its path.
    model = crossfade.load_spec({**spec, "routers": entries})
    targets = [Target.for_stage(model, stage.name) for stage in model.stages]
    targets.append(Target(model.name, model.stages[-1].name, 0.0, 0.0, (), model.deny, rollback=True,
                          salt=model.salt))
    rendered: dict[str, dict[str, str]] = {}
    for router in routers_for(model):
        folder = directory / "manifests" / router.name
        folder.mkdir(parents=True, exist_ok=True)
        rendered[router.name] = {}
        for target in targets:
            name = "rollback" if target.rollback else target.stage
            text = router.render(target)  # type: ignore[attr-defined]  # every one of these renders
            (folder / f"{name}.{'conf' if router.name == 'nginx' else 'yaml'}").write_text(text)
            rendered[router.name][name] = text
    return rendered


def run(directory: Path, *, build: str = "1.0", webhook: str | None = None, seed: int = 0) -> dict[str, object]:
    """Move the agents from claude-like to codex-like (release `build`) in virtual time; what happened."""
    workspace = directory / "workspace"
    spec = yaml.safe_load((HERE / "agent-cli.yaml").read_text())
    if webhook is not None:
        spec["notify"][0]["webhook"]["url"] = webhook
    clock = VirtualClock()
    cf = crossfade.Client(f"sqlite:///{directory / 'crossfade.db'}", clock=clock.now, background=False,
                          window=30.0)
    try:
        return _run(cf, clock, spec, workspace, build, seed)
    finally:
        cf.close()


def _run(cf: crossfade.Client, clock: VirtualClock, spec: dict, workspace: Path, build: str,
         seed: int) -> dict[str, object]:
    mig = cf.migration(MIGRATION, cost=lambda answer: answer["cost"],
                       ignore=["$.cli", "$.model", "$.tokens", "$.cost", "$.seconds"])
    cf.apply(spec)
    mig.start(f"agents move to codex-like {build}")
    backend = cf.backend()
    loop = ControllerLoop(backend, clock=clock, names=[MIGRATION])
    outbox = NotificationOutbox(backend, clock=clock)
    interval = crossfade.load_spec(spec).analysis.interval
    rng = random.Random(seed)
    agents = [f"agent-{i:03d}" for i in range(AGENTS)]

    def legacy(task: str) -> dict[str, object]:
        answer = agent_cli.claude_like(workspace, task, rng)
        clock.advance(answer["seconds"])  # the model's time, virtual
        return answer

    def candidate(task: str) -> dict[str, object]:
        answer = agent_cli.codex_like(workspace, task, rng, build)
        clock.advance(answer["seconds"])
        return answer

    start = clock.now()
    loop.tick()
    failed_calls = 0
    second = 0
    while mig.state().status in ("running", "awaiting_approval", "rolling_back") and second < UNTIL:
        for _ in range(int(interval)):
            clock.set(start + second)
            for _ in range(CALLS_PER_SECOND):
                try:
                    mig.run(rng.choice(agents), legacy, candidate, rng.choice(agent_cli.TASKS))
                except agent_cli.ToolError:
                    failed_calls += 1  # legacy's own failures reach the agent, as they would
                if not cf.wait_for_shadows(timeout=30):  # both arms move the one virtual clock
                    raise TimeoutError("a shadow run did not finish")
            second += 1
        clock.set(start + second)
        cf.flush(everything=True)
        loop.tick()
        cf.refresh()
        outbox.pump()
    outbox.pump()
    state = mig.state()
    history = mig.history()
    corrective = next((e for e in history if e.type in ("rollback_started", "rolled_back", "paused")), None)
    return {
        "status": state.status, "stage": state.stage, "virtual_minutes": round((clock.now() - start) / 60),
        "stopped_at": (corrective.payload.get("stage") or state.stage) if corrective else None,
        "reason": corrective.reason if corrective else None,
        "stages_entered": [e.payload["stage"] for e in history if e.type in ("started", "promoted")],
        "legacy_failures_seen_by_agents": failed_calls,
    }


def main(directory: Path, *, build: str = "1.0", webhook: str | None = None) -> dict[str, object]:
    """Plan (convert and validate), render the routers, and run the migration; print and return each part."""
    directory.mkdir(parents=True, exist_ok=True)
    workspace = directory / "workspace"
    if workspace.exists():
        shutil.rmtree(workspace)
    (directory / "crossfade.db").unlink(missing_ok=True)  # each run is a new migration
    shutil.copytree(HERE / "workspace", workspace)
    planning = convert(workspace)
    print(f"planning: AGENTS.md and .codex/config.toml written; instructions lost: "
          f"{len(planning['instructions_lost'])}, settings lost: {len(planning['settings_lost'])}; "
          f"not carried over: {'; '.join(planning['not_carried'])}")
    spec = yaml.safe_load((HERE / "agent-cli.yaml").read_text())
    manifests = render_manifests(spec, directory)
    print(f"routers: {', '.join(f'{name} ({len(stages)} renderings)' for name, stages in manifests.items())} "
          f"in {directory / 'manifests'}")
    outcome = run(directory, build=build, webhook=webhook)
    print(f"codex-like {build}: {outcome['status']} at {outcome['stage']} after {outcome['virtual_minutes']} "
          f"virtual minutes" + (f"; stopped at {outcome['stopped_at']}: {outcome['reason']}"
                                if outcome["reason"] else ""))
    return {"planning": planning, "manifests": manifests, **outcome}


if __name__ == "__main__":
    args = sys.argv[1:]
    options: dict[str, str] = {}
    for flag in ("--build", "--webhook"):
        if flag in args:
            i = args.index(flag)
            options[flag[2:]] = args[i + 1]
            args = args[:i] + args[i + 2:]
    if len(args) != 1 or options.get("build", "1.0") not in agent_cli.BUILDS:
        sys.exit(__doc__.split("\n\n")[1])
    os.environ.setdefault("AGENT_CLI_WEBHOOK_SECRET", "example-secret")
    main(Path(args[0]), **options)
