"""JSON/structure similarity, field by field."""

from __future__ import annotations

import dataclasses

import pytest

from crossfade.compare import structure


def test_the_score_is_the_share_of_fields_that_agree():
    score = structure()
    assert score({"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 1, "b": 2, "c": 3, "d": 5}) == 0.75
    assert score({"a": 1}, {"a": 1, "b": 2}) == 0.5  # a field one answer lacks disagrees
    assert score({"items": [1, 2, 3]}, {"items": [1, 2]}) == pytest.approx(2 / 3)
    assert score({}, {}) == 1.0
    assert score({"a": {"x": 1, "y": 2}}, {"a": "flat"}) == 0.0  # a subtree against a leaf: both fields differ


def test_ignore_paths_leave_fields_out_as_shadow_comparisons_do():
    score = structure(ignore=["$.id", "$.items[*].etag"])
    old = {"id": "u1", "items": [{"sku": "a", "etag": "x"}, {"sku": "b", "etag": "y"}]}
    new = {"id": "u2", "items": [{"sku": "a", "etag": "z"}, {"sku": "c", "etag": "w"}]}
    assert score(old, new) == 0.5
    with pytest.raises(ValueError, match="must start with"):
        structure(ignore=["id"])


def test_text_leaves_and_tolerance_grade_values():
    assert structure(text_leaves=True)({"a": "Paris is nice"}, {"a": "paris is nice"}) == 1.0
    assert 0 < structure(text_leaves=True)({"a": "Paris"}, {"a": "Parisian"}) < 1
    assert structure(tolerance=0.01)({"total": 100.0}, {"total": 100.5}) == 1.0
    assert structure()({"total": 100.0}, {"total": 100.5}) == 0.0


def test_dataclasses_and_models_are_compared_field_by_field():
    @dataclasses.dataclass
    class Quote:
        price: float
        currency: str

    assert structure()(Quote(1.0, "EUR"), Quote(1.0, "USD")) == 0.5
