"""The LLM-judge hook."""

from __future__ import annotations

import pytest

from crossfade.compare import judge


def test_a_judge_is_a_plain_callable_whose_answer_is_checked():
    def same_city(legacy, candidate):
        return 0.9 if legacy.split()[0] == candidate.split()[0] else 0.1

    assert judge(same_city)("Paris France", "Paris is the answer") == 0.9
    assert judge(lambda a, b: a == b)("x", "y") == 0.0
    with pytest.raises(ValueError, match="answered 7"):
        judge(lambda a, b: 7)("x", "y")
    with pytest.raises(TypeError, match="takes a function"):
        judge("gpt-4")
