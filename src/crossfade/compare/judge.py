"""A hook for an LLM judge, or any scoring function: a plain callable whose answer is checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from crossfade.compare import check_score
from crossfade.registry import ConfigProblem, ProviderConfigError


class Judge:
    """Calls `score(legacy, candidate)` and checks its answer is in [0, 1] (booleans are 1 and 0)."""

    __slots__ = ("score",)

    def __init__(self, score: Callable[[Any, Any], float | bool]) -> None:
        if not callable(score):
            raise TypeError(f"compare.judge takes a function (legacy, candidate) -> score, got {score!r}")
        self.score = score

    def __call__(self, legacy: Any, candidate: Any) -> float:
        return check_score(self.score(legacy, candidate), f"the judge {getattr(self.score, '__name__', self.score)}")

    def __repr__(self) -> str:
        return f"compare.judge({getattr(self.score, '__qualname__', self.score)})"


def judge(score: Callable[[Any, Any], float | bool]) -> Judge:
    """An LLM judge (or any function of yours) as a comparator: its answer is checked to be in [0, 1]
    (True and False count as 1 and 0), so a judge that answers 7 out of 10 is caught, not recorded."""
    return Judge(score)


def create(config: Mapping[str, Any], path: str) -> Judge:
    """A judge is code, not configuration: the spec cannot name one."""
    raise ProviderConfigError([ConfigProblem(path, "a judge is a function of yours: pass it in code, "
                                                   "cf.migration(name, compare=crossfade.compare.judge(my_judge))")])
