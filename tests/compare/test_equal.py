"""Equality field by field as a score."""

from __future__ import annotations

from crossfade.compare import equal


def test_equal_answers_score_one_and_any_difference_zero():
    assert equal()({"a": [1, 2]}, {"a": [1, 2]}) == 1.0
    assert equal()({"a": [1, 2]}, {"a": [1, 3]}) == 0.0
    assert equal(ignore=["$.id"])({"id": 1, "a": 2}, {"id": 2, "a": 2}) == 1.0
