"""CLAUDE.md to AGENTS.md, and Claude Code's settings to a Codex `config.toml`.

The Markdown is read with markdown-it-py, so code blocks and inline code are told from text: only an `@path`
in text is an import. An import alone on its line is replaced by the file's content (resolved relative to the
file that names it, up to five levels deep, as Claude Code does); one inside a sentence becomes a link and the
file's content is appended under its own heading. Every other line is copied as it is, so sections keep their
headings, order and text. Permission settings (`.claude/settings.json`) map to Codex's approval policy,
sandbox mode, writable roots, network access, environment and MCP servers where Codex has an equivalent;
every rule with none (Codex has no per-command allow or deny list) is reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import tomlkit
from markdown_it import MarkdownIt
from markdown_it.token import Token

from crossfade.convert import DATA, NOTE, Conversion, Loss
from crossfade.registry import ConfigProblem, ProviderConfigError

MAX_DEPTH: Final = 5
_IMPORT: Final = re.compile(r"(?:(?<=\s)|^)@((?:~/|\.{1,2}/|/)?[\w.\-/]*[\w\-/])")
# Claude Code's permission modes and the Codex approval policy and sandbox mode closest to each.
_MODES: Final = {
    "default": ("untrusted", "workspace-write"),
    "acceptEdits": ("on-request", "workspace-write"),
    "plan": ("on-request", "read-only"),
    "bypassPermissions": ("never", "danger-full-access"),
}
_EDIT_TOOLS: Final = ("Edit", "Write", "MultiEdit", "NotebookEdit")
CONFIG_NAME: Final = "codex-config.toml"


@dataclass(frozen=True, slots=True)
class ClaudeToAgents:
    """Converts a CLAUDE.md (imports resolved or kept) and optionally Claude settings to Codex's."""

    imports: str = "resolve"
    settings: str | None = None
    mcp: str | None = None
    name: str = "claude_to_agents"

    def convert(self, data: bytes, *, source: str | None = None) -> Conversion:
        """AGENTS.md, and `codex-config.toml` among the extra outputs when settings were given."""
        losses: list[Loss] = []
        base = Path(source).parent if source else Path.cwd()
        top = frozenset({str(Path(source).resolve())} if source else ())
        text = self._expand(data.decode(), base, losses, depth=0, seen=top)
        extra: dict[str, bytes] = {}
        if self.settings or self.mcp:
            extra[CONFIG_NAME] = self._codex_config(losses).encode()
        output = text.encode()
        losses.extend(self.validate(data, output, source=source))
        return Conversion(output, tuple(dict.fromkeys(losses)), extra)

    def validate(self, before: bytes, after: bytes, *, source: str | None = None) -> list[Loss]:
        """Headings, code blocks and text lines of `before` (imports aside) missing from `after`, in order."""
        mine, theirs = _outline(before.decode()), _outline(after.decode())
        losses: list[Loss] = []
        for kind in ("heading", "code"):
            missing = _missing_in_order(mine[kind], theirs[kind])
            losses.extend(Loss(f"{kind} {item[:50]!r}", f"the {kind} is not in the output") for item in missing)
        lines = set(theirs["line"])
        for line in mine["line"]:
            if not _IMPORT.search(line) and line not in lines:
                losses.append(Loss(f"line {line[:50]!r}", "the line is not in the output"))
        return losses

    # -- imports ---------------------------------------------------------------------------------

    def _expand(self, text: str, base: Path, losses: list[Loss], *, depth: int, seen: frozenset[str]) -> str:
        lines = text.splitlines(keepends=True)
        appended: list[tuple[int, int, str]] = []
        for index, targets in sorted(_imports_by_line(text).items(), reverse=True):
            line = lines[index]
            if self.imports != "resolve":
                for target in targets:
                    losses.append(Loss(f"@{target}", "kept as text: Codex does not read @imports", NOTE))
                continue
            alone = _alone(line, targets)
            pieces: list[str] = []
            for order, target in enumerate(targets):
                path = (Path(target).expanduser() if target.startswith(("~", "/")) else base / target).resolve()
                if str(path) in seen:
                    losses.append(Loss(f"@{target}", "an import cycle: kept as text"))
                    continue
                if depth >= MAX_DEPTH:
                    losses.append(Loss(f"@{target}", f"imports nest deeper than {MAX_DEPTH}: kept as text"))
                    continue
                try:
                    content = path.read_text()
                except (OSError, UnicodeDecodeError) as e:
                    losses.append(Loss(f"@{target}", f"cannot read the imported file ({e.__class__.__name__}): "
                                       "kept as text, its content is not carried over"))
                    continue
                inner = self._expand(content, path.parent, losses, depth=depth + 1, seen=seen | {str(path)})
                losses.append(Loss(f"@{target}", "imported file included", NOTE))
                if alone:
                    pieces.append(f"<!-- imported from {target} -->\n{inner.rstrip()}\n<!-- end of {target} -->\n")
                else:
                    line = line.replace(f"@{target}", f"[{target}]({target})", 1)
                    appended.append((index, order, f"\n## Included: {target}\n\n<!-- imported from {target} -->\n"
                                                   f"{inner.rstrip()}\n"))
            lines[index] = "".join(pieces) if alone and pieces and len(pieces) == len(targets) else line
        return "".join(lines) + "".join(text for _, _, text in sorted(appended))

    # -- settings --------------------------------------------------------------------------------

    def _codex_config(self, losses: list[Loss]) -> str:
        settings = _read_json(self.settings, losses) if self.settings else {}
        doc = tomlkit.document()
        doc.add(tomlkit.comment("Converted from Claude Code settings by crossfade convert claude-to-agents"))
        if "model" in settings:
            doc.add("model", settings["model"])
            losses.append(Loss("model", "copied as is: Claude and Codex model names differ; choose a Codex model",
                               NOTE))
        permissions = settings.get("permissions") or {}
        mode = permissions.get("defaultMode", "default")
        approval, sandbox = _MODES.get(mode, _MODES["default"])
        if mode not in _MODES:
            losses.append(Loss("permissions.defaultMode", f"unknown mode {mode!r}: treated as default"))
        allow = list(permissions.get("allow") or [])
        network = False
        web_search = False
        for rule in allow:
            tool, _, scope = rule.partition("(")
            if tool in _EDIT_TOOLS and not scope and sandbox == "read-only":
                sandbox = "workspace-write"
            elif tool in _EDIT_TOOLS and not scope:
                pass  # workspace-write already lets Codex edit the workspace
            elif tool == "WebFetch":
                network = True
                if scope:
                    losses.append(Loss(f"permissions.allow {rule!r}", "Codex's network access is not scoped to "
                                       "domains: mapped to network_access = true for every domain"))
            elif tool == "WebSearch":
                web_search = True
            else:
                losses.append(Loss(f"permissions.allow {rule!r}", "Codex has no per-tool or per-command allow "
                                   f"list; with approval_policy = {approval!r} it asks instead"))
        for kind in ("deny", "ask"):
            for rule in permissions.get(kind) or []:
                losses.append(Loss(f"permissions.{kind} {rule!r}", f"Codex has no {kind} list; not carried over"))
        doc.add("approval_policy", approval)
        doc.add("sandbox_mode", sandbox)
        roots = list(permissions.get("additionalDirectories") or [])
        if sandbox == "workspace-write" and (roots or network):
            section = tomlkit.table()
            if roots:
                section.add("writable_roots", roots)
            if network:
                section.add("network_access", True)
            doc.add("sandbox_workspace_write", section)
        elif roots:
            losses.append(Loss("permissions.additionalDirectories", f"sandbox_mode {sandbox} writes nowhere: "
                               "the directories are not carried over"))
        if web_search:
            doc.add("tools", {"web_search": True})
        env = settings.get("env") or {}
        if env:
            policy = tomlkit.table()
            policy.add("set", {str(k): str(v) for k, v in env.items()})
            doc.add("shell_environment_policy", policy)
        servers = dict(settings.get("mcpServers") or {})
        if self.mcp:
            servers.update(_read_json(self.mcp, losses).get("mcpServers") or {})
        if servers:
            table = tomlkit.table(is_super_table=True)
            for name, server in servers.items():
                table.add(name, _mcp_server(name, server, losses))
            doc.add("mcp_servers", table)
        handled = {"model", "permissions", "env", "mcpServers", "$schema"}
        for key in settings:
            if key not in handled:
                losses.append(Loss(key, "no Codex setting corresponds: not carried over"))
        return tomlkit.dumps(doc)


def _mcp_server(name: str, server: dict[str, Any], losses: list[Loss]) -> Any:
    entry = tomlkit.table()
    if "command" in server:
        entry.add("command", server["command"])
        if server.get("args"):
            entry.add("args", list(server["args"]))
    elif "url" in server:
        entry.add("url", server["url"])
        if server.get("headers"):
            losses.append(Loss(f"mcpServers.{name}.headers", "HTTP headers are not carried over; give Codex a "
                               "bearer_token_env_var instead"))
    else:
        losses.append(Loss(f"mcpServers.{name}", "neither command nor url: not carried over"))
    if server.get("env"):
        entry.add("env", {str(k): str(v) for k, v in server["env"].items()})
    for key in sorted(set(server) - {"command", "args", "url", "headers", "env", "type"}):
        losses.append(Loss(f"mcpServers.{name}.{key}", "no Codex setting corresponds: not carried over"))
    return entry


def _read_json(path: str, losses: list[Loss]) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the settings {path}: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the settings {path} are not a JSON object")
    return value


_MD: Final = MarkdownIt("commonmark")


def _imports_by_line(text: str) -> dict[int, list[str]]:
    """Per source line (0-based), the import targets named in its text (code blocks and code spans skipped)."""
    found: dict[int, list[str]] = {}
    for token in _MD.parse(text):
        if token.type != "inline" or token.map is None:
            continue
        start = token.map[0]
        offset = 0
        for child in token.children or []:
            if child.type in ("softbreak", "hardbreak"):
                offset += 1
            elif child.type == "text":
                for match in _IMPORT.finditer(child.content):
                    target = match.group(1)
                    # `@someone` in prose is a mention, not a file: a path has a dot, a slash or a ~.
                    if "." in target or "/" in target:
                        found.setdefault(start + offset, []).append(target)
    return found


def _alone(line: str, targets: list[str]) -> bool:
    rest = line
    for target in targets:
        rest = rest.replace(f"@{target}", "", 1)
    return rest.strip().lstrip("-*+").strip() == ""


def _outline(text: str) -> dict[str, list[str]]:
    """The headings, code blocks and other non-blank lines of a Markdown text, each in order."""
    tokens: list[Token] = _MD.parse(text)
    outline: dict[str, list[str]] = {"heading": [], "code": [], "line": []}
    code_lines: set[int] = set()
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            outline["heading"].append(tokens[index + 1].content)
        elif token.type in ("fence", "code_block") and token.map:
            outline["code"].append(token.content)
            code_lines.update(range(*token.map))
    outline["line"] = [line.rstrip() for number, line in enumerate(text.splitlines())
                       if line.strip() and number not in code_lines]
    return outline


def _missing_in_order(expected: list[str], got: list[str]) -> list[str]:
    missing, position = [], 0
    for item in expected:
        try:
            position = got.index(item, position) + 1
        except ValueError:
            missing.append(item)
    return missing


def create(config: dict[str, Any], path: str) -> ClaudeToAgents:
    """The converter; settings: `imports` (resolve | keep), `settings` (a .claude/settings.json), `mcp`
    (a .mcp.json)."""
    problems = [ConfigProblem(f"{path}.{k}", "unknown setting; claude_to_agents takes: imports, settings, mcp")
                for k in sorted(set(config) - {"imports", "settings", "mcp"})]
    imports = config.get("imports", "resolve")
    if imports not in ("resolve", "keep"):
        problems.append(ConfigProblem(f"{path}.imports", f"must be resolve or keep, got {imports!r}"))
    for name in ("settings", "mcp"):
        value = config.get(name)
        if value is not None and not Path(str(value)).is_file():
            problems.append(ConfigProblem(f"{path}.{name}", f"must name a JSON file, got {value!r}"))
    if problems:
        raise ProviderConfigError(problems)
    return ClaudeToAgents(imports, None if config.get("settings") is None else str(config["settings"]),
                          None if config.get("mcp") is None else str(config["mcp"]))


__all__ = ["CONFIG_NAME", "DATA", "ClaudeToAgents", "create"]
