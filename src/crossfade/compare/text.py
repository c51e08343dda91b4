"""Normalised text similarity: how much of one answer's text the other keeps, by edit distance.

The score is rapidfuzz's normalised Indel similarity, 1 - (insertions + deletions) / (len(a) + len(b)):
the same quantity as difflib's `SequenceMatcher.ratio()` without difflib's junk heuristic (which skews
texts past 200 characters) and in linear memory and C++ speed, so LLM-sized answers cost microseconds
on the shadow workers rather than milliseconds.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from crossfade.compare import settings

_SPACE = re.compile(r"\s+")


class Text:
    """Similarity of two answers as text, after normalising case, whitespace and optionally punctuation."""

    __slots__ = ("ignore_case", "ignore_whitespace", "ignore_punctuation", "any_order", "_ratio")

    def __init__(self, ignore_case: bool = True, ignore_whitespace: bool = True, ignore_punctuation: bool = False,
                 any_order: bool = False) -> None:
        try:
            from rapidfuzz import fuzz
        except ImportError as exc:  # a core dependency; only a broken install lacks it
            raise ImportError("crossfade.compare.text needs rapidfuzz: pip install rapidfuzz") from exc
        self.ignore_case = ignore_case
        self.ignore_whitespace = ignore_whitespace
        self.ignore_punctuation = ignore_punctuation
        self.any_order = any_order
        self._ratio = fuzz.token_sort_ratio if any_order else fuzz.ratio

    def normalised(self, answer: Any) -> str:
        """The text an answer is compared as: strings as they are, anything else as canonical JSON."""
        if isinstance(answer, bytes):
            text = answer.decode("utf-8", "replace")
        elif isinstance(answer, str):
            text = answer
        else:
            text = json.dumps(answer, sort_keys=True, default=str, ensure_ascii=False)
        text = unicodedata.normalize("NFKC", text)
        if self.ignore_case:
            text = text.casefold()
        if self.ignore_punctuation:
            text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
        if self.ignore_whitespace:
            text = _SPACE.sub(" ", text).strip()
        return text

    def __call__(self, legacy: Any, candidate: Any) -> float:
        a, b = self.normalised(legacy), self.normalised(candidate)
        if a == b:
            return 1.0
        return self._ratio(a, b) / 100.0

    def __repr__(self) -> str:
        return (f"compare.text(ignore_case={self.ignore_case}, ignore_whitespace={self.ignore_whitespace}, "
                f"ignore_punctuation={self.ignore_punctuation}, any_order={self.any_order})")


def text(*, ignore_case: bool = True, ignore_whitespace: bool = True, ignore_punctuation: bool = False,
         any_order: bool = False) -> Text:
    """Normalised text similarity: 1 - edit distance / length, after normalising case and whitespace (and
    punctuation, with `ignore_punctuation`); `any_order` compares the sorted words instead."""
    return Text(ignore_case, ignore_whitespace, ignore_punctuation, any_order)


def create(config: Mapping[str, Any], path: str) -> Text:
    """The comparator a spec's `compare: text` (or `{text: {ignore_punctuation: true}}`) names."""
    options = settings(config, path, {"ignore_case": bool, "ignore_whitespace": bool, "ignore_punctuation": bool,
                                      "any_order": bool})
    return Text(**options)
