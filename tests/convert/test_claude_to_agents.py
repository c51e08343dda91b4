"""CLAUDE.md -> AGENTS.md: imports resolved or kept, sections preserved, Claude settings mapped to Codex's."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from crossfade.convert import DATA, NOTE, converter
from crossfade.convert.claude_to_agents import CONFIG_NAME
from crossfade.registry import ProviderConfigError

CORPUS = Path(__file__).with_name("corpus")

CLAUDE = """# Task Master project

## Task Master AI Instructions
**Import Task Master's development workflow commands and guidelines.**
@./.taskmaster/CLAUDE.md

## Workflow

- Read @docs/architecture.md before touching the router.
- Never run `rm -rf @./.taskmaster` (not an import: inline code).
- Ask @alice for reviews; mail ops@example.com.

```bash
task-master next   # @docs/not-an-import.md
```

## Missing
See @docs/gone.md
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / ".taskmaster").mkdir()
    (tmp_path / ".taskmaster" / "CLAUDE.md").write_text("# Task Master\n\nUse `task-master list`. @rules.md\n")
    (tmp_path / ".taskmaster" / "rules.md").write_text("- Rule ünïcode ✓\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "architecture.md").write_text("The router is @../CLAUDE.md's subject.\n")
    (tmp_path / "CLAUDE.md").write_text(CLAUDE)
    return tmp_path


def test_imports_are_resolved_and_sections_preserved(project):
    source = project / "CLAUDE.md"
    result = converter("claude-to-agents").convert(source.read_bytes(), source=str(source))
    text = result.output.decode()
    assert "<!-- imported from ./.taskmaster/CLAUDE.md -->\n# Task Master\n" in text
    assert "## Included: rules.md" in text and "- Rule ünïcode ✓" in text  # nested, relative to its file
    assert "- Read [docs/architecture.md](docs/architecture.md) before" in text
    assert "## Included: docs/architecture.md" in text
    assert "`rm -rf @./.taskmaster`" in text and "# @docs/not-an-import.md" in text and "@alice" in text
    assert "See @docs/gone.md" in text
    losses = {(loss.path, loss.kind) for loss in result.losses}
    assert ("@docs/gone.md", DATA) in losses
    assert ("@../CLAUDE.md", DATA) in losses  # the cycle back to the top file
    assert ("@./.taskmaster/CLAUDE.md", NOTE) in losses
    headings = [line for line in CLAUDE.splitlines() if line.startswith("#")]
    assert [line for line in text.splitlines() if line in headings] == headings


def test_imports_can_be_kept_as_text(project):
    source = project / "CLAUDE.md"
    result = converter("claude-to-agents", {"imports": "keep"}).convert(source.read_bytes(), source=str(source))
    assert result.output.decode() == CLAUDE and result.lossless
    assert {loss.kind for loss in result.losses} == {NOTE}


def test_the_validator_reports_dropped_sections_lines_and_code():
    conv = converter("claude-to-agents")
    before = b"# A\n\ntext one\n\n## B\n\n```\ncode\n```\n"
    losses = conv.validate(before, b"# A\n\ntext one\n")
    assert {loss.path for loss in losses} == {"heading 'B'", "code 'code\\n'", "line '## B'"}
    assert conv.validate(before, before) == []


def test_settings_map_to_codex_where_codex_has_an_equivalent_and_the_rest_is_reported(tmp_path):
    (tmp_path / "CLAUDE.md").write_text("# Hi\n")
    conv = converter("claude-to-agents", {"settings": str(CORPUS / "claude-settings.json"),
                                          "mcp": str(CORPUS / "mcp.json")})
    result = conv.convert(b"# Hi\n", source=str(tmp_path / "CLAUDE.md"))
    config = tomllib.loads(result.extra[CONFIG_NAME].decode())
    assert config["approval_policy"] == "on-request" and config["sandbox_mode"] == "workspace-write"
    assert config["sandbox_workspace_write"] == {"writable_roots": ["../docs/"]}
    assert config["shell_environment_policy"]["set"] == {"NODE_ENV": "development", "DEBUG": "app:*"}
    assert config["mcp_servers"]["filesystem"]["args"][-1] == "/home/ünï/projects"
    assert config["mcp_servers"]["github"] == {"url": "https://api.githubcopilot.com/mcp/"}
    assert config["model"] == "claude-sonnet-4-5"
    reported = {loss.path for loss in result.losses if loss.kind == DATA}
    assert "permissions.allow 'Bash(npm run test:*)'" in reported
    assert "permissions.deny 'Read(./.env)'" in reported
    assert {"hooks", "cleanupPeriodDays", "includeCoAuthoredBy"} <= reported
    assert "permissions.allow 'Edit'" not in reported  # workspace-write covers it


def test_bad_settings_are_one_clear_error(tmp_path):
    with pytest.raises(ProviderConfigError, match="convert.claude-to-agents.imports: must be resolve or keep"):
        converter("claude-to-agents", {"imports": "inline"})
    with pytest.raises(ProviderConfigError, match="settings: must name a JSON file"):
        converter("claude-to-agents", {"settings": str(tmp_path / "none.json")})
