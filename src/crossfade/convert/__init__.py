"""Format converters, usable as batch transforms and as `crossfade convert`: one module per converter.

A converter turns one document into another (`convert`) and checks a conversion (`validate`), reporting every
thing that could not be carried over as a `Loss` with its path. Converters are found by name through the
registry (`json_to_toml`, `toml_to_json`, `claude_to_agents`; `-` may stand for `_`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from crossfade.registry import Registry

DATA: Final = "data"
"""A loss kind: a value did not survive (a null, an out-of-range number, a setting with no equivalent)."""
ORDER: Final = "order"
"""A loss kind: every value survived, in another order."""
NOTE: Final = "note"
"""A loss kind: carried over differently (a key renamed on request, an import kept as text)."""


@dataclass(frozen=True, slots=True)
class Loss:
    """One thing a conversion could not carry over as it was: where (a path in the source) and what."""

    path: str
    message: str
    kind: str = DATA

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" + ("" if self.kind == DATA else f" ({self.kind})")


@dataclass(frozen=True, slots=True)
class Conversion:
    """A converted document, what did not carry over, and any further files it produced (name -> bytes)."""

    output: bytes
    losses: tuple[Loss, ...] = ()
    extra: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def lossless(self) -> bool:
        """True when no value was lost (reordering and notes aside)."""
        return not any(loss.kind == DATA for loss in self.losses)


@runtime_checkable
class Converter(Protocol):
    """Turns one document into another and checks that a conversion kept what it should."""

    name: str

    def convert(self, data: bytes, *, source: str | None = None) -> Conversion:
        """Convert a document; `source` is where it came from (a path, to resolve relative references)."""

    def validate(self, before: bytes, after: bytes, *, source: str | None = None) -> list[Loss]:
        """Everything of `before` that `after` does not carry (an empty list: nothing lost)."""


CONVERTERS: Registry[Converter] = Registry("converter", "crossfade.convert")


def converter(name: str, config: Mapping[str, Any] | None = None) -> Converter:
    """The converter called `name` (`json-to-toml` or `json_to_toml`), configured."""
    try:
        return CONVERTERS.create(name.replace("-", "_"), config, f"convert.{name}")
    except ModuleNotFoundError as e:
        raise ValueError(f"the {name} converter needs {e.name}: pip install 'crossfade[convert]'") from None


def as_transform(conv: Converter, *, strict: bool = False) -> Any:
    """A batch transform `(key, data) -> bytes` converting each item; with `strict`, a lossy item fails."""

    def transform(key: str, data: bytes) -> bytes:
        result = conv.convert(data, source=key)
        if strict and not result.lossless:
            raise ValueError("; ".join(str(loss) for loss in result.losses if loss.kind == DATA))
        return result.output

    return transform


def as_validator(conv: Converter) -> Any:
    """A batch validator refusing an item whose conversion lost a value (the losses are the reason)."""

    def validate(key: str, before: bytes, after: bytes) -> str | None:
        lost = [loss for loss in conv.validate(before, after, source=key) if loss.kind == DATA]
        return "; ".join(str(loss) for loss in lost) or None

    return validate
