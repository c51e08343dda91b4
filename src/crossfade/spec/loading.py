"""Loading a spec: a file path, YAML text or a mapping in, a validated Spec or every problem with its path out."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from crossfade.spec.errors import Problem, SpecError
from crossfade.spec.models import Spec
from crossfade.spec.units import MAX_DEPTH, MAX_VALUES, kind, show

__all__ = ["load_spec", "read_document"]

_FILE_SUFFIXES: Final = (".yaml", ".yml", ".json")


def load_spec(source: str | os.PathLike[str] | Mapping[str, Any], *, source_name: str | None = None) -> Spec:
    """A validated Spec from a file path, YAML text or a mapping; SpecError listing every problem otherwise.

    A str without a newline that names an existing file, or ends in .yaml/.yml/.json, is read as a file;
    any other str is YAML text. ``source_name`` replaces the file name, ``<text>`` or ``<dict>`` in messages.
    """
    if isinstance(source, Mapping):
        label = source_name or "<dict>"
        data: object = source
    elif isinstance(source, os.PathLike) or (isinstance(source, str) and _names_a_file(source)):
        label = source_name or os.fspath(source)
        data = _read_file(Path(source), label)
    elif isinstance(source, str):
        label = source_name or "<text>"
        data = _parse_yaml(source, label)
    else:
        raise SpecError(
            source_name or "<spec>",
            [Problem("", f"expected a file path, YAML text or a mapping, got {type(source).__name__}")],
        )
    plain = _plain_problems(data)
    if plain:
        raise SpecError(label, plain)
    if data is None:
        raise SpecError(label, [Problem("", "the spec is empty; write at least {name: checkout-pricing, "
                                            "stages: [{traffic: 100%}]}")])
    from pydantic import ValidationError

    from crossfade.spec.validation import adapter, problems_of

    try:
        return adapter().validate_python(data, context={})
    except ValidationError as exc:
        raise SpecError(label, problems_of(exc)) from None
    except (ArithmeticError, RecursionError, TypeError, ValueError) as exc:
        # A spec is input from anyone who may apply one: whatever the checks missed is still its problem,
        # said in one line, never an exception of another kind.
        raise SpecError(label, [Problem("", f"cannot be read: {exc}")]) from None


def _plain_problems(data: object) -> list[Problem]:
    """What keeps `data` from being plain JSON-like data of bounded size and depth: types JSON cannot hold
    (dates, sets, bytes, keys that are not text), text that is not UTF-8 or holds NUL, numbers out of range,
    more than MAX_VALUES values with aliases expanded, or nesting deeper than MAX_DEPTH. Stops early."""
    problems: list[Problem] = []
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    seen = 0
    while stack and len(problems) < 20:
        value, path, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return [Problem("", f"the document holds more than {MAX_VALUES:,} values (counting what YAML aliases "
                                "repeat); a spec is far smaller")]
        if depth > MAX_DEPTH:
            return [Problem(path, f"nested too deeply (more than {MAX_DEPTH} levels; a spec is a few levels deep)")]
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    problems.append(Problem(path, f"keys must be text, found {kind(key)} {show(key)}"))
                    continue
                stack.append((key, path, depth + 1))
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(Problem(path, "text must be valid Unicode (it holds a lone surrogate)"))
                continue
            if "\x00" in value:
                problems.append(Problem(path, "text must not hold a NUL character"))
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) >= 2**63:
                problems.append(Problem(path, f"{value} is too large a number"))
        elif isinstance(value, float):
            if not math.isfinite(value):
                problems.append(Problem(path, f"{show(value)} is not a finite number"))
        else:
            problems.append(Problem(path, f"{kind(value)} cannot be stored (quote it to make it text)"))
    return problems


def _names_a_file(text: str) -> bool:
    if "\n" in text or not text.strip():
        return False
    if text.lower().endswith(_FILE_SUFFIXES):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        # One-line YAML such as "{name: x, ...}" can be too long or odd to be a path at all.
        return False


def _read_file(path: Path, label: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(label, [Problem("", "no such file")]) from None
    except UnicodeDecodeError:
        raise SpecError(label, [Problem("", "is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError(label, [Problem("", f"cannot be read: {exc.strerror or exc}")]) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(label, [Problem(f"line {exc.lineno}, column {exc.colno}", exc.msg)]) from None
        except RecursionError:
            raise SpecError(label, [Problem("", "nested too deeply (a spec is a few levels deep)")]) from None
    return _parse_yaml(text, label)


def read_document(path: Path, label: str) -> object:
    """The parsed contents of a YAML or JSON file; SpecError (under `label`) when it cannot be read."""
    return _read_file(path, label)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML silently resolves to the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, label: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            message = f"{exc.problem} ({exc.context})"
        raise SpecError(label, [Problem(where, f"invalid YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError(label, [Problem("", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        # PyYAML parses nesting by recursion: a document nested hundreds of levels deep exhausts the stack.
        raise SpecError(label, [Problem("", "invalid YAML: nested too deeply (a spec is a few levels deep)")]) from None
