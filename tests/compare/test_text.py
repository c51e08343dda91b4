"""Normalised text similarity."""

from __future__ import annotations

import difflib

import pytest

from crossfade.compare import text


def test_case_and_whitespace_do_not_count_and_edits_do():
    similar = text()
    assert similar("Paris is the capital of France.", "  paris IS the\ncapital of france.") == 1.0
    assert similar("The answer is 42.", "The answer is 41.") == pytest.approx(1 - 2 / 34)
    assert similar("yes", "no") < 0.5
    assert text(ignore_case=False)("Paris", "paris") < 1.0
    assert text(ignore_punctuation=True)("Paris, France!", "Paris France") == 1.0
    assert text(any_order=True)("red green blue", "blue red green") == 1.0


def test_the_score_is_difflibs_ratio_without_its_junk_heuristic():
    a = "The quick brown fox jumps over the lazy dog. " * 3
    b = "A quick brown cat jumps over the lazy dog! " * 3
    assert text(ignore_case=False, ignore_whitespace=False)(a, b) == pytest.approx(
        difflib.SequenceMatcher(None, a, b, autojunk=False).ratio())


def test_answers_that_are_not_text_are_compared_as_canonical_json():
    assert text()({"b": 1, "a": 2}, {"a": 2, "b": 1}) == 1.0
    assert 0 < text()({"a": "Paris"}, {"a": "Lyon"}) < 1
