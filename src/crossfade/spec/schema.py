"""The spec format as a JSON Schema (for editors) and as a Markdown reference (for people), both derived
from the models' declarations."""

from __future__ import annotations

import copy
import json
import typing
from dataclasses import MISSING, fields
from typing import Any

from crossfade.spec.fields import Items, Section, key_of
from crossfade.spec.metrics import Declared
from crossfade.spec.models import Gates, Spec, plain, sections
from crossfade.spec.units import UNITS, Check, format_duration, format_percent

__all__ = ["json_schema", "markdown_reference"]


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the spec format, for editors to complete and check spec files."""
    from crossfade.spec.validation import adapter

    generated = adapter().json_schema(ref_template="#/$defs/{model}")
    models = generated.pop("$defs", {})
    body = _resolved(generated, models)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://crossfade.dev/schemas/spec.json",
        "title": "crossfade migration spec",
        **body,
        "description": "Moves live traffic from a legacy implementation to a candidate in stages, with gates "
        "and automatic rollback.",
        "$defs": copy.deepcopy(UNITS),
    }


def _resolved(node: Any, models: dict[str, Any]) -> Any:
    """``node`` with each model inlined where it is used and each unit a reference to its definition."""
    if isinstance(node, list):
        return [_resolved(item, models) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        rest = {key: value for key, value in node.items() if key != "$ref"}
        return {**_resolved(models[node["$ref"].rsplit("/", 1)[-1]], models), **_resolved(rest, models)}
    if "unit" in node and isinstance(node["unit"], str):
        rest = {key: value for key, value in node.items() if key != "unit"}
        return {"$ref": f"#/$defs/{node['unit']}", **_resolved(rest, models)}
    resolved = {key: _resolved(value, models) for key, value in node.items()}
    if "anyOf" in resolved:
        # A section that may be left out is written without a null: null means left out anyway.
        options = [option for option in resolved["anyOf"] if option != {"type": "null"}]
        if len(options) == 1:
            resolved = {**options[0], **{k: v for k, v in resolved.items() if k not in ("anyOf", "default")}}
    return resolved


def markdown_reference() -> str:
    """Every field of the spec, section by section: its key, what it takes, its default and what it does."""
    lines = [
        "# The migration spec",
        "",
        "Generated from the spec's models by `crossfade schema --markdown`; do not edit by hand.",
        "Percentages may be written `10%` or as fractions (`0.1`); durations as `250ms`, `30s`, `5m`, `1h30m`",
        "or `1d`, or a number of seconds.",
    ]
    for section in sections(Spec):
        title = "The spec" if section is Spec else f"`{section.__name__}`"
        lines += ["", f"## {title}", "", " ".join((section.__doc__ or "").split("\n\n")[0].split()), "",
                  f"Written as `{section.example}`.", "",
                  "| key | takes | default | meaning |", "| --- | --- | --- | --- |"]
        hints = typing.get_type_hints(section, include_extras=True)
        by_key = {key_of(f): f for f in fields(section)}  # type: ignore[arg-type]
        for key in section.keys():
            if key in section.written:
                takes, doc = section.written[key]
                lines.append(f"| `{key}` | {_cell(takes)} | - | {_cell(doc)} |")
                continue
            f = by_key[key]
            takes = _takes(hints[f.name])
            lines.append(f"| `{key}` | {takes} | {_default(f, hints[f.name])} | {_cell(f.metadata['doc'])} |")
    return "\n".join(lines) + "\n"


def _takes(hint: Any) -> str:
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, Check):
            return _cell(meta.label)
        if isinstance(meta, Declared):
            return "mapping of names to `CustomMetric`"
        if isinstance(meta, Items):
            inner = typing.get_args(typing.get_args(hint)[0])[0]
            return f"list of {_takes(inner)}"
    for arg in typing.get_args(hint) or (hint,):
        if isinstance(arg, type) and issubclass(arg, Section):
            return f"`{arg.__name__}`"
    return "any"


def _default(f: Any, hint: Any) -> str:
    if f.metadata.get("shown"):
        return str(f.metadata["shown"])
    if f.default is MISSING and f.default_factory is MISSING:
        return "required"
    value = f.default_factory() if f.default_factory is not MISSING else f.default
    if value is None or value == () or value == "":
        return "-"
    if isinstance(value, Gates):
        return ", ".join(f"`{key}: {json.dumps(gate)}`" for key, gate in plain(value).items())
    if isinstance(value, Section):
        return f"see `{type(value).__name__}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    unit = next((meta.schema.get("unit") for meta in getattr(hint, "__metadata__", ())
                 if isinstance(meta, Check) and isinstance(meta.schema, dict)), None)
    if unit == "duration":
        return f"`{format_duration(value)}`"
    if unit == "percent":
        return f"`{format_percent(value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")

