"""What is wrong with a spec: each problem with its path, and the error that lists them all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Problem", "Problems", "Quiet", "SpecError"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a spec: where (``stages[2].traffic``, or ``line 3, column 5``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A spec that cannot be used, with every problem found in it; ``source`` is the file, ``<text>`` or ``<dict>``."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        count = len(self.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''} in {source}:"]
        lines += [f"{source}: {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class Problems(ValueError):
    """Several problems a value's converter found, each at its full path (a provider checks its own settings)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(map(str, self.problems)))


class Quiet(ValueError):
    """A value that cannot be read because another one was refused, which a problem already says."""
