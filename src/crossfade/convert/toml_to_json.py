"""TOML to JSON: read with the standard library's tomllib, dates and times written as their TOML text, key
order kept; the round-trip check converts the JSON back (date strings become dates again) and compares."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from typing import Any

from crossfade.convert import Conversion, Loss
from crossfade.convert._values import as_date, differences, to_json_value
from crossfade.registry import ConfigProblem, ProviderConfigError


@dataclass(frozen=True, slots=True)
class TomlToJson:
    """Converts a TOML document to a JSON object (`indent` spaces, none for one line)."""

    indent: int | None = 2
    name: str = "toml_to_json"

    def convert(self, data: bytes, *, source: str | None = None) -> Conversion:
        """The JSON text, and anything the way back would not restore."""
        value = to_json_value(_load(data))
        output = (json.dumps(value, ensure_ascii=False, indent=self.indent) + "\n").encode()
        return Conversion(output, tuple(self.validate(data, output)))

    def validate(self, before: bytes, after: bytes, *, source: str | None = None) -> list[Loss]:
        """What reading the JSON `after` as TOML values (date strings as dates) does not give back of `before`."""
        try:
            back = json.loads(after)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return [Loss("$", f"the JSON output does not parse: {e}")]
        return list(differences(_load(before), _typed(back)))


def _typed(value: Any) -> Any:
    """JSON read back as TOML would hold it: the strings that spell a TOML date as dates."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, str):
        date = as_date(value)
        return value if date is None else date
    return value


def _load(data: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not TOML: {e}") from None


def create(config: dict[str, Any], path: str) -> TomlToJson:
    """The converter; setting: `indent` (spaces, default 2; 0 or null for one line)."""
    problems = [ConfigProblem(f"{path}.{k}", "unknown setting; toml_to_json takes: indent")
                for k in sorted(set(config) - {"indent"})]
    indent = config.get("indent", 2)
    if indent is not None and (not isinstance(indent, int) or isinstance(indent, bool) or indent < 0):
        problems.append(ConfigProblem(f"{path}.indent", f"must be a number of spaces, got {indent!r}"))
    if problems:
        raise ProviderConfigError(problems)
    return TomlToJson(indent=indent or None)
