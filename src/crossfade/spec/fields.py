"""How a spec's sections and lists are declared: a field with its documentation, the section base that
reads a mapping, and the list marker with its bounds and rules. Nothing here imports pydantic."""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any, ClassVar, Final

from crossfade.spec.units import Check

__all__ = ["BAD", "Items", "Rule", "Section", "checks", "key_of", "setting"]

BAD: Final = object()
"""A field value its converter refused: the rules that read it skip it, and no spec is returned."""

Rule = tuple[tuple[str | int, ...], str]
"""A problem a rule found: where (relative to the section or list checked) and what."""


def setting(doc: str, default: Any = MISSING, *, factory: Callable[[], Any] | None = None,
            example: str | Callable[[Mapping[str, Any]], str | None] | None = None, later: bool = False,
            shown: str | None = None, mapping: bool = False, hashed: bool = True) -> Any:
    """A field with its documentation. ``example`` is what a "required" message suggests (a function of the
    section's other keys, or None to stay quiet); ``later`` marks a setting added after the first release,
    left out of ``to_dict()`` at its default so the digest of a spec written before it does not change;
    ``shown`` is the default as the docs say it, when it is not a plain value; ``mapping`` writes a tuple of
    named sections as a mapping of their names to their settings; ``hashed=False`` keeps a setting that may be
    a mapping out of the section's hash."""
    metadata = {"doc": doc, "example": example, "later": later, "shown": shown, "mapping": mapping}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata, hash=None if hashed else False)
    return field(default=default, metadata=metadata, hash=None if hashed else False)


class Section:
    """A mapping in a spec: unknown keys are reported (with a guess), null means left out, and ``rules``
    report what one field cannot say alone."""

    __slots__ = ()
    passed: ClassVar[tuple[str, ...]] = ()
    """Fields the enclosing section fills in (a custom metric's name is its key), not written by users."""
    written: ClassVar[dict[str, tuple[str, str]]] = {}
    """Keys written in place of fields (what they take, what they mean), for the docs."""
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid", "alias_generator": lambda name: name.rstrip("_")}
    example: ClassVar[str] = "{...}"
    """How the section is written, for "expected a mapping, e.g. ..."."""

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keys a user may write, in the order messages list them: the fields' keys, unless the written
        form differs from the model (a custom metric's ``rate: a / b`` is its numerator and denominator)."""
        return tuple(key_of(f) for f in fields(cls) if f.name not in cls.passed)  # type: ignore[arg-type]

    @classmethod
    def rules(cls, data: Mapping[str, Any], context: Mapping[str, Any]) -> list[Rule]:
        """Problems across the fields of ``data`` (the section as written, null values dropped). ``context``
        holds what the spec's other sections declared (the custom metrics a trigger may watch)."""
        return []

    @classmethod
    def prepare(cls, data: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` (null values and unknown keys dropped) in the model's fields, with the defaults that depend
        on other fields."""
        return data

    @classmethod
    def schema_extra(cls, schema: dict[str, Any]) -> None:
        """Add to the section's JSON Schema what its fields' types cannot say."""

    @classmethod
    def read(cls, data: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Each field converted from ``data`` (its default when absent, BAD when refused), for the rules."""
        values: dict[str, Any] = {}
        for name, key, check, default in _readers(cls):
            if key not in data:
                values[name] = default
            elif check is None:
                values[name] = data[key]
            else:
                try:
                    values[name] = (check.convert(data[key], data, context or {}) if check.with_data
                                    else check.convert(data[key]))
                except ValueError:
                    values[name] = BAD
        return values

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from crossfade.spec.validation import section_schema

        return section_schema(cls, handler(source))

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        from crossfade.spec.validation import section_json_schema

        return section_json_schema(cls, core_schema, handler)


def key_of(f: Field[Any]) -> str:
    """The key a field is written as: its name, less the underscore that keeps ``for_`` off a keyword."""
    return f.name.rstrip("_")


@functools.cache
def _readers(cls: type) -> tuple[tuple[str, str, Check | None, Any], ...]:
    """Per field of ``cls``: its name, its key, its converter and its default (BAD when it has none)."""
    return tuple((f.name, key_of(f), checks(cls).get(f.name), BAD if f.default is MISSING else f.default)
                 for f in fields(cls))  # type: ignore[arg-type]


@functools.cache
def checks(cls: type) -> dict[str, Check]:
    """The converter of each field of ``cls`` that has one, from its annotation."""
    found: dict[str, Check] = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, Check):
                found[name] = meta
    return found


class Items:
    """A list in a spec: its example, its most entries, and rules across its entries."""

    __slots__ = ("example", "most", "noun", "empty", "unique", "prepare", "rules")

    def __init__(self, example: str, most: int, noun: str, *, empty: str | None = None, unique: bool = False,
                 prepare: Callable[[list[Any]], list[Any]] | None = None,
                 rules: Callable[[list[Any]], list[Rule]] | None = None) -> None:
        self.example = example
        self.most = most
        self.noun = noun
        self.empty = empty
        self.unique = unique
        self.prepare = prepare
        self.rules = rules

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from crossfade.spec.validation import items_schema

        return items_schema(self, handler(source))

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        if self.empty:
            schema["minItems"] = 1
        schema["maxItems"] = self.most
        return schema
