"""JSON to TOML with tomlkit: nested objects become tables, arrays of objects arrays of tables, date strings
TOML dates; nulls (which TOML lacks) are dropped and reported; keys optionally become snake_case.

Order: tomlkit keeps every table's keys in the order given, except that TOML writes a table's plain values
before its sub-tables; such a reordering is reported (kind `order`), no value is lost by it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.items import AoT, Array, Table

from crossfade.convert import NOTE, Conversion, Loss
from crossfade.convert._values import INT_MAX, INT_MIN, as_date, differences, snake_case, to_json_value
from crossfade.registry import ConfigProblem, ProviderConfigError


@dataclass(frozen=True, slots=True)
class JsonToToml:
    """Converts a JSON object to a TOML document; `snake_case` renames camelCase keys, `dates` types
    date-like strings as TOML dates."""

    snake_case: bool = False
    dates: bool = True
    name: str = "json_to_toml"

    def convert(self, data: bytes, *, source: str | None = None) -> Conversion:
        """The TOML document and what it could not carry (nulls, out-of-range integers, renamed keys)."""
        value = _load(data)
        losses: list[Loss] = []
        doc = tomlkit.document()
        for key, item in self._entries(value, "$", losses):
            doc.add(key, item)
        output = tomlkit.dumps(doc).encode()
        losses.extend(self._round_trip(value, output))
        return Conversion(output, tuple(_unique(losses)))

    def validate(self, before: bytes, after: bytes, *, source: str | None = None) -> list[Loss]:
        """What the TOML `after` lacks of the JSON `before` (read back with tomllib, compared value by value)."""
        losses: list[Loss] = []
        self._entries(_load(before), "$", losses)  # the nulls and integers TOML cannot hold
        return _unique(losses + self._round_trip(_load(before), after))

    def _round_trip(self, value: Mapping[str, Any], output: bytes) -> list[Loss]:
        try:
            back = to_json_value(tomllib.loads(output.decode()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            return [Loss("$", f"the TOML output does not parse: {e}")]
        expected = self._expected(value)
        return list(differences(expected, back))

    def _expected(self, value: Any) -> Any:
        """What the round trip should give back: the source without nulls, keys renamed as asked."""
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for k, v in value.items():
                if v is None or _too_big(v):
                    continue
                out.setdefault(snake_case(k) if self.snake_case else k, self._expected(v))
            return out
        if isinstance(value, list):
            return [self._expected(v) for v in value if v is not None and not _too_big(v)]
        return value

    def _entries(self, value: Mapping[str, Any], path: str, losses: list[Loss]) -> list[tuple[str, Any]]:
        entries: list[tuple[str, Any]] = []
        seen: dict[str, str] = {}
        for key, item in value.items():
            where = f"{path}.{key}"
            name = snake_case(key) if self.snake_case else key
            if name != key:
                losses.append(Loss(where, f"renamed to {name}", NOTE))
            if name in seen:
                losses.append(Loss(where, f"renamed to {name}, which {seen[name]} is already; dropped"))
                continue
            converted = self._item(item, where, losses)
            if converted is not None:
                seen[name] = where
                entries.append((name, converted))
        return entries

    def _item(self, value: Any, path: str, losses: list[Loss]) -> Any:
        if value is None:
            losses.append(Loss(path, "null has no TOML equivalent; dropped"))
            return None
        if isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            if _too_big(value):
                losses.append(Loss(path, f"{value} does not fit TOML's 64-bit integers; dropped"))
                return None
            return value
        if isinstance(value, str):
            date = as_date(value) if self.dates else None
            return value if date is None else date
        if isinstance(value, Mapping):
            table = tomlkit.table()
            for key, item in self._entries(value, path, losses):
                table.add(key, item)
            return table
        items = [(i, self._item(v, f"{path}[{i}]", losses)) for i, v in enumerate(value)]
        kept = [v for _, v in items if v is not None]
        if kept and all(isinstance(v, Table) for v in kept):
            return AoT(kept)
        array: Array = tomlkit.array()
        for item in kept:
            array.append(_inline(item))
        return array


def _inline(value: Any) -> Any:
    """A table inside a mixed array must be written inline."""
    if isinstance(value, Table):
        inline = tomlkit.inline_table()
        for key, item in value.items():
            inline.append(key, _inline(item))
        return inline
    if isinstance(value, AoT):
        array = tomlkit.array()
        for table in value:
            array.append(_inline(table))
        return array
    return value


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX


def _unique(losses: list[Loss]) -> list[Loss]:
    return list(dict.fromkeys(losses))


def _load(data: bytes) -> Mapping[str, Any]:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"a TOML document is a table: the JSON must be an object, not {type(value).__name__}")
    return value


def create(config: dict[str, Any], path: str) -> JsonToToml:
    """The converter; settings: `snake_case` (default false), `dates` (default true)."""
    problems = [ConfigProblem(f"{path}.{k}", "unknown setting; json_to_toml takes: snake_case, dates")
                for k in sorted(set(config) - {"snake_case", "dates"})]
    for name in ("snake_case", "dates"):
        if name in config and not isinstance(config[name], bool):
            problems.append(ConfigProblem(f"{path}.{name}", f"must be true or false, got {config[name]!r}"))
    if problems:
        raise ProviderConfigError(problems)
    return JsonToToml(snake_case=config.get("snake_case", False), dates=config.get("dates", True))

