"""JSON/structure similarity: the share of an answer's fields that agree with the other's.

Both answers are made plain trees (dicts, lists, leaves; pydantic models and dataclasses field by field),
the `ignore` paths are removed as shadow comparisons remove them, and every leaf either answer has is a
field: the score is the mean of the fields' agreement, 1 for equal leaves and 0 for different or missing
ones (or a text similarity for two strings, with `text_leaves`). List items are matched by position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from crossfade.compare import settings
from crossfade.shadow import MISSING, _drop, compile_path, plain


class Structure:
    """The mean agreement of the fields of two answers, the `ignore` paths left out."""

    __slots__ = ("ignore", "text_leaves", "tolerance", "_ignore", "_text")

    def __init__(self, ignore: tuple[str, ...] = (), text_leaves: bool = False, tolerance: float = 0.0) -> None:
        if not 0.0 <= tolerance < 1.0:
            raise ValueError(f"tolerance={tolerance!r}: a relative difference from 0 (exact) to below 1, like 0.01")
        self.ignore = ignore
        self.text_leaves = text_leaves
        self.tolerance = tolerance
        self._ignore = [compile_path(p) for p in ignore]  # a bad path raises here, where the comparator is made
        if text_leaves:
            from crossfade.compare.text import Text

            self._text: Any = Text()
        else:
            self._text = None

    def __call__(self, legacy: Any, candidate: Any) -> float:
        left, right = plain(legacy), plain(candidate)
        for steps in self._ignore:
            _drop(left, steps)
            _drop(right, steps)
        total, fields = self._walk(left, right)
        return 1.0 if fields == 0 else total / fields

    def _walk(self, a: Any, b: Any) -> tuple[float, int]:
        """(sum of agreement, number of fields) under two subtrees."""
        if isinstance(a, dict) and isinstance(b, dict):
            total, fields = 0.0, 0
            for key in [*a, *(k for k in b if k not in a)]:
                t, n = self._walk(a.get(key, MISSING), b.get(key, MISSING))
                total, fields = total + t, fields + n
            return total, fields
        if isinstance(a, list) and isinstance(b, list):
            total, fields = 0.0, 0
            for i in range(max(len(a), len(b))):
                t, n = self._walk(a[i] if i < len(a) else MISSING, b[i] if i < len(b) else MISSING)
                total, fields = total + t, fields + n
            return total, fields
        if a is MISSING and b is MISSING:  # an ignored list item, on both sides alike
            return 0.0, 0
        leaves = max(_leaves(a), _leaves(b))  # a subtree against a leaf or nothing: all its fields disagree
        if leaves > 1 or isinstance(a, dict | list) or isinstance(b, dict | list):
            return 0.0, leaves
        return self._leaf(a, b), 1

    def _leaf(self, a: Any, b: Any) -> float:
        if a is MISSING or b is MISSING:
            return 0.0
        if type(a) is not bool and type(b) is not bool and isinstance(a, int | float) and isinstance(b, int | float):
            if a == b or (math.isnan(a) and math.isnan(b)):
                return 1.0
            return 1.0 if abs(a - b) <= self.tolerance * max(abs(a), abs(b)) else 0.0
        if self._text is not None and isinstance(a, str) and isinstance(b, str):
            return self._text(a, b)
        try:
            return 1.0 if a == b else 0.0
        except Exception:  # a leaf whose __eq__ raises: different unless it is the very same object
            return 1.0 if a is b else 0.0

    def __repr__(self) -> str:
        return f"compare.structure(ignore={list(self.ignore)!r}, text_leaves={self.text_leaves}, " \
               f"tolerance={self.tolerance})"


def _leaves(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(_leaves(v) for v in tree.values())
    if isinstance(tree, list):
        return sum(_leaves(v) for v in tree)
    return 0 if tree is MISSING else 1


def structure(*, ignore: Sequence[str] = (), text_leaves: bool = False, tolerance: float = 0.0) -> Structure:
    """The share of fields whose values agree, over every field either answer has (`ignore` paths left out).

    `text_leaves` grades two text values by `text` similarity instead of 0 or 1; `tolerance` lets numbers
    agree within that relative difference.
    """
    return Structure(tuple(ignore), text_leaves, tolerance)


def create(config: Mapping[str, Any], path: str) -> Structure:
    """The comparator a spec's `compare: {structure: {ignore: [$.id], text_leaves: true}}` names."""
    from crossfade.registry import ConfigProblem, ProviderConfigError

    options = settings(config, path, {"ignore": list, "text_leaves": bool, "tolerance": (int, float)})
    try:
        return Structure(tuple(map(str, options.get("ignore", ()))), options.get("text_leaves", False),
                         float(options.get("tolerance", 0.0)))
    except ValueError as exc:
        raise ProviderConfigError([ConfigProblem(path, str(exc))]) from None
