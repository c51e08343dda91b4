"""Two agent CLIs over one workspace: the one the agents use today, and the one they move to.

    python agent_cli.py claude-like WORKSPACE "count src/ledger.py"
    python agent_cli.py codex-like WORKSPACE "grep TODO" [--build 1.1-grep]

`claude-like` (legacy) reads `CLAUDE.md` (imports resolved) and `.claude/settings.json`; `codex-like` (the
candidate) reads `AGENTS.md` and `.codex/config.toml`, the files `migrate.py` converts them to. Each refuses
to start on a configuration it cannot use. Their model is fake (no network, no API key): it picks a tool by
the task's first word, and the tool runs for real on the workspace's files. The answer is JSON, as the real
CLIs print with `--output-format json`: the text, the tokens, the cost in dollars and the model's seconds.

`--build` picks a release of the candidate: `1.0` works; `1.1-grep` passes grep a flag it lacks (grep tasks
fail), `1.1-slow` waits four times as long for its model, `1.1-verbose` sends the workspace's files with
every prompt.
"""

from __future__ import annotations

import json
import random
import re
import sys
import tomllib
from pathlib import Path

# Dollars per million tokens (input, output), by model.
PRICES = {"claude-sonnet-4": (3.0, 15.0), "gpt-5-codex": (1.25, 10.0)}
TASKS = ("read README.md", "count src/ledger.py", "grep TODO", "glob src/*.py", "read docs/conventions.md",
         "grep cents", "count src/charges.py", "read src/charges.py")
BUILDS = ("1.0", "1.1-grep", "1.1-slow", "1.1-verbose")
# Which permission each tool needs in Claude Code's settings.
_CLAUDE_RULES = {"read": "Read", "grep": "Grep", "glob": "Glob", "count": "Bash(wc:*)"}
_SANDBOXES = ("read-only", "workspace-write", "danger-full-access")


class ConfigError(Exception):
    """The CLI cannot start with this workspace's configuration."""


class ToolError(Exception):
    """A tool call failed; the task has no answer."""


def _inside(workspace: Path, name: str) -> Path:
    path = (workspace / name).resolve()
    if workspace.resolve() not in path.parents:
        raise ToolError(f"{name}: outside the workspace")
    return path


def tool(workspace: Path, task: str) -> str:
    """Run the task's tool on the workspace's files: read, grep, glob or count (lines, as `wc -l`)."""
    verb, _, arg = task.partition(" ")
    if verb == "read":
        return _inside(workspace, arg).read_text()
    if verb == "count":
        return f"{len(_inside(workspace, arg).read_text().splitlines())} {arg}"
    if verb == "glob":
        return "\n".join(sorted(str(p.relative_to(workspace)) for p in workspace.glob(arg)))
    if verb == "grep":
        pattern = re.compile(re.escape(arg))
        hits = [f"{p.relative_to(workspace)}:{n}: {line.strip()}"
                for p in sorted(workspace.rglob("*")) if p.is_file() and ".claude" not in p.parts
                and ".codex" not in p.parts
                for n, line in enumerate(p.read_text().splitlines(), start=1) if pattern.search(line)]
        return "\n".join(hits)
    raise ToolError(f"no tool for {verb!r}")


def _answer(cli: str, model: str, instructions: str, task: str, text: str, rng: random.Random, *,
            extra_input: int = 0, slowness: float = 1.0) -> dict[str, object]:
    tokens_in = (len(instructions) + len(task)) // 4 + extra_input
    tokens_out = len(text) // 4 + 40
    price_in, price_out = PRICES[model]
    seconds = slowness * (0.8 + 0.01 * tokens_out) * rng.lognormvariate(0.0, 0.25)
    return {"cli": cli, "model": model, "text": text, "tokens": tokens_in + tokens_out,
            "cost": (tokens_in * price_in + tokens_out * price_out) / 1e6, "seconds": round(seconds, 4)}


def claude_like(workspace: Path, task: str, rng: random.Random) -> dict[str, object]:
    """The legacy CLI: CLAUDE.md with its `@imports`, and Claude Code's permission rules."""
    settings = json.loads((workspace / ".claude" / "settings.json").read_text())
    model = settings.get("model")
    if model not in PRICES:
        raise ConfigError(f"unknown model {model!r}")
    memory = (workspace / "CLAUDE.md").read_text()
    instructions = re.sub(r"^@(\S+)$", lambda m: (workspace / m.group(1)).read_text(), memory, flags=re.M)
    rule = _CLAUDE_RULES.get(task.partition(" ")[0])
    if rule not in settings.get("permissions", {}).get("allow", []):
        raise ToolError(f"{task}: not allowed by .claude/settings.json")
    return _answer("claude-like", model, instructions, task, tool(workspace, task), rng)


def load_codex_config(workspace: Path) -> dict[str, object]:
    """The candidate's configuration, checked as the CLI checks it at start (ConfigError otherwise)."""
    try:
        config = tomllib.loads((workspace / ".codex" / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f".codex/config.toml: {exc}") from None
    if config.get("model") not in PRICES:
        raise ConfigError(f".codex/config.toml: model {config.get('model')!r} is not one this CLI serves "
                          f"({', '.join(PRICES)})")
    if config.get("sandbox_mode") not in _SANDBOXES:
        raise ConfigError(f".codex/config.toml: sandbox_mode {config.get('sandbox_mode')!r}")
    if not (workspace / "AGENTS.md").is_file():
        raise ConfigError("AGENTS.md is missing")
    return config


def codex_like(workspace: Path, task: str, rng: random.Random, build: str = "1.0") -> dict[str, object]:
    """The candidate CLI: AGENTS.md as it is, and Codex's sandbox instead of per-tool rules."""
    config = load_codex_config(workspace)
    instructions = (workspace / "AGENTS.md").read_text()
    verb = task.partition(" ")[0]
    if build == "1.1-grep" and verb == "grep":
        raise ToolError("grep: unrecognized option '--no-ignore-vcs'")
    # The verbose release sends every file of the workspace as context, again at each of its four turns.
    extra = 4 * sum(len(p.read_text()) // 4 for p in workspace.rglob("*") if p.is_file()) if build == "1.1-verbose" else 0
    return _answer("codex-like", str(config["model"]), instructions, task, tool(workspace, task), rng,
                   extra_input=extra, slowness=4.0 if build == "1.1-slow" else 1.0)


def main(argv: list[str]) -> int:
    """The command line: CLI, workspace, task (and `--build` for codex-like); prints the answer as JSON."""
    build = "1.0"
    if "--build" in argv:
        i = argv.index("--build")
        build = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if len(argv) != 3 or argv[0] not in ("claude-like", "codex-like") or build not in BUILDS:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    cli, workspace, task = argv[0], Path(argv[1]), argv[2]
    rng = random.Random(task)
    try:
        answer = claude_like(workspace, task, rng) if cli == "claude-like" else codex_like(workspace, task, rng, build)
    except (ConfigError, ToolError) as exc:
        print(f"{cli}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
