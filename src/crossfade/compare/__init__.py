"""Comparators: how a shadow run's answer is scored against the served one, from 0 (unlike) to 1 (alike).

A comparator is a plain callable `(legacy_answer, candidate_answer) -> float` in [0, 1]; pass one as
`compare=` on a handle (`cf.migration("m", compare=crossfade.compare.text())`) or name one in the spec
(`shadow: {compare: text}` or `shadow: {compare: {structure: {ignore: [$.id]}}}`). Each is one module in
this folder with a public factory of the same name and `create(config, path)` for the spec:

- `equal`: 1 when the answers are equal field by field (the `ignore` paths left out), else 0;
- `text`: normalised text similarity (case, whitespace, optionally punctuation), by edit distance;
- `structure`: JSON/structure similarity, the share of fields (leaves) that agree, honouring `ignore`;
- `embedding`: cosine similarity of sentence embeddings (all-MiniLM-L6-v2, run locally; the
  `crossfade[embeddings]` extra);
- `judge`: a hook for an LLM judge (or any scoring function of yours), checked to answer in [0, 1].

Equality cannot judge nondeterministic text: two correct LLM answers are rarely equal. Use `text` for
near-verbatim answers, `embedding` (or `judge`) for answers that may say the same thing in other words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from crossfade.registry import ConfigProblem, ProviderConfigError, Registry


class Comparator(Protocol):
    """Scores two answers: 1.0 alike, 0.0 unlike."""

    def __call__(self, legacy: Any, candidate: Any) -> float:
        """The similarity of the candidate's answer to legacy's, in [0, 1]."""


registry: Registry[Comparator] = Registry("comparator", __name__)


def from_spec(value: object, path: str = "shadow.compare") -> Comparator:
    """The comparator a spec names: `text`, or `{structure: {ignore: [$.id]}}`.

    Raises `ProviderConfigError` naming the path and what would be valid.
    """
    if isinstance(value, str):
        return registry.create(value, None, path)
    if isinstance(value, Mapping) and len(value) == 1:
        ((name, config),) = value.items()
        if config is None or isinstance(config, Mapping):
            return registry.create(str(name), config, f"{path}.{name}")
    raise ProviderConfigError([ConfigProblem(path, f"names one comparator, e.g. text or {{structure: {{ignore: "
                                                   f"[$.id]}}}}; known: {', '.join(registry.names())}")])


def check_score(value: Any, source: str) -> float:
    """A comparator's answer as a float in [0, 1]; ValueError saying what came back otherwise."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and 0.0 <= value <= 1.0:
        return float(value)
    raise ValueError(f"{source} answered {value!r}; a comparator answers a number from 0 (unlike) to 1 (alike)")


def settings(config: Mapping[str, Any], path: str, known: Mapping[str, type | tuple[type, ...]]
             ) -> dict[str, Any]:
    """A comparator's spec settings, each checked for its type; every problem raised at once."""
    problems = [ConfigProblem(f"{path}.{key}", f"unknown setting (known: {', '.join(known) or 'none'})")
                for key in config if key not in known]
    for key, kind in known.items():
        if key in config and (not isinstance(config[key], kind) or isinstance(config[key], bool) != (kind is bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            problems.append(ConfigProblem(f"{path}.{key}", f"must be a {names}, got {config[key]!r}"))
    if problems:
        raise ProviderConfigError(problems)
    return dict(config)


# The factories live in their modules; importing them here binds the names `equal`, `text`, ... to the
# functions (a submodule import alone would bind them to the modules). Each module imports its heavy
# parts (rapidfuzz, onnxruntime) only when a comparator is made.
from crossfade.compare.embedding import embedding  # noqa: E402
from crossfade.compare.equal import equal  # noqa: E402
from crossfade.compare.judge import judge  # noqa: E402
from crossfade.compare.structure import structure  # noqa: E402
from crossfade.compare.text import text  # noqa: E402

__all__ = ["Comparator", "check_score", "embedding", "equal", "from_spec", "judge", "registry", "structure", "text"]
