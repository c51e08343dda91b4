"""The comparator registry, spec names and score checks."""

from __future__ import annotations

import pytest

import crossfade.compare as compare
from crossfade.registry import ProviderConfigError


def test_every_comparator_is_found_by_its_spec_name():
    assert compare.registry.names() == ["embedding", "equal", "judge", "structure", "text"]
    assert compare.from_spec("text")("Paris", "paris") == 1.0
    assert compare.from_spec({"structure": {"ignore": ["$.id"]}})({"id": 1, "v": 2}, {"id": 9, "v": 2}) == 1.0
    assert compare.from_spec({"equal": None})({"a": 1}, {"a": 2}) == 0.0


@pytest.mark.parametrize("value, where, words", [
    ("txt", "shadow.compare", ["unknown comparator 'txt'", "did you mean 'text'"]),
    ({"text": {"ignore_case": "yes"}}, "shadow.compare.text.ignore_case", ["must be a bool"]),
    ({"structure": {"tolerance": 2}}, "shadow.compare.structure", ["tolerance=2"]),
    ({"text": {}, "equal": {}}, "shadow.compare", ["names one comparator"]),
    ("judge", "shadow.compare", ["a judge is a function of yours", "compare=crossfade.compare.judge"]),
])
def test_a_bad_comparator_in_a_spec_says_where_and_what(value, where, words):
    with pytest.raises(ProviderConfigError) as caught:
        compare.from_spec(value)
    problem = caught.value.problems[0]
    assert problem.path == where and all(w in problem.message for w in words), problem


def test_scores_are_checked_to_be_in_zero_to_one():
    assert compare.check_score(True, "x") == 1.0 and compare.check_score(0, "x") == 0.0
    with pytest.raises(ValueError, match="answered 7"):
        compare.check_score(7, "the judge")


def test_importing_the_package_loads_no_model_library():
    import subprocess
    import sys

    code = "import sys, crossfade.compare; print(sorted(m for m in ('rapidfuzz', 'onnxruntime', 'numpy', 'tokenizers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
