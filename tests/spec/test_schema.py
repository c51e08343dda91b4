"""The spec's derived forms: the JSON Schema accepts every spec the repository ships, and the Markdown
reference in docs/spec.md is the one the models generate."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crossfade.cli import app
from crossfade.spec import EXAMPLE, SpecError, json_schema, load_spec
from crossfade.spec.models import sections
from crossfade.spec.schema import markdown_reference

ROOT = Path(__file__).parents[2]


def _shipped_specs() -> list[tuple[str, object]]:
    """Every migration spec in examples/ and in the README's YAML blocks (programs and fragments left out)."""
    found: list[tuple[str, object]] = [("EXAMPLE", yaml.safe_load(EXAMPLE))]
    for path in sorted((ROOT / "examples").rglob("*.y*ml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "stages" in data:
            found.append((str(path.relative_to(ROOT)), data))
    for index, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)):
        try:
            data = yaml.safe_load(block)
            load_spec(data)
        except (yaml.YAMLError, SpecError, TypeError):
            continue
        found.append((f"README.md block {index}", data))
    return found


@pytest.mark.parametrize(("where", "data"), _shipped_specs(), ids=[where for where, _ in _shipped_specs()])
def test_every_shipped_spec_loads_and_is_valid_against_the_schema(where: str, data: object) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    spec = load_spec(data)  # type: ignore[arg-type]
    validator = jsonschema.Draft202012Validator(json_schema())
    assert not list(validator.iter_errors(data)), where
    assert not list(validator.iter_errors(spec.to_dict())), where


def test_the_schema_refuses_what_the_loader_refuses_in_every_section() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema())
    base = {"name": "m", "stages": [{"traffic": "10%"}, {"traffic": "100%"}]}
    for bad in ({**base, "shadow": {"threads": 0}}, {**base, "analysis": {"interval": "soon"}},
                {**base, "gates": {"cost": {"max_ratio": "x"}}}, {**base, "routers": [{"ngnix": {}}]},
                {**base, "triggers": [{"metric": "error_rate", "above": "5s"}]}, {**base, "salt": ""}):
        assert not validator.is_valid(bad), bad
        with pytest.raises(SpecError):
            load_spec(bad)


def test_docs_spec_md_is_the_generated_reference() -> None:
    written = (ROOT / "docs" / "spec.md").read_text()
    assert written == markdown_reference(), "regenerate it: crossfade schema --markdown > docs/spec.md"


def test_the_reference_documents_every_field_of_every_section() -> None:
    reference = markdown_reference()
    for section in sections():
        assert section.__name__ in reference or section.__name__ == "Spec"
        for key in section.keys():
            assert f"| `{key}` |" in reference
        for f in fields(section):
            assert f.metadata["doc"], f"{section.__name__}.{f.name} has no documentation"


def test_schema_command_prints_the_reference_on_request() -> None:
    result = CliRunner().invoke(app, ["schema", "--markdown"])
    assert result.exit_code == 0
    assert result.output == markdown_reference()
