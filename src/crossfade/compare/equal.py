"""Equality field by field: the shadow comparison crossfade makes by default, as a score of 1 or 0."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crossfade.compare import settings
from crossfade.shadow import Comparator, Options, Outcome


class Equal:
    """1.0 when two answers are equal field by field (the `ignore` paths left out), else 0.0."""

    __slots__ = ("ignore", "_comparator")

    def __init__(self, ignore: tuple[str, ...] = ()) -> None:
        self.ignore = ignore
        self._comparator = Comparator(Options(ignore=ignore))  # the same comparison shadow runs make

    def __call__(self, legacy: Any, candidate: Any) -> float:
        return 0.0 if self._comparator.differences(Outcome(legacy), Outcome(candidate)) else 1.0

    def __repr__(self) -> str:
        return f"compare.equal(ignore={list(self.ignore)!r})"


def equal(*, ignore: Sequence[str] = ()) -> Equal:
    """1.0 when the answers are equal field by field with the `ignore` paths left out, else 0.0."""
    return Equal(tuple(ignore))


def create(config: Mapping[str, Any], path: str) -> Equal:
    """The comparator a spec's `compare: {equal: {ignore: [...]}}` names."""
    options = settings(config, path, {"ignore": list})
    return Equal(tuple(map(str, options.get("ignore", ()))))
