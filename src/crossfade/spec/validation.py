"""Validation of a spec by pydantic, built from the models' declarations, with the problems in the user's words.

Imported on the first ``load_spec`` or ``json_schema``, never by ``import crossfade``. Each section and list
reports all its problems at once: unknown keys (with a guess), the problems pydantic found in its fields
(converted to one message each), and its rules across fields; a problem carries its path as pydantic's
location, or a full path when a provider checked its own settings.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError, core_schema

from crossfade.spec.errors import Problem, Problems, Quiet
from crossfade.spec.fields import Items, Rule, Section, key_of
from crossfade.spec.metrics import EXAMPLE as METRIC_EXAMPLE
from crossfade.spec.metrics import CustomMetric, metric_names_problem
from crossfade.spec.models import Spec
from crossfade.spec.units import MAX_METRICS, Check, kind

__all__ = [
    "adapter", "check_schema", "declared_schema", "items_schema", "problems_of", "section_schema",
    "section_json_schema",
]

_ERROR = "spec"


@functools.cache
def adapter() -> TypeAdapter[Spec]:
    """The validator and JSON Schema of a whole spec, built once."""
    return TypeAdapter(Spec)


def problems_of(error: ValidationError) -> list[Problem]:
    """The problems of a failed validation, each at its path (``stages[2].traffic``)."""
    return [problem for line in error.errors(include_url=False) if (problem := _problem(line)) is not None]


def _problem(line: Any) -> Problem | None:
    message = _message(line)
    if message is None:
        return None
    ctx = line.get("ctx") or {}
    return Problem(ctx.get("path") or _path(line["loc"]), message)


def _path(loc: tuple[str | int, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _message(line: Any) -> str | None:
    """One error of pydantic's in a user's words; None for one that another problem already explains."""
    ctx = line.get("ctx") or {}
    if line["type"] == _ERROR:
        return str(ctx["message"])
    if line["type"] == "value_error":
        error = ctx.get("error")
        return None if isinstance(error, Quiet) else str(error)
    return str(line["msg"])


def _error(loc: tuple[str | int, ...], message: str, path: str | None = None) -> dict[str, Any]:
    ctx = {"message": message} if path is None else {"message": message, "path": path}
    return {"type": PydanticCustomError(_ERROR, "{message}", ctx), "loc": loc, "input": None}


def _fail(title: str, errors: list[dict[str, Any]]) -> ValidationError:
    return ValidationError.from_exception_data(title, errors)  # type: ignore[arg-type]


def _kept(line: Any) -> dict[str, Any] | None:
    """An inner error as one of ours (message and path fixed), or None if it is not worth saying."""
    message = _message(line)
    if message is None:
        return None
    return _error(line["loc"], message, (line.get("ctx") or {}).get("path"))


def check_schema(check: Check) -> Any:
    """The core schema of a value type: its converter, with a provider's several problems kept at their paths."""

    def convert(value: Any, *more: Any) -> Any:
        try:
            return check.convert(value, *more)
        except Problems as exc:
            raise _fail("value", [_error((), p.message, p.path) for p in exc.problems]) from None

    if check.with_data:
        return core_schema.with_info_plain_validator_function(
            lambda value, info: convert(value, info.data, _context(info))
        )
    return core_schema.no_info_plain_validator_function(convert)


def _context(info: Any) -> dict[str, Any]:
    """What the sections of one spec tell each other while it is validated (``load_spec`` passes a dict)."""
    return info.context if isinstance(info.context, dict) else {}


def section_schema(cls: type[Section], inner: Any) -> Any:
    """The core schema of a section: ``inner`` (pydantic's dataclass schema) wrapped in the spec's reading."""
    keys = list(cls.keys())
    examples = {key_of(f): f.metadata.get("example") for f in fields(cls)}  # type: ignore[arg-type]

    def validate(value: Any, handler: Any, info: Any) -> Any:
        context = _context(info)
        if not isinstance(value, Mapping):
            raise PydanticCustomError(_ERROR, "{message}",
                                      {"message": f"expected a mapping, e.g. {cls.example}; got {kind(value)}"})
        errors: list[dict[str, Any]] = []
        # A key taken for a misspelling: "did you mean 'max'?" says it, so "max: required" would be noise.
        suggested: set[str] = set()
        for key in value:
            if key not in keys and key not in cls.passed:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                errors.append(_error((key,), f"unknown key; {hint}valid keys: {', '.join(keys)}"))
                suggested.update(close)
        written = {key: item for key, item in value.items()
                   if (key in keys or key in cls.passed) and item is not None}
        data = cls.prepare(written, context)
        result = None
        try:
            result = handler(data)
        except ValidationError as exc:
            for line in exc.errors(include_url=False):
                if line["type"] in ("missing", "missing_argument") and len(line["loc"]) == 1:
                    key = str(line["loc"][0])
                    example = examples.get(key)
                    if callable(example):
                        example = example(written, context)
                        if example is None:
                            continue
                    if key not in suggested:
                        errors.append(_error((key,), f"required{f', e.g. {key}: {example}' if example else ''}"))
                elif (kept := _kept(line)) is not None:
                    errors.append(kept)
        errors += [_error(loc, message) for loc, message in cls.rules(written, context)]
        if errors:
            raise _fail(cls.__name__, errors)
        return result

    return core_schema.with_info_wrap_validator_function(validate, inner)


def items_schema(items: Items, inner: Any) -> Any:
    """The core schema of a list: ``inner`` (pydantic's tuple schema) with the list's bounds and rules."""

    def validate(value: Any, handler: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _fail("list", [_error((), f"expected a list, e.g. {items.example}; got {kind(value)}")])
        if not value and items.empty:
            raise _fail("list", [_error((), items.empty)])
        if len(value) > items.most:
            raise _fail("list", [_error((), f"{len(value)} {items.noun}; at most {items.most}")])
        raw = list(value)
        errors: list[dict[str, Any]] = []
        result = None
        try:
            result = handler(items.prepare(raw) if items.prepare else raw)
        except ValidationError as exc:
            errors += [kept for line in exc.errors(include_url=False) if (kept := _kept(line)) is not None]
        rules: list[Rule] = items.rules(raw) if items.rules else []
        errors += [_error(loc, message) for loc, message in rules]
        if errors:
            # Each entry's own problems, then what is wrong with it among the others, entry by entry.
            errors.sort(key=lambda error: error["loc"][0] if error["loc"] else -1)
            raise _fail("list", errors)
        return tuple(dict.fromkeys(result)) if items.unique else result

    return core_schema.no_info_wrap_validator_function(validate, inner)


def section_json_schema(cls: type[Section], core: Any, handler: Any) -> Any:
    """A section's JSON Schema: pydantic's, with the documentation of every field and no generated titles."""
    schema = handler(core)
    target = handler.resolve_ref_schema(schema)
    target.pop("title", None)
    target["description"] = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
    for f in fields(cls):  # type: ignore[arg-type]
        prop = target["properties"][key_of(f)]
        prop.pop("title", None)
        prop["description"] = f.metadata["doc"]
        if f.metadata.get("shown") or prop.get("default", "") is None:
            prop.pop("default", None)  # derived (the salt is the name) or unset: nothing to suggest
    cls.schema_extra(target)
    return schema


def declared_schema(inner: Any) -> Any:
    """The core schema of `metrics:`: a mapping of names to settings, each a CustomMetric (``inner`` validates a
    tuple of them). The triggers are told every name written and the kind of each read without a problem."""

    def validate(value: Any, handler: Any, info: Any) -> Any:
        context = _context(info)
        context["named"] = [str(name) for name in value] if isinstance(value, Mapping) else []
        if not isinstance(value, Mapping):
            raise _fail("metrics", [_error((), "expected a mapping of metric names to settings, e.g. "
                                               f"{{delivery: {METRIC_EXAMPLE}}}; got {kind(value)}")])
        if len(value) > MAX_METRICS:
            raise _fail("metrics", [_error((), f"{len(value)} metrics; at most {MAX_METRICS}")])
        errors: list[dict[str, Any]] = []
        metrics, declared = [], {}
        for name, settings in value.items():
            problem = metric_names_problem(name)
            if problem:
                errors.append(_error((name,), problem))
                continue
            if settings is None or isinstance(settings, Mapping):
                own = [key for key in (settings or {}) if key in CustomMetric.passed]
                if own:
                    errors += [_error((name, key), f"unknown key; valid keys: {', '.join(CustomMetric.keys())}")
                               for key in own]
                    continue
                settings = {**(settings or {}), "name": name}
            try:
                (metric,) = handler([settings])
            except ValidationError as exc:
                errors += [{**kept, "loc": (name, *kept["loc"][1:])}
                           for line in exc.errors(include_url=False) if (kept := _kept(line)) is not None]
                continue
            metrics.append(metric)
            declared[name] = metric.kind
        context["declared"] = declared
        if errors:
            raise _fail("metrics", errors)
        return tuple(metrics)

    return core_schema.with_info_wrap_validator_function(validate, inner)
